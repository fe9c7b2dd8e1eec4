//! Issue 14: `ferry trace SRC DST:PORT/PROTO` predicts what the kernel does with a flow, and
//! the real flow then does exactly that.
//!
//! The two-node lab (tests/src/cluster.rs), real agents, real servers (lab-echo, which name
//! their pod) and real clients: curl and lab-client in the external client namespaces (their
//! packets arrive on node1's eth0, ferry's TC program), lab-client in pods on node1 (node1's
//! socket hooks), curl in a pod's namespace outside node1's cgroup (the per-packet path on
//! the pod's device, `--from pod-packet`). `ferry trace` runs on node1 (its network namespace and cgroup, as a
//! `kubectl debug node` shell would), reading node1's pinned maps and asking node1's agent
//! for the Service names. Every test runs over both families of the dual-stack lab. Every
//! wait polls a real condition with a deadline.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::{Command, Output},
    time::Duration,
};

use agent_common::stats::Counter;
use ferry::datapath::trace::{Action, Origin, Trace};
use ferry_tests::{
    Cluster, EndpointSlice, Lab, Pod, Service,
    client::EchoAny,
    cluster::{EXT1_IP, EXT1_IP6, EXT2_IP, EXT2_IP6, LB_RANGE, poll},
    over_both_families,
    proc::{self, Placement},
    require_root,
    services::{self, AsIp, Family, at},
};

const CLUSTER_IP: [&str; 2] = ["10.96.0.10", "fd00:96::a"];
const CLUSTER_IP2: [&str; 2] = ["10.96.0.11", "fd00:96::b"];
const CLUSTER_IP3: [&str; 2] = ["10.96.0.12", "fd00:96::c"];
const LB_IP: [&str; 2] = ["192.0.2.10", "fd00:192:0:2::10"];
const LB_IP2: [&str; 2] = ["192.0.2.11", "fd00:192:0:2::11"];
const LB_RANGES: [&str; 2] = [LB_RANGE, "fd00:192:0:2::/64"];
const DEADLINE: Duration = Duration::from_secs(10);

over_both_families!(
    maglev_prediction_names_the_backend_that_answers,
    source_ranges_drop_is_predicted_and_counted,
    rejects_drops_and_passes_are_predicted,
    cluster_ip_affinity_from_a_pod_is_predicted,
    per_packet_pod_path_is_predicted,
);

fn cluster(name: &str, family: Family) -> Cluster {
    Cluster::new(&format!("{name}_{}", family.tag()))
}

fn ext_ip(family: Family, n: u8) -> IpAddr {
    match n {
        1 => family.pick([EXT1_IP.into(), EXT1_IP6.into()]),
        _ => family.pick([EXT2_IP.into(), EXT2_IP6.into()]),
    }
}

/// A dual-stack LoadBalancer Service `name`: http 80 -> 8080/TCP, both families' ingress IPs.
fn load_balancer(name: &str, cluster_ips: [&str; 2], lb: [&str; 2]) -> Service {
    Service::load_balancer(name, cluster_ips[0])
        .cluster_ips(&cluster_ips)
        .ip_family_policy("PreferDualStack")
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress(lb[0])
        .lb_ingress(lb[1])
}

/// The slices of `service` (port http 8080/TCP) with these ready pods on their nodes.
fn apply_slices(c: &Cluster, service: &str, pods: &[(&Pod, &str)]) {
    for f in Family::BOTH {
        let s: EndpointSlice = f
            .slice(service, service)
            .port("http", 8080, "TCP")
            .endpoints(pods.iter().map(|(p, node)| f.ready(p).node(node)));
        c.manifests().apply(&s);
    }
}

/// Waits until node1 has `addr`:80/TCP with exactly these active backends (port 8080).
fn wait_backends(c: &Cluster, family: Family, addr: impl AsIp + Copy, pods: &[&Pod]) {
    let mut want: Vec<String> = pods.iter().map(|p| family.ep(p, 8080)).collect();
    want.sort();
    c.wait_services(
        "node1",
        |v| services::active(v, addr, 80, ferry::model::Protocol::Tcp) == want,
        DEADLINE,
    );
}

