//! The one place in user space that builds and reads map keys and values:
//! the programmer, `ferry services` / `ferry conntrack`, the snapshot read at
//! adoption, and the tests all go through here, so the byte layout of the
//! ABI (agent-common) and its byte order are spelled out once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{
    AffinityKey, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, Member4Key, Member6Key,
    RevNat4, RevNat6, SRC_RANGE_PREFIX_BITS, SrcRange4, SrcRange6, Svc4Key, Svc6Key, SvcValue,
    affinity_client, backend_state, ct_dir, ct_flags,
    net::{ip4_from_raw, ip4_to_raw, ip6_from_raw, ip6_to_raw, port_from_raw, port_to_raw},
    svc_flags,
};
use aya::maps::lpm_trie::Key;

use crate::model::{AddrKey, BackendAddr, Cidr, Family, FrontendKey, Protocol, Scope};

pub fn ip_raw(ip: Ipv4Addr) -> u32 {
    ip4_to_raw(ip.octets())
}

pub fn ip_of(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip4_from_raw(raw))
}

pub fn ip6_raw(ip: Ipv6Addr) -> [u32; 4] {
    ip6_to_raw(ip.octets())
}

pub fn ip6_of(raw: [u32; 4]) -> Ipv6Addr {
    Ipv6Addr::from(ip6_from_raw(raw))
}

/// A service-map key of either family: the family's map is chosen by the
/// variant, so a caller never names a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SvcKey {
    V4(Svc4Key),
    V6(Svc6Key),
}

/// A backend-map value of either family (one id space for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendValue {
    V4(Backend4),
    V6(Backend6),
}

impl BackendValue {
    pub fn family(&self) -> Family {
        match self {
            BackendValue::V4(_) => Family::V4,
            BackendValue::V6(_) => Family::V6,
        }
    }

    pub fn state(&self) -> u8 {
        match self {
            BackendValue::V4(b) => b.state,
            BackendValue::V6(b) => b.state,
        }
    }

    pub fn flags(&self) -> u8 {
        match self {
            BackendValue::V4(b) => b.flags,
            BackendValue::V6(b) => b.flags,
        }
    }
}

/// A reverse-NAT value of either family (one id space for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevNatValue {
    V4(RevNat4),
    V6(RevNat6),
}

impl RevNatValue {
    pub fn family(&self) -> Family {
        match self {
            RevNatValue::V4(_) => Family::V4,
            RevNatValue::V6(_) => Family::V6,
        }
    }
}

/// A membership key of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberKey {
    V4(Member4Key),
    V6(Member6Key),
}

fn scope_of(raw: u8) -> Option<Scope> {
    match raw {
        agent_common::scope::EXTERNAL => Some(Scope::External),
        agent_common::scope::INTERNAL => Some(Scope::Internal),
        _ => None,
    }
}

/// The service-map key of `key`'s slot (0 = the frontend itself).
pub fn svc_key(key: &FrontendKey, slot: u16) -> SvcKey {
    let (port, proto, scope) = (
        port_to_raw(key.port),
        key.proto.number(),
        key.scope.number(),
    );
    match key.ip {
        IpAddr::V4(ip) => SvcKey::V4(Svc4Key {
            addr: ip_raw(ip),
            port,
            slot,
            proto,
            scope,
            _pad: [0; 2],
        }),
        IpAddr::V6(ip) => SvcKey::V6(Svc6Key {
            addr: ip6_raw(ip),
            port,
            slot,
            proto,
            scope,
            _pad: [0; 2],
        }),
    }
}

/// (address, port, proto, scope, slot) of a service-map key, raw.
fn svc_fields(k: &SvcKey) -> (IpAddr, u16, u8, u8, u16) {
    match k {
        SvcKey::V4(k) => (ip_of(k.addr).into(), k.port, k.proto, k.scope, k.slot),
        SvcKey::V6(k) => (ip6_of(k.addr).into(), k.port, k.proto, k.scope, k.slot),
    }
}

/// The slot a service-map key names.
pub fn slot_of(k: &SvcKey) -> u16 {
    svc_fields(k).4
}

