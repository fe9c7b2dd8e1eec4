//! The client contract, checked against a `tower-test` mock service as kube-rs's own tests
//! do: the exact requests (paths, selectors, limit, resourceVersion, bookmarks, streaming-list
//! parameters) and the events the source passes on.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock::{self, SendResponse};

use super::{InitialList, WatchOptions, watch};
use crate::source::event::{Delta, Event};

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NODES: &str = "/api/v1/nodes";
const SERVICE_LABELS: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
const SLICE_LABELS: &str = "kubernetes.io/service-name,!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
const WAIT: Duration = Duration::from_secs(5);

/// One request the client made, with the way to answer it.
struct Call {
    path: String,
    query: BTreeMap<String, String>,
    respond: SendResponse<Response<Body>>,
}

impl Call {
    fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }

    fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn reply(self, status: StatusCode, body: Value) {
        let body = serde_json::to_vec(&body).unwrap();
        self.respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(body))
                .unwrap(),
        );
    }

    /// A watch response: newline-delimited events, then the end of the stream.
    fn reply_events(self, events: &[Value]) {
        let mut body = Vec::new();
        for e in events {
            body.extend(serde_json::to_vec(e).unwrap());
            body.push(b'\n');
        }
        self.respond
            .send_response(Response::builder().body(Body::from(body)).unwrap());
    }
}

/// What the events said so far, as the control loop's tracker would hold it
/// (names only).
#[derive(Debug, Default)]
struct Seen {
    services: BTreeSet<String>,
    slices: BTreeSet<String>,
    nodes: BTreeSet<String>,
    /// Complete lists received, per kind.
    listed: BTreeMap<&'static str, usize>,
}

impl Seen {
    fn apply(&mut self, ev: Event) {
        fn delta<T, K>(
            set: &mut BTreeSet<String>,
            listed: &mut BTreeMap<&'static str, usize>,
            kind: &'static str,
            d: Delta<T, K>,
            name_t: impl Fn(&T) -> String,
            name_k: impl Fn(&K) -> String,
        ) {
            match d {
                Delta::Applied(o) => {
                    set.insert(name_t(&o));
                }
                Delta::Deleted(k) => {
                    set.remove(&name_k(&k));
                }
                Delta::Listed(keys) => {
                    let keep: BTreeSet<String> = keys.iter().map(name_k).collect();
                    set.retain(|n| keep.contains(n));
                    *listed.entry(kind).or_default() += 1;
                }
            }
        }
        match ev {
            Event::Service(d) => delta(
                &mut self.services,
                &mut self.listed,
                "services",
                d,
                |s| s.name.to_string(),
                |k| k.to_string(),
            ),
            Event::Slice(d) => delta(
                &mut self.slices,
                &mut self.listed,
                "slices",
                d,
                |s| format!("{}/{}", s.key.namespace, s.key.name),
                |k| format!("{}/{}", k.namespace, k.name),
            ),
            Event::Node(d) => delta(
                &mut self.nodes,
                &mut self.listed,
                "nodes",
                d,
                |n| n.name.clone(),
                Clone::clone,
            ),
            _ => {}
        }
    }

    fn all_listed(&self) -> bool {
        self.listed.len() == 3
    }
}

/// The agent's source on a mock API: its calls and its events.
struct Harness {
    calls: mpsc::UnboundedReceiver<Call>,
    events: mpsc::Receiver<Event>,
    seen: Seen,
    /// Calls left unanswered (open watches): dropping them would fail the requests.
    held: Vec<Call>,
}

