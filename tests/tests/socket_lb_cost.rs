//! What ferry's socket layer costs a kept-alive connection to a ClusterIP (issue 14): its
//! programs run when the connection is made (connect4 in the client, getpeername4 when the
//! server accepts), never per request, so a kept-alive request's latency owes nothing to
//! them whatever the number of Services. Counted with BPF_ENABLE_STATS (fd-scoped: the
//! machine-wide sysctl is never touched), for the lab's own programs only.

mod common;

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    Endpoint, Lab, Service,
    bench::bpfstats::{self, ProgCost, RunStats},
    over_both_families, require_root,
    services::Family,
};

const VIP: &str = "10.96.0.10";

/// The runs of the socket-layer programs (cgroup sock_addr: `ferry_conn*`, `ferry_send*`,
/// `ferry_recv*`, `ferry_peer*`) while curl makes `requests` requests over one connection.
fn socket_runs(lab: &Lab, client: &ferry_tests::Pod, requests: usize) -> Vec<ProgCost> {
    let url = format!("http://{VIP}:80/");
    let mut args = vec!["-sS", "--max-time", "10", "-o", "/dev/null"];
    args.extend(std::iter::repeat_n(url.as_str(), requests));
    let before = bpfstats::snapshot(&lab.pin_dir());
    let out = lab.output(client, "curl", &args);
    let after = bpfstats::snapshot(&lab.pin_dir());
    assert!(
        out.status.success(),
        "curl {requests} requests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = bpfstats::delta(&before, &after);
    println!("{requests} requests over one connection: {all:?}");
    all.into_iter()
        .filter(|p| {
            ["ferry_conn", "ferry_send", "ferry_recv", "ferry_peer"]
                .iter()
                .any(|s| p.name.starts_with(s))
        })
        .collect()
}

fn runs_of(list: &[ProgCost], name: &str) -> u64 {
    list.iter().find(|p| p.name == name).map_or(0, |p| p.runs)
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn socket_programs_run_per_connection_not_per_request() {
    require_root!();
    let lab = Lab::new("socket_programs_run_per_connection_not_per_request");
    let b1 = lab.add_pod("b1");
    let bench = env!("CARGO_BIN_EXE_ferry-bench");
    let server = lab.spawn(
        &b1,
        bench,
        &["serve", "--port", "8080", "--lifetime", "120"],
    );
    assert!(
        server
            .wait_line(std::time::Duration::from_secs(10), |l| l == "ready")
            .is_some(),
        "the keep-alive server did not start: {}",
        lab.logs_of("b1")
    );
    let (svc, slice) = simple("web", VIP, 80, 8080, &[&b1]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    wait_active(&lab, "web", VIP, 80, Protocol::Tcp, &[ep(&b1, 8080)]);
    let client = lab.add_pod("client");
    let _stats = RunStats::enable().expect("BPF_ENABLE_STATS");

    let few = socket_runs(&lab, &client, 2);
    let many = socket_runs(&lab, &client, 200);
    for runs in [&few, &many] {
        assert_eq!(
            runs_of(runs, "ferry_conn4"),
            1,
            "one connect per connection: {runs:?}"
        );
        assert!(
            runs_of(runs, "ferry_peer4") >= 1,
            "the server's accept asks for its peer: {runs:?}"
        );
    }
    let total = |runs: &[ProgCost]| runs.iter().map(|p| p.runs).sum::<u64>();
    assert_eq!(
        total(&many),
        total(&few),
        "the socket programs ran more often for 200 requests than for 2 over one connection: \
         2: {few:?}, 200: {many:?}"
    );
}

/// A socket that connects straight to `HOST` `PORT`, prints its cookie (SO_COOKIE), waits for a
/// line on stdin, then prints its getpeername() as `addr:port`.
const PEER_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little"), flush=True)
sys.stdin.readline()
print("%s:%d" % s.getpeername()[:2], flush=True)
"#;

/// The socket reverse map's entry for `cookie`'s socket and backend `ip`:`port`, naming the
/// service `VIP`:80 (rev-NAT id `id`) as if the socket had dialled it.
fn plant_rev_entry(lab: &Lab, cookie: u64, ip: std::net::Ipv4Addr, port: u16, id: u16) {
    use agent_common::{SockRev4, SockRev4Key, maps as names, net::ip4_to_raw};
    let pin = lab.pin_dir().join(names::SOCK_REV_V4);
    let data = aya::maps::MapData::from_pin(&pin).expect("the pinned socket reverse map");
    let mut map: aya::maps::HashMap<_, SockRev4Key, SockRev4> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let key = SockRev4Key {
        cookie,
        addr: ip4_to_raw(ip.octets()),
        port: port.to_be(),
        _pad: 0,
    };
    let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
    let rev = SockRev4 {
        addr: ip4_to_raw(vip.octets()),
        port: 80u16.to_be(),
        rev_nat_id: id,
    };
    map.insert(&key, &rev, 0).expect("planting a reverse entry");
}

/// The rev-NAT id of `VIP`:80.
fn rev_nat_id(lab: &Lab) -> u16 {
    use agent_common::{RevNat4, maps as names, net::ip4_to_raw};
    let pin = lab.pin_dir().join(names::REV_NAT_V4);
    let data = aya::maps::MapData::from_pin(&pin).expect("the pinned rev-NAT map");
    let map: aya::maps::HashMap<_, u16, RevNat4> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
    map.iter()
        .filter_map(Result::ok)
        .find(|(_, v)| v.addr == ip4_to_raw(vip.octets()) && v.port == 80u16.to_be())
        .map(|(id, _)| id)
        .expect("the service's rev-NAT entry")
}

/// Whether `port`'s bit is set in the socket layer's port bitmap.
fn port_marked(lab: &Lab, port: u16) -> bool {
    use agent_common::maps as names;
    let pin = lab.pin_dir().join(names::SOCK_PORTS);
    let data = aya::maps::MapData::from_pin(&pin).expect("the pinned port bitmap");
    let map: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    let word = map.get(&(u32::from(port) / 64), 0).expect("a bitmap word");
    word & (1 << (port % 64)) != 0
}

/// getpeername() of a socket connected straight to `b1`:`port`, with a reverse entry planted
/// for it (as if it had dialled `VIP`:80) before the call.
fn peer_with_planted_entry(
    lab: &Lab,
    client: &ferry_tests::Pod,
    b1: &ferry_tests::Pod,
    port: u16,
    id: u16,
) -> String {
    let ip = b1.ip.to_string();
    let port_s = port.to_string();
    let p = lab.spawn_interactive(client, "python3", &["-c", PEER_CLIENT, &ip, &port_s]);
    let cookie: u64 = p
        .next_line(std::time::Duration::from_secs(10))
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the client's cookie ({ip}:{port}): {}",
                lab.logs_of("client")
            )
        });
    plant_rev_entry(lab, cookie, b1.ip, port, id);
    p.send_line("go").expect("waking the client");
    p.next_line(std::time::Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the client's peer ({ip}:{port}): {}", lab.logs_of("client")))
}

/// The reverse hooks look a socket up only when its peer's port is one the forward path has
/// sent a socket to (the bitmap `ferry_skport_v1`): a socket whose peer is on another port
/// skips the lookup, proved with an entry planted for it that the lookup would have found,
/// while a socket on a marked port still gets it, and translated ones still show the ClusterIP.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn getpeername_skips_the_lookup_on_ports_no_backend_uses() {
    require_root!();
    let lab = Lab::new("getpeername_skips_the_lookup_on_ports_no_backend_uses");
    let b1 = lab.add_pod("b1");
    // 9090 serves too, but no Service sends there.
    let _echo = lab.start_echo(&b1, &[8080, 9090], &[]);
    let (svc, slice) = simple("web", VIP, 80, 8080, &[&b1]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    wait_active(&lab, "web", VIP, 80, Protocol::Tcp, &[ep(&b1, 8080)]);
    let client = lab.add_pod("client");

    let vip = format!("{VIP}:80");
    let translated = lab.tcp(&client, &vip, 3);
    assert_all_ok(&translated, "through the ClusterIP");
    for a in &translated {
        assert_eq!(
            a.peer.as_deref(),
            Some(vip.as_str()),
            "getpeername: {}",
            a.raw
        );
    }
    assert!(port_marked(&lab, 8080), "the backend port is marked");
    assert!(!port_marked(&lab, 9090), "a port no backend uses is not");

    let id = rev_nat_id(&lab);
    // Control: on the marked port the planted entry is found (the service still exists).
    assert_eq!(
        peer_with_planted_entry(&lab, &client, &b1, 8080, id),
        vip,
        "a socket to a marked port is looked up"
    );
    // On the unmarked port the same entry is never looked at.
    assert_eq!(
        peer_with_planted_entry(&lab, &client, &b1, 9090, id),
        format!("{}:9090", b1.ip),
        "a socket to a port no backend uses skips the reverse lookup"
    );

    // An upgrade from a version without the bitmap: a socket its hooks translated (here, its
    // entry planted on 9090) must keep its ClusterIP once the new hooks skip unmarked ports.
    let ip = b1.ip.to_string();
    let p = lab.spawn_interactive(&client, "python3", &["-c", PEER_CLIENT, &ip, "9090"]);
    let cookie: u64 = p
        .next_line(std::time::Duration::from_secs(10))
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("the client's cookie: {}", lab.logs_of("client")));
    plant_rev_entry(&lab, cookie, b1.ip, 9090, id);
    lab.stop_agent();
    let pin = lab.pin_dir().join(agent_common::maps::SOCK_PORTS);
    std::fs::remove_file(&pin).unwrap_or_else(|e| panic!("removing {}: {e}", pin.display()));
    start_agent(&lab);
    // Only 9090's: the sockets translated to 8080 above are closed, and the release hook
    // deleted their entries.
    assert!(
        port_marked(&lab, 9090),
        "the new bitmap holds the port of the reverse entry it found"
    );
    p.send_line("go").expect("waking the client");
    let peer = p
        .next_line(std::time::Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the client's peer: {}", lab.logs_of("client")));
    assert_eq!(
        peer, vip,
        "a socket translated before the upgrade keeps its ClusterIP"
    );
    assert!(
        lab.agent_log()
            .contains("backend ports of the sockets translated before this version"),
        "the agent says it set them"
    );
}

const VIPS: [&str; 2] = ["10.96.0.20", "fd00:96::14"];
/// Backend addresses the client gets an unreachable route to.
const UNROUTABLE: [&str; 2] = ["203.0.113.7", "2001:db8:9::7"];

/// A socket of family `FAMILY` (4 or 6) and kind `KIND` (tcp, udp: connected; sendto: an
/// unconnected UDP socket that sends one datagram; unroutable: a TCP connect that must fail
/// before the handshake) to `HOST` `PORT`. It prints its cookie (SO_COOKIE), then answers each
/// line on stdin: `peer` with its peer (`addr port`, `-` when it has none), `connect ADDR PORT`
/// (a UDP socket connected again) with `connected`, `close` with `closed` once close()
/// returned.
const CLOSING_CLIENT: &str = r#"
import socket, sys
family, kind, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
af = socket.AF_INET if family == "4" else socket.AF_INET6
s = socket.socket(af, socket.SOCK_DGRAM if kind in ("udp", "sendto") else socket.SOCK_STREAM)
s.settimeout(5)
if kind == "sendto":
    s.sendto(b"x", (host, port))
elif kind == "unroutable":
    try:
        s.connect((host, port))
        sys.exit("connected, but the backend has no route")
    except OSError as e:
        print("connect failed: %s" % e, file=sys.stderr)
else:
    s.connect((host, port))
print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little"), flush=True)
for line in sys.stdin:
    if line.startswith("connect "):
        _, h, p = line.split()
        s.connect((h, int(p)))
        print("connected", flush=True)
    elif line.strip() == "peer":
        try:
            print("%s %d" % s.getpeername()[:2], flush=True)
        except OSError:
            print("-", flush=True)
    else:
        s.close()
        print("closed", flush=True)
"#;

/// One [`CLOSING_CLIENT`], stepped by the test.
struct Closing {
    proc: ferry_tests::proc::Proc,
    cookie: u64,
}

impl Closing {
    fn start(
        lab: &Lab,
        pod: &ferry_tests::Pod,
        family: Family,
        kind: &str,
        vip: &str,
        port: u16,
    ) -> Closing {
        let fam = family.pick(["4", "6"]);
        let port_s = port.to_string();
        let proc = lab.spawn_interactive(
            pod,
            "python3",
            &["-c", CLOSING_CLIENT, fam, kind, vip, &port_s],
        );
        let cookie = proc
            .next_line(std::time::Duration::from_secs(10))
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{family} {kind}: the client's cookie: {}",
                    lab.logs_of(&pod.name)
                )
            });
        Closing { proc, cookie }
    }

    fn step(&self, lab: &Lab, what: &str) -> String {
        self.proc.send_line(what).expect("waking the client");
        self.proc
            .next_line(std::time::Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the client's {what}: {}", lab.logs_of("client")))
    }

    /// getpeername(), as `addr port`.
    fn peer(&self, lab: &Lab) -> String {
        self.step(lab, "peer")
    }

    /// Returns once close() has returned (the release hook runs inside it).
    fn close(&self, lab: &Lab) {
        assert_eq!(self.step(lab, "close"), "closed");
    }
}

