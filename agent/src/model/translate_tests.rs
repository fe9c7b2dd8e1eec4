//! Unit tests of [`translate`], each from inline YAML manifests.

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

use super::*;
use crate::model::Severity;

const NODE: &str = "node-a";

/// Parses multi-document YAML into inputs for node `node-a` (namespace
/// defaults to "default", as in the manifest source).
fn inputs(yaml: &str) -> Inputs {
    let mut inputs = Inputs::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).expect("test YAML");
        if value.is_null() {
            continue;
        }
        let meta = &value["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("default").to_owned();
        let name = meta["name"].as_str().unwrap_or("").to_owned();
        match value["kind"].as_str().expect("kind") {
            "Service" => {
                let svc: Service = serde_yaml::from_value(value).expect("Service");
                inputs.services.insert((ns, name), svc);
            }
            "EndpointSlice" => {
                let slice: EndpointSlice = serde_yaml::from_value(value).expect("EndpointSlice");
                inputs.slices.insert((ns, name), slice);
            }
            "Node" => {
                let node: Node = serde_yaml::from_value(value).expect("Node");
                inputs.nodes.insert(name, node);
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    inputs
}

fn cfg() -> Config {
    Config {
        node_name: NODE.to_owned(),
        ..Config::default()
    }
}

/// Translates for node `node-a` with the default settings.
fn tr(inputs: &Inputs) -> (Desired, Vec<Diagnostic>) {
    translate(inputs, &cfg())
}

/// One line per frontend: `key kind -> backends [flags]`, in key order.
fn lines(desired: &Desired) -> Vec<String> {
    desired
        .frontends
        .iter()
        .map(|(key, fe)| {
            let backends: Vec<String> = fe
                .backends
                .iter()
                .map(|b| crate::model::SockAddr(b.ip, b.port).to_string())
                .collect();
            let mut line = format!("{key} {:?} -> [{}]", fe.kind, backends.join(" "));
            for (flag, set) in [
                ("terminating", fe.terminating),
                ("etp_local", fe.etp_local),
                ("itp_local", fe.itp_local),
                ("drop_no_local", fe.drop_no_local),
            ] {
                if set {
                    line.push(' ');
                    line.push_str(flag);
                }
            }
            line
        })
        .collect()
}

fn run(yaml: &str) -> (Vec<String>, Vec<Diagnostic>) {
    let (desired, diags) = tr(&inputs(yaml));
    (lines(&desired), diags)
}

fn warning(kind: &'static str, ns: &str, name: &str, reason: &str) -> Diagnostic {
    Diagnostic {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        reason: reason.to_owned(),
        severity: Severity::Warning,
    }
}

fn info(kind: &'static str, ns: &str, name: &str, reason: &str) -> Diagnostic {
    Diagnostic {
        severity: Severity::Info,
        ..warning(kind, ns, name, reason)
    }
}

fn key(ip: &str, port: u16) -> FrontendKey {
    FrontendKey {
        ip: ip.parse().unwrap(),
        port,
        proto: Protocol::Tcp,
        scope: Scope::External,
    }
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.1.0.2]
  conditions: {ready: true}
  nodeName: node-b
- addresses: [10.1.0.1]
  conditions: {ready: true}
  nodeName: node-a
"#;

#[test]
fn basic_cluster_ip() {
    let (desired, diags) = tr(&inputs(WEB));
    assert_eq!(diags, []);
    assert_eq!(
        lines(&desired),
        ["10.96.0.10:80/TCP ClusterIP -> [10.1.0.1:8080 10.1.0.2:8080]"]
    );
    let fe = &desired.frontends[&key("10.96.0.10", 80)];
    assert_eq!(
        fe.service,
        ServiceName {
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    assert_eq!(fe.port_name, "http");
    assert_eq!(fe.kind, FrontendKind::ClusterIP);
    assert_eq!(fe.affinity_timeout, None);
    assert!(!fe.terminating && !fe.etp_local && !fe.itp_local);
    assert!(fe.backends.iter().all(|b| b.proto == Protocol::Tcp));
}

#[test]
fn deterministic() {
    let inputs = inputs(WEB);
    assert_eq!(tr(&inputs), tr(&inputs.clone()));
}

#[test]
fn service_without_endpoints_still_has_a_frontend() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
"#;
    // Empty backends: the datapath rejects instead of letting the packet
    // wander to a non-existent address.
    assert_eq!(
        run(yaml),
        (vec!["10.96.0.11:80/TCP ClusterIP -> []".to_owned()], vec![])
    );
}

#[test]
fn multiport_resolved_by_name() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9100}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports:
- {name: metrics, port: 9100}
- {name: http, port: 8080}
endpoints:
- addresses: [10.1.0.5]
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(diags, []);
    assert_eq!(
        lines,
        [
            "10.96.0.20:80/TCP ClusterIP -> [10.1.0.5:8080]",
            "10.96.0.20:9090/TCP ClusterIP -> [10.1.0.5:9100]",
        ]
    );
}

#[test]
fn unnamed_port_matches_unnamed_slice_port_only() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  clusterIP: 10.96.0.21
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports:
- {name: "", port: 8080}
- {name: other, port: 9999}
endpoints:
- addresses: [10.1.0.5]
"#;
    assert_eq!(
        run(yaml).0,
        ["10.96.0.21:80/TCP ClusterIP -> [10.1.0.5:8080]"]
    );
}

#[test]
fn named_target_port_differs_per_slice() {
    // During a rollout that renumbers the container port, the old and new
    // pods resolve the named targetPort differently.
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-old
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.1.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-new
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints: [{addresses: [10.1.0.2]}]
"#;
    assert_eq!(
        run(yaml).0,
        ["10.96.0.22:80/TCP ClusterIP -> [10.1.0.1:8080 10.1.0.2:8081]"]
    );
}