/// The frontend a service-map key belongs to; None for a key no agent
/// writes (unknown protocol or scope).
pub fn frontend_key(k: &SvcKey) -> Option<FrontendKey> {
    let (ip, port, proto, scope, _) = svc_fields(k);
    Some(FrontendKey {
        ip,
        port: port_from_raw(port),
        proto: Protocol::from_number(proto)?,
        scope: scope_of(scope)?,
    })
}

/// The service-map entry that marks an address as a ClusterIP whatever the
/// port (port 0, protocol 0: no packet or socket has those): the socket
/// layer refuses a ClusterIP on a port no Service defines, as kube-proxy's
/// `cluster-ips-check` rejects it.
pub fn cluster_ip_key(ip: IpAddr) -> SvcKey {
    match ip {
        IpAddr::V4(ip) => SvcKey::V4(Svc4Key {
            addr: ip_raw(ip),
            scope: agent_common::scope::EXTERNAL,
            ..Svc4Key::default()
        }),
        IpAddr::V6(ip) => SvcKey::V6(Svc6Key {
            addr: ip6_raw(ip),
            scope: agent_common::scope::EXTERNAL,
            ..Svc6Key::default()
        }),
    }
}

/// The address a [`cluster_ip_key`] marks; None for any other key.
pub fn cluster_ip_of(k: &SvcKey) -> Option<IpAddr> {
    let (ip, port, proto, scope, slot) = svc_fields(k);
    (port == 0 && proto == 0 && slot == 0 && scope == agent_common::scope::EXTERNAL).then_some(ip)
}

/// The value of a [`cluster_ip_key`]: no backend, flagged ClusterIP.
pub fn cluster_ip_value() -> SvcValue {
    frontend_value(0, 0, svc_flags::CLUSTER_IP, 0)
}

/// Slot 0's value: the frontend.
pub fn frontend_value(count: u16, rev_nat_id: u16, flags: u16, affinity_timeout: u32) -> SvcValue {
    SvcValue {
        backend_id: 0,
        count,
        rev_nat_id,
        flags,
        _pad: 0,
        affinity_timeout,
    }
}

/// A backend slot's value.
pub fn slot_value(backend_id: u32) -> SvcValue {
    SvcValue {
        backend_id,
        ..SvcValue::default()
    }
}

pub fn backend_value(b: &BackendAddr, state: u8, flags: u8) -> BackendValue {
    let (port, proto) = (port_to_raw(b.port), b.proto.number());
    match b.ip {
        IpAddr::V4(ip) => BackendValue::V4(Backend4 {
            addr: ip_raw(ip),
            port,
            proto,
            state,
            flags,
            _pad: [0; 3],
        }),
        IpAddr::V6(ip) => BackendValue::V6(Backend6 {
            addr: ip6_raw(ip),
            port,
            proto,
            state,
            flags,
            _pad: [0; 3],
        }),
    }
}

pub fn backend_addr(v: &BackendValue) -> Option<BackendAddr> {
    let (ip, port, proto): (IpAddr, _, _) = match v {
        BackendValue::V4(v) => (ip_of(v.addr).into(), v.port, v.proto),
        BackendValue::V6(v) => (ip6_of(v.addr).into(), v.port, v.proto),
    };
    Some(BackendAddr {
        ip,
        port: port_from_raw(port),
        proto: Protocol::from_number(proto)?,
    })
}

/// How tools name a backend's state.
pub fn backend_state_name(state: u8) -> &'static str {
    match state {
        backend_state::ACTIVE => "active",
        backend_state::TERMINATING => "terminating",
        _ => "unknown",
    }
}

pub fn rev_nat_value(addr: &AddrKey) -> RevNatValue {
    let port = port_to_raw(addr.port);
    match addr.ip {
        IpAddr::V4(ip) => RevNatValue::V4(RevNat4 {
            addr: ip_raw(ip),
            port,
            _pad: 0,
        }),
        IpAddr::V6(ip) => RevNatValue::V6(RevNat6 {
            addr: ip6_raw(ip),
            port,
            _pad: 0,
        }),
    }
}