impl Harness {
    fn start(initial_list: InitialList) -> Harness {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (call_tx, calls) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((req, respond)) = handle.next_request().await {
                assert_eq!(req.method(), http::Method::GET, "the source only reads");
                let query = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
                let path = req.uri().path().to_owned();
                if call_tx
                    .send(Call {
                        path,
                        query,
                        respond,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        let client = Client::new(service, "default");
        let (tx, events) = mpsc::channel(64);
        let opts = WatchOptions {
            node_name: "node-a".into(),
            initial_list,
        };
        tokio::spawn(watch(client, opts, tx));
        Harness {
            calls,
            events,
            seen: Seen::default(),
            held: Vec::new(),
        }
    }

    async fn next_call(&mut self) -> Call {
        tokio::time::timeout(WAIT, self.calls.recv())
            .await
            .expect("a request within 5 s")
            .expect("the mock is running")
    }

    /// The next request for each of the three collections, in path order.
    async fn next_three(&mut self) -> BTreeMap<String, Call> {
        let mut calls = BTreeMap::new();
        while calls.len() < 3 {
            let call = self.next_call().await;
            let path = call.path.clone();
            assert!(
                calls.insert(path.clone(), call).is_none(),
                "two requests for {path}"
            );
        }
        calls
    }

    /// Applies events until `done` holds of what was seen.
    async fn until(&mut self, done: impl Fn(&Seen) -> bool) {
        while !done(&self.seen) {
            let ev = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no event within 5 s; seen {:?}", self.seen))
                .expect("the source is running");
            self.seen.apply(ev);
        }
    }

    /// Applies the events that come within `d`.
    async fn drain_for(&mut self, d: Duration) {
        while let Ok(Some(ev)) = tokio::time::timeout(d, self.events.recv()).await {
            self.seen.apply(ev);
        }
    }
}

fn meta(name: &str, namespace: Option<&str>, rv: u64) -> Value {
    let mut m =
        json!({"name": name, "resourceVersion": rv.to_string(), "uid": format!("uid-{name}")});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn service(name: &str, ip: &str, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(name, Some("default"), rv),
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn slice(name: &str, svc: &str, ip: &str, rv: u64) -> Value {
    let mut m = meta(name, Some("default"), rv);
    m["labels"] = json!({"kubernetes.io/service-name": svc});
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": m,
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]})
}

fn node(rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": meta("node-a", None, rv),
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
            "images": [{"names": ["big/image:1"], "sizeBytes": 1}]}})
}

fn list(kind: &str, rv: u64, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn initial_events_end(kind: &str, api_version: &str, rv: u64) -> Value {
    event(
        "BOOKMARK",
        json!({"kind": kind, "apiVersion": api_version, "metadata": {
        "resourceVersion": rv.to_string(),
        "annotations": {"k8s.io/initial-events-end": "true"}}}),
    )
}

fn expired(rv: u64) -> Value {
    event(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": "Expired", "code": 410,
        "message": format!("too old resource version: {rv} (100)")}),
    )
}

/// The selectors each collection must be asked with.
fn assert_selectors(call: &Call) {
    let (labels, fields) = match call.path.as_str() {
        SERVICES => (Some(SERVICE_LABELS), None),
        SLICES => (Some(SLICE_LABELS), None),
        // Every Node: their addresses matter (DSR options, externalIPs).
        NODES => (None, None),
        other => panic!("unexpected path {other}"),
    };
    assert_eq!(
        call.q("labelSelector"),
        labels,
        "{}: {:?}",
        call.path,
        call.query
    );
    assert_eq!(
        call.q("fieldSelector"),
        fields,
        "{}: {:?}",
        call.path,
        call.query
    );
}

fn assert_list(call: &Call) {
    assert!(
        !call.is_watch(),
        "{}: a list first: {:?}",
        call.path,
        call.query
    );
    assert_eq!(
        call.q("limit"),
        Some("500"),
        "{}: {:?}",
        call.path,
        call.query
    );
    assert_eq!(
        call.q("resourceVersion"),
        None,
        "a consistent (most recent) list"
    );
    assert_eq!(call.q("continue"), None);
    assert_selectors(call);
}

