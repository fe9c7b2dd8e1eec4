//! Choosing a backend for a new flow of a frontend: session affinity first,
//! then Maglev consistent hashing or a slot. Shared by the socket layer and
//! the north-south programs, and written once for both address families
//! ([`Frontend`]: the IPv4 or IPv6 service and backend maps; the affinity
//! and Maglev maps are shared).
//!
//! North-south flows are placed by their flow hash (Katran's answer to lost
//! state): a flow whose conntrack entries were evicted or collected, made
//! again by its next packet, lands on the backend it had while the backend
//! set is unchanged (Maglev keeps that across most changes too), on every
//! node alike (the slots are in the same order everywhere). The price: the
//! choice is a known function of the 5-tuple, so a client can predict its
//! backend. A socket has no 5-tuple yet: its slot is random.

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ip6, MAGLEV_TABLE_SIZE, Svc4Key, Svc6Key,
    SvcValue, clock::ns_to_seconds, maglev_key, stats::Counter, svc_flags,
};
use core::mem::MaybeUninit;

use aya_ebpf::helpers::generated as h;

use crate::maps::{
    AFFINITY, BACKEND_LIVE_V4, BACKEND_LIVE_V6, BACKENDS_V4, BACKENDS_V6, MAGLEV, SERVICES_V4,
    SERVICES_V6, count,
};
use crate::parse::zeroed_in;

/// Frontend kinds that are exposed on the node's devices (the north-south
/// programs). ClusterIPs are served at the socket layer, and there only
/// with `node_flags::EXTERNAL_CLUSTER_IP`.
pub const EXPOSED: u16 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;

/// Seconds of CLOCK_MONOTONIC: the clock of affinity and conntrack times
/// (the agent reads it with clock_gettime). The coarse clock (the time of
/// the last tick, Linux 5.11) costs no clocksource read on every packet;
/// being at most a tick behind, it never gets ahead of the agent's. Without
/// a division: [`ns_to_seconds`] (a 64-bit `div` per packet in the JIT).
#[inline(always)]
pub fn now_seconds() -> u32 {
    ns_to_seconds(unsafe { h::bpf_ktime_get_coarse_ns() }) as u32
}

/// A service map key of one address family, with that family's maps: the
/// choice below is written once and compiled for each family. Rev-NAT ids,
/// backend ids, the affinity map and the Maglev tables are shared by both.
pub trait Frontend: Copy {
    /// The address in map form (`u32`, or [`Ip6`]'s four words).
    type Addr: Copy + PartialEq;
    type Backend: Copy;
    /// The key of `addr`:`port` (network order) over `proto` in `scope`,
    /// slot 0 (the frontend).
    fn frontend(addr: Self::Addr, port: u16, proto: u8, scope: u8) -> Self;
    /// This key with another slot.
    fn with_slot(self, slot: u16) -> Self;
    /// The entry of this key in the family's service map.
    fn lookup(&self) -> Option<SvcValue>;
    /// The backend `id` of the family's backend map.
    fn backend(id: u32) -> Option<Self::Backend>;
    /// Whether backend `id` still has the address and port `dest` (a
    /// tracked flow's check, on every packet): the array mirror of the
    /// family's backend map, which the verifier inlines.
    fn backend_is(id: u32, dest: (Self::Addr, u16)) -> bool;
    /// A backend's address and port (network order).
    fn backend_dest(b: &Self::Backend) -> (Self::Addr, u16);
    /// A backend's [`agent_common::backend_flags`].
    fn backend_flags(b: &Self::Backend) -> u8;
}

macro_rules! frontend {
    ($key:ty, $addr:ty, $backend:ty, $services:ident, $get:expr, $live:expr) => {
        impl Frontend for $key {
            type Addr = $addr;
            type Backend = $backend;

            #[inline(always)]
            fn frontend(addr: $addr, port: u16, proto: u8, scope: u8) -> Self {
                Self {
                    addr,
                    port,
                    slot: 0,
                    proto,
                    scope,
                    _pad: [0; 2],
                }
            }

            #[inline(always)]
            fn with_slot(mut self, slot: u16) -> Self {
                self.slot = slot;
                self
            }

            #[inline(always)]
            fn lookup(&self) -> Option<SvcValue> {
                $services.get_ptr(self).map(|p| unsafe { *p })
            }

            #[inline(always)]
            fn backend(id: u32) -> Option<$backend> {
                ($get)(id)
            }

            #[inline(always)]
            fn backend_is(id: u32, dest: ($addr, u16)) -> bool {
                let b: Option<$backend> = ($live)(id);
                matches!(b, Some(b) if (b.addr, b.port) == dest)
            }

            #[inline(always)]
            fn backend_dest(b: &$backend) -> ($addr, u16) {
                (b.addr, b.port)
            }

            #[inline(always)]
            fn backend_flags(b: &$backend) -> u8 {
                b.flags
            }
        }
    };
}

// A free id's array slot is all zeroes: no flow's backend is 0.0.0.0:0.
frontend!(Svc4Key, u32, Backend4, SERVICES_V4, backend4, |id: u32| {
    BACKEND_LIVE_V4.get(id).copied()
});
// IPv6's likewise (no flow's backend is [::]:0).
frontend!(Svc6Key, Ip6, Backend6, SERVICES_V6, backend6, |id: u32| {
    BACKEND_LIVE_V6.get(id).copied()
});

