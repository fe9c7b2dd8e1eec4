//! North-south traffic through the nodes' devices, on the two-node lab (tests/src/cluster.rs):
//! LoadBalancer IPs, NodePorts, externalIPs, externalTrafficPolicy Local and Cluster (SNAT),
//! the health check node port, source ranges, session affinity, a large transfer, hairpin,
//! rejection without endpoints, ICMP errors, and what `ferry services` / `ferry conntrack` show.
//!
//! Real clients (curl, lab-client) in the external client namespaces, which no agent hooks:
//! everything they reach went through a node's `eth0` and ferry's TC programs there. Every
//! wait polls a real condition with a deadline; measured latencies are printed, not asserted.
//!
//! Every test runs over both families of the dual-stack lab: one body taking a [`Family`],
//! made two tests (`NAME::ipv4`, `NAME::ipv6`) by [`over_both_families!`]. Its Services are
//! dual-stack (PreferDualStack: a ClusterIP of each family, `10.96.0.N` and `fd00:96::N`,
//! load balancer IPs `192.0.2.N` and `fd00:192:0:2::N`, externalIPs `198.51.100.N` and
//! `fd00:198:51:100::N`), their endpoints in one EndpointSlice per family, and the test sends
//! its traffic over its own family: to the node's address of that family (NodePorts), the
//! load balancer IP or externalIP of that family, from the client's address of that family,
//! with the same assertions. Where IPv6 behaves differently by design, the test says so and
//! checks what IPv6 does (`--lb-mode dsr` carries both families: an IPv4 option, an IPv6
//! destination options header).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use ferry::{
    cmd::services::ServicesView,
    datapath::codec::FlowView,
    model::{Protocol, Scope},
};
use ferry_tests::{
    Attempt, Cluster, EndpointSlice, Pod, Service,
    cleanup::Record,
    client::EchoAny,
    cluster::{
        EXT1_IP, EXT1_IP6, EXT2_IP, EXT2_IP6, EXTERNAL_IP_RANGE, LB_RANGE, ROUTED_NET, ROUTED_NET6,
        poll, sha256,
    },
    flows::FlowExt,
    netns, over_both_families,
    proc::{self, Proc},
    require_root,
    services::{self, AsIp, Family, at},
};
use serde_json::Value;

/// The ClusterIPs of the tests' Services, IPv4 and IPv6.
const CLUSTER_IP: [&str; 2] = ["10.96.0.10", "fd00:96::a"];
const CLUSTER_IP2: [&str; 2] = ["10.96.0.11", "fd00:96::b"];
const CLUSTER_IP3: [&str; 2] = ["10.96.0.12", "fd00:96::c"];
/// Load balancer IPs (`status.loadBalancer.ingress`), IPv4 and IPv6.
const LB_IP: [&str; 2] = ["192.0.2.10", "fd00:192:0:2::10"];
const LB_IP2: [&str; 2] = ["192.0.2.11", "fd00:192:0:2::11"];
const LB_IP3: [&str; 2] = ["192.0.2.12", "fd00:192:0:2::12"];
/// The ranges of the load balancer IPs: what an external client routes to a node.
const LB_RANGES: [&str; 2] = [LB_RANGE, "fd00:192:0:2::/64"];
const EXTERNAL_IP: [&str; 2] = ["198.51.100.10", "fd00:198:51:100::10"];
const EXTERNAL_IP_RANGES: [&str; 2] = [EXTERNAL_IP_RANGE, "fd00:198:51:100::/64"];
/// The service CIDRs (the ClusterIPs' ranges).
const SERVICE_RANGES: [&str; 2] = ["10.96.0.0/16", "fd00:96::/112"];
const NODE_PORT: i64 = 30080;
const UDP_NODE_PORT: i64 = 30053;
const HC_PORT: i64 = 32080;
/// How long a manifest change may take to reach both kernels (generous: no benchmark).
const DEADLINE: Duration = Duration::from_secs(10);

over_both_families!(
    lb_local_reaches_the_local_backend_and_keeps_the_client_ip,
    lb_cluster_snats_to_a_backend_on_the_other_node,
    node_port_on_either_node,
    external_ips,
    lb_cluster_masquerades_to_a_backend_on_the_receiving_node,
    health_check_node_port,
    load_balancer_source_ranges,
    session_affinity_client_ip,
    transfer_20mb_byte_identical,
    cluster_ip_from_outside_is_served_only_with_external_cluster_ip,
    pod_reaches_the_lb_ip_of_its_own_service,
    no_endpoints_is_refused_quickly,
    conntrack_and_services_show_north_south,
    icmp_port_unreachable_from_a_backend_reaches_the_client_translated,
    fragmentation_needed_reaches_the_backend_translated,
    maglev_picks_the_same_backend_on_both_nodes,
    lb_cluster_dsr_keeps_the_client_ip,
    agent_restart_keeps_north_south_flows,
);

/// The two-node lab of test `name` over `family`.
fn cluster(name: &str, family: Family) -> Cluster {
    Cluster::new(&format!("{name}_{}", family.tag()))
}

fn report(what: &str, took: Duration) {
    println!("latency: {what}: {} ms", took.as_millis());
}

/// Starts both agents and waits until both attached their TC programs to eth0.
fn start(c: &Cluster) {
    c.start_agents();
    let took = c.wait_north_south(DEADLINE);
    report("agents ready -> TC programs on both eth0", took);
}

/// The node's address of `family` on the segment (its NodePorts' address).
fn node_ip(c: &Cluster, family: Family, node: &str) -> IpAddr {
    let n = c.node(node);
    family.pick([n.ip.into(), n.ip6.into()])
}

/// The external clients' addresses of `family`.
fn ext1_ip(family: Family) -> IpAddr {
    family.pick([EXT1_IP.into(), EXT1_IP6.into()])
}

fn ext2_ip(family: Family) -> IpAddr {
    family.pick([EXT2_IP.into(), EXT2_IP6.into()])
}

