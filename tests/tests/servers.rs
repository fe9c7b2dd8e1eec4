//! The agent's HTTP servers under clients that hold connections open (issue 9, item 5): a
//! thousand idle connections and slowloris heads against the health port and a
//! healthCheckNodePort, and running out of file descriptors. Probes, metrics and manifest
//! changes must keep working.

mod common;

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    Endpoint, EndpointSlice, Lab, Service,
    flood::{self, Flood, FloodOpts},
    lab::{GATEWAY, HEALTHZ_PORT},
    require_root,
};

const VIP: &str = "10.96.0.10";
const LB_CLUSTER_IP: &str = "10.96.0.20";
const HC_PORT: u16 = 32000;
const METRICS_PORT: u16 = 10249;
/// What a probe may take under attack (the DaemonSet's probes time out after 5 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How often the probes ask (kubelet: every 5 or 10 s; more often here).
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The agent's header read timeout (`ferry::server::http::LIMITS`) and per-server cap.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CAP: usize = 128;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn on_node(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(GATEWAY, port))
}

/// GETs each (port, path) in the node namespace, as kubelet and Prometheus do; every one
/// must answer 200 within `ANSWER_WITHIN`. Returns the slowest.
fn probe_all(lab: &Lab, targets: &[(u16, &str)]) -> Duration {
    let mut worst = Duration::ZERO;
    for &(port, path) in targets {
        let a = flood::http_get_in(&lab.node_netns_path(), local(port), path, ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", lab.agent_log()));
        assert_eq!(a.status, 200, ":{port}{path}: {}", a.body);
        assert!(a.took <= ANSWER_WITHIN, ":{port}{path} took {:?}", a.took);
        worst = worst.max(a.took);
    }
    worst
}

fn wait_answering(netns: &Path, port: u16, path: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        match flood::http_get_in(netns, local(port), path, Duration::from_secs(1)) {
            Ok(a) if a.status == 200 => return t0.elapsed(),
            r if t0.elapsed() >= within => panic!(":{port}{path} not answering 200: {r:?}"),
            _ => thread::sleep(ferry_tests::proc::POLL),
        }
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn probes_metrics_and_updates_survive_a_thousand_idle_connections() {
    require_root!();
    let lab = Lab::new("probes_metrics_and_updates_survive_a_thousand_idle_connections");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let attacker = lab.add_pod("attacker");
    let _e1 = lab.start_echo(&b1, &[8080], &[]);
    let _e2 = lab.start_echo(&b2, &[8080], &[]);
    let (web, slice) = simple("web", VIP, 80, 8080, &[&b1]);
    let lb = Service::load_balancer("lb", LB_CLUSTER_IP)
        .port_to("http", 80, "TCP", 8080u16)
        .node_port(30080)
        .external_traffic_policy("Local")
        .health_check_node_port(i64::from(HC_PORT));
    let lb_slice = EndpointSlice::new("lb-1", "lb")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready(b1.ip));
    lab.manifests().apply(&web);
    lab.manifests().apply(&slice);
    lab.manifests().apply(&lb);
    lab.manifests().apply(&lb_slice);
    // The common default soft limit (systemd, many runtimes) under a higher hard limit.
    let (_, hard) = ferry_tests::flood::nofile_of(std::process::id()).expect("own limits");
    lab.start_agent(&ferry_tests::AgentOpts {
        wrapper: vec!["prlimit".into(), format!("--nofile=1024:{hard}")],
        ..Default::default()
    });
    wait_active(&lab, "web", VIP, 80, Protocol::Tcp, &[ep(&b1, 8080)]);
    let pid = lab.agent_pid().expect("the agent runs");
    let node = lab.node_netns_path();
    wait_answering(&node, HC_PORT, "/", Duration::from_secs(5));
    let baseline = flood::sockets_of(pid);
    let targets = [
        (HEALTHZ_PORT, "/readyz"),
        (HEALTHZ_PORT, "/healthz"),
        (METRICS_PORT, "/metrics"),
        (HC_PORT, "/"),
    ];
    println!(
        "before the flood: {baseline} sockets, slowest answer {:?}",
        probe_all(&lab, &targets)
    );

    // From a pod, as anything on the pod network could: idle connections and slow heads,
    // replaced as soon as the agent closes them.
    let opts = |idle, slow| FloodOpts {
        idle,
        slow,
        reconnect: true,
    };
    let health_flood = Flood::start(&attacker.netns_path, on_node(HEALTHZ_PORT), opts(1100, 50));
    let hc_flood = Flood::start(&attacker.netns_path, on_node(HC_PORT), opts(300, 20));
    // Every connection tried (a server that stopped accepting lets some time out).
    let (st, took) = health_flood.wait(Duration::from_secs(60), |s| s.connected + s.failed >= 1150);
    assert!(took.is_some(), "the flood is still connecting: {st:?}");
    println!("flood open: {st:?} after {took:?}");

    // Longer than the header timeout, so both evictions and timeouts are at work.
    let cpu0 = flood::cpu_time_of(pid);
    let t0 = Instant::now();
    lab.manifests()
        .apply(&slice.clone().endpoint(Endpoint::ready(b2.ip)));
    let (mut worst, mut most_sockets, mut rounds) = (Duration::ZERO, 0, 0);
    while t0.elapsed() < HEADER_TIMEOUT + Duration::from_secs(3) {
        worst = worst.max(probe_all(&lab, &targets));
        most_sockets = most_sockets.max(flood::sockets_of(pid));
        rounds += 1;
        thread::sleep(PROBE_EVERY);
    }
    wait_active(
        &lab,
        "manifest change under the flood",
        VIP,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080), ep(&b2, 8080)],
    );
    let cpu = flood::cpu_time_of(pid) - cpu0;
    let elapsed = t0.elapsed();
    let (health, hc) = (health_flood.stats(), hc_flood.stats());
    println!(
        "under the flood for {elapsed:?}: {rounds} probe rounds, slowest {worst:?}; agent: at most \
         {most_sockets} sockets (baseline {baseline}), CPU {cpu:?}; health port clients {health:?}; \
         health-check port clients {hc:?}"
    );
    // Two servers under attack, each within its cap (plus connections being closed).
    assert!(
        most_sockets <= baseline + 2 * CAP + 32,
        "the agent held {most_sockets} sockets (baseline {baseline})"
    );
    assert!(
        health.closed_by_server >= 1100 - CAP,
        "the agent closed only {} of the health port's connections",
        health.closed_by_server
    );
    assert!(hc.closed_by_server > 0, "{hc:?}");

    // Left alone, the open connections are closed by the timeout.
    health_flood.stop_reconnecting();
    hc_flood.stop_reconnecting();
    let within = HEADER_TIMEOUT + Duration::from_secs(5);
    let (st, took) = health_flood.wait(within, |s| s.open == 0);
    assert!(
        took.is_some(),
        "health port connections still open after {within:?}: {st:?}"
    );
    let (st_hc, took_hc) = hc_flood.wait(within, |s| s.open == 0);
    assert!(
        took_hc.is_some(),
        "health-check connections still open: {st_hc:?}"
    );
    println!("idle connections closed {took:?} / {took_hc:?} after the flood stopped reconnecting");
    let t = Instant::now();
    while flood::sockets_of(pid) > baseline && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(ferry_tests::proc::POLL);
    }
    assert!(
        flood::sockets_of(pid) <= baseline,
        "sockets left: {}",
        flood::sockets_of(pid)
    );

    // The soft limit was raised to the hard one at start.
    assert_eq!(flood::nofile_of(pid), Some((hard, hard)));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_health_server_survives_running_out_of_file_descriptors() {
    require_root!();
    let lab = Lab::new("the_health_server_survives_running_out_of_file_descriptors");
    let (_b1, _e1, _svc, _slice) = serve_web(&lab, VIP, "web");
    let attacker = lab.add_pod("attacker");
    let pid = lab.agent_pid().expect("the agent runs");
    // As if something else had used up the descriptors: 8 left.
    let fds = flood::fds_of(pid) as u64;
    flood::set_nofile_of(pid, fds + 8, fds + 8).expect("prlimit on the agent");

    let flood = Flood::start(
        &attacker.netns_path,
        on_node(HEALTHZ_PORT),
        FloodOpts {
            idle: 300,
            slow: 0,
            reconnect: false,
        },
    );
    let (st, took) = flood.wait(Duration::from_secs(60), |s| s.connected + s.failed >= 300);
    assert!(took.is_some(), "{st:?}");
    let cpu0 = flood::cpu_time_of(pid);
    let t0 = Instant::now();
    let (mut worst, mut rounds) = (Duration::ZERO, 0);
    while t0.elapsed() < Duration::from_secs(6) {
        worst = worst.max(probe_all(&lab, &[(HEALTHZ_PORT, "/readyz")]));
        rounds += 1;
        thread::sleep(PROBE_EVERY);
    }
    let cpu = flood::cpu_time_of(pid) - cpu0;
    let share = cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    let st = flood.stats();
    println!(
        "out of descriptors ({fds} in use, limit {}): {rounds} probes, slowest {worst:?}; agent \
         CPU {cpu:?} ({:.0}% of a core); clients {st:?}",
        fds + 8,
        share * 100.0
    );
    let log = lab.agent_log();
    assert!(
        log.contains("Too many open files"),
        "the agent never ran out of descriptors, so this proved nothing; log:\n{log}"
    );
    assert!(
        st.closed_by_server > 0,
        "no idle connection was closed to make room: {st:?}"
    );
    // An accept loop that retries EMFILE at once keeps a core busy.
    assert!(
        share < 0.3,
        "the agent used {:.0}% of a core",
        share * 100.0
    );
}
