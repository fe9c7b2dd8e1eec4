//! The kube-apiserver test double's HTTP rules, seen by curl over TLS on 127.0.0.1 of the
//! test's own namespace (no root needed; `kube_api.rs` runs the agent against it).

use std::{path::PathBuf, process::Command, time::Duration};

use ferry_tests::{
    Endpoint, EndpointSlice, Service,
    apiserver::{ApiServer, Options},
};
use serde_json::Value;

struct Curl {
    url: String,
    ca: PathBuf,
    token: Option<String>,
}

impl Curl {
    fn new(api: &ApiServer, name: &str) -> Curl {
        let ca =
            std::env::temp_dir().join(format!("ferry-double-{name}-{}.pem", std::process::id()));
        std::fs::write(&ca, api.ca_pem()).unwrap();
        let token = Options::default().token;
        Curl {
            url: api.url(),
            ca,
            token,
        }
    }

    /// (HTTP status, body lines) of GET `path`.
    fn get(&self, path: &str) -> (u16, Vec<Value>) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
            .arg(&self.ca)
            .arg(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text
            .trim_end()
            .rsplit_once('\n')
            .unwrap_or(("", text.trim()));
        let lines = body
            .lines()
            .map(|l| serde_json::from_str(l).expect(l))
            .collect();
        (
            code.parse()
                .unwrap_or_else(|_| panic!("curl {path}: {text} {out:?}")),
            lines,
        )
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca);
    }
}

fn double(streaming_lists: bool) -> ApiServer {
    // No progress bookmarks: the tests compare whole streams.
    let opts = Options {
        port: 0,
        streaming_lists,
        bookmark_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    ApiServer::start_in(None, opts).expect("the double starts")
}

#[test]
fn tls_with_its_ca_token_auth_pagination_and_selectors() {
    let api = double(true);
    let mut curl = Curl::new(&api, "auth");
    api.apply(&Service::cluster_ip("a", "10.96.0.1").port("p", 80, "TCP"));
    api.apply(&Service::cluster_ip("b", "10.96.0.2").port("p", 80, "TCP"));
    api.apply(&EndpointSlice::new("a-1", "a").endpoint(Endpoint::ready("10.244.0.2")));

    let (code, page) = curl.get("/api/v1/services?limit=1");
    assert_eq!(code, 200);
    let rv = page[0]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(rv, api.resource_version().to_string());
    assert_eq!(page[0]["items"][0]["metadata"]["name"], "a");
    let token = page[0]["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, next) = curl.get(&format!("/api/v1/services?limit=1&continue={token}"));
    assert_eq!(next[0]["items"][0]["metadata"]["name"], "b");
    assert!(next[0]["metadata"]["continue"].is_null());

    let sel = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Da";
    assert_eq!(curl.get(sel).1[0]["items"].as_array().unwrap().len(), 1);
    let (code, _) = curl.get("/api/v1/nodes?fieldSelector=spec.unschedulable%3Dtrue");
    assert_eq!(
        code, 400,
        "unsupported field selectors are refused, not ignored"
    );
    assert_eq!(curl.get("/api").0, 200);
    assert_eq!(curl.get("/apis/discovery.k8s.io/v1").0, 200);

    curl.token = None;
    let (code, body) = curl.get("/api/v1/services");
    assert_eq!(
        (code, body[0]["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    assert_eq!(api.count(|r| r.path == "/api/v1/services"), 3);
}

#[test]
fn watches_expire_with_410_inside_a_200_and_end_at_their_timeout() {
    let api = double(true);
    let curl = Curl::new(&api, "watch");
    api.apply(&Service::cluster_ip("a", "10.96.0.1").port("p", 80, "TCP"));
    let before = api.resource_version();
    api.apply(&Service::cluster_ip("b", "10.96.0.2").port("p", 80, "TCP"));

    let watch = format!("/api/v1/services?watch=true&timeoutSeconds=1&resourceVersion={before}");
    let (code, events) = curl.get(&watch);
    assert_eq!(code, 200);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "b");

    api.compact();
    let (code, events) = curl.get(&watch);
    assert_eq!(code, 200, "expired: an ERROR event inside a 200 response");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");

    let stream = "/api/v1/services?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan";
    let (code, events) = curl.get(stream);
    assert_eq!(code, 200);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"]);
    let end = &events[2]["object"]["metadata"];
    assert_eq!(end["annotations"]["k8s.io/initial-events-end"], "true");
    assert_eq!(end["resourceVersion"], api.resource_version().to_string());

    let no_bookmarks = stream.replace("allowWatchBookmarks=true&", "");
    assert_eq!(curl.get(&no_bookmarks).0, 422);
}

#[test]
fn without_streaming_lists_send_initial_events_is_refused_as_kubernetes_1_33_does() {
    let api = double(false);
    let curl = Curl::new(&api, "nostream");
    let (code, body) = curl.get("/api/v1/services?watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0");
    assert_eq!((code, body[0]["reason"].as_str()), (422, Some("Invalid")));
}

#[test]
fn stop_and_start_keep_the_port_the_certificate_and_the_objects() {
    let api = double(true);
    let curl = Curl::new(&api, "restart");
    api.apply(&Service::cluster_ip("a", "10.96.0.1").port("p", 80, "TCP"));
    api.stop();
    assert!(!api.is_running());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-k",
            &format!("{}/api", api.url()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "refused while stopped");
    api.start().unwrap();
    let (code, list) = curl.get("/api/v1/services");
    assert_eq!(code, 200, "the same CA still verifies");
    assert_eq!(list[0]["items"].as_array().unwrap().len(), 1);
}
