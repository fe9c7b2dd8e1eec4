//! ferry's north-south TC programs (`ferry_tc_in`, `ferry_tc_out`) run with BPF_PROG_TEST_RUN on
//! hand-built frames: the translated packets are compared byte for byte with frames built
//! independently (every checksum computed from scratch, RFC 1071), along with the verdict, the
//! conntrack entries and the counters.
//!
//! Each test loads the whole object into the real kernel (so the verifier accepts every program)
//! with its maps pinned in a private bpffs, fills the maps as the agent would, and runs the
//! programs without attaching them anywhere, in a network namespace of its own. The skb of a
//! test run sits on that namespace's loopback device: ifindex 1 is "the device" the node
//! address map is keyed by.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Ct4Key, Ct4Value, DSR_OPT_LEN, DSR_OPT_TYPE,
    MAGLEV_TABLE_SIZE, Member4Key, NodeConfig, RevNat4, SrcRange4, Svc4Key, SvcValue,
    affinity_client, backend_flags, ct_dir, ct_flags, flow_hash_v4, maglev_key, maps as m,
    net::{ip4_to_raw, port_to_raw},
    node_flags, scope,
    stats::Counter,
    svc_flags,
};
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use ferry_tests::{
    progtest::{
        self, BPF_F_TEST_SKB_CHECKSUM_COMPLETE, ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, IpOpts, ProgTest, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, assert_checksums,
        ethernet, icmp, ipv4, ipv4_with_options, parse_ipv4, tcp, udp,
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
const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const LB_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const LOCAL_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 9);
const REMOTE_POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 254);

/// The upstream router's MAC (source of what arrives) and the node's.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

const REV_LB: u16 = 7;
const REV_NODEPORT: u16 = 8;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn raw(ip: Ipv4Addr) -> u32 {
    ip4_to_raw(ip.octets())
}

/// A frame arriving from outside (router -> node).
fn inbound(ip_packet: Vec<u8>) -> Vec<u8> {
    ethernet(NODE_MAC, PEER_MAC, ETH_P_IP, &ip_packet)
}

/// A frame leaving the node (node -> router).
fn outbound(ip_packet: Vec<u8>) -> Vec<u8> {
    ethernet(PEER_MAC, NODE_MAC, ETH_P_IP, &ip_packet)
}

fn tcp_packet(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    ipv4(
        IpOpts::default(),
        *src.ip(),
        *dst.ip(),
        IPPROTO_TCP,
        &tcp(
            src,
            dst,
            1000,
            if flags & TCP_ACK != 0 { 2000 } else { 0 },
            flags,
            payload,
        ),
    )
}

fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    ipv4(
        IpOpts::default(),
        *src.ip(),
        *dst.ip(),
        IPPROTO_UDP,
        &udp(src, dst, payload, true),
    )
}

