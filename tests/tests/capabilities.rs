//! The DaemonSet's capabilities (deploy/base/daemonset.yaml: BPF, NET_ADMIN, PERFMON), checked by
//! running the agent as root with exactly that set, and with each one missing: it must work
//! with the three, say what the kernel refused without one, and it needs neither SYS_ADMIN
//! nor SYS_RESOURCE, except for one thing: destroying the connected UDP sockets of pods
//! (in their own network namespaces) takes SYS_ADMIN and SYS_PTRACE as well.

mod common;

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Endpoint, EndpointSlice, Lab, Node, Service, flood,
    lab::{GATEWAY, NODE_NAME},
    proc, require_root,
};

const VIP: &str = "10.96.0.10";
const DNS_VIP: &str = "10.96.0.53";
const HC_PORT: u16 = 32000;
/// The DaemonSet's set, as setpriv names them.
const DAEMONSET: [&str; 3] = ["bpf", "net_admin", "perfmon"];

/// Runs the agent as root with only `caps` in its bounding set (so in its permitted and
/// effective sets), with a soft descriptor limit of 1,024.
fn with_caps(caps: &[&str]) -> AgentOpts {
    let (_, hard) = flood::nofile_of(std::process::id()).expect("own limits");
    let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
    AgentOpts {
        wrapper: vec![
            "setpriv".into(),
            "--inh-caps=-all".into(),
            format!("--bounding-set=-all{keep}"),
            "prlimit".into(),
            format!("--nofile=1024:{hard}"),
        ],
        ..Default::default()
    }
}

