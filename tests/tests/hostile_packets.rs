//! Hostile traffic against the north-south datapath, on the two-node lab (tests/src/cluster.rs):
//! spoofed SYNs on live flows, forged DSR options, floods of spoofed datagrams to a service
//! without endpoints, and a conntrack flood.
//!
//! The attacker is an external client (`ext2`) sending hand-built packets with `lab-raw` (a raw
//! socket, IP_HDRINCL): any source address, any IP option. Both external clients reach the pods
//! and everything else through node1 (their default route), as hosts behind a router would.
//! Victims are real connections of `lab-client` to real `lab-echo` servers. Every wait polls a
//! real condition with a deadline.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use agent_common::{Ct4Key, Ct4Value};
use ferry::model::{Protocol, Scope};
use ferry_tests::{
    Attempt, Cluster, Endpoint, EndpointSlice, Pod, Service,
    cluster::poll,
    proc::{self, Placement, Proc},
    require_root, services,
};
use serde_json::Value;

const CLUSTER_IP: &str = "10.96.0.10";
const NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;
const DEADLINE: Duration = Duration::from_secs(10);
/// An address no node, pod or client has.
const FORGED: &str = "6.6.6.6";

/// NodePort service `web`: http 80 -> 8080/TCP (nodePort 30080), dns 53 -> 5353/UDP (30053),
/// with these pods (and their nodes) as endpoints.
fn web(c: &Cluster, pods: &[(&Pod, &str)]) {
    web_with(c, pods, "Cluster");
}

