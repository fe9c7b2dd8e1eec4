//! Issue 9, item 6: a frontend that does not fit the maps is its Service's problem, never the
//! node's. Before, one such frontend turned /healthz and /livez to 503 on every node after 60 s
//! (every node sees the same object): load balancers drained the whole cluster, kubelet
//! restarted the agent in a loop, and the agent logged about 310 warnings a second. Now the
//! error is a diagnostic (the frontend's status in `ferry services`, the metric
//! `ferry_programming_errors_total{reason}`, one log line) retried with exponential backoff,
//! and the health endpoints mean "this node forwards" and "the loop makes progress", measured
//! against 2 × `--sync-period` as kube-proxy's healthz timeout is.
//!
//! The lab: two nodes whose agents run with `--sync-period 1s --maglev-max-services 1`, and two
//! Maglev LoadBalancer Services whose load balancer IPs each need a Maglev table: one fits.

mod agent_view;

use std::{
    thread,
    time::{Duration, Instant},
};

use agent_common::maps::MAGLEV;
use agent_view::{AgentView, serves, status, wait_for};
use ferry::{cmd::services::ServicesView, model::Protocol};
use ferry_tests::{
    AgentOpts, Attempt, Cluster, Endpoint, EndpointSlice, Pod, Service,
    cluster::LB_RANGE,
    require_root,
    services::{frontend, has_address},
};

const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How long a manifest change may take to reach both kernels (no benchmark).
const DEADLINE: Duration = Duration::from_secs(10);
/// What the agent logs (warn) when a frontend fails, and (debug) when a retry fails again.
const FAILED: &str = "programming failed: will retry";
const FAILED_AGAIN: &str = "programming failed again";

/// One LoadBalancer Service of the test and its backend pod.
struct Lb {
    name: &'static str,
    cluster_ip: &'static str,
    lb_ip: &'static str,
    pod: Pod,
}

impl Lb {
    fn service(&self) -> Service {
        Service::load_balancer(self.name, self.cluster_ip)
            .port_to("http", 80, "TCP", 8080u16)
            .lb_ingress(self.lb_ip)
            .annotation("ferry.io/lb-algorithm", "maglev")
    }

    fn slice(&self) -> EndpointSlice {
        EndpointSlice::new(&format!("{}-1", self.name), self.name)
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::ready(self.pod.ip).node("node1"))
    }

    fn backend(&self) -> Vec<String> {
        vec![format!("{}:8080", self.pod.ip)]
    }

    /// The load balancer frontend as the agent names it.
    fn lb_frontend(&self) -> String {
        format!("{}:80/TCP", self.lb_ip)
    }

    fn lb_status(&self, v: &ServicesView) -> String {
        status(v, self.lb_ip, 80, Protocol::Tcp)
    }
}

/// The log lines saying `what` about `frontend`.
fn lines_about<'a>(log: &'a str, what: &str, frontend: &str) -> Vec<&'a str> {
    let field = format!("frontend={frontend} ");
    log.lines()
        .filter(|l| l.contains(what) && l.contains(&field))
        .collect()
}

