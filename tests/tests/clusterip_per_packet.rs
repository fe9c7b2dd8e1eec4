//! The per-packet ClusterIP path (agent-ebpf/src/pod_lb.rs) against the real agent on the
//! two-node lab: a process in a pod's network namespace but outside the node's cgroup (where
//! the socket hooks are attached, so its connect()/sendmsg() are not translated) reaches
//! ClusterIPs over TCP and UDP, its packets DNATed on the ingress of its pod device
//! (`ferry_tc_pod`), the backends' replies given the ClusterIP back on its egress
//! (`ferry_tc_pod_out`): a backend on the client's node (host network), one on the other
//! node, the client pod itself (hairpin: masqueraded to its bridge's address, as kube-proxy
//! does), and a pod on the client's bridge (masqueraded likewise: its replies cross the bridge
//! alone, past every program, unless they are sent to the node). Both families, each Service dual-stack. A connected UDP socket to a
//! ClusterIP port whose backend does not listen gets the backend's port unreachable, translated
//! back to the ClusterIP (pod_lb.rs, icmp.rs: `ferry_tc_pod_out` for the host-network backend,
//! `ferry_tc_in` for the remote pod, `ferry_tc_pod` for the hairpin flow), as ECONNREFUSED at
//! once rather than a timeout.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Attempt, Cluster, Endpoint, EndpointSlice, Pod, Service, cgroup,
    client::parse_lines,
    cluster::poll,
    proc::{self, Placement},
    require_root, services,
};

const DEADLINE: Duration = Duration::from_secs(10);
/// ClusterIPs (IPv4, IPv6): served by node1 itself (host network, its bridge address), by a
/// pod on node2, and by the client pod itself (which also makes node1's bridge a pod device:
/// ferry puts its pod programs on the devices its local endpoints are reached through).
const LOCAL_VIP: [&str; 2] = ["10.96.0.20", "fd00:96::20"];
const REMOTE_VIP: [&str; 2] = ["10.96.0.21", "fd00:96::21"];
const ANCHOR_VIP: [&str; 2] = ["10.96.0.22", "fd00:96::22"];
/// Served by another pod on the client's bridge.
const NEIGHBOUR_VIP: [&str; 2] = ["10.96.0.24", "fd00:96::24"];
/// A ClusterIP without endpoints.
const EMPTY_VIP: [&str; 2] = ["10.96.0.23", "fd00:96::23"];

/// The families, as indices into the VIP pairs.
const V4: usize = 0;
const V6: usize = 1;

/// A pod's address of `family`.
fn addr(pod: &Pod, family: usize) -> IpAddr {
    if family == V6 {
        pod.ip6.into()
    } else {
        pod.ip.into()
    }
}

/// `ip:port` or `[ip6]:port`, as lab-client takes it and getpeername/recvfrom print it.
fn at(ip: impl Into<IpAddr>, port: u16) -> String {
    SocketAddr::new(ip.into(), port).to_string()
}

fn vip(pair: [&str; 2], family: usize) -> IpAddr {
    pair[family].parse().expect("the test's VIP")
}

/// The ClusterIP port (UDP) of every test Service whose target port no backend listens on.
const VOID_PORT: u16 = 54;
const VOID_TARGET: u16 = 5399;

/// A dual-stack ClusterIP Service `name` (`vips`): http 80 -> 8080/TCP, dns 53 -> 5353/UDP,
/// void [`VOID_PORT`] -> [`VOID_TARGET`]/UDP (no listener), its slices naming `ips` (IPv4,
/// IPv6) on `node`.
fn service(c: &Cluster, name: &str, vips: [&str; 2], ips: [IpAddr; 2], node: &str) {
    let svc = Service::dual_stack(name, "PreferDualStack", &vips)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16)
        .port_to("void", VOID_PORT as i64, "UDP", VOID_TARGET);
    c.manifests().apply(&svc);
    for (slice, ip) in [
        (EndpointSlice::new(&format!("{name}-v4"), name), ips[V4]),
        (EndpointSlice::ipv6(&format!("{name}-v6"), name), ips[V6]),
    ] {
        let slice = slice
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .port("void", VOID_TARGET, "UDP")
            .endpoints([Endpoint::ready(ip).node(node)]);
        c.manifests().apply(&slice);
    }
}

