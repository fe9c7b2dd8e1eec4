//! The maps of a table test, filled as the agent fills them, for either family: services,
//! backends, members, node addresses and config, source ranges, Maglev tables; conntrack read
//! back in one form for both families ([`Ct`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, Ip6,
    MAGLEV_TABLE_SIZE, Member4Key, Member6Key, NodeConfig, RevNat4, RevNat6, SrcRange4, SrcRange6,
    Svc4Key, Svc6Key, SvcValue, backend_flags, maglev_key, maps as m,
    net::{ip4_from_raw, ip6_from_raw, port_from_raw, port_to_raw},
    stats::Counter,
};
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};

use super::{
    BPF_F_TEST_SKB_CHECKSUM_COMPLETE, ProgTest, TestRun,
    net::{Family, IFINDEX, raw4, raw6, sa},
    table::{Csum, Hook},
};

/// A conntrack entry of either family, host order (`last_seen` apart: see [`Fixture::ct`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ct {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub dir: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtVal {
    pub nat_src: SocketAddr,
    pub nat_dst: SocketAddr,
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub flags: u8,
    pub tcp_flags: u8,
    /// CLOCK_MONOTONIC seconds (0 in expectations: checked against "now" separately).
    pub last_seen: u32,
}

/// The key of an entry.
pub fn ct_key(src: SocketAddr, dst: SocketAddr, proto: u8, dir: u8) -> Ct {
    Ct {
        src,
        dst,
        proto,
        dir,
    }
}

/// A conntrack value without its time.
pub fn ct_val(
    nat_src: SocketAddr,
    nat_dst: SocketAddr,
    backend_id: u32,
    rev_nat_id: u16,
    flags: u8,
    tcp_flags: u8,
) -> CtVal {
    CtVal {
        nat_src,
        nat_dst,
        backend_id,
        rev_nat_id,
        flags,
        tcp_flags,
        last_seen: 0,
    }
}

fn sa4(raw: u32, port: u16) -> SocketAddr {
    sa(
        IpAddr::V4(Ipv4Addr::from(ip4_from_raw(raw))),
        port_from_raw(port),
    )
}

fn sa6(raw: Ip6, port: u16) -> SocketAddr {
    sa(
        IpAddr::V6(Ipv6Addr::from(ip6_from_raw(raw))),
        port_from_raw(port),
    )
}

/// The IPv4 conntrack map's key of `k`.
pub fn key4(k: &Ct) -> Ct4Key {
    Ct4Key {
        saddr: raw4(k.src.ip()),
        daddr: raw4(k.dst.ip()),
        sport: port_to_raw(k.src.port()),
        dport: port_to_raw(k.dst.port()),
        proto: k.proto,
        dir: k.dir,
        _pad: [0; 2],
    }
}

/// The IPv6 conntrack map's key of `k`.
pub fn key6(k: &Ct) -> Ct6Key {
    Ct6Key {
        saddr: raw6(k.src.ip()),
        daddr: raw6(k.dst.ip()),
        sport: port_to_raw(k.src.port()),
        dport: port_to_raw(k.dst.port()),
        proto: k.proto,
        dir: k.dir,
        _pad: [0; 2],
    }
}

fn val4(v: &CtVal) -> Ct4Value {
    Ct4Value {
        nat_saddr: raw4(v.nat_src.ip()),
        nat_daddr: raw4(v.nat_dst.ip()),
        nat_sport: port_to_raw(v.nat_src.port()),
        nat_dport: port_to_raw(v.nat_dst.port()),
        backend_id: v.backend_id,
        rev_nat_id: v.rev_nat_id,
        flags: v.flags,
        tcp_flags: v.tcp_flags,
        last_seen: v.last_seen,
    }
}

fn val6(v: &CtVal) -> Ct6Value {
    Ct6Value {
        nat_saddr: raw6(v.nat_src.ip()),
        nat_daddr: raw6(v.nat_dst.ip()),
        nat_sport: port_to_raw(v.nat_src.port()),
        nat_dport: port_to_raw(v.nat_dst.port()),
        backend_id: v.backend_id,
        rev_nat_id: v.rev_nat_id,
        flags: v.flags,
        tcp_flags: v.tcp_flags,
        last_seen: v.last_seen,
    }
}

/// One scenario's programs and maps.
pub struct Fixture {
    pub t: ProgTest,
}

