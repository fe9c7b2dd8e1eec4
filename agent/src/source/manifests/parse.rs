//! One manifest file → the objects ferry reads, as `kubectl apply -f` would
//! take them: multi-document YAML, JSON, `kind: List` (`kubectl get -o
//! yaml`). Anything that is not a Service, EndpointSlice or Node
//! (Deployments, ConfigMaps...) is skipped without being parsed, so a
//! directory of real application manifests can be pointed at as is.
//!
//! Documents are split at their `---` markers and each is deserialized on
//! its own, straight into its type when its apiVersion and kind stand
//! plainly at the top (the usual case, the fast path), else through a
//! generic YAML value (flow style, JSON, Lists, tags). A YAML syntax error
//! anywhere fails the whole file, since half a file could drop objects that
//! are really there; a document that is valid YAML but not a valid object
//! is reported, naming the field and the line in the file, and skipped.
//! No input reaches a panic: the fuzz target `manifests` holds this to it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::model::{
    Diagnostic, Severity,
    docs::{NodeDoc, ServiceDoc, SliceDoc},
    objects::{NodeObj, ObjKey, ServiceObj, SliceObj},
};

/// What parsing needs to know of each kind ferry reads.
trait Kind: DeserializeOwned + Into<Obj> {
    const API_VERSION: &'static str;
    const KIND: &'static str;
    fn meta(&self) -> &ObjectMeta;
}

impl Kind for ServiceDoc {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "Service";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Kind for SliceDoc {
    const API_VERSION: &'static str = "discovery.k8s.io/v1";
    const KIND: &'static str = "EndpointSlice";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Kind for NodeDoc {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "Node";
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

type Service = ServiceDoc;
type EndpointSlice = SliceDoc;
type Node = NodeDoc;

/// Namespace of namespaced objects that do not say (as `kubectl apply`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The objects of one file, in document order, and its documents' problems.
#[derive(Debug, Default)]
pub struct Parsed {
    pub services: Vec<ServiceObj>,
    pub slices: Vec<SliceObj>,
    pub nodes: Vec<NodeObj>,
    pub problems: Vec<Diagnostic>,
}

/// A problem with `origin` (a file) as a whole.
pub fn file_problem(origin: &str, reason: impl Into<String>) -> Diagnostic {
    Diagnostic {
        kind: "manifest",
        namespace: String::new(),
        name: origin.to_owned(),
        reason: reason.into(),
        severity: Severity::Warning,
    }
}

/// Parses one file's bytes. Err: the file as a whole cannot be used (not
/// UTF-8, a YAML syntax error), and nothing of it should be applied.
pub fn parse(bytes: &[u8], origin: &str, node_name: &str) -> Result<Parsed, Diagnostic> {
    let mut all = Parsed::default();
    for doc in parse_docs(bytes, origin, node_name, &|_| false)? {
        if let Some(p) = doc.parsed {
            all.services.extend(p.services);
            all.slices.extend(p.slices);
            all.nodes.extend(p.nodes);
            all.problems.extend(p.problems);
        }
    }
    Ok(all)
}

/// One document of a file as read: its key, and what it gave (None: its
/// key was known, so it was not parsed).
#[derive(Debug)]
pub struct DocRead {
    pub key: u64,
    pub parsed: Option<Parsed>,
}

/// Parses the documents of one file whose key `known` does not know: a
/// file rewritten with one object changed costs the parse of that object's
/// document, not of the file. Err as [`parse`].
pub fn parse_docs(
    bytes: &[u8],
    origin: &str,
    node_name: &str,
    known: &dyn Fn(u64) -> bool,
) -> Result<Vec<DocRead>, Diagnostic> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| file_problem(origin, format!("not UTF-8 text: {e}")))?;
    let mut out = Vec::new();
    for doc in documents(text) {
        let key = doc.key();
        if known(key) {
            out.push(DocRead { key, parsed: None });
            continue;
        }
        let mut p = Parser {
            origin,
            node_name,
            out: Parsed::default(),
        };
        p.document(&doc)?;
        out.push(DocRead {
            key,
            parsed: Some(p.out),
        });
    }
    Ok(out)
}