/// `ferry trace ARGS --bpffs <node1's pins> -o json`, run on node1.
fn trace_out(c: &Cluster, args: &[&str]) -> Output {
    let n = c.node("node1");
    let pin = n.pin_dir.to_string_lossy().into_owned();
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    all.extend(["--bpffs", &pin, "-o", "json"]);
    c.output_timeout(&n.host(), Lab::ferry_bin(), &all, Duration::from_secs(30))
}

fn trace(c: &Cluster, args: &[&str]) -> Trace {
    let out = trace_out(c, args);
    assert!(
        out.status.success(),
        "ferry trace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Trace = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry trace -o json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    println!(
        "ferry trace {args:?}: {:?} {:?}",
        t.verdict.action, t.verdict
    );
    t
}

/// The pods by their backend address ("ip:8080") of `family`.
fn by_endpoint<'a>(family: Family, pods: &[&'a Pod]) -> BTreeMap<String, &'a Pod> {
    pods.iter().map(|p| (family.ep(p, 8080), *p)).collect()
}

/// A datapath counter of node1.
fn counter(c: &Cluster, which: Counter) -> u64 {
    c.stats("node1")["counters"][which.name()]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {}", which.name()))
}

/// `curl http://target/` from `from`, bound to source port `port`: the pod that answered.
fn curl_from_port(c: &Cluster, from: &Pod, target: &str, port: u16) -> Result<String, String> {
    let url = format!("http://{target}/");
    let p = port.to_string();
    let (res, _) = c.curl_timed(
        from,
        &url,
        Duration::from_secs(3),
        &["-g", "--local-port", &p],
    );
    let body = res.map_err(|(code, e)| format!("curl exit {code}: {e}"))?;
    EchoAny::parse(&body)
        .map(|e| e.pod)
        .ok_or_else(|| format!("not an echo reply: {body:?}"))
}

// ---------------------------------------------------------------------------------------------

