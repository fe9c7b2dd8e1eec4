//! deploy/: every manifest parses into the Kubernetes API types, and the DaemonSet and the
//! ClusterRole grant exactly what ferry needs. Root only for running the agent against the
//! API server double (which verbs it uses).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Endpoint, EndpointSlice, Lab, Node, Service,
    apiserver::{ApiServer, Logged, Options},
    lab::NODE_NAME,
    services,
};
use k8s_openapi::{
    Resource,
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, PodSpec, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule},
    },
};
use serde::{Deserialize as _, de::DeserializeOwned};
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses a manifest into its API type, checking apiVersion and kind.
fn parse<T: Resource + DeserializeOwned>(name: &str) -> T {
    let text = read(name);
    let raw: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(raw["apiVersion"].as_str(), Some(T::API_VERSION), "{name}");
    assert_eq!(raw["kind"].as_str(), Some(T::KIND), "{name}");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name} as {}: {e}", T::KIND))
}

fn daemonset() -> DaemonSet {
    parse("daemonset.yaml")
}

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec.clone().unwrap().template.spec.unwrap()
}

fn container(ds: &DaemonSet) -> Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(
        spec.init_containers.is_none(),
        "no (privileged) init containers"
    );
    spec.containers[0].clone()
}

fn arg<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    c.args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix(&prefix))
}

fn strings(v: &Option<Vec<String>>) -> BTreeSet<&str> {
    v.iter().flatten().map(String::as_str).collect()
}

#[test]
fn kustomization_lists_every_manifest_in_kube_system() {
    let k: Value = serde_yaml::from_str(&read("kustomization.yaml")).unwrap();
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    assert_eq!(k["namespace"].as_str(), Some("kube-system"));
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let on_disk: BTreeSet<String> = fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk);
    assert_eq!(
        k["images"][0]["name"].as_str(),
        container(&daemonset()).image.as_deref()
    );
}

#[test]
fn every_manifest_parses_into_its_api_type() {
    let sa: ServiceAccount = parse("serviceaccount.yaml");
    let role: ClusterRole = parse("clusterrole.yaml");
    let binding: ClusterRoleBinding = parse("clusterrolebinding.yaml");
    let config: ConfigMap = parse("configmap.yaml");
    let ds = daemonset();
    assert_eq!(sa.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(config.metadata.namespace.as_deref(), Some("kube-system"));

    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some("kube-system"));
    assert_eq!(pod_spec(&ds).service_account_name, sa.metadata.name);

    // Nothing to edit by default: the API server is discovered; FERRY_APISERVER overrides it.
    assert!(config.data.unwrap_or_default().is_empty());
    assert!(read("configmap.yaml").contains("FERRY_APISERVER"));
    let from = container(&ds).env_from.unwrap();
    assert_eq!(
        from[0].config_map_ref.as_ref().unwrap().name,
        config.metadata.name.unwrap()
    );
    assert_eq!(
        from[0].config_map_ref.as_ref().unwrap().optional,
        Some(true)
    );
}

