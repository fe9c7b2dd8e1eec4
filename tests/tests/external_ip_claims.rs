//! Issue 9, item 8: a tenant must not take an address it does not own with an externalIP (the
//! CVE-2020-8554 class). Before, conflicts were settled by namespace order, so a Service in
//! namespace `aaa` whose externalIPs held the kube-dns ClusterIP won on every node. Now a
//! ClusterIP always wins; an externalIP on a node's address is refused; with
//! `--service-cluster-ip-range` one inside the service CIDR is refused; with
//! `--external-ip-ranges` only those inside the ranges are served. Every refusal is a
//! diagnostic in `ferry services -o json`.
//!
//! The lab: two nodes (only node1's agent runs), kube-dns's pod answering UDP and TCP on
//! port 53 of its ClusterIP, a tenant's pod behind Services of namespace `aaa` created before
//! kube-dns, a pod client (the socket layer) and an external client on the nodes' network
//! (the TC programs on node1's eth0).

mod agent_view;

use std::time::Duration;

use agent_view::{AgentView, has_diagnostic, serves, wait_for};
use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Attempt, Cluster, Endpoint, EndpointSlice, Pod, Service,
    cluster::EXTERNAL_IP_RANGE,
    manifests::Manifest,
    require_root,
    services::{frontend, has_address},
};
use serde_json::json;

/// How long a manifest change may take to reach the kernel (no benchmark).
const DEADLINE: Duration = Duration::from_secs(10);
const DNS_IP: &str = "10.96.0.10";
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// An externalIP inside the service CIDR that no Service holds as its ClusterIP.
const IN_CIDR: &str = "10.96.5.5";
const ALLOWED: &str = "198.51.100.0/25";
const INSIDE: &str = "198.51.100.10";
const OUTSIDE: &str = "198.51.100.200";

/// Writes a Service with its `metadata.creationTimestamp` (the older claim wins among
/// externalIPs and load balancer IPs).
fn apply_created(c: &Cluster, svc: &Service, created: &str) {
    let mut v = svc.to_value();
    v["metadata"]["creationTimestamp"] = json!(created);
    let yaml = serde_yaml::to_string(&v).expect("a JSON value is YAML");
    c.manifests().write_raw(&svc.file_name(), &yaml);
}

/// A slice of one ready pod on node1, for the Service's ports `dns` (UDP and TCP 5353) and
/// `http` (8080).
fn slice(svc: &Service, pod: &Pod) -> EndpointSlice {
    EndpointSlice::new(&format!("{}-1", svc.name), &svc.name)
        .namespace(&svc.namespace)
        .port("dns", 5353, "UDP")
        .port("dns-tcp", 5353, "TCP")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready(pod.ip).node("node1"))
}

/// A tenant's Service in namespace `aaa` with one externalIP on port 80.
fn tenant_http(name: &str, cluster_ip: &str, external_ip: &str) -> Service {
    Service::cluster_ip(name, cluster_ip)
        .namespace("aaa")
        .port_to("http", 80, "TCP", 8080u16)
        .external_ip(external_ip)
}

/// One TCP connection from `from` to `target` (1 s timeout).
fn connect(c: &Cluster, from: &Pod, target: &str) -> Attempt {
    c.client(from, &["tcp", target, "--timeout-ms", "1000"])
        .remove(0)
}

/// Polls until `target` answers `from`; the pod that answered.
fn reached(c: &Cluster, from: &Pod, target: &str) -> String {
    let a = wait_for(
        &format!("{} reaches {target}", from.name),
        DEADLINE,
        || Some(connect(c, from, target)).filter(|a| a.ok),
        || c.dump(),
    );
    println!("{} -> {target}: {}", from.name, a.raw);
    a.pod().unwrap_or_default()
}

/// `target` does not answer `from` (a refused frontend is not programmed anywhere).
fn not_served(c: &Cluster, from: &Pod, target: &str) {
    let a = connect(c, from, target);
    println!("{} -> {target} (refused externalIP): {}", from.name, a.raw);
    assert!(
        !a.ok,
        "{} reached {target}: {}\n{}",
        from.name,
        a.raw,
        c.dump()
    );
}