#[test]
fn slices_merged_and_duplicates_counted_once() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  clusterIP: 10.96.0.23
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.1.0.3]
- addresses: [10.1.0.1]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-2
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.1.0.2]
- addresses: [10.1.0.1]
"#;
    assert_eq!(
        run(yaml).0,
        ["10.96.0.23:80/TCP ClusterIP -> [10.1.0.1:8080 10.1.0.2:8080 10.1.0.3:8080]"]
    );
}

#[test]
fn duplicate_endpoint_prefers_the_non_terminating_copy() {
    // The same IP terminating in one slice (old pod) and ready in another
    // (new pod reusing it): whatever the slice order, the ready one counts.
    for (first, second) in [("old", "zzz-new"), ("new", "zzz-old")] {
        let (old, new) = if first == "old" {
            (first, second)
        } else {
            (second, first)
        };
        let yaml = format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  clusterIP: 10.96.0.24
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {old}
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:
- addresses: [10.1.0.1]
  conditions: {{ready: false, serving: true, terminating: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {new}
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:
- addresses: [10.1.0.1]
  conditions: {{ready: true}}
"#
        );
        assert_eq!(
            run(&yaml).0,
            ["10.96.0.24:80/TCP ClusterIP -> [10.1.0.1:8080]"],
            "{first}"
        );
    }
}

#[test]
fn same_port_on_tcp_and_udp() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports:
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5354, protocol: TCP}
endpoints: [{addresses: [10.1.0.7]}]
"#;
    let (desired, diags) = tr(&inputs(yaml));
    assert_eq!(diags, []);
    assert_eq!(
        lines(&desired),
        [
            "10.96.0.10:53/TCP ClusterIP -> [10.1.0.7:5354]",
            "10.96.0.10:53/UDP ClusterIP -> [10.1.0.7:5353]"
        ]
    );
    let udp = FrontendKey {
        proto: Protocol::Udp,
        ..key("10.96.0.10", 53)
    };
    assert_eq!(desired.frontends[&udp].port_name, "dns");
    assert_eq!(desired.frontends[&udp].backends[0].proto, Protocol::Udp);
}

/// A service `app` (10.96.0.30:80) with one slice holding `endpoints`.
fn with_endpoints(endpoints: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  clusterIP: 10.96.0.30
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:
{endpoints}"#
    )
}

#[test]
fn ready_endpoints_win_over_terminating_ones() {
    let yaml = with_endpoints(
        r#"
- addresses: [10.1.0.1]
  conditions: {ready: true, serving: true, terminating: false}
- addresses: [10.1.0.2]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.1.0.3]
  conditions: {ready: false}
- addresses: [10.1.0.4]
"#,
    );
    // nil conditions mean ready.
    assert_eq!(
        run(&yaml).0,
        ["10.96.0.30:80/TCP ClusterIP -> [10.1.0.1:8080 10.1.0.4:8080]"]
    );
}

#[test]
fn terminating_fallback_when_nothing_is_ready() {
    let yaml = with_endpoints(
        r#"
- addresses: [10.1.0.1]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.1.0.2]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.1.0.3]
  conditions: {ready: false}
- addresses: [10.1.0.4]
  conditions: {ready: false, terminating: true}
"#,
    );
    // 10.1.0.4: a nil serving reads as true, as kube-proxy reads it.
    assert_eq!(
        run(&yaml).0,
        ["10.96.0.30:80/TCP ClusterIP -> [10.1.0.1:8080 10.1.0.4:8080] terminating"]
    );
}

#[test]
fn no_usable_endpoint_leaves_an_empty_frontend() {
    let yaml = with_endpoints(
        r#"
- addresses: [10.1.0.1]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.1.0.2]
  conditions: {ready: false, serving: true, terminating: false}
"#,
    );
    assert_eq!(
        run(&yaml),
        (vec!["10.96.0.30:80/TCP ClusterIP -> []".to_owned()], vec![])
    );
}

#[test]
fn malformed_endpoints_are_skipped_alone() {
    let yaml = with_endpoints(
        r#"
- addresses: [10.1.0.300]
- addresses: [fd00::1]
- addresses: []
- addresses: [10.1.0.1, 10.1.0.9]
"#,
    );
    let (lines, diags) = run(&yaml);
    // Only the first address of an endpoint counts.
    assert_eq!(lines, ["10.96.0.30:80/TCP ClusterIP -> [10.1.0.1:8080]"]);
    assert_eq!(
        diags,
        [
            warning(
                "EndpointSlice",
                "default",
                "app-1",
                r#"endpoint address "10.1.0.300" is not an IPv4 address"#
            ),
            warning(
                "EndpointSlice",
                "default",
                "app-1",
                r#"endpoint address "fd00::1" is not an IPv4 address"#
            ),
            warning(
                "EndpointSlice",
                "default",
                "app-1",
                "endpoints[2] has no addresses"
            ),
        ]
    );
}

#[test]
fn malformed_slices_and_slice_ports() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  clusterIP: 10.96.0.31
  ports: [{name: http, port: 80}, {name: admin, port: 81}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: unlabelled}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.1.0.9]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: admin, port: 70000}
- {name: other, protocol: QUIC, port: 1}
- {name: nothing}
endpoints: [{addresses: [10.1.0.1]}]
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(
        lines,
        [
            "10.96.0.31:80/TCP ClusterIP -> [10.1.0.1:8080]",
            "10.96.0.31:81/TCP ClusterIP -> []"
        ]
    );
    assert_eq!(
        diags,
        [
            warning(
                "EndpointSlice",
                "default",
                "app-1",
                r#"port "admin": port 70000 out of range"#
            ),
            warning(
                "EndpointSlice",
                "default",
                "app-1",
                r#"port "other": protocol "QUIC" is not valid"#
            ),
            warning(
                "EndpointSlice",
                "default",
                "app-1",
                r#"port "nothing": port number is missing"#
            ),
            warning(
                "EndpointSlice",
                "default",
                "unlabelled",
                "label kubernetes.io/service-name is missing"
            ),
        ]
    );
}