/// The IP of `ip:port` / `[ipv6]:port` (a flow's address as `ferry conntrack` shows it).
fn ip_of(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The IP of a flow's `src` (without the port), of either family.
fn src_ip(f: &FlowView) -> Option<IpAddr> {
    ip_of(&f.src)
}

/// A dual-stack Service (PreferDualStack) of `svc`'s type with ClusterIPs `ips`.
fn dual(svc: Service, ips: [&str; 2]) -> Service {
    svc.cluster_ips(&ips).ip_family_policy("PreferDualStack")
}

fn load_balancer(name: &str, ips: [&str; 2]) -> Service {
    dual(Service::load_balancer(name, ips[0]), ips)
}

/// Both addresses of a pair as `status.loadBalancer.ingress` / `externalIPs`.
trait BothFamilies {
    fn lb_ingress2(self, ips: [&str; 2]) -> Self;
    fn external_ip2(self, ips: [&str; 2]) -> Self;
}

impl BothFamilies for Service {
    fn lb_ingress2(self, ips: [&str; 2]) -> Self {
        self.lb_ingress(ips[0]).lb_ingress(ips[1])
    }
    fn external_ip2(self, ips: [&str; 2]) -> Self {
        self.external_ip(ips[0]).external_ip(ips[1])
    }
}

/// The active backends ("ip:port", sorted) of a frontend in one scope, or None if there is
/// no such frontend.
fn active_in(
    v: &ServicesView,
    addr: impl AsIp,
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

/// Waits until the node's frontend (external scope) has exactly these active backends (their
/// addresses of `family`, port 8080).
fn wait_external(
    c: &Cluster,
    family: Family,
    node: &str,
    addr: impl AsIp + Copy,
    port: u16,
    proto: Protocol,
    want: &[&Pod],
) {
    wait_external_eps(c, node, addr, port, proto, &eps(family, want, 8080));
}

fn wait_external_eps(
    c: &Cluster,
    node: &str,
    addr: impl AsIp + Copy,
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
    report(
        &format!("{node}: {}/{proto} -> {want:?}", at(addr.ip(), port)),
        took,
    );
}

/// The pods' `port` as `ferry services` lists backends of `family`.
fn eps(family: Family, pods: &[&Pod], port: u16) -> Vec<String> {
    pods.iter().map(|p| family.ep(p, port)).collect()
}

/// The slices `<service>-ipv4` and `<service>-ipv6` of ready endpoints with their nodes, for
/// ports http (8080/TCP) and dns (5353/UDP).
fn slices(service: &str, pods: &[(&Pod, &str)]) -> [EndpointSlice; 2] {
    Family::BOTH.map(|f| {
        f.slice(service, service)
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoints(pods.iter().map(|(p, node)| f.ready(p).node(node)))
    })
}

/// Writes both slices.
fn apply_slices(c: &Cluster, slices: [EndpointSlice; 2]) {
    for s in &slices {
        c.manifests().apply(s);
    }
}

/// Service port http 80 -> 8080/TCP (nodePort 30080) and dns 53 -> 5353/UDP (nodePort 30053).
fn web_ports(svc: Service) -> Service {
    svc.port_to("http", 80, "TCP", 8080u16)
        .node_port(NODE_PORT)
        .port_to("dns", 53, "UDP", 5353u16)
        .node_port(UDP_NODE_PORT)
}

/// Moves the Service's nodePorts up by `by` (a second Service beside a first).
fn shift_node_ports(svc: &mut Service, by: i64) {
    svc.ports
        .iter_mut()
        .for_each(|p| p.node_port = p.node_port.map(|n| n + by));
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

/// The echo reply (the client address the server saw, of either family).
fn echo(a: &Attempt) -> EchoAny {
    a.echo_any()
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
        .filter_map(Attempt::echo_any)
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

/// `curl -sS -g -w '\n%{http_code}' URL` from `from` (no -f): (status, body) or curl's
/// complaint.
fn http_get(c: &Cluster, from: &Pod, url: &str) -> Result<(u16, String), String> {
    let (res, _) = c.curl_timed(
        from,
        url,
        Duration::from_secs(3),
        &["-g", "-w", "\n%{http_code}"],
    );
    let text = res.map_err(|(code, err)| format!("curl exit {code}: {err}"))?;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("no status in {text:?}"))?;
    Ok((code, body.to_owned()))
}

/// `http://ip:port/path` or `http://[ipv6]:port/path` (curl needs `-g`).
fn url_of(ip: impl AsIp, port: u16, path: &str) -> String {
    format!("http://{}{path}", at(ip, port))
}

fn flows_of(c: &Cluster, node: &str) -> Vec<FlowView> {
    let flows = c.conntrack(node);
    println!("{node}: ferry conntrack\n{}", c.conntrack_table(node));
    flows
}

// ---------------------------------------------------------------------------------------------

fn lb_local_reaches_the_local_backend_and_keeps_the_client_ip(family: Family) {
    require_root!();
    let c = cluster(
        "lb_local_reaches_the_local_backend_and_keeps_the_client_ip",
        family,
    );
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1"), (&b2, "node2")]));
    start(&c);
    // Each node's external entry holds only its own endpoint.
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b1]);
    wait_external(&c, family, "node2", lb, 80, Protocol::Tcp, &[&b2]);

    for (node, pod) in [("node1", &b1), ("node2", &b2)] {
        c.route(&ext1, family.pick(LB_RANGES), node);
        first_answer(
            &c,
            &ext1,
            &at(lb, 80),
            &format!("{family}: ext1 -> LB via {node}"),
        );
        let attempts = tcp(&c, &ext1, &at(lb, 80), 20);
        assert_all_ok(
            &c,
            &attempts,
            &format!("{family}: TCP to the LB IP via {node}"),
        );
        assert_eq!(
            by_pod(&attempts).keys().collect::<Vec<_>>(),
            [&pod.name],
            "{family}: via {node} only its local endpoint serves"
        );
        assert_eq!(
            peers(&attempts),
            BTreeSet::from([ext1_ip(family).to_string()]),
            "{family}: the backend sees the external client's own address"
        );
        // UDP: the reply comes from the LB IP and port the client sent to.
        let udp = c.client(
            &ext1,
            &["udp", &at(lb, 53), "--count", "5", "--timeout-ms", "2000"],
        );
        assert_all_ok(&c, &udp, &format!("{family}: UDP to the LB IP via {node}"));
        for a in &udp {
            assert_eq!(a.from.as_deref(), Some(at(lb, 53).as_str()), "{}", a.raw);
            let e = echo(a);
            assert_eq!(
                (e.pod.as_str(), e.peer.ip()),
                (pod.name.as_str(), ext1_ip(family))
            );
        }
    }
}

fn lb_cluster_snats_to_a_backend_on_the_other_node(family: Family) {
    require_root!();
    let c = cluster("lb_cluster_snats_to_a_backend_on_the_other_node", family);
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(load_balancer("web", CLUSTER_IP)).lb_ingress2(LB_IP);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b2, "node2")]));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b2]);
    let node1 = node_ip(&c, family, "node1").to_string();

    // The client talks to node1; the only endpoint is on node2.
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    first_answer(
        &c,
        &ext1,
        &at(lb, 80),
        &format!("{family}: ext1 -> LB via node1 -> b2"),
    );
    let attempts = tcp(&c, &ext1, &at(lb, 80), 20);
    assert_all_ok(&c, &attempts, &format!("{family}: TCP to the LB IP"));
    assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b2"]);
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([node1.clone()]),
        "{family}: the backend sees node1's address (SNAT)"
    );
    let ports: BTreeSet<u16> = attempts.iter().map(|a| echo(a).peer.port()).collect();
    println!("SNAT source ports seen by the backend: {ports:?}");
    let udp = c.client(
        &ext1,
        &["udp", &at(lb, 53), "--count", "5", "--timeout-ms", "2000"],
    );
    assert_all_ok(&c, &udp, &format!("{family}: UDP to the LB IP"));
    for a in &udp {
        assert_eq!(
            a.from.as_deref(),
            Some(at(lb, 53).as_str()),
            "the client sees replies from the LB IP: {}",
            a.raw
        );
        assert_eq!(echo(a).peer.ip().to_string(), node1);
    }

    // A held connection is in node1's conntrack with both translations.
    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &["tcp", &at(lb, 80), "--hold", "--timeout-ms", "3000"],
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
        .find(|f| f.is_forward() && f.src == local && f.dst == at(lb, 80))
        .unwrap_or_else(|| {
            panic!("{family}: no forward flow from {local} in node1's conntrack: {flows:#?}")
        });
    assert_eq!(fwd.nat_dst, family.ep(&b2, 8080), "{fwd:?}");
    assert!(fwd.snat, "{fwd:?}");
    assert_eq!(
        fwd.nat_src,
        seen_by_backend.to_string(),
        "the SNAT source is what the backend saw: {fwd:?}"
    );
    assert!(
        flows.iter().any(|f| !f.is_forward()
            && f.src == family.ep(&b2, 8080)
            && f.dst == seen_by_backend.to_string()
            && f.nat_src == at(lb, 80)
            && f.nat_dst == local),
        "a reply entry maps {} -> {seen_by_backend} back to {} -> {local}: {flows:#?}",
        family.ep(&b2, 8080),
        at(lb, 80)
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

fn node_port_on_either_node(family: Family) {
    require_root!();
    let c = cluster("node_port_on_either_node", family);
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let c1 = c.add_pod_on("node1", "c1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(dual(
        Service::node_port_service("web", CLUSTER_IP[0]),
        CLUSTER_IP,
    ));
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1"), (&b2, "node2")]));
    start(&c);
    for node in ["node1", "node2"] {
        wait_external(
            &c,
            family,
            node,
            node_ip(&c, family, node),
            30080,
            Protocol::Tcp,
            &[&b1, &b2],
        );
    }

    for node in ["node1", "node2"] {
        let ip = node_ip(&c, family, node);
        let target = at(ip, NODE_PORT as u16);
        first_answer(
            &c,
            &ext1,
            &target,
            &format!("{family}: ext1 -> NodePort of {node}"),
        );
        let attempts = tcp(&c, &ext1, &target, 30);
        assert_all_ok(&c, &attempts, &format!("TCP to {target}"));
        assert_eq!(
            by_pod(&attempts).keys().collect::<Vec<_>>(),
            ["b1", "b2"],
            "both endpoints serve through {node}"
        );
        println!("{target}: backends saw {:?}", peers(&attempts));
        let udp_target = at(ip, UDP_NODE_PORT as u16);
        let udp = c.client(&ext1, &["udp", &udp_target, "--count", "5"]);
        assert_all_ok(&c, &udp, &format!("UDP to {udp_target}"));
        for a in &udp {
            assert_eq!(a.from.as_deref(), Some(udp_target.as_str()), "{}", a.raw);
        }
    }

    // In the cluster: a pod and the node itself reach their own node's NodePort (socket
    // layer), and a pod reaches the other node's NodePort (through that node's eth0).
    let host1 = c.node("node1").host();
    for (from, node) in [(&c1, "node1"), (&host1, "node1"), (&c1, "node2")] {
        let target = at(node_ip(&c, family, node), NODE_PORT as u16);
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

fn external_ips(family: Family) {
    require_root!();
    let c = cluster("external_ips", family);
    let external_ip = family.pick(EXTERNAL_IP);
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let c2 = c.add_pod_on("node2", "c2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = dual(Service::cluster_ip("web", CLUSTER_IP[0]), CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16)
        .external_ip2(EXTERNAL_IP);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1")]));
    start(&c);
    for node in ["node1", "node2"] {
        wait_external(&c, family, node, external_ip, 80, Protocol::Tcp, &[&b1]);
    }
    let target = at(external_ip, 80);
    for node in ["node1", "node2"] {
        c.route(&ext1, family.pick(EXTERNAL_IP_RANGES), node);
        first_answer(
            &c,
            &ext1,
            &target,
            &format!("{family}: ext1 -> externalIP via {node}"),
        );
        let attempts = tcp(&c, &ext1, &target, 10);
        assert_all_ok(
            &c,
            &attempts,
            &format!("{family}: TCP to the externalIP via {node}"),
        );
        assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b1"]);
        let seen = peers(&attempts);
        println!("externalIP via {node}: the backend saw {seen:?}");
        if node == "node2" {
            // The backend is on node1: node2 SNATs (externalTrafficPolicy Cluster).
            assert_eq!(
                seen,
                BTreeSet::from([node_ip(&c, family, "node2").to_string()])
            );
        }
        let udp = c.client(&ext1, &["udp", &at(external_ip, 53), "--count", "3"]);
        assert_all_ok(
            &c,
            &udp,
            &format!("{family}: UDP to the externalIP via {node}"),
        );
        assert!(
            udp.iter()
                .all(|a| a.from.as_deref() == Some(at(external_ip, 53).as_str())),
            "{udp:#?}"
        );
    }
    // A pod on the other node reaches it through its node's socket layer, keeping its IP.
    let attempts = tcp(&c, &c2, &target, 5);
    assert_all_ok(&c, &attempts, "pod c2 -> the externalIP");
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([family.ip(&c2).to_string()])
    );
}

fn lb_cluster_masquerades_to_a_backend_on_the_receiving_node(family: Family) {
    require_root!();
    let c = cluster(
        "lb_cluster_masquerades_to_a_backend_on_the_receiving_node",
        family,
    );
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let (_s1, want) = serve_blob(&c, family, &b1);
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .port_to("files", 81, "TCP", 8081u16)
        .lb_ingress2(LB_IP);
    c.manifests().apply(&svc);
    let with_files = |s: [EndpointSlice; 2]| s.map(|s| s.port("files", 8081, "TCP"));
    apply_slices(&c, with_files(slices("web", &[(&b1, "node1")])));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b1]);
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    let node1 = node_ip(&c, family, "node1").to_string();

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
        &at(lb, 80),
        &format!("{family}: ext1 -> LB via node1 -> b1"),
    );
    let attempts = tcp(&c, &ext1, &at(lb, 80), 20);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: TCP to the LB IP, local backend"),
    );
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([node1.clone()]),
        "{family}: the local backend sees node1's address (masquerade)"
    );
    for a in &attempts {
        assert_eq!(a.peer.as_deref(), Some(at(lb, 80).as_str()), "{}", a.raw);
    }
    let udp = c.client(
        &ext1,
        &["udp", &at(lb, 53), "--count", "5", "--timeout-ms", "2000"],
    );
    assert_all_ok(
        &c,
        &udp,
        &format!("{family}: UDP to the LB IP, local backend"),
    );
    for a in &udp {
        assert_eq!(a.from.as_deref(), Some(at(lb, 53).as_str()), "{}", a.raw);
        assert_eq!(echo(a).peer.ip().to_string(), node1, "{}", a.raw);
    }
    download_identical(
        &c,
        &ext1,
        &url_of(lb, 81, "/blob"),
        &want,
        &format!("{family}: the masquerade"),
    );
    let flows = flows_of(&c, "node1");
    assert!(
        flows.iter().any(|f| f.is_forward()
            && src_ip(f) == Some(ext1_ip(family))
            && f.nat_dst == family.ep(&b1, 8080)
            && f.snat
            && f.local_backend),
        "{family}: node1 tracks the flow as SNAT to a local backend: {flows:#?}"
    );

    // A host-network backend (the node's own address) keeps the client's address: kube-proxy's
    // masquerade never sees locally delivered packets, and a reply from the node to itself
    // would be a martian.
    let host = c.node("node1").host();
    let _eh = c.start_echo(&host, &[8080], &[]);
    let mut hostnet = web_ports(load_balancer("hostnet", CLUSTER_IP3)).lb_ingress2(LB_IP2);
    shift_node_ports(&mut hostnet, 1);
    c.manifests().apply(&hostnet);
    apply_slices(&c, slices("hostnet", &[(&host, "node1")]));
    wait_external(&c, family, "node1", lb2, 80, Protocol::Tcp, &[&host]);
    let attempts = tcp(&c, &ext1, &at(lb2, 80), 10);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: TCP to a host-network backend"),
    );
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([ext1_ip(family).to_string()]),
        "{family}: a host-network backend sees the client"
    );

    // --lb-mode dsr keeps the client's address, for a local backend too, over both families.
    c.stop_agent("node1");
    c.start_agent(
        "node1",
        &ferry_tests::AgentOpts {
            extra_args: vec!["--lb-mode".into(), "dsr".into()],
            ..Default::default()
        },
    );
    let attempts = tcp(&c, &ext1, &at(lb, 80), 10);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: TCP to the LB IP, local backend, DSR mode"),
    );
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([ext1_ip(family).to_string()]),
        "{family}: with --lb-mode dsr the local backend sees the client"
    );

    // No local endpoint left while the agent is away: the next one removes the pod device's
    // program the previous one pinned.
    c.stop_agent("node1");
    apply_slices(&c, with_files(slices("web", &[])));
    apply_slices(&c, slices("hostnet", &[]));
    c.start_agent("node1", &ferry_tests::AgentOpts::default());
    let (_, took) = poll(DEADLINE, Duration::from_millis(20), || {
        (!pod_link.exists())
            .then_some(())
            .ok_or_else(|| "ferry_link_tcpod_br0 still pinned".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.agent_log("node1")));
    report("a stale ferry_tc_pod removed at start", took);
}

