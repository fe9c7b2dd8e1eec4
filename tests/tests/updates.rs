//! Changes while the agent runs: ports, services, backends (under load), terminating endpoints,
//! bad objects, and that a change reaches the kernel as a diff.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    Attempt, Endpoint, EndpointSlice, Lab, Service, client::now_us, proc, require_root, services,
};

const VIP: &str = "10.96.0.10";

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn ports_added_and_removed() {
    require_root!();
    let lab = Lab::new("ports_added_and_removed");
    let b1 = lab.add_pod("b1");
    let client = lab.add_pod("client");
    let _e1 = lab.start_echo(&b1, &[8080, 8081], &[]);
    let svc = Service::cluster_ip("web", VIP).port_to("http", 80, "TCP", 8080u16);
    let slice = EndpointSlice::new("web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready(b1.ip));
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    wait_active(
        &lab,
        "initial port",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080)],
    );
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "port 80");

    // Add port 81 -> 8081.
    let both = svc.clone().port_to("alt", 81, "TCP", 8081u16);
    let slice2 = slice.clone().port("alt", 8081, "TCP");
    lab.manifests().apply(&slice2);
    lab.manifests().apply(&both);
    wait_active(
        &lab,
        "port added -> visible",
        VIP,
        81,
        Protocol::Tcp,
        &[ep(&b1, 8081)],
    );
    let added = lab.tcp(&client, &format!("{VIP}:81"), 3);
    assert_all_ok(&added, "new port 81");
    assert!(
        added
            .iter()
            .all(|a| a.echo().is_some_and(|e| e.port == 8081))
    );
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "port 80 still");

    // Remove port 80.
    let only_alt = Service::cluster_ip("web", VIP).port_to("alt", 81, "TCP", 8081u16);
    lab.manifests().apply(&only_alt);
    lab.manifests().apply(
        &EndpointSlice::new("web-1", "web")
            .port("alt", 8081, "TCP")
            .endpoint(Endpoint::ready(b1.ip)),
    );
    let took = lab.wait_services(
        |v| services::frontend(v, VIP, 80, Protocol::Tcp).is_none(),
        DEADLINE,
    );
    report("port removed -> gone", took);
    let removed = lab.client(
        &client,
        &["tcp", &format!("{VIP}:80"), "--timeout-ms", "1000"],
    );
    assert_not_served(&removed[0], "removed port 80");
    println!("connect to the removed port: {}", removed[0].raw);
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:81"), 3), "port 81 still");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn service_removed_and_recreated() {
    require_root!();
    let lab = Lab::new("service_removed_and_recreated");
    let (b1, _e1, svc, slice) = serve_web(&lab, VIP, "created");
    let client = lab.add_pod("client");
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "before removal");

    lab.manifests().delete(&svc);
    lab.manifests().delete(&slice);
    wait_gone(&lab, "service removed -> gone", VIP);
    let a = lab.client(
        &client,
        &["tcp", &format!("{VIP}:80"), "--timeout-ms", "1000"],
    );
    assert_untranslated(&a[0], "removed service");

    lab.manifests().apply(&slice);
    lab.manifests().apply(&svc);
    wait_active(
        &lab,
        "service recreated -> visible",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080)],
    );
    assert_all_ok(
        &lab.tcp(&client, &format!("{VIP}:80"), 3),
        "after recreation",
    );
    assert!(lab.curl(&client, &format!("http://{VIP}/")).is_ok());
}