/// lab-client in `pod`'s network namespace, left in the test's own cgroup: outside the
/// node's, so no socket hook of ferry sees it.
fn outside_client(pod: &Pod, args: &[&str]) -> Vec<Attempt> {
    let mut cmd = Command::new(proc::lab_binary("lab-client"));
    cmd.args(args);
    let placement = Placement {
        netns: Some(pod.netns_path.clone()),
        cgroup: None,
    };
    let out = proc::output_placed(&mut cmd, &placement, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("lab-client {args:?} in {}: {e}", pod.name));
    let attempts = parse_lines(String::from_utf8_lossy(&out.stdout).lines());
    assert!(
        !attempts.is_empty(),
        "lab-client {args:?} printed nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    attempts
}

fn counter(c: &Cluster, node: &str, name: &str) -> u64 {
    c.stats(node)["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_pod_process_outside_the_cgroup_reaches_cluster_ips_per_packet() {
    require_root!();
    let c = Cluster::new("clusterip_per_packet");
    let node1 = c.node("node1").clone();
    // The test's own process is not in node1's cgroup, and the client inherits its cgroup.
    let own = cgroup::of_pid(std::process::id()).unwrap_or_default();
    let hooked = node1.cgroup.to_string_lossy().into_owned();
    assert!(
        !hooked.ends_with(&own) || own.is_empty() || own == "/",
        "the test runs inside the hooked cgroup {hooked}"
    );
    let client = c.add_pod_on("node1", "client");
    let b2 = c.add_pod_on("node2", "b2");
    let b1 = c.add_pod_on("node1", "b1");
    let host1 = node1.host();
    let _e1 = c.start_echo(&host1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let _ea = c.start_echo(&client, &[8080], &[5353]);
    let _e3 = c.start_echo(&b1, &[8080], &[5353]);
    // node1's bridge addresses: the host-network server's UDP replies (from a wildcard-bound
    // socket) leave with the source the route to the client gives, which must be the
    // address the flow was DNATed to; and the address a hairpin flow is masqueraded to.
    let gateway: [IpAddr; 2] = [node1.gateway.into(), node1.gateway6.into()];
    service(&c, "local", LOCAL_VIP, gateway, "node1");
    service(
        &c,
        "remote",
        REMOTE_VIP,
        [b2.ip.into(), b2.ip6.into()],
        "node2",
    );
    service(
        &c,
        "anchor",
        ANCHOR_VIP,
        [client.ip.into(), client.ip6.into()],
        "node1",
    );
    service(
        &c,
        "neighbour",
        NEIGHBOUR_VIP,
        [b1.ip.into(), b1.ip6.into()],
        "node1",
    );
    c.manifests().apply(
        &Service::dual_stack("empty", "PreferDualStack", &EMPTY_VIP)
            .port_to("http", 80, "TCP", 8080u16),
    );
    c.start_agents();
    c.wait_north_south(DEADLINE);
    for family in [V4, V6] {
        for (vips, ip) in [
            (LOCAL_VIP, gateway[family]),
            (REMOTE_VIP, addr(&b2, family)),
            (ANCHOR_VIP, addr(&client, family)),
            (NEIGHBOUR_VIP, addr(&b1, family)),
        ] {
            let (ep, void) = (at(ip, 8080), at(ip, VOID_TARGET));
            c.wait_services(
                "node1",
                |v| {
                    services::active_is(v, vip(vips, family), 80, Protocol::Tcp, &[ep.as_str()])
                        && services::active_is(
                            v,
                            vip(vips, family),
                            VOID_PORT,
                            Protocol::Udp,
                            &[void.as_str()],
                        )
                },
                DEADLINE,
            );
        }
    }

    for family in [V4, V6] {
        let me = addr(&client, family);
        for (vips, who, seen) in [
            // DNAT only: the backend sees the client pod's own address.
            (LOCAL_VIP, host1.name.as_str(), me),
            (REMOTE_VIP, "b2", me),
            // Hairpin: the pod reaches itself from its bridge's address.
            (ANCHOR_VIP, "client", gateway[family]),
            // Same bridge: masqueraded as hairpin is, so that its replies come to the node.
            (NEIGHBOUR_VIP, "b1", gateway[family]),
        ] {
            let vip = vip(vips, family);
            let target = at(vip, 80);
            // The pod programs reach node1's bridge with its first local endpoint: poll.
            first_answer(&c, &target, |args| outside_client(&client, args));
            let new_before = counter(&c, "node1", "pod_new_flow");
            let tcp = outside_client(
                &client,
                &["tcp", &target, "--count", "5", "--timeout-ms", "3000"],
            );
            for a in &tcp {
                assert!(a.ok, "{target}: {}", a.raw);
                // getpeername shows the ClusterIP: the replies came from it.
                assert_eq!(a.peer.as_deref(), Some(target.as_str()), "{}", a.raw);
                let echo = a.echo_any().unwrap_or_else(|| panic!("no echo: {}", a.raw));
                assert_eq!(echo.pod, who, "{}", a.raw);
                assert_eq!(echo.peer.ip(), seen, "{}", a.raw);
            }
            let udp_target = at(vip, 53);
            let udp = outside_client(&client, &["udp", &udp_target, "--count", "3"]);
            for a in &udp {
                assert!(a.ok, "{udp_target}: {}", a.raw);
                // An unconnected socket's recvfrom: the reply's source is the ClusterIP:port.
                assert_eq!(a.from.as_deref(), Some(udp_target.as_str()), "{}", a.raw);
                assert_eq!(a.pod().as_deref(), Some(who), "{}", a.raw);
            }
            let new_flows = counter(&c, "node1", "pod_new_flow") - new_before;
            println!("{target}: pod_new_flow +{new_flows}");
            // 5 connections and one UDP flow (one socket, one 5-tuple).
            assert!(new_flows >= 6, "{target}: pod_new_flow +{new_flows}");
        }

        // No endpoints: refused at once (an ICMP port unreachable), not left to time out.
        let empty = at(vip(EMPTY_VIP, family), 80);
        let refused = outside_client(&client, &["tcp", &empty, "--timeout-ms", "3000"]);
        let a = &refused[0];
        assert!(!a.ok, "{}", a.raw);
        assert_eq!(a.error.as_deref(), Some("ECONNREFUSED"), "{}", a.raw);
        // The port unreachable comes back within connect() itself here (veth delivers in
        // the sender's softirq), while the socket is locked: the kernel sets only a soft
        // error (TcpExtLockDroppedIcmps). IPv4's refusal still comes at once; IPv6's at the
        // SYN's first retransmission (1 s), which the second unreachable answers.
        let within = if family == V6 { 1500 } else { 1000 };
        assert!(
            a.elapsed_ms < within,
            "{empty}: refused after {} ms",
            a.elapsed_ms
        );

        // A backend without a listener on the target port: its port unreachable must reach
        // the connected socket quoting the ClusterIP it sent to, else the kernel matches no
        // socket and recv() waits out its (long) timeout.
        for (vips, backend) in [
            (LOCAL_VIP, "the host-network backend"),
            (REMOTE_VIP, "the remote pod"),
            (ANCHOR_VIP, "the client itself (hairpin)"),
            (NEIGHBOUR_VIP, "a pod on the client's bridge"),
        ] {
            let target = at(vip(vips, family), VOID_PORT);
            let translated = counter(&c, "node1", "ns_icmp_translated");
            let udp = outside_client(
                &client,
                &["udp", &target, "--connected", "--timeout-ms", "10000"],
            );
            let a = &udp[0];
            assert!(!a.ok, "{target} ({backend}): {}", a.raw);
            assert_eq!(
                (a.stage.as_deref(), a.error.as_deref()),
                (Some("recv"), Some("ECONNREFUSED")),
                "{target} ({backend}): want a refusal on recv, not a timeout: {}",
                a.raw
            );
            assert!(
                a.elapsed_ms < 2000,
                "{target} ({backend}): refused after {} ms",
                a.elapsed_ms
            );
            let translated = counter(&c, "node1", "ns_icmp_translated") - translated;
            println!(
                "{target} ({backend}): refused after {} ms, ns_icmp_translated +{translated}",
                a.elapsed_ms
            );
            assert!(
                translated >= 1,
                "{target} ({backend}): ns_icmp_translated +{translated}"
            );
        }
    }
    // The backends' replies were translated on the client's device (the hairpin ones come
    // back through ferry_tc_pod instead).
    assert!(counter(&c, "node1", "pod_rev_nat") >= 2 * 2 * (5 * 2 + 3));

    // A process in the cgroup is still served by the socket layer: no per-packet flow.
    for family in [V4, V6] {
        let new_before = counter(&c, "node1", "pod_new_flow");
        let inside = c.client(
            &client,
            &["tcp", &at(vip(REMOTE_VIP, family), 80), "--count", "3"],
        );
        assert!(inside.iter().all(|a| a.ok), "{inside:#?}");
        assert_eq!(counter(&c, "node1", "pod_new_flow"), new_before);
    }
}

/// Polls until `target` answers a TCP attempt of `run`.
fn first_answer(c: &Cluster, target: &str, mut run: impl FnMut(&[&str]) -> Vec<Attempt>) {
    let first = poll(DEADLINE, Duration::from_millis(100), || {
        let a = run(&["tcp", target, "--timeout-ms", "1000"]).remove(0);
        if a.ok { Ok(a) } else { Err(a.raw) }
    });
    if let Err(e) = first {
        panic!("{target}: never answered: {e}\n{}", c.dump());
    }
}

/// `--socket-lb-host-netns-only`: a pod's process in the hooked cgroup is left to the
/// per-packet path (its connect() untranslated, pod_new_flow counts it), a process of the
/// node's own namespace is still translated by the socket layer.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn socket_lb_host_netns_only_leaves_pods_to_the_per_packet_path() {
    require_root!();
    let c = Cluster::new("socket_lb_host_netns_only");
    let node1 = c.node("node1").clone();
    let client = c.add_pod_on("node1", "client");
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    service(
        &c,
        "remote",
        REMOTE_VIP,
        [b2.ip.into(), b2.ip6.into()],
        "node2",
    );
    service(
        &c,
        "anchor",
        ANCHOR_VIP,
        [client.ip.into(), client.ip6.into()],
        "node1",
    );
    c.start_agents_with(&AgentOpts {
        extra_args: vec!["--socket-lb-host-netns-only".into()],
        ..AgentOpts::default()
    });
    c.wait_north_south(DEADLINE);
    for family in [V4, V6] {
        let ep = at(addr(&b2, family), 8080);
        c.wait_services(
            "node1",
            |v| {
                services::active_is(
                    v,
                    vip(REMOTE_VIP, family),
                    80,
                    Protocol::Tcp,
                    &[ep.as_str()],
                )
            },
            DEADLINE,
        );
    }

    // The pod's process, in node1's cgroup (lab-client through the lab, as every pod's), over
    // each family.
    let connects = counter(&c, "node1", "connect_translated");
    for family in [V4, V6] {
        let target = at(vip(REMOTE_VIP, family), 80);
        first_answer(&c, &target, |args| c.client(&client, args));
        let new_flows = counter(&c, "node1", "pod_new_flow");
        let tcp = c.client(
            &client,
            &["tcp", &target, "--count", "4", "--timeout-ms", "3000"],
        );
        for a in &tcp {
            assert!(a.ok, "{}", a.raw);
            assert_eq!(a.peer.as_deref(), Some(target.as_str()), "{}", a.raw);
            assert_eq!(a.pod().as_deref(), Some("b2"), "{}", a.raw);
        }
        let udp_target = at(vip(REMOTE_VIP, family), 53);
        let udp = c.client(&client, &["udp", &udp_target, "--count", "2"]);
        for a in &udp {
            assert!(a.ok, "{}", a.raw);
            assert_eq!(a.from.as_deref(), Some(udp_target.as_str()), "{}", a.raw);
        }
        let pod_flows = counter(&c, "node1", "pod_new_flow") - new_flows;
        println!("pod in the cgroup, {target}: pod_new_flow +{pod_flows}");
        assert!(pod_flows >= 5, "{target}: pod_new_flow +{pod_flows}");
    }
    assert_eq!(
        counter(&c, "node1", "connect_translated"),
        connects,
        "a pod's connect() was translated by the socket layer"
    );
    let target = at(vip(REMOTE_VIP, V4), 80);

    // The node's own process (host network, in the same cgroup): the socket layer.
    let host = node1.host();
    let new_flows = counter(&c, "node1", "pod_new_flow");
    let tcp = c.client(
        &host,
        &["tcp", &target, "--count", "3", "--timeout-ms", "3000"],
    );
    for a in &tcp {
        assert!(a.ok, "{}", a.raw);
        assert_eq!(a.peer.as_deref(), Some(target.as_str()), "{}", a.raw);
    }
    let host_connects = counter(&c, "node1", "connect_translated") - connects;
    println!("host process: connect_translated +{host_connects}");
    assert!(host_connects >= 3, "connect_translated +{host_connects}");
    assert_eq!(counter(&c, "node1", "pod_new_flow"), new_flows);
}