/// One document of a file.
struct Doc<'a> {
    /// 1-based position in the file.
    index: usize,
    /// Lines of the file before it.
    line_offset: usize,
    text: &'a str,
}

impl Doc<'_> {
    /// Its text's hash (SipHash with fixed keys: an attacker who writes
    /// manifests can already write any object, and finding a second text
    /// with one document's 64-bit hash is out of reach). A document moved
    /// in its file keeps its key; one with problems is never skipped, since
    /// they name its position.
    fn key(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.text.hash(&mut h);
        h.finish()
    }
}

/// Splits a YAML stream at its document start markers (`---` at the start of
/// a line, alone or followed by a space or tab): YAML forbids such a line
/// inside a document, so this is where its own parser splits too. Each
/// chunk keeps its marker line.
fn documents(text: &str) -> Vec<Doc<'_>> {
    let mut starts = vec![0usize];
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if pos > 0 && is_marker(line) {
            starts.push(pos);
        }
        pos += line.len();
    }
    let mut docs = Vec::with_capacity(starts.len());
    let mut line_offset = 0;
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let chunk = &text[start..end];
        docs.push(Doc {
            index: i + 1,
            line_offset,
            text: chunk,
        });
        line_offset += chunk.matches('\n').count();
    }
    docs
}

fn is_marker(line: &str) -> bool {
    let rest = match line.strip_prefix("---") {
        Some(r) => r,
        None => return false,
    };
    rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r'])
}

/// The plain `key: value` at the top level of a block-style document (a
/// line starting in column 0), unquoted.
fn top_level<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    doc.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let v = rest.split(" #").next()?.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        // Only a plain word is taken: a tag, anchor, alias or flow value
        // (`kind: !x List`) is left to the generic parser.
        let plain = v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_'));
        (!v.is_empty() && plain).then_some(v)
    })
}

/// A serde_yaml error on one line, its location made relative to the file.
fn one_line(e: &serde_yaml::Error, line_offset: usize) -> String {
    let text: String = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let msg = text.strip_suffix(&suffix).unwrap_or(&text);
            format!(
                "{msg} at line {} column {}",
                loc.line() + line_offset,
                loc.column()
            )
        }
        None => text,
    }
}

struct Parser<'a> {
    origin: &'a str,
    node_name: &'a str,
    out: Parsed,
}

