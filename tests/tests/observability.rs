//! What an operator's tools read from a running agent (issue 13): JSON logs with
//! `--log-format json` and no colour codes in a log file, `ferry_build_info` naming the
//! revision the binary was built from, the process metrics every Prometheus client exports,
//! and every metric the shipped alerts and dashboard (deploy/monitoring) query.

use std::{collections::BTreeSet, net::SocketAddr, path::Path, process::Command, time::Duration};

use ferry_tests::{
    AgentOpts, Endpoint, EndpointSlice, Lab, Service, flood, lab::NODE_NAME, require_root,
};

fn metrics(lab: &Lab) -> String {
    let addr: SocketAddr = "127.0.0.1:10249".parse().unwrap();
    let a = flood::http_get_in(
        &lab.node_netns_path(),
        addr,
        "/metrics",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.status, 200);
    a.body
}

/// The metric names a PromQL text or a dashboard queries (ferry's, kube-proxy's, process_).
fn queried_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &text[i..];
        if word_start
            && ["ferry_", "kubeproxy_", "process_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn queried_names_are_found_in_promql() {
    let names = queried_names(
        r#"histogram_quantile(0.99, rate(kubeproxy_sync_proxy_rules_duration_seconds_bucket{job="kube-proxy"}[5m])) + my_ferry_x + ferry_links_broken"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "ferry_links_broken".to_owned(),
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket".to_owned()
        ])
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn logs_and_metrics_are_what_operators_tools_read() {
    require_root!();
    let lab = Lab::new("logs_and_metrics_are_what_operators_tools_read");
    let pod = lab.add_pod("web-1");
    lab.manifests()
        .apply(&Service::cluster_ip("web", "10.96.0.10").port_to("http", 80, "TCP", 8080u16));
    lab.manifests().apply(
        &EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .endpoints([Endpoint::ready(pod.ip).node(NODE_NAME)]),
    );
    // kube-proxy's configuration file as kubeadm writes it: what ferry does not use is named.
    let config = lab.tmp_dir().join("config.conf");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: ipvs\nsyncPeriod: 30s\nconntrack:\n  maxPerCore: 32768\n",
    )
    .unwrap();
    let opts = AgentOpts {
        extra_args: vec![
            "--log-format".into(),
            "json".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ],
        ..Default::default()
    };
    lab.start_agent(&opts);

    // The monitoring overlay's alerts and dashboard query only metrics the agent exports.
    let text = metrics(&lab);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let mut queried = BTreeSet::new();
    for file in ["prometheusrule.yaml", "ferry-dashboard.json"] {
        let body = std::fs::read_to_string(deploy.join(file)).unwrap();
        queried.extend(queried_names(&body));
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| !text.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried by deploy/monitoring but not exported: {missing:?}\n{text}"
    );

    // The build and the process, as client_golang names them.
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    // build.rs writes "unknown" where git cannot answer (no checkout, or one git refuses to
    // read as another user's): the same answer here.
    let rev = match String::from_utf8_lossy(&git.stdout).trim() {
        r if git.status.success() && !r.is_empty() => r.to_owned(),
        _ => "unknown".to_owned(),
    };
    assert!(
        text.contains(&format!("revision=\"{rev}\"")),
        "ferry_build_info names revision {rev}:\n{text}"
    );
    for name in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(name), "{name}missing");
    }

    // One JSON object a line, each with its level, message and target.
    let log = lab.agent_log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for field in ["timestamp", "level", "message", "target"] {
            assert!(v.get(field).is_some(), "no {field} in {line}");
        }
        lines += 1;
    }
    assert!(
        log.contains("\"message\":\"attached\""),
        "the programs' attachment is logged:\n{log}"
    );
    println!("{lines} JSON log lines");
    let ignored = log
        .lines()
        .find(|l| l.contains("fields ferry does not use"))
        .unwrap_or_else(|| panic!("no warning about the config file's fields:\n{log}"));
    assert!(
        ignored.contains("conntrack.maxPerCore, mode")
            && !ignored.contains("fields\":\"syncPeriod"),
        "{ignored}"
    );

    // Text logs into a file (not a terminal) carry no colour codes, even without NO_COLOR.
    lab.stop_agent();
    lab.start_agent(&AgentOpts {
        env: vec![("RUST_BACKTRACE".into(), "1".into())],
        ..Default::default()
    });
    let log = lab.agent_log();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log}"
    );
}