#[test]
fn slices_of_other_namespaces_families_and_proxies_are_ignored() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  clusterIP: 10.96.0.32
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-other-ns
  namespace: other
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.1.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-v6
  labels: {kubernetes.io/service-name: app}
addressType: IPv6
ports: [{port: 8080}]
endpoints: [{addresses: ["fd00::1"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-fqdn
  labels: {kubernetes.io/service-name: app}
addressType: FQDN
ports: [{port: 8080}]
endpoints: [{addresses: [example.com]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-mirror
  labels: {kubernetes.io/service-name: app, service.kubernetes.io/service-proxy-name: other}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.1.0.2]}]
"#;
    assert_eq!(
        run(yaml),
        (vec!["10.96.0.32:80/TCP ClusterIP -> []".to_owned()], vec![])
    );
}

/// A service `app` (10.96.0.40:80) with the given `sessionAffinity` lines.
fn with_affinity(affinity: &str) -> (Option<u32>, Vec<Diagnostic>) {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  clusterIP: 10.96.0.40
  ports: [{{port: 80}}]
{affinity}"#
    );
    let (desired, diags) = tr(&inputs(&yaml));
    (
        desired.frontends[&key("10.96.0.40", 80)].affinity_timeout,
        diags,
    )
}

#[test]
fn session_affinity() {
    assert_eq!(with_affinity(""), (None, vec![]));
    assert_eq!(with_affinity("  sessionAffinity: None"), (None, vec![]));
    assert_eq!(
        with_affinity("  sessionAffinity: ClientIP"),
        (Some(10_800), vec![])
    );
    let explicit = "  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}";
    assert_eq!(with_affinity(explicit), (Some(60), vec![]));
    let max = "  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}";
    assert_eq!(with_affinity(max), (Some(86_400), vec![]));
    for bad in [0, -5, 86_401] {
        let invalid = format!(
            "  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {bad}}}}}"
        );
        let reason = format!(
            "sessionAffinityConfig.clientIP.timeoutSeconds {bad} out of range 1..=86400: \
             using 10800"
        );
        assert_eq!(
            with_affinity(&invalid),
            (
                Some(10_800),
                vec![warning("Service", "default", "app", &reason)]
            )
        );
    }
    assert_eq!(
        with_affinity("  sessionAffinity: Cookie"),
        (
            None,
            vec![warning(
                "Service",
                "default",
                "app",
                r#"sessionAffinity "Cookie" is not valid: using None"#
            )]
        )
    );
}

#[test]
fn affinity_applies_to_every_frontend_of_the_service() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  type: NodePort
  clusterIP: 10.96.0.41
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.1.10}]
"#;
    let (desired, _) = tr(&inputs(yaml));
    assert_eq!(desired.frontends.len(), 2);
    assert!(
        desired
            .frontends
            .values()
            .all(|fe| fe.affinity_timeout == Some(30))
    );
}

#[test]
fn not_proxied_services_are_ignored_silently() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: headless}
spec:
  clusterIP: None
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless-list}
spec:
  clusterIPs: [None]
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: external}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: v1
kind: Service
metadata:
  name: other-proxy
  labels: {service.kubernetes.io/service-proxy-name: someone-else}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: unallocated}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: no-spec}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: headless-1
  labels: {kubernetes.io/service-name: headless}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.1.0.1]}]
"#;
    assert_eq!(run(yaml), (vec![], vec![]));
}

#[test]
fn sctp_port_is_reported_and_skipped() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: sig, namespace: tel}
spec:
  clusterIP: 10.96.0.60
  ports:
  - {name: sigtran, port: 2905, protocol: SCTP}
  - {port: 80, protocol: TCP}
  - {name: odd, port: 81, protocol: tcp}
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(lines, ["10.96.0.60:80/TCP ClusterIP -> []"]);
    assert_eq!(
        diags,
        [
            info(
                "Service",
                "tel",
                "sig",
                r#"port "sigtran": SCTP is not supported yet"#
            ),
            warning(
                "Service",
                "tel",
                "sig",
                r#"port "odd": protocol "tcp" is not valid"#
            ),
        ]
    );
}

#[test]
fn malformed_services_are_reported_and_the_rest_translated() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a-bad-ip, namespace: ns1}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: b-bad-port, namespace: ns1}
spec:
  type: NodePort
  clusterIP: 10.96.0.71
  ports:
  - {name: http, port: 70000}
  - {port: 0}
  - {name: np, port: 82, nodePort: 99999}
  - {name: ok, port: 81}
---
apiVersion: v1
kind: Service
metadata: {name: c-bad-type, namespace: ns1}
spec:
  type: Magic
  clusterIP: 10.96.0.72
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: d-bad-policy, namespace: ns1}
spec:
  clusterIP: 10.96.0.73
  internalTrafficPolicy: Nearby
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: e-good, namespace: ns2}
spec:
  clusterIP: 10.96.0.74
  ports: [{port: 80}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(
        lines,
        [
            "10.96.0.71:81/TCP ClusterIP -> []",
            "10.96.0.73:80/TCP ClusterIP -> []",
            "10.96.0.74:80/TCP ClusterIP -> []",
        ]
    );
    assert_eq!(
        diags,
        [
            warning(
                "Service",
                "ns1",
                "a-bad-ip",
                r#"clusterIP "10.96.0.300" is not an IP address"#
            ),
            warning(
                "Service",
                "ns1",
                "b-bad-port",
                r#"port "http": port 70000 out of range"#
            ),
            warning(
                "Service",
                "ns1",
                "b-bad-port",
                "ports[1]: port 0 out of range"
            ),
            warning(
                "Service",
                "ns1",
                "b-bad-port",
                r#"port "np": nodePort 99999 out of range"#
            ),
            warning(
                "Service",
                "ns1",
                "c-bad-type",
                r#"type "Magic" is not a service type"#
            ),
            warning(
                "Service",
                "ns1",
                "d-bad-policy",
                r#"internalTrafficPolicy "Nearby" is not valid: using Cluster"#
            ),
        ]
    );
}

