//! The double's HTTP side: routes GET requests to lists, watches, single objects and
//! discovery, with the API server's query parameters and its `Status` errors.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::state::{ApiError, Filter, Key, Resource, State, event, line};
use crate::proc::lock;

pub type Body = BoxBody<Bytes, Infallible>;

/// A watch without `timeoutSeconds` ends after this long (the real server picks 30..60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// One request as the double saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
}

impl Logged {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub fn is_watch(&self) -> bool {
        matches!(self.q("watch"), Some("true" | "1"))
    }
}

/// What the connections share.
pub struct Shared {
    pub state: Mutex<State>,
    pub token: Option<String>,
    /// Whether `sendInitialEvents` is served (the WatchList feature gate).
    pub streaming_lists: AtomicBool,
    /// While true, lists and streaming lists wait before answering.
    pub hold_lists: watch::Sender<bool>,
    pub log: Mutex<Vec<Logged>>,
    /// For discovery's serverAddressByClientCIDRs.
    pub port: AtomicU16,
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let logged = Logged {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query,
    };
    lock(&shared.log).push(logged.clone());
    if let Some(token) = &shared.token {
        let want = format!("Bearer {token}");
        let auth = req.headers().get(hyper::header::AUTHORIZATION);
        if auth.and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return error(&ApiError::unauthorized());
        }
    }
    if req.method() != Method::GET {
        // Writes go through the test API (ApiServer::apply...), not HTTP.
        let e = ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: "read only".into(),
        };
        return error(&e);
    }
    match route(&shared, &logged).await {
        Ok(resp) => resp,
        Err(e) => error(&e),
    }
}

async fn route(shared: &Arc<Shared>, req: &Logged) -> Result<Response<Body>, ApiError> {
    let path = req.path.trim_end_matches('/');
    if let Some(doc) = discovery(path, shared.port.load(Ordering::Relaxed)) {
        return Ok(json_response(StatusCode::OK, &doc));
    }
    let (api_version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("v1", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/discovery.k8s.io/v1/") {
        ("discovery.k8s.io/v1", rest)
    } else {
        return Err(not_found_path(path));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (namespace, plural, name) = match segments.as_slice() {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return Err(not_found_path(path)),
    };
    let resource = Resource::from_path(api_version, plural).ok_or_else(|| not_found_path(path))?;
    if namespace.is_some() && !resource.namespaced() {
        return Err(not_found_path(path));
    }
    if let Some(name) = name {
        let key = Key {
            resource,
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.to_owned(),
        };
        let obj = lock(&shared.state).objects.get(&key).cloned();
        return obj
            .map(|o| json_response(StatusCode::OK, &o))
            .ok_or(ApiError::not_found(&key));
    }
    let filter = Filter::parse(
        namespace.map(str::to_owned),
        req.q("labelSelector"),
        req.q("fieldSelector"),
    )?;
    if req.is_watch() {
        watch_collection(shared, req, resource, filter).await
    } else {
        list(shared, req, resource, &filter).await
    }
}

async fn wait_for_lists(shared: &Shared) {
    let mut held = shared.hold_lists.subscribe();
    let _ = held.wait_for(|held| !held).await;
}

/// A list: the selected objects at the current resourceVersion, paginated by `limit`.
/// A `continue` token names the resourceVersion and offset of the next page; pages are cut
/// from the current state (a real server serves them from the first page's snapshot).
async fn list(
    shared: &Shared,
    req: &Logged,
    resource: Resource,
    filter: &Filter,
) -> Result<Response<Body>, ApiError> {
    wait_for_lists(shared).await;
    let (rv, items) = {
        let state = lock(&shared.state);
        (state.rv, state.list(resource, filter))
    };
    let (rv, offset) = match req.q("continue") {
        Some(token) => parse_continue(token)?,
        None => (rv, 0),
    };
    let limit = match req.q("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("invalid limit"))?,
        None => 0,
    };
    let end = if limit == 0 {
        items.len()
    } else {
        (offset + limit).min(items.len())
    };
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        meta["continue"] = json!(format!("{rv}:{end}"));
    }
    let page: Vec<Value> = items.get(offset..end).unwrap_or_default().to_vec();
    let body = json!({"kind": format!("{}List", resource.kind()),
        "apiVersion": resource.api_version(), "metadata": meta, "items": page});
    Ok(json_response(StatusCode::OK, &body))
}

fn parse_continue(token: &str) -> Result<(u64, usize), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let (rv, offset) = token.split_once(':').ok_or_else(bad)?;
    Ok((
        rv.parse().map_err(|_| bad())?,
        offset.parse().map_err(|_| bad())?,
    ))
}

