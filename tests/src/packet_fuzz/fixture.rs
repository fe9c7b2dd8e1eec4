//! The packet fuzzer's world: ferry's whole eBPF object loaded into the kernel (verifier
//! included) with its maps in a private bpffs, the TC programs loaded but attached nowhere,
//! the maps programmed as the agent would for a handful of frontends of every kind, a few
//! flows made by real packets, and a network namespace whose FIB routes pods and clients (so
//! SNAT and DSR paths redirect as on a node). Runs on the thread of `progtest::isolated`.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, Ip6,
    MAGLEV_TABLE_SIZE, Member4Key, Member6Key, NodeConfig, RevNat4, RevNat6, SrcRange4, Svc4Key,
    Svc6Key, SvcValue, backend_flags, maglev_key, maps as m,
    net::{ip4_to_raw, ip6_to_raw, port_to_raw},
    node_flags, scope,
    stats::Counter,
    svc_flags,
};
use anyhow::{Context as _, Result, ensure};
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};

use super::{
    case::{Prog, ether},
    v6,
};
use crate::progtest::{
    BPF_F_TEST_SKB_CHECKSUM_COMPLETE, IPPROTO_TCP, IPPROTO_UDP, Ip6Opts, IpOpts, ProgTest, TCP_SYN,
    TestRun, ipv4, ipv4_with_options, ipv6, net::Family, next_hop, tcp, tcp6, udp, udp6,
};

/// The skb's device in a test run (the namespace's loopback) and the node's address on it.
pub const IFINDEX: u32 = 1;
pub const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const OUTSIDER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
pub const LB_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const LB_RANGES: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const LB_NO_ENDPOINTS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
pub const LB_ETP_LOCAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 13);
pub const LB_BROKEN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 14);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 9);
pub const REMOTE_POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// SNAT source ports: a small range, so that generated replies hit taken ports.
pub const SNAT_PORTS: (u16, u16) = (61_000, 61_099);

/// Verdicts (TCX_NEXT, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT).
pub const PASS: i32 = -1;
pub const OK: i32 = 0;
pub const SHOT: i32 = 2;
pub const REDIRECT: i32 = 7;

fn raw(ip: Ipv4Addr) -> u32 {
    ip4_to_raw(ip.octets())
}

/// An address and port with the protocol, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

/// Conntrack and affinity contents (what a run may create, change or remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub ct: BTreeMap<Ct4Key, Ct4Value>,
    pub ct6: BTreeMap<Ct6Key, Ct6Value>,
    /// (client, rev-NAT id, kind) -> value.
    pub affinity: BTreeMap<(u64, u16, u8), AffinityValue>,
}

pub struct Fixture {
    t: ProgTest,
    /// Every frontend (slot 0 of a service entry, any scope).
    pub frontends: Vec<Endpoint>,
    pub backends: Vec<Endpoint>,
    /// The IPv6 frontends and backends.
    pub frontends6: Vec<Endpoint6>,
    pub backends6: Vec<Endpoint6>,
    baseline: State,
}

/// An IPv6 address and port with the protocol, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint6 {
    pub ip: Ipv6Addr,
    pub port: u16,
    pub proto: u8,
}

/// IPv6 backends: (backend id, address, port, protocol, on this node).
const BACKENDS6: &[(u32, Ipv6Addr, u16, u8, bool)] = &[
    (101, v6::LOCAL_POD, 8080, IPPROTO_TCP, true),
    (102, v6::LOCAL_POD, 53, IPPROTO_UDP, true),
    (103, v6::REMOTE_POD, 5353, IPPROTO_UDP, false),
    (104, v6::REMOTE_POD, 8080, IPPROTO_TCP, false),
];

