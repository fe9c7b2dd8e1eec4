//! ferry's north-south TC programs (`ferry_tc_in`, `ferry_tc_out`, `ferry_tc_pod`) on IPv6
//! frames, with BPF_PROG_TEST_RUN: the translated packets are compared byte for byte with frames
//! built independently (every checksum computed from scratch over the IPv6 pseudo-header), along
//! with the verdict, the conntrack entries (`ferry_ct6_v1`) and the counters. The IPv4 rows are
//! in tc_prog_test_run.rs; these follow them.
//!
//! Each test loads the whole object into the real kernel with its maps pinned in a private
//! bpffs, fills the IPv6 maps as the agent would, and runs the programs without attaching them
//! anywhere, in a network namespace of its own. The skb of a test run sits on that namespace's
//! loopback device: ifindex 1 is "the device" the node address maps are keyed by.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddrV6},
    process::Command,
};

use agent_common::{
    AffinityKey, AffinityValue, Backend6, Ct6Key, Ct6Value, Ip6, Member6Key, NodeConfig, RevNat6,
    SrcRange6, Svc6Key, SvcValue, affinity_client, affinity_id_v6, backend_flags, ct_dir, ct_flags,
    flow_hash_v6, maps as m,
    net::{ip6_to_raw, port_to_raw},
    node_flags, scope,
    stats::Counter,
    svc_flags,
};
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use ferry_tests::{
    progtest::{
        self, BPF_F_TEST_SKB_CHECKSUM_COMPLETE, ETH_HLEN, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, IPV6_HLEN, Ip6Opts, NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP,
        NEXTHDR_ROUTING, ProgTest, TCP_ACK, TCP_FIN, TCP_SYN, assert_checksums_v6, ethernet,
        fragment_header, icmp6, ipv6, options_header, parse_ipv6, routing_header, tcp6, udp6,
    },
    require_root,
};

const TC_IN: &str = "ferry_tc_in";
const TC_OUT: &str = "ferry_tc_out";
const TC_POD: &str = "ferry_tc_pod";

/// Verdicts.
const PASS: i32 = -1; // TC_ACT_UNSPEC / TCX_NEXT: not ferry's packet
const OK: i32 = 0;
const SHOT: i32 = 2;
const REDIRECT: i32 = 7;

/// The device of a test run (the namespace's loopback) and this node's address on it.
const IFINDEX: u32 = 1;
const NODE: Ipv6Addr = addr(0xfd00, 0x18, 0, 2);

const CLIENT: Ipv6Addr = addr(0x2001, 0xdb8, 0x100, 7);
const CLIENT2: Ipv6Addr = addr(0x2001, 0xdb8, 0x100, 8);
const OUTSIDER: Ipv6Addr = addr(0x2001, 0xdb8, 0x200, 0x99);
const LB_VIP: Ipv6Addr = addr(0x2001, 0xdb8, 0x10, 0x10);
const EXTERNAL_IP: Ipv6Addr = addr(0x2001, 0xdb8, 0x50, 0x50);
const CLUSTER_IP: Ipv6Addr = addr(0xfd00, 0x96, 0, 0x10);
const LOCAL_POD: Ipv6Addr = addr(0xfd00, 0x244, 0, 5);
const LOCAL_ROUTER: Ipv6Addr = addr(0xfd00, 0x244, 0, 1);
const REMOTE_POD: Ipv6Addr = addr(0xfd00, 0x244, 1, 9);
const ROUTER: Ipv6Addr = addr(0xfd00, 0x64, 0, 0xfe);

/// The upstream router's MAC (source of what arrives) and the node's.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

const REV_LB: u16 = 7;
const REV_NODEPORT: u16 = 8;

/// `a:b:c::d`.
const fn addr(a: u16, b: u16, c: u16, d: u16) -> Ipv6Addr {
    Ipv6Addr::new(a, b, c, 0, 0, 0, 0, d)
}

fn sa(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

fn raw(ip: Ipv6Addr) -> Ip6 {
    ip6_to_raw(ip.octets())
}

/// A frame arriving from outside (router -> node).
fn inbound(ip_packet: Vec<u8>) -> Vec<u8> {
    ethernet(NODE_MAC, PEER_MAC, ETH_P_IPV6, &ip_packet)
}

/// A frame leaving the node (node -> router).
fn outbound(ip_packet: Vec<u8>) -> Vec<u8> {
    ethernet(PEER_MAC, NODE_MAC, ETH_P_IPV6, &ip_packet)
}

fn tcp_segment(src: SocketAddrV6, dst: SocketAddrV6, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ack = if flags & TCP_ACK != 0 { 2000 } else { 0 };
    tcp6(src, dst, 1000, ack, flags, payload)
}

fn tcp_packet(src: SocketAddrV6, dst: SocketAddrV6, flags: u8, payload: &[u8]) -> Vec<u8> {
    ipv6(
        Ip6Opts::default(),
        *src.ip(),
        *dst.ip(),
        IPPROTO_TCP,
        &tcp_segment(src, dst, flags, payload),
    )
}

fn udp_packet(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    ipv6(
        Ip6Opts::default(),
        *src.ip(),
        *dst.ip(),
        IPPROTO_UDP,
        &udp6(src, dst, payload, true),
    )
}

/// An ICMPv6 error packet from `from` to `to` (type, code, rest) quoting `quote`, with the
/// header fields Linux gives its errors.
fn icmp_error(from: Ipv6Addr, to: Ipv6Addr, ty: u8, code: u8, rest: u32, quote: &[u8]) -> Vec<u8> {
    ipv6(
        icmp_opts(),
        from,
        to,
        IPPROTO_ICMPV6,
        &icmp6(from, to, ty, code, rest, quote),
    )
}

/// The IPv6 header fields of ICMPv6 errors (ferry's reject too): traffic class and flow label
/// 0, hop limit 64.
fn icmp_opts() -> Ip6Opts {
    Ip6Opts {
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 64,
    }
}

/// ICMPv6 types and codes.
const DEST_UNREACH: u8 = 1;
const PORT_UNREACH: u8 = 4;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAM_PROBLEM: u8 = 4;

/// One test's programs and maps.
struct Fixture {
    t: ProgTest,
}

impl Fixture {
    fn new() -> Fixture {
        let t = ProgTest::load(
            ferry::datapath::loader::ebpf_object(),
            &[TC_IN, TC_OUT, TC_POD],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut f = Fixture { t };
        f.node_addr(IFINDEX, NODE);
        f
    }

    fn map(&mut self, name: &str) -> &mut aya::maps::Map {
        self.t
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.map(name)).unwrap()
    }

    fn node_addr(&mut self, ifindex: u32, addr: Ipv6Addr) {
        self.hash::<u32, Ip6>(m::NODE_ADDR_V6)
            .insert(&ifindex, &raw(addr), 0)
            .unwrap();
    }

    fn node_config(&mut self, cfg: NodeConfig) {
        let mut a: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.map(m::NODE_CONFIG)).unwrap();
        a.set(0, &cfg, 0).unwrap();
    }

    fn backend(&mut self, id: u32, addr: SocketAddrV6, proto: u8, local: bool) {
        let b = Backend6 {
            addr: raw(*addr.ip()),
            port: port_to_raw(addr.port()),
            proto,
            state: 0,
            flags: if local { backend_flags::LOCAL } else { 0 },
            _pad: [0; 3],
        };
        self.hash::<u32, Backend6>(m::BACKENDS_V6)
            .insert(&id, &b, 0)
            .unwrap();
    }

    /// A frontend (slot 0) of `scope` with the given backend ids in slots 1..=n, and its
    /// reverse-NAT entry.
    fn frontend(
        &mut self,
        addr: SocketAddrV6,
        proto: u8,
        scope: u8,
        flags: u16,
        rev_nat_id: u16,
        backends: &[u32],
    ) {
        let key = |slot: u16| Svc6Key {
            addr: raw(*addr.ip()),
            port: port_to_raw(addr.port()),
            slot,
            proto,
            scope,
            _pad: [0; 2],
        };
        let mut svc = self.hash::<Svc6Key, SvcValue>(m::SERVICES_V6);
        svc.insert(
            &key(0),
            &SvcValue {
                backend_id: 0,
                count: backends.len() as u16,
                rev_nat_id,
                flags,
                _pad: 0,
                affinity_timeout: 10_800,
            },
            0,
        )
        .unwrap();
        for (i, &id) in backends.iter().enumerate() {
            svc.insert(
                &key(i as u16 + 1),
                &SvcValue {
                    backend_id: id,
                    ..SvcValue::default()
                },
                0,
            )
            .unwrap();
        }
        self.hash::<u16, RevNat6>(m::REV_NAT_V6)
            .insert(
                &rev_nat_id,
                &RevNat6 {
                    addr: raw(*addr.ip()),
                    port: port_to_raw(addr.port()),
                    _pad: 0,
                },
                0,
            )
            .unwrap();
    }

    fn allow_source(&mut self, rev_nat_id: u16, net: Ipv6Addr, len: u32) {
        let mut lpm: LpmTrie<&mut MapData, SrcRange6, u8> =
            LpmTrie::try_from(self.map(m::SRC_RANGE_V6)).unwrap();
        let data = SrcRange6 {
            rev_nat_id,
            _pad: 0,
            addr: raw(net),
        };
        lpm.insert(
            &Key::new(agent_common::SRC_RANGE_PREFIX_BITS + len, data),
            &1,
            0,
        )
        .unwrap();
    }

    /// An IPv6 address of a cluster node (a Node object's), as the agent records it.
    fn cluster_node(&mut self, addr: Ipv6Addr) {
        self.hash::<Ip6, u8>(m::NODES_V6)
            .insert(&raw(addr), &1, 0)
            .unwrap();
    }

    fn ct(&mut self) -> BTreeMap<Ct6Key, Ct6Value> {
        self.hash::<Ct6Key, Ct6Value>(m::CT_V6)
            .iter()
            .map(|r| r.unwrap())
            .collect()
    }

    fn ct4_len(&mut self) -> usize {
        self.hash::<agent_common::Ct4Key, agent_common::Ct4Value>(m::CT_V4)
            .keys()
            .count()
    }

    fn affinity(&mut self) -> BTreeMap<(u64, u16, u8), AffinityValue> {
        self.hash::<AffinityKey, AffinityValue>(m::AFFINITY)
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| ((k.client, k.rev_nat_id, k.kind), v))
            .collect()
    }

    fn counter(&mut self, c: Counter) -> u64 {
        let stats: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map(m::STATS)).unwrap();
        stats.get(&(c as u32), 0).unwrap().iter().sum()
    }

    fn run(&self, prog: &str, frame: &[u8]) -> progtest::TestRun {
        self.t.run(prog, frame)
    }

    /// A run with a CHECKSUM_COMPLETE skb: the kernel fails it if the program leaves
    /// `skb->csum` inconsistent with the bytes it wrote.
    fn run_complete(&self, prog: &str, frame: &[u8]) -> progtest::TestRun {
        self.t
            .run_flags(prog, frame, BPF_F_TEST_SKB_CHECKSUM_COMPLETE)
            .unwrap_or_else(|e| panic!("{prog} with CHECKSUM_COMPLETE: {e:#}"))
    }
}

