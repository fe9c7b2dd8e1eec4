//! What ferry's socket layer costs a kept-alive connection to a ClusterIP (issue 14): its
//! programs run when the connection is made (connect4 in the client, getpeername4 when the
//! server accepts), never per request, so a kept-alive request's latency owes nothing to
//! them whatever the number of Services. Counted with BPF_ENABLE_STATS (fd-scoped: the
//! machine-wide sysctl is never touched), for the lab's own programs only.

mod common;

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    Lab,
    bench::bpfstats::{self, ProgCost, RunStats},
    require_root,
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
    assert!(
        port_marked(&lab, 9090) && port_marked(&lab, 8080),
        "the new bitmap holds the ports of the reverse entries it found"
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
