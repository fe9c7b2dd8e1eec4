//! Dual-stack sockets (AF_INET6) dialling a ClusterIP by its IPv4-mapped address
//! (`::ffff:a.b.c.d`): the IPv6 socket hooks (connect6, recvmsg6, getpeername6; sendmsg4 for an
//! unconnected datagram, where the kernel hands such a send) translate them with the IPv4 maps,
//! and the application only ever sees `::ffff:<ClusterIP>`. Real servers (lab-echo) in pod
//! namespaces, a small Python client with AF_INET6 sockets in the lab cgroup.
//!
//! Native IPv6 ClusterIPs (`fd00:96::/112`) through the same hooks and the egress guard are
//! tested end to end through manifests, with the agent programming them: clusterip.rs,
//! kube_proxy_drops.rs and udp_destroy.rs run each test over both families, clusterip_v6.rs
//! has the IPv6-only and dual-stack Services.

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::*;
use ferry::model::Protocol;
use ferry_tests::{Attempt, Endpoint, EndpointSlice, Lab, Pod, Service, require_root, services};

const VIP: &str = "10.96.0.10";
const MAPPED_VIP: &str = "::ffff:10.96.0.10";

/// The client: AF_INET6 sockets only. One JSON line per attempt, as lab-client prints them
/// (`ok`, `seq`, `stage`, `reply`, `peer` = getpeername, `from` = recvfrom's source, `error` =
/// errno name or "timeout", `elapsed_ms`), addresses as `[addr]:port`.
///
/// `python3 -c CLIENT MODE HOST PORT COUNT [TIMEOUT_S]`: `tcp` (a connection per attempt, sends `hello`,
/// reads one line), `udp` (one unconnected socket, sendto + recvfrom per attempt), `udp-connected`
/// (one connected socket, send + recvfrom per attempt), `udp-loop` (like `udp-connected`, every
/// 50 ms, COUNT 0 = until killed; after an error other than a timeout the socket is replaced by a
/// newly connected one, as an application handling a destroyed socket does).
const CLIENT: &str = r#"
import errno, json, socket, sys, time

mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 3.0
dest = (host, port)

def show(a):
    return "[%s]:%d" % (a[0], a[1])