fn maglev_prediction_names_the_backend_that_answers(family: Family) {
    require_root!();
    let c = cluster("maglev_prediction_names_the_backend_that_answers", family);
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node1", "b2");
    let b3 = c.add_pod_on("node2", "b3");
    let b4 = c.add_pod_on("node2", "b4");
    let pods = [&b1, &b2, &b3, &b4];
    let _echos: Vec<_> = pods.iter().map(|p| c.start_echo(p, &[8080], &[])).collect();
    c.manifests().apply(
        &load_balancer("maglev", CLUSTER_IP, LB_IP).annotation("ferry.io/lb-algorithm", "maglev"),
    );
    apply_slices(
        &c,
        "maglev",
        &[
            (&b1, "node1"),
            (&b2, "node1"),
            (&b3, "node2"),
            (&b4, "node2"),
        ],
    );
    c.start_agents();
    c.wait_north_south(DEADLINE);
    wait_backends(&c, family, lb, &pods);
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    let endpoints = by_endpoint(family, &pods);
    let client = ext_ip(family, 1);
    let target = at(lb, 80);
    let dst = format!("{target}/tcp");

    // Without the source port the choice depends on it, among the four.
    let t = trace(&c, &[&client.to_string(), &dst]);
    assert_eq!(t.from, Origin::External, "{t:?}");
    assert!(t.from_inferred && t.layer == "device", "{t:?}");
    assert!(t.verdict.depends_on_source_port, "{t:?}");
    assert_eq!(t.verdict.candidates.len(), 4, "{t:?}");
    let fe = t.frontend.as_ref().expect("a frontend");
    assert_eq!(fe.kind, "LoadBalancer");
    assert_eq!(
        fe.service.as_deref(),
        Some("default/maglev"),
        "the agent names the Service: {fe:?}"
    );

    let mut answered = BTreeMap::new();
    for port in 42001..=42012u16 {
        let src = at(client, port);
        let t = trace(&c, &[&src, &dst]);
        assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
        assert_eq!(t.verdict.by.as_deref(), Some("maglev"), "{t:?}");
        let predicted = t.verdict.backend.clone().expect("a backend");
        let predicted_pod = &endpoints
            .get(&predicted)
            .unwrap_or_else(|| panic!("{predicted} is none of the pods: {t:?}"))
            .name;
        // The first packet after programming may race the attach: poll the first one.
        let got = if port == 42001 {
            let mut p = port;
            let (pod, _) = poll(DEADLINE, Duration::from_millis(100), || {
                // A retry needs a fresh port (the first one's flow may be half made).
                let r = curl_from_port(&c, &ext1, &target, p);
                p += 1000;
                r
            })
            .unwrap_or_else(|e| panic!("{family}: the LB never answered: {e}\n{}", c.dump()));
            assert_eq!(p, port + 1000, "{family}: the first attempt must answer");
            pod
        } else {
            curl_from_port(&c, &ext1, &target, port)
                .unwrap_or_else(|e| panic!("{family}: from port {port}: {e}\n{}", c.dump()))
        };
        assert_eq!(
            &got, predicted_pod,
            "{family}: from port {port} trace predicted {predicted} ({predicted_pod}), {got} answered"
        );
        *answered.entry(got).or_insert(0) += 1;
        // The flow is tracked now: the trace says so, with the same backend.
        let again = trace(&c, &[&src, &dst]);
        assert_eq!(again.verdict.by.as_deref(), Some("conntrack"), "{again:?}");
        assert_eq!(again.verdict.backend.as_deref(), Some(predicted.as_str()));
    }
    println!("{family}: answered {answered:?}");
    assert!(
        answered.len() >= 2,
        "{family}: 12 flows spread over the backends: {answered:?}"
    );
}

fn source_ranges_drop_is_predicted_and_counted(family: Family) {
    require_root!();
    let c = cluster("source_ranges_drop_is_predicted_and_counted", family);
    let lb = family.pick(LB_IP);
    let (ext1, ext2) = (c.ext("ext1"), c.ext("ext2"));
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[]);
    c.manifests().apply(
        &load_balancer("ranged", CLUSTER_IP, LB_IP)
            .source_range(&Family::V4.host_cidr(&ext1))
            .source_range(&Family::V6.host_cidr(&ext1)),
    );
    apply_slices(&c, "ranged", &[(&b1, "node1")]);
    c.start_agents();
    c.wait_north_south(DEADLINE);
    wait_backends(&c, family, lb, &[&b1]);
    for ext in [&ext1, &ext2] {
        c.route(ext, family.pick(LB_RANGES), "node1");
    }
    let target = at(lb, 80);
    let dst = format!("{target}/tcp");

    let inside = trace(&c, &[&at(ext_ip(family, 1), 43001), &dst]);
    assert_eq!(inside.verdict.action, Action::Translate, "{inside:?}");
    assert!(inside.source_range.as_ref().is_some_and(|r| r.allowed));
    poll(DEADLINE, Duration::from_millis(100), || {
        let a = c
            .client(&ext1, &["tcp", &target, "--timeout-ms", "1000"])
            .remove(0);
        if a.ok { Ok(()) } else { Err(a.raw) }
    })
    .unwrap_or_else(|e| panic!("{family}: ext1 (inside) never answered: {e}"));

    let outside = trace(&c, &[&at(ext_ip(family, 2), 43002), &dst]);
    assert_eq!(outside.verdict.action, Action::Drop, "{outside:?}");
    assert_eq!(outside.verdict.reason.as_deref(), Some("source_range"));
    assert!(outside.source_range.as_ref().is_some_and(|r| !r.allowed));
    let before = counter(&c, Counter::NsSourceRangeDrop);
    let a = c
        .client(&ext2, &["tcp", &target, "--timeout-ms", "1500"])
        .remove(0);
    assert!(!a.ok, "{family}: ext2 is outside the ranges: {}", a.raw);
    assert!(
        matches!(a.error.as_deref(), Some("timeout" | "ETIMEDOUT")),
        "{family}: dropped, so it times out: {}",
        a.raw
    );
    let after = counter(&c, Counter::NsSourceRangeDrop);
    assert!(
        after > before,
        "{family}: ns_source_range_drop moved: {before} -> {after}"
    );
}