fn ct_key(src: SocketAddrV6, dst: SocketAddrV6, proto: u8, dir: u8) -> Ct6Key {
    Ct6Key {
        saddr: raw(*src.ip()),
        daddr: raw(*dst.ip()),
        sport: port_to_raw(src.port()),
        dport: port_to_raw(dst.port()),
        proto,
        dir,
        _pad: [0; 2],
    }
}

/// A conntrack value (without its time, which [`assert_ct`] checks separately).
fn ct_val(
    new_src: SocketAddrV6,
    new_dst: SocketAddrV6,
    backend_id: u32,
    rev_nat_id: u16,
    flags: u8,
    tcp_flags: u8,
) -> Ct6Value {
    Ct6Value {
        nat_saddr: raw(*new_src.ip()),
        nat_daddr: raw(*new_dst.ip()),
        nat_sport: port_to_raw(new_src.port()),
        nat_dport: port_to_raw(new_dst.port()),
        backend_id,
        rev_nat_id,
        flags,
        tcp_flags,
        last_seen: 0,
    }
}

fn monotonic_seconds() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// The IPv6 conntrack map holds exactly `want` (values compared without `last_seen`, which
/// must be "now" on CLOCK_MONOTONIC); the IPv4 one holds nothing.
fn assert_ct(f: &mut Fixture, want: &[(Ct6Key, Ct6Value)]) {
    let now = monotonic_seconds();
    let got: BTreeMap<Ct6Key, Ct6Value> = f
        .ct()
        .into_iter()
        .map(|(k, mut v)| {
            assert!(
                v.last_seen <= now && now - v.last_seen <= 2,
                "last_seen {} vs now {now}",
                v.last_seen
            );
            v.last_seen = 0;
            (k, v)
        })
        .collect();
    let want: BTreeMap<Ct6Key, Ct6Value> = want.iter().copied().collect();
    assert_eq!(got, want, "conntrack entries");
    assert_eq!(f.ct4_len(), 0, "no IPv4 conntrack entry");
}

/// The run's frame equals `want` byte for byte (and its checksums verify from scratch).
fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    assert_checksums_v6(want);
    assert_checksums_v6(got);
    if got != want {
        panic!(
            "{what}: frames differ\n got  {:02x?}\n want {:02x?}\n got  {:?}\n want {:?}",
            got,
            want,
            parse_ipv6(got),
            parse_ipv6(want)
        );
    }
}

/// The SNAT port a translated frame's source carries (checked against the default range).
fn snat_port(frame: &[u8]) -> u16 {
    let port = parse_ipv6(frame).sport;
    assert!(
        (61_000..=65_535).contains(&port),
        "SNAT port {port} outside the default range"
    );
    port
}

/// Runs a test body in a namespace of its own (see the file comment).
fn lab(body: fn()) {
    progtest::isolated(body);
}

