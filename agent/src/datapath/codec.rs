//! The one place in user space that builds and reads map keys and values:
//! the programmer, `ferry services` / `ferry conntrack`, the snapshot read at
//! adoption, and the tests all go through here, so the byte layout of the
//! ABI (agent-common) and its byte order are spelled out once.

use std::net::Ipv4Addr;

use agent_common::{
    Backend4, Ct4Key, Ct4Value, Member4Key, RevNat4, SRC_RANGE_PREFIX_BITS, SrcRange4, Svc4Key,
    SvcValue, backend_state, ct_dir, ct_flags,
    net::{ip4_from_raw, ip4_to_raw, port_from_raw, port_to_raw},
    svc_flags,
};
use aya::maps::lpm_trie::Key;

use crate::model::{AddrKey, BackendAddr, Cidr4, FrontendKey, Protocol, Scope};

pub fn ip_raw(ip: Ipv4Addr) -> u32 {
    ip4_to_raw(ip.octets())
}

pub fn ip_of(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip4_from_raw(raw))
}

/// The service-map key of `key`'s slot (0 = the frontend itself).
pub fn svc_key(key: &FrontendKey, slot: u16) -> Svc4Key {
    Svc4Key {
        addr: ip_raw(key.ip),
        port: port_to_raw(key.port),
        slot,
        proto: key.proto.number(),
        scope: key.scope.number(),
        _pad: [0; 2],
    }
}

/// The frontend a service-map key belongs to; None for a key no agent
/// writes (unknown protocol or scope).
pub fn frontend_key(k: &Svc4Key) -> Option<FrontendKey> {
    Some(FrontendKey {
        ip: ip_of(k.addr),
        port: port_from_raw(k.port),
        proto: Protocol::from_number(k.proto)?,
        scope: match k.scope {
            agent_common::scope::EXTERNAL => Scope::External,
            agent_common::scope::INTERNAL => Scope::Internal,
            _ => return None,
        },
    })
}

/// The service-map entry that marks an address as a ClusterIP whatever the
/// port (port 0, protocol 0: no packet or socket has those): the socket
/// layer refuses a ClusterIP on a port no Service defines, as kube-proxy's
/// `cluster-ips-check` rejects it.
pub fn cluster_ip_key(ip: Ipv4Addr) -> Svc4Key {
    Svc4Key {
        addr: ip_raw(ip),
        port: 0,
        slot: 0,
        proto: 0,
        scope: agent_common::scope::EXTERNAL,
        _pad: [0; 2],
    }
}