impl Parser<'_> {
    fn problem(&mut self, reason: String) {
        self.out.problems.push(file_problem(self.origin, reason));
    }

    fn document(&mut self, doc: &Doc<'_>) -> Result<(), Diagnostic> {
        // The fast path: apiVersion and kind plainly at the top.
        if let (Some(api_version), Some(kind)) = (
            top_level(doc.text, "apiVersion"),
            top_level(doc.text, "kind"),
        ) && !kind.ends_with("List")
        {
            return match (api_version, kind) {
                (Service::API_VERSION, Service::KIND) => self.typed::<Service>(doc, true),
                (EndpointSlice::API_VERSION, EndpointSlice::KIND) => {
                    self.typed::<EndpointSlice>(doc, true)
                }
                (Node::API_VERSION, Node::KIND) => self.typed::<Node>(doc, false),
                (_, Service::KIND | EndpointSlice::KIND | Node::KIND) => self.generic(doc),
                // Not ours: checked for syntax only when it looks odd.
                _ => Ok(()),
            };
        }
        self.generic(doc)
    }

    /// Deserializes straight into `T`; on failure, tells a syntax error
    /// (the file fails) from a bad object (reported, skipped).
    fn typed<T: Kind>(&mut self, doc: &Doc<'_>, namespaced: bool) -> Result<(), Diagnostic> {
        match serde_yaml::from_str::<T>(doc.text) {
            Ok(object) => {
                let meta = object.meta();
                let key = identity_of(meta, namespaced);
                self.add(key, object.into());
                Ok(())
            }
            Err(e) => {
                let value = self.value(doc)?;
                let (namespace, name) = identity(&value, namespaced);
                self.out.problems.push(Diagnostic {
                    kind: T::KIND,
                    namespace,
                    name: name.unwrap_or_default(),
                    reason: one_line(&e, doc.line_offset),
                    severity: Severity::Warning,
                });
                Ok(())
            }
        }
    }

    /// Parses a document as a generic value; a syntax error fails the file.
    fn value(&self, doc: &Doc<'_>) -> Result<Value, Diagnostic> {
        serde_yaml::from_str::<Value>(doc.text)
            .map_err(|e| file_problem(self.origin, one_line(&e, doc.line_offset)))
    }

    fn generic(&mut self, doc: &Doc<'_>) -> Result<(), Diagnostic> {
        let value = self.value(doc)?;
        self.dispatch(doc.index, value);
        Ok(())
    }

    /// Dispatches one document (or List item) on apiVersion and kind.
    fn dispatch(&mut self, index: usize, doc: Value) {
        let doc = match doc {
            Value::Null => return, // an empty document, e.g. a trailing "---"
            // A local tag (`!x {apiVersion: v1, ...}`) says nothing
            // Kubernetes reads: the object is read as if untagged, as the
            // API machinery's YAML-to-JSON conversion does (serde_yaml looks
            // through tags on the fields inside).
            Value::Tagged(t) => return self.dispatch(index, t.value),
            Value::Mapping(m) => m,
            _ => {
                return self.problem(format!(
                    "document {index}: not a Kubernetes object (no apiVersion/kind)"
                ));
            }
        };
        let field = |k: &str| {
            doc.get(k)
                .map(untag)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return self.problem(format!(
                "document {index}: not a Kubernetes object (no apiVersion/kind)"
            ));
        };
        let mut doc = doc;
        if kind.ends_with("List")
            && let Some(Value::Sequence(items)) = doc.remove("items").map(untag_owned)
        {
            // `kubectl get -o yaml` output: kind List (or ServiceList...).
            for item in items {
                self.dispatch(index, item);
            }
            return;
        }
        let doc = Value::Mapping(doc);
        match (api_version.as_str(), kind.as_str()) {
            (Service::API_VERSION, Service::KIND) => self.read_value::<Service>(doc, true),
            (EndpointSlice::API_VERSION, EndpointSlice::KIND) => {
                self.read_value::<EndpointSlice>(doc, true)
            }
            (Node::API_VERSION, Node::KIND) => self.read_value::<Node>(doc, false),
            (_, Service::KIND) => self.unsupported_version::<Service>(&doc, &api_version, true),
            (_, EndpointSlice::KIND) => {
                self.unsupported_version::<EndpointSlice>(&doc, &api_version, true)
            }
            (_, Node::KIND) => self.unsupported_version::<Node>(&doc, &api_version, false),
            _ => {}
        }
    }

    fn read_value<T: Kind>(&mut self, doc: Value, namespaced: bool) {
        let (namespace, name) = identity(&doc, namespaced);
        match serde_yaml::from_value::<T>(doc) {
            Ok(object) => {
                let key = identity_of(object.meta(), namespaced);
                self.add(key, object.into());
            }
            Err(e) => self.out.problems.push(Diagnostic {
                kind: T::KIND,
                namespace,
                name: name.unwrap_or_default(),
                reason: one_line(&e, 0),
                severity: Severity::Warning,
            }),
        }
    }

    /// A kind ferry reads, in a version it does not (e.g. the removed
    /// discovery.k8s.io/v1beta1): ignoring it silently would hide the
    /// endpoints the user meant.
    fn unsupported_version<T: Kind>(&mut self, doc: &Value, api_version: &str, namespaced: bool) {
        let (namespace, name) = identity(doc, namespaced);
        self.out.problems.push(Diagnostic {
            kind: T::KIND,
            namespace,
            name: name.unwrap_or_default(),
            reason: format!("apiVersion {api_version} is not supported: ignored"),
            severity: Severity::Warning,
        });
    }

    fn add(&mut self, key: ObjKey, obj: Obj) {
        if key.name.is_empty() {
            let kind = match obj {
                Obj::Service(_) => Service::KIND,
                Obj::Slice(_) => EndpointSlice::KIND,
                Obj::Node(_) => Node::KIND,
            };
            self.out.problems.push(Diagnostic {
                kind,
                namespace: key.namespace,
                name: String::new(),
                reason: "metadata.name is missing".to_owned(),
                severity: Severity::Warning,
            });
            return;
        }
        match obj {
            Obj::Service(s) => self.out.services.push(ServiceObj::from_doc(&key, &s)),
            Obj::Slice(s) => self
                .out
                .slices
                .push(SliceObj::from_doc(&key, &s, self.node_name)),
            Obj::Node(n) => self.out.nodes.push(NodeObj::from_doc(&key.name, &n)),
        }
    }
}

