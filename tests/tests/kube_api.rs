//! The real agent binary watching the Kubernetes API through a kubeconfig. The API is the
//! test double of kube-apiserver in `ferry_tests::apiserver` (no real one can be installed
//! here), listening on 127.0.0.1 of the lab's node namespace where the agent runs.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Endpoint, EndpointSlice, Lab, Pod, Service,
    apiserver::{ApiServer, Logged, Options},
    require_root, services,
};
use serde_json::json;

/// The bound: an API change is in the kernel within this long.
const TWO_SECONDS: Duration = Duration::from_secs(2);
const WEB: &str = "10.96.0.10";
const API: &str = "10.96.0.11";

fn lab_with_api(test: &str, opts: Options) -> (Lab, ApiServer) {
    let lab = Lab::new(test);
    let api = ApiServer::start_in(Some(&lab.node_netns_path()), opts)
        .unwrap_or_else(|e| panic!("starting the API double: {e:#}"));
    (lab, api)
}

fn kubeconfig(lab: &Lab, api: &ApiServer) -> PathBuf {
    let path = lab.tmp_dir().join("kubeconfig");
    api.write_kubeconfig(&path).expect("writing the kubeconfig");
    path
}

fn agent_opts(kubeconfig: PathBuf, extra: &[&str]) -> AgentOpts {
    AgentOpts {
        kubeconfig: Some(kubeconfig),
        extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
        ready_timeout: Duration::from_secs(30),
        ..AgentOpts::default()
    }
}

fn node() -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.244.0.1"}]}})
}

fn web(port: u16) -> Service {
    Service::cluster_ip("web", WEB).port_to("http", i64::from(port), "TCP", 8080u16)
}

fn web_slice(ips: &[&str]) -> EndpointSlice {
    EndpointSlice::new("web-1", "web")
        .port("http", 8080, "TCP")
        .endpoints(ips.iter().map(Endpoint::ready))
}

fn ep(pod: &Pod) -> String {
    format!("{}:8080", pod.ip)
}

/// Waits (≤ `within`) until `vip:port` has exactly these active backends; returns the time.
fn wait_active(lab: &Lab, what: &str, vip: &str, port: u16, want: &[&str], within: Duration) {
    let took = lab.wait_services(
        |v| services::active_is(v, vip, port, Protocol::Tcp, want),
        within,
    );
    println!("latency: {what}: {} ms", took.as_millis());
}

fn wait_gone(lab: &Lab, what: &str, vip: &str, within: Duration) {
    let took = lab.wait_services(|v| !services::has_address(v, vip), within);
    println!("latency: {what}: {} ms", took.as_millis());
}

fn initial_lists(api: &ApiServer, path: &str) -> usize {
    api.count(|r| r.path == path && (!r.is_watch() || r.q("sendInitialEvents") == Some("true")))
}

/// Creates, updates and deletes Services and EndpointSlices; each change must be in the
/// kernel within two seconds.
fn create_update_delete(lab: &Lab, api: &ApiServer) {
    api.apply(&Service::cluster_ip("api", API).port_to("grpc", 81, "TCP", 9090u16));
    api.apply(
        &EndpointSlice::new("api-1", "api")
            .port("grpc", 9090, "TCP")
            .endpoint(Endpoint::ready("10.244.0.20")),
    );
    wait_active(
        lab,
        "service+slice created",
        API,
        81,
        &["10.244.0.20:9090"],
        TWO_SECONDS,
    );

    api.apply(&web_slice(&["10.244.0.10", "10.244.0.11"]));
    let both = ["10.244.0.10:8080", "10.244.0.11:8080"];
    wait_active(lab, "slice updated", WEB, 80, &both, TWO_SECONDS);

    api.apply(&web(80).port_to("https", 443, "TCP", 8080u16));
    let https = web_slice(&["10.244.0.10", "10.244.0.11"]).port("https", 8080, "TCP");
    api.apply(&https);
    wait_active(lab, "service port added", WEB, 443, &both, TWO_SECONDS);

    api.delete(&https);
    wait_active(lab, "slice deleted", WEB, 80, &[], TWO_SECONDS);

    api.delete(&Service::cluster_ip("api", API));
    wait_gone(lab, "service deleted", API, TWO_SECONDS);
}

