//! The per-packet ClusterIP path (agent-ebpf/src/pod_lb.rs) against the real agent on the
//! two-node lab: a process in a pod's network namespace but outside the node's cgroup (where
//! the socket hooks are attached, so its connect()/sendmsg() are not translated) reaches
//! ClusterIPs over TCP and UDP, its packets DNATed on the ingress of its pod device
//! (`ferry_tc_pod`), the backends' replies given the ClusterIP back on its egress
//! (`ferry_tc_pod_out`): a backend on the client's node (host network) and one on the other
//! node. IPv4 (the path's only family so far).

mod common;

use std::{process::Command, time::Duration};

use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Attempt, Cluster, Endpoint, EndpointSlice, Pod, Service, cgroup,
    client::parse_lines,
    cluster::poll,
    proc::{self, Placement},
    require_root, services,
};

const DEADLINE: Duration = Duration::from_secs(10);
/// ClusterIPs: served by node1 itself (host network, its bridge address), by a pod on node2, and one
/// whose endpoint is the client pod (which makes node1's bridge a pod device: ferry puts its
/// pod programs on the devices its local endpoints are reached through).
const LOCAL_VIP: &str = "10.96.0.20";
const REMOTE_VIP: &str = "10.96.0.21";
const ANCHOR_VIP: &str = "10.96.0.22";
/// A ClusterIP without endpoints.
const EMPTY_VIP: &str = "10.96.0.23";

/// A ClusterIP Service `name` (`vip`): http 80 -> 8080/TCP, dns 53 -> 5353/UDP, its slice
/// naming `ip` on `node`.
fn service(c: &Cluster, name: &str, vip: &str, ip: impl ToString, node: &str) {
    let svc = Service::cluster_ip(name, vip)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16);
    let slice = EndpointSlice::new(&format!("{name}-1"), name)
        .port("http", 8080, "TCP")
        .port("dns", 5353, "UDP")
        .endpoints([Endpoint::ready(ip).node(node)]);
    c.manifests().apply(&svc);
    c.manifests().apply(&slice);
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
    let host1 = node1.host();
    let _e1 = c.start_echo(&host1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    let _ea = c.start_echo(&client, &[8080], &[5353]);
    // Its bridge address: the host-network server's UDP replies (from a wildcard-bound
    // socket) leave with the source the route to the client gives, which must be the
    // address the flow was DNATed to.
    service(&c, "local", LOCAL_VIP, node1.gateway, "node1");
    service(&c, "remote", REMOTE_VIP, b2.ip, "node2");
    service(&c, "anchor", ANCHOR_VIP, client.ip, "node1");
    c.manifests()
        .apply(&Service::cluster_ip("empty", EMPTY_VIP).port_to("http", 80, "TCP", 8080u16));
    c.start_agents();
    c.wait_north_south(DEADLINE);
    for (vip, ep) in [
        (LOCAL_VIP, format!("{}:8080", node1.gateway)),
        (REMOTE_VIP, format!("{}:8080", b2.ip)),
    ] {
        c.wait_services(
            "node1",
            |v| services::active_is(v, vip, 80, Protocol::Tcp, &[ep.as_str()]),
            DEADLINE,
        );
    }

    for (vip, who) in [(LOCAL_VIP, host1.name.as_str()), (REMOTE_VIP, "b2")] {
        let target = format!("{vip}:80");
        // The pod programs reach node1's bridge with its first local endpoint: poll.
        first_answer(&c, &target, |args| outside_client(&client, args));
        let new_before = counter(&c, "node1", "pod_new_flow");
        let rev_before = counter(&c, "node1", "pod_rev_nat");
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
            // DNAT only: the backend sees the client pod's own address.
            assert_eq!(
                echo.peer.ip().to_string(),
                client.ip.to_string(),
                "{}",
                a.raw
            );
        }
        let udp_target = format!("{vip}:53");
        let udp = outside_client(&client, &["udp", &udp_target, "--count", "3"]);
        for a in &udp {
            assert!(a.ok, "{udp_target}: {}", a.raw);
            // An unconnected socket's recvfrom: the reply's source is the ClusterIP:port.
            assert_eq!(a.from.as_deref(), Some(udp_target.as_str()), "{}", a.raw);
            assert_eq!(a.pod().as_deref(), Some(who), "{}", a.raw);
        }
        let new_flows = counter(&c, "node1", "pod_new_flow") - new_before;
        let revs = counter(&c, "node1", "pod_rev_nat") - rev_before;
        println!("{target}: pod_new_flow +{new_flows}, pod_rev_nat +{revs}");
        // 5 connections and one UDP flow (one socket, one 5-tuple).
        assert!(new_flows >= 6, "pod_new_flow +{new_flows}");
        assert!(revs >= 5 * 2 + 3, "pod_rev_nat +{revs}");
    }

    // No endpoints: refused at once (an ICMP port unreachable), not left to time out.
    let refused = outside_client(
        &client,
        &["tcp", &format!("{EMPTY_VIP}:80"), "--timeout-ms", "3000"],
    );
    let a = &refused[0];
    assert!(!a.ok, "{}", a.raw);
    assert_eq!(a.error.as_deref(), Some("ECONNREFUSED"), "{}", a.raw);
    assert!(a.elapsed_ms < 1000, "refused after {} ms", a.elapsed_ms);

    // A process in the cgroup is still served by the socket layer: no per-packet flow.
    let new_before = counter(&c, "node1", "pod_new_flow");
    let inside = c.client(
        &client,
        &["tcp", &format!("{REMOTE_VIP}:80"), "--count", "3"],
    );
    assert!(inside.iter().all(|a| a.ok), "{inside:#?}");
    assert_eq!(counter(&c, "node1", "pod_new_flow"), new_before);
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
    service(&c, "remote", REMOTE_VIP, b2.ip, "node2");
    service(&c, "anchor", ANCHOR_VIP, client.ip, "node1");
    c.start_agents_with(&AgentOpts {
        extra_args: vec!["--socket-lb-host-netns-only".into()],
        ..AgentOpts::default()
    });
    c.wait_north_south(DEADLINE);
    let ep = format!("{}:8080", b2.ip);
    c.wait_services(
        "node1",
        |v| services::active_is(v, REMOTE_VIP, 80, Protocol::Tcp, &[ep.as_str()]),
        DEADLINE,
    );
    let target = format!("{REMOTE_VIP}:80");

    // The pod's process, in node1's cgroup (lab-client through the lab, as every pod's).
    first_answer(&c, &target, |args| c.client(&client, args));
    let connects = counter(&c, "node1", "connect_translated");
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
    let udp_target = format!("{REMOTE_VIP}:53");
    let udp = c.client(&client, &["udp", &udp_target, "--count", "2"]);
    for a in &udp {
        assert!(a.ok, "{}", a.raw);
        assert_eq!(a.from.as_deref(), Some(udp_target.as_str()), "{}", a.raw);
    }
    let pod_flows = counter(&c, "node1", "pod_new_flow") - new_flows;
    println!("pod in the cgroup: pod_new_flow +{pod_flows}");
    assert!(pod_flows >= 5, "pod_new_flow +{pod_flows}");
    assert_eq!(
        counter(&c, "node1", "connect_translated"),
        connects,
        "a pod's connect() was translated by the socket layer"
    );

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