/// Where a socket's reverse translation is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// Its slot in the socket slot array (a connected socket's).
    Slot,
    /// The reverse map (an unconnected sendmsg's).
    Map,
}

/// The services (`addr port`) that `family`'s socket slots and reverse map hold for `cookie`'s
/// socket, and where, read from their pins.
fn rev_entries(lab: &Lab, family: Family, cookie: u64) -> Vec<(Kept, String)> {
    use agent_common::{
        SockRev4, SockRev4Key, SockRev6, SockRev6Key, SockSlot4, SockSlot6,
        maps::{self as names, sock_slot},
    };
    use std::net::{Ipv4Addr, Ipv6Addr};
    let open = |name: &str| {
        let data = aya::maps::MapData::from_pin(lab.pin_dir().join(name)).expect("the pinned map");
        aya::maps::Map::from_map_data(data).unwrap()
    };
    let v4 =
        |a: u32, port: u16| format!("{} {}", Ipv4Addr::from(a.to_ne_bytes()), u16::from_be(port));
    let v6 = |a: [u32; 4], port: u16| {
        let mut b = [0u8; 16];
        for (i, w) in a.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        format!("{} {}", Ipv6Addr::from(b), u16::from_be(port))
    };
    let slot = sock_slot(cookie);
    let mut found = Vec::new();
    match family {
        Family::V4 => {
            let slots =
                aya::maps::Array::<_, SockSlot4>::try_from(open(names::SOCK_SLOTS_V4)).unwrap();
            let s = slots.get(&slot, 0).unwrap();
            if s.cookie == cookie {
                found.push((Kept::Slot, v4(s.addr, s.port)));
            }
            let map =
                aya::maps::HashMap::<_, SockRev4Key, SockRev4>::try_from(open(names::SOCK_REV_V4))
                    .unwrap();
            found.extend(
                map.iter()
                    .filter_map(Result::ok)
                    .filter(|(k, _)| k.cookie == cookie)
                    .map(|(_, v)| (Kept::Map, v4(v.addr, v.port))),
            );
        }
        Family::V6 => {
            let slots =
                aya::maps::Array::<_, SockSlot6>::try_from(open(names::SOCK_SLOTS_V6)).unwrap();
            let s = slots.get(&slot, 0).unwrap();
            if s.cookie == cookie {
                found.push((Kept::Slot, v6(s.addr, s.port)));
            }
            let map =
                aya::maps::HashMap::<_, SockRev6Key, SockRev6>::try_from(open(names::SOCK_REV_V6))
                    .unwrap();
            found.extend(
                map.iter()
                    .filter_map(Result::ok)
                    .filter(|(k, _)| k.cookie == cookie)
                    .map(|(_, v)| (Kept::Map, v6(v.addr, v.port))),
            );
        }
    }
    found
}

