//! Where kube-proxy drops rather than rejects, on the socket path (issue 11, items 2 and 4):
//! a Local traffic policy with endpoints only on other nodes, and loadBalancerSourceRanges for
//! pods and host processes. The socket hooks cannot drop, so the egress guard does: real TCP
//! and UDP clients in pod namespaces and in the node's, an nftables counter in the node
//! namespace proving that no packet to a service address left the client.
//!
//! Both tests run over both families of the dual-stack lab (`NAME::ipv4`, `NAME::ipv6`, one
//! body taking a [`Family`]): their Services are dual-stack (a ClusterIP and a load-balancer
//! ingress IP of each family, source ranges of each family, one EndpointSlice per family), the
//! clients reach them over the test's family, and the counter counts that family's packets
//! (an `ip` or `ip6` nftables table).

mod common;

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    EndpointSlice, Lab, Pod, Service, flood, netns, over_both_families, require_root,
    services::{self, Family, at, url},
};

/// The Services' addresses, IPv4 and IPv6.
const LOCAL_VIP: [&str; 2] = ["10.96.0.20", "fd00:96::14"];
const EMPTY_VIP: [&str; 2] = ["10.96.0.21", "fd00:96::15"];
const LB_VIP: [&str; 2] = ["10.96.0.30", "fd00:96::1e"];
const LB_IP: [&str; 2] = ["203.0.113.30", "2001:db8:113::30"];
/// A source range of each family that holds no address of the lab.
const ELSEWHERE: [&str; 2] = ["198.51.100.0/24", "2001:db8:51::/64"];
/// The lab's service range of each family, routed to br0 in the node namespace by the first
/// test (see there).
const SERVICE_RANGE: [&str; 2] = ["10.96.0.0/16", "fd00:96::/112"];

over_both_families!(
    local_policy_without_a_local_endpoint_drops_and_without_any_endpoint_rejects,
    load_balancer_source_ranges_apply_to_pods_and_the_host,
);

/// kube-proxy's gauge of service ports a Local policy drops, as /metrics reports it.
fn no_local_metric(lab: &Lab, policy: &str) -> Option<u64> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 10249));
    let body = flood::http_get_in(
        &lab.node_netns_path(),
        addr,
        "/metrics",
        std::time::Duration::from_secs(2),
    )
    .ok()?
    .body;
    let line = format!(
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{traffic_policy=\"{policy}\"}} "
    );
    body.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|n| n.parse().ok())
}

/// The gauge once it reads `want`, or its last reading at `DEADLINE`. The agent publishes it
/// when a sync ends, after that sync's maps are written, so a test that saw the maps change
/// may read the gauge before it follows.
fn settled_no_local_metric(lab: &Lab, policy: &str, want: u64) -> Option<u64> {
    let start = std::time::Instant::now();
    loop {
        let got = no_local_metric(lab, policy);
        if got == Some(want) || start.elapsed() >= DEADLINE {
            return got;
        }
        std::thread::sleep(ferry_tests::proc::POLL);
    }
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.stats()["counters"][name].as_u64().unwrap_or_default()
}

/// nftables counters in the node namespace of packets of one family to `addrs`: in prerouting
/// (an `ip` or `ip6` table) what a client in a pod let out, on the bridge's egress (netdev
/// hook, after every IP-layer hook and so after the guard) what a process on the node sent
/// towards the pods.
struct NodeCounter<'a> {
    lab: &'a Lab,
    tables: [String; 2],
}

impl<'a> NodeCounter<'a> {
    fn new(lab: &'a Lab, family: Family, addrs: &[&str]) -> Self {
        let a = addrs.join(", ");
        let (table, daddr) = family.pick([("ip", "ip daddr"), ("ip6", "ip6 daddr")]);
        let rules = format!(
            "table {table} fy_guard_pre {{\n chain pre {{\n  type filter hook prerouting priority -300;\n  {daddr} {{ {a} }} counter\n }}\n}}\n\
             table netdev fy_guard_br0 {{\n chain out {{\n  type filter hook egress device br0 priority 0;\n  {daddr} {{ {a} }} counter\n }}\n}}\n"
        );
        let file = lab.tmp_dir().join("guard.nft");
        std::fs::write(&file, rules).expect("writing the nft rules");
        netns::run(lab.node_netns(), "nft", &["-f", &file.to_string_lossy()]).expect("nft -f");
        NodeCounter {
            lab,
            tables: [
                format!("{table} fy_guard_pre"),
                "netdev fy_guard_br0".to_owned(),
            ],
        }
    }