/// DNS-like traffic through the kube-dns ClusterIP from the pod client: UDP datagrams and
/// TCP connections, all answered by kube-dns's pod from the service address.
fn dns_answers(c: &Cluster, client: &Pod, dns: &Pod) {
    let udp = c.udp(client, &format!("{DNS_IP}:53"), 5);
    let tcp = c.tcp(client, &format!("{DNS_IP}:53"), 3);
    for a in udp.iter().chain(&tcp) {
        assert!(
            a.ok && a.pod().as_deref() == Some(dns.name.as_str()),
            "{DNS_IP}:53 answered by kube-dns's pod: {}\n{}",
            a.raw,
            c.dump()
        );
    }
    assert!(
        udp.iter()
            .all(|a| a.from.as_deref() == Some(&*format!("{DNS_IP}:53"))),
        "{udp:#?}"
    );
    println!(
        "client -> {DNS_IP}:53: {} UDP datagrams and {} TCP connections answered by {}",
        udp.len(),
        tcp.len(),
        dns.name
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_tenant_cannot_take_the_dns_address_and_external_ips_are_checked() {
    require_root!();
    let c = Cluster::new("a_tenant_cannot_take_the_dns_address_and_external_ips_are_checked");
    let ext1 = c.ext("ext1");
    let dns = c.add_pod_on("node1", "coredns");
    let tenant = c.add_pod_on("node1", "tenant");
    let client = c.add_pod_on("node1", "client");
    let _dns = c.start_echo(&dns, &[5353], &[5353]);
    let _tenant = c.start_echo(&tenant, &[8080, 5353], &[5353]);
    let node1_ip = c.node("node1").ip.to_string();

    let kube_dns = Service::cluster_ip("kube-dns", DNS_IP)
        .namespace("kube-system")
        .port_to("dns", 53, "UDP", 5353u16)
        .port_to("dns-tcp", 53, "TCP", 5353u16);
    // Older than kube-dns, and first in namespace order: it would have won before.
    let hijack = Service::cluster_ip("hijack", "10.96.0.50")
        .namespace("aaa")
        .port_to("dns", 53, "UDP", 5353u16)
        .port_to("dns-tcp", 53, "TCP", 5353u16)
        .external_ip(DNS_IP);
    let on_node = tenant_http("on-node", "10.96.0.51", &node1_ip);
    let in_cidr = tenant_http("in-cidr", "10.96.0.52", IN_CIDR);
    let outside = tenant_http("outside", "10.96.0.53", OUTSIDE);
    let inside = tenant_http("inside", "10.96.0.54", INSIDE);
    apply_created(&c, &hijack, "2020-01-01T00:00:00Z");
    for svc in [&on_node, &in_cidr, &outside, &inside] {
        apply_created(&c, svc, "2020-01-01T00:00:00Z");
    }
    apply_created(&c, &kube_dns, "2024-01-01T00:00:00Z");
    c.manifests().apply(&slice(&kube_dns, &dns));
    for svc in [&hijack, &on_node, &in_cidr, &outside, &inside] {
        c.manifests().apply(&slice(svc, &tenant));
    }
    for range in [EXTERNAL_IP_RANGE, SERVICE_CIDR] {
        c.route(&ext1, range, "node1");
    }
    // The tenant's pod answers on its own address: what it does not get below, it was not sent.
    assert!(c.udp(&client, &format!("{}:5353", tenant.ip), 1)[0].ok);
    let dns_eps = vec![format!("{}:5353", dns.ip)];
    let tenant_eps = vec![format!("{}:8080", tenant.ip)];
    let node1 = AgentView::of_node(&c, "node1");

    // No range flags: the ClusterIP wins, the node's address is refused, the rest is served.
    c.start_agent("node1", &AgentOpts::default());
    let (v, _) = node1.wait_services(
        "kube-dns programmed, the tenant's externalIPs settled",
        |v| {
            serves(v, DNS_IP, 53, Protocol::Udp, &dns_eps)
                && serves(v, DNS_IP, 53, Protocol::Tcp, &dns_eps)
                && serves(v, OUTSIDE, 80, Protocol::Tcp, &tenant_eps)
                && has_diagnostic(v, &["aaa/hijack", DNS_IP, "kube-system/kube-dns"])
                && has_diagnostic(v, &["aaa/on-node", &node1_ip, "node's address: refused"])
        },
        DEADLINE,
        || c.agent_log("node1"),
    );
    for d in &v.diagnostics {
        println!("diagnostic: {d}");
    }
    for proto in [Protocol::Udp, Protocol::Tcp] {
        let f = frontend(&v, DNS_IP, 53, proto).expect("kube-dns's frontend");
        assert_eq!(f.service.as_deref(), Some("kube-system/kube-dns"), "{f:?}");
    }
    assert!(
        !has_address(&v, node1_ip.as_str()),
        "nothing on the node's address"
    );
    dns_answers(&c, &client, &dns);
    not_served(&c, &ext1, &format!("{node1_ip}:80"));
    // Without kube-dns the address is free and the tenant's claim is served (what
    // --service-cluster-ip-range prevents, below); kube-dns back, its ClusterIP wins at once.
    c.manifests().delete(&kube_dns);
    node1.wait_services(
        "kube-dns gone: the tenant's externalIP takes the address",
        |v| {
            serves(
                v,
                DNS_IP,
                53,
                Protocol::Udp,
                &[format!("{}:5353", tenant.ip)],
            )
        },
        DEADLINE,
        || c.agent_log("node1"),
    );
    let a = c.udp(&client, &format!("{DNS_IP}:53"), 1).remove(0);
    assert_eq!(a.pod().as_deref(), Some("tenant"), "{}", a.raw);
    apply_created(&c, &kube_dns, "2024-01-01T00:00:00Z");
    node1.wait_services(
        "kube-dns back: its ClusterIP wins",
        |v| serves(v, DNS_IP, 53, Protocol::Udp, &dns_eps),
        DEADLINE,
        || c.agent_log("node1"),
    );
    dns_answers(&c, &client, &dns);
    // Without the flags these are anyone's to take.
    for ip in [IN_CIDR, OUTSIDE, INSIDE] {
        assert_eq!(reached(&c, &ext1, &format!("{ip}:80")), tenant.name);
    }

    // With the flags: inside the service CIDR or outside the allowed ranges is refused.
    c.stop_agent("node1");
    let flags = [
        "--service-cluster-ip-range",
        SERVICE_CIDR,
        "--external-ip-ranges",
        ALLOWED,
    ];
    c.start_agent(
        "node1",
        &AgentOpts {
            extra_args: flags.map(String::from).to_vec(),
            ..AgentOpts::default()
        },
    );
    let in_cidr_why =
        format!("externalIP {IN_CIDR} is inside the service CIDR {SERVICE_CIDR}: refused");
    let outside_why = format!("externalIP {OUTSIDE} is outside --external-ip-ranges: refused");
    let (v, _) = node1.wait_services(
        "externalIPs checked against the ranges",
        |v| {
            !has_address(v, IN_CIDR)
                && !has_address(v, OUTSIDE)
                && serves(v, INSIDE, 80, Protocol::Tcp, &tenant_eps)
                && serves(v, DNS_IP, 53, Protocol::Udp, &dns_eps)
                && has_diagnostic(v, &["aaa/in-cidr", &in_cidr_why])
                && has_diagnostic(v, &["aaa/outside", &outside_why])
        },
        DEADLINE,
        || c.agent_log("node1"),
    );
    for d in &v.diagnostics {
        println!("diagnostic: {d}");
    }
    assert!(
        has_diagnostic(
            &v,
            &[
                "aaa/hijack",
                &format!("externalIP {DNS_IP} is inside the service CIDR")
            ]
        ),
        "{:#?}",
        v.diagnostics
    );
    assert!(has_diagnostic(
        &v,
        &["aaa/on-node", "node's address: refused"]
    ));
    dns_answers(&c, &client, &dns);
    assert_eq!(reached(&c, &ext1, &format!("{INSIDE}:80")), tenant.name);
    for ip in [IN_CIDR, OUTSIDE, &node1_ip] {
        not_served(&c, &ext1, &format!("{ip}:80"));
    }
    println!("{}", node1.services_table());
}
