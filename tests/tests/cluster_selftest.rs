//! The two-node lab itself: routing between the external clients, the nodes and the pods with
//! plain IP (no service addresses), the agents' start on each node with their node's view,
//! the nodes' cgroups, checksum offload, and nothing left behind.

use std::time::Duration;

use ferry::model::Protocol;
use ferry_tests::{
    Cluster, EchoReply, Endpoint, EndpointSlice, Service, cgroup, cleanup,
    cluster::{EXT1_IP, LB_RANGE},
    require_root, services,
};

fn echo_peer(body: &str) -> EchoReply {
    EchoReply::parse(body).unwrap_or_else(|| panic!("not an echo reply: {body:?}"))
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn cluster_selftest() {
    require_root!();
    let id;
    {
        let c = Cluster::new("cluster_selftest");
        id = c.id().to_owned();
        let ext1 = c.ext("ext1");
        let ext2 = c.ext("ext2");
        let (n1, n2) = (c.node("node1").clone(), c.node("node2").clone());
        let a = c.add_pod_on("node1", "a");
        let b = c.add_pod_on("node2", "b");
        assert_eq!(a.ip.to_string(), "10.244.1.2");
        assert_eq!(b.ip.to_string(), "10.244.2.2");
        let _ea = c.start_echo(&a, &[8080], &[5353]);
        let _eb = c.start_echo(&b, &[8080], &[]);

        // Pods run in their node's cgroup, external clients in the lab cgroup.
        let cg2 = cgroup::cgroup2_mount().expect("cgroup2");
        let rel = |p: &std::path::Path| format!("/{}", p.strip_prefix(&cg2).unwrap().display());
        for (pod, cg) in [(&a, &n1.cgroup), (&b, &n2.cgroup)] {
            let out = c.output(pod, "cat", &["/proc/self/cgroup"]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.lines().any(|l| l == format!("0::{}", rel(cg))),
                "{} runs in {}: {text}",
                pod.name,
                cg.display()
            );
        }
        let out = c.output(&ext1, "cat", &["/proc/self/cgroup"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l == format!("0::{}", rel(c.cgroup()))),
            "ext1 runs in the lab cgroup: {text}"
        );

        // Pod to pod across the nodes (static routes), no NAT.
        let body = c
            .curl(&a, &format!("http://{}:8080/", b.ip))
            .expect("a -> b across the nodes");
        assert_eq!(echo_peer(&body).peer.ip(), &a.ip);

        // An external client reaches a pod through a node once it routes the pod CIDR there;
        // the pod sees the client's own address.
        c.route(&ext1, "10.244.0.0/16", "node1");
        for pod in [&a, &b] {
            let body = c
                .curl(&ext1, &format!("http://{}:8080/", pod.ip))
                .unwrap_or_else(|e| panic!("ext1 -> {} through node1: {e}", pod.name));
            let reply = echo_peer(&body);
            assert_eq!(
                (reply.pod.as_str(), *reply.peer.ip()),
                (pod.name.as_str(), EXT1_IP)
            );
        }
        let udp = c.udp(&ext1, &format!("{}:5353", a.ip), 3);
        assert!(udp.iter().all(|x| x.ok), "{udp:?}");
        // Through node2 as well (node2 -> node1 -> a; a answers through node1 directly).
        c.route(&ext2, "10.244.0.0/16", "node2");
        let body = c
            .curl(&ext2, &format!("http://{}:8080/", a.ip))
            .expect("ext2 -> a through node2 and node1");
        assert_eq!(echo_peer(&body).pod, "a");
        // The node itself (hostNetwork) reaches the clients and the other node's pods.
        let _e1 = c.start_echo(&ext1, &[9000], &[]);
        let host1 = n1.host();
        for url in [
            format!("http://{EXT1_IP}:9000/"),
            format!("http://{}:8080/", b.ip),
        ] {
            let body = c.curl(&host1, &url).expect("from node1");
            assert_eq!(echo_peer(&body).peer.ip(), &n1.ip, "{url}");
        }

        // Checksum offload is off on every veth end.
        let mut ends: Vec<(String, String)> = vec![
            (ext1.netns.clone(), "eth0".into()),
            (a.netns.clone(), "eth0".into()),
            (n1.netns.clone(), "eth0".into()),
            (n1.netns.clone(), "veth1".into()),
            (n2.netns.clone(), "veth1".into()),
        ];
        for peer in ["v-node1", "v-node2", "v-ext1", "v-ext2"] {
            ends.push((c.net_netns().to_owned(), peer.into()));
        }
        for (ns, dev) in &ends {
            let text = ferry_tests::netns::run(ns, "ethtool", &["-k", dev]).expect("ethtool -k");
            assert!(
                text.contains("tx-checksumming: off"),
                "{dev} in {ns}: {text}"
            );
        }
        // Forwarding on, reverse path filtering off on the nodes.
        for node in [&n1, &n2] {
            let text = ferry_tests::netns::run(
                &node.netns,
                "sysctl",
                &[
                    "-n",
                    "net.ipv4.ip_forward",
                    "net.ipv4.conf.all.rp_filter",
                    "net.ipv4.conf.eth0.rp_filter",
                ],
            )
            .expect("sysctl");
            assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["1", "0", "0"]);
        }

        // Both agents read the same manifests; each programs the NodePort on its own address.
        let svc = Service::load_balancer("web", "10.96.0.10")
            .port_to("http", 80, "TCP", 8080u16)
            .node_port(30080)
            .lb_ingress("192.0.2.10")
            .external_ip("198.51.100.10");
        let slice = EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::ready(a.ip).node("node1"))
            .endpoint(Endpoint::ready(b.ip).node("node2"));
        c.manifests().apply(&svc);
        c.manifests().apply(&slice);
        c.start_agents();
        let both = [format!("{}:8080", a.ip), format!("{}:8080", b.ip)];
        let both: Vec<&str> = both.iter().map(String::as_str).collect();
        for node in [&n1, &n2] {
            let other = if node.name == "node1" { &n2 } else { &n1 };
            let took = c.wait_services(
                &node.name,
                |v| {
                    services::active_is(v, node.ip, 30080, Protocol::Tcp, &both)
                        && services::active_is(v, "192.0.2.10", 80, Protocol::Tcp, &both)
                        && services::active_is(v, "198.51.100.10", 80, Protocol::Tcp, &both)
                        && services::active_is(v, "10.96.0.10", 80, Protocol::Tcp, &both)
                },
                Duration::from_secs(5),
            );
            println!(
                "latency: {}: frontends visible: {} ms",
                node.name,
                took.as_millis()
            );
            let v = c.services(&node.name);
            let has_flag = |ip: &str, port, flag: &str| {
                services::frontend(&v, ip, port, Protocol::Tcp)
                    .is_some_and(|f| f.flags.iter().any(|x| x == flag))
            };
            assert!(has_flag(&node.ip.to_string(), 30080, "NodePort"), "{v:?}");
            assert!(has_flag("192.0.2.10", 80, "LoadBalancer"), "{v:?}");
            assert!(has_flag("198.51.100.10", 80, "ExternalIP"), "{v:?}");
            assert!(
                services::frontend(&v, other.ip, 30080, Protocol::Tcp).is_none(),
                "{} has no NodePort on {}'s address: {v:?}",
                node.name,
                other.name
            );
            println!("{}:\n{}", node.name, c.services_table(&node.name));
        }
        // ClusterIP through each node's socket layer (its own cgroup) to the other node's pod.
        let c1 = c.add_pod_on("node1", "c1");
        let attempts = c.tcp(&c1, "10.96.0.10:80", 20);
        assert!(attempts.iter().all(|x| x.ok), "{attempts:?}");
        let pods: std::collections::BTreeSet<String> =
            attempts.iter().filter_map(|x| x.pod()).collect();
        assert_eq!(pods.into_iter().collect::<Vec<_>>(), ["a", "b"]);

        // With the agents running (and their TC programs on eth0, if this build has them),
        // traffic to no service address still passes untouched.
        let attached: Vec<bool> = [&n1, &n2].iter().map(|n| c.tc_attached(&n.name)).collect();
        println!("TC programs attached on node1, node2: {attached:?}");
        for pod in [&a, &b] {
            let body = c
                .curl(&ext1, &format!("http://{}:8080/", pod.ip))
                .unwrap_or_else(|e| panic!("ext1 -> {} with the agents running: {e}", pod.name));
            assert_eq!(*echo_peer(&body).peer.ip(), EXT1_IP);
        }
        println!("the tests route {LB_RANGE} (load balancer IPs) per test");
    }
    let left = cleanup::leftovers(&id);
    assert!(left.is_empty(), "the cluster left behind: {left:?}");
}

/// PIDs of processes whose command line mentions the lab (its agents, its servers).
fn processes_of(id: &str) -> Vec<u32> {
    let needle = format!("ferry-lab-{id}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_panicking_cluster_test_leaves_nothing() {
    require_root!();
    let id = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let c = Cluster::new("a_panicking_cluster_test_leaves_nothing");
        *id.lock().unwrap() = c.id().to_owned();
        let a = c.add_pod_on("node1", "a");
        let _echo = c.start_echo(&a, &[8080], &[]);
        c.add_routed_client("far", 1280, "node1");
        c.start_agents();
        assert!(
            !processes_of(c.id()).is_empty(),
            "the agents mention the lab"
        );
        panic!("a deliberate failure inside a cluster");
    });
    assert!(result.is_err());
    let id = id.into_inner().unwrap();
    assert_eq!(id.len(), 6);
    let left = cleanup::leftovers(&id);
    assert!(left.is_empty(), "the cluster left behind: {left:?}");
    assert_eq!(
        processes_of(&id),
        Vec::<u32>::new(),
        "no process of the lab survives"
    );
}
