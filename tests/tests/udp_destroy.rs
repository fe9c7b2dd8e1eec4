//! A connected UDP socket whose backend leaves the service is destroyed
//! (cilium#12859): the application sees an error and, connecting again,
//! reaches a remaining backend. Over both families of the dual-stack lab
//! (`NAME::ipv4`, `NAME::ipv6`): the Service is dual-stack, the socket of the
//! test's family (an AF_INET6 socket connected to the IPv6 ClusterIP, for IPv6)
//! and the backend removed from that family's EndpointSlice.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    EndpointSlice, Lab, Pod, Service, over_both_families, require_root,
    services::{Family, at},
};

const VIP: [&str; 2] = ["10.96.0.10", "fd00:96::a"];

over_both_families!(connected_udp_socket_of_a_removed_backend_is_destroyed);

fn connected_udp_socket_of_a_removed_backend_is_destroyed(family: Family) {
    require_root!();
    let lab = Lab::new(&format!(
        "connected_udp_socket_of_a_removed_backend_is_destroyed_{}",
        family.tag()
    ));
    let vip = family.pick(VIP);
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let client = lab.add_pod("client");
    let _echo: Vec<_> = [&b1, &b2]
        .iter()
        .map(|b| lab.start_echo(b, &[], &[8053]))
        .collect();
    let svc =
        Service::dual_stack("dns", "PreferDualStack", &VIP).port_to("dns", 53, "UDP", 8053u16);
    // The Service's slice of family `f` (one per family, as the controller writes them).
    let slice_of = |f: Family, pods: &[&Pod]| -> EndpointSlice {
        f.slice("dns-1", "dns")
            .port("dns", 8053, "UDP")
            .endpoints(pods.iter().map(|p| f.ready(p)))
    };
    lab.manifests().apply(&svc);
    for f in Family::BOTH {
        lab.manifests().apply(&slice_of(f, &[&b1, &b2]));
    }
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
        vip,
        53,
        Protocol::Udp,
        &[family.ep(&b1, 8053), family.ep(&b2, 8053)],
    );

    // One connected socket, one datagram every 50 ms; connects again after an error.
    let target = at(vip, 53);
    let mut load = lab.client_loop(
        &client,
        &[
            "udp",
            &target,
            "--connected",
            "--reconnect",
            "--interval-ms",
            "50",
        ],
    );
    let first = load.wait_for(Duration::from_secs(10), |a| a.ok);
    assert_eq!(
        first.peer.as_deref(),
        Some(target.as_str()),
        "{family}: connected to the ClusterIP: {}",
        first.raw
    );
    let stuck_on = first.pod().expect("an echo reply");
    let kept = if stuck_on == "b1" { &b2 } else { &b1 };
    println!("{family}: connected to {stuck_on}; removing it");
    load.wait_more(5, Duration::from_secs(5));
    assert!(
        load.attempts()
            .iter()
            .all(|a| a.ok && a.pod() == first.pod()),
        "{family}: a connected socket keeps its backend"
    );

    // The controller updates each family's slice on its own: the socket's family's slice
    // alone (the other family's still lists both) is what destroys the socket.
    lab.manifests().apply(&slice_of(family, &[kept]));
    let applied = Instant::now();
    let failed = load.wait_for(Duration::from_secs(10), |a| !a.ok);
    let took = applied.elapsed();
    wait_active(
        &lab,
        "backend removed",
        vip,
        53,
        Protocol::Udp,
        &[family.ep(kept, 8053)],
    );
    println!(
        "{family}: socket error {:?} at stage {:?}, {took:?} after the change",
        failed.error, failed.stage
    );
    assert!(
        took < Duration::from_secs(2),
        "{family}: the socket got its error only after {took:?}\n{}",
        lab.agent_log()
    );
    assert!(
        matches!(
            failed.error.as_deref(),
            Some("ECONNABORTED" | "EDESTADDRREQ")
        ),
        "{family}: the socket was destroyed, not timed out: {failed:?}"
    );
    let after = load.wait_for(Duration::from_secs(5), |a| a.ok);
    assert_eq!(
        after.pod().as_deref(),
        Some(kept.name.as_str()),
        "{family}: reconnected to the remaining backend"
    );
    assert_eq!(
        after.from.as_deref(),
        Some(target.as_str()),
        "{family}: answered from the ClusterIP: {}",
        after.raw
    );
    load.wait_more(10, Duration::from_secs(5));
    let attempts = load.stop();
    let late: Vec<_> = attempts.iter().skip_while(|a| a.seq != after.seq).collect();
    assert!(
        late.iter()
            .all(|a| a.ok && a.pod().as_deref() == Some(kept.name.as_str())),
        "{family}: after reconnecting, only {} answers: {late:?}",
        kept.name
    );
    println!(
        "{} datagrams, by backend: {:?}",
        attempts.len(),
        by_pod(&attempts)
    );
}
