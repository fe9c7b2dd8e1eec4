//! Shared by the ferry test files.
#![allow(dead_code)]

use std::{collections::BTreeMap, time::Duration};

use ferry::model::Protocol;
use ferry_tests::{AgentOpts, Attempt, Endpoint, EndpointSlice, Lab, Pod, Service, services};

/// How long a manifest change may take to reach the kernel (generous: this is no benchmark).
pub const DEADLINE: Duration = Duration::from_secs(5);

/// "ip:port" of a pod's port.
pub fn ep(pod: &Pod, port: u16) -> String {
    format!("{}:{port}", pod.ip)
}

pub fn report(what: &str, took: Duration) {
    println!("latency: {what}: {} ms", took.as_millis());
}

/// Starts the agent and reports how long it took to be ready.
pub fn start_agent(lab: &Lab) -> Duration {
    let took = lab.start_agent(&AgentOpts::default());
    report("agent start -> /readyz 200", took);
    took
}

/// Waits until the frontend's active backends are exactly `want`; reports the latency.
pub fn wait_active(lab: &Lab, what: &str, vip: &str, port: u16, proto: Protocol, want: &[String]) {
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let took = lab.wait_services(
        |v| services::active_is(v, vip, port, proto, &want),
        DEADLINE,
    );
    report(what, took);
}

/// Waits until no frontend has this address; reports the latency.
pub fn wait_gone(lab: &Lab, what: &str, vip: &str) {
    let took = lab.wait_services(|v| !services::has_address(v, vip), DEADLINE);
    report(what, took);
}

/// The common start of a test: a pod `b1` echoing on TCP 8080 behind service
/// `web` (`vip`:80), the agent started and the frontend in the kernel.
/// Returns the pod, its echo server (stops on drop), the service and its slice.
pub fn serve_web(
    lab: &Lab,
    vip: &str,
    what: &str,
) -> (Pod, ferry_tests::proc::Proc, Service, EndpointSlice) {
    let b1 = lab.add_pod("b1");
    let echo = lab.start_echo(&b1, &[8080], &[]);
    let (svc, slice) = simple("web", vip, 80, 8080, &[&b1]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(lab);
    wait_active(lab, what, vip, 80, Protocol::Tcp, &[ep(&b1, 8080)]);
    (b1, echo, svc, slice)
}

/// A ClusterIP service with one TCP port `port` -> `target` and a slice of ready pods.
pub fn simple(
    name: &str,
    vip: &str,
    port: i64,
    target: u16,
    pods: &[&Pod],
) -> (Service, EndpointSlice) {
    let svc = Service::cluster_ip(name, vip).port_to("http", port, "TCP", target);
    let slice = EndpointSlice::new(&format!("{name}-1"), name)
        .port("http", target, "TCP")
        .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)));
    (svc, slice)
}

pub fn assert_all_ok(attempts: &[Attempt], what: &str) {
    let failed: Vec<&str> = attempts
        .iter()
        .filter(|a| !a.ok)
        .map(|a| a.raw.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} attempts failed: {failed:#?}",
        failed.len(),
        attempts.len()
    );
}

/// How many attempts each pod answered.
pub fn by_pod(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in attempts {
        if let Some(pod) = a.pod() {
            *counts.entry(pod).or_default() += 1;
        }
    }
    counts
}

/// A connect that ferry did not translate: it goes to the node, which routes 10.96/12
/// nowhere, so it times out (or is reported unreachable). It never reaches a backend.
pub fn assert_untranslated(a: &Attempt, what: &str) {
    assert!(!a.ok, "{what}: reached {:?} ({})", a.reply, a.raw);
    let error = a.error.as_deref().unwrap_or_default();
    assert!(
        matches!(
            error,
            "timeout" | "ETIMEDOUT" | "EHOSTUNREACH" | "ENETUNREACH"
        ),
        "{what}: expected a routing error or a timeout, got {}",
        a.raw
    );
}

/// A connect to a service that has no frontend port any more: not answered by a backend
/// (refused if ferry rejects unknown ports of a known service address, else untranslated).
pub fn assert_not_served(a: &Attempt, what: &str) {
    assert!(!a.ok, "{what}: reached {:?} ({})", a.reply, a.raw);
}

/// The egress guard's link pin in the lab's pin directory.
pub fn guard_pin(lab: &Lab) -> std::path::PathBuf {
    lab.pin_dir().join(ferry::paths::GUARD_PROGRAM.1)
}

/// Applies a Service the egress guard is attached for (internalTrafficPolicy Local, its only
/// endpoint on another node: kube-proxy drops its traffic) on `vip`:80, and waits until the
/// agent attached and pinned the guard (it does so only while a Service needs it).
pub fn apply_guarded(lab: &Lab, name: &str, vip: &str) -> (Service, EndpointSlice) {
    let svc = Service::cluster_ip(name, vip)
        .port_to("http", 80, "TCP", 8080u16)
        .internal_traffic_policy("Local");
    let slice = EndpointSlice::new(&format!("{name}-1"), name)
        .port("http", 8080, "TCP")
        .endpoints([Endpoint::ready("10.244.99.9").node("node-2")]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    let start = std::time::Instant::now();
    while !guard_pin(lab).exists() {
        assert!(
            start.elapsed() < DEADLINE,
            "the egress guard was not attached for {name}: {}",
            lab.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    report("guarded Service applied -> guard pinned", start.elapsed());
    (svc, slice)
}
