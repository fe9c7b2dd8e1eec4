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
//!
//! Written once for both families: [`CtKey`] and [`CtValue`] give the
//! generic code the fields of `agent_common`'s `Ct4Key`/`Ct4Value`
//! (`ferry_ct4_v1`) and `Ct6Key`/`Ct6Value` (`ferry_ct6_v1`), which have the
//! same fields and meanings, only the addresses differ.

use core::mem::MaybeUninit;

use agent_common::{
    Ct4Key, Ct4Value, Ct6Key, Ct6Value, Ip6, NodeConfig, SNAT_PORT_MAX_DEFAULT,
    SNAT_PORT_MIN_DEFAULT, ct_dir, ct_over,
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated as h, maps::LruHashMap};

use crate::{
    maps::{CT_FILL, CT_V4, CT_V6, NODE_CONFIG},
    parse::Tuple,
};

/// Pseudo-random SNAT ports tried before a new flow is given up.
const SNAT_PORT_TRIES: u32 = 16;

/// A conntrack key of one family, with its value type and its map.
pub trait CtKey: Copy + 'static {
    /// The address in map form (`u32`, or [`Ip6`]'s four words).
    type Addr: Copy + PartialEq;
    type Value: CtValue<Addr = Self::Addr>;
    fn map() -> &'static LruHashMap<Self, Self::Value>;
    fn new(
        saddr: Self::Addr,
        daddr: Self::Addr,
        sport: u16,
        dport: u16,
        proto: u8,
        dir: u8,
    ) -> Self;
    fn proto(&self) -> u8;
    fn set_dport(&mut self, port: u16);
    fn set_dir(&mut self, dir: u8);
}

/// A conntrack value of one family (see [`Ct4Value`] for the fields).
pub trait CtValue: Copy + 'static {
    type Addr: Copy + PartialEq;
    #[allow(clippy::too_many_arguments)]
    fn new(
        nat_saddr: Self::Addr,
        nat_daddr: Self::Addr,
        nat_sport: u16,
        nat_dport: u16,
        backend_id: u32,
        rev_nat_id: u16,
        flags: u8,
        tcp_flags: u8,
        last_seen: u32,
    ) -> Self;
    fn nat_saddr(&self) -> Self::Addr;
    fn nat_daddr(&self) -> Self::Addr;
    fn nat_sport(&self) -> u16;
    fn nat_dport(&self) -> u16;
    fn backend_id(&self) -> u32;
    fn rev_nat_id(&self) -> u16;
    fn flags(&self) -> u8;
    fn tcp_flags(&self) -> u8;
    fn last_seen(&self) -> u32;
    /// Sets the new source (the SNAT address and port).
    fn set_source(&mut self, addr: Self::Addr, port: u16);
    /// The fields a packet of the flow updates ([`touch`]): its TCP flags
    /// and its time, in a live map value.
    fn stamps(v: *mut Self) -> (*mut u8, *mut u32);
}

macro_rules! conntrack {
    ($key:ty, $value:ty, $addr:ty, $map:ident) => {
        impl CtKey for $key {
            type Addr = $addr;
            type Value = $value;

            #[inline(always)]
            fn map() -> &'static LruHashMap<$key, $value> {
                &$map
            }

            #[inline(always)]
            fn new(saddr: $addr, daddr: $addr, sport: u16, dport: u16, proto: u8, dir: u8) -> Self {
                Self {
                    saddr,
                    daddr,
                    sport,
                    dport,
                    proto,
                    dir,
                    _pad: [0; 2],
                }
            }

            #[inline(always)]
            fn proto(&self) -> u8 {
                self.proto
            }

            #[inline(always)]
            fn set_dport(&mut self, port: u16) {
                self.dport = port;
            }

            #[inline(always)]
            fn set_dir(&mut self, dir: u8) {
                self.dir = dir;
            }
        }

        impl CtValue for $value {
            type Addr = $addr;

            #[inline(always)]
            fn new(
                nat_saddr: $addr,
                nat_daddr: $addr,
                nat_sport: u16,
                nat_dport: u16,
                backend_id: u32,
                rev_nat_id: u16,
                flags: u8,
                tcp_flags: u8,
                last_seen: u32,
            ) -> Self {
                Self {
                    nat_saddr,
                    nat_daddr,
                    nat_sport,
                    nat_dport,
                    backend_id,
                    rev_nat_id,
                    flags,
                    tcp_flags,
                    last_seen,
                }
            }

            #[inline(always)]
            fn nat_saddr(&self) -> $addr {
                self.nat_saddr
            }

            #[inline(always)]
            fn nat_daddr(&self) -> $addr {
                self.nat_daddr
            }

            #[inline(always)]
            fn nat_sport(&self) -> u16 {
                self.nat_sport
            }

            #[inline(always)]
            fn nat_dport(&self) -> u16 {
                self.nat_dport
            }

            #[inline(always)]
            fn backend_id(&self) -> u32 {
                self.backend_id
            }

            #[inline(always)]
            fn rev_nat_id(&self) -> u16 {
                self.rev_nat_id
            }

            #[inline(always)]
            fn flags(&self) -> u8 {
                self.flags
            }

            #[inline(always)]
            fn tcp_flags(&self) -> u8 {
                self.tcp_flags
            }

            #[inline(always)]
            fn last_seen(&self) -> u32 {
                self.last_seen
            }

            #[inline(always)]
            fn set_source(&mut self, addr: $addr, port: u16) {
                self.nat_saddr = addr;
                self.nat_sport = port;
            }

            #[inline(always)]
            fn stamps(v: *mut Self) -> (*mut u8, *mut u32) {
                // SAFETY: field addresses of the caller's live value.
                unsafe {
                    (
                        core::ptr::addr_of_mut!((*v).tcp_flags),
                        core::ptr::addr_of_mut!((*v).last_seen),
                    )
                }
            }
        }
    };
}