/// The IP options of the ICMP errors Linux sends (and ferry's reject): precedence
/// "internetwork control", no DF.
fn icmp_opts(id: u16) -> IpOpts {
    IpOpts {
        tos: 0xc0,
        id,
        dont_fragment: false,
        ttl: 64,
    }
}

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

    fn node_addr(&mut self, ifindex: u32, addr: Ipv4Addr) {
        self.hash::<u32, u32>(m::NODE_ADDR_V4)
            .insert(&ifindex, &raw(addr), 0)
            .unwrap();
    }

    fn node_config(&mut self, cfg: NodeConfig) {
        let mut a: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.map(m::NODE_CONFIG)).unwrap();
        a.set(0, &cfg, 0).unwrap();
    }

    fn backend(&mut self, id: u32, addr: SocketAddrV4, proto: u8, local: bool) {
        let b = Backend4 {
            addr: raw(*addr.ip()),
            port: port_to_raw(addr.port()),
            proto,
            state: 0,
            flags: if local { backend_flags::LOCAL } else { 0 },
            _pad: [0; 3],
        };
        self.hash::<u32, Backend4>(m::BACKENDS_V4)
            .insert(&id, &b, 0)
            .unwrap();
    }

    fn remove_backend(&mut self, id: u32) {
        self.hash::<u32, Backend4>(m::BACKENDS_V4)
            .remove(&id)
            .unwrap();
    }

    /// A frontend (slot 0) of `scope` with the given backend ids in slots 1..=n, and its
    /// reverse-NAT entry.
    fn frontend(
        &mut self,
        addr: SocketAddrV4,
        proto: u8,
        scope: u8,
        flags: u16,
        rev_nat_id: u16,
        backends: &[u32],
    ) {
        let key = |slot: u16| Svc4Key {
            addr: raw(*addr.ip()),
            port: port_to_raw(addr.port()),
            slot,
            proto,
            scope,
            _pad: [0; 2],
        };
        let mut svc = self.hash::<Svc4Key, SvcValue>(m::SERVICES_V4);
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
        self.hash::<u16, RevNat4>(m::REV_NAT_V4)
            .insert(
                &rev_nat_id,
                &RevNat4 {
                    addr: raw(*addr.ip()),
                    port: port_to_raw(addr.port()),
                    _pad: 0,
                },
                0,
            )
            .unwrap();
    }

    fn allow_source(&mut self, rev_nat_id: u16, net: Ipv4Addr, len: u32) {
        let mut lpm: LpmTrie<&mut MapData, SrcRange4, u8> =
            LpmTrie::try_from(self.map(m::SRC_RANGE_V4)).unwrap();
        let data = SrcRange4 {
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

    fn maglev_table(&mut self, rev_nat_id: u16, backend_at: impl Fn(u32) -> u32) {
        let mut t = self.hash::<u32, u32>(m::MAGLEV);
        for i in 0..MAGLEV_TABLE_SIZE {
            t.insert(&maglev_key(rev_nat_id, i), &backend_at(i), 0)
                .unwrap();
        }
    }

    /// Backend `id` (already in the backend map) serves the exposed frontend `rev_nat_id`, as
    /// the agent's programmer records it for DSR.
    fn member(&mut self, rev_nat_id: u16, id: u32) {
        let b = self
            .hash::<u32, Backend4>(m::BACKENDS_V4)
            .get(&id, 0)
            .unwrap();
        let k = Member4Key {
            rev_nat_id,
            proto: b.proto,
            _pad: 0,
            addr: b.addr,
            port: b.port,
            _pad2: 0,
        };
        self.hash::<Member4Key, u32>(m::MEMBERS_V4)
            .insert(&k, &id, 0)
            .unwrap();
    }

    /// An address of a cluster node (a Node object's), as the agent records it.
    fn cluster_node(&mut self, addr: Ipv4Addr) {
        self.hash::<u32, u8>(m::NODES_V4)
            .insert(&raw(addr), &1, 0)
            .unwrap();
    }

    /// The conntrack fill the agent measured, per mille.
    fn ct_fill(&mut self, permille: u32) {
        let mut a: Array<&mut MapData, u32> = Array::try_from(self.map(m::CT_FILL)).unwrap();
        a.set(0, &permille, 0).unwrap();
    }

    /// Rewrites a conntrack entry (to make it look closing or idle).
    fn ct_put(&mut self, k: Ct4Key, v: Ct4Value) {
        self.hash::<Ct4Key, Ct4Value>(m::CT_V4)
            .insert(&k, &v, 0)
            .unwrap();
    }

    fn ct(&mut self) -> BTreeMap<Ct4Key, Ct4Value> {
        self.hash::<Ct4Key, Ct4Value>(m::CT_V4)
            .iter()
            .map(|r| r.unwrap())
            .collect()
    }

    fn clear_ct(&mut self) {
        let keys: Vec<Ct4Key> = self.ct().into_keys().collect();
        let mut ct = self.hash::<Ct4Key, Ct4Value>(m::CT_V4);
        for k in keys {
            ct.remove(&k).unwrap();
        }
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
}

fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8, dir: u8) -> Ct4Key {
    Ct4Key {
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
    new_src: SocketAddrV4,
    new_dst: SocketAddrV4,
    backend_id: u32,
    rev_nat_id: u16,
    flags: u8,
    tcp_flags: u8,
) -> Ct4Value {
    Ct4Value {
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

/// The conntrack map holds exactly `want` (values compared without `last_seen`, which must be
/// "now" on CLOCK_MONOTONIC).
fn assert_ct(f: &mut Fixture, want: &[(Ct4Key, Ct4Value)]) {
    let now = monotonic_seconds();
    let got: BTreeMap<Ct4Key, Ct4Value> = f
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
    let want: BTreeMap<Ct4Key, Ct4Value> = want.iter().copied().collect();
    assert_eq!(got, want, "conntrack entries");
}

/// The run's frame equals `want` byte for byte (and its checksums verify from scratch).
fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    assert_checksums(want);
    assert_checksums(got);
    if got != want {
        panic!(
            "{what}: frames differ\n got  {:02x?}\n want {:02x?}\n got  {:?}\n want {:?}",
            got,
            want,
            parse_ipv4(got),
            parse_ipv4(want)
        );
    }
}

/// Runs a test body in a namespace of its own (see the file comment).
fn lab(body: fn()) {
    progtest::isolated(body);
}

// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn whole_object_passes_the_verifier() {
    require_root!();
    lab(|| {
        let mut t = ProgTest::load(
            ferry::datapath::loader::ebpf_object(),
            &[TC_IN, TC_OUT, TC_POD],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        // The socket-layer programs too: one object, one verifier verdict for all of it.
        for (name, prog) in t.ebpf.programs_mut() {
            if let aya::programs::Program::CgroupSockAddr(p) = prog {
                p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
            }
        }
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn tcp_syn_to_lb_ip_with_local_backend_keeps_the_client_address() {
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

        let syn = inbound(tcp_packet(client, vip, TCP_SYN, b""));
        let r = f.run(TC_IN, &syn);
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
        assert_eq!(f.counter(Counter::NsNewFlow), 1);

        // The backend's SYN-ACK leaves through the device: its source becomes the VIP again.
        let synack = outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b""));
        let r = f.run(TC_OUT, &synack);
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &outbound(tcp_packet(vip, client, TCP_SYN | TCP_ACK, b"")),
            "SYN-ACK after reverse NAT",
        );
        assert_eq!(f.counter(Counter::NsTracked), 1);

        // The client's next segment hits conntrack: same translation, no new flow.
        let ack = inbound(tcp_packet(client, vip, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"));
        let r = f.run(TC_IN, &ack);
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n")),
            "ACK after DNAT",
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);
        assert_eq!(f.counter(Counter::NsTracked), 2);
        assert_eq!(f.ct().len(), 2);

        // Packets that are not the flow's pass untouched on egress.
        let other = outbound(tcp_packet(sa(LOCAL_POD, 8081), client, TCP_ACK, b""));
        let r = f.run(TC_OUT, &other);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, other);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_direct_connection_reusing_a_finished_flows_port_is_not_rewritten() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pod = sa(LOCAL_POD, 8080);
        let client = sa(CLIENT, 40001);
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
        assert_eq!(f.ct().len(), 2);
        // The flow ends: the client's FIN goes through the frontend.
        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(client, vip, TCP_FIN | TCP_ACK, b"")),
        );
        assert_eq!(r.verdict(), OK);

        // Later the same client port opens a connection straight to the pod.
        let direct = inbound(tcp_packet(client, pod, TCP_SYN, b""));
        let r = f.run(TC_IN, &direct);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, direct);
        assert_eq!(f.ct().len(), 0, "the finished flow's entries are forgotten");

        // So the pod's answer to it leaves untouched, not as the old frontend.
        let synack = outbound(tcp_packet(pod, client, TCP_SYN | TCP_ACK, b""));
        let r = f.run(TC_OUT, &synack);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, synack);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn udp_to_node_port_with_remote_backend_is_snatted_and_the_reply_comes_back() {
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
        // No route in the test's namespace: handed to the stack after translation.
        assert_eq!(r.verdict(), OK);
        assert_eq!(f.counter(Counter::NsFibPassed), 1);
        let out = parse_ipv4(&r.data);
        let snat_port = out.sport;
        assert!(
            (61_000..=65_535).contains(&snat_port),
            "SNAT port {snat_port} outside the default range"
        );
        let snat = sa(NODE, snat_port);
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

        // The remote backend's answer arrives at the SNAT port: back to the client, from the
        // NodePort.
        let answer = inbound(udp_packet(pod, snat, b"answer"));
        let r = f.run(TC_IN, &answer);
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
        assert_eq!(f.ct().len(), 2);

        // A client port inside the SNAT range is kept when free.
        let client2 = sa(CLIENT2, 62000);
        let r = f.run(TC_IN, &inbound(udp_packet(client2, np, b"q2")));
        assert_frame(
            &r.data,
            &inbound(udp_packet(sa(NODE, 62000), pod, b"q2")),
            "in-range client port kept",
        );
        assert_eq!(f.ct().len(), 4);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn snat_to_a_remote_backend_is_forwarded_through_the_fib() {
    require_root!();
    lab(|| {
        // A next hop for pods and clients, with a resolved neighbour, and forwarding on.
        let d0_mac = "02:00:00:00:aa:01";
        let gw_mac = "02:00:00:00:aa:02";
        for args in [
            // A veth pair inside this test's namespace (the kernel may lack `dummy`).
            vec![
                "link", "add", "d0", "address", d0_mac, "type", "veth", "peer", "name", "d1",
            ],
            vec!["link", "set", "d1", "up"],
            vec!["link", "set", "d0", "up"],
            vec!["addr", "add", "100.64.0.1/24", "dev", "d0"],
            vec![
                "neigh",
                "add",
                "100.64.0.2",
                "lladdr",
                gw_mac,
                "dev",
                "d0",
                "nud",
                "permanent",
            ],
            vec![
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                "100.64.0.2",
                "dev",
                "d0",
            ],
            vec![
                "route",
                "add",
                "198.51.100.0/24",
                "via",
                "100.64.0.2",
                "dev",
                "d0",
            ],
        ] {
            let st = Command::new("ip").args(&args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        // /proc/sys/net is the namespace of the thread that opens it: this one's.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();

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

        let r = f.run(TC_IN, &inbound(tcp_packet(client, np, TCP_SYN, b"")));
        assert_eq!(r.verdict(), REDIRECT, "redirected to the next hop's device");
        let out = parse_ipv4(&r.data);
        let snat = sa(NODE, out.sport);
        // Routed: the next hop's MACs, TTL - 1.
        let mut routed = tcp_packet(snat, pod, TCP_SYN, b"");
        routed = reipv4_ttl(&routed, 63);
        let gw: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
        let me: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
        assert_frame(
            &r.data,
            &ethernet(gw, me, ETH_P_IP, &routed),
            "SYN routed after DNAT+SNAT",
        );
        assert_eq!(f.counter(Counter::NsFibPassed), 0);

        // The backend's answer goes the same way to the client, from the NodePort.
        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(pod, snat, TCP_SYN | TCP_ACK, b"")),
        );
        assert_eq!(r.verdict(), REDIRECT);
        let back = reipv4_ttl(&tcp_packet(np, client, TCP_SYN | TCP_ACK, b""), 63);
        assert_frame(
            &r.data,
            &ethernet(gw, me, ETH_P_IP, &back),
            "SYN-ACK routed after reverse NAT",
        );
    });
}

/// The same IP packet with another TTL (and its header checksum recomputed from scratch).
fn reipv4_ttl(packet: &[u8], ttl: u8) -> Vec<u8> {
    let mut p = packet.to_vec();
    p[8] = ttl;
    p[10] = 0;
    p[11] = 0;
    let c = progtest::checksum(0, &p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
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
            svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        f.allow_source(REV_LB, Ipv4Addr::new(198, 51, 100, 0), 24);
        // Another service's range must not admit anyone here.
        f.allow_source(REV_LB + 1, Ipv4Addr::new(203, 0, 113, 0), 24);

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
        // External scope: this node's endpoints (none), flagged as the agent flags a Local
        // policy with endpoints elsewhere; internal: all of them.
        let ext_flags = flags | svc_flags::DROP_NO_LOCAL;
        f.frontend(vip, IPPROTO_TCP, scope::EXTERNAL, ext_flags, REV_LB, &[]);
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

/// The ICMP port unreachable ferry must answer `orig` (an inbound frame) with.
fn port_unreachable(orig: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let quoted = &orig[ETH_HLEN..ETH_HLEN + 28];
    let dst: [u8; 6] = orig[6..12].try_into().unwrap();
    let src: [u8; 6] = orig[0..6].try_into().unwrap();
    ethernet(
        dst,
        src,
        ETH_P_IP,
        &ipv4(icmp_opts(0), from, to, IPPROTO_ICMP, &icmp(3, 3, 0, quoted)),
    )
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_service_without_endpoints_is_rejected_with_icmp_port_unreachable() {
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

        // TCP SYN (54 bytes: the frame grows to 70).
        let syn = inbound(tcp_packet(sa(CLIENT, 40000), vip, TCP_SYN, b""));
        let r = f.run(TC_IN, &syn);
        assert_eq!(r.verdict(), REDIRECT, "sent back out of the ingress device");
        assert_frame(
            &r.data,
            &port_unreachable(&syn, LB_VIP, CLIENT),
            "TCP reject",
        );
        let icmp_msg = &r.data[34..];
        assert_eq!((icmp_msg[0], icmp_msg[1]), (3, 3), "type 3 code 3");

        // UDP with a payload (the frame shrinks to 70) and an empty one (42 bytes: it grows).
        for payload in [&[0x5a; 200][..], b""] {
            let q = inbound(udp_packet(sa(CLIENT, 5353), np, payload));
            let r = f.run(TC_IN, &q);
            assert_eq!(r.verdict(), REDIRECT);
            assert_frame(&r.data, &port_unreachable(&q, NODE, CLIENT), "UDP reject");
        }
        assert_eq!(f.counter(Counter::NsRejected), 3);
        assert!(f.ct().is_empty());

        // A packet with IP options is dropped instead (the quote would not have a fixed size).
        let mut opt = tcp_packet(sa(CLIENT, 40001), vip, TCP_SYN, b"");
        opt[0] = 0x46;
        opt.splice(20..20, [1u8, 1, 1, 0]);
        let len = opt.len() as u16;
        opt[2..4].copy_from_slice(&len.to_be_bytes());
        opt[10] = 0;
        opt[11] = 0;
        let c = progtest::checksum(0, &opt[..24]);
        opt[10..12].copy_from_slice(&c.to_be_bytes());
        let r = f.run(TC_IN, &inbound(opt));
        assert_eq!(r.verdict(), SHOT);
        assert_eq!(f.counter(Counter::NsRejectFailed), 1);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn icmp_port_unreachable_from_a_local_backend_is_translated_on_egress() {
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
        let delivered = r.data[ETH_HLEN..].to_vec();
        assert_eq!(delivered, udp_packet(client, pod, b"is anybody there?"));

        // The pod has no socket on the port: Linux quotes the whole (small) datagram.
        let err = ipv4(
            icmp_opts(0x4242),
            LOCAL_POD,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &delivered),
        );
        let r = f.run(TC_OUT, &outbound(err));
        assert_eq!(r.verdict(), OK);
        // The client gets it from the VIP, quoting exactly what it sent (UDP checksum included).
        let want = ipv4(
            icmp_opts(0x4242),
            LB_VIP,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &sent),
        );
        assert_frame(
            &r.data,
            &outbound(want),
            "port unreachable after translation",
        );
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 1);

        // Only the 8 bytes RFC 792 requires.
        let err = ipv4(
            icmp_opts(1),
            LOCAL_POD,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &delivered[..28]),
        );
        let r = f.run(TC_OUT, &outbound(err));
        let want = ipv4(
            icmp_opts(1),
            LB_VIP,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &sent[..28]),
        );
        assert_frame(&r.data, &outbound(want), "short quote");

        // The client's own port unreachable about a reply (VIP -> client) goes to the pod.
        let reply = udp_packet(vip, client, b"late answer");
        let err = ipv4(
            icmp_opts(2),
            CLIENT,
            LB_VIP,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &reply),
        );
        let r = f.run(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = ipv4(
            icmp_opts(2),
            CLIENT,
            LOCAL_POD,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &udp_packet(pod, client, b"late answer")),
        );
        assert_frame(
            &r.data,
            &inbound(want),
            "client's error towards the backend",
        );

        // An error about a flow ferry does not know passes untouched.
        let stranger = udp_packet(sa(LOCAL_POD, 9999), client, b"x");
        let err = outbound(ipv4(
            icmp_opts(3),
            LOCAL_POD,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &stranger),
        ));
        let r = f.run(TC_OUT, &err);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, err);
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 3);
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
        // No route in the test's namespace: handed to the stack after translation.
        assert_eq!(r.verdict(), OK);
        let snat = sa(NODE, parse_ipv4(&r.data).sport);
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

        // The pod answers the node address: its device's program sends it to the client,
        // from the VIP.
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
        let err = ipv4(
            icmp_opts(7),
            LOCAL_POD,
            NODE,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &delivered),
        );
        let r = f.run(TC_POD, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = ipv4(
            icmp_opts(7),
            LB_VIP,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &query),
        );
        assert_frame(&r.data, &inbound(want), "the pod's error, translated");
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 1);

        // What a pod sends anywhere else passes untouched: to the client's port (no flow of
        // ours owns it), and a kept-client flow's replies (eTP Local), which the node device
        // translates as they leave, even on a port inside the SNAT range.
        let etp_vip = sa(LB_VIP, 54);
        f.frontend(
            etp_vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB + 1,
            &[1],
        );
        let client2 = sa(CLIENT2, 62000);
        let r = f.run(TC_IN, &inbound(udp_packet(client2, etp_vip, b"q")));
        assert_frame(
            &r.data,
            &inbound(udp_packet(client2, pod, b"q")),
            "eTP Local keeps the client",
        );
        for stray in [
            udp_packet(pod, client, b"direct"),
            udp_packet(pod, client2, b"kept-client reply"),
            udp_packet(sa(LOCAL_POD, 9), snat, b"not the flow's port"),
        ] {
            let frame = inbound(stray);
            let r = f.run(TC_POD, &frame);
            assert_eq!(r.verdict(), PASS);
            assert_eq!(r.data, frame);
        }
        assert_eq!(f.counter(Counter::NsTracked), 1);

        // In DSR mode a local backend keeps the client's address, eTP Cluster or not.
        dsr_mode(&mut f);
        let client3 = sa(CLIENT2, 40003);
        let r = f.run(TC_IN, &inbound(udp_packet(client3, vip, b"q3")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(udp_packet(client3, pod, b"q3")),
            "DSR mode: the local backend sees the client",
        );
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn fragmentation_needed_is_translated_both_ways() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let mtu = 0x0000_0578; // next-hop MTU 1400 in the low 16 bits
        let payload = [0x61u8; 600];

        // A local backend; the node (as the pods' router) cannot forward the client's big
        // segment to it and tells the client, quoting the DNAT'd segment (576 bytes at most).
        let vip = sa(EXTERNAL_IP, 80);
        let pod = sa(LOCAL_POD, 8080);
        let client = sa(CLIENT, 40000);
        f.backend(1, pod, IPPROTO_TCP, true);
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::EXTERNAL_IP,
            REV_LB,
            &[1],
        );
        let sent = tcp_packet(client, vip, TCP_ACK, &payload);
        let r = f.run(TC_IN, &inbound(sent.clone()));
        let delivered = r.data[ETH_HLEN..].to_vec();
        let quote = 576 - 20 - 8;
        let err = ipv4(
            icmp_opts(7),
            LOCAL_ROUTER,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 4, mtu, &delivered[..quote]),
        );
        let r = f.run(TC_OUT, &outbound(err));
        assert_eq!(r.verdict(), OK);
        // The router keeps its own address; the quote becomes what the client sent.
        let want = ipv4(
            icmp_opts(7),
            LOCAL_ROUTER,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 4, mtu, &sent[..quote]),
        );
        assert_frame(&r.data, &outbound(want), "frag needed on egress");

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
        let snat = sa(NODE, parse_ipv4(&r.data).sport);
        assert_eq!(forwarded, tcp_packet(snat, rpod, TCP_ACK, &payload));
        let err = ipv4(
            icmp_opts(8),
            ROUTER,
            NODE,
            IPPROTO_ICMP,
            &icmp(3, 4, mtu, &forwarded[..quote]),
        );
        let r = f.run(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = ipv4(
            icmp_opts(8),
            ROUTER,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 4, mtu, &sent[..quote]),
        );
        assert_frame(
            &r.data,
            &inbound(want),
            "frag needed on ingress, behind SNAT",
        );

        // The remote backend itself answering (port unreachable): from the NodePort.
        let err = ipv4(
            icmp_opts(9),
            REMOTE_POD,
            NODE,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &forwarded[..28]),
        );
        let r = f.run(TC_IN, &inbound(err));
        let want = ipv4(
            icmp_opts(9),
            NODE,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &sent[..28]),
        );
        assert_frame(&r.data, &inbound(want), "remote backend's error");
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 3);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn maglev_places_the_same_flow_on_the_same_backend() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pods: Vec<SocketAddrV4> = (0..3)
            .map(|i| sa(Ipv4Addr::new(10, 244, 0, 11 + i), 8080))
            .collect();
        for (i, p) in pods.iter().enumerate() {
            f.backend(i as u32 + 1, *p, IPPROTO_TCP, true);
        }
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::MAGLEV,
            REV_LB,
            &[1, 2, 3],
        );
        // A table whose entries reveal the index: backend (i % 3) + 1.
        f.maglev_table(REV_LB, |i| i % 3 + 1);

        let expected = |client: SocketAddrV4| {
            let h = flow_hash_v4(
                raw(*client.ip()),
                raw(LB_VIP),
                port_to_raw(client.port()),
                port_to_raw(80),
                IPPROTO_TCP,
            );
            pods[((h % MAGLEV_TABLE_SIZE) % 3) as usize]
        };
        let mut seen = BTreeMap::new();
        for round in 0..2 {
            for port in 40000..40060u16 {
                let client = sa(CLIENT, port);
                let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")));
                let got = parse_ipv4(&r.data);
                let got = sa(got.dst, got.dport);
                assert_eq!(
                    got,
                    expected(client),
                    "flow from port {port}, round {round}"
                );
                *seen.entry(got).or_insert(0) += 1;
            }
            // Forget every flow: the choice must not come from conntrack.
            f.clear_ct();
        }
        assert_eq!(seen.len(), 3, "all backends used: {seen:?}");
        assert_eq!(f.counter(Counter::NsNewFlow), 120);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn session_affinity_keeps_a_client_on_its_backend() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pods: Vec<SocketAddrV4> = (0..4)
            .map(|i| sa(Ipv4Addr::new(10, 244, 0, 21 + i), 8080))
            .collect();
        for (i, p) in pods.iter().enumerate() {
            f.backend(i as u32 + 1, *p, IPPROTO_TCP, true);
        }
        f.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::AFFINITY,
            REV_LB,
            &[1, 2, 3, 4],
        );

        let mut chosen = Vec::new();
        for port in 41000..41012u16 {
            let r = f.run(
                TC_IN,
                &inbound(tcp_packet(sa(CLIENT, port), vip, TCP_SYN, b"")),
            );
            let out = parse_ipv4(&r.data);
            chosen.push(sa(out.dst, out.dport));
        }
        assert!(
            chosen.iter().all(|c| *c == chosen[0]),
            "one backend for the client: {chosen:?}"
        );
        let aff = f.affinity();
        let id = pods.iter().position(|p| *p == chosen[0]).unwrap() as u32 + 1;
        let entry = aff
            .get(&(raw(CLIENT) as u64, REV_LB, affinity_client::IPV4))
            .expect("affinity entry keyed by the client IPv4");
        assert_eq!(entry.backend_id, id);
        assert_eq!(f.counter(Counter::AffinityHit), 11);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_flow_whose_backend_is_gone_moves_to_a_live_one() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 53);
        let old = sa(Ipv4Addr::new(10, 244, 0, 31), 53);
        let new = sa(Ipv4Addr::new(10, 244, 0, 32), 53);
        let client = sa(CLIENT, 5353);
        f.backend(1, old, IPPROTO_UDP, true);
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[1],
        );
        let q = inbound(udp_packet(client, vip, b"q"));
        assert_frame(
            &f.run(TC_IN, &q).data,
            &inbound(udp_packet(client, old, b"q")),
            "first backend",
        );

        // The endpoint is replaced (the pod cycled): the UDP "flow" follows.
        f.backend(2, new, IPPROTO_UDP, true);
        f.frontend(
            vip,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
            REV_LB,
            &[2],
        );
        f.remove_backend(1);
        assert_frame(
            &f.run(TC_IN, &q).data,
            &inbound(udp_packet(client, new, b"q")),
            "live backend",
        );
        assert_ct(
            &mut f,
            &[
                (
                    ct_key(client, vip, IPPROTO_UDP, ct_dir::FORWARD),
                    ct_val(client, new, 2, REV_LB, ct_flags::LOCAL, 0),
                ),
                (
                    ct_key(new, client, IPPROTO_UDP, ct_dir::REPLY),
                    ct_val(vip, client, 2, REV_LB, ct_flags::LOCAL, 0),
                ),
            ],
        );
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn snat_fails_closed_without_a_node_address_or_a_free_port() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let np = sa(NODE, 30080);
        let pod = sa(REMOTE_POD2, 8080);
        f.backend(4, pod, IPPROTO_TCP, false);
        f.frontend(
            np,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        // One SNAT port only.
        f.node_config(NodeConfig {
            snat_port_min: 61000,
            snat_port_max: 61000,
            ..NodeConfig::default()
        });
        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(sa(CLIENT, 1000), np, TCP_SYN, b"")),
        );
        assert_eq!(r.verdict(), OK);
        assert_eq!(parse_ipv4(&r.data).sport, 61000);
        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(sa(CLIENT2, 1000), np, TCP_SYN, b"")),
        );
        assert_eq!(r.verdict(), SHOT, "no port left");
        assert_eq!(f.counter(Counter::NsNatFailed), 1);
        assert_eq!(f.ct().len(), 2, "only the first flow");

        // No address for the ingress device: nothing to SNAT to.
        f.hash::<u32, u32>(m::NODE_ADDR_V4)
            .remove(&IFINDEX)
            .unwrap();
        let r = f.run(
            TC_IN,
            &inbound(tcp_packet(sa(CLIENT, 1001), np, TCP_SYN, b"")),
        );
        assert_eq!(r.verdict(), SHOT);
        assert_eq!(f.counter(Counter::NsNatFailed), 2);
        assert_eq!(f.ct().len(), 2);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn checksums_stay_right_for_checksum_complete_and_zero_udp_checksums() {
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

        // CHECKSUM_COMPLETE skbs (as many NICs deliver them): the kernel fails the run if the
        // program leaves skb->csum inconsistent with the bytes it wrote.
        let run = |f: &Fixture, prog: &str, frame: &[u8]| {
            f.t.run_flags(prog, frame, BPF_F_TEST_SKB_CHECKSUM_COMPLETE)
                .unwrap_or_else(|e| panic!("{prog} with CHECKSUM_COMPLETE: {e:#}"))
        };
        let r = run(&f, TC_IN, &inbound(udp_packet(client, vip, b"dnat")));
        assert_frame(
            &r.data,
            &inbound(udp_packet(client, pod, b"dnat")),
            "DNAT, CHECKSUM_COMPLETE",
        );
        let r = run(&f, TC_IN, &inbound(udp_packet(client, np, b"snat")));
        let snat = sa(NODE, parse_ipv4(&r.data).sport);
        assert_frame(
            &r.data,
            &inbound(udp_packet(snat, rpod, b"snat")),
            "DNAT+SNAT, CHECKSUM_COMPLETE",
        );
        let r = run(&f, TC_IN, &inbound(udp_packet(rpod, snat, b"back")));
        assert_frame(
            &r.data,
            &inbound(udp_packet(np, client, b"back")),
            "reverse NAT, CHECKSUM_COMPLETE",
        );
        let err = ipv4(
            icmp_opts(5),
            CLIENT,
            LB_VIP,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &udp_packet(vip, client, b"r")),
        );
        let r = run(&f, TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 1);

        // A UDP datagram without a checksum keeps having none.
        let client2 = sa(CLIENT2, 5353);
        let plain = |src: SocketAddrV4, dst: SocketAddrV4| {
            inbound(ipv4(
                IpOpts::default(),
                *src.ip(),
                *dst.ip(),
                IPPROTO_UDP,
                &udp(src, dst, b"nocsum", false),
            ))
        };
        let r = f.run(TC_IN, &plain(client2, vip));
        assert_eq!(r.data, plain(client2, pod));
        let l4 = parse_ipv4(&r.data).l4;
        assert_eq!(&l4[6..8], &[0, 0]);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn what_is_not_an_exposed_frontend_passes_untouched() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        // A ClusterIP is served at the socket layer only, never on the device.
        let cip = sa(CLUSTER_IP, 80);
        f.backend(1, sa(LOCAL_POD, 8080), IPPROTO_TCP, true);
        f.frontend(
            cip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::CLUSTER_IP,
            9,
            &[1],
        );

        let mut arp = ethernet([0xff; 6], PEER_MAC, 0x0806, &[0u8; 28]);
        arp.extend_from_slice(&[0u8; 18]);
        let ipv6 = ethernet(NODE_MAC, PEER_MAC, 0x86dd, &[0x60u8; 60]);
        let mut later_fragment = tcp_packet(sa(CLIENT, 1), sa(LB_VIP, 80), TCP_ACK, b"tail");
        later_fragment[6..8].copy_from_slice(&0x00b9u16.to_be_bytes()); // offset 185 * 8
        later_fragment[10] = 0;
        later_fragment[11] = 0;
        let c = progtest::checksum(0, &later_fragment[..20]);
        later_fragment[10..12].copy_from_slice(&c.to_be_bytes());
        let cases = [
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
            ("ARP", arp),
            ("IPv6", ipv6),
            ("later fragment", inbound(later_fragment)),
            (
                "ICMP echo",
                inbound(ipv4(
                    IpOpts::default(),
                    CLIENT,
                    LB_VIP,
                    IPPROTO_ICMP,
                    &icmp(8, 0, 1, b"ping"),
                )),
            ),
        ];
        for (what, frame) in cases {
            for prog in [TC_IN, TC_OUT] {
                let r = f.run(prog, &frame);
                assert_eq!(r.verdict(), PASS, "{what} ({prog})");
                assert_eq!(r.data, frame, "{what} ({prog}) unchanged");
            }
        }
        assert!(f.ct().is_empty());
        assert_eq!(f.counter(Counter::NsNewFlow), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Direct server return (`--lb-mode dsr`): node A (the one the client reached) DNATs, keeps the
// client's address and carries the frontend in an IP option; node B (the backend's) records the
// reply translation from the option and removes it.

/// Node B's address on its device (the skb's loopback in these tests).
const NODE_B: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);