fn assert_watch_from(call: &Call, rv: u64) {
    assert!(call.is_watch(), "{}: a watch: {:?}", call.path, call.query);
    assert_eq!(
        call.q("resourceVersion"),
        Some(rv.to_string().as_str()),
        "{}",
        call.path
    );
    assert_eq!(call.q("allowWatchBookmarks"), Some("true"), "{}", call.path);
    assert_eq!(call.q("sendInitialEvents"), None, "{}", call.path);
    assert!(
        call.q("timeoutSeconds").is_some(),
        "{}: a bounded watch",
        call.path
    );
    assert_selectors(call);
}

fn assert_streaming_list(call: &Call) {
    assert!(call.is_watch(), "{}: {:?}", call.path, call.query);
    assert_eq!(call.q("sendInitialEvents"), Some("true"), "{}", call.path);
    assert_eq!(
        call.q("resourceVersionMatch"),
        Some("NotOlderThan"),
        "{}",
        call.path
    );
    assert_eq!(call.q("resourceVersion"), Some("0"), "{}", call.path);
    assert_eq!(call.q("allowWatchBookmarks"), Some("true"), "{}", call.path);
    assert_selectors(call);
}

/// Answers the three lists (services at rv 10, slices at 11, node at 12); the node's last.
async fn answer_lists(h: &mut Harness, mut lists: BTreeMap<String, Call>) {
    for call in lists.values() {
        assert_list(call);
    }
    lists.remove(SERVICES).unwrap().reply(
        StatusCode::OK,
        list("Service", 10, vec![service("web", "10.96.0.10", 5)]),
    );
    lists.remove(SLICES).unwrap().reply(
        StatusCode::OK,
        list(
            "EndpointSlice",
            11,
            vec![slice("web-1", "web", "10.244.0.2", 6)],
        ),
    );
    h.drain_for(Duration::from_millis(200)).await;
    assert!(!h.seen.all_listed(), "the node list is not in yet");
    lists
        .remove(NODES)
        .unwrap()
        .reply(StatusCode::OK, list("Node", 12, vec![node(7)]));
}