/// The DaemonSet mounts the kubeconfigs the agent takes the API server's address from, where
/// the agent looks for them: kube-proxy's ConfigMap (optional) and the kubelet's directory.
#[test]
fn daemonset_mounts_where_the_agent_finds_the_api_server() {
    use ferry::source::kube::apiserver::DISCOVERY_KUBECONFIGS;
    let ds = daemonset();
    let spec = pod_spec(&ds);
    let c = container(&ds);
    let mounts = c.volume_mounts.unwrap();
    let volume = |name: &str| {
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let mount_path = |name: &str| {
        let m = mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(m.read_only, Some(true), "{name}");
        m.mount_path.clone()
    };

    let kp = volume("kube-proxy-kubeconfig").config_map.unwrap();
    assert_eq!(kp.name, "kube-proxy");
    assert_eq!(
        kp.optional,
        Some(true),
        "clusters without kube-proxy have none"
    );
    let item = &kp.items.unwrap()[0];
    let kp_file = format!("{}/{}", mount_path("kube-proxy-kubeconfig"), item.path);
    assert_eq!(item.key, "kubeconfig.conf");
    assert_eq!(DISCOVERY_KUBECONFIGS[0], kp_file);

    let host = volume("kubelet-kubeconfig").host_path.unwrap();
    let kubelet_file = format!("{}/kubelet.conf", mount_path("kubelet-kubeconfig"));
    assert_eq!(host.path, "/etc/kubernetes");
    assert!(
        DISCOVERY_KUBECONFIGS.contains(&kubelet_file.as_str()),
        "{kubelet_file}"
    );
}

/// (apiGroup, resource, verb), as RBAC names what a request does.
type Grant = (String, String, String);

/// Every (apiGroup, resource, verb) the ClusterRole grants.
fn granted() -> BTreeSet<Grant> {
    let role: ClusterRole = parse("clusterrole.yaml");
    let mut granted = BTreeSet::new();
    for PolicyRule {
        api_groups,
        resources,
        verbs,
        resource_names,
        non_resource_urls,
    } in role.rules.unwrap()
    {
        assert!(resource_names.is_none() && non_resource_urls.is_none());
        for group in api_groups.unwrap() {
            for resource in resources.clone().unwrap() {
                for verb in &verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

fn grants(list: &[(&str, &str, &str)]) -> BTreeSet<Grant> {
    list.iter()
        .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect()
}

/// Granted for the Kubernetes Events the agent is to report (core or events.k8s.io); it
/// sends none yet, so these are the only grants no request of the agent's uses.
const EVENTS: [(&str, &str, &str); 4] = [
    ("", "events", "create"),
    ("", "events", "patch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

#[test]
fn cluster_role_grants_lists_watches_and_events() {
    let want = grants(&[
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
    ]);
    let want: BTreeSet<Grant> = want.union(&grants(&EVENTS)).cloned().collect();
    assert_eq!(granted(), want);
}

/// What RBAC checks for a request to the API (None for non-resource URLs such as discovery,
/// which every authenticated user may read).
fn rbac_of(r: &Logged) -> Option<Grant> {
    let segs: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let verb = match (r.method.as_str(), named) {
        ("GET", _) if r.is_watch() => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        (other, _) => panic!("a {other} request: {r:?}"),
    };
    Some((group.to_owned(), resource, verb.to_owned()))
}

/// The agent runs against the API server double twice, with streaming lists (what `auto`
/// uses where the server has them) and with list+watch (Kubernetes 1.33's default): the
/// ClusterRole must grant exactly the verbs of the requests it made, plus the Events'.
#[test]
fn cluster_role_grants_exactly_the_verbs_the_agent_uses() {
    ferry_tests::require_root!();
    let mut used = BTreeSet::new();
    for mode in ["streaming", "list-watch"] {
        let lab = Lab::new(&format!("cluster_role_verbs_{mode}"));
        let api = ApiServer::start_in(Some(&lab.node_netns_path()), Options::default())
            .unwrap_or_else(|e| panic!("starting the API double: {e:#}"));
        let kubeconfig = lab.tmp_dir().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        api.apply(&Node::new(NODE_NAME, "10.244.0.1"));
        api.apply(&Service::cluster_ip("web", "10.96.0.10").port_to("http", 80, "TCP", 8080u16));
        let slice = EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::ready("10.244.0.10"));
        api.apply(&slice);
        lab.start_agent(&AgentOpts {
            kubeconfig: Some(kubeconfig),
            extra_args: vec!["--initial-list".into(), mode.into()],
            ready_timeout: Duration::from_secs(30),
            ..AgentOpts::default()
        });
        // A change while it watches, then a compaction that makes every watch start over.
        api.apply(&slice.endpoint(Endpoint::ready("10.244.0.11")));
        lab.wait_services(
            |v| {
                services::active_is(
                    v,
                    "10.96.0.10",
                    80,
                    Protocol::Tcp,
                    &["10.244.0.10:8080", "10.244.0.11:8080"],
                )
            },
            Duration::from_secs(10),
        );
        let before = api.requests().len();
        api.compact();
        let t0 = Instant::now();
        while api.requests().len() < before + 3 && t0.elapsed() < Duration::from_secs(20) {
            thread::sleep(ferry_tests::proc::POLL);
        }
        let requests = api.requests();
        let mine: BTreeSet<Grant> = requests.iter().filter_map(rbac_of).collect();
        println!(
            "--initial-list {mode}: {} requests: {mine:?}",
            requests.len()
        );
        used.extend(mine);
    }
    let expected: BTreeSet<Grant> = used.union(&grants(&EVENTS)).cloned().collect();
    assert_eq!(
        granted(),
        expected,
        "the ClusterRole's verbs (left) against those the agent used plus the Events' (right)"
    );
}

#[test]
fn daemonset_runs_like_kube_proxy() {
    let ds = daemonset();
    let spec = pod_spec(&ds);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = spec.tolerations.unwrap();
    assert_eq!(tolerations.len(), 1, "one toleration: everything");
    assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
    assert!(tolerations[0].key.is_none() && tolerations[0].effect.is_none());
    assert_ne!(spec.host_pid, Some(true));
    assert_ne!(spec.host_ipc, Some(true));

    let c = container(&ds);
    let node_name = c
        .env
        .clone()
        .unwrap()
        .into_iter()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node_name.value_from.unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    assert_eq!(c.args.as_ref().unwrap()[0], "agent");
    assert_eq!(arg(&c, "--healthz-bind-address"), Some("0.0.0.0:10256"));
    let requests = c.resources.unwrap().requests.unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
}

#[test]
fn daemonset_holds_exactly_the_capabilities_it_needs_and_is_not_privileged() {
    let c = container(&daemonset());
    let sc = c.security_context.unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(strings(&caps.drop), BTreeSet::from(["ALL"]));
    assert_eq!(
        strings(&caps.add),
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"])
    );
    // The runtime's seccomp filter, for the whole pod, not relaxed by the container.
    let pod_sc = pod_spec(&daemonset()).security_context.unwrap();
    assert_eq!(pod_sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert!(sc.seccomp_profile.is_none());
    // AppArmor's and SELinux's default container profiles deny the bpffs and cgroup writes:
    // the agent's confinement is its capability set and seccomp instead.
    assert_eq!(sc.app_armor_profile.as_ref().unwrap().type_, "Unconfined");
    assert_eq!(
        sc.se_linux_options.as_ref().unwrap().type_.as_deref(),
        Some("spc_t")
    );
    // AppArmor's default profile denies pinning under /sys/fs/bpf: unconfined, by name.
    assert_eq!(sc.app_armor_profile.unwrap().type_, "Unconfined");
}

/// Each added capability has its comment in the DaemonSet: what it is for and what fails
/// without it (as tests/tests/capabilities.rs shows).
#[test]
fn daemonset_explains_each_capability() {
    let text = read("daemonset.yaml");
    for cap in ["BPF", "NET_ADMIN", "PERFMON"] {
        let item = format!("                - {cap}\n");
        let at = text
            .find(&item)
            .unwrap_or_else(|| panic!("no `- {cap}` item"));
        let comment: Vec<&str> = text[..at]
            .lines()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'))
            .collect();
        let comment = comment.join(" ");
        assert!(comment.contains(&format!("{cap}:")), "{cap}: {comment}");
        assert!(comment.contains("Without it"), "{cap}: {comment}");
    }
    for not in ["Not SYS_ADMIN", "Not SYS_RESOURCE"] {
        assert!(text.contains(not), "no word on {not}");
    }
}

#[test]
fn daemonset_mounts_the_hosts_bpffs_and_cgroup2_where_the_agent_looks() {
    let ds = daemonset();
    let spec = pod_spec(&ds);
    let c = container(&ds);
    let host_paths: BTreeMap<String, String> = spec
        .volumes
        .unwrap()
        .into_iter()
        .filter(|v| v.name == "bpffs" || v.name == "cgroup2")
        .map(|v| {
            let hp = v
                .host_path
                .unwrap_or_else(|| panic!("volume {} is not a hostPath", v.name));
            assert_eq!(hp.type_.as_deref(), Some("Directory"), "{}", v.name);
            (v.name, hp.path)
        })
        .collect();
    assert_eq!(host_paths.len(), 2);
    let mounts = c.volume_mounts.clone().unwrap();
    let mount_of = |host: &str| {
        let (name, _) = host_paths.iter().find(|(_, p)| *p == host).unwrap();
        mounts.iter().find(|m| &m.name == name).unwrap().clone()
    };

    let bpffs = mount_of("/sys/fs/bpf");
    assert_eq!(bpffs.mount_path, "/sys/fs/bpf");
    // Bidirectional is refused by the API server for unprivileged containers.
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_ne!(bpffs.read_only, Some(true), "the agent pins there");
    let pins = arg(&c, "--bpffs").unwrap();
    assert!(pins.starts_with("/sys/fs/bpf/"), "{pins}");

    let cgroup = mount_of("/sys/fs/cgroup");
    assert_eq!(cgroup.read_only, Some(true));
    assert_eq!(arg(&c, "--cgroup"), Some(cgroup.mount_path.as_str()));
}

#[test]
fn daemonset_probes_the_health_server() {
    let c = container(&daemonset());
    let get = |p: Option<Probe>| {
        let http = p.unwrap().http_get.unwrap();
        let port = match http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n,
            other => panic!("probe port {other:?}"),
        };
        (http.path.unwrap(), port)
    };
    assert_eq!(get(c.liveness_probe), ("/livez".to_owned(), 10256));
    assert_eq!(get(c.readiness_probe), ("/readyz".to_owned(), 10256));
    let port = &c.ports.unwrap()[0];
    assert_eq!(
        (port.container_port, port.name.as_deref()),
        (10256, Some("healthz"))
    );
}

/// The DaemonSet's flags are the agent's: `ferry agent --help` lists every one of them.
#[test]
fn daemonset_flags_exist_in_the_agent() {
    let Some(bin) = ferry_tests::proc::sibling_binary("ferry") else {
        panic!("the ferry binary is missing: build it: cargo build -p agent");
    };
    let out = Command::new(&bin)
        .args(["agent", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for a in container(&daemonset()).args.unwrap().iter().skip(1) {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "ferry agent has no {flag}:\n{help}");
    }
}

/// `kubectl kustomize DIR` (Debian's kubectl renders offline): every object, parsed.
fn kustomize(dir: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl, which these machines ship (Debian's renders kustomize offline): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn the_base_renders_in_kube_system() {
    let objects = kustomize("base");
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount"
        ])
    );
    let ds: DaemonSet = serde_yaml::from_value(kind(&objects, "DaemonSet").clone()).unwrap();
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(
        arg(&container(&ds), "--metrics-bind-address"),
        Some("127.0.0.1:10249")
    );
}

#[test]
fn the_monitoring_overlay_scrapes_a_named_port_with_kube_proxys_job() {
    let objects = kustomize("monitoring");
    let ds: DaemonSet = serde_yaml::from_value(kind(&objects, "DaemonSet").clone()).unwrap();
    let c = container(&ds);
    assert_eq!(arg(&c, "--metrics-bind-address"), Some("0.0.0.0:10249"));
    let ports: BTreeMap<String, i32> = c
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port))
        .collect();
    assert_eq!(ports.get("metrics"), Some(&10249), "{ports:?}");

    // The PodMonitor selects the DaemonSet's pods, on that port, in their namespace.
    let pm = kind(&objects, "PodMonitor");
    let labels = ds.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    let selector = pm["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    for (k, v) in selector {
        assert_eq!(
            labels.get(k.as_str().unwrap()).map(String::as_str),
            v.as_str(),
            "the PodMonitor selects {k:?}"
        );
    }
    assert_eq!(
        pm["spec"]["namespaceSelector"]["matchNames"][0].as_str(),
        Some("kube-system")
    );
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"].as_str(), Some("metrics"));
    let job = ep["relabelings"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["targetLabel"].as_str() == Some("job"))
        .expect("a job relabeling");
    assert_eq!(job["replacement"].as_str(), Some("kube-proxy"));

    // Every alert carries an expression and a severity; the dashboard is JSON Grafana's
    // sidecar picks up.
    let rules = kind(&objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap();
    assert!(rules.len() >= 5);
    for r in rules {
        assert!(
            r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{r:?}"
        );
        assert!(r["labels"]["severity"].as_str().is_some(), "{r:?}");
    }
    let cm = objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some("ConfigMap")
                && o["metadata"]["name"].as_str() == Some("ferry-dashboard")
        })
        .expect("the dashboard ConfigMap");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let dash: serde_json::Value =
        serde_json::from_str(cm["data"]["ferry-dashboard.json"].as_str().unwrap()).unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 8);
}

/// The image's build context is the sources: no build output, no history (a Dockerfile build
/// would otherwise send gigabytes of target/).
#[test]
fn the_image_build_context_leaves_out_build_output_and_history() {
    let ignore = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dockerignore"))
        .expect(".dockerignore at the repository root");
    let lines: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/", "fuzz/corpus/", "docs/bench-raw/"] {
        assert!(lines.contains(needed), "{needed} not ignored: {lines:?}");
    }
    let dockerfile =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"))
            .unwrap();
    assert!(
        dockerfile.contains("ARG FERRY_GIT_REVISION"),
        "the revision reaches the build"
    );
    assert!(dockerfile.contains("cargo xtask build --release"));
}