/// The service address and port a rev-NAT entry restores.
pub fn rev_nat_target(v: &RevNatValue) -> (IpAddr, u16) {
    match v {
        RevNatValue::V4(v) => (ip_of(v.addr).into(), port_from_raw(v.port)),
        RevNatValue::V6(v) => (ip6_of(v.addr).into(), port_from_raw(v.port)),
    }
}

/// The membership key of backend `b` of the exposed frontend `rev_nat_id`
/// (what a DSR option naming that frontend may reach).
pub fn member_key(rev_nat_id: u16, b: &BackendAddr) -> MemberKey {
    let (port, proto) = (port_to_raw(b.port), b.proto.number());
    match b.ip {
        IpAddr::V4(ip) => MemberKey::V4(Member4Key {
            rev_nat_id,
            proto,
            _pad: 0,
            addr: ip_raw(ip),
            port,
            _pad2: 0,
        }),
        IpAddr::V6(ip) => MemberKey::V6(Member6Key {
            rev_nat_id,
            proto,
            _pad: 0,
            addr: ip6_raw(ip),
            port,
            _pad2: 0,
        }),
    }
}

/// (rev-NAT id, backend) of a membership key (tools and tests read the map).
pub fn member_of(k: &MemberKey) -> Option<(u16, BackendAddr)> {
    let (rev_nat_id, ip, port, proto): (_, IpAddr, _, _) = match k {
        MemberKey::V4(k) => (k.rev_nat_id, ip_of(k.addr).into(), k.port, k.proto),
        MemberKey::V6(k) => (k.rev_nat_id, ip6_of(k.addr).into(), k.port, k.proto),
    };
    Some((
        rev_nat_id,
        BackendAddr {
            ip,
            port: port_from_raw(port),
            proto: Protocol::from_number(proto)?,
        },
    ))
}

/// A source-range LPM key of either family.
pub enum SrcRangeKey {
    V4(Key<SrcRange4>),
    V6(Key<SrcRange6>),
}

/// The LPM key of a source range of a service.
pub fn src_range_key(rev_nat_id: u16, cidr: Cidr) -> SrcRangeKey {
    let bits = SRC_RANGE_PREFIX_BITS + u32::from(cidr.len);
    match cidr.addr {
        IpAddr::V4(ip) => SrcRangeKey::V4(Key::new(
            bits,
            SrcRange4 {
                rev_nat_id,
                _pad: 0,
                addr: ip_raw(ip),
            },
        )),
        IpAddr::V6(ip) => SrcRangeKey::V6(Key::new(
            bits,
            SrcRange6 {
                rev_nat_id,
                _pad: 0,
                addr: ip6_raw(ip),
            },
        )),
    }
}

/// (rev-NAT id, range) of an IPv4 source-range key.
pub fn src_range_of(k: &Key<SrcRange4>) -> (u16, Cidr) {
    let d = k.data();
    let len = (k.prefix_len().saturating_sub(SRC_RANGE_PREFIX_BITS)).min(32) as u8;
    (d.rev_nat_id, Cidr::new(ip_of(d.addr).into(), len))
}

/// (rev-NAT id, range) of an IPv6 source-range key.
pub fn src_range6_of(k: &Key<SrcRange6>) -> (u16, Cidr) {
    let d = k.data();
    let len = (k.prefix_len().saturating_sub(SRC_RANGE_PREFIX_BITS)).min(128) as u8;
    (d.rev_nat_id, Cidr::new(ip6_of(d.addr).into(), len))
}

/// The Maglev map key of entry `index` of `rev_nat_id`'s table.
pub fn maglev_key(rev_nat_id: u16, index: u32) -> u32 {
    agent_common::maglev_key(rev_nat_id, index)
}

/// (rev-NAT id, index) of a Maglev map key.
pub fn maglev_index(key: u32) -> (u16, usize) {
    ((key >> 16) as u16, (key & 0xffff) as usize)
}