#[test]
fn missing_names_are_reported() {
    let mut inputs = inputs(WEB);
    let svc = inputs.services.values().next().unwrap().clone();
    let slice = inputs.slices.values().next().unwrap().clone();
    let unnamed = |mut meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.name = None;
        meta
    };
    inputs.services.insert(
        ("shop".into(), String::new()),
        Service {
            metadata: unnamed(svc.metadata.clone()),
            ..svc
        },
    );
    inputs.slices.insert(
        ("shop".into(), String::new()),
        EndpointSlice {
            metadata: unnamed(slice.metadata.clone()),
            ..slice
        },
    );
    let (desired, diags) = tr(&inputs);
    assert_eq!(desired.frontends.len(), 1);
    assert_eq!(
        diags,
        [
            warning("EndpointSlice", "shop", "", "metadata.name is missing"),
            warning("Service", "shop", "", "metadata.name is missing"),
        ]
    );
}

/// Endpoints on node-a (local) and node-b, plus one without a node.
const SLICE_TWO_NODES: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels: {kubernetes.io/service-name: app}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.1.0.1], nodeName: node-a}
- {addresses: [10.1.0.2], nodeName: node-b}
- {addresses: [10.1.0.3]}
- addresses: [10.1.0.4]
  nodeName: node-a
  conditions: {ready: false, serving: true, terminating: true}
"#;

#[test]
fn internal_traffic_policy_local() {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  internalTrafficPolicy: Local
  ports: [{{port: 80, nodePort: 30080}}]
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: 192.168.1.10}}]
---{SLICE_TWO_NODES}"#
    );
    let (lines, diags) = run(&yaml);
    assert_eq!(diags, []);
    // The ClusterIP only reaches this node's ready endpoint; the NodePort
    // (external traffic, externalTrafficPolicy Cluster) reaches them all.
    assert_eq!(
        lines,
        [
            "10.96.0.80:80/TCP ClusterIP -> [10.1.0.1:8080] itp_local",
            "192.168.1.10:30080/TCP NodePort -> [10.1.0.1:8080 10.1.0.2:8080 10.1.0.3:8080]",
        ]
    );
}

#[test]
fn internal_traffic_policy_local_falls_back_to_local_terminating() {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  clusterIP: 10.96.0.81
  internalTrafficPolicy: Local
  ports: [{{port: 80}}]
---{}"#,
        // Drop the ready local endpoint: the local terminating one remains.
        SLICE_TWO_NODES.replace("- {addresses: [10.1.0.1], nodeName: node-a}\n", "")
    );
    assert_eq!(
        run(&yaml).0,
        ["10.96.0.81:80/TCP ClusterIP -> [10.1.0.4:8080] terminating itp_local"]
    );
}

/// kube-proxy's rule for a Local policy without a usable local endpoint
/// (nftables proxier: `drop` when `hasEndpoints`, the reject chain when the
/// Service has no endpoint at all), for both policies, one row per case:
/// (endpoints, what the ClusterIP with iTP Local does, what the NodePort
/// with eTP Local does). `hasEndpoints` counts ready endpoints and
/// serving-terminating ones anywhere; not-serving ones count for nothing.
#[test]
fn local_policy_without_local_endpoints_drops_and_without_any_rejects() {
    let rows: &[(&str, &str, &str)] = &[
        (
            "- {addresses: [10.1.0.1], nodeName: node-a}",
            "[10.1.0.1:8080]",
            "[10.1.0.1:8080]",
        ),
        (
            "- {addresses: [10.1.0.1], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}",
            "[10.1.0.1:8080] terminating",
            "[10.1.0.1:8080] terminating",
        ),
        (
            "- {addresses: [10.1.0.2], nodeName: node-b}",
            "[] drop_no_local",
            "[] drop_no_local",
        ),
        (
            "- {addresses: [10.1.0.2], nodeName: node-b, conditions: {ready: false, serving: true, terminating: true}}",
            "[] drop_no_local",
            "[] drop_no_local",
        ),
        (
            "- {addresses: [10.1.0.2], nodeName: node-b, conditions: {ready: false, serving: false, terminating: true}}",
            "[]",
            "[]",
        ),
        (
            "- {addresses: [10.1.0.1], nodeName: node-a, conditions: {ready: false, serving: false}}",
            "[]",
            "[]",
        ),
        ("[]", "[]", "[]"),
    ];
    for &(endpoints, itp, etp) in rows {
        let endpoints = if endpoints == "[]" {
            " []".to_owned()
        } else {
            format!("\n{endpoints}")
        };
        let yaml = format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: itp}}
spec:
  clusterIP: 10.96.0.82
  internalTrafficPolicy: Local
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: etp}}
spec:
  type: NodePort
  clusterIP: 10.96.0.83
  externalTrafficPolicy: Local
  ports: [{{port: 80, nodePort: 30083}}]
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: 192.168.1.10}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: itp-1
  labels: {{kubernetes.io/service-name: itp}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:{endpoints}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: etp-1
  labels: {{kubernetes.io/service-name: etp}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:{endpoints}
"#
        );
        let (lines, diags) = run(&yaml);
        assert_eq!(diags, [], "{endpoints}");
        let itp_line = format!("10.96.0.82:80/TCP ClusterIP -> {itp} itp_local")
            .replace("] terminating itp_local", "] terminating itp_local")
            .replace(" drop_no_local itp_local", " itp_local drop_no_local");
        let etp_line = format!("192.168.1.10:30083/TCP NodePort -> {etp} etp_local")
            .replace(" drop_no_local etp_local", " etp_local drop_no_local");
        assert!(
            lines.contains(&itp_line),
            "{endpoints}: {itp_line} not in {lines:#?}"
        );
        assert!(
            lines.contains(&etp_line),
            "{endpoints}: {etp_line} not in {lines:#?}"
        );
    }
}

