//! The dual-stack lab itself, without ferry: every pod has its IPv6 twin beside its IPv4
//! address, pods reach each other over IPv6 on one node and across the nodes of a cluster
//! (real lab-echo servers, curl -6 and lab-client over TCP and UDP), and no IPv6 route, link
//! or address leaves the lab's namespaces.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use ferry_tests::{
    Cluster, Lab, Pod,
    cleanup::Record,
    client::EchoAny,
    cluster::{EXT1_IP6, ROUTED_NET6},
    lab::{GATEWAY6, ipv6_twin},
    netns, require_root,
};
use serde_json::Value;

/// `ip:port` / `[ipv6]:port`, as lab-client takes it.
fn target(ip: impl Into<IpAddr>, port: u16) -> String {
    SocketAddr::new(ip.into(), port).to_string()
}

/// `curl -6 -g http://[ip6]:port/` from `from`: the echo reply.
fn curl6(lab: &Lab, from: &Pod, to: Ipv6Addr, port: u16) -> EchoAny {
    let url = format!("http://{}/", target(to, port));
    let (result, _) = lab.curl_timed(from, &url, std::time::Duration::from_secs(5), &["-6", "-g"]);
    let body = result.unwrap_or_else(|e| panic!("curl -6 {url} from {}: {e:?}", from.name));
    EchoAny::parse(&body).unwrap_or_else(|| panic!("not an echo reply: {body:?}"))
}

/// TCP (lab-client, 3 connections) and UDP (3 unconnected datagrams) from `from` to `to`'s
/// IPv6 address: every attempt answered by `to`, which saw `from`'s IPv6 address, from the
/// address dialled.
fn tcp_and_udp_over_ipv6(lab: &Lab, from: &Pod, to: &Pod, tcp: u16, udp: u16) {
    let t = target(to.ip6, tcp);
    for a in lab.tcp(from, &t, 3) {
        assert!(a.ok, "TCP {} -> {t}: {}", from.name, a.raw);
        assert_eq!(
            a.peer.as_deref(),
            Some(t.as_str()),
            "getpeername: {}",
            a.raw
        );
        let e = a.echo_any().expect("an echo reply");
        assert_eq!(e.pod, to.name, "{}", a.raw);
        assert_eq!(
            e.peer.ip(),
            IpAddr::V6(from.ip6),
            "the server saw {}",
            a.raw
        );
    }
    let u = target(to.ip6, udp);
    for a in lab.udp(from, &u, 3) {
        assert!(a.ok, "UDP {} -> {u}: {}", from.name, a.raw);
        assert_eq!(a.from.as_deref(), Some(u.as_str()), "recvfrom: {}", a.raw);
        let e = a.echo_any().expect("an echo reply");
        assert_eq!(
            (e.pod.as_str(), e.peer.ip()),
            (to.name.as_str(), IpAddr::V6(from.ip6)),
            "{}",
            a.raw
        );
    }
}