/// (backend id, address, port, protocol, on this node).
const BACKENDS: &[(u32, Ipv4Addr, u16, u8, bool)] = &[
    (1, LOCAL_POD, 8080, IPPROTO_TCP, true),
    (2, LOCAL_POD, 53, IPPROTO_UDP, true),
    (3, REMOTE_POD, 5353, IPPROTO_UDP, false),
    (4, REMOTE_POD, 8080, IPPROTO_TCP, false),
    (5, REMOTE_POD2, 8443, IPPROTO_TCP, false),
    (6, REMOTE_POD2, 5353, IPPROTO_UDP, false),
    (7, LOCAL_POD, 8443, IPPROTO_TCP, true),
];

impl Fixture {
    pub fn new() -> Result<Fixture> {
        routes()?;
        // Conntrack and affinity are read whole after every run: small maps make that cheap
        // (a hash map's iteration visits every bucket). Nothing here comes near filling them.
        let t = ProgTest::load_sized(
            ferry::datapath::loader::ebpf_object(),
            &[
                Prog::In.name(),
                Prog::Out.name(),
                Prog::Pod.name(),
                Prog::PodOut.name(),
            ],
            &[(m::CT_V4, 4096), (m::CT_V6, 4096), (m::AFFINITY, 4096)],
        )?;
        let mut f = Fixture {
            t,
            frontends: Vec::new(),
            backends: Vec::new(),
            frontends6: Vec::new(),
            backends6: Vec::new(),
            baseline: State::default(),
        };
        f.program()?;
        f.program6()?;
        f.make_flows()?;
        f.make_flows6()?;
        f.baseline = f.state()?;
        ensure!(
            f.baseline.ct.len() >= 6,
            "baseline flows: {:?}",
            f.baseline.ct
        );
        ensure!(
            f.baseline.ct6.len() >= 4,
            "baseline IPv6 flows: {:?}",
            f.baseline.ct6
        );
        Ok(f)
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.t
            .ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        Ok(HashMap::try_from(self.map(name)?)?)
    }