fn health_check_node_port(family: Family) {
    require_root!();
    let c = cluster("health_check_node_port", family);
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1")]));
    c.start_agents();

    // A load balancer of this family asks the node's address of this family.
    let url = |node: &str| url_of(node_ip(&c, family, node), HC_PORT as u16, "/");
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
                "{family}: {node}: health check node port at {}: want {want}: {e}\nlog:\n{}",
                url(node),
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
    apply_slices(&c, slices("web", &[(&b1, "node1"), (&b2, "node2")]));
    wait_status("node2", 200, 1);

    // node1's endpoint terminates (still serving): node1 drains (503) while its traffic is
    // still served by the terminating endpoint.
    let slices_terminating = Family::BOTH.map(|f| {
        f.slice("web", "web")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint(ferry_tests::Endpoint::terminating(f.ip(&b1), true).node("node1"))
            .endpoint(f.ready(&b2).node("node2"))
    });
    apply_slices(&c, slices_terminating);
    wait_status("node1", 503, 0);
    wait_status("node2", 200, 1);
    let took = c.wait_north_south(DEADLINE);
    report("TC programs on", took);
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    let a = first_answer(
        &c,
        &ext1,
        &at(lb, 80),
        &format!("{family}: LB via node1, terminating only"),
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

fn load_balancer_source_ranges(family: Family) {
    require_root!();
    let c = cluster("load_balancer_source_ranges", family);
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let ext2 = c.ext("ext2");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    // ext1's address of each family is in the ranges; ext2's of neither.
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .source_range(&Family::V4.host_cidr(&ext1))
        .source_range(&Family::V6.host_cidr(&ext1));
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b1]);
    for ext in [&ext1, &ext2] {
        c.route(ext, family.pick(LB_RANGES), "node1");
    }
    let url = url_of(lb, 80, "/");

    // Inside the range: served.
    first_answer(
        &c,
        &ext1,
        &at(lb, 80),
        &format!("{family}: ext1 (in range) -> LB"),
    );
    let (body, _) = c.curl_timed(&ext1, &url, Duration::from_secs(5), &["-g"]);
    let body = body.unwrap_or_else(|e| panic!("{family}: ext1 is inside the source range: {e:?}"));
    assert_eq!(EchoAny::parse(&body).map(|e| e.pod).as_deref(), Some("b1"));

    // Outside: dropped, so the connection times out.
    let (res, took) = c.curl_timed(&ext2, &url, Duration::from_secs(2), &["-g"]);
    println!(
        "ext2 (outside the range) -> LB: {res:?} after {} ms",
        took.as_millis()
    );
    match res {
        Ok(body) => panic!(
            "{family}: ext2 is outside the source range but got {body:?}\n{}",
            c.dump()
        ),
        Err((code, err)) => assert_eq!(code, 28, "a timeout (curl exit 28), got: {err}"),
    }
    let udp = c.client(
        &ext2,
        &["udp", &at(lb, 53), "--count", "2", "--timeout-ms", "1000"],
    );
    assert!(
        udp.iter().all(|a| !a.ok),
        "{family}: ext2's UDP is dropped too: {udp:#?}"
    );
    // ... before creating any state.
    let flows = flows_of(&c, "node1");
    let from_ext2: Vec<&FlowView> = flows
        .iter()
        .filter(|f| {
            src_ip(f) == Some(ext2_ip(family)) || ip_of(&f.nat_dst) == Some(ext2_ip(family))
        })
        .collect();
    assert!(from_ext2.is_empty(), "no flow of ext2: {from_ext2:#?}");
    assert!(
        flows
            .iter()
            .any(|f| f.is_forward() && src_ip(f) == Some(ext1_ip(family))),
        "{family}: ext1's flow is tracked: {flows:#?}"
    );
    println!("node1 stats: {}", c.stats("node1"));

    // Source ranges apply to the load balancer IPs only (as in kube-proxy): the NodePort of
    // the same service serves ext2.
    let target = at(node_ip(&c, family, "node1"), NODE_PORT as u16);
    let attempts = tcp(&c, &ext2, &target, 3);
    assert_all_ok(&c, &attempts, &format!("{family}: ext2 -> the NodePort"));
}

