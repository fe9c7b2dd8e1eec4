//! `ferry monitor` on the two-node lab (tests/src/cluster.rs): with node1's agent running and
//! `ferry monitor -o json` running beside it in node1's namespace, real clients outside the
//! cluster are dropped (source ranges, eTP Local without a local endpoint) or start flows
//! (a NodePort to a backend on either node), and the monitor prints each event with its reason,
//! its tuple, its translation and its Service. Its filters keep only matching events. Without a
//! monitor the control is off and the programs write nothing to the ring; a monitor that ends
//! (SIGTERM) or dies (SIGKILL: its lease runs out) leaves it off.
//!
//! Every wait polls a real condition (a line printed, a map read) with a deadline.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ferry::{
    datapath::{
        events::{EventView, read_control},
        sys,
    },
    paths::PinDir,
};
use ferry_tests::{
    Attempt, Cluster, Lab, Pod, Service,
    client::EchoAny,
    cluster::{EXT1_IP, EXT1_IP6, EXT2_IP, EXT2_IP6, LB_RANGE, poll},
    over_both_families,
    proc::Proc,
    require_root,
    services::{Family, at},
};

const CLUSTER_IP: [&str; 2] = ["10.96.0.10", "fd00:96::a"];
const CLUSTER_IP2: [&str; 2] = ["10.96.0.11", "fd00:96::b"];
const LB_IP: [&str; 2] = ["192.0.2.10", "fd00:192:0:2::10"];
const LB_RANGES: [&str; 2] = [LB_RANGE, "fd00:192:0:2::/64"];
/// `web`: a LoadBalancer (source ranges: ext1 only) with NodePort 30080, backends on both nodes.
const NODE_PORT: u16 = 30080;
/// `local`: a NodePort Service, externalTrafficPolicy Local, its only backend on node2.
const LOCAL_NODE_PORT: u16 = 30081;
const DEADLINE: Duration = Duration::from_secs(10);

over_both_families!(
    monitor_reports_drops_and_new_flows,
    monitor_filters_keep_only_matching_events,
    monitor_reports_xdp_drops_and_new_flows,
);

/// With `--acceleration generic`, what ferry_xdp decides is reported as TC's is, program
/// `xdp`: a source-range drop, an eTP Local drop, and a new flow to the backend on node2
/// (the local backend's flows are TC's: XDP leaves a bridge's pods to the stack). Both
/// families: ferry_xdp handles IPv6 (xdp6.rs) with IPv4's decisions and events.
fn monitor_reports_xdp_drops_and_new_flows(f: Family) {
    require_root!();
    let s = setup_with("monitor_xdp", f, &["--acceleration", "generic"]);
    let c = &s.c;
    let node_port = at(node1_ip(c, f), NODE_PORT);
    let lb = at(f.pick(LB_IP).parse::<IpAddr>().unwrap(), 80);
    let local = at(node1_ip(c, f), LOCAL_NODE_PORT);
    let xdp_forwarded = || counter(c, "ns_xdp_forwarded");
    // Connections until one lands on b2 (node2).
    let to_b2 = || {
        poll(DEADLINE, Duration::from_millis(1), || {
            let echo = answered(c, &s.ext1, &node_port);
            if echo.pod == s.b2.name {
                Ok(echo)
            } else {
                Err(echo.pod)
            }
        })
        .unwrap_or_else(|last| panic!("no connection reached b2 (last: {last})"))
        .0
    };
    // Once before the monitor: node1 resolves node2's address, without which XDP leaves a
    // new flow to TC (the FIB names no neighbour yet).
    to_b2();
    let m = start_monitor(c, &[]);

    assert!(!tcp_once(c, &s.ext2, &lb).ok, "ext2 is outside the range");
    let e = wait_event(&m, "source_range drop", |e| {
        e.kind == "drop" && ip_of(&e.src) == Some(ext2_ip(f))
    });
    println!("{e:?}");
    assert_eq!(
        (e.program.as_str(), e.reason.as_deref()),
        ("xdp", Some("source_range"))
    );
    assert_eq!(e.dst, lb);
    assert_eq!(e.service.as_deref(), Some("default/web"));

    assert!(!tcp_once(c, &s.ext1, &local).ok);
    let e = wait_event(&m, "no_local_endpoint drop", |e| {
        e.kind == "drop" && port_of(&e.dst) == Some(LOCAL_NODE_PORT)
    });
    assert_eq!(
        (e.program.as_str(), e.reason.as_deref()),
        ("xdp", Some("no_local_endpoint"))
    );
    assert_eq!(ip_of(&e.src), Some(ext1_ip(f)));

    // A new flow to b2 is XDP's, and names b2 and the SNAT source b2 saw.
    let before = xdp_forwarded();
    let echo = to_b2();
    let e = wait_event(&m, "XDP new flow", |e| {
        e.kind == "new_flow"
            && e.program == "xdp"
            && e.nat_src.as_deref() == Some(&echo.peer.to_string())
    });
    println!("{e:?} answered by {echo:?}");
    assert_eq!(e.nat_dst.as_deref(), Some(f.ep(&s.b2, 8080).as_str()));
    assert_eq!(e.dst, node_port);
    assert_eq!(ip_of(&e.src), Some(ext1_ip(f)));
    assert_eq!(e.service.as_deref(), Some("default/web"));
    assert!(xdp_forwarded() > before, "XDP forwarded the flow's packets");
}