/// The same with externalTrafficPolicy `policy`: Local keeps the client's address, so the
/// pod's flows carry the client's own tuple, which a spoofer can name.
fn web_with(c: &Cluster, pods: &[(&Pod, &str)], policy: &str) {
    let svc = Service::node_port_service("web", CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .node_port(i64::from(NODE_PORT))
        .port_to("dns", 53, "UDP", 5353u16)
        .node_port(i64::from(UDP_NODE_PORT))
        .external_traffic_policy(policy);
    c.manifests().apply(&svc);
    c.manifests().apply(
        &EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoints(pods.iter().map(|(p, n)| Endpoint::ready(p.ip).node(n))),
    );
}

/// Starts both agents (with `args`), waits for the TC programs and for node1's NodePort to
/// hold `backends` (ip:port of TCP 30080).
fn start(c: &Cluster, args: &[&str], backends: &[String]) {
    let opts = ferry_tests::AgentOpts {
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    c.start_agents_with(&opts);
    c.wait_north_south(DEADLINE);
    let node1 = c.node("node1").ip;
    let mut want = backends.to_vec();
    want.sort();
    c.wait_services(
        "node1",
        |v| {
            services::frontend_in(v, node1, NODE_PORT, Protocol::Tcp, Scope::External).is_some_and(
                |f| {
                    let mut got: Vec<String> = f.backends.iter().map(services::endpoint).collect();
                    got.sort();
                    got == want
                },
            )
        },
        DEADLINE,
    );
}

/// Both external clients reach everything through node1.
fn clients_behind_node1(c: &Cluster) -> (Pod, Pod) {
    let (ext1, ext2) = (c.ext("ext1"), c.ext("ext2"));
    for ext in [&ext1, &ext2] {
        c.route(ext, "default", "node1");
    }
    (ext1, ext2)
}

/// `lab-raw ARGS` in `from`: its JSON line.
fn raw(c: &Cluster, from: &Pod, args: &[&str]) -> Value {
    let out = c.output_timeout(
        from,
        proc::lab_binary("lab-raw"),
        args,
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lab-raw {args:?} in {}: {}\n{}",
        from.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("lab-raw printed no JSON ({e}): {text}"))
}

/// `n` held TCP connections from `from` to `target`, each past its first exchange, with the
/// local address ("ip:port") each one uses.
fn held_connections(c: &Cluster, from: &Pod, target: &str, n: usize) -> Vec<(Proc, String)> {
    (0..n)
        .map(|_| {
            let p = c.spawn_interactive(
                from,
                proc::lab_binary("lab-client"),
                &["tcp", target, "--hold", "--timeout-ms", "3000"],
            );
            let line = p
                .next_line(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("a held connection to {target}: no line\n{}", c.dump()));
            let a = Attempt::parse(&line).expect("a JSON line");
            assert!(
                a.ok,
                "a held connection to {target}: {}\n{}",
                a.raw,
                c.dump()
            );
            let v: Value = serde_json::from_str(&a.raw).unwrap();
            let local = v["local"].as_str().expect("the local address").to_owned();
            (p, local)
        })
        .collect()
}

/// One more exchange on each held connection: the ones that still answer.
fn survivors(held: &[(Proc, String)], what: &str) -> usize {
    held.iter()
        .filter(|(p, local)| {
            if p.send_line(what).is_err() {
                println!("{local}: the client is gone");
                return false;
            }
            match p
                .next_line(Duration::from_secs(3))
                .and_then(|l| Attempt::parse(&l))
            {
                Some(a) if a.ok => true,
                other => {
                    println!("{local}: {what}: {:?}", other.map(|a| a.raw));
                    false
                }
            }
        })
        .count()
}

/// GET /metrics of a node's agent (it listens on 127.0.0.1:10249 in the node's namespace).
fn metrics(c: &Cluster, node: &str) -> String {
    let ns = format!("--net={}", c.node(node).netns_path.display());
    let out = proc::output_placed(
        Command::new("nsenter").args([
            ns.as_str(),
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:10249/metrics",
        ]),
        &Placement::default(),
        Duration::from_secs(10),
    )
    .expect("running curl in the node's namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the first sample of `metric` whose line contains `label`.
fn sample(text: &str, metric: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(metric) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn counter(c: &Cluster, node: &str, name: &str) -> u64 {
    let v = c.stats(node);
    v["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in ferry stats: {v}"))
}

// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_spoofed_syn_does_not_reset_live_node_port_connections() {
    require_root!();
    let c = Cluster::new("a_spoofed_syn_does_not_reset_live_node_port_connections");
    let (ext1, ext2) = clients_behind_node1(&c);
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    web_with(&c, &[(&b1, "node1")], "Local");
    start(&c, &[], &[format!("{}:8080", b1.ip)]);
    let target = format!("{}:{NODE_PORT}", c.node("node1").ip);

    let held = held_connections(&c, &ext1, &target, 6);
    // The attacker knows each client's address and port, and sends one SYN per connection
    // straight to the pod, as the client.
    for (_, local) in &held {
        let r = raw(
            &c,
            &ext2,
            &["tcp", local, &format!("{}:8080", b1.ip), "--flags", "S"],
        );
        assert_eq!(r["sent"], 1, "{r}");
    }
    let alive = survivors(&held, "after the spoofed SYNs");
    println!(
        "{alive} of {} live NodePort connections survived",
        held.len()
    );
    println!("node1 stats: {}", c.stats("node1"));
    assert_eq!(
        alive,
        held.len(),
        "spoofed SYNs reset live connections\n{}",
        c.dump()
    );
    assert_eq!(counter(&c, "node1", "ns_ct_clash_drop"), held.len() as u64);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn forged_dsr_options_are_ignored_in_snat_mode() {
    require_root!();
    let c = Cluster::new("forged_dsr_options_are_ignored_in_snat_mode");
    let (ext1, ext2) = clients_behind_node1(&c);
    let b1 = c.add_pod_on("node1", "b1");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    web(&c, &[(&b1, "node1")]);
    start(&c, &[], &[format!("{}:8080", b1.ip)]);
    let node1 = c.node("node1").ip;

    // The attacker, from its own address, asks the pod to answer from a forged frontend.
    let me = format!("{}:41000", ext2.ip);
    let r = raw(
        &c,
        &ext2,
        &[
            "udp",
            &me,
            &format!("{}:5353", b1.ip),
            "--dsr-option",
            &format!("{FORGED}:{UDP_NODE_PORT}"),
            "--payload",
            "who are you",
            "--reply-ms",
            "3000",
        ],
    );
    println!("forged option {FORGED}:{UDP_NODE_PORT} -> pod: {r}");

    // One forged packet per live NodePort connection, as the client, naming a frontend.
    let held = held_connections(&c, &ext1, &format!("{node1}:{NODE_PORT}"), 4);
    for (i, (_, local)) in held.iter().enumerate() {
        let option = if i % 2 == 0 {
            format!("{FORGED}:{NODE_PORT}")
        } else {
            format!("{}:{NODE_PORT}", c.node("node2").ip)
        };
        raw(
            &c,
            &ext2,
            &[
                "tcp",
                local,
                &format!("{}:8080", b1.ip),
                "--flags",
                "A",
                "--dsr-option",
                &option,
            ],
        );
    }
    let alive = survivors(&held, "after the forged options");
    println!(
        "{alive} of {} live connections survived forged options",
        held.len()
    );
    assert_eq!(
        r["reply_from"],
        format!("{}:5353", b1.ip),
        "the pod answers from its own address, not a forged one\n{}",
        c.dump()
    );
    assert_eq!(
        alive,
        held.len(),
        "forged options broke live flows\n{}",
        c.dump()
    );
    println!("node1 stats: {}", c.stats("node1"));
    assert_eq!(counter(&c, "node1", "ns_dsr_received"), 0);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn forged_dsr_options_in_dsr_mode_name_only_real_frontends_and_break_no_flow() {
    require_root!();
    let c =
        Cluster::new("forged_dsr_options_in_dsr_mode_name_only_real_frontends_and_break_no_flow");
    let (ext1, ext2) = clients_behind_node1(&c);
    let b2 = c.add_pod_on("node2", "b2");
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    web(&c, &[(&b2, "node2")]);
    start(&c, &["--lb-mode", "dsr"], &[format!("{}:8080", b2.ip)]);
    let (node1, node2) = (c.node("node1").ip, c.node("node2").ip);

    // From its own address, the attacker names a forged frontend, then a real one.
    let ask = |port: u16, option: String| {
        let r = raw(
            &c,
            &ext2,
            &[
                "udp",
                &format!("{}:{port}", ext2.ip),
                &format!("{}:5353", b2.ip),
                "--dsr-option",
                &option,
                "--reply-ms",
                "3000",
            ],
        );
        println!("option {option} -> pod: {r}");
        r["reply_from"].as_str().unwrap_or("none").to_owned()
    };
    assert_eq!(
        ask(41001, format!("{FORGED}:{UDP_NODE_PORT}")),
        format!("{}:5353", b2.ip),
        "no answer from a forged address\n{}",
        c.dump()
    );
    // A NodePort of a cluster node does serve this pod: the answer comes from it, as it
    // would had the attacker sent its datagram there.
    assert_eq!(
        ask(41002, format!("{node1}:{UDP_NODE_PORT}")),
        format!("{node1}:{UDP_NODE_PORT}")
    );

    // Live DSR flows (ext1 -> node1's NodePort -> b2 on node2), then a forged SYN and a forged
    // ACK on each one's 5-tuple naming another real frontend of the pod.
    let held = held_connections(&c, &ext1, &format!("{node1}:{NODE_PORT}"), 4);
    for (_, local) in &held {
        for flags in ["S", "A"] {
            raw(
                &c,
                &ext2,
                &[
                    "tcp",
                    local,
                    &format!("{}:8080", b2.ip),
                    "--flags",
                    flags,
                    "--dsr-option",
                    &format!("{node2}:{NODE_PORT}"),
                ],
            );
        }
    }
    let alive = survivors(&held, "after the forged options");
    println!("{alive} of {} live DSR flows survived", held.len());
    println!("node2 stats: {}", c.stats("node2"));
    assert_eq!(
        alive,
        held.len(),
        "forged options broke DSR flows\n{}",
        c.dump()
    );
    assert_eq!(
        counter(&c, "node2", "ns_dsr_clash_drop"),
        2 * held.len() as u64
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn rejects_of_a_spoofed_flood_are_rate_limited() {
    require_root!();
    let c = Cluster::new("rejects_of_a_spoofed_flood_are_rate_limited");
    let (ext1, _) = clients_behind_node1(&c);
    // No endpoints: every datagram is answered with a port unreachable.
    web(&c, &[]);
    start(&c, &[], &[]);
    let node1 = c.node("node1").ip.to_string();
    let dst = format!("{node1}:{UDP_NODE_PORT}");

    // A real client is still refused at once.
    let a = c
        .client(&ext1, &["udp", &dst, "--connected", "--timeout-ms", "3000"])
        .remove(0);
    assert_eq!(a.error.as_deref(), Some("ECONNREFUSED"), "{}", a.raw);

    // 20,000 datagrams from 65,534 spoofed sources: the global budget (burst 50, 1000/s).
    let r = raw(
        &c,
        &ext1,
        &[
            "udp",
            "10.99.0.1:5000",
            &dst,
            "--src-net",
            "10.99.0.0/16",
            "--count",
            "20000",
            "--count-icmp-from",
            &node1,
            "--device",
            "eth0",
            "--quiet-ms",
            "1000",
        ],
    );
    println!("flood of 20,000 spoofed datagrams: {r}");
    assert_eq!(r["capture_drops"], 0, "the count is exact");
    let got = r["icmp_unreachable"].as_u64().unwrap();
    let window_ms = r["icmp_last_ms"].as_u64().unwrap();
    let budget = 50 + window_ms + 1;
    assert!(
        got >= 50,
        "the burst is answered: {got} port unreachables\n{}",
        c.dump()
    );
    assert!(
        got <= budget,
        "{got} port unreachables in {window_ms} ms: more than 50 + 1000/s ({budget})"
    );

    // 2,000 datagrams from one spoofed source: the per-source limit (burst 6, 1/s).
    let r = raw(
        &c,
        &ext1,
        &[
            "udp",
            "10.98.0.7:5000",
            &dst,
            "--count",
            "2000",
            "--count-icmp-from",
            &node1,
            "--device",
            "eth0",
            "--quiet-ms",
            "1000",
        ],
    );
    println!("2,000 datagrams from one source: {r}");
    assert_eq!(r["capture_drops"], 0, "the count is exact");
    let got = r["icmp_unreachable"].as_u64().unwrap();
    let window_s = r["icmp_last_ms"].as_u64().unwrap() / 1000;
    assert!(
        (1..=6 + window_s).contains(&got),
        "{got} port unreachables to one source in {window_s} s"
    );
    let stats = c.stats("node1");
    println!("node1 stats: {stats}");
    assert!(counter(&c, "node1", "ns_reject_limited") > 0);
    assert!(counter(&c, "node1", "ns_reject_limited_source") > 0);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_conntrack_flood_shows_in_metrics_and_lost_flows_come_back() {
    require_root!();
    let c = Cluster::new("a_conntrack_flood_shows_in_metrics_and_lost_flows_come_back");
    let (ext1, ext2) = clients_behind_node1(&c);
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node1", "b2");
    let _e1 = c.start_echo(&b1, &[8080], &[5353]);
    let _e2 = c.start_echo(&b2, &[8080], &[5353]);
    // Local: the lost flows are made again on the client's own tuple (a masqueraded flow's
    // new SNAT port would be news to its backend).
    web_with(&c, &[(&b1, "node1"), (&b2, "node1")], "Local");
    const CT_MAX: u32 = 4096;
    start(
        &c,
        &["--conntrack-max", &CT_MAX.to_string()],
        &[format!("{}:8080", b1.ip), format!("{}:8080", b2.ip)],
    );
    let target = format!("{}:{NODE_PORT}", c.node("node1").ip);
    let held = held_connections(&c, &ext1, &target, 4);

    // 20,000 SYNs from spoofed sources: 40,000 entries for a map of 4,096, in well under a
    // second. /metrics shows it at once (measured at scrape time).
    let flood = |count: u32| {
        raw(
            &c,
            &ext2,
            &[
                "tcp",
                "10.97.0.1:40000",
                &target,
                "--src-net",
                "10.97.0.0/16",
                "--src-ports",
                "1024-65535",
                "--count",
                &count.to_string(),
            ],
        )
    };
    let started = Instant::now();
    println!("SYN flood: {}", flood(20_000));
    let got = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let text = metrics(&c, "node1");
        let entries = sample(&text, "ferry_map_entries", "ferry_ct4_v1");
        let ratio = sample(&text, "ferry_map_fill_ratio", "ferry_ct4_v1");
        match (entries, ratio) {
            (Some(n), Some(r)) if r >= 0.9 => Ok((n, r)),
            other => Err(format!("ferry_ct4_v1 entries, fill ratio: {other:?}")),
        }
    });
    match got {
        Ok(((n, r), _)) => println!(
            "/metrics: ferry_ct4_v1 {n} entries, fill ratio {r}, {} ms after the flood began",
            started.elapsed().as_millis()
        ),
        Err(e) => panic!(
            "the flood is not visible in /metrics: {e}\n{}",
            metrics(&c, "node1")
        ),
    }

    // The agent measures the fill for the datapath and says so; from then on new flows are
    // counted as made in a full table.
    let said = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        if c.agent_log("node1").contains("conntrack map nearly full") {
            Ok(())
        } else {
            Err("no warning yet".to_owned())
        }
    });
    if let Err(e) = said {
        panic!("the agent did not warn: {e}\n{}", c.agent_log("node1"));
    }
    println!(
        "agent warned {} ms after the flood began",
        started.elapsed().as_millis()
    );
    flood(1_000);
    let full = counter(&c, "node1", "ns_new_flow_ct_full");
    assert!(full >= 1_000, "new flows in a full table: {full}");

    // Whatever the LRU evicted, the held connections' entries go now, as eviction would take
    // them: each one's next segment makes its flow again, on the backend it had.
    let gone = forget_flows_of(&c, "node1", ext1.ip);
    println!("removed {gone} entries of ext1's flows");
    let lost_before = counter(&c, "node1", "ns_ct_lost_flow");
    assert_eq!(survivors(&held, "after losing their entries"), held.len());
    let lost = counter(&c, "node1", "ns_ct_lost_flow") - lost_before;
    assert!(lost >= held.len() as u64, "lost flows counted: {lost}");
    println!("node1 stats: {}", c.stats("node1"));
}

/// Deletes every conntrack entry of node's map that has `client` as its source or destination
/// (what an LRU eviction does to a flow); returns how many.
fn forget_flows_of(c: &Cluster, node: &str, client: std::net::Ipv4Addr) -> usize {
    let pin = c.node(node).pin_dir.join(agent_common::maps::CT_V4);
    let data = aya::maps::MapData::from_pin(&pin).expect("the pinned conntrack map");
    let mut ct: aya::maps::HashMap<_, Ct4Key, Ct4Value> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let raw = agent_common::net::ip4_to_raw(client.octets());
    let keys: Vec<Ct4Key> = ct
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.saddr == raw || k.daddr == raw)
        .collect();
    for k in &keys {
        ct.remove(k).expect("removing a conntrack entry");
    }
    keys.len()
}