/// Seconds since midnight (UTC) of a log line: tracing starts each with an RFC 3339 time.
fn log_secs(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut hms = time.split(':').map(str::parse::<f64>);
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The value of the metric sample whose line starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls one TCP connection at a time until `target` answers from `from`; the answer.
fn first_answer(c: &Cluster, from: &Pod, target: &str) -> Attempt {
    wait_for(
        &format!("{} reaches {target}", from.name),
        DEADLINE,
        || {
            let a = c
                .client(from, &["tcp", target, "--timeout-ms", "1000"])
                .remove(0);
            a.ok.then_some(a)
        },
        || c.dump(),
    )
}

/// `count` connections from `from` to `target`: all answered by `pod`.
fn all_from(c: &Cluster, from: &Pod, target: &str, pod: &Pod, count: u32) {
    let attempts = c.tcp(from, target, count);
    let wrong: Vec<&str> = attempts
        .iter()
        .filter(|a| !a.ok || a.pod().as_deref() != Some(pod.name.as_str()))
        .map(|a| a.raw.as_str())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} -> {target}: not all answered by {}: {wrong:#?}\n{}",
        from.name,
        pod.name,
        c.dump()
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_frontend_that_does_not_fit_is_retried_with_backoff_and_every_node_stays_healthy() {
    require_root!();
    let c = Cluster::new(
        "a_frontend_that_does_not_fit_is_retried_with_backoff_and_every_node_stays_healthy",
    );
    let ext1 = c.ext("ext1");
    let client = c.add_pod_on("node1", "client");
    let lbs = [
        Lb {
            name: "lb-a",
            cluster_ip: "10.96.0.20",
            lb_ip: "192.0.2.20",
            pod: c.add_pod_on("node1", "a1"),
        },
        Lb {
            name: "lb-b",
            cluster_ip: "10.96.0.21",
            lb_ip: "192.0.2.21",
            pod: c.add_pod_on("node1", "b1"),
        },
    ];
    let _echo: Vec<_> = lbs
        .iter()
        .map(|l| c.start_echo(&l.pod, &[8080], &[]))
        .collect();
    for l in &lbs {
        c.manifests().apply(&l.service());
        c.manifests().apply(&l.slice());
    }
    let opts = AgentOpts {
        extra_args: [
            "--sync-period",
            "1s",
            "--maglev-max-services",
            "1",
            "--log-level",
            "info,ferry::control::run=debug",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentOpts::default()
    };
    c.start_agents_with(&opts);
    let ready = Instant::now();
    c.wait_north_south(DEADLINE);
    c.route(&ext1, LB_RANGE, "node1");
    let nodes = [
        AgentView::of_node(&c, "node1"),
        AgentView::of_node(&c, "node2"),
    ];

    // One Maglev table, two frontends that need one: the first programmed takes it.
    let (v, _) = nodes[0].wait_services(
        "one load balancer frontend programmed, the other failed",
        |v| {
            let s: Vec<String> = lbs.iter().map(|l| l.lb_status(v)).collect();
            s.contains(&"programmed".to_owned()) && s.contains(&"error".to_owned())
        },
        DEADLINE,
        || c.agent_log("node1"),
    );
    let (won, lost) = if lbs[0].lb_status(&v) == "programmed" {
        (&lbs[0], &lbs[1])
    } else {
        (&lbs[1], &lbs[0])
    };
    // Every node sees the same objects, so every node has the same failure.
    for n in &nodes {
        let (v, _) = n.wait_services(
            &format!("{} failed", lost.lb_frontend()),
            |v| lost.lb_status(v) == "error" && won.lb_status(v) == "programmed",
            DEADLINE,
            || c.agent_log(&n.name),
        );
        let f = frontend(&v, lost.lb_ip, 80, Protocol::Tcp).expect("the failed frontend is shown");
        let error = f.error.as_deref().unwrap_or_default();
        println!(
            "{}: {} of {:?}: {} ({error})",
            n.name,
            lost.lb_frontend(),
            f.service,
            f.status
        );
        assert_eq!(
            f.service.as_deref(),
            Some(&*format!("default/{}", lost.name))
        );
        assert!(
            error.contains(MAGLEV) && error.contains("(1 Maglev tables)"),
            "the error names the map and its size: {error}"
        );
        assert!(serves(&v, won.lb_ip, 80, Protocol::Tcp, &won.backend()));
        // The failing Service's other frontend, its ClusterIP, is programmed.
        assert!(serves(
            &v,
            lost.cluster_ip,
            80,
            Protocol::Tcp,
            &lost.backend()
        ));
    }
    println!("{}", nodes[0].services_table());

    // Both nodes stay healthy and live well past 2 × --sync-period while the frontend is
    // retried, and the retries back off.
    let mut probes = 0;
    let mut bad = Vec::new();
    loop {
        for n in &nodes {
            for path in ["/healthz", "/livez"] {
                probes += 1;
                let code = n.health(path);
                if code != Some(200) {
                    let at = ready.elapsed().as_secs_f64();
                    bad.push(format!("{at:.1} s: {} {path}: {code:?}", n.name));
                }
            }
        }
        let log = c.agent_log("node1");
        let again = lines_about(&log, FAILED_AGAIN, &lost.lb_frontend()).len();
        if again >= 3 && ready.elapsed() >= SYNC_PERIOD * 4 {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "{again} retries of {} logged in 30 s (debug lines `{FAILED_AGAIN}`); log:\n{log}",
            lost.lb_frontend()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let window = ready.elapsed();
    assert!(
        bad.is_empty(),
        "/healthz or /livez failed while one frontend could not be programmed: {bad:#?}\n{}",
        c.agent_logs()
    );
    println!(
        "health: {probes} probes of /healthz and /livez on both nodes over {:.1} s (2 × --sync-period = {} s): all 200",
        window.as_secs_f64(),
        (SYNC_PERIOD * 2).as_secs()
    );

    // Logged once as a warning; each retry that fails again is a debug line, and the retries
    // come further and further apart (1 s, 2 s, 4 s...).
    let log = c.agent_log("node1");
    let once = lines_about(&log, FAILED, &lost.lb_frontend());
    let again = lines_about(&log, FAILED_AGAIN, &lost.lb_frontend());
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    println!(
        "node1 log after {:.1} s: `{FAILED}` x{}, `{FAILED_AGAIN}` x{}, {warnings} warning lines in all",
        window.as_secs_f64(),
        once.len(),
        again.len()
    );
    assert_eq!(once.len(), 1, "the error is logged once:\n{log}");
    assert!(once[0].contains(" WARN "), "{}", once[0]);
    assert!(again.iter().all(|l| l.contains(" DEBUG ")), "{again:#?}");
    let times: Vec<f64> = once
        .iter()
        .chain(&again)
        .map(|l| log_secs(l).unwrap_or_else(|| panic!("no time in {l}")))
        .collect();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).rem_euclid(86_400.0))
        .collect();
    println!("attempts of {}: gaps {gaps:.2?} s", lost.lb_frontend());
    assert!(gaps[0] >= 0.9, "the first retry waits a second: {gaps:?}");
    for w in gaps.windows(2) {
        assert!(w[1] >= 1.5 * w[0], "each retry waits longer: {gaps:?}");
    }

    // Counted in /metrics by reason.
    let metrics = nodes[0].metrics();
    let series = "ferry_programming_errors_total{reason=\"map_full\"}";
    let counted = sample(&metrics, series);
    println!("node1 /metrics: {series} {counted:?}");
    assert!(
        counted.is_some_and(|n| n >= 1.0),
        "{series} is counted:\n{metrics}"
    );

    // The other Service works end to end, from a client on the nodes' network; the failing
    // one's load balancer IP is not served, its ClusterIP is.
    let won_target = format!("{}:80", won.lb_ip);
    let a = first_answer(&c, &ext1, &won_target);
    println!("ext1 -> {won_target}: {}", a.raw);
    all_from(&c, &ext1, &won_target, &won.pod, 5);
    let lost_target = format!("{}:80", lost.lb_ip);
    let a = c
        .client(&ext1, &["tcp", &lost_target, "--timeout-ms", "1000"])
        .remove(0);
    println!("ext1 -> {lost_target} (not programmed): {}", a.raw);
    assert!(!a.ok, "the failed frontend answered: {}", a.raw);
    all_from(
        &c,
        &client,
        &format!("{}:80", lost.cluster_ip),
        &lost.pod,
        3,
    );

    // The Service holding the table goes: a retry programs the other one.
    c.manifests().delete(&won.service());
    c.manifests().delete(&won.slice());
    let deleted = Instant::now();
    for n in &nodes {
        n.wait_services(
            &format!(
                "{} gone, {} programmed on a retry",
                won.name,
                lost.lb_frontend()
            ),
            |v| {
                !has_address(v, won.lb_ip)
                    && serves(v, lost.lb_ip, 80, Protocol::Tcp, &lost.backend())
            },
            Duration::from_secs(40),
            || c.agent_log(&n.name),
        );
        println!(
            "{}: {} programmed {:.1} s after {} was deleted",
            n.name,
            lost.lb_frontend(),
            deleted.elapsed().as_secs_f64(),
            won.name
        );
    }
    let log = c.agent_log("node1");
    let retried = log
        .lines()
        .rev()
        .find(|l| l.contains(" retried ") || l.ends_with(" retried"));
    println!("node1: {retried:?}");
    assert!(
        retried.is_some_and(|l| l.contains("added=1")),
        "a retry added the frontend:\n{log}"
    );
    let a = first_answer(&c, &ext1, &lost_target);
    println!("ext1 -> {lost_target}: {}", a.raw);
    all_from(&c, &ext1, &lost_target, &lost.pod, 5);
}
