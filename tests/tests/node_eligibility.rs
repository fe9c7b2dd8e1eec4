//! /healthz says whether load balancers should send this node traffic (KEP-3836, as
//! kube-proxy): a Node being deleted, or tainted ToBeDeletedByClusterAutoscaler, answers 503
//! with `nodeEligible: false`, while /livez stays 200 (the agent is fine: kubelet must not
//! restart it). Driven through the agent's own Node object, from a manifest.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use ferry_tests::{
    AgentOpts, Lab, flood,
    lab::{GATEWAY, HEALTHZ_PORT, NODE_NAME},
    proc, require_root,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(10);

fn node(extra_metadata: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_NAME}{extra_metadata}}}\n{spec}\
         status: {{addresses: [{{type: InternalIP, address: {GATEWAY}}}]}}\n"
    )
}

fn get(lab: &Lab, path: &str) -> Option<(u16, Value)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
    let a = flood::http_get_in(&lab.node_netns_path(), addr, path, Duration::from_secs(2)).ok()?;
    Some((
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    ))
}

/// Waits until /healthz answers `status` with `nodeEligible` as given; /livez must stay 200
/// throughout.
fn wait_healthz(lab: &Lab, status: u16, eligible: bool, what: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let live = get(lab, "/livez").map(|(s, _)| s);
        assert_eq!(live, Some(200), "{what}: /livez must stay 200");
        if let Some((s, body)) = get(lab, "/healthz")
            && s == status
            && body["nodeEligible"] == Value::Bool(eligible)
        {
            return body;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{what}: /healthz not {status} with nodeEligible {eligible} after {DEADLINE:?}: {:?}\nlog:\n{}",
            get(lab, "/healthz"),
            lab.agent_log()
        );
        thread::sleep(proc::POLL);
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_node_being_removed_drains_through_healthz_and_stays_live() {
    require_root!();
    let lab = Lab::new("a_node_being_removed_drains_through_healthz_and_stays_live");
    let file = "node.yaml";
    lab.manifests().write_raw(file, &node("", ""));
    lab.start_agent(&AgentOpts::default());
    let body = wait_healthz(&lab, 200, true, "an ordinary node");
    // kube-proxy's fields, with its names.
    for field in ["lastUpdated", "currentTime", "nodeEligible"] {
        assert!(body.get(field).is_some(), "/healthz lacks {field}: {body}");
    }

    let taint = "spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, value: \"1700000000\", \
                 effect: NoSchedule}]}\n";
    lab.manifests().write_raw(file, &node("", taint));
    wait_healthz(&lab, 503, false, "tainted by the cluster autoscaler");

    // Another taint is not a reason to drain.
    let other = "spec: {taints: [{key: node.kubernetes.io/unschedulable, effect: NoSchedule}]}\n";
    lab.manifests().write_raw(file, &node("", other));
    wait_healthz(&lab, 200, true, "cordoned only");

    let deleting = ", deletionTimestamp: \"2026-12-06T00:00:00Z\"";
    lab.manifests().write_raw(file, &node(deleting, ""));
    wait_healthz(&lab, 503, false, "being deleted");

    lab.manifests().write_raw(file, &node("", ""));
    wait_healthz(&lab, 200, true, "back to an ordinary node");
}
