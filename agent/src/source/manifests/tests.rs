//! The manifest source: what one read finds, and what the watcher sends as
//! files come, change and go (real files, real inotify).

use std::{
    fs,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::*;
use crate::model::{ServiceName, Severity, objects::ObjKey};

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-manifests-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, content).unwrap();
        path
    }

    /// Writes `name` atomically (a temporary dotfile renamed in), as tools
    /// and ConfigMap updates do.
    fn replace(&self, name: &str, content: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
"#;

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.1.0.1]}]
"#;

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.1.10}]
"#;

fn names(l: &Loaded) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        l.objects.services.keys().map(ToString::to_string).collect(),
        l.objects
            .slices
            .keys()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect(),
        l.objects.nodes.keys().cloned().collect(),
    )
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

fn svc(ns: &str, name: &str) -> ServiceName {
    ServiceName {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[test]
fn single_file_with_several_documents() {
    let dir = TempDir::new();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
    let text = format!("---\n{SERVICE}---\n---\n{SLICE}---\n{deployment}---\n{NODE}---\n");
    let file = dir.write("all.yaml", &text);
    let loaded = load(&file, "node-a").unwrap();
    assert_eq!(loaded.diagnostics, []);
    assert_eq!(
        names(&loaded),
        (
            vec!["default/web".into()],
            vec!["shop/web-1".into()],
            vec!["node-a".into()]
        )
    );
    let slice = &loaded.objects.slices[&ObjKey::new("shop", "web-1")];
    assert_eq!(slice.service.as_deref(), Some("web"));
}

#[test]
fn directory_with_several_files_and_garbage() {
    let dir = TempDir::new();
    dir.write("b-slices.yml", &format!("{SLICE}---\n{NODE}"));
    dir.write(
        "a-services.yaml",
        &format!("{SERVICE}---\n{}", SERVICE.replace("web", "api")),
    );
    dir.write(
        "c-garbage.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    );
    dir.write("d-prose.yaml", "just some words\n");
    dir.write("README.md", "apiVersion: not even read");
    dir.write(".hidden.yaml", "{{{");
    fs::create_dir(dir.0.join("sub.yaml")).unwrap();
    fs::create_dir(dir.0.join("nested")).unwrap();
    dir.write("nested/x.yaml", &SERVICE.replace("web", "nested"));
    let loaded = load(&dir.0, "node-a").unwrap();
    let (services, slices, nodes) = names(&loaded);
    assert_eq!(services, ["default/api", "default/web"]);
    assert_eq!(slices, ["shop/web-1"]);
    assert_eq!(nodes.len(), 1);
    let garbage = dir.0.join("c-garbage.yaml").display().to_string();
    let prose = dir.0.join("d-prose.yaml").display().to_string();
    assert_eq!(loaded.diagnostics.len(), 2, "{:?}", loaded.diagnostics);
    let d = &loaded.diagnostics[0];
    assert_eq!(
        (d.kind, d.name.as_str(), d.severity),
        ("manifest", garbage.as_str(), Severity::Warning)
    );
    assert!(
        !d.reason.contains('\n') && !d.reason.is_empty(),
        "{}",
        d.reason
    );
    assert_eq!(
        loaded.diagnostics[1],
        warning(
            "manifest",
            "",
            &prose,
            "document 1: not a Kubernetes object (no apiVersion/kind)"
        )
    );
}

#[test]
fn lists_are_expanded_and_json_is_read() {
    let dir = TempDir::new();
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}",
        [SERVICE, SLICE]
            .iter()
            .map(|doc| {
                let indented: Vec<String> = doc.trim().lines().map(|l| format!("  {l}")).collect();
                format!("- {}\n", indented.join("\n").trim_start())
            })
            .collect::<String>()
    );
    dir.write("list.yaml", &list);
    let json = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-j"}}"#;
    dir.write("node.json", json);
    let loaded = load(&dir.0, "node-a").unwrap();
    assert_eq!(loaded.diagnostics, []);
    assert_eq!(
        names(&loaded),
        (
            vec!["default/web".into()],
            vec!["shop/web-1".into()],
            vec!["node-j".into()]
        )
    );
}

#[test]
fn bad_objects_are_reported_and_skipped() {
    let dir = TempDir::new();
    let bad_port = SERVICE
        .replace("name: web}", "name: bad, namespace: ns1}")
        .replace("port: 80", "port: eighty");
    let no_name = "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns2}\nspec: {}\n";
    let old_slice = SLICE.replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1");
    let no_kind = "apiVersion: v1\nmetadata: {name: x}\n";
    let text = [SERVICE, &bad_port, no_name, &old_slice, no_kind].join("---\n");
    let file = dir.write("mixed.yaml", &text);
    let loaded = load(&file, "node-a").unwrap();
    assert_eq!(names(&loaded).0, ["default/web"]);
    assert!(loaded.objects.slices.is_empty());
    let diags = &loaded.diagnostics;
    assert_eq!(diags.len(), 4, "{diags:?}");
    assert_eq!(
        (diags[0].kind, &*diags[0].namespace, &*diags[0].name),
        ("Service", "ns1", "bad")
    );
    // The field path and the line in the file are named.
    assert_eq!(
        diags[0].reason,
        r#"spec.ports[0].port: invalid type: string "eighty", expected i32 at line 15 column 30"#
    );
    assert_eq!(
        diags[1],
        warning("Service", "ns2", "", "metadata.name is missing")
    );
    assert_eq!(
        diags[2],
        warning(
            "EndpointSlice",
            "shop",
            "web-1",
            "apiVersion discovery.k8s.io/v1beta1 is not supported: ignored"
        )
    );
    let origin = file.display().to_string();
    assert_eq!(
        diags[3],
        warning(
            "manifest",
            "",
            &origin,
            "document 5: not a Kubernetes object (no apiVersion/kind)"
        )
    );
}

#[test]
fn duplicates_keep_the_last_definition() {
    let dir = TempDir::new();
    dir.write("a.yaml", SERVICE);
    dir.write("b.yaml", &SERVICE.replace("10.96.0.10", "10.96.0.99"));
    let loaded = load(&dir.0, "node-a").unwrap();
    let spec = loaded.objects.services[&svc("default", "web")]
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        spec.cluster_ips,
        ["10.96.0.99".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        loaded.diagnostics,
        [warning(
            "Service",
            "default",
            "web",
            "defined more than once: the last definition wins"
        )]
    );
}

#[test]
fn missing_path_is_an_error_naming_it() {
    let dir = TempDir::new();
    let missing = dir.0.join("nope");
    let err = load(&missing, "node-a").unwrap_err();
    let SourceError::Read { path, source } = &err;
    assert_eq!(path, &missing);
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_yaml_tag_on_an_object_is_looked_through_not_a_panic() {
    let dir = TempDir::new();
    // The 44 bytes that once reached unreachable!().
    let file = dir.write("tag.yaml", "!x {apiVersion: v1, kind: List, items: []}");
    let loaded = load(&file, "node-a").unwrap();
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let file = dir.write(
        "tag.yaml",
        "!x {apiVersion: v1, kind: List, items: [!y {apiVersion: v1, kind: Service, \
         metadata: {name: web}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}]}\n\
         ---\n!z\napiVersion: v1\nkind: Service\nmetadata: {name: api}\n\
         spec: {clusterIP: 10.96.0.2, ports: [{port: !w 80}]}\n",
    );
    let loaded = load(&file, "node-a").unwrap();
    let names: Vec<&str> = loaded
        .objects
        .services
        .keys()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(names, ["api", "web"], "{loaded:?}");
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    // The fuzzer's shape (CI, manifest_doc): tags and anchors on the
    // top-level scalars themselves, block style. Once read as "not ours".
    let file = dir.write(
        "tag.yaml",
        r#"--- !x &a0
apiVersion: !x &a1 v1  # c
items: !x &a2
  - !x &a3
    apiVersion: *a1
    kind: !x Service  # c
    metadata: {name: !x web}
    spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
kind: !x &a4 List  # c
"#,
    );
    let loaded = load(&file, "node-a").unwrap();
    let names: Vec<&str> = loaded
        .objects
        .services
        .keys()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(names, ["web"], "{loaded:?}");
}

#[test]
fn files_over_the_size_caps_are_refused_with_a_diagnostic() {
    let dir = TempDir::new();
    dir.write("a.yaml", SERVICE);
    dir.write("b.yaml", &SERVICE.replace("web", "big"));
    let limits = Limits {
        file_bytes: 1 << 20,
        total_bytes: SERVICE.len() as u64 + 10,
    };
    let stamps = scan(&dir.0, limits).unwrap();
    let refused: Vec<bool> = stamps.values().map(|s| s.refused.is_some()).collect();
    assert_eq!(refused, [false, true], "the file past the total is refused");
    let reads = read_files(&stamps, &Known::new(), "n", limits);
    let err = reads[1].1.as_ref().unwrap_err();
    assert!(err.reason.contains("more than"), "{}", err.reason);
    let small = Limits {
        file_bytes: 10,
        total_bytes: 1 << 30,
    };
    let stamps = scan(&dir.0, small).unwrap();
    assert!(stamps.values().all(|s| {
        s.refused
            .as_deref()
            .is_some_and(|r| r.contains("byte limit"))
    }));
}

/// Receives events until `pred` holds for one (5 s at most); returns all.
async fn until(rx: &mut mpsc::Receiver<Event>, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no matching event; saw {seen:#?}"))
            .expect("the source stopped");
        let done = pred(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

fn applied_service(ev: &Event, name: &str) -> bool {
    matches!(ev, Event::Service(Delta::Applied(s)) if s.name.name == name)
}

#[tokio::test]
async fn watch_sends_only_what_changed_in_the_file_that_changed() {
    let dir = TempDir::new();
    dir.write(
        "a.yaml",
        &format!("{SERVICE}---\n{}", SERVICE.replace("web", "db")),
    );
    dir.write("b.yaml", &SERVICE.replace("web", "cache"));
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(watch(dir.0.clone(), "node-a".to_owned(), tx));
    let first = until(&mut rx, |e| matches!(e, Event::Node(Delta::Listed(_)))).await;
    let applied = first
        .iter()
        .filter(|e| matches!(e, Event::Service(Delta::Applied(_))))
        .count();
    assert_eq!(applied, 3);
    assert!(
        first.contains(&Event::Service(Delta::Listed(vec![])))
            || first
                .iter()
                .any(|e| matches!(e, Event::Service(Delta::Listed(l)) if l.len() == 3))
    );

    // One document of a.yaml changes; b.yaml is not read again.
    dir.replace(
        "a.yaml",
        &format!(
            "{SERVICE}---\n{}",
            SERVICE
                .replace("web", "db")
                .replace("10.96.0.10", "10.96.0.11")
        ),
    );
    let got = until(
        &mut rx,
        |e| matches!(e, Event::FileProblems { file, .. } if file.ends_with("a.yaml")),
    )
    .await;
    assert!(got.iter().any(|e| applied_service(e, "db")));
    assert!(!got.iter().any(|e| applied_service(e, "cache")), "{got:#?}");

    // A file removed: its objects are deleted.
    fs::remove_file(dir.0.join("b.yaml")).unwrap();
    until(
        &mut rx,
        |e| matches!(e, Event::Service(Delta::Deleted(n)) if n.name == "cache"),
    )
    .await;

    // A file that stops parsing keeps its objects.
    dir.replace(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [\n",
    );
    let got = until(
        &mut rx,
        |e| matches!(e, Event::FileProblems { diags, .. } if !diags.is_empty()),
    )
    .await;
    assert!(
        !got.iter()
            .any(|e| matches!(e, Event::Service(Delta::Deleted(_)))),
        "{got:#?}"
    );

    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// A path that cannot be read at start is waited for, sending nothing (no listing: the agent
/// must not turn ready on nothing), and the wait ends with the receiver.
#[tokio::test]
async fn watch_waits_for_a_missing_path_and_stops_with_its_receiver() {
    let dir = TempDir::new();
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(watch(dir.0.join("missing"), "node-a".to_owned(), tx));
    let nothing = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(
        nothing.is_err(),
        "no event while the path is missing: {nothing:?}"
    );
    assert!(!task.is_finished());
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the watch ends with its receiver")
        .unwrap();
}

/// An empty directory is a complete (empty) listing: every kind is listed at once, so the
/// agent becomes ready and serves nothing until files appear (it waited for a first file).
#[tokio::test]
async fn an_empty_directory_lists_every_kind() {
    let dir = TempDir::new();
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(watch(dir.0.clone(), "node-a".to_owned(), tx));
    let first = until(&mut rx, |e| matches!(e, Event::Node(Delta::Listed(_)))).await;
    assert!(
        first.contains(&Event::Service(Delta::Listed(vec![]))),
        "{first:?}"
    );
    assert!(
        first.contains(&Event::Slice(Delta::Listed(vec![]))),
        "{first:?}"
    );
    // A file written afterwards is read as usual.
    dir.write("a.yaml", SERVICE);
    until(&mut rx, |e| matches!(e, Event::Service(Delta::Applied(_)))).await;
    task.abort();
}

/// A path that cannot be read at start (not made yet) is tried again: once it appears, it is
/// read and listed, and the agent can become ready.
#[tokio::test]
async fn a_directory_made_after_start_is_read_then() {
    let dir = TempDir::new();
    let later = dir.0.join("later");
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(watch(later.clone(), "node-a".to_owned(), tx));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing to send while the path is missing"
    );
    std::fs::create_dir(&later).unwrap();
    std::fs::write(later.join("a.yaml"), SERVICE).unwrap();
    let first = until(&mut rx, |e| matches!(e, Event::Node(Delta::Listed(_)))).await;
    assert!(
        first
            .iter()
            .any(|e| matches!(e, Event::Service(Delta::Applied(_)))),
        "{first:?}"
    );
    task.abort();
}