#[test]
fn external_traffic_policy_local_gives_two_scopes() {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.90
  externalTrafficPolicy: Local
  externalIPs: [203.0.113.5]
  ports: [{{port: 80, nodePort: 30090}}]
status:
  loadBalancer:
    ingress: [{{ip: 198.51.100.7}}]
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
status:
  addresses: [{{type: InternalIP, address: 192.168.1.10}}]
---{SLICE_TWO_NODES}"#
    );
    let (lines, diags) = run(&yaml);
    assert_eq!(diags, []);
    let all = "[10.1.0.1:8080 10.1.0.2:8080 10.1.0.3:8080]";
    assert_eq!(
        lines,
        [
            format!("10.96.0.90:80/TCP ClusterIP -> {all}"),
            "192.168.1.10:30090/TCP NodePort -> [10.1.0.1:8080] etp_local".to_owned(),
            format!("192.168.1.10:30090/TCP (internal) NodePort -> {all}"),
            "198.51.100.7:80/TCP LoadBalancer -> [10.1.0.1:8080] etp_local".to_owned(),
            format!("198.51.100.7:80/TCP (internal) LoadBalancer -> {all}"),
            "203.0.113.5:80/TCP ExternalIP -> [10.1.0.1:8080] etp_local".to_owned(),
            format!("203.0.113.5:80/TCP (internal) ExternalIP -> {all}"),
        ]
    );
}

#[test]
fn node_ports_on_this_nodes_addresses() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  clusterIP: 10.96.0.100
  ports:
  - {name: web, port: 80, nodePort: 30100}
  - {name: udp, port: 81, nodePort: 30101, protocol: UDP}
  - {name: unallocated, port: 82}
---
apiVersion: v1
kind: Service
metadata: {name: stale}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.101
  ports: [{port: 80, nodePort: 30102}]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
  - {type: InternalIP, address: "fd00::10"}
  - {type: ExternalIP, address: 203.0.113.10}
  - {type: ExternalIP, address: 192.168.1.10}
  - {type: Hostname, address: node-a}
  - {type: InternalIP, address: not-an-ip}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status:
  addresses: [{type: InternalIP, address: 192.168.1.11}]
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(
        lines,
        [
            "10.96.0.100:80/TCP ClusterIP -> []",
            "10.96.0.100:81/UDP ClusterIP -> []",
            "10.96.0.100:82/TCP ClusterIP -> []",
            "10.96.0.101:80/TCP ClusterIP -> []",
            "192.168.1.10:30100/TCP NodePort -> []",
            "192.168.1.10:30101/UDP NodePort -> []",
            "203.0.113.10:30100/TCP NodePort -> []",
            "203.0.113.10:30101/UDP NodePort -> []",
        ]
    );
    assert_eq!(
        diags,
        [warning(
            "Node",
            "",
            "node-a",
            r#"InternalIP address "not-an-ip" is not an IP address"#
        )]
    );
}

#[test]
fn missing_node_is_reported_once() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  clusterIP: 10.96.0.102
  ports: [{name: a, port: 80, nodePort: 30100}, {name: b, port: 81, nodePort: 30101}]
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(
        lines,
        [
            "10.96.0.102:80/TCP ClusterIP -> []",
            "10.96.0.102:81/TCP ClusterIP -> []"
        ]
    );
    assert_eq!(
        diags,
        [warning(
            "Node",
            "",
            NODE,
            "Node object not found: NodePorts are not programmed"
        )]
    );
}

#[test]
fn load_balancer_ingress_and_external_ips() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.110
  externalIPs: [203.0.113.1, 203.0.113.999]
  ports: [{port: 443, targetPort: 8443}]
status:
  loadBalancer:
    ingress:
    - {ip: 198.51.100.1}
    - {hostname: lb.example.com}
    - {ip: 198.51.100.2, ipMode: Proxy}
    - {ip: 198.51.100.3, ipMode: VIP}
---
apiVersion: v1
kind: Service
metadata: {name: not-lb}
spec:
  clusterIP: 10.96.0.111
  externalIPs: [203.0.113.2]
  ports: [{port: 80}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.9}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-1
  labels: {kubernetes.io/service-name: lb}
addressType: IPv4
ports: [{port: 8443}]
endpoints: [{addresses: [10.1.0.1]}]
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(
        lines,
        [
            "10.96.0.110:443/TCP ClusterIP -> [10.1.0.1:8443]",
            "10.96.0.111:80/TCP ClusterIP -> []",
            "198.51.100.1:443/TCP LoadBalancer -> [10.1.0.1:8443]",
            "198.51.100.3:443/TCP LoadBalancer -> [10.1.0.1:8443]",
            "203.0.113.1:443/TCP ExternalIP -> [10.1.0.1:8443]",
            "203.0.113.2:80/TCP ExternalIP -> []",
        ]
    );
    assert_eq!(
        diags,
        [warning(
            "Service",
            "default",
            "lb",
            r#"externalIP "203.0.113.999" is not an IP address"#
        )]
    );
}

