//! The maps, named after `agent_common::maps` (the names must be literals
//! here; the agent's loader fails loudly if the two ever disagree).

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, Dead4Key,
    Dead6Key, Ip6, Member4Key, Member6Key, NodeConfig, RevNat4, RevNat6, SockGuard4, SockGuard6,
    SockRev4, SockRev4Key, SockRev6, SockRev6Key, SockSlot4, SockSlot6, SrcRange4, SrcRange6,
    Svc4Key, Svc6Key, SvcValue,
    event::{MonitorControl, RING_BYTES},
    maps as m,
};
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Maps that hold only what is in use.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "ferry_svc4_v1")]
pub static SERVICES_V4: HashMap<Svc4Key, SvcValue> = HashMap::pinned(m::SERVICES_V4_MAX, 0);

#[map(name = "ferry_be4_v1")]
pub static BACKENDS_V4: HashMap<u32, Backend4> = HashMap::pinned(m::BACKENDS_V4_MAX, 0);

/// [`BACKENDS_V4`] as an array by id (agent_common::maps::BACKEND_LIVE_V4):
/// the conntrack hit path's liveness check, inlined by the verifier.
#[map(name = "ferry_bel4_v1")]
pub static BACKEND_LIVE_V4: Array<Backend4> = Array::pinned(m::BACKEND_LIVE_V4_MAX, 0);

#[map(name = "ferry_rnat4_v1")]
pub static REV_NAT_V4: HashMap<u16, RevNat4> = HashMap::pinned(m::REV_NAT_V4_MAX, 0);

#[map(name = "ferry_sk4_v1")]
pub static SOCK_REV_V4: LruHashMap<SockRev4Key, SockRev4> =
    LruHashMap::pinned(m::SOCK_REV_V4_MAX, 0);

/// Connected sockets' reverse translations by cookie (sock_rev.rs).
#[map(name = "ferry_skc4_v1")]
pub static SOCK_SLOTS_V4: Array<SockSlot4> = Array::pinned(m::SOCK_SLOTS, 0);

/// Backend ports with reverse entries (sock_lb.rs), both families.
#[map(name = "ferry_skport_v1")]
pub static SOCK_PORTS: Array<u64> = Array::pinned(m::SOCK_PORTS_WORDS, 0);

#[map(name = "ferry_dead4_v1")]
pub static DEAD_V4: HashMap<Dead4Key, u8> = HashMap::pinned(m::DEAD_V4_MAX, 0);

#[map(name = "ferry_aff_v1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(m::AFFINITY_MAX, 0);

/// The LRU maps keep the common LRU list (`m::CT_FLAGS` says why the
/// conntrack maps do). Per-CPU lists would divide each map among the CPUs,
/// and a map whose entries are written on one CPU would get only a share:
/// - `ferry_sk4_v1`/`ferry_sk6_v1` (socket reverse NAT): written at
///   connect/sendmsg on the application's CPU; an evicted entry breaks its
///   unconnected UDP replies (wrong source).
/// - `ferry_aff_v1` (session affinity): refreshed from whichever CPU the
///   client's next flow lands on (an LRU update moves the entry to the
///   updater's list); an evicted entry moves the client to another backend.
/// - `ferry_icmps_v1`/`ferry_icmps6_v1` (REJECT budgets): a flood of
///   sources that all land on one CPU is when the budgets matter.
#[map(name = "ferry_ct4_v1")]
pub static CT_V4: LruHashMap<Ct4Key, Ct4Value> = LruHashMap::pinned(m::CT_V4_MAX, m::CT_FLAGS);

#[map(name = "ferry_srcr4_v1")]
// LpmTrie adds BPF_F_NO_PREALLOC itself (the kernel requires it).
pub static SRC_RANGE_V4: LpmTrie<SrcRange4, u8> = LpmTrie::pinned(m::SRC_RANGE_V4_MAX, 0);