conntrack!(Ct4Key, Ct4Value, u32, CT_V4);
conntrack!(Ct6Key, Ct6Value, Ip6, CT_V6);

#[inline(always)]
pub fn key<K: CtKey>(t: &Tuple<K::Addr>, dir: u8) -> K {
    K::new(t.saddr, t.daddr, t.sport, t.dport, t.proto, dir)
}

/// The REPLY key of the flow whose FORWARD entry is `fwd` (see
/// [`Ct4Value`]: the backend answers the (possibly SNAT) source).
#[inline(always)]
pub fn reply_key<K: CtKey>(fwd: &K::Value, proto: u8) -> K {
    K::new(
        fwd.nat_daddr(),
        fwd.nat_saddr(),
        fwd.nat_dport(),
        fwd.nat_sport(),
        proto,
        ct_dir::REPLY,
    )
}

#[inline(always)]
pub fn lookup<K: CtKey>(key: &K) -> Option<*mut K::Value> {
    K::map().get_ptr_mut(key)
}

/// Copies the live map value `entry` into `slot` (a plain copy: the
/// compiler cannot tell the two apart and would call `memmove`, a loop).
#[inline(always)]
pub fn copy_into<V: CtValue>(entry: *const V, slot: &mut MaybeUninit<V>) -> &mut V {
    // SAFETY: a live map value and a slot of its type, which do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(entry, slot.as_mut_ptr(), 1);
        slot.assume_init_mut()
    }
}

/// Records a packet of the flow: its time and TCP flags. Writes only what
/// changed, so a busy flow does not dirty the shared value's cache line on
/// every packet. (Concurrent updates from several CPUs may lose a flag bit
/// or a second: harmless for idle timeouts.)
#[inline(always)]
pub fn touch<V: CtValue>(v: *mut V, now: u32, tcp_flags: u8) {
    let (flags, last_seen) = V::stamps(v);
    // SAFETY: a live map value; plain stores to its fields.
    unsafe {
        if *last_seen != now {
            *last_seen = now;
        }
        if tcp_flags & !*flags != 0 {
            *flags |= tcp_flags;
        }
    }
}

/// Removes both entries of the flow whose FORWARD entry is (`fwd_key`, `fwd`).
#[inline(always)]
pub fn remove_flow<K: CtKey>(fwd_key: &K, fwd: &K::Value) {
    let _ = K::map().remove(&reply_key::<K>(fwd, fwd_key.proto()));
    let _ = K::map().remove(fwd_key);
}

/// The FORWARD key of the flow whose REPLY entry is (`rkey`, `rval`): the
/// client's packets to the frontend.
#[inline(always)]
pub fn forward_key_of<K: CtKey>(rkey: &K, rval: &K::Value) -> K {
    K::new(
        rval.nat_daddr(),
        rval.nat_saddr(),
        rval.nat_dport(),
        rval.nat_sport(),
        rkey.proto(),
        ct_dir::FORWARD,
    )
}

/// The flow of the REPLY entry (`rkey`, `rval`) is over (closing, or idle
/// past its timeout), judged on both of its entries as the agent's
/// collection judges them: a new flow may take its place.
#[inline(always)]
pub fn reply_flow_over<K: CtKey>(rkey: &K, rval: &K::Value, now: u32) -> bool {
    let (mut flags, mut last) = (rval.tcp_flags(), rval.last_seen());
    if let Some(f) = lookup(&forward_key_of(rkey, rval)) {
        // SAFETY: a live map value; two fields read.
        let (f_flags, f_last) = unsafe { ((*f).tcp_flags(), (*f).last_seen()) };
        flags |= f_flags;
        if f_last > last {
            last = f_last;
        }
    }
    // Saturating: another CPU may have stamped the entry a second later.
    ct_over(rkey.proto(), flags, now.saturating_sub(last))
}

/// Forgets the flow of the REPLY entry (`rkey`, `rval`): both entries.
#[inline(always)]
pub fn forget_reply_flow<K: CtKey>(rkey: &K, rval: &K::Value) {
    let _ = K::map().remove(&forward_key_of(rkey, rval));
    let _ = K::map().remove(rkey);
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
pub fn claim_snat_port<K: CtKey>(
    rkey: &mut K,
    rval: &K::Value,
    client_port: u16,
    range: PortRange,
) -> Option<u16> {
    if range.contains(client_port) {
        rkey.set_dport(client_port);
        if K::map().insert(rkey, rval, BPF_NOEXIST as u64).is_ok() {
            return Some(client_port);
        }
    }
    let span = (range.max - range.min) as u32 + 1;
    for _ in 0..SNAT_PORT_TRIES {
        let port = ((range.min as u32 + unsafe { h::bpf_get_prandom_u32() } % span) as u16).to_be();
        rkey.set_dport(port);
        if K::map().insert(rkey, rval, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
    }
    None
}