#[test]
fn load_balancer_source_ranges_apply_to_lb_ips_only() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.112
  externalIPs: [192.0.2.7]
  loadBalancerSourceRanges: [10.0.0.0/8, " 192.168.1.77/24", "fd00::/8", 203.0.113.9]
  ports: [{port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
"#;
    let (desired, diags) = tr(&inputs(yaml));
    assert_eq!(diags, []);
    let ranges: Vec<(String, FrontendKind, Vec<String>)> = desired
        .frontends
        .iter()
        .map(|(k, f)| {
            (
                k.to_string(),
                f.kind,
                f.source_ranges.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let lb = ranges
        .iter()
        .find(|r| r.1 == FrontendKind::LoadBalancer)
        .expect("LB frontend");
    // Host bits cleared, a bare address is a /32; the IPv6 ranges are the
    // IPv6 frontends' (this IPv4-only service has none).
    assert_eq!(lb.2, ["10.0.0.0/8", "192.168.1.0/24", "203.0.113.9/32"]);
    for r in ranges.iter().filter(|r| r.1 != FrontendKind::LoadBalancer) {
        assert!(
            r.2.is_empty(),
            "{r:?}: kube-proxy restricts only the LB IPs"
        );
    }
}

#[test]
fn a_malformed_source_range_skips_the_service_closed() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.112
  loadBalancerSourceRanges: [10.0.0.0/33]
  ports: [{port: 80}]
"#;
    let (lines, diags) = run(yaml);
    assert!(lines.is_empty());
    assert_eq!(
        diags,
        [warning(
            "Service",
            "default",
            "lb",
            "loadBalancerSourceRanges entry \"10.0.0.0/33\" is not a CIDR: service skipped"
        )]
    );
}

#[test]
fn lb_algorithm_annotation_and_default() {
    let yaml = |annotation: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: s, annotations: {{{annotation}}}}}
spec: {{clusterIP: 10.96.0.5, ports: [{{port: 80}}]}}
"#
        )
    };
    let maglev = |yaml: &str, default: bool| {
        let i = inputs(yaml);
        let cfg = Config {
            maglev_default: default,
            ..cfg()
        };
        let (d, diags) = translate(&i, &cfg);
        (
            d.frontends.values().next().expect("frontend").maglev,
            diags.len(),
        )
    };
    assert_eq!(maglev(&yaml(""), false), (false, 0));
    assert_eq!(maglev(&yaml(""), true), (true, 0));
    assert_eq!(
        maglev(&yaml("ferry.io/lb-algorithm: maglev"), false),
        (true, 0)
    );
    assert_eq!(
        maglev(&yaml("ferry.io/lb-algorithm: random"), true),
        (false, 0)
    );
    assert_eq!(maglev(&yaml("ferry.io/lb-algorithm: rr"), true), (true, 1));
}

#[test]
fn health_check_node_port_counts_local_endpoints() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80}, {name: alt, port: 81}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: alt, port: 8081}]
endpoints:
- {addresses: [10.1.0.1], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.1.0.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.1.0.3], nodeName: node-b, conditions: {ready: true}}
"#;
    let (desired, _) = tr(&inputs(yaml));
    let hc = &desired.health_checks[&ServiceName {
        namespace: "default".into(),
        name: "web".into(),
    }];
    assert_eq!(
        (hc.node_port, hc.local_ready, hc.local_terminating),
        (32000, 1, 1)
    );
    // Cluster policy: no health check node port, whatever the spec says.
    let cluster = yaml.replace(
        "externalTrafficPolicy: Local",
        "externalTrafficPolicy: Cluster",
    );
    assert!(tr(&inputs(&cluster)).0.health_checks.is_empty());
}

/// A dual-stack Service is programmed per family, as kube-proxy's two
/// proxiers do: each family's ClusterIP, node addresses, externalIPs and
/// load-balancer IPs get that family's endpoints (the slices of its
/// addressType) and source ranges; an address of a family the Service
/// lacks is not served; an IPv6-only Service is served whole.
#[test]
fn dual_stack_services_are_programmed_per_family() {
    let yaml = r#"
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
  - {type: InternalIP, address: "fd00:1::10"}
---
apiVersion: v1
kind: Service
metadata: {name: dual}
spec:
  type: LoadBalancer
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: PreferDualStack
  clusterIP: "fd00:96::5"
  clusterIPs: ["fd00:96::5", 10.96.0.120]
  externalIPs: ["2001:db8::1", 203.0.113.3]
  loadBalancerSourceRanges: [10.0.0.0/8, "2001:db8:aa::/48"]
  ports: [{port: 80, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: "2001:db8::2"}, {ip: 198.51.100.2}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v4
  labels: {kubernetes.io/service-name: dual}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.5], nodeName: node-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dual-v6
  labels: {kubernetes.io/service-name: dual}
addressType: IPv6
ports: [{port: 8080}]
endpoints:
- {addresses: ["fd00:10:244::5"], nodeName: node-a}
- {addresses: [10.244.0.9]}
---
apiVersion: v1
kind: Service
metadata: {name: v6only}
spec:
  ipFamilies: [IPv6]
  clusterIP: "fd00:96::6"
  clusterIPs: ["fd00:96::6"]
  externalIPs: [203.0.113.6]
  ports: [{port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: v6only-a
  labels: {kubernetes.io/service-name: v6only}
addressType: IPv6
ports: [{port: 5353, protocol: UDP}]
endpoints:
- {addresses: ["fd00:10:244::7"]}
- {addresses: ["fd00:10:244::8"]}
"#;
    let (desired, diags) = tr(&inputs(yaml));
    assert_eq!(
        lines(&desired),
        [
            "10.96.0.120:80/TCP ClusterIP -> [10.244.0.5:8080]",
            "192.168.1.10:30080/TCP NodePort -> [10.244.0.5:8080]",
            "198.51.100.2:80/TCP LoadBalancer -> [10.244.0.5:8080]",
            "203.0.113.3:80/TCP ExternalIP -> [10.244.0.5:8080]",
            "[2001:db8::1]:80/TCP ExternalIP -> [[fd00:10:244::5]:8080]",
            "[2001:db8::2]:80/TCP LoadBalancer -> [[fd00:10:244::5]:8080]",
            "[fd00:1::10]:30080/TCP NodePort -> [[fd00:10:244::5]:8080]",
            "[fd00:96::5]:80/TCP ClusterIP -> [[fd00:10:244::5]:8080]",
            "[fd00:96::6]:53/UDP ClusterIP -> [[fd00:10:244::7]:5353 [fd00:10:244::8]:5353]",
        ],
        "203.0.113.6 is an IPv4 externalIP of an IPv6-only service: not served"
    );
    let ranges = |ip: &str| -> Vec<String> {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let (_, f) = desired
            .frontends
            .iter()
            .find(|(k, _)| k.ip == ip)
            .expect("frontend");
        f.source_ranges.iter().map(ToString::to_string).collect()
    };
    assert_eq!(ranges("198.51.100.2"), ["10.0.0.0/8"]);
    assert_eq!(ranges("2001:db8::2"), ["2001:db8:aa::/48"]);
    assert!(ranges("fd00:96::5").is_empty(), "LB IPs only");
    assert_eq!(
        desired
            .frontends
            .values()
            .find(|f| f.local_backends.iter().any(|b| b.ip.is_ipv6()))
            .map(|f| f.service.name.as_str()),
        Some("dual"),
        "the IPv6 endpoint on this node is local"
    );
    assert_eq!(
        diags,
        [warning(
            "EndpointSlice",
            "default",
            "dual-v6",
            "endpoint address \"10.244.0.9\" is not an IPv6 address"
        )]
    );
}

#[test]
fn a_second_cluster_ip_of_one_family_is_ignored() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: twice}
spec:
  clusterIPs: [10.96.0.121, 10.96.0.122, "::ffff:10.96.0.123"]
  ports: [{port: 80}]
"#;
    let (lines, diags) = run(yaml);
    assert_eq!(lines, ["10.96.0.121:80/TCP ClusterIP -> []"]);
    assert_eq!(
        diags,
        [
            warning(
                "Service",
                "default",
                "twice",
                "clusterIPs: \"10.96.0.122\" is a second IPv4 address: ignored"
            ),
            warning(
                "Service",
                "default",
                "twice",
                "clusterIPs: \"::ffff:10.96.0.123\" is a second IPv4 address: ignored"
            ),
        ]
    );
}