fn rejects_drops_and_passes_are_predicted(family: Family) {
    require_root!();
    let c = cluster("rejects_drops_and_passes_are_predicted", family);
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[]);
    let client_pod = c.add_pod_on("node1", "cl");
    c.manifests()
        .apply(&load_balancer("empty", CLUSTER_IP, LB_IP));
    let mut remote_only = load_balancer("remote-only", CLUSTER_IP2, LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(32080);
    remote_only.ports[0].node_port = Some(30081);
    c.manifests().apply(&remote_only);
    apply_slices(&c, "remote-only", &[(&b2, "node2")]);
    // internalTrafficPolicy Local with its only endpoint on node2: pods on node1 are dropped.
    c.manifests().apply(
        &Service::cluster_ip("itp-local", CLUSTER_IP3[0])
            .cluster_ips(&CLUSTER_IP3)
            .ip_family_policy("PreferDualStack")
            .port_to("http", 80, "TCP", 8080u16)
            .internal_traffic_policy("Local"),
    );
    apply_slices(&c, "itp-local", &[(&b2, "node2")]);
    c.start_agents();
    c.wait_north_south(DEADLINE);
    wait_backends(&c, family, lb, &[]);
    wait_backends(&c, family, lb2, &[]);
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    let client = ext_ip(family, 1);

    // No endpoints: rejected, and the real client is refused.
    let t = trace(&c, &[&at(client, 44001), &format!("{}/tcp", at(lb, 80))]);
    assert_eq!(t.verdict.action, Action::Reject, "{t:?}");
    let a = c
        .client(&ext1, &["tcp", &at(lb, 80), "--timeout-ms", "3000"])
        .remove(0);
    assert_eq!(
        a.error.as_deref(),
        Some("ECONNREFUSED"),
        "{family}: {}",
        a.raw
    );
    // The same from a pod: the socket layer refuses.
    let ip = family.ip(&client_pod).to_string();
    let t = trace(&c, &[&ip, &format!("{}/tcp", at(lb, 80)), "--from", "pod"]);
    assert_eq!(
        (t.verdict.action, t.layer.as_str()),
        (Action::Reject, "socket")
    );
    // And from the node itself: inferred (its own address), the socket layer refuses, as the
    // real connection shows.
    let host = c.node("node1").host();
    let t = trace(
        &c,
        &[
            &family.ip(&host).to_string(),
            &format!("{}/tcp", at(lb, 80)),
        ],
    );
    assert_eq!(t.from, Origin::Host, "{t:?}");
    assert!(t.from_inferred && t.layer == "socket", "{t:?}");
    assert_eq!(t.verdict.action, Action::Reject, "{t:?}");
    let a = c
        .client(&host, &["tcp", &at(lb, 80), "--timeout-ms", "3000"])
        .remove(0);
    assert_eq!(
        a.error.as_deref(),
        Some("ECONNREFUSED"),
        "{family}: {}",
        a.raw
    );

    // eTP Local with its only endpoint on node2: node1 drops.
    let t = trace(&c, &[&at(client, 44002), &format!("{}/tcp", at(lb2, 80))]);
    assert_eq!(t.verdict.action, Action::Drop, "{t:?}");
    assert_eq!(t.verdict.reason.as_deref(), Some("no_local_endpoint"));
    let before = counter(&c, Counter::NsNoLocalDrop);
    let a = c
        .client(&ext1, &["tcp", &at(lb2, 80), "--timeout-ms", "1500"])
        .remove(0);
    assert!(
        matches!(a.error.as_deref(), Some("timeout" | "ETIMEDOUT")),
        "{family}: dropped: {}",
        a.raw
    );
    assert!(counter(&c, Counter::NsNoLocalDrop) > before);

    // iTP Local without a local endpoint, from a pod: the egress guard drops.
    let vip3 = family.pick(CLUSTER_IP3);
    wait_backends(&c, family, vip3, &[]);
    let t = trace(
        &c,
        &[&ip, &format!("{}/tcp", at(vip3, 80)), "--from", "pod"],
    );
    assert_eq!(t.verdict.action, Action::Drop, "{t:?}");
    assert_eq!(t.verdict.reason.as_deref(), Some("guard_no_local"), "{t:?}");
    let before = counter(&c, Counter::GuardNoLocalDrop);
    let a = c
        .client(&client_pod, &["tcp", &at(vip3, 80), "--timeout-ms", "1500"])
        .remove(0);
    assert!(
        matches!(a.error.as_deref(), Some("timeout" | "ETIMEDOUT")),
        "{family}: dropped by the guard: {}",
        a.raw
    );
    assert!(counter(&c, Counter::GuardNoLocalDrop) > before);

    // Not a frontend: passes, at both layers.
    let elsewhere: IpAddr = family.pick(["203.0.113.7", "fd00:203::7"]).parse().unwrap();
    let t = trace(
        &c,
        &[&at(client, 44003), &format!("{}/tcp", at(elsewhere, 80))],
    );
    assert_eq!(t.verdict.action, Action::Pass, "{t:?}");
    assert!(t.frontend.is_none());
    let node1: IpAddr = family.pick([c.node("node1").ip.into(), c.node("node1").ip6.into()]);
    let t = trace(&c, &[&at(client, 44004), &format!("{}/tcp", at(node1, 22))]);
    assert_eq!(t.verdict.action, Action::Pass, "{t:?}");
    let t = trace(
        &c,
        &[&ip, &format!("{}/udp", at(elsewhere, 80)), "--from", "pod"],
    );
    assert_eq!(
        (t.verdict.action, t.layer.as_str()),
        (Action::Pass, "socket")
    );
}

