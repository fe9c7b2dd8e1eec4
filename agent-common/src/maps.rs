//! Map names and sizes: the one place both sides take them from.
//!
//! Names carry an ABI version suffix. A change to a key or value layout must
//! bump it, so a new agent never reads a pinned map of the old layout as its
//! own; `ferry cleanup` removes maps of any version. BPF object names are
//! limited to 15 characters.

/// Services: (address, port, proto, scope, slot) -> frontend (slot 0) or backend id.
pub const SERVICES_V4: &str = "ferry_svc4_v1";
/// Backends: id -> address, port, proto, state.
pub const BACKENDS_V4: &str = "ferry_be4_v1";
/// The IPv4 backends again, as an array indexed by backend id (the same
/// `Backend4` at an id in use, all zeroes at a free one): the conntrack hit
/// path's check that a flow's backend is still there, which the verifier
/// inlines for an array (a hash lookup is a call, ~10 ns a packet). The
/// agent writes it with [`BACKENDS_V4`] and fills it from that map when it
/// starts (an agent of before it left none).
pub const BACKEND_LIVE_V4: &str = "ferry_bel4_v1";
/// Reverse NAT: rev-NAT id -> the service address and port.
pub const REV_NAT_V4: &str = "ferry_rnat4_v1";
/// Socket reverse translation: (socket cookie, backend) -> service, for
/// recvmsg and getpeername, where [`SOCK_SLOTS_V4`] has no slot for it: an
/// unconnected sendmsg's (left to the LRU), a connect's whose slot another
/// socket held (deleted when the socket closes: the release hook,
/// `ferry_release`).
pub const SOCK_REV_V4: &str = "ferry_sk4_v1";
/// Socket slots: a connected socket's reverse translation
/// ([`crate::SockSlot4`]), an array indexed by [`sock_slot`] of its cookie.
///
/// Socket cookies are handed out in sequence (each CPU takes a batch of
/// 4,096), so a connect touches the slot beside the last one: a write to
/// memory the CPU already has, where an insert into [`SOCK_REV_V4`] took a
/// random bucket of its 262,144 (cache and TLB misses, ~300 ns of connect's
/// ~500 on the east-west bench) and the release hook's delete another. A
/// socket owns its slot from connect (compare-and-swap from cookie 0) to
/// release (back to 0); a connect whose slot another live socket holds, and
/// every unconnected sendmsg, uses [`SOCK_REV_V4`] as before. Cookies are
/// never reused, so a slot only ever answers for its own socket.
pub const SOCK_SLOTS_V4: &str = "ferry_skc4_v1";
/// UDP backends just removed from a service, whose connected sockets the
/// `ferry_udp_gc` iterator destroys (filled and emptied around each run).
pub const DEAD_V4: &str = "ferry_dead4_v1";
/// Session affinity: (client, rev-NAT id) -> backend id and last use.
pub const AFFINITY: &str = "ferry_aff_v1";
/// Per-CPU event counters, indexed by [`crate::stats::Counter`].
pub const STATS: &str = "ferry_stats_v1";

