//! North-south traffic through the nodes' devices, on the two-node lab (tests/src/cluster.rs):
//! LoadBalancer IPs, NodePorts, externalIPs, externalTrafficPolicy Local and Cluster (SNAT),
//! the health check node port, source ranges, session affinity, a large transfer, hairpin,
//! rejection without endpoints, ICMP errors, and what `ferry services` / `ferry conntrack` show.
//!
//! Real clients (curl, lab-client) in the external client namespaces, which no agent hooks:
//! everything they reach went through a node's `eth0` and ferry's TC programs there. Every
//! wait polls a real condition with a deadline; measured latencies are printed, not asserted.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use ferry::{
    cmd::services::ServicesView,
    datapath::codec::FlowView,
    model::{Protocol, Scope},
};
use ferry_tests::{
    Attempt, Cluster, EchoReply, Endpoint, EndpointSlice, Pod, Service,
    cluster::{EXT1_IP, EXT2_IP, EXTERNAL_IP_RANGE, LB_RANGE, ROUTED_NET, poll, sha256},
    flows::FlowExt,
    proc::{self, Proc},
    require_root,
    services::{self, AsIpv4},
};
use serde_json::Value;

const CLUSTER_IP: &str = "10.96.0.10";
const LB_IP: &str = "192.0.2.10";
const LB_IP2: &str = "192.0.2.11";
const LB_IP3: &str = "192.0.2.12";
const EXTERNAL_IP: &str = "198.51.100.10";
const NODE_PORT: i64 = 30080;
const UDP_NODE_PORT: i64 = 30053;
const HC_PORT: i64 = 32080;
/// How long a manifest change may take to reach both kernels (generous: no benchmark).
const DEADLINE: Duration = Duration::from_secs(10);

fn report(what: &str, took: Duration) {
    println!("latency: {what}: {} ms", took.as_millis());
}

/// Starts both agents and waits until both attached their TC programs to eth0.
fn start(c: &Cluster) {
    c.start_agents();
    let took = c.wait_north_south(DEADLINE);
    report("agents ready -> TC programs on both eth0", took);
}

/// The active backends ("ip:port", sorted) of a frontend in one scope, or None if there is
/// no such frontend.
fn active_in(
    v: &ServicesView,
    addr: &str,
    port: u16,
    proto: Protocol,
    scope: Scope,
) -> Option<Vec<String>> {
    let f = services::frontend_in(v, addr, port, proto, scope)?;
    let mut list: Vec<String> = f
        .backends
        .iter()
        .filter(|b| b.state == "active")
        .map(services::endpoint)
        .collect();
    list.sort();
    Some(list)
}

/// Waits until the node's frontend (external scope) has exactly these active backends.
fn wait_external(c: &Cluster, node: &str, addr: &str, port: u16, proto: Protocol, want: &[&Pod]) {
    wait_external_eps(c, node, addr, port, proto, &eps(want, 8080));
}

fn wait_external_eps(
    c: &Cluster,
    node: &str,
    addr: &str,
    port: u16,
    proto: Protocol,
    want: &[String],
) {
    let mut want = want.to_vec();
    want.sort();
    let took = c.wait_services(
        node,
        |v| active_in(v, addr, port, proto, Scope::External).as_ref() == Some(&want),
        DEADLINE,
    );
    report(&format!("{node}: {addr}:{port}/{proto} -> {want:?}"), took);
}

fn eps(pods: &[&Pod], port: u16) -> Vec<String> {
    pods.iter().map(|p| format!("{}:{port}", p.ip)).collect()
}

/// A slice of ready endpoints with their nodes, for ports http (8080/TCP) and dns (5353/UDP).
fn slice(service: &str, pods: &[(&Pod, &str)]) -> EndpointSlice {
    EndpointSlice::new(&format!("{service}-1"), service)
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .endpoints(
            pods.iter()
                .map(|(p, node)| Endpoint::ready(p.ip).node(node)),
        )
}

/// Service port http 80 -> 8080/TCP (nodePort 30080) and dns 53 -> 5353/UDP (nodePort 30053).
fn web_ports(svc: Service) -> Service {
    svc.port_to("http", 80, "TCP", 8080u16)
        .node_port(NODE_PORT)
        .port_to("dns", 53, "UDP", 5353u16)
        .node_port(UDP_NODE_PORT)
}

/// `count` TCP connections (each one line) from `from` to `target`, 3 s timeout each.
fn tcp(c: &Cluster, from: &Pod, target: &str, count: u32) -> Vec<Attempt> {
    c.client(
        from,
        &[
            "tcp",
            target,
            "--count",
            &count.to_string(),
            "--timeout-ms",
            "3000",
        ],
    )
}

fn assert_all_ok(c: &Cluster, attempts: &[Attempt], what: &str) {
    let failed: Vec<&str> = attempts
        .iter()
        .filter(|a| !a.ok)
        .map(|a| a.raw.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} attempts failed: {failed:#?}\n{}",
        failed.len(),
        attempts.len(),
        c.dump()
    );
}

fn echo(a: &Attempt) -> EchoReply {
    a.echo()
        .unwrap_or_else(|| panic!("not an echo reply: {}", a.raw))
}

/// The pods that answered, with counts.
fn by_pod(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in attempts {
        if let Some(pod) = a.pod() {
            *counts.entry(pod).or_default() += 1;
        }
    }
    counts
}

/// The source addresses the backends saw.
fn peers(attempts: &[Attempt]) -> BTreeSet<String> {
    attempts
        .iter()
        .filter_map(Attempt::echo)
        .map(|e| e.peer.ip().to_string())
        .collect()
}

/// Polls with one short TCP connection until `target` answers from `from` (the first packet
/// after programming may race the attach); returns the answer and prints the latency.
fn first_answer(c: &Cluster, from: &Pod, target: &str, what: &str) -> Attempt {
    let got = poll(DEADLINE, Duration::from_millis(50), || {
        let a = c
            .client(from, &["tcp", target, "--timeout-ms", "1000"])
            .remove(0);
        if a.ok { Ok(a) } else { Err(a.raw) }
    });
    match got {
        Ok((a, took)) => {
            report(&format!("{what}: first answer"), took);
            a
        }
        Err(e) => panic!(
            "{what}: {from} never reached {target}: {e}\n{}",
            c.dump(),
            from = from.name
        ),
    }
}

/// `curl -sS -w '\n%{http_code}' URL` from `from` (no -f): (status, body) or curl's complaint.
fn http_get(c: &Cluster, from: &Pod, url: &str) -> Result<(u16, String), String> {
    let (res, _) = c.curl_timed(from, url, Duration::from_secs(3), &["-w", "\n%{http_code}"]);
    let text = res.map_err(|(code, err)| format!("curl exit {code}: {err}"))?;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("no status in {text:?}"))?;
    Ok((code, body.to_owned()))
}

fn flows_of(c: &Cluster, node: &str) -> Vec<FlowView> {
    let flows = c.conntrack(node);
    println!("{node}: ferry conntrack\n{}", c.conntrack_table(node));
    flows
}

// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn lb_local_reaches_the_local_backend_and_keeps_the_client_ip() {
    require_root!();
    let c = Cluster::new("lb_local_reaches_the_local_backend_and_keeps_the_client_ip");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    c.manifests()
        .apply(&slice("web", &[(&b1, "node1"), (&b2, "node2")]));
    start(&c);
    // Each node's external entry holds only its own endpoint.
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b1]);
    wait_external(&c, "node2", LB_IP, 80, Protocol::Tcp, &[&b2]);

    for (node, pod) in [("node1", &b1), ("node2", &b2)] {
        c.route(&ext1, LB_RANGE, node);
        first_answer(
            &c,
            &ext1,
            &format!("{LB_IP}:80"),
            &format!("ext1 -> LB via {node}"),
        );
        let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 20);
        assert_all_ok(&c, &attempts, &format!("TCP to the LB IP via {node}"));
        assert_eq!(
            by_pod(&attempts).keys().collect::<Vec<_>>(),
            [&pod.name],
            "via {node} only its local endpoint serves"
        );
        assert_eq!(
            peers(&attempts),
            BTreeSet::from([EXT1_IP.to_string()]),
            "the backend sees the external client's own address"
        );
        // UDP: the reply comes from the LB IP and port the client sent to.
        let udp = c.client(
            &ext1,
            &[
                "udp",
                &format!("{LB_IP}:53"),
                "--count",
                "5",
                "--timeout-ms",
                "2000",
            ],
        );
        assert_all_ok(&c, &udp, &format!("UDP to the LB IP via {node}"));
        for a in &udp {
            assert_eq!(a.from.as_deref(), Some("192.0.2.10:53"), "{}", a.raw);
            let e = echo(a);
            assert_eq!((e.pod.as_str(), *e.peer.ip()), (pod.name.as_str(), EXT1_IP));
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn lb_cluster_snats_to_a_backend_on_the_other_node() {
    require_root!();
    let c = Cluster::new("lb_cluster_snats_to_a_backend_on_the_other_node");
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP)).lb_ingress(LB_IP);
    c.manifests().apply(&svc);
    c.manifests().apply(&slice("web", &[(&b2, "node2")]));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b2]);
    let node1 = c.node("node1").ip.to_string();

    // The client talks to node1; the only endpoint is on node2.
    c.route(&ext1, LB_RANGE, "node1");
    first_answer(
        &c,
        &ext1,
        &format!("{LB_IP}:80"),
        "ext1 -> LB via node1 -> b2",
    );
    let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 20);
    assert_all_ok(&c, &attempts, "TCP to the LB IP");
    assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b2"]);
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([node1.clone()]),
        "the backend sees node1's address (SNAT)"
    );
    let ports: BTreeSet<u16> = attempts.iter().map(|a| echo(a).peer.port()).collect();
    println!("SNAT source ports seen by the backend: {ports:?}");
    let udp = c.client(
        &ext1,
        &[
            "udp",
            &format!("{LB_IP}:53"),
            "--count",
            "5",
            "--timeout-ms",
            "2000",
        ],
    );
    assert_all_ok(&c, &udp, "UDP to the LB IP");
    for a in &udp {
        assert_eq!(
            a.from.as_deref(),
            Some("192.0.2.10:53"),
            "the client sees replies from the LB IP: {}",
            a.raw
        );
        assert_eq!(echo(a).peer.ip().to_string(), node1);
    }

    // A held connection is in node1's conntrack with both translations.
    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &[
            "tcp",
            &format!("{LB_IP}:80"),
            "--hold",
            "--timeout-ms",
            "3000",
        ],
    );
    let first = held_first(&c, &held);
    let local: String = serde_json::from_str::<Value>(&first.raw).unwrap()["local"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let seen_by_backend = echo(&first).peer;
    let flows = flows_of(&c, "node1");
    let fwd = flows
        .iter()
        .find(|f| f.is_forward() && f.src == local && f.dst == "192.0.2.10:80")
        .unwrap_or_else(|| panic!("no forward flow from {local} in node1's conntrack: {flows:#?}"));
    assert_eq!(fwd.nat_dst, format!("{}:8080", b2.ip), "{fwd:?}");
    assert!(fwd.snat, "{fwd:?}");
    assert_eq!(
        fwd.nat_src,
        seen_by_backend.to_string(),
        "the SNAT source is what the backend saw: {fwd:?}"
    );
    assert!(
        flows.iter().any(|f| !f.is_forward()
            && f.src == format!("{}:8080", b2.ip)
            && f.dst == seen_by_backend.to_string()
            && f.nat_src == "192.0.2.10:80"
            && f.nat_dst == local),
        "a reply entry maps {}:8080 -> {seen_by_backend} back to 192.0.2.10:80 -> {local}: {flows:#?}",
        b2.ip
    );
    // The connection keeps working.
    held.send_line("again").expect("stdin of the held client");
    let again = held
        .next_line(Duration::from_secs(5))
        .and_then(|l| Attempt::parse(&l))
        .expect("a reply on the held connection");
    assert!(again.ok, "{}", again.raw);
}

