//! IPv6 and dual-stack ClusterIPs against the real agent, as clusterip.rs does for IPv4: real
//! servers (lab-echo, dnsmasq) in pod namespaces, real clients (curl -6, lab-client, dig) in
//! the lab cgroup where ferry's socket hooks run. The lab is dual-stack (see
//! `ferry_tests::lab`): pods have their IPv6 twins (`fd00:10:244::N`), the ClusterIPs come
//! from `fd00:96::/112`, and nothing in the lab routes them: a pod's packet to one reaches its
//! node, which has no route for it and answers "network unreachable" at once. Only ferry's
//! translation in the pod's own socket layer can make these addresses answer. Each test waits
//! until `ferry services` shows the IPv6 frontend with the expected backends, as clusterip.rs
//! does for IPv4.
//!
//! - an IPv6-only Service (ipFamilies [IPv6]): curl -6 and lab-client over TCP reach each
//!   backend, UDP (unconnected and connected) too, the client sees the ClusterIP as its peer
//!   (getpeername, recvfrom) and the backend sees the client pod's own IPv6 address;
//! - a dual-stack Service (PreferDualStack, clusterIPs [IPv4, IPv6]) reached over each family
//!   from one client pod, each family on that family's EndpointSlice;
//! - an IPv6 Service without endpoints: refused at once (ECONNREFUSED, curl exit code 7);
//! - DNS AAAA (and A) through a dual-stack kube-dns ClusterIP over IPv6, UDP and TCP, from
//!   dnsmasq in a pod, asked with dig.
//!
//! (An AF_INET6 socket dialing an IPv4 ClusterIP as `::ffff:a.b.c.d` is clusterip_v4_mapped.rs.)

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{Attempt, Endpoint, EndpointSlice, Lab, Pod, Service, require_root, services};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::a";

/// `ip:port` or `[ipv6]:port`, as lab-client takes it and getpeername/recvfrom print it.
fn at(ip: &str, port: u16) -> String {
    let ip: IpAddr = ip
        .parse()
        .unwrap_or_else(|e| panic!("the test names {ip:?} as an address: {e}"));
    SocketAddr::new(ip, port).to_string()
}

/// `http://[ipv6]:port/` (or `http://ip:port/`).
fn url(ip: &str, port: u16) -> String {
    format!("http://{}/", at(ip, port))
}

/// "[ip6]:port" of a pod's port, as `services::endpoint` lists an IPv6 backend.
fn ep6(pod: &Pod, port: u16) -> String {
    SocketAddr::new(pod.ip6.into(), port).to_string()
}

/// `curl -6 -g URL` from `from`, `n` times: the pods that answered (each answer checked: an
/// echo reply from `port`, which saw `from`'s IPv6 address).
fn curl6_pods(lab: &Lab, from: &Pod, url: &str, port: u16, n: usize) -> BTreeSet<String> {
    let mut pods = BTreeSet::new();
    for _ in 0..n {
        let (result, _) = lab.curl_timed(from, url, Duration::from_secs(5), &["-6", "-g"]);
        let body = result.unwrap_or_else(|e| panic!("curl -6 {url} from {}: {e:?}", from.name));
        let e = ferry_tests::client::EchoAny::parse(&body)
            .unwrap_or_else(|| panic!("not an echo reply: {body:?}"));
        assert_eq!(e.port, port, "{body}");
        assert_eq!(
            e.peer.ip(),
            IpAddr::V6(from.ip6),
            "the backend sees {}'s own IPv6 address: {body}",
            from.name
        );
        pods.insert(e.pod);
    }
    pods
}

/// Every attempt answered, by a pod of `pods`, with `peer` as getpeername (TCP) or recvfrom
/// (UDP) and the client's own address as the address the backend saw.
fn assert_answers(attempts: &[Attempt], peer: &str, client: IpAddr, pods: &[&str], what: &str) {
    assert_all_ok(attempts, what);
    for a in attempts {
        let seen = if a.from.is_some() { &a.from } else { &a.peer };
        assert_eq!(seen.as_deref(), Some(peer), "{what}: {}", a.raw);
        let e = a.echo_any().unwrap_or_else(|| panic!("{what}: {}", a.raw));
        assert!(pods.contains(&e.pod.as_str()), "{what}: {}", a.raw);
        assert_eq!(e.peer.ip(), client, "{what}: the backend saw {}", a.raw);
    }
}