/// The device's global IPv6 addresses as `ip -6 -o addr` prints them (one line each).
fn global_ipv6(ns: &str, dev: &str) -> String {
    netns::ip(
        ns,
        &["-6", "-o", "addr", "show", "dev", dev, "scope", "global"],
    )
    .unwrap_or_else(|e| panic!("ip -6 addr in {ns}: {e:#}"))
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn pods_reach_each_other_over_ipv6_on_one_node() {
    require_root!();
    let lab = Lab::new("pods_reach_each_other_over_ipv6_on_one_node");
    let server = lab.add_pod("server");
    let client = lab.add_pod("client");
    // The addressing scheme: each IPv4 address's twin, the gateway ::1.
    assert_eq!(server.ip6.to_string(), "fd00:10:244::2");
    assert_eq!(client.ip6.to_string(), "fd00:10:244::3");
    assert_eq!(ipv6_twin(server.ip), server.ip6);
    assert_eq!(GATEWAY6.to_string(), "fd00:10:244::1");
    assert_eq!(lab.host().ip6, GATEWAY6);
    let addrs = global_ipv6(&client.netns, "eth0");
    assert!(
        addrs.contains("fd00:10:244::3/64") && !addrs.contains("tentative"),
        "the pod's address, usable: {addrs}"
    );
    let routes = netns::ip(&client.netns, &["-6", "route", "show", "default"]).unwrap();
    assert!(
        routes.contains(&format!("via {GATEWAY6} dev eth0")),
        "an IPv6 default route via the bridge: {routes}"
    );
    assert!(global_ipv6(lab.node_netns(), "br0").contains("fd00:10:244::1/64"));

    let _echo = lab.start_echo(&server, &[8080], &[5353]);
    let reply = curl6(&lab, &client, server.ip6, 8080);
    assert_eq!((reply.pod.as_str(), reply.port), ("server", 8080));
    assert_eq!(
        reply.peer.ip(),
        IpAddr::V6(client.ip6),
        "the server sees the client pod's IPv6 address"
    );
    tcp_and_udp_over_ipv6(&lab, &client, &server, 8080, 5353);
    // IPv4 beside it, on the same server ports.
    let v4 = lab.tcp(&client, &target(server.ip, 8080), 1);
    assert!(v4[0].ok, "{}", v4[0].raw);
    assert_eq!(v4[0].echo().map(|e| *e.peer.ip()), Some(client.ip));
    // The node itself (hostNetwork) reaches the pod over IPv6 from its gateway address.
    let reply = curl6(&lab, &lab.host(), server.ip6, 8080);
    assert_eq!(reply.peer.ip(), IpAddr::V6(GATEWAY6));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn pods_reach_each_other_over_ipv6_across_nodes() {
    require_root!();
    let c = Cluster::new("pods_reach_each_other_over_ipv6_across_nodes");
    let (n1, n2) = (c.node("node1").clone(), c.node("node2").clone());
    assert_eq!(
        (n1.ip6.to_string(), n2.ip6.to_string()),
        ("fd00:172:18::11".into(), "fd00:172:18::12".into())
    );
    assert_eq!(n2.gateway6.to_string(), "fd00:10:244:2::1");
    assert_eq!(n2.pod_cidr6, "fd00:10:244:2::/64");
    let a = c.add_pod_on("node1", "a");
    let b = c.add_pod_on("node2", "b");
    assert_eq!(a.ip6.to_string(), "fd00:10:244:1::2");
    assert_eq!(b.ip6.to_string(), "fd00:10:244:2::2");
    let _ea = c.start_echo(&a, &[8080], &[5353]);
    let _eb = c.start_echo(&b, &[8080], &[5353]);

    // Pod to pod across the nodes (static routes), both ways, no NAT.
    tcp_and_udp_over_ipv6(&c, &a, &b, 8080, 5353);
    tcp_and_udp_over_ipv6(&c, &b, &a, 8080, 5353);
    let reply = curl6(&c, &a, b.ip6, 8080);
    assert_eq!(
        (reply.pod.as_str(), reply.peer.ip()),
        ("b", IpAddr::V6(a.ip6))
    );

    // An external client reaches node2's pod through node1 once it routes the pods' /48
    // there (ext1 -> node1 -> node2 -> b); the pod sees the client's own address.
    let ext1 = c.ext("ext1");
    assert_eq!(ext1.ip6, EXT1_IP6);
    c.route(&ext1, "fd00:10:244::/48", "node1");
    let reply = curl6(&c, &ext1, b.ip6, 8080);
    assert_eq!(
        (reply.pod.as_str(), reply.peer.ip()),
        ("b", IpAddr::V6(EXT1_IP6))
    );
    // The node itself reaches the other node's pods and the clients over IPv6.
    let _e1 = c.start_echo(&ext1, &[9000], &[]);
    for (to, port) in [(b.ip6, 8080), (EXT1_IP6, 9000)] {
        let reply = curl6(&c, &n1.host(), to, port);
        assert_eq!(reply.peer.ip(), IpAddr::V6(n1.ip6), "node1 -> {to}");
    }

    // A routed client (behind the router) reaches the pods over IPv6 as well, once the
    // router sends the pods' /48 to node1 (the nodes route the client's network back).
    let far = c.add_routed_client("far", 1500, "node1");
    assert_eq!(far.ip6.to_string(), "fd00:172:19::2");
    let rtr = format!("{}rtr", Record::netns_prefix(c.id()));
    netns::ip(
        &rtr,
        &[
            "-6",
            "route",
            "add",
            "fd00:10:244::/48",
            "via",
            &n1.ip6.to_string(),
        ],
    )
    .unwrap();
    let reply = curl6(&c, &far, a.ip6, 8080);
    assert_eq!(
        (reply.pod.as_str(), reply.peer.ip()),
        ("a", IpAddr::V6(far.ip6)),
        "{ROUTED_NET6}"
    );

    // Forwarding on for both families in the nodes; the Node objects list both addresses.
    for node in [&n1, &n2] {
        let text = netns::run(
            &node.netns,
            "sysctl",
            &[
                "-n",
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding",
                "net.ipv6.conf.all.disable_ipv6",
            ],
        )
        .unwrap();
        assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["1", "1", "0"]);
        let file = c.manifests().dir().join(format!("node-{}.yaml", node.name));
        let yaml = std::fs::read_to_string(&file).unwrap();
        assert!(
            yaml.contains(&node.ip.to_string()) && yaml.contains(&node.ip6.to_string()),
            "{yaml}"
        );
    }
    // Checksum offload off on the pod veths (IPv6 shares them).
    for (ns, dev) in [(&a.netns, "eth0"), (&n2.netns, "veth1")] {
        let text = netns::run(ns, "ethtool", &["-k", dev]).unwrap();
        assert!(text.contains("tx-checksumming: off"), "{dev} in {ns}");
    }
}

/// Every lab namespace's veths have their peer in a lab namespace (none in the root
/// namespace or anyone else's), and no lab namespace routes IPv6 beyond the lab: an address
/// outside every lab prefix is unreachable from the nodes and the external clients, and the
/// pods' default routes lead to their node.
fn assert_contained(id: &str) {
    let prefix = Record::netns_prefix(id);
    let namespaces = netns::list_with_prefix(&prefix);
    assert!(!namespaces.is_empty(), "lab {id} has namespaces");
    for ns in &namespaces {
        let links: Value =
            serde_json::from_str(&netns::ip(ns, &["-j", "-d", "link", "show"]).unwrap()).unwrap();
        let ids: Value = serde_json::from_str(&netns::ip(ns, &["-j", "netns", "list-id"]).unwrap())
            .unwrap_or(Value::Array(Vec::new()));
        let names: BTreeMap<u64, String> = ids
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["nsid"].as_u64()?,
                    e["name"].as_str().unwrap_or("<unnamed>").to_owned(),
                ))
            })
            .collect();
        for link in links.as_array().unwrap() {
            let name = link["ifname"].as_str().unwrap_or_default();
            if link["linkinfo"]["info_kind"].as_str() != Some("veth") {
                continue;
            }
            // No link_netnsid: the peer is in the same namespace.
            if let Some(nsid) = link["link_netnsid"].as_u64() {
                let peer_ns = names.get(&nsid).map_or("<root or unnamed>", String::as_str);
                assert!(
                    peer_ns.starts_with(&prefix),
                    "{name} in {ns} has its peer in {peer_ns}, outside the lab"
                );
            }
        }
        // An address no lab uses: unreachable unless the namespace routes it to a pod's node.
        let outside = "2001:db8::1";
        let route = netns::ip(ns, &["-6", "route", "get", outside]);
        match route {
            Err(e) => assert!(
                format!("{e:#}").contains("unreachable"),
                "{ns}: {outside}: {e:#}"
            ),
            Ok(r) => {
                // A pod or a routed client: its default route goes to its node's bridge or
                // the router, which route it nowhere.
                assert!(
                    r.contains("via fd00:10:244:") || r.contains("via fd00:172:19::1 "),
                    "{ns} routes {outside} out of the lab: {r}"
                );
            }
        }
    }
    // The root namespace has no address or route of the lab's networks.
    let own_addrs = ferry_tests::proc::run("ip", &["-6", "-o", "addr"]).unwrap();
    let own_routes = ferry_tests::proc::run("ip", &["-6", "route"]).unwrap();
    for net in ["fd00:10:244:", "fd00:172:18:", "fd00:172:19:", "fd00:96:"] {
        assert!(!own_addrs.contains(net), "root namespace: {own_addrs}");
        assert!(!own_routes.contains(net), "root namespace: {own_routes}");
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn no_ipv6_route_or_link_leaves_the_lab() {
    require_root!();
    let lab = Lab::new("no_ipv6_route_or_link_leaves_the_lab");
    lab.add_pod("a");
    lab.add_pod("b");
    assert_contained(lab.id());
    let c = Cluster::new("no_ipv6_route_or_link_leaves_the_lab_cluster");
    c.add_pod_on("node1", "a");
    c.add_pod_on("node2", "b");
    c.add_routed_client("far", 1500, "node1");
    assert_contained(c.id());
}