fn start_with_web(lab: &Lab, api: &ApiServer, extra: &[&str]) {
    api.apply_value(&node());
    api.apply(&web(80));
    api.apply(&web_slice(&["10.244.0.10"]));
    let took = lab.start_agent(&agent_opts(kubeconfig(lab, api), extra));
    println!(
        "latency: agent start -> /readyz 200: {} ms",
        took.as_millis()
    );
    wait_active(
        lab,
        "first sync",
        WEB,
        80,
        &["10.244.0.10:8080"],
        TWO_SECONDS,
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn api_changes_reach_the_kernel_within_two_seconds_with_streaming_lists() {
    require_root!();
    let (lab, api) = lab_with_api(
        "api_changes_reach_the_kernel_within_two_seconds_with_streaming_lists",
        Options::default(),
    );
    start_with_web(&lab, &api, &[]);
    create_update_delete(&lab, &api);

    // One streaming list per collection, never a plain list; every request authenticated
    // (a 401 would have failed the sync) and selecting what kube-proxy selects.
    let requests = api.requests();
    let lists: Vec<&Logged> = requests.iter().filter(|r| !r.is_watch()).collect();
    assert!(
        lists.is_empty(),
        "no plain list with streaming lists: {lists:?}"
    );
    for path in [
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
    ] {
        assert_eq!(initial_lists(&api, path), 1, "{path}: {requests:#?}");
    }
    // Every Node (their addresses are what DSR options may name and what no
    // externalIP may take), not only this one.
    let node = requests.iter().find(|r| r.path == "/api/v1/nodes").unwrap();
    assert_eq!(node.q("fieldSelector"), None);
    let slices = requests
        .iter()
        .find(|r| r.path.ends_with("/endpointslices"))
        .unwrap();
    assert!(
        slices
            .q("labelSelector")
            .unwrap()
            .starts_with("kubernetes.io/service-name,")
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn api_changes_reach_the_kernel_within_two_seconds_with_list_watch() {
    require_root!();
    // A server refusing streaming lists (Kubernetes 1.33's default): the agent falls back.
    let opts = Options {
        streaming_lists: false,
        ..Options::default()
    };
    let (lab, api) = lab_with_api(
        "api_changes_reach_the_kernel_within_two_seconds_with_list_watch",
        opts,
    );
    start_with_web(&lab, &api, &[]);
    create_update_delete(&lab, &api);

    let requests = api.requests();
    let services: Vec<&Logged> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/services")
        .collect();
    assert_eq!(
        services[0].q("sendInitialEvents"),
        Some("true"),
        "streaming tried first"
    );
    assert!(!services[1].is_watch(), "then a list: {:?}", services[1]);
    assert_eq!(services[1].q("limit"), Some("500"));
    assert!(services[2].is_watch(), "then a watch: {:?}", services[2]);
    assert!(services[2].q("resourceVersion").is_some_and(|rv| rv != "0"));
    assert_eq!(services[2].q("allowWatchBookmarks"), Some("true"));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn list_watch_on_request() {
    require_root!();
    let (lab, api) = lab_with_api("list_watch_on_request", Options::default());
    start_with_web(&lab, &api, &["--initial-list", "list-watch"]);
    api.apply(&web_slice(&["10.244.0.12"]));
    wait_active(
        &lab,
        "slice updated",
        WEB,
        80,
        &["10.244.0.12:8080"],
        TWO_SECONDS,
    );
    assert_eq!(api.count(|r| r.q("sendInitialEvents").is_some()), 0);
    assert_eq!(
        api.count(|r| !r.is_watch() && r.path.starts_with("/api")),
        3
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn expired_version_mid_watch_relists_and_catches_deletions_made_while_cut_off() {
    require_root!();
    let (lab, api) = lab_with_api(
        "expired_version_mid_watch_relists_and_catches_deletions_made_while_cut_off",
        Options::default(),
    );
    start_with_web(&lab, &api, &[]);
    api.apply(&Service::cluster_ip("api", API).port_to("grpc", 81, "TCP", 9090u16));
    wait_active(&lab, "service created", API, 81, &[], TWO_SECONDS);
    let lists_before = initial_lists(&api, "/api/v1/services");

    // The agent's watches stall (events held back), deletions and a change happen...
    api.stall_watches(true);
    api.delete(&Service::cluster_ip("api", API));
    api.delete(&web_slice(&[]));
    api.apply(&Service::cluster_ip("new", "10.96.0.12").port("dns", 53, "UDP"));
    thread::sleep(Duration::from_secs(1));
    let v = lab.services();
    assert!(
        services::has_address(&v, API),
        "the agent was cut off: {v:?}"
    );

    // ...then the server compacts its history: the watches end with a 410 ERROR event,
    // and the agent re-lists, which drops what was deleted meanwhile.
    api.compact();
    api.stall_watches(false);
    let took = lab.wait_services(
        |v| {
            !services::has_address(v, API)
                && services::active_is(v, WEB, 80, Protocol::Tcp, &[])
                && services::frontend(v, "10.96.0.12", 53, Protocol::Udp).is_some()
        },
        Duration::from_secs(10),
    );
    println!(
        "latency: 410 -> re-listed and programmed: {} ms",
        took.as_millis()
    );
    assert_eq!(
        initial_lists(&api, "/api/v1/services"),
        lists_before + 1,
        "one re-list"
    );

    // And the new watches work.
    api.apply(&web_slice(&["10.244.0.13"]));
    wait_active(
        &lab,
        "after the re-list",
        WEB,
        80,
        &["10.244.0.13:8080"],
        TWO_SECONDS,
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn api_down_for_ten_seconds_keeps_traffic_flowing_and_the_agent_catches_up() {
    require_root!();
    let (lab, api) = lab_with_api(
        "api_down_for_ten_seconds_keeps_traffic_flowing_and_the_agent_catches_up",
        Options::default(),
    );
    let a = lab.add_pod("a");
    let b = lab.add_pod("b");
    let client = lab.add_pod("client");
    let _echo_a = lab.start_echo(&a, &[8080], &[]);
    let _echo_b = lab.start_echo(&b, &[8080], &[]);
    api.apply(&web(80));
    api.apply(&web_slice(&[&a.ip.to_string()]));
    lab.start_agent(&agent_opts(kubeconfig(&lab, &api), &[]));
    wait_active(&lab, "first sync", WEB, 80, &[&ep(&a)], TWO_SECONDS);

    let target = format!("{WEB}:80");
    let mut clients = lab.client_loop(
        &client,
        &[
            "tcp",
            &target,
            "--interval-ms",
            "100",
            "--timeout-ms",
            "1000",
        ],
    );
    clients.wait_more(3, Duration::from_secs(10));

    api.stop();
    let down = Instant::now();
    // A change the agent cannot see while the server is down.
    api.apply(&web_slice(&[&a.ip.to_string(), &b.ip.to_string()]));
    let before = clients.attempts().len();
    while down.elapsed() < Duration::from_secs(10) {
        assert_eq!(lab.readyz(), Some(200), "still ready while the API is down");
        thread::sleep(Duration::from_millis(500));
    }
    let during: Vec<_> = clients.attempts()[before..].to_vec();
    assert!(
        during.len() >= 50,
        "the client kept trying: {} attempts",
        during.len()
    );
    for attempt in &during {
        assert!(
            attempt.ok,
            "traffic failed while the API was down: {}",
            attempt.raw
        );
        assert_eq!(attempt.pod().as_deref(), Some("a"), "{}", attempt.raw);
    }
    let v = lab.services();
    assert!(
        services::active_is(&v, WEB, 80, Protocol::Tcp, &[&ep(&a)]),
        "unchanged while down: {v:?}"
    );

    api.start().expect("restarting the API double");
    let back = Instant::now();
    wait_active(
        &lab,
        "caught up",
        WEB,
        80,
        &[&ep(&a), &ep(&b)],
        Duration::from_secs(40),
    );
    println!(
        "latency: API back -> caught up: {} ms",
        back.elapsed().as_millis()
    );
    clients.wait_for(Duration::from_secs(10), |a| a.pod().as_deref() == Some("b"));
    let all = clients.stop();
    let failed: Vec<&str> = all
        .iter()
        .filter(|a| !a.ok)
        .map(|a| a.raw.as_str())
        .collect();
    assert!(failed.is_empty(), "failed attempts: {failed:#?}");
    let answered: BTreeSet<String> = all.iter().filter_map(|a| a.pod()).collect();
    assert_eq!(answered, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn readyz_only_after_the_first_sync() {
    require_root!();
    let (lab, api) = lab_with_api("readyz_only_after_the_first_sync", Options::default());
    api.apply(&web(80));
    api.apply(&web_slice(&["10.244.0.10"]));
    // Down when the agent starts, then up but withholding its list responses.
    api.stop();
    api.hold_lists(true);
    let opts = agent_opts(kubeconfig(&lab, &api), &[]);
    thread::scope(|s| {
        let starting = s.spawn(|| lab.start_agent(&opts));
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.readyz().is_none() {
            assert!(
                Instant::now() < deadline,
                "the health server never answered"
            );
            thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..10 {
            assert_eq!(lab.readyz(), Some(503), "not ready while the API is down");
            thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            lab.healthz_status("/livez"),
            Some(200),
            "alive all the same"
        );

        api.start().expect("starting the API double");
        let deadline = Instant::now() + Duration::from_secs(30);
        while initial_lists(&api, "/api/v1/services") == 0 {
            assert!(
                Instant::now() < deadline,
                "the agent never asked for services"
            );
            thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..5 {
            assert_eq!(
                lab.readyz(),
                Some(503),
                "not ready while lists are withheld"
            );
            thread::sleep(Duration::from_millis(200));
        }
        let v = lab.services();
        assert!(
            !services::has_address(&v, WEB),
            "nothing programmed yet: {v:?}"
        );

        api.hold_lists(false);
        let released = Instant::now();
        starting.join().expect("the agent got ready");
        println!(
            "latency: lists released -> ready: {} ms",
            released.elapsed().as_millis()
        );
    });
    assert_eq!(lab.readyz(), Some(200));
    let v = lab.services();
    assert!(
        services::active_is(&v, WEB, 80, Protocol::Tcp, &["10.244.0.10:8080"]),
        "ready = synced: {v:?}"
    );
}

/// In a pod no kubeconfig is given: the agent takes the API server's address from the node
/// kubelet's kubeconfig (its credentials left alone) and authenticates with the pod's service
/// account, not through the `kubernetes` ClusterIP kubelet's environment names (which only a
/// running proxy answers). With nothing to discover it says so.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn the_api_server_is_found_from_the_kubelets_kubeconfig_with_the_pods_service_account() {
    require_root!();
    let (lab, api) = lab_with_api(
        "the_api_server_is_found_from_the_kubelets_kubeconfig_with_the_pods_service_account",
        Options::default(),
    );
    // The pod's service account: the token the double requires, the cluster's CA.
    let sa = lab.tmp_dir().join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), "ferry-lab-token").unwrap();
    std::fs::write(sa.join("ca.crt"), api.ca_pem()).unwrap();
    std::fs::write(sa.join("namespace"), "kube-system").unwrap();
    // The kubelet's kubeconfig: a client certificate ferry must not (and cannot) use.
    let kubelet = lab.tmp_dir().join("kubelet.conf");
    std::fs::write(
        &kubelet,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    \
             certificate-authority: /etc/kubernetes/pki/ca.crt\n    server: {}\n\
             contexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    \
             user: default-auth\ncurrent-context: default-context\nusers:\n- name: default-auth\n  \
             user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
            api.url()
        ),
    )
    .unwrap();
    api.apply_value(&node());
    api.apply(&web(80));
    api.apply(&web_slice(&["10.244.0.10"]));
    let (sa_dir, kubelet_path) = (sa.to_string_lossy(), kubelet.to_string_lossy());
    let absent = lab.tmp_dir().join("kube-proxy.conf");
    let args = [
        "--service-account-dir",
        &sa_dir,
        "--apiserver-kubeconfig",
        &absent.to_string_lossy(),
        "--apiserver-kubeconfig",
        &kubelet_path,
    ]
    .map(str::to_owned);
    // What kubelet puts in every pod's environment: the ClusterIP, which nothing serves here.
    let in_cluster = vec![
        ("KUBERNETES_SERVICE_HOST".to_owned(), "10.96.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT".to_owned(), "443".to_owned()),
    ];
    let mut opts = AgentOpts {
        discover_api: true,
        extra_args: args.to_vec(),
        ready_timeout: Duration::from_secs(30),
        ..AgentOpts::default()
    };
    opts.env.extend(in_cluster.clone());
    lab.start_agent(&opts);
    wait_active(
        &lab,
        "first sync through the discovered server",
        WEB,
        80,
        &["10.244.0.10:8080"],
        TWO_SECONDS,
    );
    let log = lab.agent_log();
    assert!(
        log.contains("API server") && log.contains(&format!("the server of {kubelet_path}")),
        "{log}"
    );
    // The double answers 401 without its token: the sync above came with the service
    // account's.
    lab.stop_agent();

    // Nothing to discover: the in-cluster address, with a warning that names the fix.
    let mut opts = AgentOpts {
        discover_api: true,
        extra_args: [
            "--service-account-dir",
            &sa_dir,
            "--apiserver-kubeconfig",
            &absent.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec(),
        ready_timeout: Duration::from_secs(30),
        ..AgentOpts::default()
    };
    opts.env.extend(in_cluster);
    let out = lab.agent_until_exit(&opts, &lab.tmp_dir().join("pins2"), Duration::from_secs(3));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("KUBERNETES_SERVICE_HOST") && log.contains("--master"),
        "{log}"
    );
}