pub const TC_IN: &str = "ferry_tc_in";
pub const TC_OUT: &str = "ferry_tc_out";
pub const TC_POD: &str = "ferry_tc_pod";
pub const XDP: &str = "ferry_xdp";
pub const TC_POD_OUT: &str = "ferry_tc_pod_out";

impl Fixture {
    /// The whole object loaded (the TC programs through the verifier), this node's `family`
    /// address on the device.
    pub fn new(family: Family) -> Fixture {
        let t = ProgTest::load(
            ferry::datapath::loader::ebpf_object(),
            &[TC_IN, TC_OUT, TC_POD, TC_POD_OUT, XDP],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut f = Fixture { t };
        f.node_addr(IFINDEX, family.net().node);
        f
    }

    pub fn map(&mut self, name: &str) -> &mut aya::maps::Map {
        self.t
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("no map {name}"))
    }

    pub fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.map(name)).unwrap()
    }

    /// Runs `hook`'s program once on `frame`.
    pub fn run(&self, hook: Hook, frame: &[u8], csum: Csum) -> TestRun {
        let prog = hook.program();
        assert!(
            hook != Hook::Xdp || csum == Csum::None,
            "an XDP run has no skb and no checksum state"
        );
        let flags = match csum {
            Csum::None => 0,
            Csum::Complete => BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
        };
        self.t
            .run_flags(prog, frame, flags)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {prog} ({csum:?}): {e:#}"))
    }

    pub fn node_addr(&mut self, ifindex: u32, addr: IpAddr) {
        match addr {
            IpAddr::V4(_) => {
                self.hash::<u32, u32>(m::NODE_ADDR_V4)
                    .insert(&ifindex, &raw4(addr), 0)
            }
            IpAddr::V6(_) => {
                self.hash::<u32, Ip6>(m::NODE_ADDR_V6)
                    .insert(&ifindex, &raw6(addr), 0)
            }
        }
        .unwrap();
    }

    pub fn remove_node_addr(&mut self, family: Family, ifindex: u32) {
        match family {
            Family::V4 => self.hash::<u32, u32>(m::NODE_ADDR_V4).remove(&ifindex),
            Family::V6 => self.hash::<u32, Ip6>(m::NODE_ADDR_V6).remove(&ifindex),
        }
        .unwrap();
    }

    pub fn node_config(&mut self, cfg: NodeConfig) {
        let mut a: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.map(m::NODE_CONFIG)).unwrap();
        a.set(0, &cfg, 0).unwrap();
    }

    pub fn backend(&mut self, id: u32, addr: SocketAddr, proto: u8, local: bool) {
        let flags = if local { backend_flags::LOCAL } else { 0 };
        let port = port_to_raw(addr.port());
        match addr.ip() {
            IpAddr::V4(_) => {
                let b = Backend4 {
                    addr: raw4(addr.ip()),
                    port,
                    proto,
                    state: 0,
                    flags,
                    _pad: [0; 3],
                };
                self.live4(id, &b);
                self.hash::<u32, Backend4>(m::BACKENDS_V4)
                    .insert(&id, &b, 0)
            }
            IpAddr::V6(_) => {
                let b = Backend6 {
                    addr: raw6(addr.ip()),
                    port,
                    proto,
                    state: 0,
                    flags,
                    _pad: [0; 3],
                };
                self.live6(id, &b);
                self.hash::<u32, Backend6>(m::BACKENDS_V6)
                    .insert(&id, &b, 0)
            }
        }
        .unwrap();
    }

    /// The IPv4 backend array's slot `id`, as the agent writes it with the backend map
    /// (all zeroes: no backend).
    fn live4(&mut self, id: u32, b: &Backend4) {
        let mut a: Array<&mut MapData, Backend4> =
            Array::try_from(self.map(m::BACKEND_LIVE_V4)).unwrap();
        a.set(id, b, 0).unwrap();
    }

    /// The IPv6 backend array's slot `id`, as [`Self::live4`] (an object of before the array,
    /// FERRY_BENCH_EBPF, has none: skipped).
    fn live6(&mut self, id: u32, b: &Backend6) {
        if let Some(map) = self.t.ebpf.map_mut(m::BACKEND_LIVE_V6) {
            let mut a: Array<&mut MapData, Backend6> = Array::try_from(map).unwrap();
            a.set(id, b, 0).unwrap();
        }
    }

    pub fn remove_backend(&mut self, family: Family, id: u32) {
        match family {
            Family::V4 => {
                self.live4(id, &Backend4::default());
                self.hash::<u32, Backend4>(m::BACKENDS_V4).remove(&id)
            }
            Family::V6 => {
                self.live6(id, &Backend6::default());
                self.hash::<u32, Backend6>(m::BACKENDS_V6).remove(&id)
            }
        }
        .unwrap();
    }

    /// A frontend (slot 0) of `scope` with the given backend ids in slots 1..=n, and its
    /// reverse-NAT entry.
    pub fn frontend(
        &mut self,
        addr: SocketAddr,
        proto: u8,
        scope: u8,
        flags: u16,
        rev_nat_id: u16,
        backends: &[u32],
    ) {
        let head = SvcValue {
            backend_id: 0,
            count: backends.len() as u16,
            rev_nat_id,
            flags,
            _pad: 0,
            affinity_timeout: 10_800,
        };
        let slot = |id: u32| SvcValue {
            backend_id: id,
            ..SvcValue::default()
        };
        let port = port_to_raw(addr.port());
        match addr.ip() {
            IpAddr::V4(_) => {
                let key = |slot: u16| Svc4Key {
                    addr: raw4(addr.ip()),
                    port,
                    slot,
                    proto,
                    scope,
                    _pad: [0; 2],
                };
                let mut svc = self.hash::<Svc4Key, SvcValue>(m::SERVICES_V4);
                svc.insert(&key(0), &head, 0).unwrap();
                for (i, &id) in backends.iter().enumerate() {
                    svc.insert(&key(i as u16 + 1), &slot(id), 0).unwrap();
                }
                let rev = RevNat4 {
                    addr: raw4(addr.ip()),
                    port,
                    _pad: 0,
                };
                self.hash::<u16, RevNat4>(m::REV_NAT_V4)
                    .insert(&rev_nat_id, &rev, 0)
                    .unwrap();
            }
            IpAddr::V6(_) => {
                let key = |slot: u16| Svc6Key {
                    addr: raw6(addr.ip()),
                    port,
                    slot,
                    proto,
                    scope,
                    _pad: [0; 2],
                };
                let mut svc = self.hash::<Svc6Key, SvcValue>(m::SERVICES_V6);
                svc.insert(&key(0), &head, 0).unwrap();
                for (i, &id) in backends.iter().enumerate() {
                    svc.insert(&key(i as u16 + 1), &slot(id), 0).unwrap();
                }
                let rev = RevNat6 {
                    addr: raw6(addr.ip()),
                    port,
                    _pad: 0,
                };
                self.hash::<u16, RevNat6>(m::REV_NAT_V6)
                    .insert(&rev_nat_id, &rev, 0)
                    .unwrap();
            }
        }
    }

    /// A loadBalancerSourceRanges entry of the frontend `rev_nat_id`.
    pub fn allow_source(&mut self, rev_nat_id: u16, net: IpAddr, len: u32) {
        let bits = agent_common::SRC_RANGE_PREFIX_BITS + len;
        match net {
            IpAddr::V4(_) => {
                let mut lpm: LpmTrie<&mut MapData, SrcRange4, u8> =
                    LpmTrie::try_from(self.map(m::SRC_RANGE_V4)).unwrap();
                let data = SrcRange4 {
                    rev_nat_id,
                    _pad: 0,
                    addr: raw4(net),
                };
                lpm.insert(&Key::new(bits, data), &1, 0).unwrap();
            }
            IpAddr::V6(_) => {
                let mut lpm: LpmTrie<&mut MapData, SrcRange6, u8> =
                    LpmTrie::try_from(self.map(m::SRC_RANGE_V6)).unwrap();
                let data = SrcRange6 {
                    rev_nat_id,
                    _pad: 0,
                    addr: raw6(net),
                };
                lpm.insert(&Key::new(bits, data), &1, 0).unwrap();
            }
        }
    }

    pub fn maglev_table(&mut self, rev_nat_id: u16, backend_at: impl Fn(u32) -> u32) {
        let mut t = self.hash::<u32, u32>(m::MAGLEV);
        for i in 0..MAGLEV_TABLE_SIZE {
            t.insert(&maglev_key(rev_nat_id, i), &backend_at(i), 0)
                .unwrap();
        }
    }

    /// Backend `id` (already in the backend map of `family`) serves the exposed frontend
    /// `rev_nat_id`, as the agent's programmer records it for DSR.
    pub fn member(&mut self, family: Family, rev_nat_id: u16, id: u32) {
        match family {
            Family::V4 => {
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
            }
            Family::V6 => {
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
            }
        }
        .unwrap();
    }

    /// An address of a cluster node (a Node object's), as the agent records it.
    pub fn cluster_node(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(_) => self.hash::<u32, u8>(m::NODES_V4).insert(&raw4(addr), &1, 0),
            IpAddr::V6(_) => self.hash::<Ip6, u8>(m::NODES_V6).insert(&raw6(addr), &1, 0),
        }
        .unwrap();
    }

    /// The conntrack fill the agent measured, per mille.
    pub fn ct_fill(&mut self, permille: u32) {
        let mut a: Array<&mut MapData, u32> = Array::try_from(self.map(m::CT_FILL)).unwrap();
        a.set(0, &permille, 0).unwrap();
    }

    /// Every conntrack entry, both families.
    pub fn ct(&mut self) -> BTreeMap<Ct, CtVal> {
        let mut all = BTreeMap::new();
        for r in self.hash::<Ct4Key, Ct4Value>(m::CT_V4).iter() {
            let (k, v) = r.unwrap();
            all.insert(
                ct_key(sa4(k.saddr, k.sport), sa4(k.daddr, k.dport), k.proto, k.dir),
                CtVal {
                    nat_src: sa4(v.nat_saddr, v.nat_sport),
                    nat_dst: sa4(v.nat_daddr, v.nat_dport),
                    backend_id: v.backend_id,
                    rev_nat_id: v.rev_nat_id,
                    flags: v.flags,
                    tcp_flags: v.tcp_flags,
                    last_seen: v.last_seen,
                },
            );
        }
        for r in self.hash::<Ct6Key, Ct6Value>(m::CT_V6).iter() {
            let (k, v) = r.unwrap();
            all.insert(
                ct_key(sa6(k.saddr, k.sport), sa6(k.daddr, k.dport), k.proto, k.dir),
                CtVal {
                    nat_src: sa6(v.nat_saddr, v.nat_sport),
                    nat_dst: sa6(v.nat_daddr, v.nat_dport),
                    backend_id: v.backend_id,
                    rev_nat_id: v.rev_nat_id,
                    flags: v.flags,
                    tcp_flags: v.tcp_flags,
                    last_seen: v.last_seen,
                },
            );
        }
        all
    }

    /// Writes a conntrack entry (to make it look closing or idle).
    pub fn ct_put(&mut self, k: Ct, v: CtVal) {
        match k.src.ip() {
            IpAddr::V4(_) => {
                self.hash::<Ct4Key, Ct4Value>(m::CT_V4)
                    .insert(&key4(&k), &val4(&v), 0)
            }
            IpAddr::V6(_) => {
                self.hash::<Ct6Key, Ct6Value>(m::CT_V6)
                    .insert(&key6(&k), &val6(&v), 0)
            }
        }
        .unwrap();
    }

    pub fn ct_remove(&mut self, k: Ct) {
        match k.src.ip() {
            IpAddr::V4(_) => self.hash::<Ct4Key, Ct4Value>(m::CT_V4).remove(&key4(&k)),
            IpAddr::V6(_) => self.hash::<Ct6Key, Ct6Value>(m::CT_V6).remove(&key6(&k)),
        }
        .unwrap();
    }

    /// Forgets every flow (as an eviction would).
    pub fn clear_ct(&mut self) {
        for k in self.ct().into_keys() {
            self.ct_remove(k);
        }
    }

    /// (client, rev-NAT id, kind) -> value.
    pub fn affinity(&mut self) -> BTreeMap<(u64, u16, u8), AffinityValue> {
        self.hash::<AffinityKey, AffinityValue>(m::AFFINITY)
            .iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| ((k.client, k.rev_nat_id, k.kind), v))
            .collect()
    }

    /// A counter's sum over the CPUs.
    pub fn counter(&mut self, c: Counter) -> u64 {
        let stats: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.map(m::STATS)).unwrap();
        stats.get(&(c as u32), 0).unwrap().iter().sum()
    }
}