/// A conntrack key of either family (`ferry trace` looks a flow up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtLookupKey {
    V4(Ct4Key),
    V6(Ct6Key),
}

/// The conntrack key of the packet `src` -> `dst` over `proto` in direction
/// `dir` ([`ct_dir`]), as the TC programs build it from a packet; None when
/// the two addresses are of different families.
pub fn ct_key(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    proto: Protocol,
    dir: u8,
) -> Option<CtLookupKey> {
    let (sport, dport, proto) = (
        port_to_raw(src.port()),
        port_to_raw(dst.port()),
        proto.number(),
    );
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(CtLookupKey::V4(Ct4Key {
            saddr: ip_raw(s),
            daddr: ip_raw(d),
            sport,
            dport,
            proto,
            dir,
            _pad: [0; 2],
        })),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(CtLookupKey::V6(Ct6Key {
            saddr: ip6_raw(s),
            daddr: ip6_raw(d),
            sport,
            dport,
            proto,
            dir,
            _pad: [0; 2],
        })),
        _ => None,
    }
}

/// The session-affinity map key of `client` ([`affinity_client`] `kind`)
/// for frontend `rev_nat_id`.
pub fn affinity_key(client: u64, kind: u8, rev_nat_id: u16) -> AffinityKey {
    AffinityKey {
        client,
        rev_nat_id,
        kind,
        _pad: [0; 5],
    }
}

/// Who a north-south client is for session affinity, as the TC programs
/// name it: its IPv4 address, or a 64-bit fold of its IPv6 one.
pub fn affinity_client_ip(ip: IpAddr) -> (u64, u8) {
    match ip {
        IpAddr::V4(ip) => (u64::from(ip_raw(ip)), affinity_client::IPV4),
        IpAddr::V6(ip) => (
            agent_common::affinity_id_v6(&ip6_raw(ip)),
            affinity_client::IPV6,
        ),
    }
}

/// The flow hash the TC programs place a new flow with (Maglev index,
/// slot); None when the addresses are of different families.
pub fn flow_hash(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    proto: Protocol,
) -> Option<u32> {
    let (sport, dport, proto) = (
        port_to_raw(src.port()),
        port_to_raw(dst.port()),
        proto.number(),
    );
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(agent_common::flow_hash_v4(
            ip_raw(s),
            ip_raw(d),
            sport,
            dport,
            proto,
        )),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(agent_common::flow_hash_v6(
            &ip6_raw(s),
            &ip6_raw(d),
            sport,
            dport,
            proto,
        )),
        _ => None,
    }
}

/// (nat source, nat destination, backend id, rev-NAT id, flags, last seen)
/// of a conntrack value of either family.
pub fn ct_value_parts(
    v: &CtLookupValue,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    u32,
    u16,
    u8,
    u32,
) {
    use std::net::SocketAddr;
    match v {
        CtLookupValue::V4(v) => (
            SocketAddr::new(ip_of(v.nat_saddr).into(), port_from_raw(v.nat_sport)),
            SocketAddr::new(ip_of(v.nat_daddr).into(), port_from_raw(v.nat_dport)),
            v.backend_id,
            v.rev_nat_id,
            v.flags,
            v.last_seen,
        ),
        CtLookupValue::V6(v) => (
            SocketAddr::new(ip6_of(v.nat_saddr).into(), port_from_raw(v.nat_sport)),
            SocketAddr::new(ip6_of(v.nat_daddr).into(), port_from_raw(v.nat_dport)),
            v.backend_id,
            v.rev_nat_id,
            v.flags,
            v.last_seen,
        ),
    }
}

/// A conntrack value of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtLookupValue {
    V4(Ct4Value),
    V6(Ct6Value),
}

/// Human names of a frontend's flag bits (`ferry services`).
pub fn flag_names(flags: u16) -> Vec<&'static str> {
    svc_flags::NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, n)| n)
        .collect()
}