fn cluster_ip_affinity_from_a_pod_is_predicted(family: Family) {
    require_root!();
    let c = cluster("cluster_ip_affinity_from_a_pod_is_predicted", family);
    let vip = family.pick(CLUSTER_IP);
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node1", "b2");
    let b3 = c.add_pod_on("node1", "b3");
    let pods = [&b1, &b2, &b3];
    let _echos: Vec<_> = pods.iter().map(|p| c.start_echo(p, &[8080], &[])).collect();
    let cl = c.add_pod_on("node1", "cl");
    let other = c.add_pod_on("node1", "other");
    c.manifests().apply(
        &Service::cluster_ip("sticky", CLUSTER_IP[0])
            .cluster_ips(&CLUSTER_IP)
            .ip_family_policy("PreferDualStack")
            .port_to("http", 80, "TCP", 8080u16)
            .affinity(600),
    );
    apply_slices(
        &c,
        "sticky",
        &[(&b1, "node1"), (&b2, "node1"), (&b3, "node1")],
    );
    c.start_agents();
    wait_backends(&c, family, vip, &pods);
    let endpoints = by_endpoint(family, &pods);
    let dst = format!("{}/tcp", at(vip, 80));
    let src = family.ip(&cl).to_string();
    let netns = cl.netns_path.to_string_lossy().into_owned();
    let trace_cl = || trace(&c, &[&src, &dst, "--from", "pod", "--netns", &netns]);

    // No connection yet: one of the three at random.
    let t = trace_cl();
    assert_eq!(t.layer, "socket");
    assert_eq!(t.verdict.by.as_deref(), Some("random"), "{t:?}");
    assert_eq!(t.verdict.candidates.len(), 3, "{t:?}");
    assert!(t.affinity.is_none(), "{t:?}");
    assert_eq!(t.frontend.as_ref().unwrap().kind, "ClusterIP");

    let connect = |from: &Pod| {
        let a = c
            .client(from, &["tcp", &at(vip, 80), "--timeout-ms", "3000"])
            .remove(0);
        a.pod()
            .unwrap_or_else(|| panic!("{family}: {} got no answer: {}", from.name, a.raw))
    };
    let first = connect(&cl);
    let t = trace_cl();
    assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
    assert_eq!(t.verdict.by.as_deref(), Some("affinity"), "{t:?}");
    let a = t.affinity.as_ref().expect("the affinity entry");
    assert!(
        a.live && a.timeout_seconds == 600 && a.age_seconds <= 600,
        "{a:?}"
    );
    let predicted = t.verdict.backend.clone().expect("a backend");
    assert_eq!(
        endpoints[&predicted].name, first,
        "{family}: the affinity entry names the backend of the first connection"
    );
    let second = connect(&cl);
    assert_eq!(
        second, endpoints[&predicted].name,
        "{family}: the second connection lands where trace said"
    );
    // Without --from, the route to the client (through the node's bridge, no north-south
    // device) says it is a pod.
    let t = trace(&c, &[&src, &dst, "--netns", &netns]);
    assert_eq!((t.from, t.from_inferred), (Origin::Pod, true), "{t:?}");
    assert_eq!(
        t.verdict.backend.as_deref(),
        Some(predicted.as_str()),
        "{t:?}"
    );
    if family == Family::V4 {
        // A dual-stack socket dialling ::ffff:<ClusterIP> is looked up in the IPv4 maps,
        // with the same affinity entry.
        let mapped = format!("[::ffff:{}]:80/tcp", CLUSTER_IP[0]);
        let t = trace(&c, &[&src, &mapped, "--from", "pod", "--netns", &netns]);
        assert!(t.maps.starts_with("IPv4"), "{t:?}");
        assert_eq!(t.verdict.by.as_deref(), Some("affinity"), "{t:?}");
        assert_eq!(
            t.verdict.backend.as_deref(),
            Some(predicted.as_str()),
            "{t:?}"
        );
    }
    // Another pod (another network namespace) has no entry.
    let other_netns = other.netns_path.to_string_lossy().into_owned();
    let t = trace(
        &c,
        &[
            &family.ip(&other).to_string(),
            &dst,
            "--from",
            "pod",
            "--netns",
            &other_netns,
        ],
    );
    assert_eq!(t.verdict.by.as_deref(), Some("random"), "{t:?}");
}