/// Connection tracking with NAT for north-south flows (LRU).
pub const CT_V4: &str = "ferry_ct4_v1";
/// loadBalancerSourceRanges: (rev-NAT id, CIDR) LPM trie.
pub const SRC_RANGE_V4: &str = "ferry_srcr4_v1";
/// Maglev tables: `maglev_key(rev_nat_id, i)` -> backend id.
pub const MAGLEV: &str = "ferry_maglev_v1";
/// The node's IPv4 address on each device (ifindex -> address), the SNAT source.
pub const NODE_ADDR_V4: &str = "ferry_naddr4_v1";
/// Per-node settings (`NodeConfig`), one entry. v3: the netns cookie
/// (32 bytes; a v2 pin cannot be adopted).
pub const NODE_CONFIG: &str = "ferry_ncfg_v3";
/// Every node's IPv4 addresses (address -> 1), from the Node objects: the
/// addresses a DSR option may name for a NodePort.
pub const NODES_V4: &str = "ferry_nodes4_v1";
/// Backends of the exposed frontends (`Member4Key` -> backend id), external
/// scope only: what a DSR option's packet must be addressed to.
pub const MEMBERS_V4: &str = "ferry_memb4_v1";
/// The port unreachable budget of the node: one GCRA state (u64, the
/// theoretical arrival time in ns of CLOCK_MONOTONIC).
pub const ICMP_GLOBAL: &str = "ferry_icmpg_v1";
/// The port unreachable budget of each source (IPv4 address -> GCRA state), LRU.
pub const ICMP_SOURCES: &str = "ferry_icmps_v1";
/// The conntrack map's fill as the agent last measured it (one u32, per mille).
pub const CT_FILL: &str = "ferry_ctfill_v1";
/// Non-zero once the per-packet ClusterIP path made a flow on this node (one
/// u32, set by the datapath, never cleared while pinned): until then the
/// pods' egress program has no reply to reverse and skips its lookup.
pub const POD_FLOWS: &str = "ferry_podflows_v1";
/// The egress guard's per-socket records (`SockGuard4`, socket-local
/// storage: each lives and dies with its socket; pinned so that a restarted
/// agent's guard still knows the sockets its predecessor marked).
pub const SOCK_GUARD_V4: &str = "ferry_guard4_v1";
/// The backend ports the socket layer has sent a socket to, both families: a
/// bitmap of [`SOCK_PORTS_WORDS`] u64 words, bit `port % 64` of word
/// `port / 64` (host order). getpeername and recvmsg look a socket up in
/// [`SOCK_REV_V4`] / [`SOCK_REV_V6`] only when its peer's port is set, so a
/// server's accepted sockets (their peers on client ports) skip the lookup.
/// Set by connect/sendmsg before the reverse entry is written, never
/// cleared: a superset of the ports of the reverse entries is always right.
pub const SOCK_PORTS: &str = "ferry_skport_v1";

/// `ferry monitor`'s events (a ring buffer of [`crate::event::Event`]),
/// written only while the lease in [`MONITOR`] is live.
pub const EVENTS: &str = "ferry_events_v1";
/// `ferry monitor`'s control: one [`crate::event::MonitorControl`].
pub const MONITOR: &str = "ferry_mon_v1";

/// IPv6 maps: the same roles as their IPv4 namesakes, keyed and valued by
/// the `*6` types of [`crate::lb6`].
pub const SERVICES_V6: &str = "ferry_svc6_v1";
pub const BACKENDS_V6: &str = "ferry_be6_v1";
/// The IPv6 backends again, as an array indexed by backend id, as
/// [`BACKEND_LIVE_V4`] is for IPv4 (the same `Backend6` at an id in use, all
/// zeroes at a free one): the IPv6 conntrack hit path's check that a flow's
/// backend is still there, inlined by the verifier where [`BACKENDS_V6`] is
/// a hash lookup (a call). Preallocated (an array cannot be allocated on
/// use): 3 MiB on every node, IPv4-only ones too (a fraction of what
/// [`CT_V6`], preallocated too, already takes). The agent writes it with
/// [`BACKENDS_V6`] and fills it from that map when it starts (an agent of
/// before it left none).
pub const BACKEND_LIVE_V6: &str = "ferry_bel6_v1";
pub const REV_NAT_V6: &str = "ferry_rnat6_v1";
pub const SOCK_REV_V6: &str = "ferry_sk6_v1";
pub const SOCK_SLOTS_V6: &str = "ferry_skc6_v1";
pub const DEAD_V6: &str = "ferry_dead6_v1";
pub const SRC_RANGE_V6: &str = "ferry_srcr6_v1";
pub const MEMBERS_V6: &str = "ferry_memb6_v1";
pub const SOCK_GUARD_V6: &str = "ferry_guard6_v1";
/// North-south IPv6: conntrack (LRU, sized with `--conntrack-max` like the
/// IPv4 one), the node's IPv6 address on each device (ifindex -> address,
/// the SNAT source), every node's IPv6 addresses, and the port
/// unreachable budget of each IPv6 source.
pub const CT_V6: &str = "ferry_ct6_v1";
pub const NODE_ADDR_V6: &str = "ferry_naddr6_v1";
pub const NODES_V6: &str = "ferry_nodes6_v1";
pub const ICMP6_SOURCES: &str = "ferry_icmps6_v1";