    fn packets(&self) -> u64 {
        let mut total = 0;
        for table in &self.tables {
            let mut args = vec!["list", "table"];
            args.extend(table.split(' '));
            let out = netns::run(self.lab.node_netns(), "nft", &args).expect("nft list");
            let words: Vec<&str> = out.split_whitespace().collect();
            let n = words
                .windows(2)
                .find(|w| w[0] == "packets")
                .map(|w| w[1].parse::<u64>().expect("a packet count"));
            total += n.unwrap_or_else(|| panic!("no counter in: {out}"));
        }
        total
    }
}

/// A dual-stack ClusterIP Service `name` on `vips` (80/TCP -> 8080, 53/UDP -> 8053).
fn web(name: &str, vips: [&str; 2]) -> Service {
    Service::dual_stack(name, "PreferDualStack", &vips)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16)
}

/// The EndpointSlices `<service>-1-ipv4` and `-ipv6` of `service` (8080/TCP, 8053/UDP): each
/// endpoint a pod and the node it runs on, with its address of the slice's family.
fn slices(service: &str, eps: &[(&Pod, &str)]) -> [EndpointSlice; 2] {
    Family::BOTH.map(|f| {
        f.slice(&format!("{service}-1"), service)
            .port("http", 8080, "TCP")
            .port("dns", 8053, "UDP")
            .endpoints(eps.iter().map(|(pod, node)| f.ready(pod).node(node)))
    })
}

fn apply(lab: &Lab, slices: &[EndpointSlice]) {
    for s in slices {
        lab.manifests().apply(s);
    }
}

/// `lab-client udp TARGET --timeout-ms MS [--connected]` from `from`: its one attempt.
fn udp_once(lab: &Lab, from: &Pod, target: &str, ms: u32, connected: bool) -> ferry_tests::Attempt {
    let ms = ms.to_string();
    let mut args = vec!["udp", target, "--timeout-ms", &ms];
    if connected {
        args.push("--connected");
    }
    lab.client(from, &args).remove(0)
}

