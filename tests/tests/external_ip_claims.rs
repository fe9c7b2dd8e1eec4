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
//!
//! The test runs over both families of the dual-stack lab (`NAME::ipv4`, `NAME::ipv6` from one
//! body, [`over_both_families!`]): every Service is dual-stack (PreferDualStack) and claims the
//! addresses of both families, the range flags name both families' ranges, and the clients
//! send over the test's family.

mod agent_view;

use std::{net::IpAddr, time::Duration};

use agent_view::{AgentView, has_diagnostic, serves, wait_for};
use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Attempt, Cluster, EndpointSlice, Pod, Service,
    cluster::EXTERNAL_IP_RANGE,
    manifests::Manifest,
    over_both_families, require_root,
    services::{Family, at, frontend, has_address},
};
use serde_json::json;

/// How long a manifest change may take to reach the kernel (no benchmark).
const DEADLINE: Duration = Duration::from_secs(10);
/// Each address of both families: `[IPv4, IPv6]`.
const DNS_IP: [&str; 2] = ["10.96.0.10", "fd00:96::a"];
const SERVICE_CIDR: [&str; 2] = ["10.96.0.0/16", "fd00:96::/112"];
/// An externalIP inside the service CIDR that no Service holds as its ClusterIP.
const IN_CIDR: [&str; 2] = ["10.96.5.5", "fd00:96::505"];
const ALLOWED: [&str; 2] = ["198.51.100.0/25", "fd00:198:51:100::/121"];
const INSIDE: [&str; 2] = ["198.51.100.10", "fd00:198:51:100::10"];
const OUTSIDE: [&str; 2] = ["198.51.100.200", "fd00:198:51:100::200"];
/// The externalIPs' range as the external client routes it to node1.
const EXTERNAL_IP_RANGES: [&str; 2] = [EXTERNAL_IP_RANGE, "fd00:198:51:100::/64"];

over_both_families!(a_tenant_cannot_take_the_dns_address_and_external_ips_are_checked);

/// A dual-stack Service (PreferDualStack) with ClusterIPs `ips` (IPv4 first).
fn dual_stack(name: &str, ips: [&str; 2]) -> Service {
    Service::dual_stack(name, "PreferDualStack", &ips)
}

/// Writes a Service with its `metadata.creationTimestamp` (the older claim wins among
/// externalIPs and load balancer IPs).
fn apply_created(c: &Cluster, svc: &Service, created: &str) {
    let mut v = svc.to_value();
    v["metadata"]["creationTimestamp"] = json!(created);
    let yaml = serde_yaml::to_string(&v).expect("a JSON value is YAML");
    c.manifests().write_raw(&svc.file_name(), &yaml);
}

/// The slices (one per family) of one ready pod on node1, for the Service's ports `dns` (UDP
/// and TCP 5353) and `http` (8080).
fn slices(svc: &Service, pod: &Pod) -> [EndpointSlice; 2] {
    Family::BOTH.map(|f| {
        f.slice(&svc.name, &svc.name)
            .namespace(&svc.namespace)
            .port("dns", 5353, "UDP")
            .port("dns-tcp", 5353, "TCP")
            .port("http", 8080, "TCP")
            .endpoint(f.ready(pod).node("node1"))
    })
}

fn apply_slices(c: &Cluster, svc: &Service, pod: &Pod) {
    for s in &slices(svc, pod) {
        c.manifests().apply(s);
    }
}