/// `ferry_xdp`'s next-hop cache (per-CPU array of [`crate::NextHop4`], see
/// crate::nexthop). Not pinned and not in [`ALL`]: a cache, each program
/// load starts with an empty one and fills it from the FIB.
pub const NEXT_HOP_V4: &str = "ferry_nhop4_v1";
/// The same for IPv6 destinations ([`crate::NextHop6`]).
pub const NEXT_HOP_V6: &str = "ferry_nhop6_v1";

/// Every map name of the current ABI.
pub const ALL: &[&str] = &[
    SERVICES_V4,
    BACKENDS_V4,
    BACKEND_LIVE_V4,
    REV_NAT_V4,
    SOCK_REV_V4,
    SOCK_SLOTS_V4,
    DEAD_V4,
    AFFINITY,
    STATS,
    CT_V4,
    SRC_RANGE_V4,
    MAGLEV,
    NODE_ADDR_V4,
    NODE_CONFIG,
    NODES_V4,
    MEMBERS_V4,
    ICMP_GLOBAL,
    ICMP_SOURCES,
    CT_FILL,
    POD_FLOWS,
    SOCK_GUARD_V4,
    SOCK_PORTS,
    EVENTS,
    MONITOR,
    SERVICES_V6,
    BACKENDS_V6,
    BACKEND_LIVE_V6,
    REV_NAT_V6,
    SOCK_REV_V6,
    SOCK_SLOTS_V6,
    DEAD_V6,
    SRC_RANGE_V6,
    MEMBERS_V6,
    SOCK_GUARD_V6,
    CT_V6,
    NODE_ADDR_V6,
    NODES_V6,
    ICMP6_SOURCES,
];

/// Prefix shared by every map and link ferry pins, whatever its version.
pub const NAME_PREFIX: &str = "ferry_";

/// Map capacities. The service map holds one entry per frontend plus one per
/// (frontend, backend) pair: 10,000 services with 100,000 endpoints fit.
pub const SERVICES_V4_MAX: u32 = 262_144;
pub const BACKENDS_V4_MAX: u32 = 131_072;
/// Ids are 1..=BACKENDS_V4_MAX (0 is none): one more slot than backends.
pub const BACKEND_LIVE_V4_MAX: u32 = BACKENDS_V4_MAX + 1;
pub const REV_NAT_V4_MAX: u32 = 65_536;
pub const SOCK_REV_V4_MAX: u32 = 262_144;
/// Slots of [`SOCK_SLOTS_V4`] and [`SOCK_SLOTS_V6`] (a power of two: 1.5
/// and 3 MiB): 65,536 sockets in sequence share no slot; an older socket
/// still open when its slot comes round again sends the newer one to the
/// reverse map.
pub const SOCK_SLOTS: u32 = 65_536;
const _: () = assert!(SOCK_SLOTS.is_power_of_two());