fn session_affinity_client_ip(family: Family) {
    require_root!();
    let c = cluster("session_affinity_client_ip", family);
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
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
    let sticky = web_ports(load_balancer("sticky", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .affinity(600);
    // The same endpoints without affinity, as a control.
    let mut plain = web_ports(load_balancer("plain", CLUSTER_IP2)).lb_ingress2(LB_IP2);
    shift_node_ports(&mut plain, 1);
    c.manifests().apply(&sticky);
    c.manifests().apply(&plain);
    apply_slices(&c, slices("sticky", &backends));
    apply_slices(&c, slices("plain", &backends));
    start(&c);
    for ip in [lb, lb2] {
        wait_external(&c, family, "node1", ip, 80, Protocol::Tcp, &[&b1, &b2, &b3]);
    }
    let v = c.services("node1");
    let fe = services::frontend(&v, lb, 80, Protocol::Tcp).unwrap();
    assert_eq!(fe.affinity_timeout, Some(600), "{fe:?}");

    for ext in [&ext1, &ext2] {
        c.route(ext, family.pick(LB_RANGES), "node1");
    }
    first_answer(&c, &ext1, &at(lb2, 80), &format!("{family}: ext1 -> LB"));
    let control = tcp(&c, &ext1, &at(lb2, 80), 30);
    assert_all_ok(&c, &control, &format!("{family}: without affinity"));
    let spread = by_pod(&control);
    println!("without affinity: {spread:?}");
    assert!(
        spread.len() >= 2,
        "{family}: 30 connections without affinity spread: {spread:?}"
    );

    for ext in [&ext1, &ext2] {
        let attempts = tcp(&c, ext, &at(lb, 80), 30);
        assert_all_ok(
            &c,
            &attempts,
            &format!("{family}: {} with affinity", ext.name),
        );
        let pods = by_pod(&attempts);
        println!("{} with ClientIP affinity: {pods:?}", ext.name);
        assert_eq!(
            pods.len(),
            1,
            "{family}: all connections of one client on one backend: {pods:?}"
        );
        // UDP: affinity is per service port (as kube-proxy's), so UDP may stick to another
        // backend than TCP, but every socket of the client (a new source port each) sticks
        // to the same one.
        let mut udp = Vec::new();
        for _ in 0..10 {
            udp.extend(c.client(ext, &["udp", &at(lb, 53), "--count", "1"]));
        }
        assert_all_ok(&c, &udp, &format!("{family}: UDP with affinity"));
        let udp_pods = by_pod(&udp);
        println!("{} over UDP from 10 sockets: {udp_pods:?}", ext.name);
        assert_eq!(
            udp_pods.len(),
            1,
            "{family}: UDP from {} sticks to one backend",
            ext.name
        );
    }
}

fn transfer_20mb_byte_identical(family: Family) {
    require_root!();
    let c = cluster("transfer_20mb_byte_identical", family);
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let www = c.tmp_dir().join("www");
    fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    write_random(&blob, 20 << 20);
    let want = sha256(&blob);
    let _s1 = http_server(&c, family, &b1, &www);
    let _s2 = http_server(&c, family, &b2, &www);
    // LB IP 1: its only endpoint on node2 (SNAT through node1); LB IP 2: eTP Local on node1.
    let remote = load_balancer("remote", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress2(LB_IP);
    let local = load_balancer("local", CLUSTER_IP2)
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress2(LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&remote);
    c.manifests().apply(&local);
    apply_slices(&c, slices("remote", &[(&b2, "node2")]));
    apply_slices(&c, slices("local", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b2]);
    wait_external(&c, family, "node1", lb2, 80, Protocol::Tcp, &[&b1]);
    c.route(&ext1, family.pick(LB_RANGES), "node1");

    for (ip, what) in [(lb, "eTP Cluster, backend on node2"), (lb2, "eTP Local")] {
        let out = c.tmp_dir().join(format!("download-{ip}"));
        let url = url_of(ip, 80, "/blob");
        let (res, took) = c.curl_timed(
            &ext1,
            &url,
            Duration::from_secs(60),
            &["-g", "-o", &out.to_string_lossy()],
        );
        if let Err((code, err)) = res {
            panic!(
                "{family}: downloading {url} ({what}): curl exit {code}: {err}\n{}",
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
        assert_eq!(size, 20 << 20, "{family}: {what}: size");
        assert_eq!(
            got, want,
            "{family}: {what}: the download is byte-identical"
        );
        fs::remove_file(&out).unwrap();
    }
}

/// A 4 MiB random file served over HTTP by `pod` on port 8081 (on its address of `family`);
/// the server and the file's hash.
fn serve_blob(c: &Cluster, family: Family, pod: &Pod) -> (Proc, String) {
    let www = c.tmp_dir().join("www");
    fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    write_random(&blob, 4 << 20);
    let want = sha256(&blob);
    (http_server_on(c, family, pod, &www, 8081), want)
}

/// `from` downloads `url` with curl; its bytes must hash to `want` (4 MiB blobs here).
fn download_identical(c: &Cluster, from: &Pod, url: &str, want: &str, through: &str) {
    let out = c.tmp_dir().join("download");
    let (res, took) = c.curl_timed(
        from,
        url,
        Duration::from_secs(30),
        &["-g", "-o", &out.to_string_lossy()],
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
fn http_server(c: &Cluster, family: Family, pod: &Pod, dir: &std::path::Path) -> Proc {
    http_server_on(c, family, pod, dir, 8080)
}

/// `python3 -m http.server PORT` bound to the wildcard address of `family`.
fn http_server_on(
    c: &Cluster,
    family: Family,
    pod: &Pod,
    dir: &std::path::Path,
    port: u16,
) -> Proc {
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
            family.pick(["0.0.0.0", "::"]),
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
fn cluster_ip_from_outside_is_served_only_with_external_cluster_ip(family: Family) {
    require_root!();
    let c = cluster(
        "cluster_ip_from_outside_is_served_only_with_external_cluster_ip",
        family,
    );
    let cluster_ip = family.pick(CLUSTER_IP);
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let svc = dual(Service::cluster_ip("web", CLUSTER_IP[0]), CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1"), (&b2, "node2")]));
    c.route(&ext1, family.pick(SERVICE_RANGES), "node1");
    let target = at(cluster_ip, 80);

    // Default: node1 does not translate it (its stack has no route for it).
    start(&c);
    wait_external(
        &c,
        family,
        "node1",
        cluster_ip,
        80,
        Protocol::Tcp,
        &[&b1, &b2],
    );
    let a = c
        .client(&ext1, &["tcp", &target, "--timeout-ms", "1000"])
        .remove(0);
    assert!(
        !a.ok,
        "{family}: a ClusterIP is not served to outside clients by default: {}",
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
    first_answer(
        &c,
        &ext1,
        &target,
        &format!("{family}: ext1 -> ClusterIP via node1"),
    );
    let attempts = tcp(&c, &ext1, &target, 30);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: TCP to the ClusterIP from outside"),
    );
    let pods = by_pod(&attempts);
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["b1", "b2"], "{pods:?}");
    let node1 = node_ip(&c, family, "node1").to_string();
    for a in &attempts {
        // kube-proxy masquerades traffic from outside to a ClusterIP, whichever node the
        // backend is on.
        assert_eq!(
            echo(a).peer.ip().to_string(),
            node1,
            "{family}: b1 (on node1) and b2 both see node1 (masquerade): {}",
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
            &at(cluster_ip, 53),
            "--count",
            "5",
            "--timeout-ms",
            "2000",
        ],
    );
    assert_all_ok(
        &c,
        &udp,
        &format!("{family}: UDP to the ClusterIP from outside"),
    );
    for a in &udp {
        assert_eq!(
            a.from.as_deref(),
            Some(at(cluster_ip, 53).as_str()),
            "{}",
            a.raw
        );
    }
}

fn pod_reaches_the_lb_ip_of_its_own_service(family: Family) {
    require_root!();
    let c = cluster("pod_reaches_the_lb_ip_of_its_own_service", family);
    let (lb, external_ip) = (family.pick(LB_IP), family.pick(EXTERNAL_IP));
    let b1 = c.add_pod_on("node1", "b1");
    let c2 = c.add_pod_on("node2", "c2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .external_ip2(EXTERNAL_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b1]);
    let node1 = node_ip(&c, family, "node1");
    let host1 = c.node("node1").host();

    // The backend itself (hairpin), the node it runs on, and a pod on the other node (whose
    // node has no local endpoint: in-cluster clients reach every endpoint).
    // Each reaches its own node's NodePort (another node's NodePort is that node's device's
    // business: see node_port_on_either_node).
    for (from, own_node) in [
        (&b1, node1),
        (&host1, node1),
        (&c2, node_ip(&c, family, "node2")),
    ] {
        for target in [
            at(lb, 80),
            at(external_ip, 80),
            at(own_node, NODE_PORT as u16),
        ] {
            let attempts = tcp(&c, from, &target, 5);
            assert_all_ok(
                &c,
                &attempts,
                &format!("{family}: {} -> {target}", from.name),
            );
            assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b1"]);
            let seen = peers(&attempts);
            println!("{} -> {target}: the backend saw {seen:?}", from.name);
            // The node's own connections leave towards its pods from its bridge address.
            let source = if from.name == host1.name {
                let n = c.node("node1");
                family.pick([n.gateway.into(), n.gateway6.into()])
            } else {
                family.ip(from)
            };
            assert_eq!(
                seen,
                BTreeSet::from([source.to_string()]),
                "{family}: the socket layer translates: no SNAT"
            );
        }
    }
    let udp = c.client(&b1, &["udp", &at(lb, 53), "--count", "3"]);
    assert_all_ok(&c, &udp, &format!("{family}: b1 -> its own LB IP over UDP"));
    // None of it took the device path: no north-south flow on either node.
    for node in ["node1", "node2"] {
        let flows = c.conntrack(node);
        assert!(
            flows.is_empty(),
            "{family}: {node} tracked in-cluster traffic: {flows:#?}"
        );
    }
    assert!(
        udp.iter()
            .all(|a| a.from.as_deref() == Some(at(lb, 53).as_str())),
        "{udp:#?}"
    );
}

fn no_endpoints_is_refused_quickly(family: Family) {
    require_root!();
    let c = cluster("no_endpoints_is_refused_quickly", family);
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    // No endpoints at all.
    let empty = web_ports(load_balancer("empty", CLUSTER_IP)).lb_ingress2(LB_IP);
    c.manifests().apply(&empty);
    // eTP Local with its only endpoint on node2.
    let mut remote_only = web_ports(load_balancer("remote-only", CLUSTER_IP2))
        .lb_ingress2(LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    shift_node_ports(&mut remote_only, 1);
    c.manifests().apply(&remote_only);
    apply_slices(&c, slices("remote-only", &[(&b2, "node2")]));
    start(&c);
    wait_external_eps(&c, "node1", lb, 80, Protocol::Tcp, &[]);
    wait_external_eps(&c, "node1", lb2, 80, Protocol::Tcp, &[]);
    c.route(&ext1, family.pick(LB_RANGES), "node1");

    let node2 = node_ip(&c, family, "node2");
    for target in [at(lb, 80), at(node2, NODE_PORT as u16)] {
        let a = c
            .client(&ext1, &["tcp", &target, "--timeout-ms", "5000"])
            .remove(0);
        println!("ext1 -> {target} (no endpoints): {}", a.raw);
        assert!(!a.ok, "{}", a.raw);
        assert_eq!(
            a.error.as_deref(),
            Some("ECONNREFUSED"),
            "{family}: rejected (ICMP port unreachable), not dropped: {}\n{}",
            a.raw,
            c.dump()
        );
        assert!(a.elapsed_ms < 5000, "{}", a.raw);
    }
    let udp = c.client(
        &ext1,
        &["udp", &at(lb, 53), "--connected", "--timeout-ms", "3000"],
    );
    println!("ext1 -> {}/UDP (no endpoints): {}", at(lb, 53), udp[0].raw);
    assert_eq!(
        udp[0].error.as_deref(),
        Some("ECONNREFUSED"),
        "{family}: {}\n{}",
        udp[0].raw,
        c.dump()
    );

    // eTP Local without a local endpoint: dropped on this node (not forwarded elsewhere).
    let a = c
        .client(&ext1, &["tcp", &at(lb2, 80), "--timeout-ms", "2000"])
        .remove(0);
    println!(
        "ext1 -> {} via node1 (eTP Local, endpoint on node2 only): {}",
        at(lb2, 80),
        a.raw
    );
    assert!(
        !a.ok,
        "{family}: no local endpoint on node1, yet answered: {}",
        a.raw
    );
    assert!(
        matches!(a.error.as_deref(), Some("timeout" | "ETIMEDOUT")),
        "{family}: dropped: {}",
        a.raw
    );
}

fn conntrack_and_services_show_north_south(family: Family) {
    require_root!();
    let c = cluster("conntrack_and_services_show_north_south", family);
    let (lb, external_ip) = (family.pick(LB_IP), family.pick(EXTERNAL_IP));
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .external_ip2(EXTERNAL_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    c.manifests().apply(&svc);
    apply_slices(&c, slices("web", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b1]);

    // ferry services: each node's NodePort on its own address, the LB IP and the externalIP,
    // with their kinds; eTP Local gives an external and an internal entry.
    for node in ["node1", "node2"] {
        let v = c.services(node);
        println!("{node}:\n{}", c.services_table(node));
        let flags = |addr: IpAddr, port: u16, scope: Scope| -> Vec<String> {
            services::frontend_in(&v, addr, port, Protocol::Tcp, scope)
                .unwrap_or_else(|| panic!("{node}: no {} ({scope:?}): {v:?}", at(addr, port)))
                .flags
                .clone()
        };
        for (addr, port, kind) in [
            (node_ip(&c, family, node), 30080, "NodePort"),
            (lb.ip(), 80, "LoadBalancer"),
            (external_ip.ip(), 80, "ExternalIP"),
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
        let local_eps = if node == "node1" {
            vec![family.ep(&b1, 8080)]
        } else {
            vec![]
        };
        assert_eq!(
            active_in(&v, lb, 80, Protocol::Tcp, Scope::External),
            Some(local_eps)
        );
        assert_eq!(
            active_in(&v, lb, 80, Protocol::Tcp, Scope::Internal),
            Some(vec![family.ep(&b1, 8080)])
        );
    }

    // ferry conntrack: a held connection from ext1, both directions with translations.
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    first_answer(&c, &ext1, &at(lb, 80), &format!("{family}: ext1 -> LB"));
    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &["tcp", &at(lb, 80), "--hold", "--timeout-ms", "3000"],
    );
    let first = held_first(&c, &held);
    let local = serde_json::from_str::<Value>(&first.raw).unwrap()["local"]
        .as_str()
        .unwrap()
        .to_owned();
    let client: SocketAddr = local.parse().unwrap();
    assert_eq!(client.ip(), ext1_ip(family));
    let flows = flows_of(&c, "node1");
    let backend = family.ep(&b1, 8080);
    let fwd = flows
        .iter()
        .find(|f| f.is_forward() && f.src == local)
        .unwrap_or_else(|| panic!("{family}: no forward flow from {local}: {flows:#?}"));
    assert_eq!(fwd.protocol, Some(Protocol::Tcp), "{fwd:?}");
    assert_eq!(fwd.dst, at(lb, 80), "{fwd:?}");
    assert_eq!(fwd.nat_dst, backend, "{fwd:?}");
    assert_eq!(fwd.nat_src, local, "eTP Local: no SNAT: {fwd:?}");
    assert!(!fwd.snat && fwd.local_backend, "{fwd:?}");
    let rev = flows
        .iter()
        .find(|f| !f.is_forward() && f.dst == local)
        .unwrap_or_else(|| panic!("{family}: no reply flow to {local}: {flows:#?}"));
    assert_eq!(rev.src, backend, "{rev:?}");
    assert_eq!(rev.nat_src, at(lb, 80), "{rev:?}");
    assert_eq!(rev.nat_dst, local, "{rev:?}");
    // UDP flows are listed too.
    let udp = c.client(&ext1, &["udp", &at(lb, 53), "--count", "1"]);
    assert_all_ok(&c, &udp, &format!("{family}: UDP"));
    let flows = flows_of(&c, "node1");
    assert!(
        flows.iter().any(|f| f.is_forward()
            && f.protocol == Some(Protocol::Udp)
            && f.dst == at(lb, 53)
            && f.nat_dst == family.ep(&b1, 5353)),
        "{family}: {flows:#?}"
    );
    // node2 saw none of it.
    assert!(
        c.conntrack("node2")
            .iter()
            .all(|f| src_ip(f) != Some(ext1_ip(family))),
        "{:#?}",
        c.conntrack("node2")
    );
    drop(held);
}

fn icmp_port_unreachable_from_a_backend_reaches_the_client_translated(family: Family) {
    require_root!();
    let c = cluster(
        "icmp_port_unreachable_from_a_backend_reaches_the_client_translated",
        family,
    );
    let [lb, lb2, lb3] = [LB_IP, LB_IP2, LB_IP3].map(|p| family.pick(p));
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    // TCP only: UDP 5353 is closed, so the backends answer UDP with ICMP port unreachable.
    let _e1 = c.start_echo(&b1, &[8080], &[]);
    let _e2 = c.start_echo(&b2, &[8080], &[]);
    let local = web_ports(load_balancer("local", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    let mut remote = web_ports(load_balancer("remote", CLUSTER_IP2)).lb_ingress2(LB_IP2);
    shift_node_ports(&mut remote, 1);
    let mut masq = web_ports(load_balancer("masq", CLUSTER_IP3)).lb_ingress2(LB_IP3);
    shift_node_ports(&mut masq, 2);
    c.manifests().apply(&local);
    c.manifests().apply(&remote);
    c.manifests().apply(&masq);
    apply_slices(&c, slices("local", &[(&b1, "node1")]));
    apply_slices(&c, slices("remote", &[(&b2, "node2")]));
    apply_slices(&c, slices("masq", &[(&b1, "node1")]));
    start(&c);
    for (ip, pod) in [(lb3, &b1), (lb, &b1), (lb2, &b2)] {
        wait_external_eps(&c, "node1", ip, 53, Protocol::Udp, &[family.ep(pod, 5353)]);
    }
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    first_answer(&c, &ext1, &at(lb, 80), &format!("{family}: ext1 -> LB"));

    // A connected UDP socket only learns of the error if the ICMP message names the flow as
    // the client sent it (LB IP and port): translated back by node1.
    for (ip, what) in [
        (lb, "eTP Local"),
        (lb2, "eTP Cluster, backend on node2 (SNAT)"),
        (
            lb3,
            "eTP Cluster, backend on node1 (masquerade, ferry_tc_pod)",
        ),
    ] {
        let start = Instant::now();
        let udp = c.client(
            &ext1,
            &["udp", &at(ip, 53), "--connected", "--timeout-ms", "3000"],
        );
        println!(
            "{}/UDP ({what}), closed on the backend: {} after {} ms",
            at(ip, 53),
            udp[0].raw,
            start.elapsed().as_millis()
        );
        assert_eq!(
            udp[0].error.as_deref(),
            Some("ECONNREFUSED"),
            "{family}: {what}: the backend's port unreachable reaches the client translated: {}\n{}",
            udp[0].raw,
            c.dump()
        );
    }
}

/// Sends the router's IPv6 load balancer range to `node` (the lab's router sends only the
/// IPv4 ranges to a node): what the IPv6 client behind it reaches the load balancer IPs by,
/// and where the router's ICMPv6 errors about the replies go.
fn router_routes_lb_range6(c: &Cluster, node: &str) {
    let rtr = format!("{}rtr", Record::netns_prefix(c.id()));
    let via = c.node(node).ip6.to_string();
    netns::ip(
        &rtr,
        &[
            "-6",
            "route",
            "replace",
            LB_RANGES[1],
            "via",
            &via,
            "dev",
            "eth0",
        ],
    )
    .unwrap_or_else(|e| panic!("route {} via {node} in {rtr}: {e:#}", LB_RANGES[1]));
}

fn fragmentation_needed_reaches_the_backend_translated(family: Family) {
    require_root!();
    let c = cluster(
        "fragmentation_needed_reaches_the_backend_translated",
        family,
    );
    let [lb, lb2, lb3] = [LB_IP, LB_IP2, LB_IP3].map(|p| family.pick(p));
    // A client behind a router whose link towards it has MTU 1280 (IPv6's minimum: IPv6
    // stays on); the client advertises a full-size MSS (1460 over IPv4, 1440 over IPv6), so
    // full-size segments from the backend only get through once the router's "fragmentation
    // needed" (ICMPv6 "packet too big") reaches the backend's TCP (translated by node1).
    let far = c.add_routed_client("far", 1280, "node1");
    if family == Family::V6 {
        router_routes_lb_range6(&c, "node1");
    }
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let www = c.tmp_dir().join("www");
    fs::create_dir(&www).unwrap();
    let blob = www.join("blob");
    write_random(&blob, 2 << 20);
    let want = sha256(&blob);
    let _s1 = http_server(&c, family, &b1, &www);
    let _s2 = http_server(&c, family, &b2, &www);
    let local = load_balancer("local", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress2(LB_IP)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    let remote = load_balancer("remote", CLUSTER_IP2)
        .port_to("http", 80, "TCP", 8080u16)
        .lb_ingress2(LB_IP2);
    let mut masq = web_ports(load_balancer("masq", CLUSTER_IP3)).lb_ingress2(LB_IP3);
    shift_node_ports(&mut masq, 2);
    c.manifests().apply(&local);
    c.manifests().apply(&remote);
    c.manifests().apply(&masq);
    apply_slices(&c, slices("local", &[(&b1, "node1")]));
    apply_slices(&c, slices("remote", &[(&b2, "node2")]));
    apply_slices(&c, slices("masq", &[(&b1, "node1")]));
    start(&c);
    wait_external_eps(&c, "node1", lb3, 53, Protocol::Udp, &[family.ep(&b1, 5353)]);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b1]);
    wait_external(&c, family, "node1", lb2, 80, Protocol::Tcp, &[&b2]);
    println!(
        "the client {} is in {}",
        family.ip(&far),
        family.pick([ROUTED_NET, ROUTED_NET6])
    );

    for (ip, what) in [
        (lb, "eTP Local"),
        (lb2, "eTP Cluster, backend on node2 (SNAT)"),
        (
            lb3,
            "eTP Cluster, backend on node1 (masquerade, ferry_tc_pod)",
        ),
    ] {
        let out = c.tmp_dir().join(format!("download-{ip}"));
        let url = url_of(ip, 80, "/blob");
        let (res, took) = c.curl_timed(
            &far,
            &url,
            Duration::from_secs(20),
            &["-g", "-o", &out.to_string_lossy()],
        );
        if let Err((code, err)) = res {
            panic!(
                "{family}: {what}: downloading {url} across a 1280-byte link: curl exit {code}: {err} (a stalled transfer means the ICMP fragmentation-needed / packet-too-big did not reach the backend)\n{}",
                c.dump()
            );
        }
        println!("{url} ({what}) across MTU 1280: {} ms", took.as_millis());
        assert_eq!(sha256(&out), want, "{family}: {what}: byte-identical");
        // The backend learned the path MTU (towards the client, or towards node1's SNAT
        // address).
        let (pod, dst) = if ip == lb {
            (&b1, family.ip(&far))
        } else {
            (&b2, node_ip(&c, family, "node1"))
        };
        let route = c.output(pod, "ip", &["route", "get", &dst.to_string()]);
        let route = String::from_utf8_lossy(&route.stdout);
        println!("{}: {}", pod.name, route.trim());
        assert!(
            route.contains("mtu 1280"),
            "{family}: {what}: the backend learned the path MTU from the translated ICMP error: {route}"
        );
    }
    let stats = c.stats("node1");
    println!("node1 stats: {stats}");
    assert!(
        stats["counters"]["ns_icmp_translated"].as_u64() >= Some(2),
        "{family}: node1 counted the ICMP errors it translated: {stats}"
    );
}

/// The backend each 5-tuple (ext1's source ports `ports`, to `target`) reaches through `node`,
/// one UDP datagram per source port.
fn udp_choices(
    c: &Cluster,
    family: Family,
    node: &str,
    target: &str,
    ports: &[u16],
) -> Vec<String> {
    let ext1 = c.ext("ext1");
    c.route(&ext1, family.pick(LB_RANGES), node);
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
                "{family}: {target} from port {p} via {node}: {}\n{}",
                a.raw,
                c.dump()
            );
            echo(&a).pod
        })
        .collect()
}

fn maglev_picks_the_same_backend_on_both_nodes(family: Family) {
    require_root!();
    let c = cluster("maglev_picks_the_same_backend_on_both_nodes", family);
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
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
    let earlier_ip = ["10.96.0.99", "fd00:96::99"];
    let earlier = dual(Service::cluster_ip("earlier", earlier_ip[0]), earlier_ip)
        .port_to("dns", 53, "UDP", 5353u16);
    let earlier_eps = Family::BOTH.map(|f| {
        f.slice("earlier", "earlier")
            .port("dns", 5353, "UDP")
            .endpoints((1..=3).map(|i| {
                let ip = f.pick([format!("10.244.9.{i}"), format!("fd00:10:244:9::{i}")]);
                ferry_tests::Endpoint::ready(ip).node("node2")
            }))
    });
    c.manifests().apply(&earlier);
    for s in &earlier_eps {
        c.manifests().apply(s);
    }
    c.start_agent("node1", &ferry_tests::AgentOpts::default());
    let earlier_vip = family.pick(earlier_ip);
    c.wait_services(
        "node1",
        |v| {
            active_in(v, earlier_vip, 53, Protocol::Udp, Scope::External)
                .is_some_and(|b| b.len() == 3)
        },
        DEADLINE,
    );
    let maglev = web_ports(load_balancer("maglev", CLUSTER_IP))
        .lb_ingress2(LB_IP)
        .annotation("ferry.io/lb-algorithm", "maglev");
    let mut random = web_ports(load_balancer("random", CLUSTER_IP2))
        .lb_ingress2(LB_IP2)
        .annotation("ferry.io/lb-algorithm", "random");
    shift_node_ports(&mut random, 1);
    for svc in [&maglev, &random] {
        c.manifests().apply(svc);
    }
    apply_slices(&c, slices("maglev", &backends));
    apply_slices(&c, slices("random", &backends));
    let all = eps(family, &[&b1, &b2, &b3], 5353);
    wait_external_eps(&c, "node1", lb, 53, Protocol::Udp, &all);
    c.manifests().delete(&earlier);
    for s in &earlier_eps {
        c.manifests().delete(s);
    }
    c.wait_services(
        "node1",
        |v| active_in(v, earlier_vip, 53, Protocol::Udp, Scope::External).is_none(),
        DEADLINE,
    );
    c.start_agent("node2", &ferry_tests::AgentOpts::default());
    let took = c.wait_north_south(DEADLINE);
    report("TC programs on both nodes", took);
    wait_external_eps(&c, "node2", lb, 53, Protocol::Udp, &all);
    let ids = |node: &str| -> Vec<u32> {
        let v = c.services(node);
        let mut ids: Vec<u32> = v
            .frontends
            .iter()
            .filter(|f| f.address == lb.ip() && f.port == 53)
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
    let target = at(lb, 53);
    let via1 = udp_choices(&c, family, "node1", &target, &ports);
    let via2 = udp_choices(&c, family, "node2", &target, &ports);
    let spread: BTreeSet<&String> = via1.iter().collect();
    println!("maglev: via node1 {via1:?}\n        via node2 {via2:?}");
    assert!(
        spread.len() >= 2,
        "{family}: 24 flows spread over the backends: {via1:?}"
    );
    assert_eq!(
        via1, via2,
        "{family}: Maglev: both nodes pick the same backend for each flow"
    );

    // The default choice places a flow by its hash among the slots (sorted alike on every
    // node): consistent too while the backends are unchanged. (Other source ports: a flow
    // whose reply 5-tuple a live flow to the first service holds would be dropped.)
    let target2 = at(lb2, 53);
    let ports2: Vec<u16> = (41001..=41024).collect();
    let slots1 = udp_choices(&c, family, "node1", &target2, &ports2);
    let slots2 = udp_choices(&c, family, "node2", &target2, &ports2);
    println!("slots:  via node1 {slots1:?}\n        via node2 {slots2:?}");
    assert_eq!(
        slots1, slots2,
        "{family}: the flow hash picks the same slot on both nodes"
    );

    // But when a backend goes, Maglev keeps the other backends' flows where they were and
    // the slot choice moves many of them: flows first seen through node1, then (no
    // conntrack there yet) through node2 after b3 left.
    let (ports3, ports4): (Vec<u16>, Vec<u16>) =
        ((42001..=42024).collect(), (43001..=43024).collect());
    let maglev_before = udp_choices(&c, family, "node1", &target, &ports3);
    let slots_before = udp_choices(&c, family, "node1", &target2, &ports4);
    let two = [(&b1, "node1"), (&b2, "node1")];
    apply_slices(&c, slices("maglev", &two));
    apply_slices(&c, slices("random", &two));
    let left = eps(family, &[&b1, &b2], 5353);
    for node in ["node1", "node2"] {
        wait_external_eps(&c, node, lb, 53, Protocol::Udp, &left);
        wait_external_eps(&c, node, lb2, 53, Protocol::Udp, &left);
    }
    let moved = |before: &[String], after: &[String]| {
        before
            .iter()
            .zip(after)
            .filter(|(b, a)| *b != &b3.name && b != a)
            .count()
    };
    let maglev_after = udp_choices(&c, family, "node2", &target, &ports3);
    let slots_after = udp_choices(&c, family, "node2", &target2, &ports4);
    let (m, sl) = (
        moved(&maglev_before, &maglev_after),
        moved(&slots_before, &slots_after),
    );
    println!("b3 removed: flows of b1/b2 that moved: Maglev {m}, slots {sl}");
    assert!(
        m < sl,
        "{family}: Maglev disrupts fewer flows than the slot choice ({m} vs {sl})"
    );
}

/// `--lb-mode dsr`: node2 answers the client directly and the backend sees the client's own
/// address, over both families (IPv4: the frontend in an IP option; IPv6: in a destination
/// options header).
fn lb_cluster_dsr_keeps_the_client_ip(family: Family) {
    require_root!();
    let c = cluster("lb_cluster_dsr_keeps_the_client_ip", family);
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let (_s2, want) = serve_blob(&c, family, &b2);
    let svc = web_ports(load_balancer("web", CLUSTER_IP))
        .port_to("files", 81, "TCP", 8081u16)
        .lb_ingress2(LB_IP);
    c.manifests().apply(&svc);
    apply_slices(
        &c,
        slices("web", &[(&b2, "node2")]).map(|s| s.port("files", 8081, "TCP")),
    );
    let opts = ferry_tests::AgentOpts {
        extra_args: vec!["--lb-mode".into(), "dsr".into()],
        ..Default::default()
    };
    c.start_agents_with(&opts);
    let took = c.wait_north_south(DEADLINE);
    report("TC programs on both nodes", took);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b2]);
    c.route(&ext1, family.pick(LB_RANGES), "node1");

    // The client talks to node1; the only endpoint is on node2, which answers the client
    // directly (from the LB IP) and the backend sees the client's own address.
    let seen = ext1_ip(family).to_string();
    first_answer(
        &c,
        &ext1,
        &at(lb, 80),
        &format!("{family}: ext1 -> LB via node1 -> b2 (DSR)"),
    );
    let attempts = tcp(&c, &ext1, &at(lb, 80), 20);
    assert_all_ok(&c, &attempts, &format!("{family}: TCP to the LB IP (DSR)"));
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([seen.clone()]),
        "{family}: DSR keeps the client's address"
    );
    let udp = c.client(
        &ext1,
        &["udp", &at(lb, 53), "--count", "5", "--timeout-ms", "2000"],
    );
    assert_all_ok(&c, &udp, &format!("{family}: UDP to the LB IP (DSR)"));
    for a in &udp {
        assert_eq!(a.from.as_deref(), Some(at(lb, 53).as_str()), "{}", a.raw);
        assert_eq!(echo(a).peer.ip().to_string(), seen, "{}", a.raw);
    }
    download_identical(
        &c,
        &ext1,
        &url_of(lb, 81, "/blob"),
        &want,
        &format!("{family}: DSR"),
    );
    let flows = flows_of(&c, "node1");
    assert!(
        flows.iter().any(|f| f.is_forward()
            && src_ip(f) == Some(ext1_ip(family))
            && f.nat_dst == family.ep(&b2, 8080)
            && f.dsr
            && !f.snat),
        "{family}: node1 tracks the DSR flow without SNAT: {flows:#?}"
    );
    let flows2 = flows_of(&c, "node2");
    assert!(
        flows2.iter().any(|f| f.dsr && !f.is_forward()),
        "{family}: node2 tracks the DSR flow's replies: {flows2:#?}"
    );
    println!(
        "node1 stats: {}\nnode2 stats: {}",
        c.stats("node1"),
        c.stats("node2")
    );
}

fn agent_restart_keeps_north_south_flows(family: Family) {
    require_root!();
    let c = cluster("agent_restart_keeps_north_south_flows", family);
    let (lb, lb2) = (family.pick(LB_IP), family.pick(LB_IP2));
    let ext1 = c.ext("ext1");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    // LB IP 1: its endpoint on node2 (SNAT through node1); LB IP 2: eTP Local on node1.
    let remote = web_ports(load_balancer("remote", CLUSTER_IP)).lb_ingress2(LB_IP);
    let mut local = web_ports(load_balancer("local", CLUSTER_IP2))
        .lb_ingress2(LB_IP2)
        .external_traffic_policy("Local")
        .health_check_node_port(HC_PORT);
    shift_node_ports(&mut local, 1);
    c.manifests().apply(&remote);
    c.manifests().apply(&local);
    apply_slices(&c, slices("remote", &[(&b2, "node2")]));
    apply_slices(&c, slices("local", &[(&b1, "node1")]));
    start(&c);
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b2]);
    c.route(&ext1, family.pick(LB_RANGES), "node1");
    first_answer(
        &c,
        &ext1,
        &at(lb, 80),
        &format!("{family}: ext1 -> LB via node1"),
    );
    let links_before = c.tc_links("node1");
    println!("node1 TC links (pin, link id, prog id): {links_before:?}");
    assert_eq!(links_before.len(), 2, "{links_before:?}");

    let held = c.spawn_interactive(
        &ext1,
        proc::lab_binary("lab-client"),
        &["tcp", &at(lb, 80), "--hold", "--timeout-ms", "3000"],
    );
    let first = held_first(&c, &held);
    let exchange = |what: &str| {
        held.send_line(what).expect("stdin of the held client");
        let a = held
            .next_line(Duration::from_secs(5))
            .and_then(|l| Attempt::parse(&l))
            .unwrap_or_else(|| {
                panic!(
                    "{family}: {what}: no reply on the held connection\n{}",
                    c.dump()
                )
            });
        assert!(a.ok, "{family}: {what}: {}\n{}", a.raw, c.dump());
        assert_eq!(
            echo(&a),
            echo(&first),
            "{what}: the same backend and SNAT source"
        );
    };
    // The health check as a load balancer of this family asks it.
    let hc = url_of(node_ip(&c, family, "node1"), HC_PORT as u16, "/");

    let stopped = c.stop_agent("node1");
    println!("node1's agent stopped: {stopped:?}");
    // The datapath stays in place: the held flow, new flows and the local service work.
    exchange("while the agent is down");
    let attempts = tcp(&c, &ext1, &at(lb, 80), 5);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: new connections while the agent is down"),
    );
    let attempts = tcp(&c, &ext1, &at(lb2, 80), 5);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: eTP Local while the agent is down"),
    );
    println!(
        "health check while the agent is down: {:?}",
        http_get(&c, &ext1, &hc)
    );

    let took = c.start_agent("node1", &ferry_tests::AgentOpts::default());
    report("agent restart on node1 -> /readyz 200", took);
    exchange("after the restart");
    let attempts = tcp(&c, &ext1, &at(lb, 80), 5);
    assert_all_ok(
        &c,
        &attempts,
        &format!("{family}: new connections after the restart"),
    );
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
        "{family}: the held flow is still tracked"
    );
    let got = poll(DEADLINE, Duration::from_millis(50), || {
        match http_get(&c, &ext1, &hc) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    match got {
        Ok((body, took)) => report(&format!("restart -> health check 200 {body}"), took),
        Err(e) => {
            panic!("{family}: the health check server at {hc} is back after the restart: {e}")
        }
    }
}

/// `--acceleration generic` (IPv4: ferry_xdp's fast path after the skb): see [`xdp_case`].
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn xdp_translates_lb_and_node_port() {
    require_root!();
    xdp_case("generic", Family::V4);
}

/// `--acceleration native` (ferry_xdp in the veth driver, before the skb): see [`xdp_case`].
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn xdp_native_translates_lb_and_node_port() {
    require_root!();
    xdp_case("native", Family::V4);
}

/// `--acceleration native` over IPv6 (xdp6.rs): see [`xdp_case`].
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn xdp_native_translates_lb_and_node_port_v6() {
    require_root!();
    xdp_case("native", Family::V6);
}

/// `--acceleration MODE` (ferry_xdp's fast path) over `family`: a client outside reaches a
/// LoadBalancer IP and a NodePort on node1 whose only endpoint is on node2, over TCP and UDP,
/// the backend sees node1's address (SNAT), and node1's `ns_xdp_forwarded` proves that XDP,
/// not TC, translated and sent the packets (both ways: the client's to node2 and node2's
/// replies to the client go back out of node1's eth0, redirected to the ingress device).
/// An externalTrafficPolicy Local LoadBalancer IP whose endpoint is on node1 keeps the
/// client's address with XDP attached: its pod is behind a device XDP does not send to (a
/// pod's veth), so XDP passes its packets and TC serves it; the byte-exact rows of
/// XDP's own eTP Local translation are tc_prog_test_run's (xdp.rs).
///
/// The lab's part for native mode, what a node whose device is a veth needs: a frame XDP
/// sends out of a veth goes to its peer's NAPI ring, which the peer has only with an XDP
/// program or GRO asked for (`wanted_features`: a GRO already on by default does not count,
/// so it is turned off and on). Without it the frames are dropped (node1's eth0 counts them
/// in `ethtool -S` `rx_queue_0_drops`, none reaches node2); the segment's side of each node's
/// eth0 (`v-node1`, `v-node2`) gets it. The agent warns about it when it attaches natively
/// to a veth.
fn xdp_case(mode: &str, family: Family) {
    let mode = mode.to_string();
    let c = cluster("xdp", family);
    for peer in ["v-node1", "v-node2"] {
        for gro in ["off", "on"] {
            netns::run(c.net_netns(), "ethtool", &["-K", peer, "gro", gro])
                .unwrap_or_else(|e| panic!("GRO {gro} on {peer}: {e:#}"));
        }
    }
    let lb = family.pick(LB_IP);
    let ext1 = c.ext("ext1");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    c.manifests()
        .apply(&web_ports(load_balancer("web", CLUSTER_IP)).lb_ingress2(LB_IP));
    apply_slices(&c, slices("web", &[(&b2, "node2")]));
    let lb_local = family.pick(LB_IP2);
    c.manifests().apply(
        &load_balancer("loc", CLUSTER_IP2)
            .port_to("http", 80, "TCP", 8080u16)
            .lb_ingress2(LB_IP2)
            .external_traffic_policy("Local"),
    );
    apply_slices(&c, slices("loc", &[(&b1, "node1")]));
    c.start_agents_with(&ferry_tests::agent::AgentOpts {
        extra_args: vec!["--acceleration".into(), mode.clone()],
        ..Default::default()
    });
    report(
        "agents ready -> TC programs on both eth0",
        c.wait_north_south(DEADLINE),
    );
    for node in ["node1", "node2"] {
        let log = c.agent_log(node);
        assert!(
            log.contains("program=\"ferry_xdp\"") && !log.contains("refused native XDP"),
            "{node}: ferry_xdp not attached ({mode}):\n{log}"
        );
        assert_eq!(
            log.contains("native XDP on a veth"),
            mode == "native",
            "{node}: the warning about the veth's peer is given in native mode only:\n{log}"
        );
    }
    // Pinned like the TC links (a restart adopts it, `ferry cleanup` removes it), named for
    // its mode.
    let infix = if mode == "native" { "xdpdrv" } else { "xdpskb" };
    let pin = c
        .node("node1")
        .pin_dir
        .join(format!("ferry_link_{infix}_eth0"));
    assert!(pin.exists(), "no pinned XDP link at {}", pin.display());
    wait_external(&c, family, "node1", lb, 80, Protocol::Tcp, &[&b2]);
    wait_external(&c, family, "node1", lb_local, 80, Protocol::Tcp, &[&b1]);
    let node1 = node_ip(&c, family, "node1");
    let xdp_forwarded = |c: &Cluster| {
        let v = c.stats("node1");
        v["counters"]["ns_xdp_forwarded"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter ns_xdp_forwarded in ferry stats: {v}"))
    };

    c.route(&ext1, family.pick(LB_RANGES), "node1");
    first_answer(
        &c,
        &ext1,
        &at(lb, 80),
        &format!("XDP {family}: ext1 -> LB via node1 -> b2"),
    );
    let before = xdp_forwarded(&c);
    for target in [at(lb, 80), at(node1, NODE_PORT as u16)] {
        let attempts = tcp(&c, &ext1, &target, 10);
        assert_all_ok(&c, &attempts, &format!("XDP {family}: TCP to {target}"));
        assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b2"]);
        assert_eq!(
            peers(&attempts),
            BTreeSet::from([node1.to_string()]),
            "XDP {family}: the backend sees node1's address (SNAT) through {target}"
        );
    }
    let udp = c.client(
        &ext1,
        &["udp", &at(lb, 53), "--count", "5", "--timeout-ms", "2000"],
    );
    assert_all_ok(&c, &udp, &format!("XDP {family}: UDP to the LB IP"));
    for a in &udp {
        assert_eq!(a.from.as_deref(), Some(at(lb, 53).as_str()), "{}", a.raw);
        assert_eq!(echo(a).peer.ip(), node1);
    }
    // 20 connections of at least 3 packets each way through node1, and 5 datagrams each way.
    let forwarded = xdp_forwarded(&c) - before;
    println!("node1 ({family}): ns_xdp_forwarded +{forwarded}");
    assert!(
        forwarded >= 20 * 6 + 5 * 2,
        "XDP forwarded only {forwarded} packets: TC did the work\n{}",
        c.dump()
    );

    // eTP Local, its endpoint on node1: the client's own address reaches the pod (served by
    // TC: XDP does not send into a pod's device).
    let attempts = tcp(&c, &ext1, &at(lb_local, 80), 5);
    assert_all_ok(
        &c,
        &attempts,
        &format!("XDP {family}: TCP to the eTP Local LB IP"),
    );
    assert_eq!(by_pod(&attempts).keys().collect::<Vec<_>>(), ["b1"]);
    assert_eq!(
        peers(&attempts),
        BTreeSet::from([ext1_ip(family).to_string()]),
        "XDP {family}: eTP Local keeps the client's address"
    );

    // A restarted agent swaps its program into the pinned link (same link, new program) and
    // the fast path goes on.
    let link_of = |pin: &std::path::Path| -> (u64, u64) {
        let out = proc::run(
            "bpftool",
            &["-j", "link", "show", "pinned", &pin.to_string_lossy()],
        )
        .unwrap_or_else(|e| panic!("bpftool link show pinned {}: {e:#}", pin.display()));
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap())
    };
    let (link, prog) = link_of(&pin);
    let opts = ferry_tests::agent::AgentOpts {
        extra_args: vec!["--acceleration".into(), mode.clone()],
        ..Default::default()
    };
    c.stop_agent("node1");
    c.start_agent("node1", &opts);
    poll(DEADLINE, Duration::from_millis(50), || {
        let now = link_of(&pin);
        if now.0 == link && now.1 != prog {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .unwrap_or_else(|e| {
        panic!("the restarted agent did not swap its program into link {link}: {e}")
    });
    let before = xdp_forwarded(&c);
    assert_all_ok(
        &c,
        &tcp(&c, &ext1, &at(lb, 80), 5),
        &format!("XDP {family}: TCP after a restart"),
    );
    assert!(
        xdp_forwarded(&c) - before >= 5 * 6,
        "no fast path after the restart"
    );

    // `ferry cleanup` removes the pin, which detaches the program.
    c.stop_agent("node1");
    let out = c.ferry(&[
        "cleanup",
        "--bpffs",
        &c.node("node1").pin_dir.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "ferry cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin.exists());
    let eth0 = netns::ip(&c.node("node1").netns, &["link", "show", "eth0"]).unwrap();
    assert!(
        !eth0.contains("prog/xdp"),
        "XDP still attached after cleanup: {eth0}"
    );
}