fn local_policy_without_a_local_endpoint_drops_and_without_any_endpoint_rejects(family: Family) {
    require_root!();
    let lab = Lab::new(&format!(
        "local_policy_without_a_local_endpoint_drops_{}",
        family.tag()
    ));
    let (local_vip, empty_vip) = (family.pick(LOCAL_VIP), family.pick(EMPTY_VIP));
    let client = lab.add_pod("client");
    let remote = lab.add_pod("remote");
    let local = lab.add_pod("local");
    let _e1 = lab.start_echo(&remote, &[8080], &[8053]);
    let _e2 = lab.start_echo(&local, &[8080], &[8053]);
    let svc = |name: &str, vips: [&str; 2]| web(name, vips).internal_traffic_policy("Local");
    // `local`: its only endpoint runs on another node. `empty`: no endpoint at all.
    lab.manifests().apply(&svc("local", LOCAL_VIP));
    apply(&lab, &slices("local", &[(&remote, "node-2")]));
    lab.manifests().apply(&svc("empty", EMPTY_VIP));
    apply(&lab, &slices("empty", &[]));
    let nft = NodeCounter::new(&lab, family, &[local_vip, empty_vip]);
    // The lab's node has no default route: a route for the service range and a neighbour
    // stand in for one, so that an untranslated packet from the node would go out on br0.
    let node = lab.host();
    let node_ns = lab.node_netns();
    let ip = family.pick(["-4", "-6"]);
    netns::ip(
        node_ns,
        &[ip, "route", "add", family.pick(SERVICE_RANGE), "dev", "br0"],
    )
    .expect("route");
    for vip in [local_vip, empty_vip] {
        let neigh = [
            ip,
            "neigh",
            "add",
            vip,
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "br0",
            "nud",
            "permanent",
        ];
        netns::ip(node_ns, &neigh).expect("neighbour");
    }
    // The counters see what leaves without ferry: one datagram from a pod, one from the node.
    for from in [&client, &node] {
        udp_once(&lab, from, &at(local_vip, 53), 200, false);
    }
    let base = nft.packets();
    assert_eq!(
        base, 2,
        "{family}: the counters see untranslated packets from a pod and from the node"
    );
    start_agent(&lab);
    lab.wait_services(
        |v| {
            services::frontend(v, local_vip, 53, Protocol::Udp)
                .is_some_and(|f| f.flags.iter().any(|f| f == "DropNoLocalEndpoints"))
                && services::frontend(v, empty_vip, 53, Protocol::Udp).is_some_and(|f| {
                    f.backends.is_empty() && !f.flags.iter().any(|f| f == "DropNoLocalEndpoints")
                })
        },
        DEADLINE,
    );

    // Counted as kube-proxy counts it: the two ports of `local`; `empty` (rejected) is not.
    assert_eq!(
        settled_no_local_metric(&lab, "internal", 2),
        Some(2),
        "{family}"
    );
    assert_eq!(
        settled_no_local_metric(&lab, "external", 0),
        Some(0),
        "{family}"
    );

    // Endpoints elsewhere only: dropped. TCP times out, UDP is sent and lost.
    let tcp = &lab.client(
        &client,
        &["tcp", &at(local_vip, 80), "--timeout-ms", "1500"],
    )[0];
    assert_eq!(
        tcp.error.as_deref(),
        Some("timeout"),
        "{family}: TCP is dropped, not refused: {}",
        tcp.raw
    );
    assert!(tcp.elapsed_ms >= 1400, "{family}: {}", tcp.raw);
    let curl = lab.output(
        &client,
        "curl",
        &["-sS", "-g", "--connect-timeout", "1", &url(local_vip, 80)],
    );
    assert_eq!(
        curl.status.code(),
        Some(28),
        "{family}: curl times out (28): {curl:?}"
    );
    for connected in [false, true] {
        let udp = udp_once(&lab, &client, &at(local_vip, 53), 700, connected);
        assert_eq!(
            (udp.stage.as_deref(), udp.error.as_deref()),
            (Some("recv"), Some("timeout")),
            "{family}: UDP (connected: {connected}) is sent and lost, not refused: {}",
            udp.raw
        );
    }
    let dropped = counter(&lab, "guard_no_local_drop");
    assert!(
        dropped >= 3,
        "{family}: the guard dropped the SYN and both datagrams: {dropped}"
    );
    assert!(
        counter(&lab, "sock_no_local") >= 4,
        "{family}: {}",
        lab.stats()
    );

    // No endpoint anywhere: refused at once, as before.
    let tcp = &lab.client(
        &client,
        &["tcp", &at(empty_vip, 80), "--timeout-ms", "3000"],
    )[0];
    assert_eq!(
        tcp.error.as_deref(),
        Some("ECONNREFUSED"),
        "{family}: {}",
        tcp.raw
    );
    assert!(tcp.elapsed_ms < 1000, "{family}: {}", tcp.raw);
    let udp = udp_once(&lab, &client, &at(empty_vip, 53), 700, false);
    assert_eq!(
        udp.stage.as_deref(),
        Some("send"),
        "{family}: refused: {}",
        udp.raw
    );

    // A process on the node follows the same rule.
    let tcp = &lab.client(&node, &["tcp", &at(local_vip, 80), "--timeout-ms", "1000"])[0];
    assert_eq!(
        tcp.error.as_deref(),
        Some("timeout"),
        "{family}: host: {}",
        tcp.raw
    );

    // An endpoint on this node: served by it alone, the same sockets' kind unaffected.
    apply(
        &lab,
        &slices("local", &[(&remote, "node-2"), (&local, "node-1")]),
    );
    wait_active(
        &lab,
        "a local endpoint",
        local_vip,
        80,
        Protocol::Tcp,
        &[family.ep(&local, 8080)],
    );
    let served = lab.tcp(&client, &at(local_vip, 80), 3);
    assert_all_ok(&served, &format!("{family}: TCP with a local endpoint"));
    assert!(
        served.iter().all(|a| a.pod().as_deref() == Some("local")),
        "{family}: {served:?}"
    );
    let udp = udp_once(&lab, &client, &at(local_vip, 53), 2000, false);
    assert!(udp.ok, "{family}: UDP with a local endpoint: {}", udp.raw);
    assert_eq!(
        settled_no_local_metric(&lab, "internal", 0),
        Some(0),
        "{family}"
    );

    assert_eq!(
        nft.packets(),
        base,
        "{family}: no packet to a service address left a socket"
    );
    println!("guard drops: {}", counter(&lab, "guard_no_local_drop"));
}