/// The attempts that started at or after `t_us` (when the change was visible in the maps).
fn started_after(attempts: &[Attempt], t_us: u64) -> Vec<&Attempt> {
    attempts.iter().filter(|a| a.started_us >= t_us).collect()
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn backends_removed_and_added_under_load() {
    require_root!();
    let lab = Lab::new("backends_removed_and_added_under_load");
    let bs: Vec<_> = (1..=4).map(|i| lab.add_pod(&format!("b{i}"))).collect();
    let client = lab.add_pod("client");
    let _echo: Vec<_> = bs.iter().map(|b| lab.start_echo(b, &[8080], &[])).collect();
    let (svc, _) = simple("web", VIP, 80, 8080, &[]);
    let slice_of = |pods: &[&ferry_tests::Pod]| {
        EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)))
    };
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice_of(&[&bs[0], &bs[1], &bs[2]]));
    start_agent(&lab);
    wait_active(
        &lab,
        "3 backends",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&bs[0], 8080), ep(&bs[1], 8080), ep(&bs[2], 8080)],
    );

    let mut load = lab.client_loop(
        &client,
        &["tcp", &format!("{VIP}:80"), "--interval-ms", "5"],
    );
    load.wait_more(30, Duration::from_secs(10));

    // b3 leaves (its server keeps running, as a terminating pod's would for a while).
    lab.manifests().apply(&slice_of(&[&bs[0], &bs[1]]));
    wait_active(
        &lab,
        "backend removed -> visible",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&bs[0], 8080), ep(&bs[1], 8080)],
    );
    let removed_at = now_us();
    load.wait_more(60, Duration::from_secs(10));

    // b4 joins.
    lab.manifests().apply(&slice_of(&[&bs[0], &bs[1], &bs[3]]));
    wait_active(
        &lab,
        "backend added -> visible",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&bs[0], 8080), ep(&bs[1], 8080), ep(&bs[3], 8080)],
    );
    load.wait_for(Duration::from_secs(10), |a| {
        a.pod().as_deref() == Some("b4")
    });
    load.wait_more(30, Duration::from_secs(10));
    let attempts = load.stop();

    println!(
        "{} connects under load, by backend: {:?}",
        attempts.len(),
        by_pod(&attempts)
    );
    assert_all_ok(&attempts, "connects while backends changed");
    let late = started_after(&attempts, removed_at);
    assert!(
        late.len() >= 60,
        "connects after the removal: {}",
        late.len()
    );
    let b3_late: Vec<&str> = late
        .iter()
        .filter(|a| a.pod().as_deref() == Some("b3"))
        .map(|a| a.raw.as_str())
        .collect();
    assert!(
        b3_late.is_empty(),
        "the removed backend was chosen again: {b3_late:?}"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn unconnected_udp_follows_backend_changes() {
    require_root!();
    let lab = Lab::new("unconnected_udp_follows_backend_changes");
    let bs: Vec<_> = (1..=3).map(|i| lab.add_pod(&format!("b{i}"))).collect();
    let client = lab.add_pod("client");
    let _echo: Vec<_> = bs.iter().map(|b| lab.start_echo(b, &[], &[8053])).collect();
    let svc = Service::cluster_ip("dns", VIP).port_to("dns", 53, "UDP", 8053u16);
    let slice_of = |pods: &[&ferry_tests::Pod]| {
        EndpointSlice::new("dns-1", "dns")
            .port("dns", 8053, "UDP")
            .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)))
    };
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice_of(&[&bs[0], &bs[1]]));
    start_agent(&lab);
    wait_active(
        &lab,
        "2 udp backends",
        VIP,
        53,
        Protocol::Udp,
        &[ep(&bs[0], 8053), ep(&bs[1], 8053)],
    );

    // One socket, one datagram every 5 ms.
    let mut load = lab.client_loop(
        &client,
        &["udp", &format!("{VIP}:53"), "--interval-ms", "5"],
    );
    load.wait_for(Duration::from_secs(10), |a| {
        a.pod().as_deref() == Some("b2")
    });
    load.wait_for(Duration::from_secs(10), |a| {
        a.pod().as_deref() == Some("b1")
    });

    lab.manifests().apply(&slice_of(&[&bs[0], &bs[2]]));
    wait_active(
        &lab,
        "udp backend swapped -> visible",
        VIP,
        53,
        Protocol::Udp,
        &[ep(&bs[0], 8053), ep(&bs[2], 8053)],
    );
    let changed_at = now_us();
    load.wait_for(Duration::from_secs(10), |a| {
        a.pod().as_deref() == Some("b3")
    });
    load.wait_more(50, Duration::from_secs(10));
    let attempts = load.stop();
    println!(
        "{} datagrams, by backend: {:?}",
        attempts.len(),
        by_pod(&attempts)
    );
    assert_all_ok(&attempts, "datagrams while backends changed");
    let late = started_after(&attempts, changed_at);
    assert!(
        late.len() >= 50,
        "datagrams after the change: {}",
        late.len()
    );
    let b2_late: Vec<&str> = late
        .iter()
        .filter(|a| a.pod().as_deref() == Some("b2"))
        .map(|a| a.raw.as_str())
        .collect();
    assert!(
        b2_late.is_empty(),
        "a datagram went to the removed backend: {b2_late:?}"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.from.as_deref() == Some("10.96.0.10:53")),
        "replies come from the service address"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn terminating_endpoints_serve_when_none_is_ready() {
    require_root!();
    let lab = Lab::new("terminating_endpoints_serve_when_none_is_ready");
    let bs: Vec<_> = (1..=3).map(|i| lab.add_pod(&format!("b{i}"))).collect();
    let client = lab.add_pod("client");
    let _echo: Vec<_> = bs.iter().map(|b| lab.start_echo(b, &[8080], &[])).collect();
    let (svc, _) = simple("web", VIP, 80, 8080, &[]);
    let slice = |eps: Vec<Endpoint>| {
        EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .endpoints(eps)
    };
    lab.manifests().apply(&svc);
    // Only serving+terminating endpoints: they serve.
    lab.manifests().apply(&slice(vec![
        Endpoint::terminating(bs[0].ip, true),
        Endpoint::terminating(bs[1].ip, true),
    ]));
    start_agent(&lab);
    let want = [ep(&bs[0], 8080), ep(&bs[1], 8080)];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let took = lab.wait_services(
        |v| services::backends_are(v, VIP, 80, Protocol::Tcp, &want),
        DEADLINE,
    );
    report("terminating fallback visible", took);
    println!("{}", lab.services_table());
    let attempts = lab.tcp(&client, &format!("{VIP}:80"), 20);
    assert_all_ok(&attempts, "terminating fallback");
    let pods: BTreeSet<String> = by_pod(&attempts).into_keys().collect();
    assert_eq!(pods, BTreeSet::from(["b1".to_owned(), "b2".to_owned()]));

    // A ready endpoint appears: only it serves.
    lab.manifests().apply(&slice(vec![
        Endpoint::terminating(bs[0].ip, true),
        Endpoint::terminating(bs[1].ip, true),
        Endpoint::ready(bs[2].ip),
    ]));
    let want = ep(&bs[2], 8080);
    let took = lab.wait_services(
        |v| services::backends_are(v, VIP, 80, Protocol::Tcp, &[want.as_str()]),
        DEADLINE,
    );
    report("ready endpoint replaces the fallback", took);
    let attempts = lab.tcp(&client, &format!("{VIP}:80"), 20);
    assert_all_ok(&attempts, "ready endpoint");
    assert_eq!(by_pod(&attempts).into_keys().collect::<Vec<_>>(), ["b3"]);

    // Nothing serving: refused.
    lab.manifests().apply(&slice(vec![
        Endpoint::terminating(bs[0].ip, false),
        Endpoint::terminating(bs[1].ip, false),
        Endpoint::new(bs[2].ip, false, false, false),
    ]));
    let took = lab.wait_services(
        |v| services::backends_are(v, VIP, 80, Protocol::Tcp, &[]),
        DEADLINE,
    );
    report("no serving endpoint -> empty frontend", took);
    let a = lab.client(
        &client,
        &["tcp", &format!("{VIP}:80"), "--timeout-ms", "3000"],
    );
    assert_eq!(a[0].error.as_deref(), Some("ECONNREFUSED"), "{}", a[0].raw);
    assert!(a[0].elapsed_ms < 1000, "{}", a[0].raw);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_malformed_object_is_reported_and_the_rest_works() {
    require_root!();
    let lab = Lab::new("a_malformed_object_is_reported_and_the_rest_works");
    let b1 = lab.add_pod("b1");
    let client = lab.add_pod("client");
    let _e1 = lab.start_echo(&b1, &[8080], &[]);
    let (svc, slice) = simple("web", VIP, 80, 8080, &[&b1]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    let (bad, bad_slice) = simple("broken", "10.96.0.66", 70000, 8080, &[&b1]);
    lab.manifests().apply(&bad);
    lab.manifests().apply(&bad_slice);
    start_agent(&lab);
    wait_active(
        &lab,
        "the good service",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080)],
    );
    assert_all_ok(
        &lab.tcp(&client, &format!("{VIP}:80"), 3),
        "the good service",
    );
    let v = lab.services();
    assert!(
        !services::has_address(&v, "10.96.0.66"),
        "the bad service is not programmed: {v:?}"
    );

    // The agent names the object in its log.
    let deadline = std::time::Instant::now() + DEADLINE;
    while !lab.agent_log().contains("Service default/broken") {
        assert!(
            std::time::Instant::now() < deadline,
            "no `Service default/broken` in the agent log:\n{}",
            lab.agent_log()
        );
        std::thread::sleep(proc::POLL);
    }
    let line = lab
        .agent_log()
        .lines()
        .find(|l| l.contains("Service default/broken"))
        .unwrap_or_default()
        .to_owned();
    println!("agent reported: {line}");

    // Changes keep flowing after the bad object.
    let b2 = lab.add_pod("b2");
    let _e2 = lab.start_echo(&b2, &[8080], &[]);
    lab.manifests()
        .apply(&slice.clone().endpoint(Endpoint::ready(b2.ip)));
    wait_active(
        &lab,
        "change after a bad object",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080), ep(&b2, 8080)],
    );
    // Garbage that is not even YAML in its own file does not stop the agent either.
    lab.manifests()
        .write_raw("garbage.yaml", "{ this is: [not yaml\n");
    lab.manifests().apply(&slice);
    wait_active(
        &lab,
        "change after garbage",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080)],
    );
    assert!(lab.agent_running());
    assert_eq!(lab.readyz(), Some(200));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_change_reaches_the_kernel_as_a_diff() {
    require_root!();
    let lab = Lab::new("a_change_reaches_the_kernel_as_a_diff");
    let a1 = lab.add_pod("a1");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let client = lab.add_pod("client");
    let _ea = lab.start_echo(&a1, &[8080], &[]);
    let _eb1 = lab.start_echo(&b1, &[8080], &[]);
    let _eb2 = lab.start_echo(&b2, &[8080], &[]);
    let (svc_a, slice_a) = simple("svc-a", "10.96.0.10", 80, 8080, &[&a1]);
    let (svc_b, slice_b) = simple("svc-b", "10.96.0.11", 80, 8080, &[&b1]);
    for m in [&svc_a, &svc_b] {
        lab.manifests().apply(m);
    }
    for m in [&slice_a, &slice_b] {
        lab.manifests().apply(m);
    }
    start_agent(&lab);
    wait_active(
        &lab,
        "service A",
        "10.96.0.10",
        80,
        Protocol::Tcp,
        &[ep(&a1, 8080)],
    );
    wait_active(
        &lab,
        "service B",
        "10.96.0.11",
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080)],
    );
    let rev_a = services::frontend(&lab.services(), "10.96.0.10", 80, Protocol::Tcp)
        .unwrap()
        .rev_nat_id;

    // A long-lived connection to A.
    let held = lab.spawn_interactive(
        &client,
        proc::lab_binary("lab-client"),
        &["tcp", "10.96.0.10:80", "--hold"],
    );
    let first =
        Attempt::parse(&held.next_line(Duration::from_secs(5)).expect("first reply")).unwrap();
    assert!(
        first.ok && first.pod().as_deref() == Some("a1"),
        "{}",
        first.raw
    );

    // B changes: a backend added, a port added, then the first backend removed.
    lab.manifests()
        .apply(&slice_b.clone().endpoint(Endpoint::ready(b2.ip)));
    wait_active(
        &lab,
        "B backend added",
        "10.96.0.11",
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080), ep(&b2, 8080)],
    );
    lab.manifests()
        .apply(&svc_b.clone().port_to("alt", 81, "TCP", 8080u16));
    lab.manifests().apply(
        &slice_b
            .clone()
            .port("alt", 8080, "TCP")
            .endpoint(Endpoint::ready(b2.ip)),
    );
    wait_active(
        &lab,
        "B port added",
        "10.96.0.11",
        81,
        Protocol::Tcp,
        &[ep(&b1, 8080), ep(&b2, 8080)],
    );
    lab.manifests().apply(
        &EndpointSlice::new("svc-b-1", "svc-b")
            .port("http", 8080, "TCP")
            .port("alt", 8080, "TCP")
            .endpoint(Endpoint::ready(b2.ip)),
    );
    wait_active(
        &lab,
        "B backend removed",
        "10.96.0.11",
        80,
        Protocol::Tcp,
        &[ep(&b2, 8080)],
    );

    // The connection to A still answers, and A's frontend kept its identity.
    for i in 0..3 {
        held.send_line(&format!("still there {i}"))
            .expect("send on the held connection");
        let line = held
            .next_line(Duration::from_secs(5))
            .expect("a reply on the held connection");
        let a = Attempt::parse(&line).unwrap();
        assert!(
            a.ok && a.pod().as_deref() == Some("a1"),
            "held connection: {}",
            a.raw
        );
        assert_eq!(a.peer, first.peer);
    }
    let v = lab.services();
    assert_eq!(
        services::frontend(&v, "10.96.0.10", 80, Protocol::Tcp)
            .unwrap()
            .rev_nat_id,
        rev_a,
        "A untouched"
    );
    assert!(services::active_is(
        &v,
        "10.96.0.10",
        80,
        Protocol::Tcp,
        &[&ep(&a1, 8080)]
    ));
    held.close_stdin();
}