fn ext1_ip(f: Family) -> IpAddr {
    f.pick([EXT1_IP.into(), EXT1_IP6.into()])
}

fn ext2_ip(f: Family) -> IpAddr {
    f.pick([EXT2_IP.into(), EXT2_IP6.into()])
}

fn node1_ip(c: &Cluster, f: Family) -> IpAddr {
    let n = c.node("node1");
    f.pick([n.ip.into(), n.ip6.into()])
}

/// The lab of both tests: `web` (b1 on node1, b2 on node2; source range ext1) and `local`
/// (eTP Local, b2 only), both agents running, the LB range routed to node1.
struct Setup {
    c: Cluster,
    ext1: Pod,
    ext2: Pod,
    b1: Pod,
    b2: Pod,
    _echo: Vec<Proc>,
}

fn setup(name: &str, f: Family) -> Setup {
    setup_with(name, f, &[])
}

/// [`setup`], the agents started with `agent_args`.
fn setup_with(name: &str, f: Family, agent_args: &[&str]) -> Setup {
    let c = Cluster::new(&format!("{name}_{}", f.tag()));
    let ext1 = c.ext("ext1");
    let ext2 = c.ext("ext2");
    let b1 = c.add_pod_on("node1", "b1");
    let b2 = c.add_pod_on("node2", "b2");
    let echo = vec![
        c.start_echo(&b1, &[8080], &[]),
        c.start_echo(&b2, &[8080], &[]),
    ];
    let web = Service::load_balancer("web", CLUSTER_IP[0])
        .cluster_ips(&CLUSTER_IP)
        .ip_family_policy("PreferDualStack")
        .port_to("http", 80, "TCP", 8080u16)
        .node_port(NODE_PORT as i64)
        .lb_ingress(LB_IP[0])
        .lb_ingress(LB_IP[1])
        .source_range(&Family::V4.host_cidr(&ext1))
        .source_range(&Family::V6.host_cidr(&ext1));
    let local = Service::node_port_service("local", CLUSTER_IP2[0])
        .cluster_ips(&CLUSTER_IP2)
        .ip_family_policy("PreferDualStack")
        .port_to("http", 80, "TCP", 8080u16)
        .node_port(LOCAL_NODE_PORT as i64)
        .external_traffic_policy("Local");
    c.manifests().apply(&web);
    c.manifests().apply(&local);
    for fam in Family::BOTH {
        c.manifests().apply(
            &fam.slice("web", "web")
                .port("http", 8080, "TCP")
                .endpoints([fam.ready(&b1).node("node1"), fam.ready(&b2).node("node2")]),
        );
        c.manifests().apply(
            &fam.slice("local", "local")
                .port("http", 8080, "TCP")
                .endpoints([fam.ready(&b2).node("node2")]),
        );
    }
    c.start_agents_with(&ferry_tests::agent::AgentOpts {
        extra_args: agent_args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    });
    c.wait_north_south(DEADLINE);
    let lb = f.pick(LB_IP);
    c.wait_services(
        "node1",
        |v| {
            v.frontends
                .iter()
                .any(|fe| fe.address.to_string() == lb && fe.port == 80 && fe.backends.len() == 2)
                && v.frontends
                    .iter()
                    .any(|fe| fe.port == LOCAL_NODE_PORT && fe.address == node1_ip(&c, f))
        },
        DEADLINE,
    );
    c.route(&ext1, f.pick(LB_RANGES), "node1");
    c.route(&ext2, f.pick(LB_RANGES), "node1");
    Setup {
        c,
        ext1,
        ext2,
        b1,
        b2,
        _echo: echo,
    }
}