    /// The frontends and backends, as the agent writes them.
    fn program(&mut self) -> Result<()> {
        self.hash::<u32, u32>(m::NODE_ADDR_V4)?
            .insert(&IFINDEX, &raw(NODE), 0)?;
        // The cluster's node addresses: a DSR option may name a NodePort on them.
        self.hash::<u32, u8>(m::NODES_V4)?
            .insert(&raw(NODE), &1, 0)?;
        self.node_config(false)?;
        for &(id, ip, port, proto, local) in BACKENDS {
            let b = Backend4 {
                addr: raw(ip),
                port: port_to_raw(port),
                proto,
                state: 0,
                flags: if local { backend_flags::LOCAL } else { 0 },
                _pad: [0; 3],
            };
            self.hash::<u32, Backend4>(m::BACKENDS_V4)?
                .insert(&id, &b, 0)?;
            // The backend array the agent writes with it (the hit path's check).
            Array::<&mut MapData, Backend4>::try_from(self.map(m::BACKEND_LIVE_V4)?)?
                .set(id, &b, 0)?;
            self.backends.push(Endpoint { ip, port, proto });
        }
        use svc_flags as sf;
        let ext = scope::EXTERNAL;
        // Local backend, externalTrafficPolicy Cluster: masqueraded (its replies come back
        // through ferry_tc_pod); in DSR mode DNAT only.
        self.frontend(ep(LB_VIP, 80, IPPROTO_TCP), ext, sf::LOAD_BALANCER, 1, &[1])?;
        // A local and a remote backend, chosen at random.
        self.frontend(
            ep(LB_VIP, 53, IPPROTO_UDP),
            ext,
            sf::LOAD_BALANCER,
            2,
            &[2, 3],
        )?;
        // Remote backend: SNAT (or DSR).
        self.frontend(ep(NODE, 30080, IPPROTO_TCP), ext, sf::NODE_PORT, 3, &[4])?;
        // Session affinity.
        self.frontend(
            ep(EXTERNAL_IP, 443, IPPROTO_TCP),
            ext,
            sf::EXTERNAL_IP | sf::AFFINITY,
            4,
            &[7, 5],
        )?;
        // Source ranges: 198.51.100.0/24 only.
        self.frontend(
            ep(LB_RANGES, 80, IPPROTO_TCP),
            ext,
            sf::LOAD_BALANCER | sf::SOURCE_RANGES,
            5,
            &[1],
        )?;
        let mut lpm: LpmTrie<&mut MapData, SrcRange4, u8> =
            LpmTrie::try_from(self.map(m::SRC_RANGE_V4)?)?;
        let data = SrcRange4 {
            rev_nat_id: 5,
            _pad: 0,
            addr: raw(Ipv4Addr::new(198, 51, 100, 0)),
        };
        lpm.insert(
            &Key::new(agent_common::SRC_RANGE_PREFIX_BITS + 24, data),
            &1,
            0,
        )?;
        // No endpoints: ICMP port unreachable.
        self.frontend(
            ep(LB_NO_ENDPOINTS, 80, IPPROTO_TCP),
            ext,
            sf::LOAD_BALANCER,
            6,
            &[],
        )?;
        self.frontend(
            ep(LB_NO_ENDPOINTS, 53, IPPROTO_UDP),
            ext,
            sf::LOAD_BALANCER,
            7,
            &[],
        )?;
        // externalTrafficPolicy Local with endpoints elsewhere only: dropped (the agent flags
        // the external entry so).
        let etp = sf::LOAD_BALANCER | sf::ETP_LOCAL | sf::TWO_SCOPES;
        let etp_ext = etp | sf::DROP_NO_LOCAL;
        self.frontend(ep(LB_ETP_LOCAL, 80, IPPROTO_TCP), ext, etp_ext, 8, &[])?;
        self.frontend(
            ep(LB_ETP_LOCAL, 80, IPPROTO_TCP),
            scope::INTERNAL,
            etp,
            8,
            &[4],
        )?;
        // Maglev over two remote backends.
        self.frontend(
            ep(NODE, 30081, IPPROTO_UDP),
            ext,
            sf::NODE_PORT | sf::MAGLEV,
            9,
            &[3, 6],
        )?;
        let mut t = self.hash::<u32, u32>(m::MAGLEV)?;
        for i in 0..MAGLEV_TABLE_SIZE {
            t.insert(&maglev_key(9, i), &if i % 2 == 0 { 3 } else { 6 }, 0)?;
        }
        // Mid-update: slot 1 names a backend that is gone, slot 2 is missing.
        self.frontend(
            ep(LB_BROKEN, 80, IPPROTO_TCP),
            ext,
            sf::LOAD_BALANCER | sf::AFFINITY,
            10,
            &[99],
        )?;
        self.hash::<Svc4Key, SvcValue>(m::SERVICES_V4)?.insert(
            &svc_key(LB_BROKEN, 80, IPPROTO_TCP, ext, 0),
            &SvcValue {
                count: 2,
                rev_nat_id: 10,
                flags: sf::LOAD_BALANCER | sf::AFFINITY,
                ..SvcValue::default()
            },
            0,
        )?;
        // A ClusterIP: served at the socket layer only, passed here.
        self.frontend(
            ep(CLUSTER_IP, 80, IPPROTO_TCP),
            ext,
            sf::CLUSTER_IP,
            11,
            &[1],
        )?;
        Ok(())
    }