/// The slot of the socket `cookie` in [`SOCK_SLOTS_V4`] / [`SOCK_SLOTS_V6`].
#[inline(always)]
pub const fn sock_slot(cookie: u64) -> u32 {
    (cookie as u32) & (SOCK_SLOTS - 1)
}
/// [`SOCK_PORTS`]: one bit per port.
pub const SOCK_PORTS_WORDS: u32 = 65_536 / 64;
pub const AFFINITY_MAX: u32 = 65_536;
pub const DEAD_V4_MAX: u32 = 4_096;
/// The default; the agent sizes the map with `--conntrack-max`.
pub const CT_V4_MAX: u32 = 262_144;
/// BPF_F_NO_COMMON_LRU: an LRU with a list of its own on each CPU.
pub const BPF_F_NO_COMMON_LRU: u32 = 2;
/// The conntrack maps' flags (`ferry_ct4_v1`, `ferry_ct6_v1`): 0, the
/// common LRU list (as Cilium's conntrack maps). Per-CPU lists
/// (BPF_F_NO_COMMON_LRU) were measured and not taken:
/// - a new flow costs no less with them (BPF_PROG_TEST_RUN, single CPU:
///   the common LRU pops from a per-CPU cache of free nodes and takes its
///   global lock once per 128 inserts, so the lock was not the cost);
/// - each possible CPU then holds only `max_entries / CPUs` entries: a
///   flood of new flows that lands on one CPU (one RX queue, or the
///   sender's CPU on veth) fills only that share and evicts from then on,
///   so the map never looks full to the agent (`ferry_map_fill_ratio`
///   stayed at 0.50 on 2 CPUs under hostile_packets' SYN flood) and the
///   node tracks a fraction of the flows it was sized for.
///
/// Changing this is safe for running nodes: a pinned map with other flags
/// is recreated with these and its entries copied (spread over the CPUs
/// when per-CPU), see agent/src/datapath/sizes.rs.
pub const CT_FLAGS: u32 = 0;
pub const SRC_RANGE_V4_MAX: u32 = 16_384;
/// Maglev services the map has room for by default; the agent sizes the map
/// with `--maglev-max-services` (allocated on use: BPF_F_NO_PREALLOC).
pub const MAGLEV_SERVICES: u32 = 64;
pub const MAGLEV_MAX: u32 = MAGLEV_SERVICES * crate::MAGLEV_TABLE_SIZE;
pub const NODE_ADDR_V4_MAX: u32 = 256;
/// 5,000 nodes with an InternalIP and an ExternalIP each fit.
pub const NODES_V4_MAX: u32 = 16_384;
/// One entry per backend slot of an external frontend: never more than the
/// service map holds (allocated on use).
pub const MEMBERS_V4_MAX: u32 = SERVICES_V4_MAX;
/// Sources with a port unreachable budget of their own (LRU: a flood of
/// spoofed sources recycles the oldest, the global budget still holds).
pub const ICMP_SOURCES_MAX: u32 = 65_536;

/// IPv6 capacities: a dual-stack cluster's second family is as large as
/// its first. The IPv6 maps are allocated on use (BPF_F_NO_PREALLOC), so a
/// single-stack IPv4 node pays nothing for them; `ferry_map_entries` and
/// `ferry_map_fill_ratio` report each.
pub const SERVICES_V6_MAX: u32 = SERVICES_V4_MAX;
pub const BACKENDS_V6_MAX: u32 = BACKENDS_V4_MAX;
/// Ids are shared by both families: the IPv6 array has a slot for each.
pub const BACKEND_LIVE_V6_MAX: u32 = BACKEND_LIVE_V4_MAX;
pub const REV_NAT_V6_MAX: u32 = REV_NAT_V4_MAX;
pub const SOCK_REV_V6_MAX: u32 = SOCK_REV_V4_MAX;
pub const DEAD_V6_MAX: u32 = DEAD_V4_MAX;
pub const SRC_RANGE_V6_MAX: u32 = SRC_RANGE_V4_MAX;
pub const MEMBERS_V6_MAX: u32 = MEMBERS_V4_MAX;
pub const CT_V6_MAX: u32 = CT_V4_MAX;
pub const NODE_ADDR_V6_MAX: u32 = NODE_ADDR_V4_MAX;
pub const NODES_V6_MAX: u32 = NODES_V4_MAX;

/// Slot 0 of a service is its frontend; backends occupy 1..=count. A service
/// never has more backends than this (Kubernetes caps a slice at 1,000
/// endpoints, a service can have many slices).
pub const MAX_BACKENDS_PER_SERVICE: u16 = 65_535;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_in_sequence_take_neighbouring_slots_and_share_one_only_a_round_apart() {
        let first = 0x1_0000_fff0_u64;
        // Consecutive cookies: consecutive slots, wrapping at the end of the array.
        for cookie in first..first + 32 {
            assert!(sock_slot(cookie) < SOCK_SLOTS);
            assert_eq!(sock_slot(cookie + 1), (sock_slot(cookie) + 1) % SOCK_SLOTS);
        }
        // A socket meets an older one's slot only SOCK_SLOTS cookies later.
        assert_eq!(sock_slot(first), sock_slot(first + u64::from(SOCK_SLOTS)));
        assert!((1..u64::from(SOCK_SLOTS)).all(|d| sock_slot(first + d) != sock_slot(first)));
    }
}