/// Runs `ip` commands in the test's namespace.
fn ip_cmds(cmds: &[&[&str]]) {
    for args in cmds {
        let st = Command::new("ip").args(*args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn tcp_to_a_node_port_is_dnatted_and_snatted_and_the_reply_comes_back() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let np = sa(NODE, 30080);
        let pod = sa(REMOTE_POD, 8080);
        let client = sa(CLIENT, 40000);
        f.backend(4, pod, IPPROTO_TCP, false);
        f.frontend(
            np,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );

        let r = f.run(TC_IN, &inbound(tcp_packet(client, np, TCP_SYN, b"")));
        // No route in the test's namespace: handed to the stack after translation.
        assert_eq!(r.verdict(), OK);
        assert_eq!(f.counter(Counter::NsFibPassed), 1);
        let snat = sa(NODE, snat_port(&r.data));
        assert_frame(
            &r.data,
            &inbound(tcp_packet(snat, pod, TCP_SYN, b"")),
            "SYN after DNAT+SNAT",
        );
        assert_ct(
            &mut f,
            &[
                (
                    ct_key(client, np, IPPROTO_TCP, ct_dir::FORWARD),
                    ct_val(snat, pod, 4, REV_NODEPORT, ct_flags::SNAT, TCP_SYN),
                ),
                (
                    ct_key(pod, snat, IPPROTO_TCP, ct_dir::REPLY),
                    ct_val(np, client, 4, REV_NODEPORT, ct_flags::SNAT, TCP_SYN),
                ),
            ],
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);

        // The remote backend's SYN-ACK arrives at the SNAT port: back to the client, from the
        // NodePort.
        let synack = inbound(tcp_packet(pod, snat, TCP_SYN | TCP_ACK, b""));
        let r = f.run(TC_IN, &synack);
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(np, client, TCP_SYN | TCP_ACK, b"")),
            "SYN-ACK after reverse NAT",
        );

        // The client's next segment hits conntrack: the same translation, no new flow.
        let data = b"GET / HTTP/1.1\r\n\r\n";
        let r = f.run(TC_IN, &inbound(tcp_packet(client, np, TCP_ACK, data)));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(snat, pod, TCP_ACK, data)),
            "ACK after DNAT+SNAT",
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);
        assert_eq!(f.counter(Counter::NsTracked), 2);
        assert_eq!(f.ct().len(), 2);

        // A client port inside the SNAT range is kept when free.
        let client2 = sa(CLIENT2, 62000);
        let r = f.run(TC_IN, &inbound(tcp_packet(client2, np, TCP_SYN, b"")));
        assert_frame(
            &r.data,
            &inbound(tcp_packet(sa(NODE, 62000), pod, TCP_SYN, b"")),
            "in-range client port kept",
        );
        assert_eq!(f.ct().len(), 4);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn udp_to_a_node_port_is_snatted_and_the_answer_comes_back() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let np = sa(NODE, 30053);
        let pod = sa(REMOTE_POD, 53);
        let client = sa(CLIENT, 5353);
        f.backend(4, pod, IPPROTO_UDP, false);
        f.frontend(
            np,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );

        let query = inbound(udp_packet(client, np, b"query"));
        let r = f.run(TC_IN, &query);
        assert_eq!(r.verdict(), OK);
        let snat = sa(NODE, snat_port(&r.data));
        assert_frame(
            &r.data,
            &inbound(udp_packet(snat, pod, b"query")),
            "query after DNAT+SNAT",
        );
        assert_ct(
            &mut f,
            &[
                (
                    ct_key(client, np, IPPROTO_UDP, ct_dir::FORWARD),
                    ct_val(snat, pod, 4, REV_NODEPORT, ct_flags::SNAT, 0),
                ),
                (
                    ct_key(pod, snat, IPPROTO_UDP, ct_dir::REPLY),
                    ct_val(np, client, 4, REV_NODEPORT, ct_flags::SNAT, 0),
                ),
            ],
        );

        let r = f.run(TC_IN, &inbound(udp_packet(pod, snat, b"answer")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(udp_packet(np, client, b"answer")),
            "answer after reverse NAT",
        );

        // The same flow again: the same port, no new flow.
        let r = f.run(TC_IN, &query);
        assert_frame(
            &r.data,
            &inbound(udp_packet(snat, pod, b"query")),
            "second query",
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);
        assert_eq!(f.counter(Counter::NsTracked), 2);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn etp_local_keeps_the_client_address_and_the_reply_leaves_from_the_frontend() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pod = sa(LOCAL_POD, 8080);
        let client = sa(CLIENT, 40000);
        f.backend(1, pod, IPPROTO_TCP, true);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );

        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_SYN, b"")),
            "SYN after DNAT",
        );
        assert_ct(
            &mut f,
            &[
                (
                    ct_key(client, vip, IPPROTO_TCP, ct_dir::FORWARD),
                    ct_val(client, pod, 1, REV_LB, ct_flags::LOCAL, TCP_SYN),
                ),
                (
                    ct_key(pod, client, IPPROTO_TCP, ct_dir::REPLY),
                    ct_val(vip, client, 1, REV_LB, ct_flags::LOCAL, TCP_SYN),
                ),
            ],
        );

        // The backend's SYN-ACK leaves through the device: its source becomes the VIP again.
        let r = f.run(
            TC_OUT,
            &outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b"")),
        );
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &outbound(tcp_packet(vip, client, TCP_SYN | TCP_ACK, b"")),
            "SYN-ACK after reverse NAT",
        );
        assert_eq!(f.counter(Counter::NsTracked), 1);

        // Packets that are not the flow's pass untouched on egress.
        let other = outbound(tcp_packet(sa(LOCAL_POD, 8081), client, TCP_ACK, b""));
        let r = f.run(TC_OUT, &other);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, other);

        // The flow ends; later the same client port opens a connection straight to the pod:
        // not rewritten, and the finished flow is forgotten.
        f.run(
            TC_IN,
            &inbound(tcp_packet(client, vip, TCP_FIN | TCP_ACK, b"")),
        );
        let direct = inbound(tcp_packet(client, pod, TCP_SYN, b""));
        let r = f.run(TC_IN, &direct);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, direct);
        assert!(
            f.ct().is_empty(),
            "the finished flow's entries are forgotten"
        );
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_local_backend_is_masqueraded_and_answers_through_the_pod_program() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 53);
        let pod = sa(LOCAL_POD, 1053);
        let client = sa(CLIENT, 5353);
        f.backend(1, pod, IPPROTO_UDP, true);
        // externalTrafficPolicy Cluster: kube-proxy masquerades even to a local endpoint.
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[1],
        );

        let query = udp_packet(client, vip, b"query");
        let r = f.run(TC_IN, &inbound(query.clone()));
        assert_eq!(r.verdict(), OK);
        let snat = sa(NODE, snat_port(&r.data));
        assert_frame(
            &r.data,
            &inbound(udp_packet(snat, pod, b"query")),
            "query after DNAT and masquerade",
        );
        let masq = ct_flags::SNAT | ct_flags::LOCAL;
        assert_ct(
            &mut f,
            &[
                (
                    ct_key(client, vip, IPPROTO_UDP, ct_dir::FORWARD),
                    ct_val(snat, pod, 1, REV_LB, masq, 0),
                ),
                (
                    ct_key(pod, snat, IPPROTO_UDP, ct_dir::REPLY),
                    ct_val(vip, client, 1, REV_LB, masq, 0),
                ),
            ],
        );

        // The pod answers the node address: its device's program sends it to the client, from
        // the VIP.
        let r = f.run(TC_POD, &inbound(udp_packet(pod, snat, b"answer")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(udp_packet(vip, client, b"answer")),
            "answer after reverse NAT on the pod device",
        );
        assert_eq!(f.counter(Counter::NsTracked), 1);

        // Its port unreachable about the query reaches the client quoting what it sent.
        let delivered = udp_packet(snat, pod, b"query");
        let err = icmp_error(LOCAL_POD, NODE, DEST_UNREACH, PORT_UNREACH, 0, &delivered);
        let r = f.run(TC_POD, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = icmp_error(LB_VIP, CLIENT, DEST_UNREACH, PORT_UNREACH, 0, &query);
        assert_frame(&r.data, &inbound(want), "the pod's error, translated");
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 1);

        // What a pod sends anywhere else passes untouched on the pod device: to the client's
        // port (no flow of ours owns it), to a port of the node that is no flow's.
        for stray in [
            udp_packet(pod, client, b"direct"),
            udp_packet(sa(LOCAL_POD, 9), snat, b"not the flow's port"),
        ] {
            let frame = inbound(stray);
            let r = f.run(TC_POD, &frame);
            assert_eq!(r.verdict(), PASS);
            assert_eq!(r.data, frame);
        }
        assert_eq!(f.counter(Counter::NsTracked), 1);
    });
}

// Direct server return over IPv6 (`--lb-mode dsr`): node A DNATs, keeps the client's address and
// carries the frontend in a destination options header (Cilium's `dsr_opt_v6`); node B records
// the reply translation from it and removes it.

/// Node B's address on its device (the skb's loopback in these tests).
const NODE_B: Ipv6Addr = addr(0xfd00, 0x18, 0, 3);

fn dsr_mode(f: &mut Fixture) {
    f.node_config(NodeConfig {
        flags: node_flags::DSR,
        ..NodeConfig::default()
    });
}

impl Fixture {
    /// Backend `id` is a member of the exposed frontend `rev_nat_id` (`ferry_memb6_v1`).
    fn member(&mut self, rev_nat_id: u16, id: u32) {
        let b = self
            .hash::<u32, Backend6>(m::BACKENDS_V6)
            .get(&id, 0)
            .unwrap();
        let k = Member6Key {
            rev_nat_id,
            proto: b.proto,
            _pad: 0,
            addr: b.addr,
            port: b.port,
            _pad2: 0,
        };
        self.hash::<Member6Key, u32>(m::MEMBERS_V6)
            .insert(&k, &id, 0)
            .unwrap();
    }
}

