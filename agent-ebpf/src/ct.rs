//! North-south connection tracking: the two entries of a translated flow.
//!
//! FORWARD is keyed by the client's packets as they arrive (client ->
//! frontend), REPLY by the backend's (backend -> client, or -> the SNAT
//! address and port). Each value says what to write into the packet, so a
//! tracked packet costs one lookup. The map is an LRU: entries of dead flows
//! age out under pressure; the agent may also remove idle ones by
//! `last_seen` (a flow is alive while either entry is recent).
//!
//! A new flow never takes over a live flow's entry: when the entry it needs
//! belongs to a flow that is not over, the new flow's packet is dropped
//! (`NsCtClashDrop`), as netfilter drops a SYN whose reply tuple clashes with
//! a live connection's. Forged packets, which cannot be told from the real
//! ones here, so cannot tear down or hijack a flow by reusing its 5-tuple.

use agent_common::{
    Ct4Key, Ct4Value, NodeConfig, SNAT_PORT_MAX_DEFAULT, SNAT_PORT_MIN_DEFAULT, ct_dir, ct_over,
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated as h};

use crate::{
    maps::{CT_FILL, CT_V4, NODE_CONFIG},
    parse::Tuple,
};

/// Pseudo-random SNAT ports tried before a new flow is given up.
const SNAT_PORT_TRIES: u32 = 16;

#[inline(always)]
pub fn key(t: &Tuple, dir: u8) -> Ct4Key {
    Ct4Key {
        saddr: t.saddr,
        daddr: t.daddr,
        sport: t.sport,
        dport: t.dport,
        proto: t.proto,
        dir,
        _pad: [0; 2],
    }
}

/// The REPLY key of the flow whose FORWARD entry is `fwd` (see
/// [`Ct4Value`]: the backend answers the (possibly SNAT) source).
#[inline(always)]
pub fn reply_key(fwd: &Ct4Value, proto: u8) -> Ct4Key {
    Ct4Key {
        saddr: fwd.nat_daddr,
        daddr: fwd.nat_saddr,
        sport: fwd.nat_dport,
        dport: fwd.nat_sport,
        proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn lookup(key: &Ct4Key) -> Option<*mut Ct4Value> {
    CT_V4.get_ptr_mut(key)
}

/// Records a packet of the flow: its time and TCP flags. Writes only what
/// changed, so a busy flow does not dirty the shared value's cache line on
/// every packet. (Concurrent updates from several CPUs may lose a flag bit
/// or a second: harmless for idle timeouts.)
#[inline(always)]
pub fn touch(v: *mut Ct4Value, now: u32, tcp_flags: u8) {
    // SAFETY: a live map value; plain stores to its fields.
    unsafe {
        if (*v).last_seen != now {
            (*v).last_seen = now;
        }
        if tcp_flags & !(*v).tcp_flags != 0 {
            (*v).tcp_flags |= tcp_flags;
        }
    }
}

/// Removes both entries of the flow whose FORWARD entry is (`fwd_key`, `fwd`).
#[inline(always)]
pub fn remove_flow(fwd_key: &Ct4Key, fwd: &Ct4Value) {
    let _ = CT_V4.remove(&reply_key(fwd, fwd_key.proto));
    let _ = CT_V4.remove(fwd_key);
}

/// The FORWARD key of the flow whose REPLY entry is (`rkey`, `rval`): the
/// client's packets to the frontend.
#[inline(always)]
pub fn forward_key_of(rkey: &Ct4Key, rval: &Ct4Value) -> Ct4Key {
    Ct4Key {
        saddr: rval.nat_daddr,
        daddr: rval.nat_saddr,
        sport: rval.nat_dport,
        dport: rval.nat_sport,
        proto: rkey.proto,
        dir: ct_dir::FORWARD,
        _pad: [0; 2],
    }
}

/// The flow of the REPLY entry (`rkey`, `rval`) is over (closing, or idle
/// past its timeout), judged on both of its entries as the agent's
/// collection judges them: a new flow may take its place.
#[inline(always)]
pub fn reply_flow_over(rkey: &Ct4Key, rval: &Ct4Value, now: u32) -> bool {
    let (mut flags, mut last) = (rval.tcp_flags, rval.last_seen);
    if let Some(f) = lookup(&forward_key_of(rkey, rval)) {
        // SAFETY: a live map value; two fields read.
        let (f_flags, f_last) = unsafe { ((*f).tcp_flags, (*f).last_seen) };
        flags |= f_flags;
        if f_last > last {
            last = f_last;
        }
    }
    // Saturating: another CPU may have stamped the entry a second later.
    ct_over(rkey.proto, flags, now.saturating_sub(last))
}

/// Forgets the flow of the REPLY entry (`rkey`, `rval`): both entries.
#[inline(always)]
pub fn forget_reply_flow(rkey: &Ct4Key, rval: &Ct4Value) {
    let _ = CT_V4.remove(&forward_key_of(rkey, rval));
    let _ = CT_V4.remove(rkey);
}

/// How full the map is, per mille, as the agent last measured it.
#[inline(always)]
pub fn fill_permille() -> u32 {
    CT_FILL.get_ptr(0).map(|p| unsafe { *p }).unwrap_or(0)
}

/// The node's SNAT port range, host order.
#[derive(Clone, Copy)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    #[inline(always)]
    pub fn contains(&self, port_raw: u16) -> bool {
        let p = u16::from_be(port_raw);
        p >= self.min && p <= self.max
    }
}

#[inline(always)]
pub fn node_config() -> NodeConfig {
    NODE_CONFIG
        .get_ptr(0)
        .map(|p| unsafe { *p })
        .unwrap_or_default()
}

#[inline(always)]
pub fn snat_ports(cfg: &NodeConfig) -> PortRange {
    if cfg.snat_port_min == 0 || cfg.snat_port_max == 0 || cfg.snat_port_min > cfg.snat_port_max {
        PortRange {
            min: SNAT_PORT_MIN_DEFAULT,
            max: SNAT_PORT_MAX_DEFAULT,
        }
    } else {
        PortRange {
            min: cfg.snat_port_min,
            max: cfg.snat_port_max,
        }
    }
}

/// Claims a SNAT source port for a flow by inserting its REPLY entry
/// (`rkey` with `dport` to be chosen, value `rval`) with BPF_NOEXIST: an
/// existing entry is another flow's port towards the same backend. The
/// client's own port is tried first when it lies in the range (keeping it
/// where possible, as Linux's NAT does), then pseudo-random ones. Returns
/// the port (raw) or None when every try was taken.
#[inline(always)]
pub fn claim_snat_port(
    rkey: &mut Ct4Key,
    rval: &Ct4Value,
    client_port: u16,
    range: PortRange,
) -> Option<u16> {
    if range.contains(client_port) {
        rkey.dport = client_port;
        if CT_V4.insert(rkey, rval, BPF_NOEXIST as u64).is_ok() {
            return Some(client_port);
        }
    }
    let span = (range.max - range.min) as u32 + 1;
    for _ in 0..SNAT_PORT_TRIES {
        let port = (range.min as u32 + unsafe { h::bpf_get_prandom_u32() } % span) as u16;
        rkey.dport = port.to_be();
        if CT_V4.insert(rkey, rval, BPF_NOEXIST as u64).is_ok() {
            return Some(rkey.dport);
        }
    }
    None
}
