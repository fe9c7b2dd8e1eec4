//! Where kube-proxy drops rather than rejects, on the socket path (issue 11, items 2 and 4):
//! a Local traffic policy with endpoints only on other nodes, and loadBalancerSourceRanges for
//! pods and host processes. The socket hooks cannot drop, so the egress guard does: real TCP
//! and UDP clients in pod namespaces and in the node's, an nftables counter in the node
//! namespace proving that no packet to a service address left the client.

mod common;

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    Endpoint, EndpointSlice, Lab, Pod, Service, flood, lab::GATEWAY, netns, require_root, services,
};

const LOCAL_VIP: &str = "10.96.0.20";
const EMPTY_VIP: &str = "10.96.0.21";
const LB_VIP: &str = "10.96.0.30";
const LB_IP: &str = "203.0.113.30";

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

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.stats()["counters"][name].as_u64().unwrap_or_default()
}

/// nftables counters in the node namespace of packets to `addrs`: in prerouting what a client
/// in a pod let out, on the bridge's egress (netdev hook, after every IP-layer hook and so
/// after the guard) what a process on the node sent towards the pods.
struct NodeCounter<'a> {
    lab: &'a Lab,
}

impl<'a> NodeCounter<'a> {
    const TABLES: [&'static str; 2] = ["ip fy_guard_pre", "netdev fy_guard_br0"];

    fn new(lab: &'a Lab, addrs: &[&str]) -> Self {
        let a = addrs.join(", ");
        let rules = format!(
            "table ip fy_guard_pre {{\n chain pre {{\n  type filter hook prerouting priority -300;\n  ip daddr {{ {a} }} counter\n }}\n}}\n\
             table netdev fy_guard_br0 {{\n chain out {{\n  type filter hook egress device br0 priority 0;\n  ip daddr {{ {a} }} counter\n }}\n}}\n"
        );
        let file = lab.tmp_dir().join("guard.nft");
        std::fs::write(&file, rules).expect("writing the nft rules");
        netns::run(lab.node_netns(), "nft", &["-f", &file.to_string_lossy()]).expect("nft -f");
        NodeCounter { lab }
    }

    fn packets(&self) -> u64 {
        let mut total = 0;
        for table in Self::TABLES {
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

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn local_policy_without_a_local_endpoint_drops_and_without_any_endpoint_rejects() {
    require_root!();
    let lab = Lab::new("local_policy_without_a_local_endpoint_drops");
    let client = lab.add_pod("client");
    let remote = lab.add_pod("remote");
    let local = lab.add_pod("local");
    let _e1 = lab.start_echo(&remote, &[8080], &[8053]);
    let _e2 = lab.start_echo(&local, &[8080], &[8053]);
    let svc = |name: &str, vip: &str| {
        Service::cluster_ip(name, vip)
            .port_to("http", 80, "TCP", 8080u16)
            .port_to("dns", 53, "UDP", 8053u16)
            .internal_traffic_policy("Local")
    };
    let slice = |name: &str, eps: Vec<Endpoint>| {
        EndpointSlice::new(&format!("{name}-1"), name)
            .port("http", 8080, "TCP")
            .port("dns", 8053, "UDP")
            .endpoints(eps)
    };
    // `local`: its only endpoint runs on another node. `empty`: no endpoint at all.
    lab.manifests().apply(&svc("local", LOCAL_VIP));
    lab.manifests().apply(&slice(
        "local",
        vec![Endpoint::ready(remote.ip).node("node-2")],
    ));
    lab.manifests().apply(&svc("empty", EMPTY_VIP));
    lab.manifests().apply(&slice("empty", vec![]));
    let nft = NodeCounter::new(&lab, &[LOCAL_VIP, EMPTY_VIP]);
    // The lab's node has no default route: a route for the service range and a neighbour
    // stand in for one, so that an untranslated packet from the node would go out on br0.
    let node = lab.host();
    let node_ns = lab.node_netns();
    netns::ip(node_ns, &["route", "add", "10.96.0.0/16", "dev", "br0"]).expect("route");
    for vip in [LOCAL_VIP, EMPTY_VIP] {
        let neigh = [
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
        lab.client(
            from,
            &["udp", &format!("{LOCAL_VIP}:53"), "--timeout-ms", "200"],
        );
    }
    let base = nft.packets();
    assert_eq!(
        base, 2,
        "the counters see untranslated packets from a pod and from the node"
    );
    start_agent(&lab);
    lab.wait_services(
        |v| {
            services::frontend(v, LOCAL_VIP, 53, Protocol::Udp)
                .is_some_and(|f| f.flags.iter().any(|f| f == "DropNoLocalEndpoints"))
                && services::frontend(v, EMPTY_VIP, 53, Protocol::Udp).is_some_and(|f| {
                    f.backends.is_empty() && !f.flags.iter().any(|f| f == "DropNoLocalEndpoints")
                })
        },
        DEADLINE,
    );

    // Counted as kube-proxy counts it: the two ports of `local`; `empty` (rejected) is not.
    assert_eq!(no_local_metric(&lab, "internal"), Some(2));
    assert_eq!(no_local_metric(&lab, "external"), Some(0));

    // Endpoints elsewhere only: dropped. TCP times out, UDP is sent and lost.
    let tcp = &lab.client(
        &client,
        &["tcp", &format!("{LOCAL_VIP}:80"), "--timeout-ms", "1500"],
    )[0];
    assert_eq!(
        tcp.error.as_deref(),
        Some("timeout"),
        "TCP is dropped, not refused: {}",
        tcp.raw
    );
    assert!(tcp.elapsed_ms >= 1400, "{}", tcp.raw);
    let curl = lab.output(
        &client,
        "curl",
        &[
            "-sS",
            "--connect-timeout",
            "1",
            &format!("http://{LOCAL_VIP}/"),
        ],
    );
    assert_eq!(
        curl.status.code(),
        Some(28),
        "curl times out (28): {curl:?}"
    );
    for connected in [false, true] {
        let mut args = vec!["udp", "10.96.0.20:53", "--timeout-ms", "700"];
        if connected {
            args.push("--connected");
        }
        let udp = &lab.client(&client, &args)[0];
        assert_eq!(
            (udp.stage.as_deref(), udp.error.as_deref()),
            (Some("recv"), Some("timeout")),
            "UDP (connected: {connected}) is sent and lost, not refused: {}",
            udp.raw
        );
    }
    let dropped = counter(&lab, "guard_no_local_drop");
    assert!(
        dropped >= 3,
        "the guard dropped the SYN and both datagrams: {dropped}"
    );
    assert!(counter(&lab, "sock_no_local") >= 4, "{}", lab.stats());

    // No endpoint anywhere: refused at once, as before.
    let tcp = &lab.client(
        &client,
        &["tcp", &format!("{EMPTY_VIP}:80"), "--timeout-ms", "3000"],
    )[0];
    assert_eq!(tcp.error.as_deref(), Some("ECONNREFUSED"), "{}", tcp.raw);
    assert!(tcp.elapsed_ms < 1000, "{}", tcp.raw);
    let udp = &lab.client(
        &client,
        &["udp", &format!("{EMPTY_VIP}:53"), "--timeout-ms", "700"],
    )[0];
    assert_eq!(udp.stage.as_deref(), Some("send"), "refused: {}", udp.raw);

    // A process on the node follows the same rule.
    let tcp = &lab.client(
        &node,
        &["tcp", &format!("{LOCAL_VIP}:80"), "--timeout-ms", "1000"],
    )[0];
    assert_eq!(tcp.error.as_deref(), Some("timeout"), "host: {}", tcp.raw);

    // An endpoint on this node: served by it alone, the same sockets' kind unaffected.
    lab.manifests().apply(&slice(
        "local",
        vec![
            Endpoint::ready(remote.ip).node("node-2"),
            Endpoint::ready(local.ip).node("node-1"),
        ],
    ));
    wait_active(
        &lab,
        "a local endpoint",
        LOCAL_VIP,
        80,
        Protocol::Tcp,
        &[ep(&local, 8080)],
    );
    let served = lab.tcp(&client, &format!("{LOCAL_VIP}:80"), 3);
    assert_all_ok(&served, "TCP with a local endpoint");
    assert!(
        served.iter().all(|a| a.pod().as_deref() == Some("local")),
        "{served:?}"
    );
    let udp = &lab.client(
        &client,
        &["udp", &format!("{LOCAL_VIP}:53"), "--timeout-ms", "2000"],
    )[0];
    assert!(udp.ok, "UDP with a local endpoint: {}", udp.raw);
    assert_eq!(no_local_metric(&lab, "internal"), Some(0));

    assert_eq!(
        nft.packets(),
        base,
        "no packet to a service address left a socket"
    );
    println!("guard drops: {}", counter(&lab, "guard_no_local_drop"));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn load_balancer_source_ranges_apply_to_pods_and_the_host() {
    require_root!();
    let lab = Lab::new("lb_source_ranges_pods_and_host");
    let backend = lab.add_pod("backend");
    let inside = lab.add_pod("inside");
    let outside = lab.add_pod("outside");
    let _echo = lab.start_echo(&backend, &[8080], &[8053]);
    let svc = |ranges: &[String]| {
        let mut s = Service::load_balancer("lb", LB_VIP)
            .port_to("http", 80, "TCP", 8080u16)
            .port_to("dns", 53, "UDP", 8053u16)
            .lb_ingress(LB_IP);
        for r in ranges {
            s = s.source_range(r);
        }
        s
    };
    lab.manifests().apply(&svc(&[format!("{}/32", inside.ip)]));
    lab.manifests().apply(
        &EndpointSlice::new("lb-1", "lb")
            .port("http", 8080, "TCP")
            .port("dns", 8053, "UDP")
            .endpoint(Endpoint::ready(backend.ip).node("node-1")),
    );
    let nft = NodeCounter::new(&lab, &[LB_IP]);
    // Without ferry a pod's datagram to the LB IP goes out to the node: the counter sees it.
    lab.client(
        &outside,
        &["udp", &format!("{LB_IP}:53"), "--timeout-ms", "200"],
    );
    let base = nft.packets();
    assert_eq!(base, 1, "the counter sees an untranslated packet");
    start_agent(&lab);
    wait_active(
        &lab,
        "LB IP",
        LB_IP,
        80,
        Protocol::Tcp,
        &[ep(&backend, 8080)],
    );
    wait_active(
        &lab,
        "LB IP UDP",
        LB_IP,
        53,
        Protocol::Udp,
        &[ep(&backend, 8053)],
    );
    let tcp_to = |pod: &Pod, target: &str| {
        lab.client(pod, &["tcp", target, "--timeout-ms", "1200"])
            .remove(0)
    };
    let lb_tcp = format!("{LB_IP}:80");
    let lb_udp = format!("{LB_IP}:53");

    // A pod inside the ranges: served, over TCP and unconnected UDP.
    assert_all_ok(&lab.tcp(&inside, &lb_tcp, 3), "inside, TCP");
    let udp = &lab.client(&inside, &["udp", &lb_udp, "--timeout-ms", "2000"])[0];
    assert!(udp.ok, "inside, UDP: {}", udp.raw);

    // A pod outside: dropped (kube-proxy's firewall drops), TCP and UDP alike.
    let before = counter(&lab, "guard_source_range_drop");
    let a = tcp_to(&outside, &lb_tcp);
    assert_eq!(
        a.error.as_deref(),
        Some("timeout"),
        "outside, TCP: {}",
        a.raw
    );
    for connected in [false, true] {
        let mut args = vec![
            String::from("udp"),
            lb_udp.clone(),
            "--timeout-ms".into(),
            "700".into(),
        ];
        if connected {
            args.push("--connected".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let udp = &lab.client(&outside, &args)[0];
        assert_eq!(
            (udp.stage.as_deref(), udp.error.as_deref()),
            (Some("recv"), Some("timeout")),
            "outside, UDP (connected: {connected}): {}",
            udp.raw
        );
    }
    assert!(
        counter(&lab, "guard_source_range_drop") >= before + 3,
        "{}",
        lab.stats()
    );
    // The same Service's ClusterIP is not range-checked (kube-proxy checks the LB IPs only).
    assert_all_ok(
        &lab.tcp(&outside, &format!("{LB_VIP}:80"), 2),
        "outside, ClusterIP",
    );

    // A process on the node: its packets leave from the node's address, outside the ranges.
    let node = lab.host();
    let a = tcp_to(&node, &lb_tcp);
    assert_eq!(a.error.as_deref(), Some("timeout"), "host, TCP: {}", a.raw);

    // The ranges widened to the node's address: the host is served, the outside pod still not.
    lab.manifests().apply(&svc(&[
        format!("{}/32", inside.ip),
        format!("{GATEWAY}/32"),
    ]));
    lab.wait_services(
        |v| {
            services::frontend(v, LB_IP, 80, Protocol::Tcp)
                .is_some_and(|f| f.source_ranges.len() == 2)
        },
        DEADLINE,
    );
    assert_all_ok(
        &lab.tcp(&node, &lb_tcp, 2),
        "host inside the widened ranges",
    );
    let a = tcp_to(&outside, &lb_tcp);
    assert_eq!(
        a.error.as_deref(),
        Some("timeout"),
        "outside after widening: {}",
        a.raw
    );

    // No ranges at all: everyone.
    lab.manifests().apply(&svc(&[]));
    lab.wait_services(
        |v| {
            services::frontend(v, LB_IP, 80, Protocol::Tcp)
                .is_some_and(|f| f.source_ranges.is_empty())
        },
        DEADLINE,
    );
    assert_all_ok(&lab.tcp(&outside, &lb_tcp, 2), "outside, no ranges");
    assert_eq!(nft.packets(), base, "no packet to the LB IP left a socket");
}