/// The destination options header naming `frontend`, byte for byte as Cilium's
/// `struct dsr_opt_v6` (bpf/lib/nodeport.h): next header, Hdr Ext Len 2 (24 bytes), option type
/// 0x1B, option length 20, the 16-byte address, the port, two zero bytes.
fn dsr_header(next: u8, frontend: SocketAddrV6) -> Vec<u8> {
    let mut h = vec![next, 2, 0x1b, 20];
    h.extend_from_slice(&frontend.ip().octets());
    h.extend_from_slice(&frontend.port().to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    assert_eq!(h.len(), 24);
    // The same bytes as the generic builder's (no padding needed: 24 is a multiple of 8).
    assert_eq!(h, options_header(next, &h[2..]));
    h
}

/// The IPv6 packet `src` -> `dst` with the DSR header naming `frontend`, then `l4` (checksummed
/// for `src`/`dst`: extension headers are not in the pseudo-header).
fn dsr_packet(
    opts: Ip6Opts,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    frontend: SocketAddrV6,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut p = dsr_header(proto, frontend);
    p.extend_from_slice(l4);
    ipv6(opts, *src.ip(), *dst.ip(), NEXTHDR_DEST, &p)
}

/// Node B's pods: a device `p0` with fd00:244:1::1/64, so REMOTE_POD is reached through another
/// device than the packets' (a pod of this node); forwarding on.
fn pods_behind_p0() {
    ip_cmds(&[
        &["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
        &["link", "set", "p1", "up"],
        &["link", "set", "p0", "up"],
        &[
            "-6",
            "addr",
            "add",
            "fd00:244:1::1/64",
            "dev",
            "p0",
            "nodad",
        ],
    ]);
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_tcp_to_a_remote_backend_keeps_the_client_and_carries_the_frontend_in_a_destination_option() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        dsr_mode(&mut f);
        let vip = sa(LB_VIP, 80);
        let pod = sa(REMOTE_POD, 8080);
        let client = sa(CLIENT, 40000);
        f.backend(4, pod, IPPROTO_TCP, false);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4],
        );

        let syn = inbound(tcp_packet(client, vip, TCP_SYN, b""));
        let r = f.run(TC_IN, &syn);
        // No route in the test's namespace: handed to the stack, which forwards it.
        assert_eq!(r.verdict(), OK);
        assert_eq!(f.counter(Counter::NsFibPassed), 1);
        let want = inbound(dsr_packet(
            Ip6Opts::default(),
            client,
            pod,
            vip,
            IPPROTO_TCP,
            &tcp_segment(client, pod, TCP_SYN, b""),
        ));
        assert_frame(&r.data, &want, "SYN with the DSR header");
        // Spelled out: next header 60, payload length 24 + 20, the header right after the
        // fixed one.
        let ip = &r.data[ETH_HLEN..];
        assert_eq!(ip[6], NEXTHDR_DEST);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 44);
        let mut h = vec![IPPROTO_TCP, 2, 0x1b, 20];
        h.extend_from_slice(&LB_VIP.octets());
        h.extend_from_slice(&[0, 80, 0, 0]);
        assert_eq!(&ip[40..64], &h[..]);
        // The TCP checksum, from scratch over the client -> backend pseudo-header.
        let seg = &ip[64..];
        let ps = progtest::pseudo_sum_v6(CLIENT, REMOTE_POD, IPPROTO_TCP, seg.len());
        assert_eq!(progtest::fold(progtest::sum(ps, seg)), 0xffff);
        assert_ct(
            &mut f,
            &[(
                ct_key(client, vip, IPPROTO_TCP, ct_dir::FORWARD),
                ct_val(client, pod, 4, REV_LB, ct_flags::DSR, TCP_SYN),
            )],
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);

        // Later segments: DNAT only, no header.
        let ack = inbound(tcp_packet(client, vip, TCP_ACK, b"GET /"));
        let r = f.run(TC_IN, &ack);
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_ACK, b"GET /")),
            "ACK without the header",
        );
        // A retransmitted SYN carries it again.
        let r = f.run(TC_IN, &syn);
        assert_frame(&r.data, &want, "retransmitted SYN");

        // CHECKSUM_COMPLETE: the kernel fails the run if skb->csum no longer matches.
        let client2 = sa(CLIENT, 40001);
        let r = f.run_complete(TC_IN, &inbound(tcp_packet(client2, vip, TCP_SYN, b"")));
        assert_frame(
            &r.data,
            &inbound(dsr_packet(
                Ip6Opts::default(),
                client2,
                pod,
                vip,
                IPPROTO_TCP,
                &tcp_segment(client2, pod, TCP_SYN, b""),
            )),
            "SYN with the header, CHECKSUM_COMPLETE",
        );

        // UDP: every datagram carries it.
        let uvip = sa(LB_VIP, 53);
        let upod = sa(REMOTE_POD, 5353);
        f.backend(5, upod, IPPROTO_UDP, false);
        f.frontend(
            uvip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB + 2,
            &[5],
        );
        for _ in 0..2 {
            let r = f.run(TC_IN, &inbound(udp_packet(client, uvip, b"query")));
            assert_eq!(r.verdict(), OK);
            assert_frame(
                &r.data,
                &inbound(dsr_packet(
                    Ip6Opts::default(),
                    client,
                    upod,
                    uvip,
                    IPPROTO_UDP,
                    &udp6(client, upod, b"query", true),
                )),
                "UDP datagram with the header",
            );
        }

        // A local backend: the client's address kept (DSR mode), DNAT, both entries, no header.
        let vip2 = sa(LB_VIP, 81);
        let local = sa(LOCAL_POD, 8080);
        f.backend(1, local, IPPROTO_TCP, true);
        f.frontend(
            vip2,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB + 1,
            &[1],
        );
        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip2, TCP_SYN, b"")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, local, TCP_SYN, b"")),
            "local backend, DSR mode",
        );
        assert_eq!(f.counter(Counter::NsDsrFallback), 0);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_header_for_a_local_backend_is_stripped_and_the_reply_leaves_from_the_frontend() {
    require_root!();
    lab(|| {
        let vip = sa(LB_VIP, 80);
        let pod = sa(REMOTE_POD, 8080);
        let client = sa(CLIENT, 40000);

        // Node A makes the packet.
        let mut a = Fixture::new();
        dsr_mode(&mut a);
        a.backend(4, pod, IPPROTO_TCP, false);
        a.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4],
        );
        let from_a = a
            .run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")))
            .data;
        drop(a);

        // Node B: the same services (its own agent's: the pod is local here).
        pods_behind_p0();
        let mut b = Fixture::new();
        dsr_mode(&mut b);
        b.node_addr(IFINDEX, NODE_B);
        b.backend(4, pod, IPPROTO_TCP, true);
        b.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4],
        );
        b.member(REV_LB, 4);
        let r = b.run(TC_IN, &from_a);
        assert_eq!(r.verdict(), OK);
        // Exactly the DNATed SYN without the header (next header, payload length, checksum).
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_SYN, b"")),
            "SYN after the header was removed",
        );
        assert_ct(
            &mut b,
            &[(
                ct_key(pod, client, IPPROTO_TCP, ct_dir::REPLY),
                ct_val(
                    vip,
                    client,
                    0,
                    REV_LB,
                    ct_flags::DSR | ct_flags::LOCAL,
                    TCP_SYN,
                ),
            )],
        );
        assert_eq!(b.counter(Counter::NsDsrReceived), 1);
        assert_eq!(b.counter(Counter::NsNewFlow), 0);

        // The pod's SYN-ACK leaves B from the frontend, straight to the client.
        let r = b.run(
            TC_OUT,
            &outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b"")),
        );
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &outbound(tcp_packet(vip, client, TCP_SYN | TCP_ACK, b"")),
            "SYN-ACK from the frontend",
        );

        // The client's next segments (no header) reach the pod through B untouched.
        let ack = inbound(tcp_packet(client, pod, TCP_ACK, b"data"));
        let r = b.run(TC_IN, &ack);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, ack);
        assert_eq!(b.ct().len(), 1);

        // CHECKSUM_COMPLETE through the strip.
        let client2 = sa(CLIENT, 40002);
        let r = b.run_complete(
            TC_IN,
            &inbound(dsr_packet(
                Ip6Opts::default(),
                client2,
                pod,
                vip,
                IPPROTO_TCP,
                &tcp_segment(client2, pod, TCP_SYN, b""),
            )),
        );
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client2, pod, TCP_SYN, b"")),
            "strip, CHECKSUM_COMPLETE",
        );
        assert_eq!(b.counter(Counter::NsDsrReceived), 2);

        // UDP through a NodePort of node A (a cluster node's address): the datagram stripped,
        // the answer from A's NodePort.
        let upod = sa(REMOTE_POD, 5353);
        b.backend(6, upod, IPPROTO_UDP, true);
        let np_b = sa(NODE_B, 30053);
        b.frontend(
            np_b,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[6],
        );
        b.member(REV_NODEPORT, 6);
        b.cluster_node(NODE);
        let np_a = sa(NODE, 30053);
        let r = b.run(
            TC_IN,
            &inbound(dsr_packet(
                Ip6Opts::default(),
                client,
                upod,
                np_a,
                IPPROTO_UDP,
                &udp6(client, upod, b"q", true),
            )),
        );
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(udp_packet(client, upod, b"q")),
            "UDP stripped",
        );
        let r = b.run(TC_OUT, &outbound(udp_packet(upod, client, b"a")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &outbound(udp_packet(np_a, client, b"a")),
            "UDP answer from A's NodePort",
        );
        assert_eq!(b.counter(Counter::NsDsrReceived), 3);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_headers_are_honoured_only_when_they_can_be_verified() {
    require_root!();
    lab(|| {
        pods_behind_p0();
        let mut b = Fixture::new();
        dsr_mode(&mut b);
        b.node_addr(IFINDEX, NODE_B);
        let vip = sa(LB_VIP, 80);
        let pod = sa(REMOTE_POD, 8080);
        let other = sa(REMOTE_POD, 9090);
        let client = sa(CLIENT, 40000);
        b.backend(4, pod, IPPROTO_TCP, true);
        b.backend(5, other, IPPROTO_TCP, true);
        b.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4],
        );
        b.member(REV_LB, 4);
        let np_b = sa(NODE_B, 30080);
        b.frontend(
            np_b,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        b.member(REV_NODEPORT, 4);
        let passes = |b: &mut Fixture, frame: Vec<u8>, what: &str| {
            let r = b.run(TC_IN, &frame);
            assert_eq!(r.verdict(), PASS, "{what}");
            assert_eq!(r.data, frame, "{what}: untouched");
        };
        let syn = |to: SocketAddrV6, frontend: SocketAddrV6| {
            inbound(dsr_packet(
                Ip6Opts::default(),
                client,
                to,
                frontend,
                IPPROTO_TCP,
                &tcp_segment(client, to, TCP_SYN, b""),
            ))
        };
        // A pod that is no backend of the frontend named (not in ferry_memb6_v1).
        passes(&mut b, syn(other, vip), "not a member");
        // A frontend nobody serves.
        passes(&mut b, syn(pod, sa(OUTSIDER, 80)), "no such frontend");
        // A NodePort on an address that is no cluster node's.
        passes(&mut b, syn(pod, sa(OUTSIDER, 30080)), "NodePort of no node");
        assert_eq!(b.counter(Counter::NsDsrIgnored), 3);
        assert!(b.ct().is_empty());
        // With the node's address known, the same NodePort header is honoured.
        b.cluster_node(OUTSIDER);
        let r = b.run(TC_IN, &syn(pod, sa(OUTSIDER, 30080)));
        assert_eq!(r.verdict(), OK);
        assert_eq!(b.counter(Counter::NsDsrReceived), 1);
        // A live DSR flow of another frontend on the same 5-tuple: dropped, its entry kept.
        let r = b.run(TC_IN, &syn(pod, vip));
        assert_eq!(r.verdict(), SHOT);
        assert_eq!(b.counter(Counter::NsDsrClashDrop), 1);
        assert_eq!(b.ct().len(), 1);
        // DSR off here: every header passes untouched (a flow no entry knows).
        b.node_config(NodeConfig::default());
        let client3 = sa(CLIENT, 40003);
        let off = inbound(dsr_packet(
            Ip6Opts::default(),
            client3,
            pod,
            vip,
            IPPROTO_TCP,
            &tcp_segment(client3, pod, TCP_SYN, b""),
        ));
        passes(&mut b, off, "DSR off");
        assert_eq!(b.counter(Counter::NsDsrIgnored), 4);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_is_routed_through_the_fib_and_falls_back_to_snat_when_the_header_does_not_fit() {
    require_root!();
    lab(|| {
        // The route to the backends: a next hop with a resolved neighbour, MTU 1280.
        ip_cmds(&[
            &[
                "link",
                "add",
                "d0",
                "address",
                "02:00:00:00:aa:01",
                "mtu",
                "1280",
                "type",
                "veth",
                "peer",
                "name",
                "d1",
            ],
            &["link", "set", "d1", "up"],
            &["link", "set", "d0", "up"],
            &["-6", "addr", "add", "fd00:64::1/64", "dev", "d0", "nodad"],
            &[
                "-6",
                "neigh",
                "add",
                "fd00:64::2",
                "lladdr",
                "02:00:00:00:aa:02",
                "dev",
                "d0",
                "nud",
                "permanent",
            ],
            &[
                "-6",
                "route",
                "add",
                "fd00:244:1::/64",
                "via",
                "fd00:64::2",
                "dev",
                "d0",
            ],
        ]);
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        let gw: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
        let me: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
        let routed = |mut p: Vec<u8>| {
            p[7] -= 1;
            ethernet(gw, me, ETH_P_IPV6, &p)
        };

        let mut f = Fixture::new();
        dsr_mode(&mut f);
        let vip = sa(LB_VIP, 53);
        let pod = sa(REMOTE_POD, 5353);
        f.backend(4, pod, IPPROTO_UDP, false);
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4],
        );
        // 40 + 24 + 8 + payload: 1208 bytes of payload grow to exactly the MTU.
        let fits = vec![0x55u8; 1208];
        let client = sa(CLIENT, 40000);
        let r = f.run_complete(TC_IN, &inbound(udp_packet(client, vip, &fits)));
        assert_eq!(r.verdict(), REDIRECT, "routed with the header");
        assert_frame(
            &r.data,
            &routed(dsr_packet(
                Ip6Opts::default(),
                client,
                pod,
                vip,
                IPPROTO_UDP,
                &udp6(client, pod, &fits, true),
            )),
            "DSR datagram of exactly the MTU",
        );
        assert_eq!(f.counter(Counter::NsDsrFallback), 0);

        // One byte more on a new flow: the header would not fit, so the flow is masqueraded
        // for its whole life (what IPv4 does; no Packet Too Big to the client).
        let big = vec![0x55u8; 1209];
        let client2 = sa(CLIENT, 40001);
        let r = f.run(TC_IN, &inbound(udp_packet(client2, vip, &big)));
        assert_eq!(r.verdict(), REDIRECT);
        let snat = sa(NODE, snat_port(&r.data));
        assert_frame(
            &r.data,
            &routed(udp_packet(snat, pod, &big)),
            "SNAT fallback",
        );
        assert_eq!(f.counter(Counter::NsDsrFallback), 1);
        let flags: Vec<u8> = f.ct().values().map(|v| v.flags).collect();
        assert_eq!(
            flags.iter().filter(|&&fl| fl & ct_flags::SNAT != 0).count(),
            2,
            "{flags:?}"
        );

        // A later datagram of the DSR flow that no longer fits: sent without the header.
        let r = f.run(TC_IN, &inbound(udp_packet(client, vip, &big)));
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(
            &r.data,
            &routed(udp_packet(client, pod, &big)),
            "DSR datagram too big for the header: DNAT only",
        );
        assert_eq!(f.counter(Counter::NsDsrFallback), 2);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn packet_too_big_is_translated_both_ways_with_its_mtu() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let mtu = 1400;
        let payload = [0x61u8; 1300];
        // An ICMPv6 error quotes as much as fits in 1280 bytes.
        let quote = 1280 - IPV6_HLEN - 8;

        // A local backend; the node (as the pods' router) cannot forward the client's big
        // segment to it and tells the client, quoting the DNAT'd segment.
        let vip = sa(EXTERNAL_IP, 80);
        let pod = sa(LOCAL_POD, 8080);
        let client = sa(CLIENT, 40000);
        f.backend(1, pod, IPPROTO_TCP, true);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::EXTERNAL_IP | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        let sent = tcp_packet(client, vip, TCP_ACK, &payload);
        let r = f.run(TC_IN, &inbound(sent.clone()));
        let delivered = r.data[ETH_HLEN..].to_vec();
        assert_eq!(delivered, tcp_packet(client, pod, TCP_ACK, &payload));
        let err = icmp_error(
            LOCAL_ROUTER,
            CLIENT,
            PACKET_TOO_BIG,
            0,
            mtu,
            &delivered[..quote],
        );
        let r = f.run(TC_OUT, &outbound(err));
        assert_eq!(r.verdict(), OK);
        // The router keeps its own address; the quote becomes what the client sent; the MTU
        // stays.
        let want = icmp_error(LOCAL_ROUTER, CLIENT, PACKET_TOO_BIG, 0, mtu, &sent[..quote]);
        assert_frame(&r.data, &outbound(want), "Packet Too Big on egress");

        // A remote backend behind SNAT; a router on the way to it answers the node.
        let np = sa(NODE, 30080);
        let rpod = sa(REMOTE_POD, 8080);
        f.backend(4, rpod, IPPROTO_TCP, false);
        f.frontend(
            np,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        let sent = tcp_packet(client, np, TCP_ACK, &payload);
        let r = f.run(TC_IN, &inbound(sent.clone()));
        let forwarded = r.data[ETH_HLEN..].to_vec();
        let snat = sa(NODE, snat_port(&r.data));
        assert_eq!(forwarded, tcp_packet(snat, rpod, TCP_ACK, &payload));
        let err = icmp_error(ROUTER, NODE, PACKET_TOO_BIG, 0, mtu, &forwarded[..quote]);
        let r = f.run(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = icmp_error(ROUTER, CLIENT, PACKET_TOO_BIG, 0, mtu, &sent[..quote]);
        assert_frame(
            &r.data,
            &inbound(want),
            "Packet Too Big on ingress, behind SNAT",
        );
        // Its MTU field, byte for byte.
        let l4 = parse_ipv6(&r.data).l4;
        assert_eq!(&l4[4..8], &mtu.to_be_bytes());

        // The remote backend itself answering (port unreachable, a short quote): from the
        // NodePort.
        let err = icmp_error(
            REMOTE_POD,
            NODE,
            DEST_UNREACH,
            PORT_UNREACH,
            0,
            &forwarded[..IPV6_HLEN + 8],
        );
        let r = f.run(TC_IN, &inbound(err));
        let want = icmp_error(
            NODE,
            CLIENT,
            DEST_UNREACH,
            PORT_UNREACH,
            0,
            &sent[..IPV6_HLEN + 8],
        );
        assert_frame(&r.data, &inbound(want), "remote backend's error");

        // Time exceeded and parameter problem (its pointer kept) are translated alike.
        for (ty, code, rest) in [(TIME_EXCEEDED, 0, 0), (PARAM_PROBLEM, 0, 7)] {
            let err = icmp_error(ROUTER, NODE, ty, code, rest, &forwarded[..200]);
            let r = f.run(TC_IN, &inbound(err));
            assert_eq!(r.verdict(), OK);
            let want = icmp_error(ROUTER, CLIENT, ty, code, rest, &sent[..200]);
            assert_frame(&r.data, &inbound(want), "time exceeded / parameter problem");
        }
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 5);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn an_error_from_outside_about_a_reply_goes_to_the_backend() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 53);
        let pod = sa(LOCAL_POD, 1053);
        let client = sa(CLIENT, 5353);
        f.backend(1, pod, IPPROTO_UDP, true);
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        let sent = udp_packet(client, vip, b"is anybody there?");
        let r = f.run(TC_IN, &inbound(sent.clone()));
        assert_eq!(
            r.data[ETH_HLEN..],
            udp_packet(client, pod, b"is anybody there?")
        );

        // The client's own port unreachable about a reply (VIP -> client) goes to the pod.
        let reply = udp_packet(vip, client, b"late answer");
        let err = icmp_error(CLIENT, LB_VIP, DEST_UNREACH, PORT_UNREACH, 0, &reply);
        let r = f.run(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = icmp_error(
            CLIENT,
            LOCAL_POD,
            DEST_UNREACH,
            PORT_UNREACH,
            0,
            &udp_packet(pod, client, b"late answer"),
        );
        assert_frame(
            &r.data,
            &inbound(want),
            "client's error towards the backend",
        );

        // The pod's own port unreachable about the query leaves translated.
        let delivered = udp_packet(client, pod, b"is anybody there?");
        let err = icmp_error(LOCAL_POD, CLIENT, DEST_UNREACH, PORT_UNREACH, 0, &delivered);
        let r = f.run(TC_OUT, &outbound(err));
        assert_eq!(r.verdict(), OK);
        let want = icmp_error(LB_VIP, CLIENT, DEST_UNREACH, PORT_UNREACH, 0, &sent);
        assert_frame(&r.data, &outbound(want), "the pod's error, translated");

        // An error about a flow ferry does not know passes untouched.
        let stranger = udp_packet(sa(LOCAL_POD, 9999), client, b"x");
        let err = outbound(icmp_error(
            LOCAL_POD,
            CLIENT,
            DEST_UNREACH,
            PORT_UNREACH,
            0,
            &stranger,
        ));
        let r = f.run(TC_OUT, &err);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, err);
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 2);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn extension_headers_before_tcp_are_walked_and_kept() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pod = sa(LOCAL_POD, 8080);
        let client = sa(CLIENT, 40000);
        f.backend(1, pod, IPPROTO_TCP, true);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        // Hop-by-hop options (a router alert), then destination options (a PadN), then TCP.
        let with_options = |src: SocketAddrV6, dst: SocketAddrV6| {
            let mut p = options_header(NEXTHDR_DEST, &[5, 2, 0, 0]);
            p.extend(options_header(IPPROTO_TCP, &[1, 4, 0, 0, 0, 0]));
            p.extend(tcp_segment(src, dst, TCP_SYN, b""));
            ipv6(Ip6Opts::default(), *src.ip(), *dst.ip(), NEXTHDR_HOP, &p)
        };
        let r = f.run(TC_IN, &inbound(with_options(client, vip)));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(with_options(client, pod)),
            "DNAT past two extension headers",
        );
        assert_eq!(f.ct().len(), 2);

        // A routing header with segments left: not at its final destination, not ours.
        let mut routed = routing_header(IPPROTO_TCP, 4, 1, &[REMOTE_POD]);
        routed.extend(tcp_segment(sa(CLIENT, 40001), vip, TCP_SYN, b""));
        let routed = inbound(ipv6(
            Ip6Opts::default(),
            CLIENT,
            LB_VIP,
            NEXTHDR_ROUTING,
            &routed,
        ));
        let r = f.run(TC_IN, &routed);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, routed);

        // Five extension headers: more than ferry walks, passed.
        let mut deep = Vec::new();
        for _ in 0..4 {
            deep.extend(options_header(NEXTHDR_DEST, &[]));
        }
        deep.extend(options_header(IPPROTO_TCP, &[]));
        deep.extend(tcp_segment(sa(CLIENT, 40002), vip, TCP_SYN, b""));
        let deep = inbound(ipv6(
            Ip6Opts::default(),
            CLIENT,
            LB_VIP,
            NEXTHDR_DEST,
            &deep,
        ));
        let r = f.run(TC_IN, &deep);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, deep);
        assert_eq!(f.ct().len(), 2);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_first_fragment_is_translated_on_its_ports_and_later_ones_pass() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 53);
        let pod = sa(LOCAL_POD, 1053);
        let client = sa(CLIENT, 5353);
        f.backend(1, pod, IPPROTO_UDP, true);
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        // One datagram of 8 + 1600 bytes in two fragments: 1200 bytes, then the rest.
        let payload = [0x5au8; 1600];
        let fragments = |src: SocketAddrV6, dst: SocketAddrV6| {
            let datagram = udp6(src, dst, &payload, true);
            let mut first = fragment_header(IPPROTO_UDP, 0, true, 0xfeed);
            first.extend_from_slice(&datagram[..1200]);
            let mut later = fragment_header(IPPROTO_UDP, 1200 / 8, false, 0xfeed);
            later.extend_from_slice(&datagram[1200..]);
            let packet = |p: &[u8]| {
                inbound(ipv6(
                    Ip6Opts::default(),
                    *src.ip(),
                    *dst.ip(),
                    NEXTHDR_FRAGMENT,
                    p,
                ))
            };
            (packet(&first), packet(&later))
        };
        let (first, later) = fragments(client, vip);
        let (want_first, _) = fragments(client, pod);

        // The first fragment carries the ports: translated; its UDP checksum (over the whole
        // datagram) follows the new pseudo-header.
        let r = f.run(TC_IN, &first);
        assert_eq!(r.verdict(), OK);
        assert_frame(&r.data, &want_first, "first fragment after DNAT");
        assert_eq!(f.ct().len(), 2);

        // A later fragment has no ports: it passes untouched, as IPv4's do.
        let r = f.run(TC_IN, &later);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, later);
        assert_eq!(f.counter(Counter::NsTracked), 0);
    });
}