/// curl in `pod`'s network namespace outside node1's cgroup (the socket hooks do not see
/// it: its packets take the per-packet path), from source port `sport`: the pod that
/// answered (its reply came back, so the ClusterIP was given back to it); Err: why not.
fn outside_curl(pod: &Pod, target: &str, sport: u16) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    let sport = sport.to_string();
    let url = format!("http://{target}/");
    cmd.args(["-sS", "-g", "-m", "3", "--local-port", &sport, &url]);
    let placement = Placement {
        netns: Some(pod.netns_path.clone()),
        cgroup: None,
    };
    let out = proc::output_placed(&mut cmd, &placement, Duration::from_secs(30))
        .map_err(|e| format!("curl in {}: {e}", pod.name))?;
    let body = String::from_utf8_lossy(&out.stdout);
    EchoAny::parse(&body).map(|e| e.pod).ok_or_else(|| {
        format!(
            "not an echo reply: {body:?} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// `--from pod-packet`: what ferry_tc_pod does with a pod's packet the socket layer did not
/// translate (a process outside the hooked cgroup), predicted per source port and then
/// done by the real flow; the Service port's name comes from the agent's status. The
/// backends are on node2 (DNAT); a third Service's is a pod on the client's own bridge, which
/// ferry masquerades (pod_lb.rs) and trace says so. A second Service whose endpoint is the
/// client itself makes node1's bridge a pod device.
fn per_packet_pod_path_is_predicted(family: Family) {
    require_root!();
    let c = cluster("per_packet_pod_path_is_predicted", family);
    let vip = family.pick(CLUSTER_IP);
    let b1 = c.add_pod_on("node2", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let b3 = c.add_pod_on("node2", "b3");
    let pods = [&b1, &b2, &b3];
    let _echos: Vec<_> = pods.iter().map(|p| c.start_echo(p, &[8080], &[])).collect();
    let cl = c.add_pod_on("node1", "cl");
    let nb = c.add_pod_on("node1", "nb");
    let _nb_echo = c.start_echo(&nb, &[8080], &[]);
    c.manifests().apply(
        &Service::cluster_ip("neighbour", CLUSTER_IP3[0])
            .cluster_ips(&CLUSTER_IP3)
            .ip_family_policy("PreferDualStack")
            .port_to("http", 80, "TCP", 8080u16),
    );
    apply_slices(&c, "neighbour", &[(&nb, "node1")]);
    c.manifests().apply(
        &Service::cluster_ip("anchor", CLUSTER_IP2[0])
            .cluster_ips(&CLUSTER_IP2)
            .ip_family_policy("PreferDualStack")
            .port_to("http", 80, "TCP", 8080u16),
    );
    apply_slices(&c, "anchor", &[(&cl, "node1")]);
    c.manifests().apply(
        &Service::cluster_ip("web", CLUSTER_IP[0])
            .cluster_ips(&CLUSTER_IP)
            .ip_family_policy("PreferDualStack")
            .port_to("http", 80, "TCP", 8080u16),
    );
    apply_slices(&c, "web", &[(&b1, "node2"), (&b2, "node2"), (&b3, "node2")]);
    c.start_agents();
    wait_backends(&c, family, vip, &pods);
    wait_backends(&c, family, family.pick(CLUSTER_IP2), &[&cl]);
    let endpoints = by_endpoint(family, &pods);
    let target = at(vip, 80);
    let dst = format!("{target}/tcp");
    // The pod programs reach node1's bridge with its first local endpoint: poll a first flow.
    // (Each try from a port of its own: a failed try's flow stays in conntrack.)
    let mut try_port = 39_000u16;
    let first = poll(DEADLINE, Duration::from_millis(100), || {
        try_port += 1;
        outside_curl(&cl, &target, try_port)
    });
    if let Err(e) = first {
        panic!("{family}: {target} never answered per packet: {e}");
    }

    let mut seen = std::collections::BTreeSet::new();
    let mut tracked = 0;
    for sport in [40_001u16, 40_002, 40_003, 40_004, 40_005, 40_006] {
        let src = at(family.ip(&cl), sport);
        let t = trace(&c, &[&src, &dst, "--from", "pod-packet"]);
        assert_eq!(t.layer, "pod", "{t:?}");
        assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
        assert_eq!(t.verdict.mode.as_deref(), Some("dnat"), "{t:?}");
        let fe = t.frontend.as_ref().expect("the frontend");
        assert_eq!(fe.service.as_deref(), Some("default/web"), "{fe:?}");
        assert_eq!(fe.port_name.as_deref(), Some("http"), "{fe:?}");
        let predicted = t.verdict.backend.clone().expect("a backend");
        let who = outside_curl(&cl, &target, sport)
            .unwrap_or_else(|e| panic!("{family}: {target} from port {sport}: {e}"));
        assert_eq!(
            who, endpoints[&predicted].name,
            "{family}: port {sport} lands where trace said"
        );
        seen.insert(who);
        // The flow is tracked now (until the agent collects its closed entries): the same
        // answer, from its conntrack entry flagged as a pod flow.
        let t = trace(&c, &[&src, &dst, "--from", "pod-packet"]);
        if t.verdict.by.as_deref() == Some("conntrack") {
            assert_eq!(t.verdict.backend.as_deref(), Some(predicted.as_str()));
            assert!(t.conntrack.as_ref().is_some_and(|ct| ct.pod), "{t:?}");
            tracked += 1;
        }
    }
    assert!(
        tracked > 0,
        "{family}: no flow was found tracked right after it ran"
    );
    println!("{family}: backends reached per packet: {seen:?}");
    // A backend on the client's own bridge: masqueraded, and served.
    let neighbour = at(family.pick(CLUSTER_IP3), 80);
    wait_backends(&c, family, family.pick(CLUSTER_IP3), &[&nb]);
    let src = at(family.ip(&cl), 40_300);
    let t = trace(
        &c,
        &[&src, &format!("{neighbour}/tcp"), "--from", "pod-packet"],
    );
    assert_eq!(t.verdict.action, Action::Translate, "{t:?}");
    assert_eq!(t.verdict.mode.as_deref(), Some("masquerade"), "{t:?}");
    assert!(t.verdict.detail.contains("bridge"), "{t:?}");
    let who = outside_curl(&cl, &neighbour, 40_300)
        .unwrap_or_else(|e| panic!("{family}: {neighbour} from port 40300: {e}"));
    assert_eq!(who, "nb", "{family}: the neighbour answered");
    // A port no Service defines: the pod gets a port unreachable.
    let t = trace(
        &c,
        &[
            &at(family.ip(&cl), 40_100),
            &format!("{}/tcp", at(vip, 81)),
            "--from",
            "pod-packet",
        ],
    );
    assert_eq!(t.verdict.action, Action::Reject, "{t:?}");
    // The text report names the layer and the Service port (a flow not yet made: a
    // tracked one is decided by its conntrack entry before any frontend lookup).
    let n = c.node("node1");
    let pin = n.pin_dir.to_string_lossy().into_owned();
    let src = at(family.ip(&cl), 40_200);
    let out = c.output_timeout(
        &n.host(),
        Lab::ferry_bin(),
        &["trace", &src, &dst, "--from", "pod-packet", "--bpffs", &pin],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("a pod's device (TC ingress, per packet)"),
        "{text}"
    );
    assert!(text.contains("default/web port http"), "{text}");
}

/// Bad input and missing pins: one line naming the cause, a non-zero exit.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn bad_input_is_one_line_naming_the_cause() {
    let missing = std::env::temp_dir().join(format!("ferry-trace-none-{}", std::process::id()));
    let missing = missing.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 6] = [
        (&["nowhere", "10.96.0.10:80/tcp"], "SRC `nowhere`"),
        (
            &["10.0.0.1", "10.96.0.10:80/sctp"],
            "unknown protocol `sctp`",
        ),
        (&["10.0.0.1", "10.96.0.10:80"], "no protocol"),
        (&["10.0.0.1", "10.96.0:80/tcp"], "is not IP:PORT"),
        (
            &["10.0.0.1:99999", "10.96.0.10:80/tcp"],
            "SRC `10.0.0.1:99999`",
        ),
        (
            &["10.0.0.1", "10.96.0.10:80/tcp"],
            "reading ferry's maps under",
        ),
    ];
    for (args, cause) in cases {
        let out = Command::new(Lab::ferry_bin())
            .arg("trace")
            .args(args)
            .args(["--bpffs", &missing, "--no-agent"])
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("ferry runs");
        let err = String::from_utf8_lossy(&out.stderr);
        println!("ferry trace {args:?}: {err}");
        assert!(!out.status.success(), "{args:?} must fail");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(cause), "{args:?}: names {cause}: {err}");
        assert!(out.stdout.is_empty(), "nothing on stdout");
    }
}