#[test]
fn conflicting_frontends_keep_the_first_service() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: b-second, namespace: a}
spec:
  clusterIP: 10.96.0.130
  ports: [{name: web, port: 80}, {name: other, port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: a-first, namespace: a}
spec:
  clusterIP: 10.96.0.130
  externalIPs: [203.0.113.4]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: c-third, namespace: a}
spec:
  clusterIP: 10.96.0.131
  externalIPs: [203.0.113.4]
  externalTrafficPolicy: Local
  ports: [{port: 80}]
"#;
    let (desired, diags) = tr(&inputs(yaml));
    assert_eq!(
        lines(&desired),
        [
            "10.96.0.130:80/TCP ClusterIP -> []",
            "10.96.0.130:81/TCP ClusterIP -> []",
            "10.96.0.131:80/TCP ClusterIP -> []",
            "203.0.113.4:80/TCP ExternalIP -> []",
        ]
    );
    assert_eq!(
        desired.frontends[&key("10.96.0.130", 80)].service.name,
        "a-first"
    );
    assert_eq!(
        desired.frontends[&key("10.96.0.130", 81)].service.name,
        "b-second"
    );
    // c-third's internal entry is not programmed either: the pair goes
    // together.
    assert_eq!(
        diags,
        [
            warning(
                "Service",
                "a",
                "b-second",
                "ClusterIP frontend 10.96.0.130:80/TCP conflicts with the ClusterIP frontend of service a/a-first: skipped"
            ),
            warning(
                "Service",
                "a",
                "c-third",
                "ExternalIP frontend 203.0.113.4:80/TCP conflicts with the ExternalIP frontend of service a/a-first: skipped"
            ),
        ]
    );
}

#[test]
fn topology_hints_keep_this_zones_endpoints_when_all_are_hinted() {
    let yaml = |distribution: &str, hint_c: &str| {
        format!(
            r#"
apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: zone-a}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{clusterIP: 10.96.0.40, {distribution} ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [10.1.0.1], zone: zone-a, hints: {{forZones: [{{name: zone-a}}]}}}}
- {{addresses: [10.1.0.2], zone: zone-b, hints: {{forZones: [{{name: zone-b}}]}}}}
- {{addresses: [10.1.0.3], zone: zone-b{hint_c}}}
"#
        )
    };
    let hinted = ", hints: {forZones: [{name: zone-b}]}";
    let all = "10.96.0.40:80/TCP ClusterIP -> [10.1.0.1:8080 10.1.0.2:8080 10.1.0.3:8080]";
    let ours = "10.96.0.40:80/TCP ClusterIP -> [10.1.0.1:8080]";
    assert_eq!(
        run(&yaml("trafficDistribution: PreferClose,", hinted)).0,
        [ours]
    );
    // As kube-proxy: the hints decide, whether or not the Service asked (the
    // EndpointSlice controller only writes them when it did).
    assert_eq!(run(&yaml("", hinted)).0, [ours]);
    // One ready endpoint without hints: kube-proxy ignores all hints.
    assert_eq!(run(&yaml("trafficDistribution: PreferClose,", "")).0, [all]);
}