/// A conntrack entry decoded for people (`ferry conntrack`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowView {
    pub direction: String,
    pub protocol: Option<Protocol>,
    /// The packet as it arrives.
    pub src: String,
    pub dst: String,
    /// What it is rewritten to.
    pub nat_src: String,
    pub nat_dst: String,
    pub snat: bool,
    /// Direct server return: node A forwards with the frontend in an IP
    /// option; node B's reply entry answers the client from the frontend.
    pub dsr: bool,
    pub local_backend: bool,
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub idle_seconds: u32,
}

/// A conntrack map's key type: the fields of each family's key and value
/// that the collection, the resize and `ferry conntrack` read, so that one
/// piece of code serves both maps.
pub trait CtKey: aya::Pod + Ord + Copy {
    type Value: aya::Pod + Copy;
    /// The map's name (`agent_common::maps`).
    const MAP: &'static str;
    fn dir(&self) -> u8;
    fn proto(&self) -> u8;
    fn last_seen(v: &Self::Value) -> u32;
    fn tcp_flags(v: &Self::Value) -> u8;
    /// The REPLY key of a flow, from its FORWARD entry: the translated
    /// packet's addresses, reversed.
    fn reply_key(&self, v: &Self::Value) -> Self;
    /// Decodes an entry for people; `now` is CLOCK_MONOTONIC seconds.
    fn view(&self, v: &Self::Value, now: u32) -> FlowView;
}

/// The fields of an entry a view is made of, addresses as text.
struct FlowParts {
    dir: u8,
    proto: u8,
    src: String,
    dst: String,
    nat_src: String,
    nat_dst: String,
    flags: u8,
    backend_id: u32,
    rev_nat_id: u16,
    last_seen: u32,
}