    /// A frontend `fe` of `scope` (slot 0) with the given backend ids in slots 1..=n, and
    /// its reverse-NAT entry.
    fn frontend(
        &mut self,
        fe: Endpoint,
        scope: u8,
        flags: u16,
        rev_nat_id: u16,
        backends: &[u32],
    ) -> Result<()> {
        let Endpoint { ip, port, proto } = fe;
        let mut svc = self.hash::<Svc4Key, SvcValue>(m::SERVICES_V4)?;
        let front = SvcValue {
            backend_id: 0,
            count: backends.len() as u16,
            rev_nat_id,
            flags,
            _pad: 0,
            affinity_timeout: 10_800,
        };
        svc.insert(&svc_key(ip, port, proto, scope, 0), &front, 0)?;
        for (i, &id) in backends.iter().enumerate() {
            let slot = SvcValue {
                backend_id: id,
                ..SvcValue::default()
            };
            svc.insert(&svc_key(ip, port, proto, scope, i as u16 + 1), &slot, 0)?;
        }
        let rev = RevNat4 {
            addr: raw(ip),
            port: port_to_raw(port),
            _pad: 0,
        };
        self.hash::<u16, RevNat4>(m::REV_NAT_V4)?
            .insert(&rev_nat_id, &rev, 0)?;
        // An exposed frontend's backends are its members: what a DSR option naming it may
        // reach (the agent writes them for the external scope only).
        if scope == scope::EXTERNAL {
            let mut members = self.hash::<Member4Key, u32>(m::MEMBERS_V4)?;
            for &id in backends {
                let Some(&(_, addr, port, proto, _)) = BACKENDS.iter().find(|b| b.0 == id) else {
                    continue;
                };
                let key = Member4Key {
                    rev_nat_id,
                    proto,
                    _pad: 0,
                    addr: raw(addr),
                    port: port_to_raw(port),
                    _pad2: 0,
                };
                members.insert(&key, &id, 0)?;
            }
        }
        self.frontends.push(Endpoint { ip, port, proto });
        Ok(())
    }

    fn node_config(&mut self, dsr: bool) -> Result<()> {
        let cfg = NodeConfig {
            // The DSR cases also serve the ClusterIP to outside clients: both settings of
            // each flag are fuzzed, and a ClusterIP flow in DSR mode takes the SNAT branch.
            flags: if dsr {
                node_flags::DSR | node_flags::EXTERNAL_CLUSTER_IP
            } else {
                0
            },
            snat_port_min: SNAT_PORTS.0,
            snat_port_max: SNAT_PORTS.1,
            // Budgets large enough that the port unreachable is built, not rate limited, for
            // nearly every frame that earns one: the fuzzer is after the code that builds it.
            icmp_rate: 1_000_000,
            icmp_burst: 1_000_000,
            icmp_source_interval_ms: 1,
            ..NodeConfig::default()
        };
        let mut a: Array<&mut MapData, NodeConfig> = Array::try_from(self.map(m::NODE_CONFIG)?)?;
        Ok(a.set(0, &cfg, 0)?)
    }

