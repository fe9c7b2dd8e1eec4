//! The maps, named after `agent_common::maps` (the names must be literals
//! here; the agent's loader fails loudly if the two ever disagree).

use agent_common::{
    AffinityKey, AffinityValue, Backend4, RevNat4, SockRev4, SockRev4Key, Svc4Key, SvcValue,
    maps as m,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};

#[map(name = "ferry_svc4_v1")]
pub static SERVICES_V4: HashMap<Svc4Key, SvcValue> = HashMap::pinned(m::SERVICES_V4_MAX, 0);

#[map(name = "ferry_be4_v1")]
pub static BACKENDS_V4: HashMap<u32, Backend4> = HashMap::pinned(m::BACKENDS_V4_MAX, 0);

#[map(name = "ferry_rnat4_v1")]
pub static REV_NAT_V4: HashMap<u16, RevNat4> = HashMap::pinned(m::REV_NAT_V4_MAX, 0);

#[map(name = "ferry_sk4_v1")]
pub static SOCK_REV_V4: LruHashMap<SockRev4Key, SockRev4> =
    LruHashMap::pinned(m::SOCK_REV_V4_MAX, 0);

#[map(name = "ferry_aff_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(m::AFFINITY_MAX, 0);

#[map(name = "ferry_stats_v1")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(agent_common::stats::COUNTERS, 0);

#[inline(always)]
pub fn count(c: agent_common::stats::Counter) {
    if let Some(p) = STATS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *p += 1 };
    }
}