fn names(s: &BTreeSet<String>) -> Vec<&str> {
    s.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn list_then_watch_from_the_list_version_and_every_kind_listed() {
    let mut h = Harness::start(InitialList::ListWatch);
    let lists = h.next_three().await;
    answer_lists(&mut h, lists).await;

    h.until(Seen::all_listed).await;
    assert_eq!(names(&h.seen.services), ["default/web"]);
    assert_eq!(names(&h.seen.slices), ["default/web-1"]);
    assert_eq!(names(&h.seen.nodes), ["node-a"]);

    let mut watches = h.next_three().await;
    assert_watch_from(&watches[SERVICES], 10);
    assert_watch_from(&watches[SLICES], 11);
    assert_watch_from(&watches[NODES], 12);

    // Each change is passed on as it comes; then the stream ends and the watch resumes
    // from the last version seen.
    watches.remove(SERVICES).unwrap().reply_events(&[
        event("ADDED", service("api", "10.96.0.11", 13)),
        event("DELETED", service("web", "10.96.0.10", 14)),
    ]);
    h.until(|s| !s.services.contains("default/web")).await;
    assert_eq!(names(&h.seen.services), ["default/api"]);
    assert_eq!(
        names(&h.seen.slices),
        ["default/web-1"],
        "other kinds unchanged"
    );
    let resumed = h.next_call().await;
    assert_eq!(resumed.path, SERVICES);
    assert_watch_from(&resumed, 14);
    h.held.push(resumed);
    h.held.extend(watches.into_values());
}

#[tokio::test]
async fn expired_version_mid_watch_relists_and_drops_what_was_deleted_meanwhile() {
    let mut h = Harness::start(InitialList::ListWatch);
    let lists = h.next_three().await;
    answer_lists(&mut h, lists).await;
    h.until(Seen::all_listed).await;
    let mut watches = h.next_three().await;

    watches.remove(SLICES).unwrap().reply_events(&[expired(11)]);
    // 410 inside a 200 response: a fresh list (not a watch from the old version).
    let relist = h.next_call().await;
    assert_eq!(relist.path, SLICES);
    assert_list(&relist);
    // Meanwhile web-1 was deleted and web-2 created: the re-list shows only web-2.
    relist.reply(
        StatusCode::OK,
        list(
            "EndpointSlice",
            30,
            vec![slice("web-2", "web", "10.244.0.3", 29)],
        ),
    );
    h.until(|s| s.listed.get("slices") == Some(&2)).await;
    assert_eq!(names(&h.seen.slices), ["default/web-2"]);
    let watch = h.next_call().await;
    assert_watch_from(&watch, 30);
    h.held.push(watch);
    h.held.extend(watches.into_values());
}

#[tokio::test]
async fn streaming_lists_use_one_watch_ended_by_the_initial_events_bookmark() {
    let mut h = Harness::start(InitialList::Streaming);
    let mut streams = h.next_three().await;
    for call in streams.values() {
        assert_streaming_list(call);
    }
    // Events, then the end-of-initial-events bookmark; the stream closes after it, so the
    // watch resumes from the bookmark's version without asking for initial events again.
    streams.remove(SERVICES).unwrap().reply_events(&[
        event("ADDED", service("web", "10.96.0.10", 5)),
        initial_events_end("Service", "v1", 20),
    ]);
    streams.remove(SLICES).unwrap().reply_events(&[
        event("ADDED", slice("web-1", "web", "10.244.0.2", 6)),
        initial_events_end("EndpointSlice", "discovery.k8s.io/v1", 21),
    ]);
    h.drain_for(Duration::from_millis(200)).await;
    assert!(!h.seen.all_listed());
    streams.remove(NODES).unwrap().reply_events(&[
        event("ADDED", node(7)),
        initial_events_end("Node", "v1", 22),
    ]);
    h.until(Seen::all_listed).await;
    assert_eq!(names(&h.seen.services), ["default/web"]);
    assert_eq!(names(&h.seen.slices), ["default/web-1"]);
    assert_eq!(names(&h.seen.nodes), ["node-a"]);

    let resumed = h.next_three().await;
    assert_watch_from(&resumed[SERVICES], 20);
    assert_watch_from(&resumed[SLICES], 21);
    assert_watch_from(&resumed[NODES], 22);
    h.held.extend(resumed.into_values());
}

#[tokio::test]
async fn auto_falls_back_to_list_watch_when_streaming_is_refused() {
    let mut h = Harness::start(InitialList::Auto);
    let streams = h.next_three().await;
    for (_, call) in streams {
        assert_streaming_list(&call);
        // What Kubernetes 1.33 answers while its WatchList feature gate is off.
        call.reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": "Invalid", "code": 422,
                "message": "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"}),
        );
    }
    let lists = h.next_three().await;
    answer_lists(&mut h, lists).await;
    h.until(Seen::all_listed).await;
    assert_eq!(names(&h.seen.services), ["default/web"]);
    let watches = h.next_three().await;
    assert_watch_from(&watches[SERVICES], 10);
    h.held.extend(watches.into_values());
}

#[tokio::test]
async fn errors_keep_the_stores_and_retry_with_backoff() {
    let mut h = Harness::start(InitialList::ListWatch);
    let lists = h.next_three().await;
    answer_lists(&mut h, lists).await;
    h.until(Seen::all_listed).await;
    let mut watches = h.next_three().await;

    // The API server fails the watch: nothing is deleted, and the watch is retried after
    // a backoff, from the same version.
    let failed_at = tokio::time::Instant::now();
    watches.remove(NODES).unwrap().reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "ServiceUnavailable", "code": 503, "message": "down"}),
    );
    h.drain_for(Duration::from_millis(300)).await;
    assert_eq!(names(&h.seen.nodes), ["node-a"], "nothing cleared");
    let retry = h.next_call().await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(300),
        "backed off"
    );
    assert_eq!(retry.path, NODES);
    assert_watch_from(&retry, 12);
    h.held.push(retry);
    h.held.extend(watches.into_values());
}