/// The ICMPv6 port unreachable ferry must answer `orig` (an inbound frame) with: from the
/// frontend, quoting as much of the packet as fits in 1280 bytes.
fn port_unreachable(orig: &[u8], from: Ipv6Addr, to: Ipv6Addr) -> Vec<u8> {
    let ip = &orig[ETH_HLEN..];
    let len = (IPV6_HLEN + u16::from_be_bytes([ip[4], ip[5]]) as usize).min(ip.len());
    let quote = &ip[..len.min(1280 - IPV6_HLEN - 8)];
    let dst: [u8; 6] = orig[6..12].try_into().unwrap();
    let src: [u8; 6] = orig[0..6].try_into().unwrap();
    ethernet(
        dst,
        src,
        ETH_P_IPV6,
        &icmp_error(from, to, DEST_UNREACH, PORT_UNREACH, 0, quote),
    )
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_service_without_endpoints_is_rejected_with_icmpv6_port_unreachable() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let np = sa(NODE, 30053);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[],
        );
        f.frontend(
            np,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[],
        );

        // A TCP SYN: the whole packet is quoted.
        let syn = inbound(tcp_packet(sa(CLIENT, 40000), vip, TCP_SYN, b""));
        let r = f.run(TC_IN, &syn);
        assert_eq!(r.verdict(), REDIRECT, "sent back out of the ingress device");
        assert_frame(
            &r.data,
            &port_unreachable(&syn, LB_VIP, CLIENT),
            "TCP reject",
        );
        let icmp = &r.data[ETH_HLEN + IPV6_HLEN..];
        assert_eq!((icmp[0], icmp[1]), (1, 4), "type 1 code 4");

        // UDP: empty, odd-sized, and larger than an error may quote (cut at 1232 bytes).
        for payload in [&b""[..], &[0x5a; 201][..], &[0x5b; 1400][..]] {
            let q = inbound(udp_packet(sa(CLIENT, 5353), np, payload));
            let r = f.run(TC_IN, &q);
            assert_eq!(r.verdict(), REDIRECT);
            let want = port_unreachable(&q, NODE, CLIENT);
            assert!(want.len() <= ETH_HLEN + 1280);
            assert_frame(&r.data, &want, "UDP reject");
        }
        // Ethernet padding after the packet is not quoted.
        let mut padded = inbound(udp_packet(sa(CLIENT, 5354), np, b"x"));
        let unpadded = padded.clone();
        padded.extend_from_slice(&[0xee; 9]);
        let r = f.run(TC_IN, &padded);
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(
            &r.data,
            &port_unreachable(&unpadded, NODE, CLIENT),
            "padding",
        );
        // A CHECKSUM_COMPLETE skb keeps a right skb->csum through the rebuild. (Only a frame
        // of the error's own size stays CHECKSUM_COMPLETE: resizing makes an skb
        // CHECKSUM_NONE, whose stale csum the test run cannot tell from a wrong one.)
        let q = inbound(udp_packet(sa(CLIENT, 5355), np, &[7; 1232]));
        assert_eq!(q.len(), ETH_HLEN + 1280);
        let r = f.run_complete(TC_IN, &q);
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(&r.data, &port_unreachable(&q, NODE, CLIENT), "COMPLETE");
        assert_eq!(f.counter(Counter::NsRejected), 6);
        assert!(f.ct().is_empty());

        // Never answered (RFC 4443 2.4 (e)): a multicast source, the unspecified source, a
        // frame sent to a link-layer multicast address.
        let multicast_src = inbound(udp_packet(sa("ff02::1".parse().unwrap(), 1), np, b"x"));
        let unspecified = inbound(udp_packet(sa(Ipv6Addr::UNSPECIFIED, 1), np, b"x"));
        let mut group_mac = inbound(udp_packet(sa(CLIENT, 1), np, b"x"));
        group_mac[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        for frame in [multicast_src, unspecified, group_mac] {
            let r = f.run(TC_IN, &frame);
            assert_eq!(r.verdict(), SHOT);
        }
        assert_eq!(f.counter(Counter::NsRejectFailed), 3);
        assert_eq!(f.counter(Counter::NsRejected), 6);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn port_unreachables_beyond_the_budget_are_dropped_and_counted() {
    require_root!();
    lab(|| {
        let np = sa(NODE, 30053);
        let empty = |f: &mut Fixture| {
            f.frontend(
                np,
                IPPROTO_UDP,
                scope::EXTERNAL,
                svc_flags::NODE_PORT,
                REV_NODEPORT,
                &[],
            );
        };
        let from = |i: u16| sa(addr(0x2001, 0xdb8, 0x100, 0x100 + i), 5353);

        // The node's budget (shared with IPv4): 1 a second, 3 at once; ten sources.
        let mut f = Fixture::new();
        empty(&mut f);
        f.node_config(NodeConfig {
            icmp_rate: 1,
            icmp_burst: 3,
            ..NodeConfig::default()
        });
        let verdicts: Vec<i32> = (0..10)
            .map(|i| {
                f.run(TC_IN, &inbound(udp_packet(from(i), np, b"q")))
                    .verdict()
            })
            .collect();
        assert_eq!(verdicts[..3], [REDIRECT; 3], "the burst is answered");
        assert_eq!(verdicts[3..], [SHOT; 7], "the rest is dropped");
        assert_eq!(f.counter(Counter::NsRejected), 3);
        assert_eq!(f.counter(Counter::NsRejectLimited), 7);

        // One source's budget: 6 at once, then one a minute here.
        let mut g = Fixture::new();
        empty(&mut g);
        g.node_config(NodeConfig {
            icmp_rate: 1_000_000,
            icmp_burst: 1_000,
            icmp_source_interval_ms: 60_000,
            ..NodeConfig::default()
        });
        let q = inbound(udp_packet(from(0), np, b"q"));
        let verdicts: Vec<i32> = (0..10).map(|_| g.run(TC_IN, &q).verdict()).collect();
        assert_eq!(verdicts[..6], [REDIRECT; 6]);
        assert_eq!(verdicts[6..], [SHOT; 4]);
        assert_eq!(g.counter(Counter::NsRejectLimitedSource), 4);
        // Another source still gets its answer.
        let r = g.run(TC_IN, &inbound(udp_packet(from(1), np, b"q")));
        assert_eq!(r.verdict(), REDIRECT);
        assert_eq!(g.counter(Counter::NsRejected), 7);
        let sources: HashMap<&mut MapData, Ip6, u64> =
            HashMap::try_from(g.map(m::ICMP6_SOURCES)).unwrap();
        assert_eq!(sources.keys().count(), 2, "one budget per IPv6 source");
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn etp_local_without_a_local_endpoint_drops() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        f.backend(4, sa(REMOTE_POD, 8080), IPPROTO_TCP, false);
        let flags = svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL | svc_flags::TWO_SCOPES;
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            flags | svc_flags::DROP_NO_LOCAL,
            REV_LB,
            &[],
        );
        f.frontend(vip, IPPROTO_TCP, scope::INTERNAL, flags, REV_LB, &[4]);
        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(sa(CLIENT, 1234), vip, TCP_SYN, b"")),
        );
        assert_eq!(r.verdict(), SHOT);
        assert_eq!(f.counter(Counter::NsNoLocalDrop), 1);
        assert_eq!(f.counter(Counter::NsRejected), 0);
        assert!(f.ct().is_empty());
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn source_ranges_drop_outsiders_before_any_state_and_admit_insiders() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 443);
        let pod = sa(LOCAL_POD, 8443);
        f.backend(1, pod, IPPROTO_TCP, true);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER
                | svc_flags::SOURCE_RANGES
                | svc_flags::ETP_LOCAL
                | svc_flags::AFFINITY,
            REV_LB,
            &[1],
        );
        f.allow_source(REV_LB, addr(0x2001, 0xdb8, 0x100, 0), 40);
        // Another service's range must not admit anyone here.
        f.allow_source(REV_LB + 1, addr(0x2001, 0xdb8, 0x200, 0), 48);

        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(sa(OUTSIDER, 1234), vip, TCP_SYN, b"")),
        );
        assert_eq!(r.verdict(), SHOT);
        assert_eq!(f.counter(Counter::NsSourceRangeDrop), 1);
        assert!(f.ct().is_empty(), "no state for a denied client");
        assert!(f.affinity().is_empty());

        let client = sa(CLIENT, 1234);
        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_SYN, b"")),
            "admitted client",
        );
        assert_eq!(f.ct().len(), 2);
        // Its session affinity is keyed on its IPv6 address.
        let aff = f.affinity();
        assert_eq!(aff.len(), 1);
        let (&(id, rev, kind), v) = aff.iter().next().unwrap();
        assert_eq!(
            (id, rev, kind, v.backend_id),
            (
                affinity_id_v6(&raw(CLIENT)),
                REV_LB,
                affinity_client::IPV6,
                1
            )
        );
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn flows_are_placed_by_the_ipv6_flow_hash() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pods: Vec<SocketAddrV6> = (0..3)
            .map(|i| sa(addr(0xfd00, 0x244, 0, 0x31 + i), 8080))
            .collect();
        for (i, p) in pods.iter().enumerate() {
            f.backend(i as u32 + 1, *p, IPPROTO_TCP, true);
        }
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1, 2, 3],
        );
        let mut used = BTreeMap::new();
        for port in 40000..40024u16 {
            let client = sa(CLIENT, port);
            let h = flow_hash_v6(
                &raw(CLIENT),
                &raw(LB_VIP),
                port_to_raw(port),
                port_to_raw(80),
                IPPROTO_TCP,
            );
            let want = pods[(h % 3) as usize];
            let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")));
            assert_frame(
                &r.data,
                &inbound(tcp_packet(client, want, TCP_SYN, b"")),
                &format!("port {port}"),
            );
            *used.entry(want).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 3, "every backend serves: {used:?}");
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn checksums_stay_right_for_checksum_complete_skbs() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 53);
        let pod = sa(LOCAL_POD, 1053);
        let np = sa(NODE, 30053);
        let rpod = sa(REMOTE_POD, 53);
        f.backend(1, pod, IPPROTO_UDP, true);
        f.backend(4, rpod, IPPROTO_UDP, false);
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        f.frontend(
            np,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        let client = sa(CLIENT, 5353);

        let r = f.run_complete(TC_IN, &inbound(udp_packet(client, vip, b"dnat")));
        assert_frame(
            &r.data,
            &inbound(udp_packet(client, pod, b"dnat")),
            "DNAT, CHECKSUM_COMPLETE",
        );
        let r = f.run_complete(TC_IN, &inbound(udp_packet(client, np, b"snat")));
        let snat = sa(NODE, snat_port(&r.data));
        assert_frame(
            &r.data,
            &inbound(udp_packet(snat, rpod, b"snat")),
            "DNAT+SNAT, CHECKSUM_COMPLETE",
        );
        let r = f.run_complete(TC_IN, &inbound(udp_packet(rpod, snat, b"back")));
        assert_frame(
            &r.data,
            &inbound(udp_packet(np, client, b"back")),
            "reverse NAT, CHECKSUM_COMPLETE",
        );
        let r = f.run_complete(TC_OUT, &outbound(udp_packet(pod, client, b"out")));
        assert_frame(
            &r.data,
            &outbound(udp_packet(vip, client, b"out")),
            "egress, CHECKSUM_COMPLETE",
        );
        let err = icmp_error(
            CLIENT,
            LB_VIP,
            DEST_UNREACH,
            PORT_UNREACH,
            0,
            &udp_packet(vip, client, b"r"),
        );
        let r = f.run_complete(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let err = icmp_error(
            ROUTER,
            NODE,
            PACKET_TOO_BIG,
            0,
            1280,
            &udp_packet(snat, rpod, b"snat"),
        );
        let r = f.run_complete(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 2);

        // TCP too, with the hop-by-hop header.
        let tvip = sa(LB_VIP, 80);
        let tpod = sa(LOCAL_POD, 8080);
        f.backend(2, tpod, IPPROTO_TCP, true);
        f.frontend(
            tvip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB + 1,
            &[2],
        );
        let hbh = |src: SocketAddrV6, dst: SocketAddrV6| {
            let mut p = options_header(IPPROTO_TCP, &[5, 2, 0, 0]);
            p.extend(tcp_segment(src, dst, TCP_SYN, b"x"));
            inbound(ipv6(
                Ip6Opts::default(),
                *src.ip(),
                *dst.ip(),
                NEXTHDR_HOP,
                &p,
            ))
        };
        let r = f.run_complete(TC_IN, &hbh(client, tvip));
        assert_frame(&r.data, &hbh(client, tpod), "TCP, CHECKSUM_COMPLETE");
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn snat_to_a_remote_backend_is_forwarded_through_the_fib() {
    require_root!();
    lab(|| {
        // A next hop for pods and clients, with a resolved neighbour, and forwarding on.
        ip_cmds(&[
            &[
                "link",
                "add",
                "d0",
                "address",
                "02:00:00:00:aa:01",
                "type",
                "veth",
                "peer",
                "name",
                "d1",
            ],
            &["link", "set", "d1", "up"],
            &["link", "set", "d0", "up"],
            &["-6", "addr", "add", "fd00:64::1/64", "dev", "d0", "nodad"],
            &[
                "-6",
                "neigh",
                "add",
                "fd00:64::2",
                "lladdr",
                "02:00:00:00:aa:02",
                "dev",
                "d0",
                "nud",
                "permanent",
            ],
            &[
                "-6",
                "route",
                "add",
                "fd00:244:1::/64",
                "via",
                "fd00:64::2",
                "dev",
                "d0",
            ],
            &[
                "-6",
                "route",
                "add",
                "2001:db8:100::/64",
                "via",
                "fd00:64::2",
                "dev",
                "d0",
            ],
        ]);
        // /proc/sys/net is the namespace of the thread that opens it: this one's.
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();

        let mut f = Fixture::new();
        let np = sa(NODE, 30080);
        let pod = sa(REMOTE_POD, 8080);
        let client = sa(CLIENT, 40001);
        f.backend(4, pod, IPPROTO_TCP, false);
        f.frontend(
            np,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        let gw: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
        let me: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
        let routed = |mut p: Vec<u8>| {
            p[7] -= 1;
            ethernet(gw, me, ETH_P_IPV6, &p)
        };

        let r = f.run_complete(TC_IN, &inbound(tcp_packet(client, np, TCP_SYN, b"")));
        assert_eq!(r.verdict(), REDIRECT, "redirected to the next hop's device");
        let snat = sa(NODE, snat_port(&r.data));
        // Routed: the next hop's MACs, hop limit - 1.
        assert_frame(
            &r.data,
            &routed(tcp_packet(snat, pod, TCP_SYN, b"")),
            "SYN routed after DNAT+SNAT",
        );
        assert_eq!(f.counter(Counter::NsFibPassed), 0);

        // The backend's answer goes the same way to the client, from the NodePort.
        let r = f.run_complete(
            TC_IN,
            &inbound(tcp_packet(pod, snat, TCP_SYN | TCP_ACK, b"")),
        );
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(
            &r.data,
            &routed(tcp_packet(np, client, TCP_SYN | TCP_ACK, b"")),
            "SYN-ACK routed after reverse NAT",
        );

        // A hop limit that would expire here is the stack's to answer.
        let mut last_hop = tcp_packet(client, np, TCP_ACK, b"");
        last_hop[7] = 1;
        let r = f.run(TC_IN, &inbound(last_hop));
        assert_eq!(r.verdict(), OK);
        assert_eq!(parse_ipv6(&r.data).hop_limit, 1);
        assert_eq!(f.counter(Counter::NsFibPassed), 1);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn neighbor_discovery_echo_and_what_is_not_a_frontend_pass_untouched() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        f.backend(1, sa(LOCAL_POD, 8080), IPPROTO_TCP, true);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[1],
        );
        // A ClusterIP is served at the socket layer only, never on the device.
        let cip = sa(CLUSTER_IP, 80);
        f.frontend(
            cip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::CLUSTER_IP,
            9,
            &[1],
        );
        f.cluster_node(NODE);

        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        let solicited: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let nd = |ty: u8, dst: Ipv6Addr, rest: u32, body: &[u8]| {
            ipv6(
                Ip6Opts {
                    hop_limit: 255,
                    ..Ip6Opts::default()
                },
                link_local,
                dst,
                IPPROTO_ICMPV6,
                &icmp6(link_local, dst, ty, 0, rest, body),
            )
        };
        // Target address, then a link-layer address option.
        let mut target = NODE.octets().to_vec();
        target.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 1]);
        let echo = |dst: Ipv6Addr| {
            ipv6(
                Ip6Opts::default(),
                CLIENT,
                dst,
                IPPROTO_ICMPV6,
                &icmp6(CLIENT, dst, 128, 0, 0x0001_0001, b"ping"),
            )
        };
        let cases = [
            ("router solicitation", inbound(nd(133, all_nodes, 0, &[]))),
            (
                "router advertisement",
                inbound(nd(134, all_nodes, 0x4000_0708, &[0; 8])),
            ),
            (
                "neighbor solicitation",
                inbound(nd(135, solicited, 0, &target)),
            ),
            (
                "neighbor advertisement",
                inbound(nd(136, link_local, 0x6000_0000, &target)),
            ),
            ("echo request to a frontend", inbound(echo(LB_VIP))),
            ("echo request to the node", inbound(echo(NODE))),
            (
                "MLDv2 report",
                inbound(nd(143, "ff02::16".parse().unwrap(), 0, &[])),
            ),
            (
                "ClusterIP on the device",
                inbound(tcp_packet(sa(CLIENT, 1), cip, TCP_SYN, b"")),
            ),
            (
                "no frontend",
                inbound(tcp_packet(sa(CLIENT, 1), sa(NODE, 22), TCP_SYN, b"")),
            ),
            (
                "no frontend, port in the SNAT range",
                inbound(udp_packet(sa(CLIENT, 1), sa(NODE, 62000), b"x")),
            ),
            (
                "UDP without a checksum (invalid in IPv6)",
                inbound(ipv6(
                    Ip6Opts::default(),
                    CLIENT,
                    LB_VIP,
                    IPPROTO_UDP,
                    &udp6(sa(CLIENT, 1), sa(LB_VIP, 80), b"x", false),
                )),
            ),
            (
                "ICMPv6 error about no flow",
                inbound(icmp_error(
                    ROUTER,
                    CLIENT,
                    DEST_UNREACH,
                    0,
                    0,
                    &tcp_packet(sa(CLIENT, 1), vip, TCP_SYN, b""),
                )),
            ),
            ("IPv4 bytes in an IPv6 frame", {
                let mut v = inbound(tcp_packet(sa(CLIENT, 1), vip, TCP_SYN, b""));
                v[ETH_HLEN] = 0x45;
                v
            }),
        ];
        for (what, frame) in cases {
            for prog in [TC_IN, TC_OUT, TC_POD] {
                let r = f.run(prog, &frame);
                assert_eq!(r.verdict(), PASS, "{what} ({prog})");
                assert_eq!(r.data, frame, "{what} ({prog}) unchanged");
            }
        }
        assert!(f.ct().is_empty());
        assert_eq!(f.counter(Counter::NsNewFlow), 0);
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 0);
    });
}
