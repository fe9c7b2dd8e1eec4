//! The static source: Services, EndpointSlices and Nodes from YAML or JSON
//! files, as `kubectl get -o yaml` or `kubectl apply -f` would take them.
//!
//! [`load`] reads a file or a directory once; [`watch`] polls it and sends a
//! new [`Update`] whenever the content changes. Anything that is not one of
//! the three kinds (Deployments, ConfigMaps...) is ignored, so a directory of
//! real application manifests can be pointed at as is.

use std::{
    collections::BTreeMap,
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    Metadata, Resource,
    api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_yaml::Value;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::Update;
use crate::model::{Diagnostic, Inputs, Severity};

/// How often [`watch`] looks at the files' metadata.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Every this many polls the contents are re-read even when names, sizes
/// and mtimes look unchanged: a same-size rewrite within the filesystem's
/// timestamp granularity is otherwise invisible (5 s).
const FULL_READ_EVERY: u32 = 25;

/// Namespace of namespaced objects that do not say (as `kubectl apply`).
const DEFAULT_NAMESPACE: &str = "default";

/// The manifests cannot be read at all (as opposed to a bad document in
/// them, which is a [`Diagnostic`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> SourceError {
    let path = path.to_owned();
    move |source| SourceError::Read { path, source }
}

/// The objects of one read of the manifests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub services: BTreeMap<(String, String), Service>,
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
    pub diagnostics: Vec<Diagnostic>,
    /// A hash of the files' names and contents: equal fingerprints mean
    /// nothing changed (within one process: the hasher is not stable across
    /// Rust versions).
    pub fingerprint: u64,
}

impl Loaded {
    /// The snapshot a source sends, for the node ferry runs on.
    pub fn into_update(self, node_name: String) -> Update {
        Update {
            inputs: Inputs {
                services: self.services,
                slices: self.slices,
                nodes: self.nodes,
                node_name,
                // Agent settings, filled in by the agent.
                ..Inputs::default()
            },
            diagnostics: self.diagnostics,
        }
    }
}

/// Reads `path`: a manifest file, or a directory whose `*.yaml`, `*.yml` and
/// `*.json` files (not recursive) are read in name order.
pub fn load(path: &Path) -> Result<Loaded, SourceError> {
    load_files(&scan(path)?)
}

// ---------------------------------------------------------------------------
// Files

/// What the poller compares to notice a change without reading contents.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// An atomic replace (rename, ConfigMap symlink swap) changes the inode
    /// even when size and mtime happen to match.
    inode: u64,
}

fn stamp(path: PathBuf, meta: &fs::Metadata) -> FileStamp {
    FileStamp {
        path,
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    }
}