/// A cookie no socket gets (the kernel's count would need centuries to reach it).
const FOREIGN_COOKIE: u64 = u64::MAX;

/// Sets every slot of `family`'s socket slot array to name the socket `cookie` (0: free).
fn fill_slots(lab: &Lab, family: Family, cookie: u64) {
    use agent_common::{SockSlot4, SockSlot6, maps as names};
    let name = family.pick([names::SOCK_SLOTS_V4, names::SOCK_SLOTS_V6]);
    let data = aya::maps::MapData::from_pin(lab.pin_dir().join(name)).expect("the pinned map");
    let mut map = aya::maps::Map::from_map_data(data).unwrap();
    for i in 0..names::SOCK_SLOTS {
        match family {
            Family::V4 => aya::maps::Array::<_, SockSlot4>::try_from(&mut map)
                .unwrap()
                .set(
                    i,
                    &SockSlot4 {
                        cookie,
                        ..Default::default()
                    },
                    0,
                ),
            Family::V6 => aya::maps::Array::<_, SockSlot6>::try_from(&mut map)
                .unwrap()
                .set(
                    i,
                    &SockSlot6 {
                        cookie,
                        ..Default::default()
                    },
                    0,
                ),
        }
        .unwrap_or_else(|e| panic!("slot {i}: {e}"));
    }
}

