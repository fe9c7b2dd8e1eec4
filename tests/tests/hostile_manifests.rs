//! Issue 9, items 9 and 11, on a running agent: hostile manifests. A YAML tag once panicked
//! the agent (the file `!x {apiVersion: v1, kind: List, items: []}`); now no input reaches a
//! panic (a local tag is looked through, as the API machinery's YAML-to-JSON does), and a file
//! that cannot be read or parsed keeps the objects it had, with a diagnostic, until it is
//! fixed. Names are validated as the API server would (DNS-1123 and
//! DNS-1035 lengths and characters), and a file over the size cap is not read.
//!
//! Each test: a one-node lab, its agent reading the lab's manifests directory, real clients
//! connecting through the ClusterIPs (the socket layer), and `ferry services -o json` asked in
//! the node's namespace so that the agent's diagnostics are joined in.

mod agent_view;

use std::{fs, io::Write as _, time::Duration};

use agent_view::{AgentView, has_diagnostic, serves};
use ferry::{cmd::services::ServicesView, model::Protocol, source::manifests::Limits};
use ferry_tests::{
    AgentOpts, Endpoint, EndpointSlice, Lab, Pod, Service,
    manifests::Manifest,
    require_root,
    services::{frontend, has_address},
};

/// How long a manifest change may take to reach the kernel (no benchmark).
const DEADLINE: Duration = Duration::from_secs(10);
const VIP: &str = "10.96.0.10";
const OTHER_VIP: &str = "10.96.0.11";
/// The file of issue 9, item 9.
const TAGGED: &str = "!x {apiVersion: v1, kind: List, items: []}";
const TAGGED_VIP: &str = "10.96.0.12";
/// A document that is not YAML: its flow mapping is never closed.
const BROKEN: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: default\n";

/// ClusterIP Service `name` at `vip`:`port` -> 8080.
fn service(name: &str, vip: &str, port: i64) -> Service {
    Service::cluster_ip(name, vip).port_to("http", port, "TCP", 8080u16)
}

fn slice(service: &str, pods: &[&Pod]) -> EndpointSlice {
    EndpointSlice::new(&format!("{service}-1"), service)
        .port("http", 8080, "TCP")
        .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)))
}