/// The address a [`cluster_ip_key`] marks; None for any other key.
pub fn cluster_ip_of(k: &Svc4Key) -> Option<Ipv4Addr> {
    (k.port == 0 && k.proto == 0 && k.slot == 0 && k.scope == agent_common::scope::EXTERNAL)
        .then(|| ip_of(k.addr))
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

pub fn backend_value(b: &BackendAddr, state: u8, flags: u8) -> Backend4 {
    Backend4 {
        addr: ip_raw(b.ip),
        port: port_to_raw(b.port),
        proto: b.proto.number(),
        state,
        flags,
        _pad: [0; 3],
    }
}

pub fn backend_addr(v: &Backend4) -> Option<BackendAddr> {
    Some(BackendAddr {
        ip: ip_of(v.addr),
        port: port_from_raw(v.port),
        proto: Protocol::from_number(v.proto)?,
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

pub fn rev_nat_value(addr: &AddrKey) -> RevNat4 {
    RevNat4 {
        addr: ip_raw(addr.ip),
        port: port_to_raw(addr.port),
        _pad: 0,
    }
}

/// The service address and port a rev-NAT entry restores.
pub fn rev_nat_target(v: &RevNat4) -> (Ipv4Addr, u16) {
    (ip_of(v.addr), port_from_raw(v.port))
}

/// The membership key of backend `b` of the exposed frontend `rev_nat_id`
/// (what a DSR option naming that frontend may reach).
pub fn member_key(rev_nat_id: u16, b: &BackendAddr) -> Member4Key {
    Member4Key {
        rev_nat_id,
        proto: b.proto.number(),
        _pad: 0,
        addr: ip_raw(b.ip),
        port: port_to_raw(b.port),
        _pad2: 0,
    }
}

/// (rev-NAT id, backend) of a membership key (tools and tests read the map).
pub fn member_of(k: &Member4Key) -> Option<(u16, BackendAddr)> {
    Some((
        k.rev_nat_id,
        BackendAddr {
            ip: ip_of(k.addr),
            port: port_from_raw(k.port),
            proto: Protocol::from_number(k.proto)?,
        },
    ))
}

/// The LPM key of a source range of a service.
pub fn src_range_key(rev_nat_id: u16, cidr: Cidr4) -> Key<SrcRange4> {
    let data = SrcRange4 {
        rev_nat_id,
        _pad: 0,
        addr: ip_raw(cidr.addr),
    };
    Key::new(SRC_RANGE_PREFIX_BITS + u32::from(cidr.len), data)
}

/// (rev-NAT id, range) of a source-range key.
pub fn src_range_of(k: &Key<SrcRange4>) -> (u16, Cidr4) {
    let d = k.data();
    let len = (k.prefix_len().saturating_sub(SRC_RANGE_PREFIX_BITS)).min(32) as u8;
    (d.rev_nat_id, Cidr4::new(ip_of(d.addr), len))
}

/// The Maglev map key of entry `index` of `rev_nat_id`'s table.
pub fn maglev_key(rev_nat_id: u16, index: u32) -> u32 {
    agent_common::maglev_key(rev_nat_id, index)
}

/// (rev-NAT id, index) of a Maglev map key.
pub fn maglev_index(key: u32) -> (u16, usize) {
    ((key >> 16) as u16, (key & 0xffff) as usize)
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

fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{}", ip_of(addr), port_from_raw(port))
}

/// Decodes a conntrack entry; `now` is CLOCK_MONOTONIC seconds.
pub fn flow_view(k: &Ct4Key, v: &Ct4Value, now: u32) -> FlowView {
    let forward = k.dir == ct_dir::FORWARD;
    // Unchanged fields of the packet keep their values in the view.
    let (nat_src, nat_dst) = if forward {
        let src = if v.flags & ct_flags::SNAT != 0 {
            endpoint(v.nat_saddr, v.nat_sport)
        } else {
            endpoint(k.saddr, k.sport)
        };
        (src, endpoint(v.nat_daddr, v.nat_dport))
    } else {
        (
            endpoint(v.nat_saddr, v.nat_sport),
            endpoint(v.nat_daddr, v.nat_dport),
        )
    };
    FlowView {
        direction: if forward { "forward" } else { "reply" }.to_owned(),
        protocol: Protocol::from_number(k.proto),
        src: endpoint(k.saddr, k.sport),
        dst: endpoint(k.daddr, k.dport),
        nat_src,
        nat_dst,
        snat: v.flags & ct_flags::SNAT != 0,
        dsr: v.flags & ct_flags::DSR != 0,
        local_backend: v.flags & ct_flags::LOCAL != 0,
        backend_id: v.backend_id,
        rev_nat_id: v.rev_nat_id,
        idle_seconds: now.saturating_sub(v.last_seen),
    }
}

/// The REPLY key of a flow, from its FORWARD entry: the translated packet's
/// addresses, reversed.
pub fn reply_key_of(k: &Ct4Key, v: &Ct4Value) -> Ct4Key {
    Ct4Key {
        saddr: v.nat_daddr,
        daddr: v.nat_saddr,
        sport: v.nat_dport,
        dport: v.nat_sport,
        proto: k.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = FrontendKey {
            ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            proto: Protocol::Udp,
            scope: Scope::Internal,
        };
        let raw = svc_key(&key, 3);
        assert_eq!(raw.slot, 3);
        assert_eq!(raw.port, 53u16.to_be());
        assert_eq!(raw.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(frontend_key(&raw), Some(key));
        let b = BackendAddr {
            ip: Ipv4Addr::new(10, 244, 1, 2),
            port: 8080,
            proto: Protocol::Tcp,
        };
        assert_eq!(backend_addr(&backend_value(&b, 0, 1)), Some(b));
        assert_eq!(member_of(&member_key(4, &b)), Some((4, b)));
        let cidr = Cidr4::new(Ipv4Addr::new(192, 0, 2, 99), 24);
        assert_eq!(src_range_of(&src_range_key(7, cidr)), (7, cidr));
        assert_eq!(maglev_index(maglev_key(9, 16_380)), (9, 16_380));
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