/// A watch: a 200 response streaming one JSON event per line until `timeoutSeconds`, the
/// client leaving, or the server closing it. An expired resourceVersion is an ERROR event
/// with code 410 inside the 200 response, as the real server sends it.
async fn watch_collection(
    shared: &Shared,
    req: &Logged,
    resource: Resource,
    filter: Filter,
) -> Result<Response<Body>, ApiError> {
    let bookmarks = req.q("allowWatchBookmarks") == Some("true");
    let streaming = req.q("sendInitialEvents") == Some("true");
    let since = if streaming {
        if !shared.streaming_lists.load(Ordering::SeqCst) {
            // Kubernetes 1.33 with its WatchList feature gate off (the default there).
            return Err(ApiError::invalid(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            ));
        }
        if req.q("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(ApiError::invalid(
                "allowWatchBookmarks: Required value: allowWatchBookmarks must be true if sendInitialEvents is set",
            ));
        }
        wait_for_lists(shared).await;
        None
    } else {
        if req.q("resourceVersionMatch").is_some() {
            return Err(ApiError::invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        match req.q("resourceVersion") {
            None | Some("" | "0") => None,
            Some(rv) => {
                Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}"))
                })?)
            }
        }
    };
    let timeout = match req.q("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let opened = lock(&shared.state).watch(resource, filter, bookmarks, since, streaming, tx);
    if let Err(e) = opened {
        let body = line(&event("ERROR", e.status()));
        return Ok(response(StatusCode::OK, Full::new(body).boxed()));
    }
    Ok(response(StatusCode::OK, watch_body(rx, timeout)))
}

fn watch_body(rx: mpsc::UnboundedReceiver<Bytes>, timeout: Duration) -> Body {
    let deadline = tokio::time::Instant::now() + timeout;
    let lines = futures::stream::unfold(rx, move |mut rx| async move {
        tokio::select! {
            l = rx.recv() => l.map(|l| (Ok(Frame::data(l)), rx)),
            () = tokio::time::sleep_until(deadline) => None,
        }
    });
    StreamBody::new(lines).boxed()
}

/// Legacy discovery and /version: what kubectl and client libraries ask first.
fn discovery(path: &str, port: u16) -> Option<Value> {
    let resource = |r: Resource| {
        json!({"name": r.plural(), "singularName": r.kind().to_lowercase(),
            "namespaced": r.namespaced(), "kind": r.kind(), "verbs": ["get", "list", "watch"]})
    };
    Some(match path {
        "/version" => {
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-test-double",
            "platform": "linux/amd64"})
        }
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                "serverAddress": format!("127.0.0.1:{port}")}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "discovery.k8s.io",
            "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]}),
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1",
            "resources": [resource(Resource::Services), resource(Resource::Nodes)]}),
        "/apis/discovery.k8s.io/v1" => json!({"kind": "APIResourceList",
            "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
            "resources": [resource(Resource::EndpointSlices)]}),
        _ => return None,
    })
}

fn not_found_path(path: &str) -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("the server could not find the requested resource ({path})"),
    }
}

fn error(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.status())
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    response(status, Full::new(Bytes::from(bytes)).boxed())
}

fn response(status: StatusCode, body: Body) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static headers")
}