fn load_balancer_source_ranges_apply_to_pods_and_the_host(family: Family) {
    require_root!();
    let lab = Lab::new(&format!("lb_source_ranges_pods_and_host_{}", family.tag()));
    let (lb_vip, lb_ip) = (family.pick(LB_VIP), family.pick(LB_IP));
    let backend = lab.add_pod("backend");
    let inside = lab.add_pod("inside");
    let outside = lab.add_pod("outside");
    let node = lab.host();
    let _echo = lab.start_echo(&backend, &[8080], &[8053]);
    // Dual-stack: a ClusterIP and an ingress IP of each family; the ranges of both families
    // (each frontend takes those of its own): the sources' addresses as one-address prefixes
    // and, while there are sources, a prefix of each family elsewhere.
    let svc = |sources: &[&Pod]| {
        let mut s = Service::load_balancer("lb", LB_VIP[0])
            .cluster_ips(&LB_VIP)
            .ip_family_policy("PreferDualStack")
            .port_to("http", 80, "TCP", 8080u16)
            .port_to("dns", 53, "UDP", 8053u16);
        for ip in LB_IP {
            s = s.lb_ingress(ip);
        }
        for f in Family::BOTH {
            for pod in sources {
                s = s.source_range(&f.host_cidr(pod));
            }
            if !sources.is_empty() {
                s = s.source_range(f.pick(ELSEWHERE));
            }
        }
        s
    };
    // This family's ranges of a frontend, as `ferry services` shows them.
    let ranges_of = |sources: &[&Pod]| -> Vec<String> {
        let mut r: Vec<String> = sources.iter().map(|p| family.host_cidr(p)).collect();
        if !sources.is_empty() {
            r.push(family.pick(ELSEWHERE).to_owned());
        }
        r.sort();
        r
    };
    let ranges_are = |want: Vec<String>| {
        move |v: &ferry::cmd::services::ServicesView| {
            services::frontend(v, lb_ip, 80, Protocol::Tcp).is_some_and(|f| {
                let mut have = f.source_ranges.clone();
                have.sort();
                have == want
            })
        }
    };
    lab.manifests().apply(&svc(&[&inside]));
    apply(&lab, &slices("lb", &[(&backend, "node-1")]));
    let nft = NodeCounter::new(&lab, family, &[lb_ip]);
    // Without ferry a pod's datagram to the LB IP goes out to the node: the counter sees it.
    udp_once(&lab, &outside, &at(lb_ip, 53), 200, false);
    let base = nft.packets();
    assert_eq!(base, 1, "{family}: the counter sees an untranslated packet");
    start_agent(&lab);
    wait_active(
        &lab,
        "LB IP",
        lb_ip,
        80,
        Protocol::Tcp,
        &[family.ep(&backend, 8080)],
    );
    wait_active(
        &lab,
        "LB IP UDP",
        lb_ip,
        53,
        Protocol::Udp,
        &[family.ep(&backend, 8053)],
    );
    lab.wait_services(ranges_are(ranges_of(&[&inside])), DEADLINE);
    let tcp_to = |pod: &Pod, target: &str| {
        lab.client(pod, &["tcp", target, "--timeout-ms", "1200"])
            .remove(0)
    };
    let lb_tcp = at(lb_ip, 80);
    let lb_udp = at(lb_ip, 53);

    // A pod inside the ranges: served, over TCP and unconnected UDP.
    assert_all_ok(
        &lab.tcp(&inside, &lb_tcp, 3),
        &format!("{family}: inside, TCP"),
    );
    let udp = udp_once(&lab, &inside, &lb_udp, 2000, false);
    assert!(udp.ok, "{family}: inside, UDP: {}", udp.raw);

    // A pod outside: dropped (kube-proxy's firewall drops), TCP and UDP alike.
    let before = counter(&lab, "guard_source_range_drop");
    let a = tcp_to(&outside, &lb_tcp);
    assert_eq!(
        a.error.as_deref(),
        Some("timeout"),
        "{family}: outside, TCP: {}",
        a.raw
    );
    for connected in [false, true] {
        let udp = udp_once(&lab, &outside, &lb_udp, 700, connected);
        assert_eq!(
            (udp.stage.as_deref(), udp.error.as_deref()),
            (Some("recv"), Some("timeout")),
            "{family}: outside, UDP (connected: {connected}): {}",
            udp.raw
        );
    }
    assert!(
        counter(&lab, "guard_source_range_drop") >= before + 3,
        "{family}: {}",
        lab.stats()
    );
    // The same Service's ClusterIP is not range-checked (kube-proxy checks the LB IPs only).
    assert_all_ok(
        &lab.tcp(&outside, &at(lb_vip, 80), 2),
        &format!("{family}: outside, ClusterIP"),
    );

    // A process on the node: its packets leave from the node's address, outside the ranges.
    let a = tcp_to(&node, &lb_tcp);
    assert_eq!(
        a.error.as_deref(),
        Some("timeout"),
        "{family}: host, TCP: {}",
        a.raw
    );

    // The ranges widened to the node's address: the host is served, the outside pod still not.
    lab.manifests().apply(&svc(&[&inside, &node]));
    lab.wait_services(ranges_are(ranges_of(&[&inside, &node])), DEADLINE);
    assert_all_ok(
        &lab.tcp(&node, &lb_tcp, 2),
        &format!("{family}: host inside the widened ranges"),
    );
    let a = tcp_to(&outside, &lb_tcp);
    assert_eq!(
        a.error.as_deref(),
        Some("timeout"),
        "{family}: outside after widening: {}",
        a.raw
    );

    // No ranges at all: everyone.
    lab.manifests().apply(&svc(&[]));
    lab.wait_services(ranges_are(Vec::new()), DEADLINE);
    assert_all_ok(
        &lab.tcp(&outside, &lb_tcp, 2),
        &format!("{family}: outside, no ranges"),
    );
    assert_eq!(
        nft.packets(),
        base,
        "{family}: no packet to the LB IP left a socket"
    );
}