fn view_of(p: FlowParts, now: u32) -> FlowView {
    let forward = p.dir == ct_dir::FORWARD;
    // Unchanged fields of the packet keep their values in the view: a
    // forward entry without SNAT keeps the client as its source.
    let nat_src = if forward && p.flags & ct_flags::SNAT == 0 {
        p.src.clone()
    } else {
        p.nat_src
    };
    FlowView {
        direction: if forward { "forward" } else { "reply" }.to_owned(),
        protocol: Protocol::from_number(p.proto),
        src: p.src,
        dst: p.dst,
        nat_src,
        nat_dst: p.nat_dst,
        snat: p.flags & ct_flags::SNAT != 0,
        dsr: p.flags & ct_flags::DSR != 0,
        local_backend: p.flags & ct_flags::LOCAL != 0,
        backend_id: p.backend_id,
        rev_nat_id: p.rev_nat_id,
        idle_seconds: now.saturating_sub(p.last_seen),
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    crate::model::SockAddr(ip, port_from_raw(port)).to_string()
}

/// One conntrack key type's [`CtKey`]: the two families' entries have the
/// same fields, only their addresses differ (`$of` reads one).
macro_rules! ct_key {
    ($key:ty, $value:ty, $map:expr, $addr:ty, $of:expr) => {
        impl CtKey for $key {
            type Value = $value;
            const MAP: &'static str = $map;
            fn dir(&self) -> u8 {
                self.dir
            }
            fn proto(&self) -> u8 {
                self.proto
            }
            fn last_seen(v: &$value) -> u32 {
                v.last_seen
            }
            fn tcp_flags(v: &$value) -> u8 {
                v.tcp_flags
            }
            fn reply_key(&self, v: &$value) -> $key {
                Self {
                    saddr: v.nat_daddr,
                    daddr: v.nat_saddr,
                    sport: v.nat_dport,
                    dport: v.nat_sport,
                    proto: self.proto,
                    dir: ct_dir::REPLY,
                    _pad: [0; 2],
                }
            }
            fn view(&self, v: &$value, now: u32) -> FlowView {
                let e = |a: $addr, p: u16| endpoint(IpAddr::from($of(a)), p);
                view_of(
                    FlowParts {
                        dir: self.dir,
                        proto: self.proto,
                        src: e(self.saddr, self.sport),
                        dst: e(self.daddr, self.dport),
                        nat_src: e(v.nat_saddr, v.nat_sport),
                        nat_dst: e(v.nat_daddr, v.nat_dport),
                        flags: v.flags,
                        backend_id: v.backend_id,
                        rev_nat_id: v.rev_nat_id,
                        last_seen: v.last_seen,
                    },
                    now,
                )
            }
        }
    };
}

ct_key!(Ct4Key, Ct4Value, agent_common::maps::CT_V4, u32, ip_of);
ct_key!(
    Ct6Key,
    Ct6Value,
    agent_common::maps::CT_V6,
    [u32; 4],
    ip6_of
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = FrontendKey {
            ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 53,
            proto: Protocol::Udp,
            scope: Scope::Internal,
        };
        let SvcKey::V4(raw) = svc_key(&key, 3) else {
            panic!("an IPv4 frontend has an IPv4 key")
        };
        assert_eq!(raw.slot, 3);
        assert_eq!(raw.port, 53u16.to_be());
        assert_eq!(raw.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(frontend_key(&SvcKey::V4(raw)), Some(key));
        let b = BackendAddr {
            ip: Ipv4Addr::new(10, 244, 1, 2).into(),
            port: 8080,
            proto: Protocol::Tcp,
        };
        assert_eq!(backend_addr(&backend_value(&b, 0, 1)), Some(b));
        assert_eq!(member_of(&member_key(4, &b)), Some((4, b)));
        let cidr = Cidr::new(Ipv4Addr::new(192, 0, 2, 99).into(), 24);
        let SrcRangeKey::V4(k) = src_range_key(7, cidr) else {
            panic!("an IPv4 range has an IPv4 key")
        };
        assert_eq!(src_range_of(&k), (7, cidr));
        assert_eq!(maglev_index(maglev_key(9, 16_380)), (9, 16_380));
    }

    #[test]
    fn ipv6_keys_round_trip_in_network_order() {
        let ip: Ipv6Addr = "fd00:96::a".parse().unwrap();
        let key = FrontendKey {
            ip: ip.into(),
            port: 443,
            proto: Protocol::Tcp,
            scope: Scope::External,
        };
        let SvcKey::V6(raw) = svc_key(&key, 0) else {
            panic!("an IPv6 frontend has an IPv6 key")
        };
        // The bytes as the kernel holds them (user_ip6, ipv6hdr.daddr).
        let bytes: Vec<u8> = raw.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, ip.octets());
        assert_eq!(frontend_key(&SvcKey::V6(raw)), Some(key));
        assert_eq!(cluster_ip_of(&cluster_ip_key(ip.into())), Some(ip.into()));
        assert_eq!(cluster_ip_of(&svc_key(&key, 0)), None);
        let b = BackendAddr {
            ip: "fd00:10:244::7".parse::<Ipv6Addr>().unwrap().into(),
            port: 8443,
            proto: Protocol::Udp,
        };
        assert_eq!(backend_addr(&backend_value(&b, 1, 0)), Some(b));
        assert_eq!(member_of(&member_key(12, &b)), Some((12, b)));
        let addr = key.addr();
        assert_eq!(rev_nat_target(&rev_nat_value(&addr)), (addr.ip, 443));
        let cidr = Cidr::new("2001:db8:1::ff".parse::<Ipv6Addr>().unwrap().into(), 48);
        let SrcRangeKey::V6(k) = src_range_key(3, cidr) else {
            panic!("an IPv6 range has an IPv6 key")
        };
        assert_eq!(k.prefix_len(), SRC_RANGE_PREFIX_BITS + 48);
        assert_eq!(src_range6_of(&k), (3, cidr));
    }

    #[test]
    fn every_flag_bit_has_a_name() {
        let mut bits: Vec<u16> = svc_flags::NAMES.iter().map(|(b, _)| *b).collect();
        bits.sort();
        for (i, b) in bits.iter().enumerate() {
            assert_eq!(*b, 1 << i, "flag bits must be contiguous from bit 0");
        }
        assert_eq!(
            flag_names(svc_flags::SOURCE_RANGES | svc_flags::MAGLEV),
            ["SourceRanges", "Maglev"]
        );
    }
}