#[map(name = "ferry_maglev_v1")]
pub static MAGLEV: HashMap<u32, u32> = HashMap::pinned(m::MAGLEV_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ferry_naddr4_v1")]
pub static NODE_ADDR_V4: HashMap<u32, u32> = HashMap::pinned(m::NODE_ADDR_V4_MAX, 0);

#[map(name = "ferry_ncfg_v3")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "ferry_nodes4_v1")]
pub static NODES_V4: HashMap<u32, u8> = HashMap::pinned(m::NODES_V4_MAX, 0);

#[map(name = "ferry_memb4_v1")]
pub static MEMBERS_V4: HashMap<Member4Key, u32> =
    HashMap::pinned(m::MEMBERS_V4_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ferry_icmpg_v1")]
pub static ICMP_GLOBAL: Array<u64> = Array::pinned(1, 0);

#[map(name = "ferry_icmps_v1")]
pub static ICMP_SOURCES: LruHashMap<u32, u64> = LruHashMap::pinned(m::ICMP_SOURCES_MAX, 0);

#[map(name = "ferry_ctfill_v1")]
pub static CT_FILL: Array<u32> = Array::pinned(1, 0);

#[map(name = "ferry_podflows_v1")]
pub static POD_FLOWS: Array<u32> = Array::pinned(1, 0);

/// `ferry monitor`'s events (event.rs), written only while the lease in
/// `ferry_mon_v1` is live. Pinned, so a monitor (another process) opens it.
#[map(name = "ferry_events_v1")]
pub static EVENTS: RingBuf = RingBuf::pinned(RING_BYTES, 0);

#[map(name = "ferry_mon_v1")]
pub static MONITOR: Array<MonitorControl> = Array::pinned(1, 0);

/// The egress guard's per-socket records (guard.rs). Socket-local storage
/// is a BTF map: aya-ebpf declares it only in that form.
#[btf_map(name = "ferry_guard4_v1", pin_by_name)]
pub static SOCK_GUARD: SkStorage<SockGuard4> = SkStorage::new();

// IPv6 (agent_common::lb6): the same roles as the IPv4 maps above. A
// dual-stack socket's IPv4-mapped destination uses the IPv4 maps.

// Allocated on use: a single-stack IPv4 node pays nothing for them.

/// The IPv6 DSR path's membership check (dsr6.rs), as `ferry_memb4_v1`.
#[map(name = "ferry_memb6_v1")]
pub static MEMBERS_V6: HashMap<Member6Key, u32> =
    HashMap::pinned(m::MEMBERS_V6_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ferry_svc6_v1")]
pub static SERVICES_V6: HashMap<Svc6Key, SvcValue> =
    HashMap::pinned(m::SERVICES_V6_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ferry_be6_v1")]
pub static BACKENDS_V6: HashMap<u32, Backend6> =
    HashMap::pinned(m::BACKENDS_V6_MAX, BPF_F_NO_PREALLOC);

/// [`BACKENDS_V6`] as an array by id (agent_common::maps::BACKEND_LIVE_V6),
/// as [`BACKEND_LIVE_V4`]: preallocated, unlike the IPv6 maps around it.
#[map(name = "ferry_bel6_v1")]
pub static BACKEND_LIVE_V6: Array<Backend6> = Array::pinned(m::BACKEND_LIVE_V6_MAX, 0);

#[map(name = "ferry_rnat6_v1")]
pub static REV_NAT_V6: HashMap<u16, RevNat6> =
    HashMap::pinned(m::REV_NAT_V6_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ferry_sk6_v1")]
pub static SOCK_REV_V6: LruHashMap<SockRev6Key, SockRev6> =
    LruHashMap::pinned(m::SOCK_REV_V6_MAX, 0);

#[map(name = "ferry_skc6_v1")]
pub static SOCK_SLOTS_V6: Array<SockSlot6> = Array::pinned(m::SOCK_SLOTS, 0);

#[map(name = "ferry_dead6_v1")]
pub static DEAD_V6: HashMap<Dead6Key, u8> = HashMap::pinned(m::DEAD_V6_MAX, 0);

#[map(name = "ferry_srcr6_v1")]
// LpmTrie adds BPF_F_NO_PREALLOC itself (the kernel requires it).
pub static SRC_RANGE_V6: LpmTrie<SrcRange6, u8> = LpmTrie::pinned(m::SRC_RANGE_V6_MAX, 0);

/// North-south IPv6 (agent_common::nat6), read by the TC programs as
/// their IPv4 namesakes are. The conntrack map is declared as the IPv4 one
/// (an LRU, preallocated; the agent sizes both with `--conntrack-max`), and
/// so is the port unreachable budget of each source (the node-wide budget,
/// `ferry_icmpg_v1`, is shared by both families). The node addresses are
/// allocated on use.
#[map(name = "ferry_ct6_v1")]
pub static CT_V6: LruHashMap<Ct6Key, Ct6Value> = LruHashMap::pinned(m::CT_V6_MAX, m::CT_FLAGS);

/// The node's IPv6 address on each device (ifindex -> address): the SNAT source.
#[map(name = "ferry_naddr6_v1")]
pub static NODE_ADDR_V6: HashMap<u32, Ip6> =
    HashMap::pinned(m::NODE_ADDR_V6_MAX, BPF_F_NO_PREALLOC);

/// Every node's IPv6 addresses (address -> 1), from the Node objects.
#[map(name = "ferry_nodes6_v1")]
pub static NODES_V6: HashMap<Ip6, u8> = HashMap::pinned(m::NODES_V6_MAX, BPF_F_NO_PREALLOC);

#[map(name = "ferry_icmps6_v1")]
pub static ICMP6_SOURCES: LruHashMap<Ip6, u64> = LruHashMap::pinned(m::ICMP_SOURCES_MAX, 0);

/// The egress guard's records for a socket's IPv6 packets (a socket may
/// have both: a dual-stack one sends IPv4 to mapped destinations).
#[btf_map(name = "ferry_guard6_v1", pin_by_name)]
pub static SOCK_GUARD6: SkStorage<SockGuard6> = SkStorage::new();

// The per-CPU scratch maps of the north-south paths (`ferry_dsr_scr`,
// `ferry_dsr6_scr`, `ferry_ns6_scr`, `ferry_rej6_scr`) are declared by
// the modules whose types they hold (dsr.rs, dsr6.rs, ns.rs, icmp6.rs):
// this module names no type of a module that imports it.

#[map(name = "ferry_stats_v1")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(agent_common::stats::STATS_SLOTS, 0);

#[inline(always)]
pub fn count(c: agent_common::stats::Counter) {
    if let Some(p) = STATS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *p += 1 };
    }
}