fn is_manifest_name(name: &str) -> bool {
    // Dotfiles are editor leftovers (".#x.yaml" lock links, swap files) and
    // a ConfigMap volume's "..data" internals: never manifests.
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The manifest files of `path`, sorted, with their metadata.
fn scan(path: &Path) -> Result<Vec<FileStamp>, SourceError> {
    let meta = fs::metadata(path).map_err(read_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![stamp(path.to_owned(), &meta)]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_error(path))? {
        let entry = entry.map_err(read_error(path))?;
        if !entry.file_name().to_str().is_some_and(is_manifest_name) {
            continue;
        }
        let file = entry.path();
        // fs::metadata follows symlinks, as ConfigMap volumes are made of
        // them. A dangling link or a subdirectory is not a manifest.
        match fs::metadata(&file) {
            Ok(meta) if meta.is_file() => files.push(stamp(file, &meta)),
            Ok(_) => {}
            Err(e) => debug!(file = %file.display(), error = %e, "skipped"),
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn load_files(files: &[FileStamp]) -> Result<Loaded, SourceError> {
    let mut loaded = Loaded::default();
    let mut hasher = DefaultHasher::new();
    for file in files {
        let bytes = fs::read(&file.path).map_err(read_error(&file.path))?;
        file.path.hash(&mut hasher);
        bytes.hash(&mut hasher);
        loaded.add_file(&file.path, &bytes);
    }
    loaded.fingerprint = hasher.finish();
    Ok(loaded)
}

// ---------------------------------------------------------------------------
// Documents

/// Where a document comes from.
#[derive(Clone, Copy)]
struct Doc<'a> {
    /// The file, for diagnostics.
    origin: &'a str,
    /// 1-based position in the file.
    index: usize,
    /// The file's text, for a precise error; None for a List item.
    text: Option<&'a str>,
}

/// The error of deserializing document `index` (1-based) of `text` straight
/// into `T`: unlike going through a [`Value`], it names the field and the
/// line in the file ("spec.ports[0].port: invalid type... at line 9...").
fn precise_error<T: DeserializeOwned>(text: &str, index: usize) -> Option<String> {
    let doc = serde_yaml::Deserializer::from_str(text).nth(index - 1)?;
    T::deserialize(doc).err().map(|e| one_line(&e))
}

/// A serde error on one line, for a diagnostic.
fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Loaded {
    fn add_file(&mut self, path: &Path, bytes: &[u8]) {
        let origin = path.display().to_string();
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => return self.manifest_problem(&origin, format!("not UTF-8 text: {e}")),
        };
        // Documents are converted one at a time (a file of 100,000
        // endpoints held as YAML values would cost hundreds of MiB) into a
        // staging set for this file, merged only if the whole file parses: a
        // syntax error fails the file, as half a file could drop objects that
        // are really there. (JSON is YAML too.)
        let mut staged = Loaded::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            // Stop at the first error: the iterator would repeat it forever.
            match Value::deserialize(doc) {
                Ok(value) => {
                    let at = Doc {
                        origin: &origin,
                        index: i + 1,
                        text: Some(text),
                    };
                    staged.add_document(at, value);
                }
                Err(e) => return self.manifest_problem(&origin, one_line(&e)),
            }
        }
        self.merge(staged);
    }

    /// Adds one file's objects and diagnostics to the set read so far.
    fn merge(&mut self, file: Loaded) {
        self.diagnostics.extend(file.diagnostics);
        for (k, v) in file.services {
            insert(&mut self.services, k, v, &mut self.diagnostics);
        }
        for (k, v) in file.slices {
            insert(&mut self.slices, k, v, &mut self.diagnostics);
        }
        for (k, v) in file.nodes {
            insert(&mut self.nodes, k, v, &mut self.diagnostics);
        }
    }

    fn manifest_problem(&mut self, origin: &str, reason: String) {
        self.diagnostics.push(Diagnostic {
            kind: "manifest",
            namespace: String::new(),
            name: origin.to_owned(),
            reason,
            severity: Severity::Warning,
        });
    }

    /// Dispatches one document (or List item) on apiVersion and kind.
    fn add_document(&mut self, at: Doc<'_>, doc: Value) {
        let Doc { origin, index, .. } = at;
        if doc.is_null() {
            return; // an empty document, e.g. a trailing "---"
        }
        let (Some(api_version), Some(kind)) = (doc["apiVersion"].as_str(), doc["kind"].as_str())
        else {
            let reason = format!("document {index}: not a Kubernetes object (no apiVersion/kind)");
            return self.manifest_problem(origin, reason);
        };
        match (api_version, kind) {
            (_, kind) if kind.ends_with("List") && doc["items"].is_sequence() => {
                // `kubectl get -o yaml` output: kind List (or ServiceList...). Indexing
                // looked through YAML tags (`!x {kind: List, items: !y [...]}`): so does this.
                let mut doc = doc;
                if let Some(items) = doc.get_mut("items").and_then(Value::as_sequence_mut) {
                    for item in std::mem::take(items) {
                        self.add_document(Doc { text: None, ..at }, item);
                    }
                }
            }
            (Service::API_VERSION, Service::KIND) => {
                if let Some((key, svc)) = self.object::<Service>(at, doc, true) {
                    insert(&mut self.services, key, svc, &mut self.diagnostics);
                }
            }
            (EndpointSlice::API_VERSION, EndpointSlice::KIND) => {
                if let Some((key, slice)) = self.object::<EndpointSlice>(at, doc, true) {
                    insert(&mut self.slices, key, slice, &mut self.diagnostics);
                }
            }
            (Node::API_VERSION, Node::KIND) => {
                if let Some(((_, name), node)) = self.object::<Node>(at, doc, false) {
                    insert(&mut self.nodes, name, node, &mut self.diagnostics);
                }
            }
            (_, Service::KIND) => self.unsupported_version::<Service>(&doc, api_version, true),
            (_, EndpointSlice::KIND) => {
                self.unsupported_version::<EndpointSlice>(&doc, api_version, true)
            }
            (_, Node::KIND) => self.unsupported_version::<Node>(&doc, api_version, false),
            _ => debug!(%origin, %api_version, %kind, "ignored"),
        }
    }

    /// A kind ferry reads, in a version it does not (e.g. the removed
    /// discovery.k8s.io/v1beta1): ignoring it silently would hide the
    /// endpoints the user meant.
    fn unsupported_version<T: Resource>(
        &mut self,
        doc: &Value,
        api_version: &str,
        namespaced: bool,
    ) {
        let (namespace, name) = identity(doc, namespaced);
        self.diagnostics.push(Diagnostic {
            kind: T::KIND,
            namespace,
            name: name.unwrap_or_default(),
            // Escaped: a reason stays one line whatever the file says.
            reason: format!(
                "apiVersion {} is not supported: ignored",
                api_version.escape_debug()
            ),
            severity: Severity::Warning,
        });
    }

    /// Deserializes a document into `T`, keyed by (namespace, name). The
    /// namespace defaults to "default" and is written into the object, so
    /// that the translation sees what the API server would have stored.
    fn object<T>(
        &mut self,
        at: Doc<'_>,
        doc: Value,
        namespaced: bool,
    ) -> Option<((String, String), T)>
    where
        T: DeserializeOwned + Resource + Metadata<Ty = ObjectMeta>,
    {
        let (namespace, name) = identity(&doc, namespaced);
        let diag = |reason: String| Diagnostic {
            kind: T::KIND,
            namespace: namespace.clone(),
            name: name.clone().unwrap_or_default(),
            reason,
            severity: Severity::Warning,
        };
        let Some(name) = name.clone().filter(|n| !n.is_empty()) else {
            self.diagnostics
                .push(diag("metadata.name is missing".to_owned()));
            return None;
        };
        let mut object: T = match serde_yaml::from_value(doc) {
            Ok(object) => object,
            Err(e) => {
                let precise = at.text.and_then(|text| precise_error::<T>(text, at.index));
                self.diagnostics
                    .push(diag(precise.unwrap_or_else(|| one_line(&e))));
                return None;
            }
        };
        // A YAML tag can make a second `name` key that indexing skips and deserializing
        // keeps (`name: a` then `! name: b`): the object must be the one its key names
        // (found by the manifest_yaml fuzz target).
        if object.metadata().name.as_deref() != Some(name.as_str()) {
            let reason = "metadata.name is given more than once".to_owned();
            self.diagnostics.push(diag(reason));
            return None;
        }
        if namespaced {
            object.metadata_mut().namespace = Some(namespace.clone());
        }
        Some(((namespace, name), object))
    }
}

/// The namespace (defaulted; empty for cluster-scoped kinds) and name of a
/// raw document, for diagnostics even when it does not deserialize.
fn identity(doc: &Value, namespaced: bool) -> (String, Option<String>) {
    let meta = &doc["metadata"];
    let namespace = if namespaced {
        meta["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    } else {
        ""
    };
    (
        namespace.to_owned(),
        meta["name"].as_str().map(str::to_owned),
    )
}

/// Inserts an object; a second definition replaces the first, as a second
/// `kubectl apply` would, and is reported since it is likely a mistake.
fn insert<K, T>(map: &mut BTreeMap<K, T>, key: K, object: T, diags: &mut Vec<Diagnostic>)
where
    K: Ord + Clone,
    T: Resource + Metadata<Ty = ObjectMeta>,
{
    let meta = object.metadata();
    if map.contains_key(&key) {
        diags.push(Diagnostic {
            kind: T::KIND,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            reason: "defined more than once: the last definition wins".to_owned(),
            severity: Severity::Warning,
        });
    }
    map.insert(key, object);
}

// ---------------------------------------------------------------------------
// Watching

/// Polls `path` every [`POLL_INTERVAL`] and sends an [`Update`] for the
/// first load at once, then whenever the content changes.
///
/// A change is only read once the files' names, sizes and mtimes have held
/// still for one interval, so a file caught mid-write is not applied; a read
/// error keeps the previous state (with a warning) and is retried. If the
/// very first load fails the path is wrong: the error is logged and `watch`
/// returns, closing the channel. It also returns when the receiver is gone.
pub async fn watch(path: PathBuf, node_name: String, tx: mpsc::Sender<Update>) {
    let mut poller = Poller::new(path.clone());
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        interval.tick().await; // the first tick is immediate
        if tx.is_closed() {
            return;
        }
        // File I/O blocks: keep it off the runtime's worker threads.
        let (back, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = poller.poll();
            (poller, outcome)
        })
        .await
        .expect("the manifest poller panicked");
        poller = back;
        match outcome {
            Ok(changed) => {
                if failing {
                    info!(path = %path.display(), "manifests readable again");
                    failing = false;
                }
                let Some(loaded) = changed else { continue };
                debug!(fingerprint = loaded.fingerprint, "manifests changed");
                if tx
                    .send(loaded.into_update(node_name.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if !poller.has_loaded() => {
                error!(error = %e, "cannot load the manifests");
                return;
            }
            Err(e) => {
                // Once per failure streak, not every 200 ms.
                if !failing {
                    warn!(error = %e, "cannot re-read the manifests: keeping the previous state");
                    failing = true;
                }
            }
        }
    }
}

/// The polling state machine behind [`watch`], synchronous so it can be
/// tested without timers.
struct Poller {
    path: PathBuf,
    /// The stamps of the last successful load (None before the first).
    loaded: Option<Vec<FileStamp>>,
    /// A changed set of stamps seen on the previous poll, read once it holds
    /// still.
    settling: Option<Vec<FileStamp>>,
    /// The fingerprint of the last content sent.
    fingerprint: Option<u64>,
    polls: u32,
}

impl Poller {
    fn new(path: PathBuf) -> Self {
        Poller {
            path,
            loaded: None,
            settling: None,
            fingerprint: None,
            polls: 0,
        }
    }

    fn has_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// One poll: Some when the content changed since the last one returned
    /// (always on the first successful poll). An error leaves the state as
    /// it was, so the next poll retries.
    fn poll(&mut self) -> Result<Option<Loaded>, SourceError> {
        self.polls = self.polls.wrapping_add(1);
        let stamps = scan(&self.path)?;
        if self.loaded.as_ref() == Some(&stamps) {
            self.settling = None;
            if !self.polls.is_multiple_of(FULL_READ_EVERY) {
                return Ok(None);
            }
        } else if self.loaded.is_some() && self.settling.as_ref() != Some(&stamps) {
            // Changed: read once it has held still for one interval, so a
            // file caught mid-write is not applied. (The first load is not
            // delayed.)
            self.settling = Some(stamps);
            return Ok(None);
        }
        let loaded = load_files(&stamps)?;
        self.loaded = Some(stamps);
        self.settling = None;
        if self.fingerprint == Some(loaded.fingerprint) {
            return Ok(None); // touched, or rewritten with the same content
        }
        self.fingerprint = Some(loaded.fingerprint);
        Ok(Some(loaded))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("ferry-manifests-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, content).unwrap();
            path
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

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_owned(), name.to_owned())
    }

    fn names<V>(map: &BTreeMap<(String, String), V>) -> Vec<String> {
        map.keys()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect()
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

    #[test]
    fn single_file_with_several_documents() {
        let dir = TempDir::new();
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
        let text = format!("---\n{SERVICE}---\n---\n{SLICE}---\n{deployment}---\n{NODE}---\n");
        let file = dir.write("all.yaml", &text);
        let loaded = load(&file).unwrap();
        assert_eq!(loaded.diagnostics, []);
        assert_eq!(names(&loaded.services), ["default/web"]);
        assert_eq!(names(&loaded.slices), ["shop/web-1"]);
        assert_eq!(loaded.nodes.keys().collect::<Vec<_>>(), ["node-a"]);
        // The defaulted namespace is written into the object too.
        let svc = &loaded.services[&key("default", "web")];
        assert_eq!(svc.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(loaded.nodes["node-a"].metadata.namespace, None);
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
        let loaded = load(&dir.0).unwrap();
        assert_eq!(names(&loaded.services), ["default/api", "default/web"]);
        assert_eq!(names(&loaded.slices), ["shop/web-1"]);
        assert_eq!(loaded.nodes.len(), 1);
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
                    let indented: Vec<String> =
                        doc.trim().lines().map(|l| format!("  {l}")).collect();
                    format!("- {}\n", indented.join("\n").trim_start())
                })
                .collect::<String>()
        );
        dir.write("list.yaml", &list);
        let json = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-j"}}"#;
        dir.write("node.json", json);
        let loaded = load(&dir.0).unwrap();
        assert_eq!(loaded.diagnostics, []);
        assert_eq!(names(&loaded.services), ["default/web"]);
        assert_eq!(names(&loaded.slices), ["shop/web-1"]);
        assert_eq!(loaded.nodes.keys().collect::<Vec<_>>(), ["node-j"]);
    }

    #[test]
    fn tagged_lists_are_expanded_like_plain_ones() {
        // Found by the manifest_doc fuzz target: this file made the agent panic.
        let dir = TempDir::new();
        let file = dir.write(
            "tagged.yaml",
            "!x {apiVersion: v1, kind: List, items: []}\n",
        );
        let loaded = load(&file).unwrap();
        assert_eq!(loaded.diagnostics, []);
        assert!(loaded.services.is_empty());
        let items = "--- !x\napiVersion: v1\nkind: List\nitems: !y\n- !z {apiVersion: v1, \
                     kind: Node, metadata: {name: node-t}}\n";
        let loaded = load(&dir.write("items.yaml", items)).unwrap();
        assert_eq!(loaded.nodes.keys().collect::<Vec<_>>(), ["node-t"]);
    }

    #[test]
    fn a_name_given_twice_through_a_tag_is_reported() {
        let dir = TempDir::new();
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: gin\n  ! name: vue\n";
        let loaded = load(&dir.write("twice.yaml", text)).unwrap();
        assert!(loaded.services.is_empty());
        assert_eq!(
            loaded.diagnostics,
            [warning(
                "Service",
                "default",
                "gin",
                "metadata.name is given more than once"
            )]
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
        let loaded = load(&file).unwrap();
        assert_eq!(names(&loaded.services), ["default/web"]);
        assert!(loaded.slices.is_empty());
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
        assert!(!diags[0].reason.contains('\n'));
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
        let loaded = load(&dir.0).unwrap();
        let spec = loaded.services[&key("default", "web")]
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.99"));
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
        let err = load(&missing).unwrap_err();
        let SourceError::Read { path, source } = &err;
        assert_eq!(path, &missing);
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn fingerprint_follows_names_and_contents() {
        let dir = TempDir::new();
        dir.write("a.yaml", SERVICE);
        let first = load(&dir.0).unwrap().fingerprint;
        assert_eq!(load(&dir.0).unwrap().fingerprint, first);
        dir.write("a.yaml", &SERVICE.replace("80", "81"));
        let second = load(&dir.0).unwrap().fingerprint;
        assert_ne!(second, first);
        fs::rename(dir.0.join("a.yaml"), dir.0.join("b.yaml")).unwrap();
        assert_ne!(load(&dir.0).unwrap().fingerprint, second);
    }

    #[test]
    fn into_update_carries_everything() {
        let dir = TempDir::new();
        let file = dir.write("x.yaml", &format!("{SERVICE}---\n{NODE}---\nkind: nope\n"));
        let loaded = load(&file).unwrap();
        let update = loaded.clone().into_update("node-a".to_owned());
        assert_eq!(update.inputs.node_name, "node-a");
        assert_eq!(update.inputs.services, loaded.services);
        assert_eq!(update.inputs.nodes, loaded.nodes);
        assert_eq!(update.diagnostics, loaded.diagnostics);
        assert_eq!(update.diagnostics.len(), 1);
    }

    #[test]
    fn poller_sends_first_load_then_settled_changes_only() {
        let dir = TempDir::new();
        dir.write("a.yaml", SERVICE);
        let mut poller = Poller::new(dir.0.clone());
        let first = poller.poll().unwrap().expect("the first poll loads");
        assert_eq!(names(&first.services), ["default/web"]);
        assert!(poller.poll().unwrap().is_none(), "nothing changed");

        dir.write("b.yaml", &SERVICE.replace("web", "api"));
        assert!(
            poller.poll().unwrap().is_none(),
            "a change waits one interval"
        );
        let changed = poller.poll().unwrap().expect("then it is read");
        assert_eq!(names(&changed.services), ["default/api", "default/web"]);

        // Rewritten with the same content: nothing to send.
        dir.write("b.yaml", &SERVICE.replace("web", "api"));
        for _ in 0..3 {
            assert!(poller.poll().unwrap().is_none());
        }
    }

    #[test]
    fn poller_waits_for_a_file_being_written() {
        let dir = TempDir::new();
        dir.write("a.yaml", SERVICE);
        let mut poller = Poller::new(dir.0.clone());
        poller.poll().unwrap().unwrap();
        // Seen half-written, then complete before the next poll: only the
        // complete file is ever read.
        dir.write("b.yaml", "apiVersion: v1\nkind: Serv");
        assert!(poller.poll().unwrap().is_none());
        dir.write("b.yaml", &SERVICE.replace("web", "api"));
        assert!(poller.poll().unwrap().is_none());
        let loaded = poller.poll().unwrap().unwrap();
        assert_eq!(loaded.diagnostics, []);
        assert_eq!(loaded.services.len(), 2);
    }

    #[test]
    fn poller_keeps_state_through_read_errors() {
        let dir = TempDir::new();
        let sub = dir.0.join("m");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("a.yaml"), SERVICE).unwrap();
        let mut poller = Poller::new(sub.clone());
        let first = poller.poll().unwrap().unwrap();
        fs::rename(&sub, dir.0.join("away")).unwrap();
        assert!(poller.poll().is_err());
        assert!(poller.poll().is_err());
        assert!(poller.has_loaded());
        // Back with the same content: no update, the state never changed.
        fs::rename(dir.0.join("away"), &sub).unwrap();
        for _ in 0..3 {
            assert!(poller.poll().unwrap().is_none());
        }
        assert_eq!(poller.fingerprint, Some(first.fingerprint));
    }

    #[tokio::test]
    async fn watch_sends_updates_and_stops_with_the_receiver() {
        let dir = TempDir::new();
        dir.write("a.yaml", SERVICE);
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(dir.0.clone(), "node-a".to_owned(), tx));
        let wait = Duration::from_secs(5);
        let first = tokio::time::timeout(wait, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.inputs.node_name, "node-a");
        assert_eq!(names(&first.inputs.services), ["default/web"]);

        // A different size: seen at once even with coarse mtimes.
        dir.write("a.yaml", &SERVICE.replace("web", "apis"));
        let second = tokio::time::timeout(wait, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(names(&second.inputs.services), ["default/apis"]);

        drop(rx);
        tokio::time::timeout(wait, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn watch_gives_up_when_the_first_load_fails() {
        let dir = TempDir::new();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(dir.0.join("missing"), "node-a".to_owned(), tx));
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert!(closed.is_none());
        task.await.unwrap();
    }
}