/// A tenant's dual-stack Service in namespace `aaa` with one externalIP of each family on
/// port 80.
fn tenant_http(name: &str, cluster_ips: [&str; 2], external_ips: [&str; 2]) -> Service {
    dual_stack(name, cluster_ips)
        .namespace("aaa")
        .port_to("http", 80, "TCP", 8080u16)
        .external_ip(external_ips[0])
        .external_ip(external_ips[1])
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
/// TCP connections, all answered by kube-dns's pod from the service address (of `family`).
fn dns_answers(c: &Cluster, family: Family, client: &Pod, dns: &Pod) {
    let dns_ip = family.pick(DNS_IP);
    let udp = c.udp(client, &at(dns_ip, 53), 5);
    let tcp = c.tcp(client, &at(dns_ip, 53), 3);
    for a in udp.iter().chain(&tcp) {
        assert!(
            a.ok && a.pod().as_deref() == Some(dns.name.as_str()),
            "{family}: {dns_ip}:53 answered by kube-dns's pod: {}\n{}",
            a.raw,
            c.dump()
        );
    }
    assert!(
        udp.iter()
            .all(|a| a.from.as_deref() == Some(&*at(dns_ip, 53))),
        "{udp:#?}"
    );
    println!(
        "client -> {}: {} UDP datagrams and {} TCP connections answered by {}",
        at(dns_ip, 53),
        udp.len(),
        tcp.len(),
        dns.name
    );
}

fn a_tenant_cannot_take_the_dns_address_and_external_ips_are_checked(family: Family) {
    require_root!();
    let c = Cluster::new(&format!(
        "a_tenant_cannot_take_the_dns_address_and_external_ips_are_checked_{}",
        family.tag()
    ));
    let [dns_ip, in_cidr_ip, inside_ip, outside_ip] =
        [DNS_IP, IN_CIDR, INSIDE, OUTSIDE].map(|p| family.pick(p));
    let ext1 = c.ext("ext1");
    let dns = c.add_pod_on("node1", "coredns");
    let tenant = c.add_pod_on("node1", "tenant");
    let client = c.add_pod_on("node1", "client");
    let _dns = c.start_echo(&dns, &[5353], &[5353]);
    let _tenant = c.start_echo(&tenant, &[8080, 5353], &[5353]);
    let node1 = c.node("node1");
    let node1_ips = [node1.ip.to_string(), node1.ip6.to_string()];
    let node1_ip: IpAddr = family.pick([node1.ip.into(), node1.ip6.into()]);
    let node1_ip_text = node1_ip.to_string();

    let kube_dns = dual_stack("kube-dns", DNS_IP)
        .namespace("kube-system")
        .port_to("dns", 53, "UDP", 5353u16)
        .port_to("dns-tcp", 53, "TCP", 5353u16);
    // Older than kube-dns, and first in namespace order: it would have won before.
    let hijack = dual_stack("hijack", ["10.96.0.50", "fd00:96::50"])
        .namespace("aaa")
        .port_to("dns", 53, "UDP", 5353u16)
        .port_to("dns-tcp", 53, "TCP", 5353u16)
        .external_ip(DNS_IP[0])
        .external_ip(DNS_IP[1]);
    let on_node = tenant_http(
        "on-node",
        ["10.96.0.51", "fd00:96::51"],
        [node1_ips[0].as_str(), node1_ips[1].as_str()],
    );
    let in_cidr = tenant_http("in-cidr", ["10.96.0.52", "fd00:96::52"], IN_CIDR);
    let outside = tenant_http("outside", ["10.96.0.53", "fd00:96::53"], OUTSIDE);
    let inside = tenant_http("inside", ["10.96.0.54", "fd00:96::54"], INSIDE);
    apply_created(&c, &hijack, "2020-01-01T00:00:00Z");
    for svc in [&on_node, &in_cidr, &outside, &inside] {
        apply_created(&c, svc, "2020-01-01T00:00:00Z");
    }
    apply_created(&c, &kube_dns, "2024-01-01T00:00:00Z");
    apply_slices(&c, &kube_dns, &dns);
    for svc in [&hijack, &on_node, &in_cidr, &outside, &inside] {
        apply_slices(&c, svc, &tenant);
    }
    for range in [family.pick(EXTERNAL_IP_RANGES), family.pick(SERVICE_CIDR)] {
        c.route(&ext1, range, "node1");
    }
    // The tenant's pod answers on its own address: what it does not get below, it was not sent.
    assert!(c.udp(&client, &family.ep(&tenant, 5353), 1)[0].ok);
    let dns_eps = vec![family.ep(&dns, 5353)];
    let tenant_eps = vec![family.ep(&tenant, 8080)];
    let node1 = AgentView::of_node(&c, "node1");

    // No range flags: the ClusterIP wins, the node's address is refused, the rest is served.
    c.start_agent("node1", &AgentOpts::default());
    let (v, _) = node1.wait_services(
        "kube-dns programmed, the tenant's externalIPs settled",
        |v| {
            serves(v, dns_ip, 53, Protocol::Udp, &dns_eps)
                && serves(v, dns_ip, 53, Protocol::Tcp, &dns_eps)
                && serves(v, outside_ip, 80, Protocol::Tcp, &tenant_eps)
                && has_diagnostic(v, &["aaa/hijack", dns_ip, "kube-system/kube-dns"])
                && has_diagnostic(
                    v,
                    &["aaa/on-node", &node1_ip_text, "node's address: refused"],
                )
        },
        DEADLINE,
        || c.agent_log("node1"),
    );
    for d in &v.diagnostics {
        println!("diagnostic: {d}");
    }
    for proto in [Protocol::Udp, Protocol::Tcp] {
        let f = frontend(&v, dns_ip, 53, proto).expect("kube-dns's frontend");
        assert_eq!(f.service.as_deref(), Some("kube-system/kube-dns"), "{f:?}");
    }
    assert!(
        !has_address(&v, node1_ip),
        "{family}: nothing on the node's address"
    );
    dns_answers(&c, family, &client, &dns);
    not_served(&c, &ext1, &at(node1_ip, 80));
    // Without kube-dns the address is free and the tenant's claim is served (what
    // --service-cluster-ip-range prevents, below); kube-dns back, its ClusterIP wins at once.
    c.manifests().delete(&kube_dns);
    node1.wait_services(
        "kube-dns gone: the tenant's externalIP takes the address",
        |v| serves(v, dns_ip, 53, Protocol::Udp, &[family.ep(&tenant, 5353)]),
        DEADLINE,
        || c.agent_log("node1"),
    );
    let a = c.udp(&client, &at(dns_ip, 53), 1).remove(0);
    assert_eq!(a.pod().as_deref(), Some("tenant"), "{family}: {}", a.raw);
    apply_created(&c, &kube_dns, "2024-01-01T00:00:00Z");
    node1.wait_services(
        "kube-dns back: its ClusterIP wins",
        |v| serves(v, dns_ip, 53, Protocol::Udp, &dns_eps),
        DEADLINE,
        || c.agent_log("node1"),
    );
    dns_answers(&c, family, &client, &dns);
    // Without the flags these are anyone's to take.
    for ip in [in_cidr_ip, outside_ip, inside_ip] {
        assert_eq!(reached(&c, &ext1, &at(ip, 80)), tenant.name, "{family}");
    }

    // With the flags: inside the service CIDR or outside the allowed ranges is refused.
    c.stop_agent("node1");
    let (service_cidrs, allowed) = (SERVICE_CIDR.join(","), ALLOWED.join(","));
    let flags = [
        "--service-cluster-ip-range",
        &service_cidrs,
        "--external-ip-ranges",
        &allowed,
    ];
    c.start_agent(
        "node1",
        &AgentOpts {
            extra_args: flags.map(String::from).to_vec(),
            ..AgentOpts::default()
        },
    );
    let service_cidr = family.pick(SERVICE_CIDR);
    let in_cidr_why =
        format!("externalIP {in_cidr_ip} is inside the service CIDR {service_cidr}: refused");
    let outside_why = format!("externalIP {outside_ip} is outside --external-ip-ranges: refused");
    let (v, _) = node1.wait_services(
        "externalIPs checked against the ranges",
        |v| {
            !has_address(v, in_cidr_ip)
                && !has_address(v, outside_ip)
                && serves(v, inside_ip, 80, Protocol::Tcp, &tenant_eps)
                && serves(v, dns_ip, 53, Protocol::Udp, &dns_eps)
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
                &format!("externalIP {dns_ip} is inside the service CIDR")
            ]
        ),
        "{family}: {:#?}",
        v.diagnostics
    );
    assert!(has_diagnostic(
        &v,
        &["aaa/on-node", &node1_ip_text, "node's address: refused"]
    ));
    dns_answers(&c, family, &client, &dns);
    assert_eq!(
        reached(&c, &ext1, &at(inside_ip, 80)),
        tenant.name,
        "{family}"
    );
    for ip in [in_cidr_ip, outside_ip, node1_ip_text.as_str()] {
        not_served(&c, &ext1, &at(ip, 80));
    }
    println!("{}", node1.services_table());
}