fn pins(c: &Cluster) -> PinDir {
    PinDir::new(&c.node("node1").pin_dir)
}

/// The ring's producer position (bytes ever written): the page after the consumer's, mapped
/// read-only from the pinned map.
fn producer_position(c: &Cluster) -> u64 {
    let path = c.node("node1").pin_dir.join("ferry_events_v1");
    // Read-write: the kernel maps no page of a ring buffer through a read-only descriptor
    // (only PROT_READ is asked for all the same).
    let fd = sys::obj_get(&path, 0).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    use std::os::fd::AsRawFd as _;
    // SAFETY: sysconf has no preconditions; mmap of one read-only page of a ring buffer map
    // (its producer page), unmapped below.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let p = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            page as libc::off_t,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap of the ring's producer page: {}",
            std::io::Error::last_os_error()
        );
        let pos = std::ptr::read_volatile(p as *const u64);
        libc::munmap(p, page);
        pos
    }
}

fn counter(c: &Cluster, name: &str) -> u64 {
    c.stats("node1")["counters"][name].as_u64().unwrap_or(0)
}

/// Starts `ferry monitor -o json ARGS` in node1's namespace and waits until it holds the
/// lease (the control names its pid).
fn start_monitor(c: &Cluster, args: &[&str]) -> Proc {
    let node = c.node("node1");
    let pin = node.pin_dir.to_string_lossy().into_owned();
    let mut all = vec!["monitor", "--bpffs", &pin, "-o", "json"];
    all.extend_from_slice(args);
    let m = c.spawn(&node.host(), Lab::ferry_bin(), &all);
    let pid = m.pid();
    poll(DEADLINE, Duration::from_millis(20), || {
        if !m.is_running() {
            return Err("ferry monitor exited".into());
        }
        match read_control(&pins(c)) {
            Ok(ctl) if ctl.pid == pid && ctl.lease_until_ns != 0 => Ok(()),
            other => Err(format!("control: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("ferry monitor {args:?} did not take the lease: {e}"));
    m
}

/// The next event the monitor prints that satisfies `pred`.
fn wait_event(m: &Proc, what: &str, pred: impl Fn(&EventView) -> bool) -> EventView {
    let line = m
        .wait_line(DEADLINE, |l| {
            serde_json::from_str::<EventView>(l).is_ok_and(|e| pred(&e))
        })
        .unwrap_or_else(|| panic!("ferry monitor printed no {what} within {DEADLINE:?}"));
    serde_json::from_str(&line).expect("an event")
}

fn ip_of(s: &str) -> Option<IpAddr> {
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

fn port_of(s: &str) -> Option<u16> {
    s.parse::<SocketAddr>().ok().map(|a| a.port())
}

/// One TCP attempt (1 s) from `from` to `target`.
fn tcp_once(c: &Cluster, from: &Pod, target: &str) -> Attempt {
    c.client(from, &["tcp", target, "--timeout-ms", "1000"])
        .remove(0)
}

/// A connection from ext1 to the NodePort that is answered (the first may race the
/// programs' attachment on a fresh lab: polled).
fn answered(c: &Cluster, from: &Pod, target: &str) -> EchoAny {
    let (a, _) = poll(DEADLINE, Duration::from_millis(50), || {
        let a = tcp_once(c, from, target);
        if a.ok { Ok(a) } else { Err(a.raw) }
    })
    .unwrap_or_else(|e| panic!("{target} did not answer: {e}\n{}", c.dump()));
    a.reply
        .as_deref()
        .and_then(EchoAny::parse)
        .unwrap_or_else(|| panic!("no echo in {}", a.raw))
}

fn monitor_reports_drops_and_new_flows(f: Family) {
    require_root!();
    let s = setup("monitor_reports", f);
    let c = &s.c;
    let node_port = at(node1_ip(c, f), NODE_PORT);
    let lb = at(f.pick(LB_IP).parse::<IpAddr>().unwrap(), 80);
    let local = at(node1_ip(c, f), LOCAL_NODE_PORT);

    // Without a monitor: the control is off, and traffic through every emitting path (a new
    // flow, a source-range drop) writes nothing to the ring.
    let ctl = read_control(&pins(c)).expect("reading ferry_mon_v1");
    assert_eq!(ctl.lease_until_ns, 0, "no monitor: the control is off");
    let (pos, flows, drops) = (
        producer_position(c),
        counter(c, "ns_new_flow"),
        counter(c, "ns_source_range_drop"),
    );
    answered(c, &s.ext1, &node_port);
    assert!(!tcp_once(c, &s.ext2, &lb).ok, "ext2 is outside the range");
    assert!(counter(c, "ns_new_flow") > flows && counter(c, "ns_source_range_drop") > drops);
    assert_eq!(
        producer_position(c),
        pos,
        "nothing is written to the ring while no monitor runs"
    );

    let m = start_monitor(c, &[]);

    // (1) A client outside the source ranges: a drop, reason source_range, its address, the
    // Service.
    assert!(!tcp_once(c, &s.ext2, &lb).ok);
    let e = wait_event(&m, "source_range drop", |e| {
        e.kind == "drop" && ip_of(&e.src) == Some(ext2_ip(f))
    });
    println!("{f}: {e:?}");
    assert_eq!(e.reason.as_deref(), Some("source_range"));
    assert_eq!(e.dst, lb);
    assert_eq!(e.service.as_deref(), Some("default/web"));
    assert_eq!(e.program, "tc_in");
    assert_eq!(e.family, f.tag());

    // (2) A new flow to the NodePort names the backend that answered, and the SNAT source the
    // backend saw.
    let echo = answered(c, &s.ext1, &node_port);
    let e = wait_event(&m, "new flow", |e| {
        e.kind == "new_flow" && ip_of(&e.src) == Some(ext1_ip(f)) && e.dst == node_port
    });
    println!("{f}: {e:?} answered by {echo:?}");
    let backend = [&s.b1, &s.b2]
        .into_iter()
        .find(|p| p.name == echo.pod)
        .unwrap_or_else(|| panic!("no pod {}", echo.pod));
    assert_eq!(
        e.nat_dst.as_deref(),
        Some(f.ep(backend, 8080).as_str()),
        "the event names the backend that answered"
    );
    assert_eq!(
        e.nat_src.and_then(|s| s.parse::<SocketAddr>().ok()),
        Some(echo.peer)
    );
    assert_eq!(e.mode.as_deref(), Some("snat"));
    assert_eq!(e.service.as_deref(), Some("default/web"));

    // (3) eTP Local without a local endpoint: dropped, no_local_endpoint.
    assert!(!tcp_once(c, &s.ext1, &local).ok);
    let e = wait_event(&m, "no_local_endpoint drop", |e| {
        e.kind == "drop" && port_of(&e.dst) == Some(LOCAL_NODE_PORT)
    });
    assert_eq!(e.reason.as_deref(), Some("no_local_endpoint"));
    assert_eq!(ip_of(&e.src), Some(ext1_ip(f)));
    assert_eq!(e.service.as_deref(), Some("default/local"));

    // Ended (SIGTERM): the lease is released at once.
    m.terminate_with(Duration::from_secs(5));
    let ctl = read_control(&pins(c)).expect("reading ferry_mon_v1");
    assert_eq!(
        ctl.lease_until_ns, 0,
        "a monitor that ended released the lease"
    );

    // Killed (SIGKILL): its lease runs out, and the programs turn the events off themselves.
    let m = start_monitor(c, &[]);
    // SAFETY: a process this test started, by its pid.
    unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    m.wait_exit(Duration::from_secs(5));
    let (_, took) = poll(
        Duration::from_nanos(agent_common::event::LEASE_NS) + DEADLINE,
        Duration::from_millis(200),
        || {
            // Each attempt passes an emitting path (a drop), where an expired lease is cleared.
            tcp_once(c, &s.ext2, &lb);
            match read_control(&pins(c)) {
                Ok(ctl) if ctl.lease_until_ns == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .unwrap_or_else(|e| panic!("the dead monitor's lease was never cleared: {e}"));
    println!("{f}: a killed monitor's lease cleared after {took:?}");
    let pos = producer_position(c);
    answered(c, &s.ext1, &node_port);
    assert_eq!(producer_position(c), pos, "off again: nothing written");
}

fn monitor_filters_keep_only_matching_events(f: Family) {
    require_root!();
    let s = setup("monitor_filters", f);
    let c = &s.c;
    let node_port = at(node1_ip(c, f), NODE_PORT);
    let lb = at(f.pick(LB_IP).parse::<IpAddr>().unwrap(), 80);
    let local = at(node1_ip(c, f), LOCAL_NODE_PORT);
    let ext2 = ext2_ip(f).to_string();
    let m = start_monitor(c, &["--service", "default/web", "--address", &ext2]);

    // One reader at a time: a second monitor is refused, naming the first.
    let pin = c.node("node1").pin_dir.to_string_lossy().into_owned();
    let second = c.output(
        &c.node("node1").host(),
        Lab::ferry_bin(),
        &["monitor", "--bpffs", &pin],
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && err.contains(&format!("pid {}", m.pid())),
        "a second monitor is refused: {err}"
    );

    // Not shown: ext1 to web (the Service matches, the address does not), then ext2 to local
    // (the address matches, the Service does not).
    answered(c, &s.ext1, &node_port);
    assert!(!tcp_once(c, &s.ext2, &local).ok);
    // Shown: ext2 to web's LB IP, dropped (both match). Events come in order: had either
    // event above passed the filters, it would be printed first.
    assert!(!tcp_once(c, &s.ext2, &lb).ok);
    let first = m
        .next_line(DEADLINE)
        .unwrap_or_else(|| panic!("nothing printed within {DEADLINE:?}"));
    let e: EventView = serde_json::from_str(&first).expect("an event");
    assert_eq!(
        (e.kind.as_str(), e.reason.as_deref()),
        ("drop", Some("source_range")),
        "the first event shown is the matching one: {first}"
    );
    assert_eq!(ip_of(&e.src), Some(ext2_ip(f)));
    assert_eq!(e.service.as_deref(), Some("default/web"));
    // Whatever else it printed (the SYN's retransmissions) matches too.
    m.terminate_with(Duration::from_secs(5));
    for l in m.drain_lines() {
        let e: EventView = serde_json::from_str(&l).expect("an event");
        assert!(
            e.service.as_deref() == Some("default/web") && ip_of(&e.src) == Some(ext2_ip(f)),
            "{l}"
        );
    }

    // --type flow shows new flows only.
    let m = start_monitor(c, &["--type", "flow", "--port", &NODE_PORT.to_string()]);
    assert!(!tcp_once(c, &s.ext2, &lb).ok);
    answered(c, &s.ext1, &node_port);
    let first = m.next_line(DEADLINE).expect("a line");
    let e: EventView = serde_json::from_str(&first).expect("an event");
    assert_eq!(e.kind, "new_flow", "{first}");
    assert_eq!(port_of(&e.dst), Some(NODE_PORT));
}
