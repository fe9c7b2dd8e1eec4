//! The agent's life: the datapath serves while the agent is down, a new agent adopts the
//! pinned state without a failed connection, and `ferry cleanup` leaves nothing behind.

mod common;

use std::time::Duration;

use common::*;
use ferry::{cmd::services::ServicesView, model::Protocol};
use ferry_tests::{Endpoint, Lab, require_root};

const VIP: &str = "10.96.0.10";

/// address:port/proto -> (revNatId, sorted backend ids)
fn identities(v: &ServicesView) -> Vec<(String, u16, Vec<u32>)> {
    let mut out: Vec<_> = v
        .frontends
        .iter()
        .map(|f| {
            let key = format!("{}:{}/{}", f.address, f.port, f.protocol);
            let mut ids: Vec<u32> = f.backends.iter().map(|b| b.id).collect();
            ids.sort();
            (key, f.rev_nat_id, ids)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn agent_restart_keeps_serving_and_adopts_the_pinned_state() {
    require_root!();
    let lab = Lab::new("agent_restart_keeps_serving_and_adopts_the_pinned_state");
    let bs: Vec<_> = (1..=3).map(|i| lab.add_pod(&format!("b{i}"))).collect();
    let client = lab.add_pod("client");
    let _echo: Vec<_> = bs
        .iter()
        .map(|b| lab.start_echo(b, &[8080], &[8053]))
        .collect();
    let svc = ferry_tests::Service::cluster_ip("web", VIP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16);
    let slice = ferry_tests::EndpointSlice::new("web-1", "web")
        .port("http", 8080, "TCP")
        .port("dns", 8053, "UDP")
        .endpoints([Endpoint::ready(bs[0].ip), Endpoint::ready(bs[1].ip)]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    let two = [ep(&bs[0], 8080), ep(&bs[1], 8080)];
    wait_active(&lab, "before restart", VIP, 80, Protocol::Tcp, &two);
    wait_active(
        &lab,
        "before restart (udp)",
        VIP,
        53,
        Protocol::Udp,
        &[ep(&bs[0], 8053), ep(&bs[1], 8053)],
    );
    // The egress guard is attached only while a Service needs it: one does here, so that the
    // restart swaps it into its link like the hooks.
    let _guarded = apply_guarded(&lab, "guarded", "10.96.0.77");
    let before = identities(&lab.services());

    let mut tcp = lab.client_loop(
        &client,
        &["tcp", &format!("{VIP}:80"), "--interval-ms", "10"],
    );
    let mut udp = lab.client_loop(
        &client,
        &["udp", &format!("{VIP}:53"), "--interval-ms", "10"],
    );
    tcp.wait_more(20, Duration::from_secs(10));
    udp.wait_more(20, Duration::from_secs(10));

    let status = lab.stop_agent();
    println!("agent stopped: {status:?}");
    assert!(!lab.agent_running());
    // The datapath keeps serving while no agent runs.
    tcp.wait_more(50, Duration::from_secs(10));
    udp.wait_more(50, Duration::from_secs(10));
    let curl = lab.curl(&client, &format!("http://{VIP}/"));
    assert!(curl.is_ok(), "served with the agent down: {curl:?}");
    assert_eq!(
        identities(&lab.services()),
        before,
        "the pins survive the agent"
    );

    // A change made while the agent is down is picked up by the next one.
    lab.manifests()
        .apply(&slice.clone().endpoint(Endpoint::ready(bs[2].ip)));
    start_agent(&lab);
    tcp.wait_more(20, Duration::from_secs(10));
    let three = [ep(&bs[0], 8080), ep(&bs[1], 8080), ep(&bs[2], 8080)];
    wait_active(
        &lab,
        "change made while down -> visible after restart",
        VIP,
        80,
        Protocol::Tcp,
        &three,
    );
    tcp.wait_for(Duration::from_secs(10), |a| {
        a.pod().as_deref() == Some("b3")
    });
    udp.wait_more(20, Duration::from_secs(10));

    // Every cgroup program, the egress guard included, was swapped into its pinned link:
    // the hooks were never empty.
    let log = lab.agent_log();
    for (program, _) in ferry::paths::cgroup_programs() {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("program=\"{program}\""))
                    && l.contains("outcome=Replaced")),
            "{program} swapped into its link: {log}"
        );
    }

    let after = identities(&lab.services());
    for (key, rev, _) in &before {
        let now = after.iter().find(|(k, _, _)| k == key);
        assert_eq!(
            now.map(|(_, r, _)| r),
            Some(rev),
            "{key} kept its revNatId across the restart"
        );
    }
    let tcp = tcp.stop();
    let udp = udp.stop();
    println!(
        "across the restart: {} connects {:?}, {} datagrams {:?}",
        tcp.len(),
        by_pod(&tcp),
        udp.len(),
        by_pod(&udp)
    );
    assert_all_ok(&tcp, "connects across the agent restart");
    assert_all_ok(&udp, "datagrams across the agent restart");
    assert!(
        tcp.iter()
            .all(|a| a.peer.as_deref() == Some("10.96.0.10:80"))
    );
    assert!(
        udp.iter()
            .all(|a| a.from.as_deref() == Some("10.96.0.10:53"))
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn ferry_cleanup_leaves_nothing_behind() {
    require_root!();
    let lab = Lab::new("ferry_cleanup_leaves_nothing_behind");
    let (_b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "frontend");
    let client = lab.add_pod("client");
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "before cleanup");
    let attached = lab.bpftool_cgroup_show();
    println!("attached to the lab cgroup while running:\n{attached}");
    assert!(!lab.pins().is_empty(), "the agent pinned its state");

    lab.stop_agent();
    let out = lab.ferry_cleanup();
    println!(
        "ferry cleanup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ferry cleanup failed");

    let pins = lab.pins();
    assert!(pins.is_empty(), "pins left in the lab bpffs: {pins:?}");
    let attached = lab.bpftool_cgroup_show();
    let programs: Vec<&str> = attached
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("AttachType"))
        .collect();
    assert!(
        programs.is_empty(),
        "programs left on the lab cgroup:\n{attached}"
    );
    let a = lab.client(
        &client,
        &["tcp", &format!("{VIP}:80"), "--timeout-ms", "1000"],
    );
    assert_untranslated(&a[0], "after ferry cleanup");
    // Idempotent.
    let again = lab.ferry_cleanup();
    assert!(
        again.status.success(),
        "a second ferry cleanup: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}
