//! The double's storage: objects, the global resourceVersion, the change history that
//! watches replay, selectors, and the open watches. Pure and synchronous (one mutex around
//! it); the HTTP layer only translates requests into calls here.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

/// The collections the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::Services | Resource::Nodes => "v1",
        }
    }

    /// The URL's plural name.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Resource::Nodes
    }

    /// The resource of a `/api/v1/...` or `/apis/discovery.k8s.io/v1/...` path segment.
    pub fn from_path(api_version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.plural() == plural)
    }

    /// The resource an object is of, from its apiVersion and kind.
    pub fn of(obj: &Value) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| obj["apiVersion"] == r.api_version() && obj["kind"] == r.kind())
    }
}

/// Identity of a stored object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: Resource,
    /// Empty for Nodes.
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn of(obj: &Value) -> Result<Key, ApiError> {
        let resource = Resource::of(obj).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unsupported object {}/{}",
                obj["apiVersion"], obj["kind"]
            ))
        })?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(ApiError::invalid("metadata.name: Required value"));
        }
        let namespace = if resource.namespaced() {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        Ok(Key {
            resource,
            namespace,
            name,
        })
    }
}

/// An error the API answers with a `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: message.into(),
        }
    }
    pub fn not_found(key: &Key) -> Self {
        let message = format!("{} \"{}\" not found", key.resource.plural(), key.name);
        ApiError {
            code: 404,
            reason: "NotFound",
            message,
        }
    }
    pub fn conflict(key: &Key) -> Self {
        let message = format!("{} \"{}\" already exists", key.resource.plural(), key.name);
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message,
        }
    }
    pub fn expired(rv: u64, compacted: u64) -> Self {
        let message = format!("too old resource version: {rv} ({compacted})");
        ApiError {
            code: 410,
            reason: "Expired",
            message,
        }
    }
    pub fn unauthorized() -> Self {
        ApiError {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
        }
    }

    /// The `Status` object, as in a response body or an ERROR watch event.
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// One term of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelTerm {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

/// Which objects a list or watch wants: namespace (from the path), labels and fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    labels: Vec<LabelTerm>,
    /// (field path, value, equal?)
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    /// Parses `labelSelector` and `fieldSelector` as the API server does (the equality-based
    /// forms; set-based `in (...)` is refused as a bad request rather than misread).
    pub fn parse(
        namespace: Option<String>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Filter, ApiError> {
        let mut filter = Filter {
            namespace,
            ..Filter::default()
        };
        for term in labels
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let t = if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelTerm::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().into())
            } else if term.contains([' ', '(', ')']) {
                return Err(ApiError::bad_request(format!(
                    "unsupported label selector {term:?}"
                )));
            } else {
                LabelTerm::Exists(term.into())
            };
            filter.labels.push(t);
        }
        for term in fields
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (path, value, eq) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {term:?}"
                )));
            };
            if !matches!(path, "metadata.name" | "metadata.namespace") {
                let message = format!("field label not supported: {path}");
                return Err(ApiError::bad_request(message));
            }
            filter.fields.push((path.into(), value.into(), eq));
        }
        Ok(filter)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|t| match t {
            LabelTerm::Exists(k) => label(k).is_some(),
            LabelTerm::NotExists(k) => label(k).is_none(),
            LabelTerm::Equals(k, v) => label(k) == Some(v),
            LabelTerm::NotEquals(k, v) => label(k) != Some(v),
        });
        let fields_ok = self.fields.iter().all(|(path, v, eq)| {
            let field = path.strip_prefix("metadata.").unwrap_or(path);
            (meta[field].as_str().unwrap_or("") == v) == *eq
        });
        labels_ok && fields_ok
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as the history keeps it for watches to replay.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub kind: ChangeKind,
    /// The object before the write (None for a creation).
    pub old: Option<Value>,
    /// The object after it; for a deletion, the last state stamped with the deletion's
    /// resourceVersion (what the API server sends).
    pub new: Value,
}

impl Change {
    /// The event a watch with `filter` sees: objects moving into the selection are ADDED,
    /// out of it DELETED, as the API server's watch cache does.
    pub fn event_for(&self, filter: &Filter) -> Option<Value> {
        let was = self.old.as_ref().is_some_and(|o| filter.matches(o));
        let is = self.kind != ChangeKind::Deleted && filter.matches(&self.new);
        let kind = match (was, is) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        Some(event(kind, self.new.clone()))
    }
}

pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// A BOOKMARK event at `rv`; `initial_end` marks the end of a streaming list's initial events.
pub fn bookmark(resource: Resource, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event(
        "BOOKMARK",
        json!({"kind": resource.kind(), "apiVersion": resource.api_version(),
        "metadata": meta}),
    )
}

/// One line of a watch response.
pub fn line(event: &Value) -> Bytes {
    let mut bytes = Vec::new();
    match (event["type"].as_str(), event.get("object")) {
        (Some(kind), Some(object)) => write_event(&mut bytes, kind, object),
        _ => {
            serde_json::to_writer(&mut bytes, event).expect("JSON values serialize");
            bytes.push(b'\n');
        }
    }
    Bytes::from(bytes)
}

/// Appends one watch event line, "type" first as kube-apiserver writes it
/// (Go's `metav1.WatchEvent` field order): a client that reads the type
/// first decodes the object straight into its type, without buffering it.
fn write_event(buf: &mut Vec<u8>, kind: &str, object: &Value) {
    buf.extend_from_slice(br#"{"type":"#);
    serde_json::to_writer(&mut *buf, kind).expect("strings serialize");
    buf.extend_from_slice(br#","object":"#);
    serde_json::to_writer(&mut *buf, object).expect("JSON values serialize");
    buf.extend_from_slice(b"}\n");
}

/// An open watch.
pub struct Watcher {
    pub resource: Resource,
    pub filter: Filter,
    pub bookmarks: bool,
    tx: UnboundedSender<Bytes>,
    /// Lines held back while watches are stalled.
    queued: Vec<Bytes>,
}

/// Everything the double stores.
pub struct State {
    /// The last resourceVersion given out (global, as etcd's revision).
    pub rv: u64,
    /// Watches from a resourceVersion older than this are expired (410).
    pub compacted: u64,
    pub objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    /// While true, watch events are queued instead of sent (a stalled watch connection).
    pub stalled: bool,
    next_uid: u64,
}

/// The first resourceVersion: arbitrary, as on a real cluster.
const FIRST_RV: u64 = 1000;

impl Default for State {
    fn default() -> Self {
        State {
            rv: FIRST_RV,
            compacted: FIRST_RV,
            objects: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            stalled: false,
            next_uid: 1,
        }
    }
}

impl State {
    /// Creates (`must_exist` = Some(false)), replaces (Some(true)) or either (None).
    pub fn write(&mut self, mut obj: Value, must_exist: Option<bool>) -> Result<Value, ApiError> {
        let key = Key::of(&obj)?;
        let old = self.objects.get(&key).cloned();
        match (must_exist, &old) {
            (Some(true), None) => return Err(ApiError::not_found(&key)),
            (Some(false), Some(_)) => return Err(ApiError::conflict(&key)),
            _ => {}
        }
        self.rv += 1;
        let meta = &mut obj["metadata"];
        if key.resource.namespaced() {
            meta["namespace"] = json!(key.namespace);
        }
        meta["resourceVersion"] = json!(self.rv.to_string());
        match &old {
            Some(o) => {
                meta["uid"] = o["metadata"]["uid"].clone();
                meta["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
            }
            None => {
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                self.next_uid += 1;
            }
        }
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.objects.insert(key.clone(), obj.clone());
        self.record(Change {
            rv: self.rv,
            resource: key.resource,
            kind,
            old,
            new: obj.clone(),
        });
        Ok(obj)
    }

    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let old = self
            .objects
            .remove(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        self.rv += 1;
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let change = Change {
            rv: self.rv,
            resource: key.resource,
            kind: ChangeKind::Deleted,
            old: Some(old),
            new: last.clone(),
        };
        self.record(change);
        Ok(last)
    }

    fn record(&mut self, change: Change) {
        let stalled = self.stalled;
        self.watchers.retain_mut(|w| {
            if w.resource != change.resource {
                return !w.tx.is_closed();
            }
            match change.event_for(&w.filter) {
                Some(e) => w.send(line(&e), stalled),
                None => !w.tx.is_closed(),
            }
        });
        self.history.push(change);
    }

    /// The current objects of a collection that the filter selects, in key order.
    pub fn list(&self, resource: Resource, filter: &Filter) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, v)| k.resource == resource && filter.matches(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Opens a watch. `since`: replay the history after this resourceVersion (expired if
    /// older than the compaction); None: start with the current objects as ADDED events,
    /// then, for a streaming list, the initial-events-end bookmark.
    pub fn watch(
        &mut self,
        resource: Resource,
        filter: Filter,
        bookmarks: bool,
        since: Option<u64>,
        initial_end_bookmark: bool,
        tx: UnboundedSender<Bytes>,
    ) -> Result<(), ApiError> {
        let mut w = Watcher {
            resource,
            filter,
            bookmarks,
            tx,
            queued: Vec::new(),
        };
        let mut lines = Vec::new();
        match since {
            Some(rv) if rv < self.compacted => return Err(ApiError::expired(rv, self.compacted)),
            Some(rv) => {
                let after = self
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.resource == resource);
                lines.extend(
                    after
                        .filter_map(|c| c.event_for(&w.filter))
                        .map(|e| line(&e)),
                );
            }
            None => {
                // Written in chunks of many events, as kube-apiserver flushes a
                // watch only when no event is queued behind the one it wrote.
                const CHUNK: usize = 64 << 10;
                let mut chunk = Vec::with_capacity(CHUNK);
                let objects = self
                    .objects
                    .iter()
                    .filter(|(k, v)| k.resource == resource && w.filter.matches(v));
                for (_, o) in objects {
                    write_event(&mut chunk, "ADDED", o);
                    if chunk.len() >= CHUNK {
                        lines.push(Bytes::from(std::mem::replace(
                            &mut chunk,
                            Vec::with_capacity(CHUNK),
                        )));
                    }
                }
                if !chunk.is_empty() {
                    lines.push(Bytes::from(chunk));
                }
                if initial_end_bookmark {
                    lines.push(line(&bookmark(resource, self.rv, true)));
                }
            }
        }
        for l in lines {
            w.send(l, self.stalled);
        }
        self.watchers.push(w);
        Ok(())
    }

    /// Sends a progress BOOKMARK to every watch that allowed them.
    pub fn bookmark_all(&mut self) {
        let (rv, stalled) = (self.rv, self.stalled);
        self.watchers.retain_mut(|w| {
            if w.bookmarks {
                w.send(line(&bookmark(w.resource, rv, false)), stalled)
            } else {
                !w.tx.is_closed()
            }
        });
    }

    /// Forgets the history: watches from any version before now are expired, and every
    /// open watch gets a 410 ERROR event (inside its 200 response) and is closed.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        let gone = ApiError::expired(self.rv, self.compacted);
        for w in self.watchers.drain(..) {
            let _ = w.tx.send(line(&event("ERROR", gone.status())));
        }
    }

    /// Stops or resumes delivering watch events (queued meanwhile, in order).
    pub fn set_stalled(&mut self, stalled: bool) {
        self.stalled = stalled;
        if !stalled {
            self.watchers.retain_mut(|w| {
                for l in std::mem::take(&mut w.queued) {
                    if w.tx.send(l).is_err() {
                        return false;
                    }
                }
                true
            });
        }
    }

    /// Closes every open watch (the server is going away).
    pub fn close_watches(&mut self) {
        self.watchers.clear();
    }

    pub fn open_watches(&self) -> usize {
        self.watchers.iter().filter(|w| !w.tx.is_closed()).count()
    }
}

impl Watcher {
    /// Sends or queues a line; false once the client is gone.
    fn send(&mut self, l: Bytes, stalled: bool) -> bool {
        if stalled {
            self.queued.push(l);
            !self.tx.is_closed()
        } else {
            self.tx.send(l).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn svc(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": labels}})
    }

    fn lines(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<Value> {
        let mut out = Vec::new();
        // A frame holds one event or, for the initial ones, several lines.
        while let Ok(frame) = rx.try_recv() {
            for l in frame.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice(l).unwrap());
            }
        }
        out
    }

    fn types(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn selectors_parse_and_match_like_the_api_server() {
        let f = Filter::parse(None, Some("a,!b,c=1,d!=2"), Some("metadata.name=x")).unwrap();
        let obj = |labels: Value| json!({"metadata": {"name": "x", "labels": labels}});
        assert!(f.matches(&obj(json!({"a": "", "c": "1"}))));
        assert!(f.matches(&obj(json!({"a": "", "c": "1", "d": "3"}))));
        assert!(!f.matches(&obj(json!({"a": "", "c": "1", "d": "2"}))));
        assert!(!f.matches(&obj(json!({"a": "", "b": "", "c": "1"}))));
        assert!(!f.matches(&obj(json!({"c": "1"}))));
        let other = json!({"metadata": {"name": "y", "labels": {"a": "", "c": "1"}}});
        assert!(!f.matches(&other));
        assert_eq!(
            Filter::parse(None, Some("a in (x)"), None)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            Filter::parse(None, None, Some("spec.x=1"))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn global_versions_history_replay_and_selector_transitions() {
        let mut s = State::default();
        let a = s.write(svc("a", json!({})), Some(false)).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1001");
        let listed_at = s.rv;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let filter = Filter::parse(None, Some("!hidden"), None).unwrap();
        s.watch(Resource::Services, filter, true, Some(listed_at), false, tx)
            .unwrap();
        s.write(svc("b", json!({})), None).unwrap();
        s.write(svc("a", json!({"hidden": "yes"})), Some(true))
            .unwrap(); // leaves the selection
        s.write(svc("a", json!({})), Some(true)).unwrap(); // comes back
        s.delete(&Key::of(&svc("b", json!({}))).unwrap()).unwrap();
        let events = lines(&mut rx);
        assert_eq!(types(&events), ["ADDED", "DELETED", "ADDED", "DELETED"]);
        assert_eq!(events[3]["object"]["metadata"]["resourceVersion"], "1005");
        assert_eq!(
            s.write(svc("a", json!({})), Some(false)).unwrap_err().code,
            409
        );

        // A second watch from the list's version replays the same history.
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let filter = Filter::parse(None, Some("!hidden"), None).unwrap();
        s.watch(
            Resource::Services,
            filter,
            false,
            Some(listed_at),
            false,
            tx2,
        )
        .unwrap();
        assert_eq!(
            types(&lines(&mut rx2)),
            ["ADDED", "DELETED", "ADDED", "DELETED"]
        );
    }

    #[test]
    fn compaction_expires_old_versions_and_open_watches() {
        let mut s = State::default();
        s.write(svc("a", json!({})), None).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.watch(
            Resource::Services,
            Filter::default(),
            true,
            Some(s.rv),
            false,
            tx,
        )
        .unwrap();
        s.set_stalled(true);
        s.delete(&Key::of(&svc("a", json!({}))).unwrap()).unwrap();
        assert!(lines(&mut rx).is_empty(), "stalled");
        s.compact();
        let events = lines(&mut rx);
        assert_eq!(
            types(&events),
            ["ERROR"],
            "the held deletion is never delivered"
        );
        assert_eq!(events[0]["object"]["code"], 410);
        assert!(rx.is_closed() || s.open_watches() == 0);
        let (tx, _rx) = mpsc::unbounded_channel();
        let err = s.watch(
            Resource::Services,
            Filter::default(),
            true,
            Some(1001),
            false,
            tx,
        );
        assert_eq!(err.unwrap_err().code, 410);
    }

    #[test]
    fn streaming_list_sends_the_current_objects_then_the_end_bookmark() {
        let mut s = State::default();
        s.write(svc("a", json!({})), None).unwrap();
        s.write(svc("b", json!({})), None).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.watch(Resource::Services, Filter::default(), true, None, true, tx)
            .unwrap();
        s.bookmark_all();
        let events = lines(&mut rx);
        assert_eq!(types(&events), ["ADDED", "ADDED", "BOOKMARK", "BOOKMARK"]);
        let end = &events[2]["object"]["metadata"];
        assert_eq!(end["annotations"]["k8s.io/initial-events-end"], "true");
        assert_eq!(end["resourceVersion"], "1002");
        assert!(events[3]["object"]["metadata"]["annotations"].is_null());
    }
}