/// The egress guard runs on every packet of every socket in the cgroup, and only sockets of
/// the two rules above need it: the agent attaches it before it writes the first Service that
/// needs it and detaches it once none is left (at the next link check), so a cluster without
/// such Services pays nothing per packet.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_egress_guard_is_attached_only_while_a_service_needs_it() {
    require_root!();
    let lab = Lab::new("the_egress_guard_is_attached_only_while_a_service_needs_it");
    let (_b1, _e1, _web, _web_slice) = serve_web(&lab, "10.96.0.10", "web");
    let on_cgroup = || lab.bpftool_cgroup_show().contains("ferry_guard4");
    assert!(!guard_pin(&lab).exists(), "no guard for a Cluster policy");
    assert!(!on_cgroup(), "{}", lab.bpftool_cgroup_show());

    let (svc, slice) = apply_guarded(&lab, "guarded", "10.96.0.77");
    assert!(on_cgroup(), "{}", lab.bpftool_cgroup_show());
    let client = lab.add_pod("client");
    let drops = counter(&lab, "guard_no_local_drop");
    let a = lab.client(&client, &["tcp", "10.96.0.77:80", "--timeout-ms", "300"]);
    assert!(!a[0].ok, "dropped: {a:?}");
    assert!(
        counter(&lab, "guard_no_local_drop") > drops,
        "the guard dropped it"
    );

    lab.manifests().delete(&slice);
    lab.manifests().delete(&svc);
    let start = std::time::Instant::now();
    let within = ferry::datapath::links::CHECK_PERIOD + DEADLINE;
    while guard_pin(&lab).exists() || on_cgroup() {
        assert!(
            start.elapsed() < within,
            "the guard stayed without a Service needing it: {}",
            lab.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    report(
        "last guarded Service deleted -> guard detached",
        start.elapsed(),
    );
    assert_all_ok(
        &lab.tcp(&client, "10.96.0.10:80", 3),
        "served without the guard",
    );
}