/// Several objects as one multi-document YAML file.
fn docs(objects: &[&dyn Manifest]) -> String {
    objects
        .iter()
        .map(|o| o.to_yaml())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn eps(pods: &[&Pod]) -> Vec<String> {
    pods.iter().map(|p| format!("{}:8080", p.ip)).collect()
}

/// A file of the manifests directory as the agent names it in diagnostics.
fn shown(lab: &Lab, file: &str) -> String {
    lab.manifests().dir().join(file).display().to_string()
}

/// Backends (pods at 8080) with echo servers, a client pod, and the lab.
fn lab_with(test: &str, backends: &[&str]) -> (Lab, Vec<Pod>, Pod, Vec<ferry_tests::proc::Proc>) {
    let lab = Lab::new(test);
    let pods: Vec<Pod> = backends.iter().map(|n| lab.add_pod(n)).collect();
    let client = lab.add_pod("client");
    let echo = pods
        .iter()
        .map(|p| lab.start_echo(p, &[8080], &[]))
        .collect();
    (lab, pods, client, echo)
}

/// The agent is still up and says so: running, /livez and /healthz 200, no panic logged.
fn stays_up(lab: &Lab, node: &AgentView) {
    let log = lab.agent_log();
    assert!(lab.agent_running(), "the agent exited:\n{log}");
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    for path in ["/livez", "/healthz"] {
        assert_eq!(node.health(path), Some(200), "{path}\n{log}");
    }
}

/// `count` connections from `client` to `target`, each answered by one of `pods`.
fn answered_by(lab: &Lab, client: &Pod, target: &str, pods: &[&Pod], count: u32) {
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    let attempts = lab.tcp(client, target, count);
    for a in &attempts {
        assert!(
            a.ok && a.pod().is_some_and(|p| names.contains(&p.as_str())),
            "{target}: expected an answer from {names:?}: {}\n{}",
            a.raw,
            lab.agent_log()
        );
    }
    println!("client -> {target}: {count} connections answered by {names:?}");
}

/// A connect that reaches nothing: no frontend translates the address.
fn not_served(lab: &Lab, client: &Pod, target: &str) {
    let a = lab
        .client(client, &["tcp", target, "--timeout-ms", "1000"])
        .remove(0);
    println!("client -> {target}: {}", a.raw);
    assert!(!a.ok, "{target} answered: {}", a.raw);
}

fn wait(
    lab: &Lab,
    node: &AgentView,
    what: &str,
    pred: impl Fn(&ServicesView) -> bool,
) -> ServicesView {
    node.wait_services(what, pred, DEADLINE, || lab.agent_log())
        .0
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_yaml_tag_or_a_syntax_error_never_stops_the_agent_and_a_broken_file_keeps_its_objects() {
    require_root!();
    let (lab, pods, client, _echo) = lab_with(
        "a_yaml_tag_or_a_syntax_error_never_stops_the_agent_and_a_broken_file_keeps_its_objects",
        &["b1", "b2"],
    );
    let (b1, b2) = (&pods[0], &pods[1]);
    let m = lab.manifests();
    let other = service("other", OTHER_VIP, 80);
    m.write_raw(
        "web.yaml",
        &docs(&[&service("web", VIP, 80), &slice("web", &[b1])]),
    );
    m.write_raw("other.yaml", &docs(&[&other, &slice("other", &[b2])]));
    lab.start_agent(&AgentOpts::default());
    let node = AgentView::of_lab(&lab);
    wait(&lab, &node, "both Services programmed", |v| {
        serves(v, VIP, 80, Protocol::Tcp, &eps(&[b1]))
            && serves(v, OTHER_VIP, 80, Protocol::Tcp, &eps(&[b2]))
    });

    // The file that panicked the agent, then (read after it) a tagged List of tagged objects:
    // the tags are looked through and nothing else changes.
    m.write_raw("tag.yaml", TAGGED);
    let tagged = Service::cluster_ip("tagged", TAGGED_VIP).port_to("http", 80, "TCP", 8080u16);
    m.write_raw(
        "tagged-list.yaml",
        &format!(
            "!x {{apiVersion: v1, kind: List, items: [!y {}, !z {}]}}\n",
            tagged.to_value(),
            slice("tagged", &[b2]).to_value()
        ),
    );
    let v = wait(&lab, &node, "the tagged List's Service programmed", |v| {
        serves(v, TAGGED_VIP, 80, Protocol::Tcp, &eps(&[b2]))
    });
    println!("diagnostics: {:#?}", v.diagnostics);
    stays_up(&lab, &node);
    answered_by(&lab, &client, &format!("{VIP}:80"), &[b1], 3);
    answered_by(&lab, &client, &format!("{OTHER_VIP}:80"), &[b2], 3);
    answered_by(&lab, &client, &format!("{TAGGED_VIP}:80"), &[b2], 3);

    // A good file rewritten with a syntax error: nothing of it is applied, not even its
    // valid first document (the Service moved to port 81); what it had stays programmed.
    m.write_raw(
        "web.yaml",
        &format!("{}---\n{BROKEN}", service("web", VIP, 81).to_yaml()),
    );
    let web = shown(&lab, "web.yaml");
    let v = wait(&lab, &node, "the syntax error reported", |v| {
        has_diagnostic(v, &[&web])
    });
    println!("diagnostics: {:#?}", v.diagnostics);
    assert!(serves(&v, VIP, 80, Protocol::Tcp, &eps(&[b1])), "{v:#?}");
    assert!(frontend(&v, VIP, 81, Protocol::Tcp).is_none(), "{v:#?}");
    answered_by(&lab, &client, &format!("{VIP}:80"), &[b1], 3);
    // Meanwhile other changes are applied.
    m.write_raw("other.yaml", &docs(&[&other, &slice("other", &[b1, b2])]));
    wait(&lab, &node, "a change to another file applied", |v| {
        serves(v, OTHER_VIP, 80, Protocol::Tcp, &eps(&[b1, b2]))
            && serves(v, VIP, 80, Protocol::Tcp, &eps(&[b1]))
    });
    answered_by(&lab, &client, &format!("{OTHER_VIP}:80"), &[b1, b2], 6);
    stays_up(&lab, &node);

    // Fixed: the file's new content is applied and its problem is gone.
    m.write_raw(
        "web.yaml",
        &docs(&[&service("web", VIP, 81), &slice("web", &[b1, b2])]),
    );
    wait(&lab, &node, "the fixed file applied", |v| {
        serves(v, VIP, 81, Protocol::Tcp, &eps(&[b1, b2]))
            && frontend(v, VIP, 80, Protocol::Tcp).is_none()
            && !has_diagnostic(v, &[&web])
    });
    answered_by(&lab, &client, &format!("{VIP}:81"), &[b1, b2], 6);
    m.remove_raw("tag.yaml");
    m.remove_raw("tagged-list.yaml");
    wait(
        &lab,
        &node,
        "the tagged List's Service gone with its file",
        |v| !has_address(v, TAGGED_VIP),
    );
    stays_up(&lab, &node);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn names_the_api_server_would_refuse_are_refused_and_nothing_is_programmed_for_them() {
    require_root!();
    let (lab, pods, client, _echo) = lab_with(
        "names_the_api_server_would_refuse_are_refused_and_nothing_is_programmed_for_them",
        &["b1"],
    );
    let b1 = &pods[0];
    let ns63 = format!("n{}n", "x".repeat(61));
    let ns64 = format!("n{}n", "x".repeat(62));
    let m = lab.manifests();
    m.apply(&service("web", VIP, 80));
    m.apply(&slice("web", &[b1]));
    // Uppercase: not a DNS-1035 label.
    m.apply(&service("Web", "10.96.0.20", 80));
    m.apply(&EndpointSlice {
        name: "web-upper-1".into(),
        ..slice("Web", &[b1])
    });
    // A namespace of 63 characters is a DNS-1123 label; one of 64 is not.
    m.apply(&service("web", "10.96.0.21", 80).namespace(&ns64));
    m.apply(&slice("web", &[b1]).namespace(&ns64));
    m.apply(&service("web", "10.96.0.22", 80).namespace(&ns63));
    m.apply(&slice("web", &[b1]).namespace(&ns63));
    lab.start_agent(&AgentOpts::default());
    let node = AgentView::of_lab(&lab);
    let v = wait(
        &lab,
        &node,
        "the valid names programmed, the others reported",
        |v| {
            serves(v, VIP, 80, Protocol::Tcp, &eps(&[b1]))
                && serves(v, "10.96.0.22", 80, Protocol::Tcp, &eps(&[b1]))
                && has_diagnostic(v, &["Service default/Web: metadata.name", "DNS-1035 label"])
                && has_diagnostic(
                    v,
                    &[
                        &format!("Service {ns64}/web: metadata.namespace"),
                        "longer than 63 characters",
                    ],
                )
        },
    );
    for d in &v.diagnostics {
        println!("diagnostic: {d}");
    }
    for ip in ["10.96.0.20", "10.96.0.21"] {
        assert!(!has_address(&v, ip), "nothing programmed at {ip}: {v:#?}");
        not_served(&lab, &client, &format!("{ip}:80"));
    }
    answered_by(&lab, &client, &format!("{VIP}:80"), &[b1], 3);
    answered_by(&lab, &client, "10.96.0.22:80", &[b1], 3);
    stays_up(&lab, &node);
}

/// Writes `text` as `file`, made `len` bytes long (sparse: the rest reads as zeros), atomically.
fn write_sized(lab: &Lab, file: &str, text: &str, len: u64) {
    let dir = lab.manifests().dir();
    let tmp = dir.join(format!(".{file}.tmp"));
    let mut f = fs::File::create(&tmp).expect("creating the file");
    f.write_all(text.as_bytes()).expect("writing the file");
    f.set_len(len).expect("extending the file");
    drop(f);
    fs::rename(&tmp, dir.join(file)).expect("renaming it into place");
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_manifest_over_the_size_cap_is_not_read_and_its_objects_stay() {
    require_root!();
    let (lab, pods, client, _echo) = lab_with(
        "a_manifest_over_the_size_cap_is_not_read_and_its_objects_stay",
        &["b1", "b2"],
    );
    let (b1, b2) = (&pods[0], &pods[1]);
    let m = lab.manifests();
    m.write_raw(
        "web.yaml",
        &docs(&[&service("web", VIP, 80), &slice("web", &[b1])]),
    );
    lab.start_agent(&AgentOpts::default());
    let node = AgentView::of_lab(&lab);
    wait(&lab, &node, "web programmed", |v| {
        serves(v, VIP, 80, Protocol::Tcp, &eps(&[b1]))
    });

    // A change, in a file one byte over the cap: not read at all.
    let cap = Limits::default().file_bytes;
    let moved = docs(&[&service("web", VIP, 81), &slice("web", &[b2])]);
    write_sized(&lab, "web.yaml", &moved, cap + 1);
    let web = shown(&lab, "web.yaml");
    let over = format!("{} bytes, over the {cap} byte limit", cap + 1);
    let v = wait(&lab, &node, "the oversized file reported", |v| {
        has_diagnostic(v, &[&web, &over])
    });
    println!("diagnostics: {:#?}", v.diagnostics);
    assert!(serves(&v, VIP, 80, Protocol::Tcp, &eps(&[b1])), "{v:#?}");
    assert!(frontend(&v, VIP, 81, Protocol::Tcp).is_none(), "{v:#?}");
    answered_by(&lab, &client, &format!("{VIP}:80"), &[b1], 3);
    stays_up(&lab, &node);

    // The same change under the cap: read, applied, and the problem is gone.
    m.write_raw("web.yaml", &moved);
    wait(&lab, &node, "the change applied once the file fits", |v| {
        serves(v, VIP, 81, Protocol::Tcp, &eps(&[b2]))
            && frontend(v, VIP, 80, Protocol::Tcp).is_none()
            && !has_diagnostic(v, &[&web])
    });
    answered_by(&lab, &client, &format!("{VIP}:81"), &[b2], 3);
}