/// kind's overlay: the base plus a privileged init step running ferry's own `mount-bpffs` on
/// the host's /sys/fs/bpf (propagated back: Bidirectional); the agent stays unprivileged.
#[test]
fn the_kind_overlay_mounts_a_bpffs_first_and_only_that_step_is_privileged() {
    let objects = kustomize("kind");
    let ds: DaemonSet = serde_yaml::from_value(kind(&objects, "DaemonSet").clone()).unwrap();
    let spec = pod_spec(&ds);
    let init = spec.init_containers.clone().expect("an init container");
    assert_eq!(init.len(), 1);
    let step = &init[0];
    let args = step.args.clone().unwrap();
    assert_eq!(args[0], "mount-bpffs");
    assert_eq!(
        step.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    let m = &step.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (m.mount_path.as_str(), m.mount_propagation.as_deref()),
        ("/sys/fs/bpf", Some("Bidirectional"))
    );
    let bpffs = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == m.name)
        .unwrap();
    assert_eq!(bpffs.host_path.unwrap().path, "/sys/fs/bpf");
    assert_eq!(step.image, spec.containers[0].image, "ferry's own image");
    let agent = &spec.containers[0];
    assert_ne!(
        agent.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    // The step's arguments are a command of this binary.
    let bin = ferry_tests::proc::sibling_binary("ferry").expect("the ferry binary");
    let help = Command::new(&bin)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
}