over_both_families!(a_closed_socket_leaves_no_reverse_entry);

/// The release hook (`ferry_release`): a translated TCP or connected UDP socket's reverse
/// translation (in its slot) goes when the socket closes, while a live socket's stays and its
/// getpeername() still shows the ClusterIP; an unconnected UDP socket's entry (in the reverse
/// map, its peer unset) is left to the LRU, as documented. A connect whose slot another socket
/// holds uses the reverse map, deleted at close too. An agent upgraded from a version without
/// the hook attaches it.
fn a_closed_socket_leaves_no_reverse_entry(family: Family) {
    require_root!();
    let lab = Lab::new(&format!(
        "a_closed_socket_leaves_no_reverse_entry_{}",
        family.tag()
    ));
    let vip = family.pick(VIPS);
    let b1 = lab.add_pod("b1");
    let _echo = lab.start_echo(&b1, &[8080], &[5353]);
    let svc = Service::dual_stack("web", "PreferDualStack", &VIPS)
        .port_to("http", 80, "TCP", 8080u16)
        .port_to("dns", 53, "UDP", 5353u16)
        .port_to("gone", 81, "TCP", 9u16);
    lab.manifests().apply(&svc);
    for f in Family::BOTH {
        lab.manifests().apply(
            &f.slice("web-1", "web")
                .port("http", 8080, "TCP")
                .port("dns", 5353, "UDP")
                .endpoints([f.ready(&b1)]),
        );
        // An endpoint the client has no route to (an unreachable route below).
        lab.manifests().apply(
            &f.slice("web-gone", "web")
                .port("gone", 9, "TCP")
                .endpoints([Endpoint::ready(f.pick(UNROUTABLE))]),
        );
    }
    start_agent(&lab);
    wait_active(&lab, "tcp", vip, 80, Protocol::Tcp, &[family.ep(&b1, 8080)]);
    wait_active(&lab, "udp", vip, 53, Protocol::Udp, &[family.ep(&b1, 5353)]);
    let unroutable: std::net::IpAddr = family.pick(UNROUTABLE).parse().unwrap();
    let gone_ep = ferry_tests::services::at(unroutable, 9);
    wait_active(&lab, "tcp", vip, 81, Protocol::Tcp, &[gone_ep]);
    assert!(
        lab.pin_dir().join(ferry::paths::RELEASE_PROGRAM.1).exists(),
        "the release hook's link is pinned"
    );
    let client = lab.add_pod("client");
    let http = format!("{vip} 80");
    let dns = format!("{vip} 53");

    for (kind, port, svc) in [("tcp", 80, &http), ("udp", 53, &dns)] {
        let closing = Closing::start(&lab, &client, family, kind, vip, port);
        let live = Closing::start(&lab, &client, family, kind, vip, port);
        for s in [&closing, &live] {
            assert_eq!(
                rev_entries(&lab, family, s.cookie),
                vec![(Kept::Slot, svc.clone())],
                "{family} {kind}: connected"
            );
            assert_eq!(&s.peer(&lab), svc, "{family} {kind}: getpeername");
        }
        closing.close(&lab);
        assert_eq!(
            rev_entries(&lab, family, closing.cookie),
            vec![],
            "{family} {kind}: a closed socket's entry is deleted"
        );
        assert_eq!(
            rev_entries(&lab, family, live.cookie),
            vec![(Kept::Slot, svc.clone())],
            "{family} {kind}: a live socket's entry stays"
        );
        assert_eq!(
            &live.peer(&lab),
            svc,
            "{family} {kind}: a live socket still sees the ClusterIP"
        );
        live.close(&lab);
        assert!(
            rev_entries(&lab, family, live.cookie).is_empty(),
            "{family} {kind}: deleted at close"
        );
    }

    // A UDP socket connected to the Service, then to an address and port no Service or backend
    // has: the second connect leaves the socket's slot, which its close (its peer on a port no
    // backend uses, so the release hook stops at the port bitmap) would not find.
    let again = Closing::start(&lab, &client, family, "udp", vip, 53);
    assert_eq!(
        rev_entries(&lab, family, again.cookie),
        vec![(Kept::Slot, dns.clone())],
        "{family}: connected to the Service"
    );
    let elsewhere = family.pick([b1.ip.to_string(), b1.ip6.to_string()]);
    assert_eq!(
        again.step(&lab, &format!("connect {elsewhere} 9")),
        "connected"
    );
    assert_eq!(
        again.peer(&lab),
        format!("{elsewhere} 9"),
        "{family}: connected elsewhere"
    );
    assert_eq!(
        rev_entries(&lab, family, again.cookie),
        vec![],
        "{family}: connected elsewhere, the socket's slot is freed"
    );
    again.close(&lab);

    // A dual-stack socket to the IPv4-mapped ClusterIP: its entry is an IPv4 one, deleted too.
    if family == Family::V4 {
        let mapped = format!("::ffff:{vip}");
        let s = Closing::start(&lab, &client, Family::V6, "tcp", &mapped, 80);
        assert_eq!(
            rev_entries(&lab, Family::V4, s.cookie),
            vec![(Kept::Slot, http.clone())],
            "v4-mapped"
        );
        assert_eq!(
            s.peer(&lab),
            format!("{mapped} 80"),
            "v4-mapped: getpeername"
        );
        s.close(&lab);
        assert!(
            rev_entries(&lab, Family::V4, s.cookie).is_empty(),
            "v4-mapped: deleted at close"
        );
    }

    // Unconnected UDP: the socket's peer is unset, so its entry (one per Service it sent to)
    // stays until the LRU takes it.
    let unconnected = Closing::start(&lab, &client, family, "sendto", vip, 53);
    assert_eq!(
        rev_entries(&lab, family, unconnected.cookie),
        vec![(Kept::Map, dns.clone())],
        "{family}: sendto"
    );
    assert_eq!(unconnected.peer(&lab), "-");
    unconnected.close(&lab);
    assert_eq!(
        rev_entries(&lab, family, unconnected.cookie),
        vec![(Kept::Map, dns.clone())],
        "{family}: an unconnected UDP socket's entry is left to the LRU"
    );

    // Every slot held by another socket (a cookie no socket has): a connect falls back to the
    // reverse map, getpeername still finds it there, and the release hook deletes it.
    fill_slots(&lab, family, FOREIGN_COOKIE);
    for (kind, port, svc) in [("tcp", 80, &http), ("udp", 53, &dns)] {
        let s = Closing::start(&lab, &client, family, kind, vip, port);
        assert_eq!(
            rev_entries(&lab, family, s.cookie),
            vec![(Kept::Map, svc.clone())],
            "{family} {kind}: its slot taken, the reverse map"
        );
        assert_eq!(
            &s.peer(&lab),
            svc,
            "{family} {kind}: getpeername from the map"
        );
        s.close(&lab);
        assert_eq!(
            rev_entries(&lab, family, s.cookie),
            vec![],
            "{family} {kind}: the map entry deleted at close"
        );
    }
    fill_slots(&lab, family, 0);

    // A connect that fails before the handshake (no route to the backend): the hook took the
    // slot, the kernel left the socket without a peer; the release hook frees the slot by the
    // socket's cookie alone.
    let prefix = family.pick(["203.0.113.0/24", "2001:db8:9::/64"]);
    let out = lab.output(&client, "ip", &["route", "add", "unreachable", prefix]);
    assert!(
        out.status.success(),
        "ip route add unreachable {prefix}: {out:?}"
    );
    let failed = Closing::start(&lab, &client, family, "unroutable", vip, 81);
    assert_eq!(
        rev_entries(&lab, family, failed.cookie),
        vec![(Kept::Slot, format!("{vip} 81"))],
        "{family}: a failed connect's slot"
    );
    assert_eq!(
        failed.peer(&lab),
        "-",
        "{family}: no peer after the failed connect"
    );
    failed.close(&lab);
    assert_eq!(
        rev_entries(&lab, family, failed.cookie),
        vec![],
        "{family}: a peerless socket's slot is freed at close"
    );

    // An upgrade from a version without the hook: no pin, so the new agent attaches it.
    lab.stop_agent();
    let pin = lab.pin_dir().join(ferry::paths::RELEASE_PROGRAM.1);
    std::fs::remove_file(&pin).unwrap_or_else(|e| panic!("removing {}: {e}", pin.display()));
    let before = Closing::start(&lab, &client, family, "tcp", vip, 80);
    start_agent(&lab);
    assert!(
        pin.exists(),
        "the upgraded agent pinned the release hook's link"
    );
    assert_eq!(
        rev_entries(&lab, family, before.cookie),
        vec![(Kept::Slot, http.clone())]
    );
    before.close(&lab);
    assert!(
        rev_entries(&lab, family, before.cookie).is_empty(),
        "{family}: a socket translated before the upgrade loses its entry when it closes"
    );
}