/// IPv4 backend `id`: from the backend array (an array lookup the verifier
/// inlines, where the backend map is a hash lookup: ~20 ns of every new
/// flow), else from the backend map. The agent writes the array right after
/// the map entry and clears it before removing the entry, so a slot naming
/// an id whose array entry is still all zeroes (just added, or an agent
/// that keeps no array) reads the map.
#[inline(always)]
fn backend4(id: u32) -> Option<Backend4> {
    match BACKEND_LIVE_V4.get(id) {
        Some(b) if b.addr != 0 || b.port != 0 => Some(*b),
        _ => BACKENDS_V4.get_ptr(&id).map(|p| unsafe { *p }),
    }
}

/// IPv6 backend `id`, as [`backend4`]: the array first (`ferry_bel6_v1`),
/// else the backend map.
#[inline(always)]
fn backend6(id: u32) -> Option<Backend6> {
    match BACKEND_LIVE_V6.get(id) {
        Some(b) if b.addr != [0; 4] || b.port != 0 => Some(*b),
        _ => BACKENDS_V6.get_ptr(&id).map(|p| unsafe { *p }),
    }
}

/// The service map entry of `key`, in its family's map.
#[inline(always)]
pub fn lookup_svc<K: Frontend>(key: &K) -> Option<SvcValue> {
    key.lookup()
}

/// An IPv4 backend (DSR's check of a backend on this node).
#[inline(always)]
pub fn lookup_backend(id: u32) -> Option<Backend4> {
    Svc4Key::backend(id)
}

/// Who a client is for session affinity: `id` and [`agent_common::affinity_client`] kind.
#[derive(Clone, Copy)]
pub struct Client {
    pub id: u64,
    pub kind: u8,
}

pub struct Chosen<B> {
    pub id: u32,
    pub backend: B,
}

/// Picks a backend of the frontend `key` (its slot 0) with value `svc`
/// (`svc.count > 0`). `flow_hash` places the flow in the Maglev table or
/// among the slots; None (a socket): a random place.
#[inline(always)]
pub fn choose<K: Frontend>(
    key: &K,
    svc: &SvcValue,
    client: Client,
    flow_hash: Option<u32>,
) -> Option<Chosen<K::Backend>> {
    let affinity = svc.flags & svc_flags::AFFINITY != 0;
    // The clock and the key only matter to affinity: a Service without it
    // builds neither (the key's padding made the compiler's byte-loop memset).
    let now = if affinity { now_seconds() } else { 0 };
    let mut key_slot = MaybeUninit::uninit();
    let aff_key = if affinity {
        let k = affinity_key(&mut key_slot, client, svc.rev_nat_id);
        if let Some(chosen) = from_affinity::<K>(k, svc, now) {
            return Some(chosen);
        }
        Some(&*k)
    } else {
        None
    };

    let place = flow_hash.unwrap_or_else(|| unsafe { h::bpf_get_prandom_u32() });
    let id = if svc.flags & svc_flags::MAGLEV != 0 {
        match maglev(svc.rev_nat_id, place) {
            Some(id) => id,
            None => {
                // The agent has not written this table (yet): still serve.
                count(Counter::BackendMiss);
                slot(key, svc, place)?
            }
        }
    } else {
        slot(key, svc, place)?
    };
    let backend = K::backend(id)?;
    if let Some(aff_key) = aff_key {
        let v = AffinityValue {
            backend_id: id,
            last_used: now,
        };
        let _ = AFFINITY.insert(aff_key, &v, 0);
    }
    Some(Chosen { id, backend })
}

/// The affinity key of `client` for the Service `rev_nat_id`, built in
/// `slot` with word stores (a struct literal with its padding would be the
/// byte-loop memset).
#[inline(always)]
fn affinity_key(
    slot: &mut MaybeUninit<AffinityKey>,
    client: Client,
    rev_nat_id: u16,
) -> &mut AffinityKey {
    // SAFETY: integers, for which all zeros is valid.
    let k = unsafe { zeroed_in(slot) };
    k.client = client.id;
    k.rev_nat_id = rev_nat_id;
    k.kind = client.kind;
    k
}

/// The client's backend while its affinity entry is younger than the
/// timeout; using it refreshes the entry.
#[inline(always)]
fn from_affinity<K: Frontend>(
    aff_key: &AffinityKey,
    svc: &SvcValue,
    now: u32,
) -> Option<Chosen<K::Backend>> {
    let v = unsafe { *AFFINITY.get_ptr(aff_key)? };
    if now.wrapping_sub(v.last_used) > svc.affinity_timeout {
        return None;
    }
    let backend = K::backend(v.backend_id)?;
    count(Counter::AffinityHit);
    let refreshed = AffinityValue {
        backend_id: v.backend_id,
        last_used: now,
    };
    let _ = AFFINITY.insert(aff_key, &refreshed, 0);
    Some(Chosen {
        id: v.backend_id,
        backend,
    })
}

/// The backend id at the flow's place in the frontend's Maglev table.
#[inline(always)]
fn maglev(rev_nat_id: u16, flow_hash: u32) -> Option<u32> {
    let key = maglev_key(rev_nat_id, flow_hash % MAGLEV_TABLE_SIZE);
    MAGLEV.get_ptr(&key).map(|p| unsafe { *p })
}

/// The backend id of slot `place % count + 1`.
#[inline(always)]
fn slot<K: Frontend>(key: &K, svc: &SvcValue, place: u32) -> Option<u32> {
    let slot = (place % svc.count as u32) as u16 + 1;
    let mut slot_key = key.with_slot(slot);
    match slot_key.lookup() {
        Some(s) => Some(s.backend_id),
        None => {
            // The agent is shrinking this frontend right now: slot 1 always
            // exists while count > 0.
            count(Counter::BackendMiss);
            slot_key = slot_key.with_slot(1);
            Some(slot_key.lookup()?.backend_id)
        }
    }
}