fn held_first(c: &Cluster, held: &Proc) -> Attempt {
    let line = held
        .next_line(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("the held client printed nothing\n{}", c.dump()));
    let a = Attempt::parse(&line).expect("a JSON line");
    assert!(a.ok, "the held connection: {}\n{}", a.raw, c.dump());
    a
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn node_port_on_either_node() {
    require_root!();
    let c = Cluster::new("node_port_on_either_node");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let c1 = c.add_pod_on("node1", "c1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(Service::node_port_service("web", CLUSTER_IP));
    c.manifests().apply(&svc);
    c.manifests()
        .apply(&slice("web", &[(&b1, "node1"), (&b2, "node2")]));
    start(&c);
    for node in c.nodes() {
        wait_external(
            &c,
            &node.name,
            &node.ip.to_string(),
            30080,
            Protocol::Tcp,
            &[&b1, &b2],
        );
    }

    for node in c.nodes() {
        let target = format!("{}:{NODE_PORT}", node.ip);
        first_answer(
            &c,
            &ext1,
            &target,
            &format!("ext1 -> NodePort of {}", node.name),
        );
        let attempts = tcp(&c, &ext1, &target, 30);
        assert_all_ok(&c, &attempts, &format!("TCP to {target}"));
        assert_eq!(
            by_pod(&attempts).keys().collect::<Vec<_>>(),
            ["b1", "b2"],
            "both endpoints serve through {}",
            node.name
        );
        println!("{target}: backends saw {:?}", peers(&attempts));
        let udp = c.client(
            &ext1,
            &[
                "udp",
                &format!("{}:{UDP_NODE_PORT}", node.ip),
                "--count",
                "5",
            ],
        );
        assert_all_ok(&c, &udp, &format!("UDP to {}:{UDP_NODE_PORT}", node.ip));
        for a in &udp {
            assert_eq!(
                a.from.as_deref(),
                Some(format!("{}:{UDP_NODE_PORT}", node.ip).as_str()),
                "{}",
                a.raw
            );
        }
    }

    // In the cluster: a pod and the node itself reach their own node's NodePort (socket
    // layer), and a pod reaches the other node's NodePort (through that node's eth0).
    let host1 = c.node("node1").host();
    for (from, node) in [(&c1, "node1"), (&host1, "node1"), (&c1, "node2")] {
        let target = format!("{}:{NODE_PORT}", c.node(node).ip);
        let attempts = tcp(&c, from, &target, 10);
        assert_all_ok(&c, &attempts, &format!("{} -> {target}", from.name));
        println!(
            "{} -> {target}: {:?}, backends saw {:?}",
            from.name,
            by_pod(&attempts),
            peers(&attempts)
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn external_ips() {
    require_root!();
    let c = Cluster::new("external_ips");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let c2 = c.add_pod_on("node2", "c2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = Service::cluster_ip("web", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16)
        .external_ip(EXTERNAL_IP);
    c.manifests().apply(&svc);
    c.manifests().apply(&slice("web", &[(&b1, "node1")]));
    start(&c);
    for node in ["node1", "node2"] {
        wait_external(&c, node, EXTERNAL_IP, 80, Protocol::Tcp, &[&b1]);
    }
    let target = format!("{EXTERNAL_IP}:80");
    for node in ["node1", "node2"] {
        c.route(&ext1, EXTERNAL_IP_RANGE, node);
        first_answer(
            &c,
            &ext1,
            &target,
            &format!("ext1 -> externalIP via {node}"),
        );
        let attempts = tcp(&c, &ext1, &target, 10);
        assert_all_ok(&c, &attempts, &format!("TCP to the externalIP via {node}"));
        assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b1"]);
        let seen = peers(&attempts);
        println!("externalIP via {node}: the backend saw {seen:?}");
        if node == "node2" {
            // The backend is on node1: node2 SNATs (externalTrafficPolicy Cluster).
            assert_eq!(seen, BTreeSet::from([c.node("node2").ip.to_string()]));
        }
        let udp = c.client(
            &ext1,
            &["udp", &format!("{EXTERNAL_IP}:53"), "--count", "3"],
        );
        assert_all_ok(&c, &udp, &format!("UDP to the externalIP via {node}"));
        assert!(
            udp.iter()
                .all(|a| a.from.as_deref() == Some("198.51.100.10:53")),
            "{udp:#?}"
        );
    }
    // A pod on the other node reaches it through its node's socket layer, keeping its IP.
    let attempts = tcp(&c, &c2, &target, 5);
    assert_all_ok(&c, &attempts, "pod c2 -> the externalIP");
    assert_eq!(peers(&attempts), BTreeSet::from([c2.ip.to_string()]));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn lb_cluster_masquerades_to_a_backend_on_the_receiving_node() {
    require_root!();
    let c = Cluster::new("lb_cluster_masquerades_to_a_backend_on_the_receiving_node");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let (_s1, want) = serve_blob(&c, &b1);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .port_to("files", 81, "TCP", 8081u16)
        .lb_ingress(LB_IP);
    c.manifests().apply(&svc);
    c.manifests()
        .apply(&slice("web", &[(&b1, "node1")]).port("files", 8081, "TCP"));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b1]);
    c.route(&ext1, LB_RANGE, "node1");
    let node1 = c.node("node1").ip.to_string();

    // externalTrafficPolicy Cluster, the only endpoint on the receiving node: kube-proxy
    // masquerades all the same, and so does ferry. The pod's replies to node1's address come
    // back through br0, where ferry_tc_pod translates them.
    let pod_link = c.node("node1").pin_dir.join("ferry_link_tcpod_br0");
    let (_, took) = poll(DEADLINE, Duration::from_millis(20), || {
        pod_link
            .exists()
            .then_some(())
            .ok_or_else(|| "no ferry_link_tcpod_br0 pin".to_string())
    })
    .unwrap_or_else(|e| {
        panic!(
            "node1 puts ferry_tc_pod on br0, its pods' device: {e}\n{}",
            c.agent_log("node1")
        )
    });
    report("ferry_tc_pod on br0", took);
    first_answer(
        &c,
        &ext1,
        &format!("{LB_IP}:80"),
        "ext1 -> LB via node1 -> b1",
    );
    let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 20);
    assert_all_ok(&c, &attempts, "TCP to the LB IP, local backend");
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([node1.clone()]),
        "the local backend sees node1's address (masquerade)"
    );
    for a in &attempts {
        assert_eq!(a.peer.as_deref(), Some("192.0.2.10:80"), "{}", a.raw);
    }
    let udp = c.client(
        &ext1,
        &[
            "udp",
            &format!("{LB_IP}:53"),
            "--count",
            "5",
            "--timeout-ms",
            "2000",
        ],
    );
    assert_all_ok(&c, &udp, "UDP to the LB IP, local backend");
    for a in &udp {
        assert_eq!(a.from.as_deref(), Some("192.0.2.10:53"), "{}", a.raw);
        assert_eq!(echo(a).peer.ip().to_string(), node1, "{}", a.raw);
    }
    download_identical(
        &c,
        &ext1,
        &format!("http://{LB_IP}:81/blob"),
        &want,
        "the masquerade",
    );
    let flows = flows_of(&c, "node1");
    assert!(
        flows.iter().any(|f| f.is_forward()
            && f.src_ip() == Some(EXT1_IP)
            && f.nat_dst == format!("{}:8080", b1.ip)
            && f.snat
            && f.local_backend),
        "node1 tracks the flow as SNAT to a local backend: {flows:#?}"
    );

    // A host-network backend (the node's own address) keeps the client's address: kube-proxy's
    // masquerade never sees locally delivered packets, and a reply from the node to itself
    // would be a martian.
    let host = c.node("node1").host();
    let _eh = c.start_echo(&host, &[8080], &[]);
    let mut hostnet = web_ports(Service::load_balancer("hostnet", "10.96.0.12")).lb_ingress(LB_IP2);
    hostnet
        .ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 1));
    c.manifests().apply(&hostnet);
    c.manifests().apply(&slice("hostnet", &[(&host, "node1")]));
    wait_external(&c, "node1", LB_IP2, 80, Protocol::Tcp, &[&host]);
    let attempts = tcp(&c, &ext1, &format!("{LB_IP2}:80"), 10);
    assert_all_ok(&c, &attempts, "TCP to a host-network backend");
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([EXT1_IP.to_string()]),
        "a host-network backend sees the client"
    );

    // --lb-mode dsr keeps the client's address, for a local backend too.
    c.stop_agent("node1");
    c.start_agent(
        "node1",
        &ferry_tests::AgentOpts {
            extra_args: vec!["--lb-mode".into(), "dsr".into()],
            ..Default::default()
        },
    );
    let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 10);
    assert_all_ok(&c, &attempts, "TCP to the LB IP, local backend, DSR mode");
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([EXT1_IP.to_string()]),
        "with --lb-mode dsr the local backend sees the client"
    );

    // No local endpoint left while the agent is away: the next one removes the pod device's
    // program the previous one pinned.
    c.stop_agent("node1");
    c.manifests()
        .apply(&slice("web", &[]).port("files", 8081, "TCP"));
    c.manifests().apply(&slice("hostnet", &[]));
    c.start_agent("node1", &ferry_tests::AgentOpts::default());
    let (_, took) = poll(DEADLINE, Duration::from_millis(20), || {
        (!pod_link.exists())
            .then_some(())
            .ok_or_else(|| "ferry_link_tcpod_br0 still pinned".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.agent_log("node1")));
    report("a stale ferry_tc_pod removed at start", took);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn health_check_node_port() {
    require_root!();
    let c = Cluster::new("health_check_node_port");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    c.manifests().apply(&slice("web", &[(&b1, "node1")]));
    c.start_agents();

    let url = |node: &str| format!("http://{}:{HC_PORT}/", c.node(node).ip);
    let wait_status = |node: &str, want: u16, local: u64| -> Value {
        let got = poll(DEADLINE, Duration::from_millis(50), || {
            let (code, body) = http_get(&c, &ext1, &url(node))?;
            let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            if code == want && v["localEndpoints"] == local {
                Ok(v)
            } else {
                Err(format!("{code} {body}"))
            }
        });
        match got {
            Ok((v, took)) => {
                report(
                    &format!("{node}: health check {want} localEndpoints={local}"),
                    took,
                );
                v
            }
            Err(e) => panic!(
                "{node}: health check node port: want {want}: {e}\nlog:\n{}",
                c.agent_log(node)
            ),
        }
    };
    let v = wait_status("node1", 200, 1);
    assert_eq!(
        v,
        serde_json::json!({
            "service": {"namespace": "default", "name": "web"},
            "localEndpoints": 1,
            "serviceProxyHealthy": true,
        })
    );
    let v = wait_status("node2", 503, 0);
    assert_eq!(v["service"]["name"], "web");
    assert_eq!(v["serviceProxyHealthy"], true);

    // An endpoint appears on node2: it turns healthy.
    c.manifests()
        .apply(&slice("web", &[(&b1, "node1"), (&b2, "node2")]));
    wait_status("node2", 200, 1);

    // node1's endpoint terminates (still serving): node1 drains (503) while its traffic is
    // still served by the terminating endpoint.
    let slice_terminating = EndpointSlice::new("web-1", "web")
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .endpoint(Endpoint::terminating(b1.ip, true).node("node1"))
        .endpoint(Endpoint::ready(b2.ip).node("node2"));
    c.manifests().apply(&slice_terminating);
    wait_status("node1", 503, 0);
    wait_status("node2", 200, 1);
    let took = c.wait_north_south(DEADLINE);
    report("TC programs on", took);
    c.route(&ext1, LB_RANGE, "node1");
    let a = first_answer(
        &c,
        &ext1,
        &format!("{LB_IP}:80"),
        "LB via node1, terminating only",
    );
    assert_eq!(
        echo(&a).pod,
        "b1",
        "the terminating local endpoint still serves"
    );

    // The service goes: its health check server stops.
    c.manifests().delete(&svc);
    let gone = poll(DEADLINE, Duration::from_millis(50), || {
        match http_get(&c, &ext1, &url("node2")) {
            Err(e) => Ok(e),
            Ok((code, body)) => Err(format!("still answering {code} {body}")),
        }
    });
    match gone {
        Ok((e, took)) => report(
            &format!("service deleted -> health check closed ({e})"),
            took,
        ),
        Err(e) => panic!("the health check server outlived its service: {e}"),
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn load_balancer_source_ranges() {
    require_root!();
    let c = Cluster::new("load_balancer_source_ranges");
    let ext1 = c.ext("ext1");
    let ext2 = c.ext("ext2");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .source_range(&format!("{EXT1_IP}/32"));
    c.manifests().apply(&svc);
    c.manifests().apply(&slice("web", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b1]);
    for ext in [&ext1, &ext2] {
        c.route(ext, LB_RANGE, "node1");
    }
    let url = format!("http://{LB_IP}/");

    // Inside the range: served.
    first_answer(&c, &ext1, &format!("{LB_IP}:80"), "ext1 (in range) -> LB");
    let body = c
        .curl(&ext1, &url)
        .expect("ext1 is inside the source range");
    assert_eq!(
        EchoReply::parse(&body).map(|e| e.pod).as_deref(),
        Some("b1")
    );

    // Outside: dropped, so the connection times out.
    let (res, took) = c.curl_timed(&ext2, &url, Duration::from_secs(2), &[]);
    println!(
        "ext2 (outside the range) -> LB: {res:?} after {} ms",
        took.as_millis()
    );
    match res {
        Ok(body) => panic!(
            "ext2 is outside the source range but got {body:?}\n{}",
            c.dump()
        ),
        Err((code, err)) => assert_eq!(code, 28, "a timeout (curl exit 28), got: {err}"),
    }
    let udp = c.client(
        &ext2,
        &[
            "udp",
            &format!("{LB_IP}:53"),
            "--count",
            "2",
            "--timeout-ms",
            "1000",
        ],
    );
    assert!(
        udp.iter().all(|a| !a.ok),
        "ext2's UDP is dropped too: {udp:#?}"
    );
    // ... before creating any state.
    let flows = flows_of(&c, "node1");
    let from_ext2: Vec<&FlowView> = flows
        .iter()
        .filter(|f| f.src_ip() == Some(EXT2_IP) || f.nat_dst.starts_with(&format!("{EXT2_IP}:")))
        .collect();
    assert!(from_ext2.is_empty(), "no flow of ext2: {from_ext2:#?}");
    assert!(
        flows
            .iter()
            .any(|f| f.is_forward() && f.src_ip() == Some(EXT1_IP)),
        "ext1's flow is tracked: {flows:#?}"
    );
    println!("node1 stats: {}", c.stats("node1"));

    // Source ranges apply to the load balancer IPs only (as in kube-proxy): the NodePort of
    // the same service serves ext2.
    let target = format!("{}:{NODE_PORT}", c.node("node1").ip);
    let attempts = tcp(&c, &ext2, &target, 3);
    assert_all_ok(&c, &attempts, "ext2 -> the NodePort");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn session_affinity_client_ip() {
    require_root!();
    let c = Cluster::new("session_affinity_client_ip");
    let ext1 = c.ext("ext1");
    let ext2 = c.ext("ext2");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node1", "b2");
    let b3 = c.add_pod_on("node2", "b3");
    let backends = [(&b1, "node1"), (&b2, "node1"), (&b3, "node2")];
    let mut echos = Vec::new();
    for (p, _) in backends {
        echos.push(c.start_echo(p, &[8080], &[5353]));
    }
    let sticky = web_ports(Service::load_balancer("sticky", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .affinity(600);
    // The same endpoints without affinity, as a control.
    let mut plain = web_ports(Service::load_balancer("plain", "10.96.0.11")).lb_ingress(LB_IP2);
    plain
        .ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 1));
    c.manifests().apply(&sticky);
    c.manifests().apply(&plain);
    c.manifests().apply(&slice("sticky", &backends));
    c.manifests().apply(&slice("plain", &backends));
    start(&c);
    for ip in [LB_IP, LB_IP2] {
        wait_external(&c, "node1", ip, 80, Protocol::Tcp, &[&b1, &b2, &b3]);
    }
    let v = c.services("node1");
    let fe = v
        .frontends
        .iter()
        .find(|f| f.address == LB_IP.ipv4() && f.port == 80)
        .unwrap();
    assert_eq!(fe.affinity_timeout, Some(600), "{fe:?}");

    for ext in [&ext1, &ext2] {
        c.route(ext, LB_RANGE, "node1");
    }
    first_answer(&c, &ext1, &format!("{LB_IP2}:80"), "ext1 -> LB");
    let control = tcp(&c, &ext1, &format!("{LB_IP2}:80"), 30);
    assert_all_ok(&c, &control, "without affinity");
    let spread = by_pod(&control);
    println!("without affinity: {spread:?}");
    assert!(
        spread.len() >= 2,
        "30 connections without affinity spread: {spread:?}"
    );

    for ext in [&ext1, &ext2] {
        let attempts = tcp(&c, ext, &format!("{LB_IP}:80"), 30);
        assert_all_ok(&c, &attempts, &format!("{} with affinity", ext.name));
        let pods = by_pod(&attempts);
        println!("{} with ClientIP affinity: {pods:?}", ext.name);
        assert_eq!(
            pods.len(),
            1,
            "all connections of one client on one backend: {pods:?}"
        );
        // UDP: affinity is per service port (as kube-proxy's), so UDP may stick to another
        // backend than TCP, but every socket of the client (a new source port each) sticks
        // to the same one.
        let mut udp = Vec::new();
        for _ in 0..10 {
            udp.extend(c.client(ext, &["udp", &format!("{LB_IP}:53"), "--count", "1"]));
        }
        assert_all_ok(&c, &udp, "UDP with affinity");
        let udp_pods = by_pod(&udp);
        println!("{} over UDP from 10 sockets: {udp_pods:?}", ext.name);
        assert_eq!(
            udp_pods.len(),
            1,
            "UDP from {} sticks to one backend",
            ext.name
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn transfer_20mb_byte_identical() {
    require_root!();
    let c = Cluster::new("transfer_20mb_byte_identical");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let www = c.tmp_dir().join("www");
    fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    write_random(&blob, 20 << 20);
    let want = sha256(&blob);
    let _s1 = http_server(&c, &b1, &www);
    let _s2 = http_server(&c, &b2, &www);
    // LB IP 1: its only endpoint on node2 (SNAT through node1); LB IP 2: eTP Local on node1.
    let remote = Service::load_balancer("remote", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress(LB_IP);
    let local = Service::load_balancer("local", "10.96.0.11")
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress(LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&remote);
    c.manifests().apply(&local);
    c.manifests().apply(&slice("remote", &[(&b2, "node2")]));
    c.manifests().apply(&slice("local", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b2]);
    wait_external(&c, "node1", LB_IP2, 80, Protocol::Tcp, &[&b1]);
    c.route(&ext1, LB_RANGE, "node1");

    for (ip, what) in [
        (LB_IP, "eTP Cluster, backend on node2"),
        (LB_IP2, "eTP Local"),
    ] {
        let out = c.tmp_dir().join(format!("download-{ip}"));
        let url = format!("http://{ip}/blob");
        let (res, took) = c.curl_timed(
            &ext1,
            &url,
            Duration::from_secs(60),
            &["-o", &out.to_string_lossy()],
        );
        if let Err((code, err)) = res {
            panic!(
                "downloading {url} ({what}): curl exit {code}: {err}\n{}",
                c.dump()
            );
        }
        let got = sha256(&out);
        let size = fs::metadata(&out).map(|m| m.len()).unwrap_or_default();
        println!(
            "{url} ({what}): {size} bytes in {} ms ({:.1} MB/s)",
            took.as_millis(),
            size as f64 / took.as_secs_f64() / 1e6
        );
        assert_eq!(size, 20 << 20, "{what}: size");
        assert_eq!(got, want, "{what}: the download is byte-identical");
        fs::remove_file(&out).unwrap();
    }
}

/// A 4 MiB random file served over HTTP by `pod` on port 8081; the server and the file's hash.
fn serve_blob(c: &Cluster, pod: &Pod) -> (Proc, String) {
    let www = c.tmp_dir().join("www");
    fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    write_random(&blob, 4 << 20);
    let want = sha256(&blob);
    (http_server_on(c, pod, &www, 8081), want)
}

/// `from` downloads `url` with curl; its bytes must hash to `want` (4 MiB blobs here).
fn download_identical(c: &Cluster, from: &Pod, url: &str, want: &str, through: &str) {
    let out = c.tmp_dir().join("download");
    let (res, took) = c.curl_timed(
        from,
        url,
        Duration::from_secs(30),
        &["-o", &out.to_string_lossy()],
    );
    if let Err((code, err)) = res {
        panic!(
            "download through {through}: curl exit {code}: {err}\n{}",
            c.dump()
        );
    }
    println!("4 MiB through {through} in {} ms", took.as_millis());
    assert_eq!(sha256(&out), want, "byte-identical through {through}");
}

fn write_random(path: &std::path::Path, len: usize) {
    let mut rnd = fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; len];
    std::io::Read::read_exact(&mut rnd, &mut buf).unwrap();
    fs::File::create(path).unwrap().write_all(&buf).unwrap();
}

/// `python3 -m http.server 8080 --directory DIR` in the pod, once it listens.
fn http_server(c: &Cluster, pod: &Pod, dir: &std::path::Path) -> Proc {
    http_server_on(c, pod, dir, 8080)
}

fn http_server_on(c: &Cluster, pod: &Pod, dir: &std::path::Path, port: u16) -> Proc {
    let dir = dir.to_string_lossy();
    let port = port.to_string();
    let p = c.spawn(
        pod,
        "python3",
        &[
            "-u",
            "-m",
            "http.server",
            &port,
            "--bind",
            "0.0.0.0",
            "--directory",
            &dir,
        ],
    );
    if p.wait_line(Duration::from_secs(10), |l| l.starts_with("Serving HTTP"))
        .is_none()
    {
        panic!(
            "python3 http.server in {} did not start: {}",
            pod.name,
            c.logs_of(&pod.name)
        );
    }
    p
}

/// A packet from outside addressed to a ClusterIP (issue 11, item 8): left alone by default
/// (Cilium's default; a ClusterIP is cluster-internal), load-balanced like an externalIP's with
/// `--external-cluster-ip` (kube-proxy serves it whenever something routes the service range to
/// a node): to the local backend keeping the client's address, to the remote one SNATed.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn cluster_ip_from_outside_is_served_only_with_external_cluster_ip() {
    require_root!();
    let c = Cluster::new("cluster_ip_from_outside_is_served_only_with_external_cluster_ip");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = Service::cluster_ip("web", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16);
    c.manifests().apply(&svc);
    c.manifests()
        .apply(&slice("web", &[(&b1, "node1"), (&b2, "node2")]));
    c.route(&ext1, "10.96.0.0/16", "node1");
    let target = format!("{CLUSTER_IP}:80");

    // Default: node1 does not translate it (its stack has no route for it).
    start(&c);
    wait_external(&c, "node1", CLUSTER_IP, 80, Protocol::Tcp, &[&b1, &b2]);
    let a = c
        .client(&ext1, &["tcp", &target, "--timeout-ms", "1000"])
        .remove(0);
    assert!(
        !a.ok,
        "a ClusterIP is not served to outside clients by default: {}",
        a.raw
    );
    assert_eq!(c.stats("node1")["counters"]["ns_new_flow"], 0);

    // --external-cluster-ip: served, by both backends.
    for node in ["node1", "node2"] {
        c.stop_agent(node);
    }
    c.start_agents_with(&ferry_tests::AgentOpts {
        extra_args: vec!["--external-cluster-ip".into()],
        ..Default::default()
    });
    c.wait_north_south(DEADLINE);
    first_answer(&c, &ext1, &target, "ext1 -> ClusterIP via node1");
    let attempts = tcp(&c, &ext1, &target, 30);
    assert_all_ok(&c, &attempts, "TCP to the ClusterIP from outside");
    let pods = by_pod(&attempts);
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["b1", "b2"], "{pods:?}");
    let node1 = c.node("node1").ip.to_string();
    for a in &attempts {
        // kube-proxy masquerades traffic from outside to a ClusterIP, whichever node the
        // backend is on.
        assert_eq!(
            echo(a).peer.ip().to_string(),
            node1,
            "b1 (on node1) and b2 both see node1 (masquerade): {}",
            a.raw
        );
        assert_eq!(
            a.peer.as_deref(),
            Some(target.as_str()),
            "the client sees the ClusterIP"
        );
    }
    let udp = c.client(
        &ext1,
        &[
            "udp",
            &format!("{CLUSTER_IP}:53"),
            "--count",
            "5",
            "--timeout-ms",
            "2000",
        ],
    );
    assert_all_ok(&c, &udp, "UDP to the ClusterIP from outside");
    for a in &udp {
        assert_eq!(a.from.as_deref(), Some("10.96.0.10:53"), "{}", a.raw);
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn pod_reaches_the_lb_ip_of_its_own_service() {
    require_root!();
    let c = Cluster::new("pod_reaches_the_lb_ip_of_its_own_service");
    let b1 = c.add_pod_on("node1", "b1");
    let c2 = c.add_pod_on("node2", "c2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .external_ip(EXTERNAL_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    c.manifests().apply(&slice("web", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b1]);
    let node1 = c.node("node1").ip;
    let host1 = c.node("node1").host();

    // The backend itself (hairpin), the node it runs on, and a pod on the other node (whose
    // node has no local endpoint: in-cluster clients reach every endpoint).
    // Each reaches its own node's NodePort (another node's NodePort is that node's device's
    // business: see node_port_on_either_node).
    for (from, own_node) in [(&b1, node1), (&host1, node1), (&c2, c.node("node2").ip)] {
        for target in [
            format!("{LB_IP}:80"),
            format!("{EXTERNAL_IP}:80"),
            format!("{own_node}:{NODE_PORT}"),
        ] {
            let attempts = tcp(&c, from, &target, 5);
            assert_all_ok(&c, &attempts, &format!("{} -> {target}", from.name));
            assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b1"]);
            let seen = peers(&attempts);
            println!("{} -> {target}: the backend saw {seen:?}", from.name);
            // The node's own connections leave towards its pods from its bridge address.
            let source = if from.name == host1.name {
                c.node("node1").gateway
            } else {
                from.ip
            };
            assert_eq!(
                seen,
                BTreeSet::from([source.to_string()]),
                "the socket layer translates: no SNAT"
            );
        }
    }
    let udp = c.client(&b1, &["udp", &format!("{LB_IP}:53"), "--count", "3"]);
    assert_all_ok(&c, &udp, "b1 -> its own LB IP over UDP");
    // None of it took the device path: no north-south flow on either node.
    for node in ["node1", "node2"] {
        let flows = c.conntrack(node);
        assert!(
            flows.is_empty(),
            "{node} tracked in-cluster traffic: {flows:#?}"
        );
    }
    assert!(
        udp.iter()
            .all(|a| a.from.as_deref() == Some("192.0.2.10:53")),
        "{udp:#?}"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn no_endpoints_is_refused_quickly() {
    require_root!();
    let c = Cluster::new("no_endpoints_is_refused_quickly");
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    // No endpoints at all.
    let empty = web_ports(Service::load_balancer("empty", CLUSTER_IP)).lb_ingress(LB_IP);
    c.manifests().apply(&empty);
    // eTP Local with its only endpoint on node2.
    let mut remote_only = web_ports(Service::load_balancer("remote-only", "10.96.0.11"))
        .lb_ingress(LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    remote_only
        .ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 1));
    c.manifests().apply(&remote_only);
    c.manifests()
        .apply(&slice("remote-only", &[(&b2, "node2")]));
    start(&c);
    wait_external_eps(&c, "node1", LB_IP, 80, Protocol::Tcp, &[]);
    wait_external_eps(&c, "node1", LB_IP2, 80, Protocol::Tcp, &[]);
    c.route(&ext1, LB_RANGE, "node1");

    let node2 = c.node("node2").ip;
    for target in [format!("{LB_IP}:80"), format!("{node2}:{NODE_PORT}")] {
        let a = c
            .client(&ext1, &["tcp", &target, "--timeout-ms", "5000"])
            .remove(0);
        println!("ext1 -> {target} (no endpoints): {}", a.raw);
        assert!(!a.ok, "{}", a.raw);
        assert_eq!(
            a.error.as_deref(),
            Some("ECONNREFUSED"),
            "rejected (ICMP port unreachable), not dropped: {}\n{}",
            a.raw,
            c.dump()
        );
        assert!(a.elapsed_ms < 5000, "{}", a.raw);
    }
    let udp = c.client(
        &ext1,
        &[
            "udp",
            &format!("{LB_IP}:53"),
            "--connected",
            "--timeout-ms",
            "3000",
        ],
    );
    println!("ext1 -> {LB_IP}:53/UDP (no endpoints): {}", udp[0].raw);
    assert_eq!(
        udp[0].error.as_deref(),
        Some("ECONNREFUSED"),
        "{}",
        udp[0].raw
    );

    // eTP Local without a local endpoint: dropped on this node (not forwarded elsewhere).
    let a = c
        .client(
            &ext1,
            &["tcp", &format!("{LB_IP2}:80"), "--timeout-ms", "2000"],
        )
        .remove(0);
    println!(
        "ext1 -> {LB_IP2}:80 via node1 (eTP Local, endpoint on node2 only): {}",
        a.raw
    );
    assert!(!a.ok, "no local endpoint on node1, yet answered: {}", a.raw);
    assert!(
        matches!(a.error.as_deref(), Some("timeout" | "ETIMEDOUT")),
        "dropped: {}",
        a.raw
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn conntrack_and_services_show_north_south() {
    require_root!();
    let c = Cluster::new("conntrack_and_services_show_north_south");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .external_ip(EXTERNAL_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    c.manifests().apply(&slice("web", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b1]);

    // ferry services: each node's NodePort on its own address, the LB IP and the externalIP,
    // with their kinds; eTP Local gives an external and an internal entry.
    for node in c.nodes() {
        let v = c.services(&node.name);
        println!("{}:\n{}", node.name, c.services_table(&node.name));
        let flags = |addr: &str, port: u16, scope: Scope| -> Vec<String> {
            let ip = addr.ipv4();
            v.frontends
                .iter()
                .find(|f| f.address == ip && f.port == port && f.scope == scope)
                .unwrap_or_else(|| panic!("{}: no {addr}:{port} ({scope:?}): {v:?}", node.name))
                .flags
                .clone()
        };
        let node_ip = node.ip.to_string();
        for (addr, port, kind) in [
            (node_ip.as_str(), 30080, "NodePort"),
            (LB_IP, 80, "LoadBalancer"),
            (EXTERNAL_IP, 80, "ExternalIP"),
        ] {
            let ext = flags(addr, port, Scope::External);
            assert!(ext.iter().any(|f| f == kind), "{addr}: {ext:?}");
            assert!(
                ext.iter().any(|f| f == "ExternalTrafficPolicyLocal"),
                "{addr}: {ext:?}"
            );
            let int = flags(addr, port, Scope::Internal);
            assert!(int.iter().any(|f| f == kind), "{addr}: {int:?}");
        }
        let local_eps = if node.name == "node1" {
            vec![format!("{}:8080", b1.ip)]
        } else {
            vec![]
        };
        assert_eq!(
            active_in(&v, LB_IP, 80, Protocol::Tcp, Scope::External),
            Some(local_eps)
        );
        assert_eq!(
            active_in(&v, LB_IP, 80, Protocol::Tcp, Scope::Internal),
            Some(vec![format!("{}:8080", b1.ip)])
        );
    }

    // ferry conntrack: a held connection from ext1, both directions with translations.
    c.route(&ext1, LB_RANGE, "node1");
    first_answer(&c, &ext1, &format!("{LB_IP}:80"), "ext1 -> LB");
    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &[
            "tcp",
            &format!("{LB_IP}:80"),
            "--hold",
            "--timeout-ms",
            "3000",
        ],
    );
    let first = held_first(&c, &held);
    let local = serde_json::from_str::<Value>(&first.raw).unwrap()["local"]
        .as_str()
        .unwrap()
        .to_owned();
    let client: SocketAddrV4 = local.parse().unwrap();
    assert_eq!(*client.ip(), EXT1_IP);
    let flows = flows_of(&c, "node1");
    let backend = format!("{}:8080", b1.ip);
    let fwd = flows
        .iter()
        .find(|f| f.is_forward() && f.src == local)
        .unwrap_or_else(|| panic!("no forward flow from {local}: {flows:#?}"));
    assert_eq!(fwd.protocol, Some(Protocol::Tcp), "{fwd:?}");
    assert_eq!(fwd.dst, "192.0.2.10:80", "{fwd:?}");
    assert_eq!(fwd.nat_dst, backend, "{fwd:?}");
    assert_eq!(fwd.nat_src, local, "eTP Local: no SNAT: {fwd:?}");
    assert!(!fwd.snat && fwd.local_backend, "{fwd:?}");
    let rev = flows
        .iter()
        .find(|f| !f.is_forward() && f.dst == local)
        .unwrap_or_else(|| panic!("no reply flow to {local}: {flows:#?}"));
    assert_eq!(rev.src, backend, "{rev:?}");
    assert_eq!(rev.nat_src, "192.0.2.10:80", "{rev:?}");
    assert_eq!(rev.nat_dst, local, "{rev:?}");
    // UDP flows are listed too.
    let udp = c.client(&ext1, &["udp", &format!("{LB_IP}:53"), "--count", "1"]);
    assert_all_ok(&c, &udp, "UDP");
    let flows = flows_of(&c, "node1");
    assert!(
        flows.iter().any(|f| f.is_forward()
            && f.protocol == Some(Protocol::Udp)
            && f.dst == "192.0.2.10:53"
            && f.nat_dst == format!("{}:5353", b1.ip)),
        "{flows:#?}"
    );
    // node2 saw none of it.
    assert!(
        c.conntrack("node2")
            .iter()
            .all(|f| f.src_ip() != Some(EXT1_IP)),
        "{:#?}",
        c.conntrack("node2")
    );
    drop(held);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn icmp_port_unreachable_from_a_backend_reaches_the_client_translated() {
    require_root!();
    let c = Cluster::new("icmp_port_unreachable_from_a_backend_reaches_the_client_translated");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    // TCP only: UDP 5353 is closed, so the backends answer UDP with ICMP port unreachable.
    let _e1 = c.start_echo(&b1, &[8080], &[]);
    let _e2 = c.start_echo(&b2, &[8080], &[]);
    let local = web_ports(Service::load_balancer("local", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    let mut remote = web_ports(Service::load_balancer("remote", "10.96.0.11")).lb_ingress(LB_IP2);
    remote
        .ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 1));
    let mut masq = web_ports(Service::load_balancer("masq", "10.96.0.12")).lb_ingress(LB_IP3);
    masq.ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 2));
    c.manifests().apply(&local);
    c.manifests().apply(&remote);
    c.manifests().apply(&masq);
    c.manifests().apply(&slice("local", &[(&b1, "node1")]));
    c.manifests().apply(&slice("remote", &[(&b2, "node2")]));
    c.manifests().apply(&slice("masq", &[(&b1, "node1")]));
    start(&c);
    wait_external_eps(
        &c,
        "node1",
        LB_IP3,
        53,
        Protocol::Udp,
        &[format!("{}:5353", b1.ip)],
    );
    wait_external_eps(
        &c,
        "node1",
        LB_IP,
        53,
        Protocol::Udp,
        &[format!("{}:5353", b1.ip)],
    );
    wait_external_eps(
        &c,
        "node1",
        LB_IP2,
        53,
        Protocol::Udp,
        &[format!("{}:5353", b2.ip)],
    );
    c.route(&ext1, LB_RANGE, "node1");
    first_answer(&c, &ext1, &format!("{LB_IP}:80"), "ext1 -> LB");

    // A connected UDP socket only learns of the error if the ICMP message names the flow as
    // the client sent it (LB IP and port): translated back by node1.
    for (ip, what) in [
        (LB_IP, "eTP Local"),
        (LB_IP2, "eTP Cluster, backend on node2 (SNAT)"),
        (
            LB_IP3,
            "eTP Cluster, backend on node1 (masquerade, ferry_tc_pod)",
        ),
    ] {
        let start = Instant::now();
        let udp = c.client(
            &ext1,
            &[
                "udp",
                &format!("{ip}:53"),
                "--connected",
                "--timeout-ms",
                "3000",
            ],
        );
        println!(
            "{ip}:53/UDP ({what}), closed on the backend: {} after {} ms",
            udp[0].raw,
            start.elapsed().as_millis()
        );
        assert_eq!(
            udp[0].error.as_deref(),
            Some("ECONNREFUSED"),
            "{what}: the backend's port unreachable reaches the client translated: {}\n{}",
            udp[0].raw,
            c.dump()
        );
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn fragmentation_needed_reaches_the_backend_translated() {
    require_root!();
    let c = Cluster::new("fragmentation_needed_reaches_the_backend_translated");
    // A client behind a router whose link towards it has MTU 1280; the client advertises a
    // 1460-byte MSS, so full-size segments from the backend only get through once the
    // router's "fragmentation needed" reaches the backend's TCP (translated by node1).
    let far = c.add_routed_client("far", 1280, "node1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let www = c.tmp_dir().join("www");
    fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    write_random(&blob, 2 << 20);
    let want = sha256(&blob);
    let _s1 = http_server(&c, &b1, &www);
    let _s2 = http_server(&c, &b2, &www);
    let local = Service::load_balancer("local", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    let remote = Service::load_balancer("remote", "10.96.0.11")
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress(LB_IP2);
    let mut masq = web_ports(Service::load_balancer("masq", "10.96.0.12")).lb_ingress(LB_IP3);
    masq.ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 2));
    c.manifests().apply(&local);
    c.manifests().apply(&remote);
    c.manifests().apply(&masq);
    c.manifests().apply(&slice("local", &[(&b1, "node1")]));
    c.manifests().apply(&slice("remote", &[(&b2, "node2")]));
    c.manifests().apply(&slice("masq", &[(&b1, "node1")]));
    start(&c);
    wait_external_eps(
        &c,
        "node1",
        LB_IP3,
        53,
        Protocol::Udp,
        &[format!("{}:5353", b1.ip)],
    );
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b1]);
    wait_external(&c, "node1", LB_IP2, 80, Protocol::Tcp, &[&b2]);
    println!("the client {} is in {ROUTED_NET}", far.ip);

    for (ip, what) in [
        (LB_IP, "eTP Local"),
        (LB_IP2, "eTP Cluster, backend on node2 (SNAT)"),
        (
            LB_IP3,
            "eTP Cluster, backend on node1 (masquerade, ferry_tc_pod)",
        ),
    ] {
        let out = c.tmp_dir().join(format!("download-{ip}"));
        let url = format!("http://{ip}/blob");
        let (res, took) = c.curl_timed(
            &far,
            &url,
            Duration::from_secs(20),
            &["-o", &out.to_string_lossy()],
        );
        if let Err((code, err)) = res {
            panic!(
                "{what}: downloading {url} across a 1280-byte link: curl exit {code}: {err} (a stalled transfer means the ICMP fragmentation-needed did not reach the backend)\n{}",
                c.dump()
            );
        }
        println!("{url} ({what}) across MTU 1280: {} ms", took.as_millis());
        assert_eq!(sha256(&out), want, "{what}: byte-identical");
        // The backend learned the path MTU (towards the client, or towards node1's SNAT
        // address).
        let (pod, dst) = if ip == LB_IP {
            (&b1, far.ip.to_string())
        } else {
            (&b2, c.node("node1").ip.to_string())
        };
        let route = c.output(pod, "ip", &["route", "get", &dst]);
        let route = String::from_utf8_lossy(&route.stdout);
        println!("{}: {}", pod.name, route.trim());
        assert!(
            route.contains("mtu 1280"),
            "{what}: the backend learned the path MTU from the translated ICMP error: {route}"
        );
    }
    let stats = c.stats("node1");
    println!("node1 stats: {stats}");
    assert!(
        stats["counters"]["ns_icmp_translated"].as_u64() >= Some(2),
        "node1 counted the ICMP errors it translated: {stats}"
    );
}

/// The backend each 5-tuple (ext1's source ports `ports`, to `target`) reaches through `node`,
/// one UDP datagram per source port.
fn udp_choices(c: &Cluster, node: &str, target: &str, ports: &[u16]) -> Vec<String> {
    let ext1 = c.ext("ext1");
    c.route(&ext1, LB_RANGE, node);
    ports
        .iter()
        .map(|p| {
            let a = c
                .client(
                    &ext1,
                    &[
                        "udp",
                        target,
                        "--source-port",
                        &p.to_string(),
                        "--timeout-ms",
                        "2000",
                    ],
                )
                .remove(0);
            assert!(
                a.ok,
                "{target} from port {p} via {node}: {}\n{}",
                a.raw,
                c.dump()
            );
            echo(&a).pod
        })
        .collect()
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn maglev_picks_the_same_backend_on_both_nodes() {
    require_root!();
    let c = Cluster::new("maglev_picks_the_same_backend_on_both_nodes");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node1", "b2");
    let b3 = c.add_pod_on("node2", "b3");
    let backends = [(&b1, "node1"), (&b2, "node1"), (&b3, "node2")];
    let mut echos = Vec::new();
    for (p, _) in backends {
        echos.push(c.start_echo(p, &[8080], &[5353]));
    }
    // The agents get different histories, so their backend ids differ: node1 first programs
    // a service that is deleted before node2 starts.
    let earlier = Service::cluster_ip("earlier", "10.96.0.99").port_to("dns", 53, "UDP", 5353u16);
    let earlier_eps = EndpointSlice::new("earlier-1", "earlier")
        .port("dns", 5353, "UDP")
        .endpoints((1..=3).map(|i| Endpoint::ready(format!("10.244.9.{i}")).node("node2")));
    c.manifests().apply(&earlier);
    c.manifests().apply(&earlier_eps);
    c.start_agent("node1", &ferry_tests::AgentOpts::default());
    c.wait_services(
        "node1",
        |v| {
            active_in(v, "10.96.0.99", 53, Protocol::Udp, Scope::External)
                .is_some_and(|b| b.len() == 3)
        },
        DEADLINE,
    );
    let maglev = web_ports(Service::load_balancer("maglev", CLUSTER_IP))
        .lb_ingress(LB_IP)
        .annotation("ferry.io/lb-algorithm", "maglev");
    let mut random = web_ports(Service::load_balancer("random", "10.96.0.11"))
        .lb_ingress(LB_IP2)
        .annotation("ferry.io/lb-algorithm", "random");
    random
        .ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 1));
    for svc in [&maglev, &random] {
        c.manifests().apply(svc);
    }
    c.manifests().apply(&slice("maglev", &backends));
    c.manifests().apply(&slice("random", &backends));
    let all = eps(&[&b1, &b2, &b3], 5353);
    wait_external_eps(&c, "node1", LB_IP, 53, Protocol::Udp, &all);
    c.manifests().delete(&earlier);
    c.manifests().delete(&earlier_eps);
    c.wait_services(
        "node1",
        |v| active_in(v, "10.96.0.99", 53, Protocol::Udp, Scope::External).is_none(),
        DEADLINE,
    );
    c.start_agent("node2", &ferry_tests::AgentOpts::default());
    let took = c.wait_north_south(DEADLINE);
    report("TC programs on both nodes", took);
    wait_external_eps(&c, "node2", LB_IP, 53, Protocol::Udp, &all);
    let ids = |node: &str| -> Vec<u32> {
        let v = c.services(node);
        let mut ids: Vec<u32> = v
            .frontends
            .iter()
            .filter(|f| f.address == LB_IP.ipv4() && f.port == 53)
            .flat_map(|f| f.backends.iter().map(|b| b.id))
            .collect();
        ids.sort();
        ids
    };
    println!(
        "backend ids: node1 {:?}, node2 {:?}",
        ids("node1"),
        ids("node2")
    );

    let ports: Vec<u16> = (40001..=40024).collect();
    let target = format!("{LB_IP}:53");
    let via1 = udp_choices(&c, "node1", &target, &ports);
    let via2 = udp_choices(&c, "node2", &target, &ports);
    let spread: BTreeSet<&String> = via1.iter().collect();
    println!("maglev: via node1 {via1:?}\n        via node2 {via2:?}");
    assert!(
        spread.len() >= 2,
        "24 flows spread over the backends: {via1:?}"
    );
    assert_eq!(
        via1, via2,
        "Maglev: both nodes pick the same backend for each flow"
    );

    // The default choice places a flow by its hash among the slots (sorted alike on every
    // node): consistent too while the backends are unchanged. (Other source ports: a flow
    // whose reply 5-tuple a live flow to the first service holds would be dropped.)
    let target2 = format!("{LB_IP2}:53");
    let ports2: Vec<u16> = (41001..=41024).collect();
    let slots1 = udp_choices(&c, "node1", &target2, &ports2);
    let slots2 = udp_choices(&c, "node2", &target2, &ports2);
    println!("slots:  via node1 {slots1:?}\n        via node2 {slots2:?}");
    assert_eq!(
        slots1, slots2,
        "the flow hash picks the same slot on both nodes"
    );

    // But when a backend goes, Maglev keeps the other backends' flows where they were and
    // the slot choice moves many of them: flows first seen through node1, then (no
    // conntrack there yet) through node2 after b3 left.
    let (ports3, ports4): (Vec<u16>, Vec<u16>) =
        ((42001..=42024).collect(), (43001..=43024).collect());
    let maglev_before = udp_choices(&c, "node1", &target, &ports3);
    let slots_before = udp_choices(&c, "node1", &target2, &ports4);
    let two = [(&b1, "node1"), (&b2, "node1")];
    c.manifests().apply(&slice("maglev", &two));
    c.manifests().apply(&slice("random", &two));
    let left = eps(&[&b1, &b2], 5353);
    for node in ["node1", "node2"] {
        wait_external_eps(&c, node, LB_IP, 53, Protocol::Udp, &left);
        wait_external_eps(&c, node, LB_IP2, 53, Protocol::Udp, &left);
    }
    let moved = |before: &[String], after: &[String]| {
        before
            .iter()
            .zip(after)
            .filter(|(b, a)| *b != &b3.name && b != a)
            .count()
    };
    let maglev_after = udp_choices(&c, "node2", &target, &ports3);
    let slots_after = udp_choices(&c, "node2", &target2, &ports4);
    let (m, sl) = (
        moved(&maglev_before, &maglev_after),
        moved(&slots_before, &slots_after),
    );
    println!("b3 removed: flows of b1/b2 that moved: Maglev {m}, slots {sl}");
    assert!(
        m < sl,
        "Maglev disrupts fewer flows than the slot choice ({m} vs {sl})"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn lb_cluster_dsr_keeps_the_client_ip() {
    require_root!();
    let c = Cluster::new("lb_cluster_dsr_keeps_the_client_ip");
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let (_s2, want) = serve_blob(&c, &b2);
    let svc = web_ports(Service::load_balancer("web", CLUSTER_IP))
        .port_to("files", 81, "TCP", 8081u16)
        .lb_ingress(LB_IP);
    c.manifests().apply(&svc);
    c.manifests()
        .apply(&slice("web", &[(&b2, "node2")]).port("files", 8081, "TCP"));
    let opts = ferry_tests::AgentOpts {
        extra_args: vec!["--lb-mode".into(), "dsr".into()],
        ..Default::default()
    };
    c.start_agents_with(&opts);
    let took = c.wait_north_south(DEADLINE);
    report("TC programs on both nodes", took);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b2]);
    c.route(&ext1, LB_RANGE, "node1");

    // The client talks to node1; the only endpoint is on node2, which answers the client
    // directly (from the LB IP) and the backend sees the client's own address.
    first_answer(
        &c,
        &ext1,
        &format!("{LB_IP}:80"),
        "ext1 -> LB via node1 -> b2 (DSR)",
    );
    let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 20);
    assert_all_ok(&c, &attempts, "TCP to the LB IP (DSR)");
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([EXT1_IP.to_string()]),
        "DSR keeps the client's address"
    );
    let udp = c.client(
        &ext1,
        &[
            "udp",
            &format!("{LB_IP}:53"),
            "--count",
            "5",
            "--timeout-ms",
            "2000",
        ],
    );
    assert_all_ok(&c, &udp, "UDP to the LB IP (DSR)");
    for a in &udp {
        assert_eq!(a.from.as_deref(), Some("192.0.2.10:53"), "{}", a.raw);
        assert_eq!(*echo(a).peer.ip(), EXT1_IP, "{}", a.raw);
    }
    download_identical(&c, &ext1, &format!("http://{LB_IP}:81/blob"), &want, "DSR");
    let flows = flows_of(&c, "node1");
    assert!(
        flows.iter().any(|f| f.is_forward()
            && f.src_ip() == Some(EXT1_IP)
            && f.nat_dst == format!("{}:8080", b2.ip)
            && !f.snat),
        "node1 tracks the DSR flow without SNAT: {flows:#?}"
    );
    println!(
        "node1 stats: {}\nnode2 stats: {}",
        c.stats("node1"),
        c.stats("node2")
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn agent_restart_keeps_north_south_flows() {
    require_root!();
    let c = Cluster::new("agent_restart_keeps_north_south_flows");
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    // LB IP 1: its endpoint on node2 (SNAT through node1); LB IP 2: eTP Local on node1.
    let remote = web_ports(Service::load_balancer("remote", CLUSTER_IP)).lb_ingress(LB_IP);
    let mut local = web_ports(Service::load_balancer("local", "10.96.0.11"))
        .lb_ingress(LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    local
        .ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + 1));
    c.manifests().apply(&remote);
    c.manifests().apply(&local);
    c.manifests().apply(&slice("remote", &[(&b2, "node2")]));
    c.manifests().apply(&slice("local", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, "node1", LB_IP, 80, Protocol::Tcp, &[&b2]);
    c.route(&ext1, LB_RANGE, "node1");
    first_answer(&c, &ext1, &format!("{LB_IP}:80"), "ext1 -> LB via node1");
    let links_before = c.tc_links("node1");
    println!("node1 TC links (pin, link id, prog id): {links_before:?}");
    assert_eq!(links_before.len(), 2, "{links_before:?}");

    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &[
            "tcp",
            &format!("{LB_IP}:80"),
            "--hold",
            "--timeout-ms",
            "3000",
        ],
    );
    let first = held_first(&c, &held);
    let exchange = |what: &str| {
        held.send_line(what).expect("stdin of the held client");
        let a = held
            .next_line(Duration::from_secs(5))
            .and_then(|l| Attempt::parse(&l))
            .unwrap_or_else(|| panic!("{what}: no reply on the held connection\n{}", c.dump()));
        assert!(a.ok, "{what}: {}\n{}", a.raw, c.dump());
        assert_eq!(
            echo(&a),
            echo(&first),
            "{what}: the same backend and SNAT source"
        );
    };
    let hc = format!("http://{}:{HC_PORT}/", c.node("node1").ip);

    let stopped = c.stop_agent("node1");
    println!("node1's agent stopped: {stopped:?}");
    // The datapath stays in place: the held flow, new flows and the local service work.
    exchange("while the agent is down");
    let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 5);
    assert_all_ok(&c, &attempts, "new connections while the agent is down");
    let attempts = tcp(&c, &ext1, &format!("{LB_IP2}:80"), 5);
    assert_all_ok(&c, &attempts, "eTP Local while the agent is down");
    println!(
        "health check while the agent is down: {:?}",
        http_get(&c, &ext1, &hc)
    );

    let took = c.start_agent("node1", &ferry_tests::AgentOpts::default());
    report("agent restart on node1 -> /readyz 200", took);
    exchange("after the restart");
    let attempts = tcp(&c, &ext1, &format!("{LB_IP}:80"), 5);
    assert_all_ok(&c, &attempts, "new connections after the restart");
    let got = poll(DEADLINE, Duration::from_millis(50), || {
        match http_get(&c, &ext1, &hc) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    match got {
        Ok((body, took)) => report(&format!("restart -> health check 200 {body}"), took),
        Err(e) => panic!("the health check server is back after the restart: {e}"),
    }
    // The programs were replaced inside the same pinned links (never detached).
    let links_after = c.tc_links("node1");
    println!("node1 TC links after the restart: {links_after:?}");
    let ids = |l: &[(String, u64, u64)]| l.iter().map(|x| (x.0.clone(), x.1)).collect::<Vec<_>>();
    assert_eq!(ids(&links_after), ids(&links_before), "the same TCX links");
    let local_port = serde_json::from_str::<Value>(&first.raw).unwrap()["local"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        c.conntrack("node1")
            .iter()
            .any(|f| f.is_forward() && f.src == local_port),
        "the held flow is still tracked"
    );
}