/// kube-proxy's endpoint choice for cluster-wide traffic
/// (pkg/proxy/topology.go `CategorizeEndpoints`, `topologyModeFromHints`,
/// `availableForTopology`), as a table: this node is node-a in zone-a;
/// each row gives the endpoints (address suffix, ready, serving,
/// terminating, node hints, zone hints) and the suffixes kube-proxy keeps.
#[test]
fn topology_follows_kube_proxys_rules_case_by_case() {
    struct Ep {
        n: u8,
        ready: bool,
        terminating: bool,
        nodes: &'static [&'static str],
        zones: &'static [&'static str],
    }
    const fn ep(n: u8, nodes: &'static [&'static str], zones: &'static [&'static str]) -> Ep {
        Ep {
            n,
            ready: true,
            terminating: false,
            nodes,
            zones,
        }
    }
    const fn unready(n: u8, nodes: &'static [&'static str], zones: &'static [&'static str]) -> Ep {
        Ep {
            n,
            ready: false,
            terminating: false,
            nodes,
            zones,
        }
    }
    const fn draining(n: u8, zones: &'static [&'static str]) -> Ep {
        Ep {
            n,
            ready: false,
            terminating: true,
            nodes: &[],
            zones,
        }
    }
    let cases: &[(&str, bool, &[Ep], &[u8])] = &[
        (
            "no hints: every ready endpoint",
            true,
            &[ep(1, &[], &[]), ep(2, &[], &[])],
            &[1, 2],
        ),
        (
            "all zone-hinted, some for this zone: those",
            true,
            &[
                ep(1, &[], &["zone-a"]),
                ep(2, &[], &["zone-b"]),
                ep(3, &[], &["zone-c"]),
                ep(4, &[], &["zone-a"]),
            ],
            &[1, 4],
        ),
        (
            "an endpoint hinted for several zones counts for each",
            true,
            &[ep(1, &[], &["zone-a", "zone-b"]), ep(2, &[], &["zone-b"])],
            &[1],
        ),
        (
            "one ready endpoint without hints: hints ignored",
            true,
            &[
                ep(1, &[], &["zone-a"]),
                ep(2, &[], &["zone-b"]),
                ep(3, &[], &[]),
            ],
            &[1, 2, 3],
        ),
        (
            "no endpoint hinted for this zone: hints ignored",
            true,
            &[ep(1, &[], &["zone-b"]), ep(2, &[], &["zone-c"])],
            &[1, 2],
        ),
        (
            "this node has no zone label: zone hints ignored",
            false,
            &[ep(1, &[], &["zone-a"]), ep(2, &[], &["zone-b"])],
            &[1, 2],
        ),
        (
            "an unready endpoint without hints does not count",
            true,
            &[
                ep(1, &[], &["zone-a"]),
                ep(2, &[], &["zone-b"]),
                unready(3, &[], &[]),
            ],
            &[1],
        ),
        (
            "all node-hinted, one for this node: only those (PreferSameNode)",
            true,
            &[
                ep(1, &["node-a"], &["zone-a"]),
                ep(2, &["node-b"], &["zone-a"]),
                ep(3, &["node-c"], &["zone-b"]),
            ],
            &[1],
        ),
        (
            "all node-hinted, none for this node: zone hints decide",
            true,
            &[
                ep(1, &["node-b"], &["zone-a"]),
                ep(2, &["node-c"], &["zone-b"]),
            ],
            &[1],
        ),
        (
            "one without a node hint: zone hints decide",
            true,
            &[
                ep(1, &["node-a"], &["zone-b"]),
                ep(2, &[], &["zone-a"]),
                ep(3, &["node-c"], &["zone-b"]),
            ],
            &[2],
        ),
        (
            "node hints without zone hints, none for this node: every endpoint",
            true,
            &[ep(1, &["node-b"], &[]), ep(2, &["node-c"], &[])],
            &[1, 2],
        ),
        (
            "no ready endpoint: the serving terminating ones, whatever their hints",
            true,
            &[
                draining(1, &["zone-b"]),
                draining(2, &["zone-c"]),
                unready(3, &[], &["zone-a"]),
            ],
            &[1, 2],
        ),
        (
            "nothing usable: no endpoint (the datapath rejects)",
            true,
            &[unready(1, &[], &["zone-a"])],
            &[],
        ),
    ];
    let names = |list: &[&str]| {
        list.iter()
            .map(|n| format!("{{name: {n}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (what, zoned, eps, want) in cases {
        let label = if *zoned {
            ", labels: {topology.kubernetes.io/zone: zone-a}"
        } else {
            ""
        };
        let mut yaml = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a{label}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
             spec: {{clusterIP: 10.96.0.40, ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        );
        for e in *eps {
            let mut hints = Vec::new();
            if !e.nodes.is_empty() {
                hints.push(format!("forNodes: [{}]", names(e.nodes)));
            }
            if !e.zones.is_empty() {
                hints.push(format!("forZones: [{}]", names(e.zones)));
            }
            yaml += &format!(
                "- {{addresses: [10.1.0.{}], conditions: {{ready: {}, serving: {}, terminating: {}}}, \
                 hints: {{{}}}}}\n",
                e.n,
                e.ready,
                e.ready || e.terminating,
                e.terminating,
                hints.join(", ")
            );
        }
        let backends: Vec<String> = want.iter().map(|n| format!("10.1.0.{n}:8080")).collect();
        let draining = want
            .iter()
            .all(|n| eps.iter().any(|e| e.n == *n && e.terminating));
        let suffix = if draining && !want.is_empty() {
            " terminating"
        } else {
            ""
        };
        assert_eq!(
            run(&yaml).0,
            [format!(
                "10.96.0.40:80/TCP ClusterIP -> [{}]{suffix}",
                backends.join(" ")
            )],
            "{what}"
        );
    }
}

#[test]
fn every_nodes_addresses_are_the_cluster_node_ips() {
    let yaml = r#"
kind: Node
metadata: {name: node-a}
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
  - {type: Hostname, address: node-a}
---
kind: Node
metadata: {name: node-b}
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.11}
  - {type: ExternalIP, address: 203.0.113.11}
  - {type: InternalIP, address: "fd00::11"}
  - {type: InternalIP, address: 192.168.1.300}
---
kind: Node
metadata: {name: node-c}
"#;
    let (desired, diags) = tr(&inputs(yaml));
    let ips: Vec<String> = desired
        .cluster_node_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        ips,
        ["192.168.1.10", "192.168.1.11", "203.0.113.11", "fd00::11"]
    );
    assert_eq!(
        desired.node_ips,
        [std::net::IpAddr::from([192, 168, 1, 10])]
    );
    assert_eq!(
        diags,
        [warning(
            "Node",
            "",
            "node-b",
            "InternalIP address \"192.168.1.300\" is not an IP address"
        )]
    );
}