    /// Flows made by real packets: a masqueraded local one and a kept-client one (DSR mode),
    /// SNAT ones, a Maglev one, affinity, and in DSR mode one sent on with the option and one
    /// received with it.
    fn make_flows(&mut self) -> Result<()> {
        let client = |port| SocketAddrV4::new(CLIENT, port);
        let to = SocketAddrV4::new;
        let syn = |src, dst: SocketAddrV4| {
            let seg = tcp(src, dst, 1, 0, TCP_SYN, b"");
            ipv4(IpOpts::default(), CLIENT, *dst.ip(), IPPROTO_TCP, &seg)
        };
        let dgram = |src, dst: SocketAddrV4| {
            let d = udp(src, dst, b"q", true);
            ipv4(IpOpts::default(), CLIENT, *dst.ip(), IPPROTO_UDP, &d)
        };
        let flows = [
            (false, syn(client(40001), to(LB_VIP, 80)), &[REDIRECT][..]),
            (true, syn(client(40007), to(LB_VIP, 80)), &[OK]),
            (false, syn(client(40002), to(NODE, 30080)), &[REDIRECT]),
            (false, dgram(client(40003), to(NODE, 30081)), &[REDIRECT]),
            // A local or a remote backend: DNAT, or SNAT and routed.
            (
                false,
                syn(client(40004), to(EXTERNAL_IP, 443)),
                &[OK, REDIRECT],
            ),
            (true, syn(client(40005), to(NODE, 30080)), &[REDIRECT]),
        ];
        for (dsr, packet, want) in flows {
            self.node_config(dsr)?;
            let r = self.run(Prog::In, &ether(Prog::In, &packet), false)?;
            ensure!(
                want.contains(&r.verdict()),
                "baseline flow: verdict {} (want {want:?})",
                r.verdict()
            );
        }
        // Node B's side of DSR: a SYN to a pod of this node, the frontend in the option.
        let mut opt = [
            agent_common::DSR_OPT_TYPE,
            agent_common::DSR_OPT_LEN,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        opt[2..4].copy_from_slice(&80u16.to_be_bytes());
        opt[4..8].copy_from_slice(&LB_VIP.octets());
        let seg = tcp(client(40006), to(LOCAL_POD, 8080), 1, 0, TCP_SYN, b"");
        let packet = ipv4_with_options(
            IpOpts::default(),
            CLIENT,
            LOCAL_POD,
            IPPROTO_TCP,
            &opt,
            &seg,
        );
        let r = self.run(Prog::In, &ether(Prog::In, &packet), false)?;
        ensure!(r.verdict() == OK, "DSR receive: verdict {}", r.verdict());
        self.node_config(false)
    }

    /// The IPv6 side: the node's address, a cluster node, an LB frontend with a local
    /// backend (masqueraded), a UDP one with a local and a remote backend, a NodePort with
    /// a remote one (SNAT), an externalIP with session affinity, one without endpoints.
    fn program6(&mut self) -> Result<()> {
        self.hash::<u32, Ip6>(m::NODE_ADDR_V6)?
            .insert(&IFINDEX, &raw6(v6::NODE), 0)?;
        self.hash::<Ip6, u8>(m::NODES_V6)?
            .insert(&raw6(v6::NODE), &1, 0)?;
        for &(id, ip, port, proto, local) in BACKENDS6 {
            let b = Backend6 {
                addr: raw6(ip),
                port: port_to_raw(port),
                proto,
                state: 0,
                flags: if local { backend_flags::LOCAL } else { 0 },
                _pad: [0; 3],
            };
            self.hash::<u32, Backend6>(m::BACKENDS_V6)?
                .insert(&id, &b, 0)?;
            // The backend array the agent writes with it (the hit path's check).
            Array::<&mut MapData, Backend6>::try_from(self.map(m::BACKEND_LIVE_V6)?)?
                .set(id, &b, 0)?;
            self.backends6.push(Endpoint6 { ip, port, proto });
        }
        use svc_flags as sf;
        let ep6 = |ip, port, proto| Endpoint6 { ip, port, proto };
        self.frontend6(
            ep6(v6::LB_VIP, 80, IPPROTO_TCP),
            sf::LOAD_BALANCER,
            101,
            &[101],
        )?;
        self.frontend6(
            ep6(v6::LB_VIP, 53, IPPROTO_UDP),
            sf::LOAD_BALANCER,
            102,
            &[102, 103],
        )?;
        self.frontend6(
            ep6(v6::NODE, 30080, IPPROTO_TCP),
            sf::NODE_PORT,
            103,
            &[104],
        )?;
        self.frontend6(
            ep6(v6::EXTERNAL_IP, 443, IPPROTO_TCP),
            sf::EXTERNAL_IP | sf::AFFINITY,
            104,
            &[101, 104],
        )?;
        self.frontend6(
            ep6(v6::LB_NO_ENDPOINTS, 80, IPPROTO_TCP),
            sf::LOAD_BALANCER,
            105,
            &[],
        )?;
        self.frontend6(
            ep6(v6::LB_NO_ENDPOINTS, 53, IPPROTO_UDP),
            sf::LOAD_BALANCER,
            106,
            &[],
        )
    }

    fn frontend6(
        &mut self,
        fe: Endpoint6,
        flags: u16,
        rev_nat_id: u16,
        backends: &[u32],
    ) -> Result<()> {
        let key = |slot: u16| Svc6Key {
            addr: raw6(fe.ip),
            port: port_to_raw(fe.port),
            slot,
            proto: fe.proto,
            scope: scope::EXTERNAL,
            _pad: [0; 2],
        };
        let mut svc = self.hash::<Svc6Key, SvcValue>(m::SERVICES_V6)?;
        let front = SvcValue {
            backend_id: 0,
            count: backends.len() as u16,
            rev_nat_id,
            flags,
            _pad: 0,
            affinity_timeout: 10_800,
        };
        svc.insert(&key(0), &front, 0)?;
        for (i, &id) in backends.iter().enumerate() {
            let slot = SvcValue {
                backend_id: id,
                ..SvcValue::default()
            };
            svc.insert(&key(i as u16 + 1), &slot, 0)?;
        }
        let rev = RevNat6 {
            addr: raw6(fe.ip),
            port: port_to_raw(fe.port),
            _pad: 0,
        };
        self.hash::<u16, RevNat6>(m::REV_NAT_V6)?
            .insert(&rev_nat_id, &rev, 0)?;
        // The members of a frontend (what a DSR option may name), where the object has
        // the map.
        if self.t.ebpf.map(m::MEMBERS_V6).is_some() {
            let mut members = self.hash::<Member6Key, u32>(m::MEMBERS_V6)?;
            for &id in backends {
                let Some(&(_, addr, port, proto, _)) = BACKENDS6.iter().find(|b| b.0 == id) else {
                    continue;
                };
                let key = Member6Key {
                    rev_nat_id,
                    proto,
                    _pad: 0,
                    addr: raw6(addr),
                    port: port_to_raw(port),
                    _pad2: 0,
                };
                members.insert(&key, &id, 0)?;
            }
        }
        self.frontends6.push(fe);
        Ok(())
    }

    /// IPv6 flows made by real packets: masqueraded local, SNAT remote, UDP, affinity.
    fn make_flows6(&mut self) -> Result<()> {
        let client = |port| SocketAddrV6::new(v6::CLIENT, port, 0, 0);
        let to = |ip, port| SocketAddrV6::new(ip, port, 0, 0);
        let syn = |src: SocketAddrV6, dst: SocketAddrV6| {
            let seg = tcp6(src, dst, 1, 0, TCP_SYN, b"");
            ipv6(Ip6Opts::default(), *src.ip(), *dst.ip(), IPPROTO_TCP, &seg)
        };
        let dgram = |src: SocketAddrV6, dst: SocketAddrV6| {
            let d = udp6(src, dst, b"q", true);
            ipv6(Ip6Opts::default(), *src.ip(), *dst.ip(), IPPROTO_UDP, &d)
        };
        let flows = [
            syn(client(41001), to(v6::LB_VIP, 80)),
            syn(client(41002), to(v6::NODE, 30080)),
            dgram(client(41003), to(v6::LB_VIP, 53)),
            syn(client(41004), to(v6::EXTERNAL_IP, 443)),
        ];
        for packet in flows {
            let r = self.run(Prog::In, &v6::ether(Prog::In, &packet), false)?;
            ensure!(
                [OK, REDIRECT].contains(&r.verdict()),
                "baseline IPv6 flow: verdict {}",
                r.verdict()
            );
        }
        Ok(())
    }

    /// Conntrack and affinity as they are now.
    pub fn state(&mut self) -> Result<State> {
        let ct = self
            .hash::<Ct4Key, Ct4Value>(m::CT_V4)?
            .iter()
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let affinity = self
            .hash::<AffinityKey, AffinityValue>(m::AFFINITY)?
            .iter()
            .map(|r| r.map(|(k, v)| ((k.client, k.rev_nat_id, k.kind), v)))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let ct6 = self
            .hash::<Ct6Key, Ct6Value>(m::CT_V6)?
            .iter()
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(State { ct, ct6, affinity })
    }

    pub fn baseline(&self) -> &State {
        &self.baseline
    }

    /// Back to the baseline (`now`: the state as it is), in DSR mode or not.
    pub fn reset(&mut self, now: &State, dsr: bool) -> Result<()> {
        let base = self.baseline.clone();
        let mut ct = self.hash::<Ct4Key, Ct4Value>(m::CT_V4)?;
        for k in now.ct.keys().filter(|k| !base.ct.contains_key(k)) {
            ct.remove(k)?;
        }
        for (k, v) in base.ct.iter().filter(|(k, v)| now.ct.get(k) != Some(v)) {
            ct.insert(k, v, 0)?;
        }
        let mut ct6 = self.hash::<Ct6Key, Ct6Value>(m::CT_V6)?;
        for k in now.ct6.keys().filter(|k| !base.ct6.contains_key(k)) {
            ct6.remove(k)?;
        }
        for (k, v) in base.ct6.iter().filter(|(k, v)| now.ct6.get(k) != Some(v)) {
            ct6.insert(k, v, 0)?;
        }
        let mut aff = self.hash::<AffinityKey, AffinityValue>(m::AFFINITY)?;
        let key = |&(client, rev_nat_id, kind): &(u64, u16, u8)| AffinityKey {
            client,
            rev_nat_id,
            kind,
            _pad: [0; 5],
        };
        for k in now
            .affinity
            .keys()
            .filter(|k| !base.affinity.contains_key(k))
        {
            aff.remove(&key(k))?;
        }
        for (k, v) in base
            .affinity
            .iter()
            .filter(|(k, v)| now.affinity.get(k) != Some(v))
        {
            aff.insert(&key(k), v, 0)?;
        }
        self.node_config(dsr)
    }

    pub fn run(&self, prog: Prog, frame: &[u8], csum_complete: bool) -> Result<TestRun> {
        let flags = if csum_complete {
            BPF_F_TEST_SKB_CHECKSUM_COMPLETE
        } else {
            0
        };
        self.t.run_flags(prog.name(), frame, flags)
    }

    /// Port unreachables not sent for the budget (node-wide and per source), so far.
    pub fn reject_limited(&mut self) -> Result<u64> {
        let stats: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map(m::STATS)?)?;
        let mut n = 0;
        for c in [Counter::NsRejectLimited, Counter::NsRejectLimitedSource] {
            n += stats.get(&(c as u32), 0)?.iter().sum::<u64>();
        }
        Ok(n)
    }