/// The DSR option naming `frontend`, byte for byte: type 0x9a, length 8, port, address.
fn dsr_option(frontend: SocketAddrV4) -> [u8; 8] {
    let mut o = [DSR_OPT_TYPE, DSR_OPT_LEN, 0, 0, 0, 0, 0, 0];
    o[2..4].copy_from_slice(&frontend.port().to_be_bytes());
    o[4..8].copy_from_slice(&frontend.ip().octets());
    o
}

/// The IP packet `src` -> `dst` carrying `l4` (checksummed for `src`/`dst`: options are not in
/// the pseudo-header) with the DSR option naming `frontend`.
fn dsr_packet(
    opts: IpOpts,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    frontend: SocketAddrV4,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    ipv4_with_options(opts, *src.ip(), *dst.ip(), proto, &dsr_option(frontend), l4)
}

fn syn_segment(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    tcp(src, dst, 1000, 0, TCP_SYN, b"")
}

fn dsr_mode(f: &mut Fixture) {
    f.node_config(NodeConfig {
        flags: node_flags::DSR,
        ..NodeConfig::default()
    });
}

/// Runs `ip` commands in the test's namespace.
fn ip_cmds(cmds: &[&[&str]]) {
    for args in cmds {
        let st = Command::new("ip").args(*args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    }
}

/// Node B's pods: a device `p0` with 10.244.1.1/24, so REMOTE_POD (10.244.1.9) is reached
/// directly through another device than the packets' (a pod of this node); forwarding on.
fn pods_behind_p0() {
    ip_cmds(&[
        &["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
        &["link", "set", "p1", "up"],
        &["link", "set", "p0", "up"],
        &["addr", "add", "10.244.1.1/24", "dev", "p0"],
    ]);
    // /proc/sys/net is the namespace of the thread that opens it: this one's.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_tcp_to_a_remote_backend_keeps_the_client_and_carries_the_frontend_in_an_option() {
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
            IpOpts::default(),
            client,
            pod,
            vip,
            IPPROTO_TCP,
            &syn_segment(client, pod),
        ));
        assert_frame(&r.data, &want, "SYN with the DSR option");
        // Spelled out: IHL 7, total length 20 + 8 + 20, the option right after the fixed header.
        let ip = &r.data[ETH_HLEN..];
        assert_eq!(ip[0], 0x47);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 48);
        assert_eq!(&ip[20..28], &[0x9a, 8, 0, 80, 203, 0, 113, 10]);
        // The TCP checksum, from scratch over the client -> backend pseudo-header.
        let seg = &ip[28..];
        let ps = progtest::pseudo_sum(CLIENT, REMOTE_POD, IPPROTO_TCP, seg.len());
        assert_eq!(progtest::fold(progtest::sum(ps, seg)), 0xffff);
        // A FORWARD entry only: the replies do not come back through this node.
        assert_ct(
            &mut f,
            &[(
                ct_key(client, vip, IPPROTO_TCP, ct_dir::FORWARD),
                ct_val(client, pod, 4, REV_LB, ct_flags::DSR, TCP_SYN),
            )],
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);

        // Later segments: DNAT only, no option.
        let ack = inbound(tcp_packet(client, vip, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"));
        let r = f.run(TC_IN, &ack);
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n")),
            "ACK without the option",
        );
        // A retransmitted SYN carries it again.
        let r = f.run(TC_IN, &syn);
        assert_frame(&r.data, &want, "retransmitted SYN");
        assert_eq!(f.counter(Counter::NsTracked), 2);
        assert_eq!(f.counter(Counter::NsNewFlow), 1);
        assert_eq!(f.ct().len(), 1);

        // CHECKSUM_COMPLETE: the kernel fails the run if skb->csum no longer matches.
        let client2 = sa(CLIENT, 40001);
        let r =
            f.t.run_flags(
                TC_IN,
                &inbound(tcp_packet(client2, vip, TCP_SYN, b"")),
                BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
            )
            .unwrap_or_else(|e| panic!("CHECKSUM_COMPLETE: {e:#}"));
        assert_frame(
            &r.data,
            &inbound(dsr_packet(
                IpOpts::default(),
                client2,
                pod,
                vip,
                IPPROTO_TCP,
                &syn_segment(client2, pod),
            )),
            "SYN with the option, CHECKSUM_COMPLETE",
        );

        // Local backends are unaffected by the mode: DNAT, both entries, no option.
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
            "local backend in DSR mode",
        );
        assert_eq!(f.ct().len(), 4);
        assert_eq!(f.counter(Counter::NsDsrFallback), 0);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_udp_carries_the_option_on_every_datagram() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        dsr_mode(&mut f);
        let ext = sa(EXTERNAL_IP, 53);
        let pod = sa(REMOTE_POD, 5353);
        let client = sa(CLIENT, 5300);
        f.backend(4, pod, IPPROTO_UDP, false);
        f.frontend(
            ext,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::EXTERNAL_IP,
            REV_LB,
            &[4],
        );
        for (i, payload) in [&b"first"[..], b"second", b"third and odd"]
            .iter()
            .enumerate()
        {
            let flags = if i == 2 {
                BPF_F_TEST_SKB_CHECKSUM_COMPLETE
            } else {
                0
            };
            let r =
                f.t.run_flags(TC_IN, &inbound(udp_packet(client, ext, payload)), flags)
                    .unwrap();
            assert_eq!(r.verdict(), OK);
            assert_frame(
                &r.data,
                &inbound(dsr_packet(
                    IpOpts::default(),
                    client,
                    pod,
                    ext,
                    IPPROTO_UDP,
                    &udp(client, pod, payload, true),
                )),
                &format!("datagram {i}"),
            );
        }
        assert_ct(
            &mut f,
            &[(
                ct_key(client, ext, IPPROTO_UDP, ct_dir::FORWARD),
                ct_val(client, pod, 4, REV_LB, ct_flags::DSR, 0),
            )],
        );
        assert_eq!(f.counter(Counter::NsNewFlow), 1);
        assert_eq!(f.counter(Counter::NsTracked), 2);

        // A datagram without a checksum keeps having none.
        let nocsum = |dst: SocketAddrV4, opt: bool| {
            let d = udp(client, dst, b"nocsum", false);
            if opt {
                dsr_packet(IpOpts::default(), client, dst, ext, IPPROTO_UDP, &d)
            } else {
                ipv4(IpOpts::default(), CLIENT, *dst.ip(), IPPROTO_UDP, &d)
            }
        };
        let r = f.run(TC_IN, &inbound(nocsum(ext, false)));
        assert_eq!(r.data, inbound(nocsum(pod, true)));

        // The client's port unreachable about a reply (which node B sent from the frontend)
        // comes to this node, the frontend's: it goes on to the pod, quoting what the pod sent.
        let reply = udp_packet(ext, client, b"late answer");
        let err = ipv4(
            icmp_opts(3),
            CLIENT,
            EXTERNAL_IP,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &reply),
        );
        let r = f.run(TC_IN, &inbound(err));
        assert_eq!(r.verdict(), OK);
        let want = ipv4(
            icmp_opts(3),
            CLIENT,
            REMOTE_POD,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &udp_packet(pod, client, b"late answer")),
        );
        assert_frame(&r.data, &inbound(want), "client's error towards the pod");
        assert_eq!(f.counter(Counter::NsIcmpTranslated), 1);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_option_for_a_local_backend_is_stripped_and_the_reply_leaves_from_the_frontend() {
    require_root!();
    lab(|| {
        let vip = sa(LB_VIP, 80);
        let pod = sa(REMOTE_POD, 8080);
        let client = sa(CLIENT, 40000);

        // Node A makes the packet (no route here yet: it leaves A unrouted, TTL unchanged).
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
        assert_eq!(
            from_a,
            inbound(dsr_packet(
                IpOpts::default(),
                client,
                pod,
                vip,
                IPPROTO_TCP,
                &syn_segment(client, pod)
            ))
        );

        // Node B: the same services (programmed by its own agent: the pod is local here).
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
        // Exactly the DNATed SYN without the option (IHL 5, length, checksums).
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_SYN, b"")),
            "SYN after the option was removed",
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
        assert_eq!(b.counter(Counter::NsTracked), 1);

        // The client's next segments (no option) reach the pod through B untouched.
        let ack = inbound(tcp_packet(client, pod, TCP_ACK, b"data"));
        let r = b.run(TC_IN, &ack);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, ack);
        assert_eq!(b.ct().len(), 1);

        // CHECKSUM_COMPLETE through the strip.
        let client2 = sa(CLIENT, 40002);
        let r =
            b.t.run_flags(
                TC_IN,
                &inbound(dsr_packet(
                    IpOpts::default(),
                    client2,
                    pod,
                    vip,
                    IPPROTO_TCP,
                    &syn_segment(client2, pod),
                )),
                BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
            )
            .unwrap_or_else(|e| panic!("CHECKSUM_COMPLETE: {e:#}"));
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client2, pod, TCP_SYN, b"")),
            "strip, CHECKSUM_COMPLETE",
        );
        assert_eq!(b.counter(Counter::NsDsrReceived), 2);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_udp_on_the_backend_node_refreshes_one_entry_and_translates_the_pods_icmp_errors() {
    require_root!();
    lab(|| {
        pods_behind_p0();
        let mut b = Fixture::new();
        dsr_mode(&mut b);
        b.node_addr(IFINDEX, NODE_B);
        let ext = sa(EXTERNAL_IP, 53);
        let pod = sa(REMOTE_POD, 5353);
        let client = sa(CLIENT, 5300);
        b.backend(4, pod, IPPROTO_UDP, true);
        b.frontend(
            ext,
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::EXTERNAL_IP,
            REV_LB,
            &[4],
        );
        b.member(REV_LB, 4);
        let sent = udp_packet(client, ext, b"anybody?");
        let with_opt = |payload: &[u8]| {
            inbound(dsr_packet(
                IpOpts::default(),
                client,
                pod,
                ext,
                IPPROTO_UDP,
                &udp(client, pod, payload, true),
            ))
        };
        for _ in 0..2 {
            let r = b.run(TC_IN, &with_opt(b"anybody?"));
            assert_eq!(r.verdict(), OK);
            assert_frame(
                &r.data,
                &inbound(udp_packet(client, pod, b"anybody?")),
                "datagram without the option",
            );
        }
        assert_ct(
            &mut b,
            &[(
                ct_key(pod, client, IPPROTO_UDP, ct_dir::REPLY),
                ct_val(ext, client, 0, REV_LB, ct_flags::DSR | ct_flags::LOCAL, 0),
            )],
        );
        assert_eq!(b.counter(Counter::NsDsrReceived), 2);

        // The answer leaves from the frontend.
        let r = b.run(TC_OUT, &outbound(udp_packet(pod, client, b"yes")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &outbound(udp_packet(ext, client, b"yes")),
            "answer from the frontend",
        );

        // The pod's port unreachable quotes the datagram as it got it (no option): the client
        // gets it from the frontend, quoting what it sent, as for a local backend.
        let delivered = udp_packet(client, pod, b"anybody?");
        let err = ipv4(
            icmp_opts(0x77),
            REMOTE_POD,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &delivered),
        );
        let r = b.run(TC_OUT, &outbound(err));
        assert_eq!(r.verdict(), OK);
        let want = ipv4(
            icmp_opts(0x77),
            EXTERNAL_IP,
            CLIENT,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &sent),
        );
        assert_frame(&r.data, &outbound(want), "pod's port unreachable");
        assert_eq!(b.counter(Counter::NsIcmpTranslated), 1);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_option_not_for_this_node_passes_untouched() {
    require_root!();
    lab(|| {
        pods_behind_p0();
        // Another node's pods, behind a gateway.
        ip_cmds(&[
            &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            &["link", "set", "d1", "up"],
            &["link", "set", "d0", "up"],
            &["addr", "add", "100.64.0.1/24", "dev", "d0"],
            &[
                "route",
                "add",
                "10.244.2.0/24",
                "via",
                "100.64.0.2",
                "dev",
                "d0",
            ],
        ]);
        let mut b = Fixture::new();
        dsr_mode(&mut b);
        b.node_addr(IFINDEX, NODE_B);
        let vip = sa(LB_VIP, 80);
        let cip = sa(CLUSTER_IP, 80);
        let pod = sa(REMOTE_POD, 8080);
        let host = sa(NODE_B, 9090);
        let elsewhere = sa(Ipv4Addr::new(10, 244, 2, 9), 8080);
        let nowhere = sa(Ipv4Addr::new(10, 250, 0, 9), 8080);
        let client = sa(CLIENT, 40000);
        b.backend(4, pod, IPPROTO_TCP, true);
        b.backend(5, host, IPPROTO_TCP, true);
        b.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4, 5],
        );
        b.member(REV_LB, 4);
        b.member(REV_LB, 5);
        b.frontend(
            cip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::CLUSTER_IP,
            REV_LB + 1,
            &[4],
        );
        let with = |dst: SocketAddrV4, options: &[u8]| {
            inbound(ipv4_with_options(
                IpOpts::default(),
                CLIENT,
                *dst.ip(),
                IPPROTO_TCP,
                options,
                &syn_segment(client, dst),
            ))
        };
        let mut nops_first = vec![1u8, 1, 1, 1];
        nops_first.extend_from_slice(&dsr_option(vip));
        let mut wrong_len = dsr_option(vip);
        wrong_len[1] = 6;
        let cases = [
            (
                "to another node's pod (via a gateway)",
                with(elsewhere, &dsr_option(vip)),
            ),
            (
                "to an address without a route",
                with(nowhere, &dsr_option(vip)),
            ),
            (
                "naming a frontend this node does not have",
                with(pod, &dsr_option(sa(Ipv4Addr::new(203, 0, 113, 77), 80))),
            ),
            (
                "naming another port of the frontend",
                with(pod, &dsr_option(sa(LB_VIP, 81))),
            ),
            ("naming a ClusterIP", with(pod, &dsr_option(cip))),
            ("another option (NOPs)", with(pod, &[1, 1, 1, 1])),
            ("the option not first", with(pod, &nops_first)),
            ("a wrong length", with(pod, &wrong_len)),
        ];
        for (what, frame) in cases {
            let r = b.run(TC_IN, &frame);
            assert_eq!(r.verdict(), PASS, "{what}");
            assert_eq!(r.data, frame, "{what}: unchanged");
        }
        assert!(b.ct().is_empty(), "no state");
        assert_eq!(b.counter(Counter::NsDsrReceived), 0);
        // The ones carrying ferry's option (the first five) are counted.
        assert_eq!(b.counter(Counter::NsDsrIgnored), 5);

        // The positive controls of the same setup: the frontend, to the local pod.
        let r = b.run(TC_IN, &with(pod, &dsr_option(vip)));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_SYN, b"")),
            "to the local pod",
        );
        // A NodePort names node A's address (a cluster node's): B knows the port on its own
        // address.
        let np_a = sa(NODE, 30080);
        b.cluster_node(NODE);
        b.frontend(
            sa(NODE_B, 30080),
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        b.member(REV_NODEPORT, 4);
        let client2 = sa(CLIENT2, 40000);
        let r = b.run(
            TC_IN,
            &inbound(dsr_packet(
                IpOpts::default(),
                client2,
                pod,
                np_a,
                IPPROTO_TCP,
                &syn_segment(client2, pod),
            )),
        );
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client2, pod, TCP_SYN, b"")),
            "NodePort of node A",
        );
        // A hostNetwork backend: the node's own address.
        let r = b.run(
            TC_IN,
            &inbound(dsr_packet(
                IpOpts::default(),
                client,
                host,
                vip,
                IPPROTO_TCP,
                &syn_segment(client, host),
            )),
        );
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, host, TCP_SYN, b"")),
            "hostNetwork backend",
        );
        assert_ct(
            &mut b,
            &[
                (
                    ct_key(pod, client, IPPROTO_TCP, ct_dir::REPLY),
                    ct_val(
                        vip,
                        client,
                        0,
                        REV_LB,
                        ct_flags::DSR | ct_flags::LOCAL,
                        TCP_SYN,
                    ),
                ),
                (
                    ct_key(pod, client2, IPPROTO_TCP, ct_dir::REPLY),
                    ct_val(
                        np_a,
                        client2,
                        0,
                        REV_NODEPORT,
                        ct_flags::DSR | ct_flags::LOCAL,
                        TCP_SYN,
                    ),
                ),
                (
                    ct_key(host, client, IPPROTO_TCP, ct_dir::REPLY),
                    ct_val(
                        vip,
                        client,
                        0,
                        REV_LB,
                        ct_flags::DSR | ct_flags::LOCAL,
                        TCP_SYN,
                    ),
                ),
            ],
        );
        assert_eq!(b.counter(Counter::NsDsrReceived), 3);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_is_routed_through_the_fib_and_falls_back_when_the_option_does_not_fit() {
    require_root!();
    lab(|| {
        // The route to the backends: a next hop with a resolved neighbour, MTU 1000.
        ip_cmds(&[
            &[
                "link",
                "add",
                "d0",
                "address",
                "02:00:00:00:aa:01",
                "mtu",
                "1000",
                "type",
                "veth",
                "peer",
                "name",
                "d1",
            ],
            &["link", "set", "d1", "up"],
            &["link", "set", "d0", "up"],
            &["addr", "add", "100.64.0.1/24", "dev", "d0"],
            &[
                "neigh",
                "add",
                "100.64.0.2",
                "lladdr",
                "02:00:00:00:aa:02",
                "dev",
                "d0",
                "nud",
                "permanent",
            ],
            &[
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                "100.64.0.2",
                "dev",
                "d0",
            ],
        ]);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        let gw: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];
        let me: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
        let routed = |packet: Vec<u8>| ethernet(gw, me, ETH_P_IP, &packet);
        let ttl63 = IpOpts {
            ttl: 63,
            ..IpOpts::default()
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
        // 20 + 8 + payload: 992 bytes grow to exactly the MTU, 993 would not fit.
        let fits = [0x66u8; 964];
        let too_big = [0x67u8; 965];

        // A datagram that fits with the option: redirected to the next hop, TTL 63.
        let client = sa(CLIENT, 5300);
        let r = f.run(TC_IN, &inbound(udp_packet(client, vip, &fits)));
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(
            &r.data,
            &routed(dsr_packet(
                ttl63,
                client,
                pod,
                vip,
                IPPROTO_UDP,
                &udp(client, pod, &fits, true),
            )),
            "routed with the option",
        );
        assert_eq!(r.data.len(), ETH_HLEN + 1000);
        assert_eq!(f.counter(Counter::NsDsrFallback), 0);

        // The same flow's bigger datagram goes without the option (B knows the flow).
        let r = f.run(TC_IN, &inbound(udp_packet(client, vip, &too_big)));
        assert_eq!(r.verdict(), REDIRECT);
        let mut plain = udp_packet(client, pod, &too_big);
        plain = reipv4_ttl(&plain, 63);
        assert_frame(&r.data, &routed(plain), "too big for the option");
        assert_eq!(f.counter(Counter::NsDsrFallback), 1);

        // A new flow whose first datagram is too big for the option: SNAT for the whole flow.
        let client2 = sa(CLIENT2, 5300);
        let r = f.run(TC_IN, &inbound(udp_packet(client2, vip, &too_big)));
        assert_eq!(r.verdict(), REDIRECT);
        let out = parse_ipv4(&r.data);
        let snat = sa(NODE, out.sport);
        assert_frame(
            &r.data,
            &routed(reipv4_ttl(&udp_packet(snat, pod, &too_big), 63)),
            "SNAT fallback",
        );
        assert_eq!(f.counter(Counter::NsDsrFallback), 2);
        let ct = f.ct();
        let fwd = ct[&ct_key(client2, vip, IPPROTO_UDP, ct_dir::FORWARD)];
        assert_eq!(fwd.flags, ct_flags::SNAT);
        assert!(ct.contains_key(&ct_key(pod, snat, IPPROTO_UDP, ct_dir::REPLY)));
        // ... and its later small datagrams stay SNATed.
        let r = f.run(TC_IN, &inbound(udp_packet(client2, vip, b"small")));
        assert_frame(
            &r.data,
            &routed(reipv4_ttl(&udp_packet(snat, pod, b"small"), 63)),
            "SNAT flow stays SNAT",
        );

        // TCP: the SYN is routed with the option.
        let tvip = sa(LB_VIP, 80);
        let tpod = sa(REMOTE_POD, 8080);
        f.backend(5, tpod, IPPROTO_TCP, false);
        f.frontend(
            tvip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB + 1,
            &[5],
        );
        let tclient = sa(CLIENT, 40000);
        let r = f.run(TC_IN, &inbound(tcp_packet(tclient, tvip, TCP_SYN, b"")));
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(
            &r.data,
            &routed(dsr_packet(
                ttl63,
                tclient,
                tpod,
                tvip,
                IPPROTO_TCP,
                &syn_segment(tclient, tpod),
            )),
            "SYN routed with the option",
        );
        // A full-size segment that starts a flow (this node lost it): DSR all the same, without
        // the option; the backend's node may still know the flow.
        let tclient2 = sa(CLIENT2, 40000);
        let seg = [0x68u8; 953]; // 20 + 20 + 953 + 8 > 1000
        let r = f.run(TC_IN, &inbound(tcp_packet(tclient2, tvip, TCP_ACK, &seg)));
        assert_eq!(r.verdict(), REDIRECT);
        assert_frame(
            &r.data,
            &routed(reipv4_ttl(&tcp_packet(tclient2, tpod, TCP_ACK, &seg), 63)),
            "mid-flow segment without the option",
        );
        assert_eq!(
            f.ct()[&ct_key(tclient2, tvip, IPPROTO_TCP, ct_dir::FORWARD)].flags,
            ct_flags::DSR
        );
        assert_eq!(f.counter(Counter::NsDsrFallback), 3);
        assert_eq!(f.counter(Counter::NsFibPassed), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Hostile packets (issue 9): forged DSR options, SYNs on live flows, floods of rejects, lost
// flows and a full conntrack map.

/// An address no node, pod or client has.
const FORGED: Ipv4Addr = Ipv4Addr::new(6, 6, 6, 6);

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn dsr_options_are_honoured_only_when_they_can_be_verified() {
    require_root!();
    lab(|| {
        pods_behind_p0();
        let mut b = Fixture::new();
        b.node_addr(IFINDEX, NODE_B);
        let np_b = sa(NODE_B, 30080);
        let np_a = sa(NODE, 30080);
        let vip = sa(LB_VIP, 80);
        let vip2 = sa(LB_VIP, 81);
        let pod = sa(REMOTE_POD, 8080);
        let other = sa(REMOTE_POD2, 8080);
        b.backend(4, pod, IPPROTO_TCP, true);
        b.backend(6, other, IPPROTO_TCP, true);
        b.backend(7, sa(REMOTE_POD, 5353), IPPROTO_UDP, true);
        b.frontend(
            np_b,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT,
            &[4],
        );
        b.member(REV_NODEPORT, 4);
        b.frontend(
            sa(NODE_B, 30053),
            IPPROTO_UDP,
            scope::EXTERNAL,
            svc_flags::NODE_PORT,
            REV_NODEPORT + 1,
            &[7],
        );
        b.member(REV_NODEPORT + 1, 7);
        b.frontend(
            vip,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB,
            &[4],
        );
        b.member(REV_LB, 4);
        b.frontend(
            vip2,
            IPPROTO_TCP,
            scope::EXTERNAL,
            svc_flags::LOAD_BALANCER,
            REV_LB + 1,
            &[6],
        );
        b.member(REV_LB + 1, 6);
        b.cluster_node(NODE);
        let with = |src: SocketAddrV4, dst: SocketAddrV4, frontend: SocketAddrV4, flags: u8| {
            inbound(dsr_packet(
                IpOpts::default(),
                src,
                dst,
                frontend,
                IPPROTO_TCP,
                &tcp(src, dst, 1000, 0, flags, b""),
            ))
        };
        let untouched = |b: &mut Fixture, frame: &[u8], what: &str| {
            let r = b.run(TC_IN, frame);
            assert_eq!(r.verdict(), PASS, "{what}");
            assert_eq!(r.data, frame, "{what}: unchanged");
        };

        // SNAT mode (the default): no option is honoured, not even a valid one; the issue's
        // datagram naming 6.6.6.6 with a NodePort's port passes untouched too.
        let client = sa(CLIENT, 40000);
        for frontend in [np_a, vip, sa(FORGED, 30080)] {
            untouched(
                &mut b,
                &with(client, pod, frontend, TCP_SYN),
                &format!("SNAT mode, option {frontend}"),
            );
        }
        let udp_pod = sa(REMOTE_POD, 5353);
        let forged_udp = inbound(dsr_packet(
            IpOpts::default(),
            client,
            udp_pod,
            sa(FORGED, 30053),
            IPPROTO_UDP,
            &udp(client, udp_pod, b"who are you", true),
        ));
        untouched(&mut b, &forged_udp, "SNAT mode, the issue's datagram");
        assert!(b.ct().is_empty(), "no state in SNAT mode");
        assert_eq!(b.counter(Counter::NsDsrIgnored), 4);

        // DSR mode: only what can be verified.
        dsr_mode(&mut b);
        untouched(&mut b, &forged_udp, "a NodePort on no node's address (UDP)");
        let cases = [
            (
                "a NodePort on no node's address",
                with(client, pod, sa(FORGED, 30080), TCP_SYN),
            ),
            (
                "a frontend the destination is no backend of",
                with(client, other, vip, TCP_SYN),
            ),
            (
                "a TCP segment other than a SYN, with no flow",
                with(client, pod, vip, TCP_ACK),
            ),
        ];
        for (what, frame) in &cases {
            untouched(&mut b, frame, what);
        }
        assert!(b.ct().is_empty(), "no state from what was not verified");
        assert_eq!(b.counter(Counter::NsDsrIgnored), 8);

        // Never over an entry DSR did not make: a live flow through this node's own frontend.
        let client2 = sa(CLIENT2, 40000);
        let r = b.run(TC_IN, &inbound(tcp_packet(client2, vip, TCP_SYN, b"")));
        assert_eq!(r.verdict(), OK);
        let local_flow = b.ct();
        assert_eq!(local_flow.len(), 2);
        let r = b.run(TC_IN, &with(client2, pod, np_a, TCP_SYN));
        assert_eq!(
            r.verdict(),
            SHOT,
            "a valid option on a local flow's 5-tuple"
        );
        assert_eq!(b.counter(Counter::NsDsrClashDrop), 1);
        assert_eq!(b.ct(), local_flow, "the local flow keeps its entries");

        // A DSR flow: made by its SYN, refreshed by a retransmitted one.
        let client3 = sa(CLIENT, 40003);
        for _ in 0..2 {
            let r = b.run(TC_IN, &with(client3, pod, vip, TCP_SYN));
            assert_eq!(r.verdict(), OK);
        }
        let rkey = ct_key(pod, client3, IPPROTO_TCP, ct_dir::REPLY);
        let dsr_entry = b.ct()[&rkey];
        assert_eq!(dsr_entry.nat_saddr, raw(LB_VIP));
        // Another frontend's SYN on it while it lives: dropped, the entry kept.
        let r = b.run(TC_IN, &with(client3, pod, np_a, TCP_SYN));
        assert_eq!(r.verdict(), SHOT, "another frontend on a live DSR flow");
        assert_eq!(b.counter(Counter::NsDsrClashDrop), 2);
        assert_eq!(b.ct()[&rkey], dsr_entry);
        // Once it is closing, a new flow may take the 5-tuple.
        b.ct_put(
            rkey,
            Ct4Value {
                tcp_flags: TCP_SYN | TCP_FIN,
                ..dsr_entry
            },
        );
        let r = b.run(TC_IN, &with(client3, pod, np_a, TCP_SYN));
        assert_eq!(r.verdict(), OK, "a finished DSR flow makes room");
        assert_eq!(b.ct()[&rkey].nat_saddr, raw(NODE));
        assert_eq!(b.ct()[&rkey].tcp_flags, TCP_SYN);
        assert_eq!(b.counter(Counter::NsDsrReceived), 3);
        assert_eq!(b.counter(Counter::NsDsrIgnored), 8);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_syn_on_a_live_flows_reply_tuple_is_dropped_and_a_finished_flow_is_forgotten() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let vip2 = sa(LB_VIP, 81);
        let pod = sa(LOCAL_POD, 8080);
        f.backend(1, pod, IPPROTO_TCP, true);
        for (addr, rev) in [(vip, REV_LB), (vip2, REV_LB + 1)] {
            f.frontend(
                addr,
                IPPROTO_TCP,
                scope::EXTERNAL,
                svc_flags::LOAD_BALANCER | svc_flags::ETP_LOCAL,
                rev,
                &[1],
            );
        }
        let client = sa(CLIENT, 40002);
        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")));
        assert_eq!(r.verdict(), OK);
        let live = f.ct();

        // A SYN straight to the pod on the live flow's 5-tuple (anyone can forge it).
        let direct = inbound(tcp_packet(client, pod, TCP_SYN, b""));
        let r = f.run(TC_IN, &direct);
        assert_eq!(
            r.verdict(),
            SHOT,
            "dropped, as netfilter drops a clashing SYN"
        );
        assert_eq!(f.counter(Counter::NsCtClashDrop), 1);
        assert_eq!(f.ct(), live, "the live flow keeps both entries");
        // ... and it goes on.
        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_ACK, b"more")));
        assert_eq!(r.verdict(), OK);
        assert_frame(
            &r.data,
            &inbound(tcp_packet(client, pod, TCP_ACK, b"more")),
            "the live flow after the SYN",
        );

        // A new flow through another frontend to the same pod, from the same client port: its
        // reply would take the live flow's entry. Dropped; nothing of it is left.
        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip2, TCP_SYN, b"")));
        assert_eq!(r.verdict(), SHOT);
        assert_eq!(f.counter(Counter::NsCtClashDrop), 2);
        assert_eq!(f.ct().len(), 2);
        assert!(
            !f.ct()
                .contains_key(&ct_key(client, vip2, IPPROTO_TCP, ct_dir::FORWARD))
        );

        // A flow that was reset is over (idle past its timeout too: agent_common::ct_over):
        // the direct SYN forgets it and passes.
        let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_RST, b"")));
        assert_eq!(r.verdict(), OK);
        let r = f.run(TC_IN, &direct);
        assert_eq!(r.verdict(), PASS);
        assert_eq!(r.data, direct);
        assert!(f.ct().is_empty(), "the reset flow is forgotten");

        // A flow's own reply entry whose forward half was lost is taken over by the flow.
        let client2 = sa(CLIENT, 40003);
        f.run(TC_IN, &inbound(tcp_packet(client2, vip, TCP_SYN, b"")));
        let fwd = ct_key(client2, vip, IPPROTO_TCP, ct_dir::FORWARD);
        f.hash::<Ct4Key, Ct4Value>(m::CT_V4).remove(&fwd).unwrap();
        let r = f.run(TC_IN, &inbound(tcp_packet(client2, vip, TCP_SYN, b"")));
        assert_eq!(r.verdict(), OK);
        assert_eq!(f.ct().len(), 2);
        assert_eq!(f.counter(Counter::NsCtClashDrop), 2);
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
        let from = |i: u8| sa(Ipv4Addr::new(198, 51, 100, 100 + i), 5353);

        // The node's budget: 1 a second, 3 at once; ten sources, one datagram each.
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

        // One source's budget: 6 at once (the kernel's burst), then one a minute here.
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
        assert_eq!(g.counter(Counter::NsRejectLimited), 0);
    });
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_lost_flow_comes_back_to_its_backend_and_a_full_table_is_counted() {
    require_root!();
    lab(|| {
        let mut f = Fixture::new();
        let vip = sa(LB_VIP, 80);
        let pods: Vec<SocketAddrV4> = (0..3)
            .map(|i| sa(Ipv4Addr::new(10, 244, 0, 31 + i), 8080))
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
        // The slot is the flow hash's: slot (hash % 3) + 1, backend id = slot here.
        let expected = |client: SocketAddrV4| {
            let h = flow_hash_v4(
                raw(*client.ip()),
                raw(LB_VIP),
                port_to_raw(client.port()),
                port_to_raw(80),
                IPPROTO_TCP,
            );
            pods[(h % 3) as usize]
        };
        let backend_of = |r: &progtest::TestRun| {
            let p = parse_ipv4(&r.data);
            sa(p.dst, p.dport)
        };
        let ports = 40000..40024u16;
        let mut used = BTreeMap::new();
        for port in ports.clone() {
            let client = sa(CLIENT, port);
            let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_SYN, b"")));
            assert_eq!(backend_of(&r), expected(client), "port {port}");
            *used.entry(backend_of(&r)).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 3, "every backend serves: {used:?}");

        // Every flow's entries are lost (evicted): each flow's next segment makes it again, on
        // the backend it had, and is counted.
        f.clear_ct();
        for port in ports.clone() {
            let client = sa(CLIENT, port);
            let r = f.run(TC_IN, &inbound(tcp_packet(client, vip, TCP_ACK, b"data")));
            assert_eq!(r.verdict(), OK);
            assert_frame(
                &r.data,
                &inbound(tcp_packet(client, expected(client), TCP_ACK, b"data")),
                &format!("lost flow from port {port}"),
            );
        }
        assert_eq!(f.counter(Counter::NsCtLostFlow), ports.len() as u64);
        assert_eq!(f.counter(Counter::NsNewFlowCtFull), 0);

        // New flows while the agent measured the table 95 % full are counted; at 10 % not.
        f.ct_fill(950);
        f.run(
            TC_IN,
            &inbound(tcp_packet(sa(CLIENT2, 1), vip, TCP_SYN, b"")),
        );
        f.ct_fill(100);
        f.run(
            TC_IN,
            &inbound(tcp_packet(sa(CLIENT2, 2), vip, TCP_SYN, b"")),
        );
        assert_eq!(f.counter(Counter::NsNewFlowCtFull), 1);
        assert_eq!(f.counter(Counter::NsNewFlow), 2 * ports.len() as u64 + 2);
    });
}
