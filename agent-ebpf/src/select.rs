//! Choosing a backend for a new flow of a frontend: session affinity first,
//! then Maglev consistent hashing or a slot. Shared by the socket layer and
//! the north-south programs.
//!
//! North-south flows are placed by their flow hash (Katran's answer to lost
//! state): a flow whose conntrack entries were evicted or collected, made
//! again by its next packet, lands on the backend it had while the backend
//! set is unchanged (Maglev keeps that across most changes too), on every
//! node alike (the slots are in the same order everywhere). The price: the
//! choice is a known function of the 5-tuple, so a client can predict its
//! backend. A socket has no 5-tuple yet: its slot is random.

use agent_common::{
    AffinityKey, AffinityValue, Backend4, MAGLEV_TABLE_SIZE, Svc4Key, SvcValue, maglev_key,
    stats::Counter, svc_flags,
};
use aya_ebpf::helpers::generated as h;

use crate::maps::{AFFINITY, BACKENDS_V4, MAGLEV, SERVICES_V4, count};

/// Seconds of CLOCK_MONOTONIC: the clock of affinity and conntrack times.
#[inline(always)]
pub fn now_seconds() -> u32 {
    (unsafe { h::bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

#[inline(always)]
pub fn lookup_svc(key: &Svc4Key) -> Option<SvcValue> {
    SERVICES_V4.get_ptr(key).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn lookup_backend(id: u32) -> Option<Backend4> {
    BACKENDS_V4.get_ptr(&id).map(|p| unsafe { *p })
}

/// Who a client is for session affinity: `id` and [`agent_common::affinity_client`] kind.
#[derive(Clone, Copy)]
pub struct Client {
    pub id: u64,
    pub kind: u8,
}

pub struct Chosen {
    pub id: u32,
    pub backend: Backend4,
}

/// Picks a backend of the frontend `key` (its slot 0) with value `svc`
/// (`svc.count > 0`). `flow_hash` places the flow in the Maglev table or
/// among the slots; None (a socket): a random place.
#[inline(always)]
pub fn choose(
    key: &Svc4Key,
    svc: &SvcValue,
    client: Client,
    flow_hash: Option<u32>,
) -> Option<Chosen> {
    let affinity = svc.flags & svc_flags::AFFINITY != 0;
    // The clock only matters to affinity.
    let now = if affinity { now_seconds() } else { 0 };
    let aff_key = AffinityKey {
        client: client.id,
        rev_nat_id: svc.rev_nat_id,
        kind: client.kind,
        _pad: [0; 5],
    };
    if affinity && let Some(chosen) = from_affinity(&aff_key, svc, now) {
        return Some(chosen);
    }

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
    let backend = lookup_backend(id)?;
    if affinity {
        let v = AffinityValue {
            backend_id: id,
            last_used: now,
        };
        let _ = AFFINITY.insert(&aff_key, &v, 0);
    }
    Some(Chosen { id, backend })
}

/// The client's backend while its affinity entry is younger than the
/// timeout; using it refreshes the entry.
#[inline(always)]
fn from_affinity(aff_key: &AffinityKey, svc: &SvcValue, now: u32) -> Option<Chosen> {
    let v = unsafe { *AFFINITY.get_ptr(aff_key)? };
    if now.wrapping_sub(v.last_used) > svc.affinity_timeout {
        return None;
    }
    let backend = lookup_backend(v.backend_id)?;
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
fn slot(key: &Svc4Key, svc: &SvcValue, place: u32) -> Option<u32> {
    let slot = (place % svc.count as u32) as u16 + 1;
    let mut slot_key = *key;
    slot_key.slot = slot;
    match lookup_svc(&slot_key) {
        Some(s) => Some(s.backend_id),
        None => {
            // The agent is shrinking this frontend right now: slot 1 always
            // exists while count > 0.
            count(Counter::BackendMiss);
            slot_key.slot = 1;
            Some(lookup_svc(&slot_key)?.backend_id)
        }
    }
}