    /// The kernel's event counters that moved: which paths the runs took.
    pub fn counters(&mut self) -> Result<Vec<(&'static str, u64)>> {
        let stats: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map(m::STATS)?)?;
        let mut out = Vec::new();
        for c in Counter::ALL {
            let n: u64 = stats.get(&(c as u32), 0)?.iter().sum();
            if n > 0 {
                out.push((c.name(), n));
            }
        }
        Ok(out)
    }
}

fn raw6(ip: Ipv6Addr) -> Ip6 {
    ip6_to_raw(ip.octets())
}

fn ep(ip: Ipv4Addr, port: u16, proto: u8) -> Endpoint {
    Endpoint { ip, port, proto }
}

fn svc_key(ip: Ipv4Addr, port: u16, proto: u8, scope: u8, slot: u16) -> Svc4Key {
    Svc4Key {
        addr: raw(ip),
        port: port_to_raw(port),
        slot,
        proto,
        scope,
        _pad: [0; 2],
    }
}

/// The namespace's network: a next hop for remote pods and clients (resolved neighbour), a
/// device holding this node's pods, forwarding on. Only this thread's namespace is touched.
fn routes() -> Result<()> {
    next_hop::device(None)?;
    next_hop::routes(Family::V4, &["10.244.1.0/24", "198.51.100.0/24"])?;
    next_hop::routes(Family::V6, &["fd00:244:1::/64", "2001:db8:100::/64"])?;
    next_hop::ip_cmds(&[
        &["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
        &["link", "set", "p1", "up"],
        &["link", "set", "p0", "up"],
        &["addr", "add", "10.244.0.1/24", "dev", "p0"],
        &["-6", "addr", "add", "fd00:244::1/64", "dev", "p0", "nodad"],
    ])
}