/// k3s's overlay mounts the node's k3s kubelet kubeconfig where the agent looks for one.
#[test]
fn the_k3s_overlay_mounts_k3s_kubelet_kubeconfig_where_the_agent_looks() {
    use ferry::source::kube::apiserver::DISCOVERY_KUBECONFIGS;
    let objects = kustomize("k3s");
    let ds: DaemonSet = serde_yaml::from_value(kind(&objects, "DaemonSet").clone()).unwrap();
    let spec = pod_spec(&ds);
    let volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "k3s-kubelet-kubeconfig")
        .expect("the k3s volume");
    assert_eq!(volume.host_path.unwrap().path, "/var/lib/rancher/k3s/agent");
    let mount = spec.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "k3s-kubelet-kubeconfig")
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    let file = format!("{}/kubelet.kubeconfig", mount.mount_path);
    assert!(DISCOVERY_KUBECONFIGS.contains(&file.as_str()), "{file}");
}

/// Every kustomization renders, and every object in it parses into its k8s-openapi type (the
/// Prometheus Operator's kinds, which k8s-openapi does not know, are checked by their
/// apiVersion).
#[test]
fn every_kustomization_renders_into_api_types() {
    fn typed<T: Resource + DeserializeOwned>(o: &Value, dir: &str) {
        assert_eq!(o["apiVersion"].as_str(), Some(T::API_VERSION), "{dir}");
        if let Err(e) = serde_yaml::from_value::<T>(o.clone()) {
            panic!("{dir}: {} {:?}: {e}", T::KIND, o["metadata"]["name"]);
        }
    }
    for dir in ["base", "monitoring", "kind", "k3s"] {
        let objects = kustomize(dir);
        assert!(!objects.is_empty(), "{dir}");
        for o in &objects {
            assert_eq!(
                o["metadata"]["namespace"].as_str().or(Some("kube-system")),
                Some("kube-system"),
                "{dir}: {o:?}"
            );
            match o["kind"].as_str().unwrap_or_default() {
                "DaemonSet" => typed::<DaemonSet>(o, dir),
                "ConfigMap" => typed::<ConfigMap>(o, dir),
                "ServiceAccount" => typed::<ServiceAccount>(o, dir),
                "ClusterRole" => typed::<ClusterRole>(o, dir),
                "ClusterRoleBinding" => typed::<ClusterRoleBinding>(o, dir),
                "PodMonitor" | "PrometheusRule" => {
                    assert_eq!(o["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"))
                }
                other => panic!("{dir}: an object of kind {other:?}"),
            }
        }
    }
}