def err_name(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return errno.errorcode.get(e.errno, str(e.errno))

def line(seq, start, **kw):
    kw.update(seq=seq, elapsed_ms=int((time.monotonic() - start) * 1000))
    print(json.dumps(kw), flush=True)

def udp_socket(connected):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if connected:
        s.connect(dest)
    return s

def tcp(seq):
    start, stage = time.monotonic(), "connect"
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(dest)
        peer = show(s.getpeername())
        stage = "send"
        s.sendall(b"hello\n")
        stage = "recv"
        reply = s.makefile("r").readline().strip()
        if not reply:
            raise socket.timeout()
        line(seq, start, ok=True, reply=reply, peer=peer)
    except OSError as e:
        line(seq, start, ok=False, stage=stage, error=err_name(e))
    finally:
        s.close()

def udp(seq, s, connected):
    start, stage = time.monotonic(), "send"
    try:
        if connected:
            s.send(b"hello")
        else:
            s.sendto(b"hello", dest)
        stage = "recv"
        data, source = s.recvfrom(2048)
        stage = "getpeername"
        peer = show(s.getpeername()) if connected else None
        line(seq, start, ok=True, reply=data.decode().strip(), peer=peer, **{"from": show(source)})
        return True
    except OSError as e:
        line(seq, start, ok=False, stage=stage, error=err_name(e))
        return isinstance(e, socket.timeout)

ok = True
if mode == "tcp":
    for seq in range(count):
        tcp(seq)
elif mode in ("udp", "udp-connected"):
    connected = mode == "udp-connected"
    start = time.monotonic()
    try:
        s = udp_socket(connected)
    except OSError as e:
        line(0, start, ok=False, stage="connect", error=err_name(e))
        sys.exit(1)
    for seq in range(count):
        udp(seq, s, connected)
elif mode == "udp-loop":
    s, seq = udp_socket(True), 0
    while count == 0 or seq < count:
        if not udp(seq, s, True):
            s.close()
            s = udp_socket(True)
        seq += 1
        time.sleep(0.05)
else:
    sys.exit(2)
"#;

/// Runs the client to completion in the pod and returns its attempts.
fn client(lab: &Lab, pod: &Pod, mode: &str, host: &str, port: u16, count: u32) -> Vec<Attempt> {
    client_timeout(lab, pod, mode, host, port, count, Duration::from_secs(3))
}

/// [`client`] with the sockets' timeout.
fn client_timeout(
    lab: &Lab,
    pod: &Pod,
    mode: &str,
    host: &str,
    port: u16,
    count: u32,
    timeout: Duration,
) -> Vec<Attempt> {
    let port = port.to_string();
    let count = count.to_string();
    let timeout = timeout.as_secs_f64().to_string();
    let out = lab.output_timeout(
        pod,
        "python3",
        &["-c", CLIENT, mode, host, &port, &count, &timeout],
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let attempts = ferry_tests::client::parse_lines(text.lines());
    assert!(
        !attempts.is_empty(),
        "the client ({mode} [{host}]:{port}) in {} printed nothing ({}): {}",
        pod.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    attempts
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.stats()["counters"][name].as_u64().unwrap_or_default()
}

/// TCP and UDP service `web` on `VIP` (80 -> 8080, 53 -> 8053) over `pods`, each echoing on
/// both; the agent started and both frontends in the kernel.
fn serve(lab: &Lab, pods: &[&Pod]) -> Vec<ferry_tests::proc::Proc> {
    let echo = pods
        .iter()
        .map(|p| lab.start_echo(p, &[8080], &[8053]))
        .collect();
    let svc = Service::cluster_ip("web", VIP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16);
    let slice = EndpointSlice::new("web-1", "web")
        .port("http", 8080, "TCP")
        .port("dns", 8053, "UDP")
        .endpoints(pods.iter().map(|p| Endpoint::ready(p.ip)));
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(lab);
    let tcp: Vec<String> = pods.iter().map(|p| ep(p, 8080)).collect();
    let udp: Vec<String> = pods.iter().map(|p| ep(p, 8053)).collect();
    wait_active(lab, "tcp frontend", VIP, 80, Protocol::Tcp, &tcp);
    wait_active(lab, "udp frontend", VIP, 53, Protocol::Udp, &udp);
    echo
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_dual_stack_socket_reaches_a_cluster_ip_by_its_mapped_address() {
    require_root!();
    let lab = Lab::new("a_dual_stack_socket_reaches_a_cluster_ip_by_its_mapped_address");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let c = lab.add_pod("client");
    let _echo = serve(&lab, &[&b1, &b2]);
    let backends = BTreeSet::from(["b1".to_owned(), "b2".to_owned()]);

    // TCP: connect6 translates ::ffff:VIP to ::ffff:backend; getpeername6 shows the service.
    let translated = counter(&lab, "connect_translated");
    let peername = counter(&lab, "getpeername_rev_nat");
    let tcp = client(&lab, &c, "tcp", MAPPED_VIP, 80, 30);
    assert_all_ok(&tcp, "TCP connects to [::ffff:VIP]:80");
    let mut seen = BTreeSet::new();
    for a in &tcp {
        assert_eq!(
            a.peer.as_deref(),
            Some("[::ffff:10.96.0.10]:80"),
            "getpeername: {}",
            a.raw
        );
        let echo = a
            .echo()
            .unwrap_or_else(|| panic!("an echo reply: {}", a.raw));
        assert_eq!(echo.port, 8080, "{}", a.raw);
        assert_eq!(
            *echo.peer.ip(),
            c.ip,
            "the backend sees the pod's IP: {}",
            a.raw
        );
        seen.insert(echo.pod);
    }
    assert_eq!(seen, backends, "both endpoints serve");
    assert!(
        counter(&lab, "connect_translated") >= translated + 30,
        "connect_translated counts the mapped connects"
    );
    assert!(
        counter(&lab, "getpeername_rev_nat") >= peername + 30,
        "getpeername_rev_nat counts the mapped getpeername()s"
    );

    // Unconnected UDP: sendto ::ffff:VIP (the kernel hands it to sendmsg4), the reply's source
    // restored by recvmsg6 from the IPv4 reverse entry.
    let sent = counter(&lab, "sendmsg_translated");
    let received = counter(&lab, "recvmsg_rev_nat");
    let udp = client(&lab, &c, "udp", MAPPED_VIP, 53, 10);
    assert_all_ok(&udp, "unconnected UDP to [::ffff:VIP]:53");
    for a in &udp {
        assert_eq!(
            a.from.as_deref(),
            Some("[::ffff:10.96.0.10]:53"),
            "recvfrom source: {}",
            a.raw
        );
        let echo = a
            .echo()
            .unwrap_or_else(|| panic!("an echo reply: {}", a.raw));
        assert_eq!((echo.port, *echo.peer.ip()), (8053, c.ip), "{}", a.raw);
    }
    assert!(counter(&lab, "sendmsg_translated") >= sent + 10);
    assert!(counter(&lab, "recvmsg_rev_nat") >= received + 10);

    // Connected UDP: connect6 once, every datagram to that backend; both getpeername() and
    // recvfrom() show the service.
    let connected = client(&lab, &c, "udp-connected", MAPPED_VIP, 53, 5);
    assert_all_ok(&connected, "connected UDP to [::ffff:VIP]:53");
    for a in &connected {
        assert_eq!(
            a.peer.as_deref(),
            Some("[::ffff:10.96.0.10]:53"),
            "getpeername: {}",
            a.raw
        );
        assert_eq!(
            a.from.as_deref(),
            Some("[::ffff:10.96.0.10]:53"),
            "recvfrom: {}",
            a.raw
        );
    }
    let pods = by_pod(&connected);
    assert_eq!(
        pods.len(),
        1,
        "a connected socket keeps its backend: {pods:?}"
    );
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_mapped_cluster_ip_without_endpoints_or_port_is_refused() {
    require_root!();
    let lab = Lab::new("a_mapped_cluster_ip_without_endpoints_or_port_is_refused");
    let c = lab.add_pod("client");
    let svc = Service::cluster_ip("empty", VIP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16);
    lab.manifests().apply(&svc);
    lab.manifests().apply(
        &EndpointSlice::new("empty-1", "empty")
            .port("http", 8080, "TCP")
            .port("dns", 8053, "UDP"),
    );
    start_agent(&lab);
    let took = lab.wait_services(
        |v| {
            [(80, Protocol::Tcp), (53, Protocol::Udp)]
                .iter()
                .all(|&(port, proto)| {
                    services::frontend(v, VIP, port, proto).is_some_and(|f| f.backends.is_empty())
                })
        },
        DEADLINE,
    );
    report("frontends without backends visible", took);

    // No endpoint (TCP 80), and a port no Service defines (81): refused at once.
    for port in [80, 81] {
        let before = counter(&lab, "connect_refused");
        let a = &client(&lab, &c, "tcp", MAPPED_VIP, port, 1)[0];
        assert!(!a.ok, "{}", a.raw);
        assert_eq!(
            (a.stage.as_deref(), a.error.as_deref()),
            (Some("connect"), Some("ECONNREFUSED")),
            "TCP [::ffff:VIP]:{port} refused, not dropped: {}",
            a.raw
        );
        assert!(a.elapsed_ms < 1000, "refused at once: {}", a.raw);
        assert_eq!(
            counter(&lab, "connect_refused"),
            before + 1,
            "counted as refused by ferry"
        );
    }

    // UDP: a connect (connect6) and a datagram (sendmsg4) are refused alike.
    let a = &client(&lab, &c, "udp-connected", MAPPED_VIP, 53, 1)[0];
    assert_eq!(
        (a.stage.as_deref(), a.error.as_deref()),
        (Some("connect"), Some("ECONNREFUSED")),
        "connected UDP: {}",
        a.raw
    );
    let before = counter(&lab, "sendmsg_refused");
    let a = &client(&lab, &c, "udp", MAPPED_VIP, 53, 1)[0];
    assert_eq!(
        (a.stage.as_deref(), a.error.as_deref()),
        (Some("send"), Some("ECONNREFUSED")),
        "unconnected UDP: {}",
        a.raw
    );
    assert_eq!(counter(&lab, "sendmsg_refused"), before + 1);
}

/// A Local traffic policy with endpoints on other nodes only: kube-proxy drops. The mapped
/// destination is let through untranslated and the socket's IPv4 guard record marked (its
/// packets are IPv4), so the egress guard drops them: TCP times out, UDP is sent and lost.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_mapped_cluster_ip_with_only_remote_endpoints_and_a_local_policy_drops() {
    require_root!();
    let lab = Lab::new("a_mapped_cluster_ip_with_only_remote_endpoints_and_a_local_policy_drops");
    let c = lab.add_pod("client");
    let remote = lab.add_pod("remote");
    let _echo = lab.start_echo(&remote, &[8080], &[8053]);
    let svc = Service::cluster_ip("local", VIP)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 8053u16)
        .internal_traffic_policy("Local");
    lab.manifests().apply(&svc);
    lab.manifests().apply(
        &EndpointSlice::new("local-1", "local")
            .port("http", 8080, "TCP")
            .port("dns", 8053, "UDP")
            .endpoint(Endpoint::ready(remote.ip).node("node-2")),
    );
    start_agent(&lab);
    let took = lab.wait_services(
        |v| {
            [(80, Protocol::Tcp), (53, Protocol::Udp)]
                .iter()
                .all(|&(port, proto)| {
                    services::frontend(v, VIP, port, proto)
                        .is_some_and(|f| f.flags.iter().any(|f| f == "DropNoLocalEndpoints"))
                })
        },
        DEADLINE,
    );
    report("frontends without a local endpoint visible", took);
    let marked = counter(&lab, "sock_no_local");
    let dropped = counter(&lab, "guard_no_local_drop");

    let short = Duration::from_millis(1500);
    let tcp = &client_timeout(&lab, &c, "tcp", MAPPED_VIP, 80, 1, short)[0];
    assert_eq!(
        (tcp.stage.as_deref(), tcp.error.as_deref()),
        (Some("connect"), Some("timeout")),
        "TCP is dropped, not refused: {}",
        tcp.raw
    );
    assert!(tcp.elapsed_ms >= 1400, "{}", tcp.raw);
    for mode in ["udp-connected", "udp"] {
        let udp = &client_timeout(&lab, &c, mode, MAPPED_VIP, 53, 1, short)[0];
        assert_eq!(
            (udp.stage.as_deref(), udp.error.as_deref()),
            (Some("recv"), Some("timeout")),
            "{mode} is sent and lost, not refused: {}",
            udp.raw
        );
    }
    assert!(
        counter(&lab, "sock_no_local") >= marked + 3,
        "the three sockets were let through and marked: {}",
        lab.stats()
    );
    assert!(
        counter(&lab, "guard_no_local_drop") >= dropped + 3,
        "the guard dropped the SYN and both datagrams: {}",
        lab.stats()
    );
}

/// The UDP socket-destroy iterator reads an AF_INET6 socket's IPv4-mapped destination as the
/// IPv4 backend connect6 gave it: a dual-stack socket connected to a removed backend is
/// destroyed (cilium#12859), as an IPv4 one is (udp_destroy.rs).
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_mapped_connected_udp_socket_of_a_removed_backend_is_destroyed() {
    require_root!();
    let lab = Lab::new("a_mapped_connected_udp_socket_of_a_removed_backend_is_destroyed");
    let b1 = lab.add_pod("b1");
    let b2 = lab.add_pod("b2");
    let c = lab.add_pod("client");
    let _echo = serve(&lab, &[&b1, &b2]);
    if lab
        .agent_log()
        .contains("connected UDP sockets keep a removed backend")
    {
        println!("skipped: the kernel cannot destroy sockets (bpf_sock_destroy, Linux >= 6.5)");
        return;
    }

    let load = lab.spawn(
        &c,
        "python3",
        &["-u", "-c", CLIENT, "udp-loop", MAPPED_VIP, "53", "0"],
    );
    // The next attempt that satisfies `pred`, within `within`.
    let wait_for = |what: &str, within: Duration, pred: &dyn Fn(&Attempt) -> bool| -> Attempt {
        let deadline = Instant::now() + within;
        loop {
            assert!(
                Instant::now() < deadline && load.is_running(),
                "no attempt ({what}) within {within:?}: {}",
                lab.logs_of("client")
            );
            if let Some(a) = load
                .next_line(Duration::from_millis(100))
                .and_then(|l| Attempt::parse(&l))
                && pred(&a)
            {
                return a;
            }
        }
    };
    let first = wait_for("the first", Duration::from_secs(10), &|_| true);
    assert!(first.ok, "{}", first.raw);
    assert_eq!(first.peer.as_deref(), Some("[::ffff:10.96.0.10]:53"));
    let stuck_on = first.pod().expect("an echo reply");
    let kept = if stuck_on == "b1" { &b2 } else { &b1 };
    for _ in 0..5 {
        let a = wait_for("before the change", Duration::from_secs(5), &|_| true);
        assert!(
            a.ok && a.pod() == first.pod(),
            "keeps its backend: {}",
            a.raw
        );
    }

    // The removed backend still answers (its server runs): only a destroyed socket fails.
    println!("connected to {stuck_on}; removing it");
    lab.manifests().apply(
        &EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .port("dns", 8053, "UDP")
            .endpoint(Endpoint::ready(kept.ip)),
    );
    let applied = Instant::now();
    let failed = wait_for("the socket's error", Duration::from_secs(10), &|a| !a.ok);
    let took = applied.elapsed();
    println!(
        "socket error {:?} at stage {:?}, {took:?} after the change",
        failed.error, failed.stage
    );
    assert!(
        matches!(
            failed.error.as_deref(),
            Some("ECONNABORTED" | "EDESTADDRREQ")
        ),
        "the socket was destroyed, not timed out: {}",
        failed.raw
    );
    assert!(
        took < Duration::from_secs(2),
        "the socket got its error only after {took:?}\n{}",
        lab.agent_log()
    );
    let after = wait_for("after reconnecting", Duration::from_secs(5), &|a| a.ok);
    assert_eq!(
        after.pod().as_deref(),
        Some(kept.name.as_str()),
        "reconnected to the remaining backend: {}",
        after.raw
    );
    assert_eq!(after.from.as_deref(), Some("[::ffff:10.96.0.10]:53"));
    load.terminate();
}
