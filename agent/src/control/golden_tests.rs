//! Golden control-plane tests: YAML in (`agent/tests/golden/<case>/input.yaml`),
//! `ferry services -o json` out (`expected.json` beside it), through the same
//! path as the agent (manifest parser, tracker, translation, claims, the
//! programmer) into the in-memory maps, read back with the same view code as
//! `ferry services`. `FERRY_BLESS=1 cargo test golden` rewrites the files;
//! review the diff before committing it.

use std::{fs, path::PathBuf, time::Instant};

use super::*;
use crate::{
    cmd::services::{join, view},
    datapath::{Capacities, Programmer, mem_maps::MemMaps, service_table::ServiceTable},
    server::status::Status,
    source::{event::Delta, manifests},
};

fn cases() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .expect("agent/tests/golden")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Capacities from an optional `capacities` file (`maglev_tables=1`...).
fn capacities(dir: &std::path::Path) -> Capacities {
    let mut caps = Capacities::default();
    let Ok(text) = fs::read_to_string(dir.join("capacities")) else {
        return caps;
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line.split_once('=').expect("key=value");
        let v: u32 = v.trim().parse().expect("a number");
        match k.trim() {
            "maglev_tables" => caps.maglev_tables = v,
            "src_ranges" => caps.src_ranges = v,
            "services" => caps.services = v,
            "backends" => caps.backends = v,
            other => panic!("unknown capacity {other}"),
        }
    }
    caps
}

/// A controller for node `node-a`, with the defaults.
fn controller() -> Controller {
    Controller::new(
        Config {
            node_name: "node-a".into(),
            ..Config::default()
        },
        None,
    )
}

/// Applies every object of a manifest file (nodes, Services, then slices, as
/// the agent's first read does); returns the file's own problems.
fn apply_file(ctl: &mut Controller, input: &std::path::Path) -> Vec<Diagnostic> {
    let loaded = manifests::load(input, "node-a").expect("the input file");
    let o = loaded.objects;
    for n in o.nodes.into_values() {
        ctl.apply(Event::Node(Delta::Applied(n)));
    }
    for s in o.services.into_values() {
        ctl.apply(Event::Service(Delta::Applied(s)));
    }
    for s in o.slices.into_values() {
        ctl.apply(Event::Slice(Delta::Applied(s)));
    }
    loaded.diagnostics
}

fn run_case(dir: &std::path::Path) -> String {
    let maps = MemMaps::default();
    let mut table = ServiceTable::new(Programmer::adopt_with(maps.clone(), capacities(dir)));
    let mut ctl = controller();
    let file_diags = apply_file(&mut ctl, &dir.join("input.yaml"));
    ctl.full_sync(&mut table, Instant::now());
    // Problems of the files themselves come first, as the agent lists them.
    let mut diags = file_diags;
    diags.extend(ctl.diagnostics());
    let status = Status::new(table.status(Instant::now()), &diags);
    let v = join(view(&table.kernel_state()), Some(&status));
    let mut json = serde_json::to_string_pretty(&v).unwrap();
    json.push('\n');
    json.replace(&dir.display().to_string(), "<case>")
}

#[test]
fn golden_yaml_in_ferry_services_out() {
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let mut failed = Vec::new();
    for dir in cases() {
        let got = run_case(&dir);
        let path = dir.join("expected.json");
        if bless {
            fs::write(&path, &got).unwrap();
            continue;
        }
        let want = fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            failed.push(format!("{}:\n{got}", dir.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "golden outputs differ (FERRY_BLESS=1 rewrites them):\n{}",
        failed.join("\n")
    );
}

/// kube-proxy's `sync_proxy_rules_no_local_endpoints_total`: service ports whose Local policy
/// finds no endpoint on this node while the Service has some elsewhere, per policy, kept up to
/// date by incremental syncs as by a full one.
#[test]
fn no_local_endpoints_count_service_ports_by_policy() {
    let dir = std::env::temp_dir().join(format!("ferry-no-local-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let slice = |svc: &str, node: &str| {
        format!(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {svc}-1, labels: {{kubernetes.io/service-name: {svc}}}}}
addressType: IPv4
ports: [{{name: a, port: 8080}}, {{name: b, port: 8053, protocol: UDP}}]
endpoints: [{{addresses: [10.1.0.9], nodeName: {node}}}]
"#
        )
    };
    let yaml = format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status: {{addresses: [{{type: InternalIP, address: 192.168.1.10}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: itp}}
spec:
  clusterIP: 10.96.0.1
  internalTrafficPolicy: Local
  ports: [{{name: a, port: 80}}, {{name: b, port: 53, protocol: UDP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: etp}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.2
  externalTrafficPolicy: Local
  ports: [{{name: a, port: 80, nodePort: 30080}}]
status: {{loadBalancer: {{ingress: [{{ip: 198.51.100.7}}]}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  clusterIP: 10.96.0.3
  internalTrafficPolicy: Local
  ports: [{{name: a, port: 80}}]
---{}---{}"#,
        slice("itp", "node-b"),
        slice("etp", "node-b")
    );
    let input = dir.join("input.yaml");
    fs::write(&input, &yaml).unwrap();
    let mut table = ServiceTable::new(Programmer::adopt_with(
        MemMaps::default(),
        Capacities::default(),
    ));
    let mut ctl = controller();
    apply_file(&mut ctl, &input);
    ctl.full_sync(&mut table, Instant::now());
    // itp: both ports (internal); etp: one port, however many external addresses it has;
    // empty: no endpoint anywhere, rejected, not counted.
    assert_eq!(
        ctl.no_local_endpoints(),
        NoLocal {
            internal: 2,
            external: 1
        }
    );

    // An endpoint of itp moves to this node: an incremental sync takes its ports away.
    fs::write(
        &input,
        yaml.replacen("nodeName: node-b", "nodeName: node-a", 1),
    )
    .unwrap();
    // The unchanged objects again, and the changed slice.
    apply_file(&mut ctl, &input);
    ctl.flush(&mut table, Instant::now());
    assert_eq!(
        ctl.no_local_endpoints(),
        NoLocal {
            internal: 0,
            external: 1
        }
    );
    let _ = fs::remove_dir_all(&dir);
}