/// CapEff of a process.
fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_agent_runs_with_exactly_the_daemonsets_capabilities() {
    require_root!();
    let lab = Lab::new("the_agent_runs_with_exactly_the_daemonsets_capabilities");
    let b1 = lab.add_pod("b1");
    let client = lab.add_pod("client");
    let _e1 = lab.start_echo(&b1, &[8080], &[]);
    let (web, slice) = simple("web", VIP, 80, 8080, &[&b1]);
    lab.manifests().apply(&web);
    lab.manifests().apply(&slice);
    lab.manifests().apply(
        &Service::load_balancer("lb", "10.96.0.20")
            .port_to("http", 80, "TCP", 8080u16)
            .node_port(30080)
            .external_traffic_policy("Local")
            .health_check_node_port(i64::from(HC_PORT)),
    );
    lab.manifests().apply(
        &EndpointSlice::new("lb-1", "lb")
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::ready(b1.ip)),
    );
    // The node's address is on br0: the north-south programs attach there.
    lab.manifests().apply(&Node::new(NODE_NAME, GATEWAY));
    lab.start_agent(&with_caps(&DAEMONSET));
    let pid = lab.agent_pid().expect("the agent runs");
    // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(
        effective_caps(pid),
        1 << 12 | 1 << 38 | 1 << 39,
        "the agent holds exactly BPF, NET_ADMIN and PERFMON"
    );

    // Socket hooks: ClusterIP traffic is translated.
    wait_active(&lab, "web", VIP, 80, Protocol::Tcp, &[ep(&b1, 8080)]);
    assert_all_ok(&lab.tcp(&client, &format!("{VIP}:80"), 3), "ClusterIP");
    // TCX on the node's device, pinned.
    let pins = [
        lab.pin_dir().join("ferry_link_tcin_br0"),
        lab.pin_dir().join("ferry_link_tcout_br0"),
    ];
    let t0 = Instant::now();
    while !pins.iter().all(|p| p.exists()) {
        assert!(
            t0.elapsed() < DEADLINE,
            "no TCX links on br0:\n{}",
            lab.agent_log()
        );
        thread::sleep(proc::POLL);
    }
    // The iterator that destroys connected UDP sockets loads (a tracing program: PERFMON).
    let log = lab.agent_log();
    assert!(
        log.contains("connected UDP sockets of removed backends will be destroyed"),
        "{log}"
    );
    // The health-check node port server (ports above 1024: no NET_BIND_SERVICE).
    let hc = SocketAddr::from(([127, 0, 0, 1], HC_PORT));
    let t0 = Instant::now();
    loop {
        match flood::http_get_in(&lab.node_netns_path(), hc, "/", Duration::from_secs(1)) {
            Ok(a) if a.status == 200 => break,
            r => assert!(t0.elapsed() < DEADLINE, "health check port: {r:?}"),
        }
        thread::sleep(proc::POLL);
    }
    // Link checks and repairs need no more than that: a detached hook comes back.
    let conn4 = lab.pin_dir().join("ferry_link_conn4");
    proc::run(
        "bpftool",
        &["link", "detach", "pinned", &conn4.to_string_lossy()],
    )
    .unwrap();
    let t0 = Instant::now();
    while !lab
        .agent_log()
        .contains("changed by someone else: repaired")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "not repaired:\n{}",
            lab.agent_log()
        );
        thread::sleep(proc::POLL);
    }
    assert_all_ok(
        &lab.tcp(&client, &format!("{VIP}:80"), 3),
        "after the repair",
    );
    // Raising the soft descriptor limit to the hard one needs no SYS_RESOURCE.
    let (soft, hard) = flood::nofile_of(pid).unwrap();
    assert_eq!(soft, hard, "the soft limit was raised");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn without_each_capability_the_agent_names_what_the_kernel_refused() {
    require_root!();
    let lab = Lab::new("without_each_capability_the_agent_names_what_the_kernel_refused");
    let expect: [(&str, &[&str]); 3] = [
        // Every map is created at load: BPF_MAP_CREATE needs CAP_BPF.
        ("bpf", &["failed to create map", "Operation not permitted"]),
        // Network program types (sched_cls, cgroup sock_addr) need CAP_NET_ADMIN.
        (
            "net_admin",
            &[
                "program ferry_tc_in",
                "BPF_PROG_LOAD",
                "Operation not permitted",
            ],
        ),
        // Without CAP_PERFMON the verifier applies its Spectre v1 hardening and refuses the
        // pointer arithmetic the programs do on map values.
        (
            "perfmon",
            &[
                "Permission denied",
                "pointer arithmetic",
                "prohibited for !root",
            ],
        ),
    ];
    for (missing, want) in expect {
        let caps: Vec<&str> = DAEMONSET
            .iter()
            .copied()
            .filter(|c| *c != missing)
            .collect();
        // A pin directory per run: a refused agent leaves the maps it pinned.
        let dir = lab.bpffs().join(format!("without-{missing}"));
        let out = lab.agent_until_exit(&with_caps(&caps), &dir, Duration::from_secs(30));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "started without {missing}:\n{text}");
        // "Error: ..." and its causes, without the verifier's log or the backtrace.
        let error: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Error:"))
            .take_while(|l| !l.trim_start().starts_with("0: <"))
            .filter(|l| {
                l.starts_with("Error:")
                    || (l.starts_with("    ") && !l.starts_with("     "))
                    || l.contains("prohibited")
            })
            .collect();
        println!("without {missing}:\n{}", error.join("\n"));
        for w in want {
            assert!(text.contains(w), "without {missing}: no {w:?} in:\n{text}");
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn destroying_a_pods_connected_udp_sockets_needs_sys_admin_and_sys_ptrace() {
    require_root!();
    let lab = Lab::new("destroying_a_pods_connected_udp_sockets_needs_sys_admin_and_sys_ptrace");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let client = lab.add_pod("client");
    let _echo: Vec<_> = [&b1, &b2]
        .iter()
        .map(|b| lab.start_echo(b, &[], &[8053]))
        .collect();
    let svc = Service::cluster_ip("dns", DNS_VIP).port_to("dns", 53, "UDP", 8053u16);
    let slice_of = |pods: &[&ferry_tests::Pod]| {
        EndpointSlice::new("dns-1", "dns")
            .port("dns", 8053, "UDP")
            .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)))
    };
    lab.manifests().apply(&svc);
    // Each phase: the socket connects to b1 alone, then b1 leaves for b2. Reading another
    // process's /proc/PID/ns/net needs CAP_SYS_PTRACE unless the agent's capabilities cover
    // the process's; setns(2) into it needs CAP_SYS_ADMIN.
    let base = DAEMONSET.to_vec();
    let plus = |extra: &[&'static str]| [base.clone(), extra.to_vec()].concat();
    for (caps, destroyed) in [
        (base.clone(), false),
        (plus(&["sys_admin"]), false),
        (plus(&["sys_ptrace"]), false),
        (plus(&["sys_admin", "sys_ptrace"]), true),
    ] {
        lab.manifests().apply(&slice_of(&[&b1]));
        lab.start_agent(&with_caps(&caps));
        wait_active(
            &lab,
            "b1 only",
            DNS_VIP,
            53,
            Protocol::Udp,
            &[ep(&b1, 8053)],
        );
        let mut load = lab.client_loop(
            &client,
            &[
                "udp",
                &format!("{DNS_VIP}:53"),
                "--connected",
                "--interval-ms",
                "50",
            ],
        );
        load.wait_for(Duration::from_secs(10), |a| {
            a.pod().as_deref() == Some("b1")
        });
        lab.manifests().apply(&slice_of(&[&b2]));
        wait_active(
            &lab,
            "b1 left",
            DNS_VIP,
            53,
            Protocol::Udp,
            &[ep(&b2, 8053)],
        );
        let left = Instant::now();
        // Two seconds of datagrams after the change.
        load.wait_more(40, Duration::from_secs(10));
        let attempts = load.stop();
        let errors = attempts.iter().filter(|a| !a.ok).count();
        println!(
            "with {caps:?}: {errors} errors in {} datagrams, {:?} after the change",
            attempts.len(),
            left.elapsed()
        );
        // The agent said at start whether it can reach the pods' namespaces.
        let warned = lab
            .agent_log()
            .lines()
            .any(|l| l.contains("preflight: warn  udp-gc") && l.contains("keep a removed backend"));
        assert_eq!(warned, !destroyed, "{caps:?}:\n{}", lab.agent_log());
        // And /metrics says it, for alerts.
        let metrics = flood::http_get_in(
            &lab.node_netns_path(),
            "127.0.0.1:10249".parse().unwrap(),
            "/metrics",
            Duration::from_secs(5),
        )
        .unwrap()
        .body;
        let gauge = format!(
            "ferry_feature_enabled{{feature=\"udp_socket_destroy_pods\"}} {}",
            u8::from(destroyed)
        );
        assert!(metrics.contains(&gauge), "{caps:?}: no {gauge}:\n{metrics}");
        if destroyed {
            assert!(
                errors > 0,
                "the socket was not destroyed:\n{}",
                lab.agent_log()
            );
        } else {
            // The pod's namespace is out of reach: the socket keeps b1.
            assert_eq!(errors, 0, "{attempts:?}");
            assert!(attempts.iter().all(|a| a.pod().as_deref() == Some("b1")));
        }
        lab.stop_agent();
    }
}
