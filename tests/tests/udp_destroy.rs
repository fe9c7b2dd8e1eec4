//! A connected UDP socket whose backend leaves the service is destroyed
//! (cilium#12859): the application sees an error and, connecting again,
//! reaches a remaining backend.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{Endpoint, EndpointSlice, Lab, Service, require_root};

const VIP: &str = "10.96.0.10";

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn connected_udp_socket_of_a_removed_backend_is_destroyed() {
    require_root!();
    let lab = Lab::new("connected_udp_socket_of_a_removed_backend_is_destroyed");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let client = lab.add_pod("client");
    let _echo: Vec<_> = [&b1, &b2]
        .iter()
        .map(|b| lab.start_echo(b, &[], &[8053]))
        .collect();
    let svc = Service::cluster_ip("dns", VIP).port_to("dns", 53, "UDP", 8053u16);
    let slice_of = |pods: &[&ferry_tests::Pod]| {
        EndpointSlice::new("dns-1", "dns")
            .port("dns", 8053, "UDP")
            .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)))
    };
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice_of(&[&b1, &b2]));
    start_agent(&lab);
    if lab
        .agent_log()
        .contains("connected UDP sockets keep a removed backend")
    {
        println!("skipped: the kernel cannot destroy sockets (bpf_sock_destroy, Linux >= 6.5)");
        return;
    }
    wait_active(
        &lab,
        "2 udp backends",
        VIP,
        53,
        Protocol::Udp,
        &[ep(&b1, 8053), ep(&b2, 8053)],
    );

    // One connected socket, one datagram every 50 ms; connects again after an error.
    let mut load = lab.client_loop(
        &client,
        &[
            "udp",
            &format!("{VIP}:53"),
            "--connected",
            "--reconnect",
            "--interval-ms",
            "50",
        ],
    );
    let first = load.wait_for(Duration::from_secs(10), |a| a.ok);
    let stuck_on = first.pod().expect("an echo reply");
    let kept = if stuck_on == "b1" { &b2 } else { &b1 };
    println!("connected to {stuck_on}; removing it");
    load.wait_more(5, Duration::from_secs(5));
    assert!(
        load.attempts()
            .iter()
            .all(|a| a.ok && a.pod() == first.pod()),
        "a connected socket keeps its backend"
    );

    lab.manifests().apply(&slice_of(&[kept]));
    let applied = Instant::now();
    let failed = load.wait_for(Duration::from_secs(10), |a| !a.ok);
    let took = applied.elapsed();
    wait_active(
        &lab,
        "backend removed",
        VIP,
        53,
        Protocol::Udp,
        &[ep(kept, 8053)],
    );
    println!(
        "socket error {:?} at stage {:?}, {took:?} after the change",
        failed.error, failed.stage
    );
    assert!(
        took < Duration::from_secs(2),
        "the socket got its error only after {took:?}\n{}",
        lab.agent_log()
    );
    assert!(
        matches!(
            failed.error.as_deref(),
            Some("ECONNABORTED" | "EDESTADDRREQ")
        ),
        "the socket was destroyed, not timed out: {failed:?}"
    );
    let after = load.wait_for(Duration::from_secs(5), |a| a.ok);
    assert_eq!(
        after.pod().as_deref(),
        Some(kept.name.as_str()),
        "reconnected to the remaining backend"
    );
    load.wait_more(10, Duration::from_secs(5));
    let attempts = load.stop();
    let late: Vec<_> = attempts.iter().skip_while(|a| a.seq != after.seq).collect();
    assert!(
        late.iter()
            .all(|a| a.ok && a.pod().as_deref() == Some(kept.name.as_str())),
        "after reconnecting, only {} answers: {late:?}",
        kept.name
    );
    println!(
        "{} datagrams, by backend: {:?}",
        attempts.len(),
        by_pod(&attempts)
    );
}