/// The attempts of `runs` lab-client runs of `args` (a new socket, so a new choice, each).
fn pods_over_runs(lab: &Lab, client: &Pod, args: &[&str], runs: usize) -> Vec<Attempt> {
    (0..runs).flat_map(|_| lab.client(client, args)).collect()
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn ipv6_only_service_reaches_every_backend_over_tcp() {
    require_root!();
    let lab = Lab::new("ipv6_only_service_reaches_every_backend_over_tcp");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let client = lab.add_pod("client");
    let _e1 = lab.start_echo(&b1, &[8080], &[]);
    let _e2 = lab.start_echo(&b2, &[8080], &[]);
    let svc = Service::cluster_ip6("web", VIP6).port_to("http", 80, "TCP", 8080u16);
    let slice = EndpointSlice::ipv6("web-v6", "web")
        .port("http", 8080, "TCP")
        .endpoints([Endpoint::ready(b1.ip6), Endpoint::ready(b2.ip6)]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    wait_active(
        &lab,
        "initial sync -> IPv6 frontend visible",
        VIP6,
        80,
        Protocol::Tcp,
        &[ep6(&b1, 8080), ep6(&b2, 8080)],
    );
    let target = at(VIP6, 80);

    // curl -6 to the bracketed ClusterIP: both backends answer over enough requests.
    let u = url(VIP6, 80);
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        seen.extend(curl6_pods(&lab, &client, &u, 8080, 8));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
        "curl -6 {u}: both endpoints serve"
    );

    // lab-client: every connection served, getpeername is the ClusterIP, both backends.
    let attempts = lab.tcp(&client, &target, 30);
    assert_answers(
        &attempts,
        &target,
        IpAddr::V6(client.ip6),
        &["b1", "b2"],
        "TCP to the IPv6 ClusterIP",
    );
    let pods = by_pod(&attempts);
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        ["b1", "b2"],
        "both endpoints serve: {pods:?}"
    );
    println!("stats: {}", lab.stats());
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn ipv6_only_service_over_udp_answers_from_the_cluster_ip() {
    require_root!();
    let lab = Lab::new("ipv6_only_service_over_udp_answers_from_the_cluster_ip");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let client = lab.add_pod("client");
    let _e1 = lab.start_echo(&b1, &[], &[8053]);
    let _e2 = lab.start_echo(&b2, &[], &[8053]);
    let svc = Service::cluster_ip6("dns", VIP6).port_to("dns", 53, "UDP", 8053u16);
    let slice = EndpointSlice::ipv6("dns-v6", "dns")
        .port("dns", 8053, "UDP")
        .endpoints([Endpoint::ready(b1.ip6), Endpoint::ready(b2.ip6)]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    wait_active(
        &lab,
        "initial sync -> IPv6 UDP frontend visible",
        VIP6,
        53,
        Protocol::Udp,
        &[ep6(&b1, 8053), ep6(&b2, 8053)],
    );
    let target = at(VIP6, 53);
    let me = IpAddr::V6(client.ip6);

    // Unconnected: sendto the ClusterIP, recvfrom reports the ClusterIP (not the backend).
    let udp = lab.udp(&client, &target, 10);
    assert_answers(&udp, &target, me, &["b1", "b2"], "unconnected UDP");
    // Connected: getpeername and recv's source are the ClusterIP.
    let connected = lab.client(&client, &["udp", &target, "--connected", "--count", "5"]);
    assert_answers(&connected, &target, me, &["b1", "b2"], "connected UDP");
    for a in &connected {
        assert_eq!(
            a.peer.as_deref(),
            Some(target.as_str()),
            "getpeername: {}",
            a.raw
        );
    }
    // Sockets of their own (a new source port each): both backends serve.
    let runs = pods_over_runs(&lab, &client, &["udp", &target, "--count", "2"], 12);
    assert_answers(&runs, &target, me, &["b1", "b2"], "UDP, one socket per run");
    let pods = by_pod(&runs);
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        ["b1", "b2"],
        "both endpoints serve UDP: {pods:?}"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dual_stack_service_is_reached_over_each_family() {
    require_root!();
    let lab = Lab::new("dual_stack_service_is_reached_over_each_family");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let b3 = lab.add_pod("b3");
    let client = lab.add_pod("client");
    let _echo: Vec<_> = [&b1, &b2, &b3]
        .iter()
        .map(|b| lab.start_echo(b, &[8080], &[8053]))
        .collect();
    let svc = Service::dual_stack("web", "PreferDualStack", &[VIP4, VIP6])
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16);
    // One slice per family, as the EndpointSlice controller writes them. They differ on
    // purpose (b1 only in the IPv4 slice, b3 only in the IPv6 one), so that the answers show
    // which family's endpoints served.
    let v4 = EndpointSlice::new("web-v4", "web")
        .port("http", 8080, "TCP")
        .port("dns", 8053, "UDP")
        .endpoints([Endpoint::ready(b1.ip), Endpoint::ready(b2.ip)]);
    let v6 = EndpointSlice::ipv6("web-v6", "web")
        .port("http", 8080, "TCP")
        .port("dns", 8053, "UDP")
        .endpoints([Endpoint::ready(b2.ip6), Endpoint::ready(b3.ip6)]);
    for m in [&v4, &v6] {
        lab.manifests().apply(m);
    }
    lab.manifests().apply(&svc);
    start_agent(&lab);

    // IPv4: the IPv4 slice's pods, the IPv4 ClusterIP as the peer.
    wait_active(
        &lab,
        "IPv4 half of the dual-stack Service",
        VIP4,
        80,
        Protocol::Tcp,
        &[ep(&b1, 8080), ep(&b2, 8080)],
    );
    let target4 = at(VIP4, 80);
    let tcp4 = lab.tcp(&client, &target4, 30);
    assert_answers(
        &tcp4,
        &target4,
        IpAddr::V4(client.ip),
        &["b1", "b2"],
        "TCP over IPv4",
    );
    assert_eq!(
        by_pod(&tcp4).keys().collect::<Vec<_>>(),
        ["b1", "b2"],
        "over IPv4 the IPv4 slice's pods serve"
    );
    let udp4 = at(VIP4, 53);
    let u4 = lab.udp(&client, &udp4, 5);
    assert_answers(
        &u4,
        &udp4,
        IpAddr::V4(client.ip),
        &["b1", "b2"],
        "UDP over IPv4",
    );
    let body = lab.curl(&client, &url(VIP4, 80)).expect("curl over IPv4");
    let e = ferry_tests::client::EchoAny::parse(&body).expect("an echo reply");
    assert_eq!(e.peer.ip(), IpAddr::V4(client.ip), "{body}");

    // IPv6, from the same pod: the IPv6 slice's pods, the IPv6 ClusterIP as the peer.
    wait_active(
        &lab,
        "IPv6 half of the dual-stack Service",
        VIP6,
        80,
        Protocol::Tcp,
        &[ep6(&b2, 8080), ep6(&b3, 8080)],
    );
    let target6 = at(VIP6, 80);
    let tcp6 = lab.tcp(&client, &target6, 30);
    assert_answers(
        &tcp6,
        &target6,
        IpAddr::V6(client.ip6),
        &["b2", "b3"],
        "TCP over IPv6",
    );
    assert_eq!(
        by_pod(&tcp6).keys().collect::<Vec<_>>(),
        ["b2", "b3"],
        "over IPv6 the IPv6 slice's pods serve"
    );
    let udp6 = at(VIP6, 53);
    let u6 = lab.udp(&client, &udp6, 5);
    assert_answers(
        &u6,
        &udp6,
        IpAddr::V6(client.ip6),
        &["b2", "b3"],
        "UDP over IPv6",
    );
    let pods = curl6_pods(&lab, &client, &url(VIP6, 80), 8080, 4);
    assert!(
        pods.iter().all(|p| p == "b2" || p == "b3"),
        "curl -6: {pods:?}"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn ipv6_service_without_endpoints_is_refused_at_once() {
    require_root!();
    let lab = Lab::new("ipv6_service_without_endpoints_is_refused_at_once");
    let client = lab.add_pod("client");
    let svc = Service::cluster_ip6("empty", VIP6)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16);
    lab.manifests().apply(&svc);
    lab.manifests()
        .apply(&EndpointSlice::ipv6("empty-v6", "empty").port("http", 8080, "TCP"));
    start_agent(&lab);
    let took = lab.wait_services(
        |v| {
            [(80, Protocol::Tcp), (53, Protocol::Udp)]
                .iter()
                .all(|&(port, proto)| {
                    services::frontend(v, VIP6, port, proto).is_some_and(|f| f.backends.is_empty())
                })
        },
        DEADLINE,
    );
    report("IPv6 frontends without backends visible", took);

    let target = at(VIP6, 80);
    let a = lab
        .client(&client, &["tcp", &target, "--timeout-ms", "3000"])
        .remove(0);
    assert!(!a.ok, "{}", a.raw);
    assert_eq!(
        a.error.as_deref(),
        Some("ECONNREFUSED"),
        "refused, not dropped: {}",
        a.raw
    );
    assert!(a.elapsed_ms < 1000, "refused at once: {}", a.raw);

    let (curl, took) = lab.curl_timed(
        &client,
        &url(VIP6, 80),
        Duration::from_secs(5),
        &["-6", "-g"],
    );
    assert!(
        matches!(curl, Err((7, _))),
        "curl -6 fails to connect (exit code 7): {curl:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "curl -6 refused at once: {took:?}"
    );

    let udp = lab.client(&client, &["udp", &at(VIP6, 53), "--timeout-ms", "1000"]);
    let a = &udp[0];
    assert!(!a.ok, "{}", a.raw);
    assert!(
        a.stage.as_deref() == Some("send") || a.error.as_deref() == Some("ECONNREFUSED"),
        "the datagram is refused, not silently lost: {}",
        a.raw
    );
    println!("stats: {}", lab.stats());
}

/// The name dnsmasq answers, with its A and AAAA records (a Service's two ClusterIPs).
const WEB_FQDN: &str = "web.default.svc.cluster.local";
const WEB_A: &str = "10.96.0.20";
const WEB_AAAA: &str = "fd00:96::14";

/// `dig +short @server [+tcp] NAME TYPE` from `from`: Ok(answer) or Err(what dig said).
fn dig(lab: &Lab, from: &Pod, server: &str, tcp: bool, rtype: &str) -> Result<String, String> {
    let server = format!("@{server}");
    let mut args = vec!["+short", "+time=2", "+tries=1", &server, WEB_FQDN, rtype];
    if tcp {
        args.insert(0, "+tcp");
    }
    let out = lab.output(from, "dig", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !stdout.is_empty() && !stdout.starts_with(";;") {
        Ok(stdout)
    } else {
        Err(format!(
            "dig {args:?} ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dns_aaaa_over_the_kube_dns_cluster_ip() {
    require_root!();
    let lab = Lab::new("dns_aaaa_over_the_kube_dns_cluster_ip");
    let coredns = lab.add_pod("coredns");
    let client = lab.add_pod("client");
    // The cluster DNS: dnsmasq on both of its pod's addresses, port 53, answering one name
    // with an A and an AAAA record (the demo's cluster DNS is dnsmasq too).
    let host_record = format!("--host-record={WEB_FQDN},{WEB_A},{WEB_AAAA}");
    let listen4 = format!("--listen-address={}", coredns.ip);
    let listen6 = format!("--listen-address={}", coredns.ip6);
    let _dnsmasq = lab.spawn(
        &coredns,
        "dnsmasq",
        &[
            "--no-daemon",
            "--log-facility=-",
            "--log-queries",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            &host_record,
            "--local=/cluster.local/",
            &listen4,
            &listen6,
            "--bind-interfaces",
            "--port=53",
        ],
    );
    // Ready when it answers on its own IPv6 address (no ferry involved).
    let start = Instant::now();
    let direct = coredns.ip6.to_string();
    loop {
        match dig(&lab, &client, &direct, false, "AAAA") {
            Ok(answer) => {
                assert_eq!(answer, WEB_AAAA, "dnsmasq's own answer");
                break;
            }
            Err(e) if start.elapsed() >= Duration::from_secs(10) => {
                panic!(
                    "dnsmasq did not answer on {direct}: {e}\n{}",
                    lab.logs_of("coredns")
                )
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
    report("dnsmasq answering", start.elapsed());

    let kube_dns = Service::dual_stack("kube-dns", "PreferDualStack", &[VIP4, VIP6])
        .namespace("kube-system")
        .label("k8s-app", "kube-dns")
        .port_to("dns", 53, "UDP", 53u16)
        .port_to("dns-tcp", 53, "TCP", 53u16);
    let v4 = EndpointSlice::new("kube-dns-v4", "kube-dns")
        .namespace("kube-system")
        .port("dns", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .endpoint(Endpoint::ready(coredns.ip));
    let v6 = EndpointSlice::ipv6("kube-dns-v6", "kube-dns")
        .namespace("kube-system")
        .port("dns", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .endpoint(Endpoint::ready(coredns.ip6));
    lab.manifests().apply(&kube_dns);
    lab.manifests().apply(&v4);
    lab.manifests().apply(&v6);
    start_agent(&lab);

    // Over the IPv4 ClusterIP: the AAAA record comes back (UDP and TCP).
    wait_active(
        &lab,
        "kube-dns over IPv4",
        VIP4,
        53,
        Protocol::Udp,
        &[ep(&coredns, 53)],
    );
    for tcp in [false, true] {
        assert_eq!(
            dig(&lab, &client, VIP4, tcp, "AAAA").as_deref(),
            Ok(WEB_AAAA),
            "AAAA over the IPv4 ClusterIP (tcp: {tcp})"
        );
    }

    // Over the IPv6 ClusterIP: dig checks that the answer comes from the address it asked,
    // so a reply not translated back to fd00:96::a fails too.
    for (proto, what) in [
        (Protocol::Udp, "kube-dns over IPv6 (UDP)"),
        (Protocol::Tcp, "kube-dns over IPv6 (TCP)"),
    ] {
        wait_active(&lab, what, VIP6, 53, proto, &[ep6(&coredns, 53)]);
    }
    for tcp in [false, true] {
        assert_eq!(
            dig(&lab, &client, VIP6, tcp, "AAAA").as_deref(),
            Ok(WEB_AAAA),
            "AAAA over the IPv6 ClusterIP (tcp: {tcp})"
        );
        assert_eq!(
            dig(&lab, &client, VIP6, tcp, "A").as_deref(),
            Ok(WEB_A),
            "A over the IPv6 ClusterIP (tcp: {tcp})"
        );
    }
    let log = lab.logs_of("coredns");
    assert!(
        log.contains(&format!("from {}", client.ip6)),
        "dnsmasq saw the client pod's own IPv6 address:\n{log}"
    );
}

/// The manifests these tests write, read back as Kubernetes' own types (no kernel): the
/// IPv6-only and dual-stack Services carry `clusterIPs`, `ipFamilies` and `ipFamilyPolicy`
/// under their API names, the slices their `addressType`, and a plain Service none of it.
#[test]
fn dual_stack_manifests_read_as_kubernetes_objects() {
    use ferry_tests::manifests::Manifest;
    use k8s_openapi::api::{
        core::v1::Service as K8sService, discovery::v1::EndpointSlice as K8sSlice,
    };

    let spec = |svc: &Service| {
        let k: K8sService = serde_yaml::from_str(&svc.to_yaml()).expect("a v1 Service");
        k.spec.expect("a spec")
    };
    let v6 = spec(&Service::cluster_ip6("web", VIP6).port("http", 80, "TCP"));
    assert_eq!(v6.cluster_ip.as_deref(), Some(VIP6));
    assert_eq!(v6.cluster_ips, Some(vec![VIP6.to_owned()]));
    assert_eq!(v6.ip_families, Some(vec!["IPv6".to_owned()]));
    assert_eq!(v6.ip_family_policy.as_deref(), Some("SingleStack"));

    for policy in ["PreferDualStack", "RequireDualStack"] {
        let dual = spec(&Service::dual_stack("web", policy, &[VIP4, VIP6]));
        assert_eq!(dual.cluster_ip.as_deref(), Some(VIP4));
        assert_eq!(
            dual.cluster_ips,
            Some(vec![VIP4.to_owned(), VIP6.to_owned()])
        );
        assert_eq!(
            dual.ip_families,
            Some(vec!["IPv4".to_owned(), "IPv6".to_owned()])
        );
        assert_eq!(dual.ip_family_policy.as_deref(), Some(policy));
    }
    // IPv6 primary: the families follow the addresses.
    let primary6 = spec(&Service::dual_stack(
        "web",
        "RequireDualStack",
        &[VIP6, VIP4],
    ));
    assert_eq!(
        primary6.ip_families,
        Some(vec!["IPv6".to_owned(), "IPv4".to_owned()])
    );

    // A plain IPv4 Service is written as before: no family fields at all.
    let plain = Service::cluster_ip("web", VIP4)
        .port("http", 80, "TCP")
        .to_yaml();
    assert!(
        !plain.contains("ipFamil"),
        "a plain Service has no family fields:\n{plain}"
    );
    assert_eq!(
        spec(&Service::cluster_ip("web", VIP4)).cluster_ips,
        Some(vec![VIP4.to_owned()])
    );

    let slice = EndpointSlice::ipv6("web-v6", "web")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready("fd00:10:244::2"));
    let k: K8sSlice = serde_yaml::from_str(&slice.to_yaml()).expect("an EndpointSlice");
    assert_eq!(k.address_type, "IPv6");
    assert_eq!(k.endpoints[0].addresses, vec!["fd00:10:244::2".to_owned()]);
    assert_eq!(
        k.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .map(String::as_str),
        Some("web")
    );
    let v4: K8sSlice =
        serde_yaml::from_str(&EndpointSlice::new("web-v4", "web").to_yaml()).expect("a slice");
    assert_eq!(v4.address_type, "IPv4");
}