/// The three kinds, for dispatch after deserializing.
pub enum Obj {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Node(Box<Node>),
}

impl From<Service> for Obj {
    fn from(s: Service) -> Self {
        Obj::Service(Box::new(s))
    }
}
impl From<EndpointSlice> for Obj {
    fn from(s: EndpointSlice) -> Self {
        Obj::Slice(Box::new(s))
    }
}
impl From<Node> for Obj {
    fn from(n: Node) -> Self {
        Obj::Node(Box::new(n))
    }
}

/// (namespace, name) of a deserialized object; the namespace defaults to
/// "default" for namespaced kinds, as the API server would store it.
fn identity_of(meta: &ObjectMeta, namespaced: bool) -> ObjKey {
    let namespace = if namespaced {
        meta.namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    } else {
        ""
    };
    ObjKey::new(namespace, meta.name.clone().unwrap_or_default())
}

/// The namespace (defaulted; empty for cluster-scoped kinds) and name of a
/// raw document, for diagnostics even when it does not deserialize.
/// The value under any number of tags.
fn untag_owned(mut v: Value) -> Value {
    while let Value::Tagged(t) = v {
        v = t.value;
    }
    v
}

fn untag(mut v: &Value) -> &Value {
    while let Value::Tagged(t) = v {
        v = &t.value;
    }
    v
}

fn identity(doc: &Value, namespaced: bool) -> (String, Option<String>) {
    // Tags are looked through: the object is named however it was written.
    let meta = untag(doc).get("metadata").map(untag);
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .map(untag)
            .and_then(Value::as_str)
    };
    let namespace = if namespaced {
        get("namespace")
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    } else {
        ""
    };
    (namespace.to_owned(), get("name").map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_markers_only() {
        let text = "a: 1\n---\nb: |\n  --- not a marker\n--- {c: 3}\n---x: not a marker\n";
        let docs = documents(text);
        let chunks: Vec<&str> = docs.iter().map(|d| d.text).collect();
        assert_eq!(
            chunks,
            [
                "a: 1\n",
                "---\nb: |\n  --- not a marker\n",
                "--- {c: 3}\n---x: not a marker\n"
            ]
        );
        assert_eq!(
            docs.iter().map(|d| d.line_offset).collect::<Vec<_>>(),
            [0, 1, 4]
        );
    }

    #[test]
    fn top_level_keys_are_read_plainly() {
        let doc = "apiVersion: \"v1\"\nkind: Service # the kind\nmetadata:\n  kind: nested\n";
        assert_eq!(top_level(doc, "apiVersion"), Some("v1"));
        assert_eq!(top_level(doc, "kind"), Some("Service"));
        assert_eq!(top_level("{kind: Service}", "kind"), None);
    }

    #[test]
    fn hostile_documents_never_panic() {
        for text in [
            "!x {apiVersion: v1, kind: List, items: []}",
            "--- !x\napiVersion: v1\nkind: Service\n",
            "apiVersion: v1\nkind: List\nitems: 3\n",
            "[1, 2]",
            "apiVersion: v1\nkind: Service\nmetadata: {name: [}\n",
            "&a [*a]",
            "apiVersion: v1\nkind: ServiceList\nitems: [!t 1, {apiVersion: v1}]\n",
            "kind: !x &k List\napiVersion: !x v1\nitems: !x\n- !x {apiVersion: v1, kind: !x Node, metadata: {name: n}}\n",
        ] {
            let _ = parse(text.as_bytes(), "f.yaml", "n");
        }
    }
}
