//! Datapath event counters (a per-CPU array), read by `ferry` for metrics
//! and by tests to prove which path the kernel took.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect() to a frontend translated to a backend.
    ConnectTranslated = 0,
    /// connect() to a frontend with no usable backend: refused.
    ConnectRefused = 1,
    /// Unconnected UDP sendmsg translated.
    SendmsgTranslated = 2,
    /// Unconnected UDP sendmsg refused.
    SendmsgRefused = 3,
    /// recvmsg source rewritten back to the service.
    RecvmsgRevNat = 4,
    /// getpeername rewritten back to the service.
    GetpeernameRevNat = 5,
    /// Backend chosen from a live affinity entry.
    AffinityHit = 6,
    /// A slot or backend lookup missed (agent mid-update): fell back or refused.
    BackendMiss = 7,
    /// Recording the socket's reverse translation failed (map full).
    SockRevUpdateFailed = 8,
    /// North-south: a new flow to an external frontend translated.
    NsNewFlow = 9,
    /// North-south: a packet of a tracked flow translated (either way).
    NsTracked = 10,
    /// North-south: dropped, client outside loadBalancerSourceRanges.
    NsSourceRangeDrop = 11,
    /// North-south: dropped, eTP Local and no endpoint on this node.
    NsNoLocalDrop = 12,
    /// North-south: rejected with ICMP port unreachable (no endpoints).
    NsRejected = 13,
    /// North-south: an ICMP error about a tracked flow translated.
    NsIcmpTranslated = 14,
    /// North-south: no free SNAT port or a full conntrack map: dropped.
    NsNatFailed = 15,
    /// North-south: no endpoints, but the ICMP port unreachable could not be
    /// built in place (IP options, a truncated packet, a TCP segment still
    /// waiting for its checksum from offload, a failed helper): dropped.
    NsRejectFailed = 16,
    /// North-south: a translated packet whose new source is a node address
    /// could not be forwarded through the FIB (no route, forwarding off on the
    /// device, MTU): handed to the stack, which may drop it as a martian.
    NsFibPassed = 17,
    /// North-south DSR, on the backend's node: a packet carrying the DSR
    /// option for a backend on this node; its reply entry made or refreshed
    /// and the option removed before the pod sees the packet.
    NsDsrReceived = 18,
    /// North-south DSR, on the node the client reached: the option did not
    /// fit (the packet with it would exceed the route's MTU, or the IP
    /// header has no room left). A new flow falls back to SNAT; a packet of
    /// a tracked flow goes without it (the backend's node knows the flow).
    NsDsrFallback = 19,
    /// North-south DSR: adding or removing the option, or writing the reply
    /// entry, failed: dropped (or, when the option could not be removed and
    /// the packet is intact, delivered with it: Linux ignores it).
    NsDsrFailed = 20,
    /// North-south DSR, on a backend's node: a packet carrying the DSR option
    /// that was not honoured (DSR is off here; the option names no frontend
    /// this cluster serves; the packet is not for a backend of that frontend
    /// on this node; a TCP segment other than a SYN for a flow this node does
    /// not know): no state made, passed on untouched.
    NsDsrIgnored = 21,
    /// North-south DSR, on a backend's node: an honoured option whose flow
    /// clashes with a live conntrack entry of another flow (one that DSR did
    /// not make, or a DSR flow of another frontend): dropped, the entry kept.
    NsDsrClashDrop = 22,
    /// North-south: a packet that would start a flow whose conntrack entry
    /// a live flow holds: dropped, as netfilter drops a SYN that clashes
    /// with a live flow (a finished flow is forgotten instead). A SYN
    /// straight to a pod on the 5-tuple of a translated flow's reply, or a
    /// new flow to a local backend whose reply a flow through another
    /// frontend holds.
    NsCtClashDrop = 23,
    /// North-south: a port unreachable beyond the node's budget (a global
    /// token bucket like `icmp_msgs_per_sec`/`icmp_msgs_burst`): not sent,
    /// the packet dropped.
    NsRejectLimited = 24,
    /// North-south: a port unreachable beyond the per-source budget (like
    /// `icmp_ratelimit`): not sent, the packet dropped.
    NsRejectLimitedSource = 25,
    /// North-south: a TCP segment other than a SYN for a frontend, with no
    /// conntrack entry: its flow was lost (evicted from a full map, collected
    /// while idle, older than the map) or the segment is forged. A flow is
    /// made for it (on the same backend while the backends are unchanged).
    NsCtLostFlow = 26,
    /// North-south: a new flow made while the conntrack map was at least
    /// [`crate::CT_PRESSURE_PERMILLE`] full (as the agent last measured it):
    /// every such flow may evict another.
    NsNewFlowCtFull = 27,
    /// Socket layer: a connect()/sendmsg() to a ClusterIP whose Local
    /// traffic policy leaves no endpoint on this node while others exist
    /// elsewhere: let through untranslated and marked, for the egress guard
    /// to drop (kube-proxy drops it; with no endpoint anywhere it rejects).
    SockNoLocal = 28,
    /// Egress guard: a packet of a marked socket addressed to a ClusterIP
    /// (untranslated, so its Service has no endpoint for this node): dropped
    /// before it leaves the socket (TCP times out, UDP is lost, as with
    /// kube-proxy's drop).
    GuardNoLocalDrop = 29,
    /// Egress guard: a packet to a backend of a LoadBalancer IP with
    /// loadBalancerSourceRanges whose source address is outside them: dropped
    /// (kube-proxy's firewall check applies to pods and the host too).
    GuardSourceRangeDrop = 30,
    /// Socket layer: the per-socket guard record could not be made (kernel
    /// memory): the connect()/sendmsg() is refused rather than let through
    /// unchecked.
    GuardRecordFailed = 31,
    /// North-south: rewriting the packet (addresses, ports, checksums) failed
    /// half way through: dropped rather than sent half translated.
    NsRewriteFailed = 32,
    /// North-south: the translated packet could not be handed to its next hop
    /// (the TTL/hop limit update or the new Ethernet header failed): dropped.
    NsForwardFailed = 33,
    /// North-south: a packet for a frontend too short or malformed to
    /// translate (a segment without room for its L4 checksum): dropped before
    /// any state is made for it.
    NsMalformed = 34,
    /// North-south: a per-CPU scratch map the program needs was missing (a
    /// broken load, never expected): dropped.
    NsInternal = 35,
    /// `ferry monitor`: an event the ring buffer had no room for (the
    /// monitor reads too slowly): lost, the packet unaffected.
    EventLost = 36,
    /// North-south: a packet translated and forwarded by the XDP program
    /// (`--acceleration`), before any skb existed: proof that a flow took
    /// the fast path (it is counted `NsTracked`/`NsNewFlow` as under TC too).
    NsXdpForwarded = 37,
    /// Per-packet ClusterIP path: a pod's new flow to a ClusterIP the socket
    /// layer did not translate, DNATed to a backend (`ferry_tc_pod`).
    PodNewFlow = 38,
    /// Per-packet ClusterIP path: a packet of a tracked pod flow DNATed.
    PodTracked = 39,
    /// Per-packet ClusterIP path: a backend's reply to a client pod given
    /// the ClusterIP back as its source (`ferry_tc_pod_out`).
    PodRevNat = 40,
}

pub const COUNTERS: u32 = 41;

/// Slots of the pinned counter map: a fixed reserve above `COUNTERS`, so
/// adding a counter does not change the map's size (a pinned map of another
/// size cannot be adopted by the next agent).
pub const STATS_SLOTS: u32 = 64;
const _: () = assert!(COUNTERS <= STATS_SLOTS);

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::ConnectTranslated,
        Counter::ConnectRefused,
        Counter::SendmsgTranslated,
        Counter::SendmsgRefused,
        Counter::RecvmsgRevNat,
        Counter::GetpeernameRevNat,
        Counter::AffinityHit,
        Counter::BackendMiss,
        Counter::SockRevUpdateFailed,
        Counter::NsNewFlow,
        Counter::NsTracked,
        Counter::NsSourceRangeDrop,
        Counter::NsNoLocalDrop,
        Counter::NsRejected,
        Counter::NsIcmpTranslated,
        Counter::NsNatFailed,
        Counter::NsRejectFailed,
        Counter::NsFibPassed,
        Counter::NsDsrReceived,
        Counter::NsDsrFallback,
        Counter::NsDsrFailed,
        Counter::NsDsrIgnored,
        Counter::NsDsrClashDrop,
        Counter::NsCtClashDrop,
        Counter::NsRejectLimited,
        Counter::NsRejectLimitedSource,
        Counter::NsCtLostFlow,
        Counter::NsNewFlowCtFull,
        Counter::SockNoLocal,
        Counter::GuardNoLocalDrop,
        Counter::GuardSourceRangeDrop,
        Counter::GuardRecordFailed,
        Counter::NsRewriteFailed,
        Counter::NsForwardFailed,
        Counter::NsMalformed,
        Counter::NsInternal,
        Counter::EventLost,
        Counter::NsXdpForwarded,
        Counter::PodNewFlow,
        Counter::PodTracked,
        Counter::PodRevNat,
    ];

    /// Stable name used in metrics and `ferry stats`.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ConnectTranslated => "connect_translated",
            Counter::ConnectRefused => "connect_refused",
            Counter::SendmsgTranslated => "sendmsg_translated",
            Counter::SendmsgRefused => "sendmsg_refused",
            Counter::RecvmsgRevNat => "recvmsg_rev_nat",
            Counter::GetpeernameRevNat => "getpeername_rev_nat",
            Counter::AffinityHit => "affinity_hit",
            Counter::BackendMiss => "backend_miss",
            Counter::SockRevUpdateFailed => "sock_rev_update_failed",
            Counter::NsNewFlow => "ns_new_flow",
            Counter::NsTracked => "ns_tracked",
            Counter::NsSourceRangeDrop => "ns_source_range_drop",
            Counter::NsNoLocalDrop => "ns_no_local_drop",
            Counter::NsRejected => "ns_rejected",
            Counter::NsIcmpTranslated => "ns_icmp_translated",
            Counter::NsNatFailed => "ns_nat_failed",
            Counter::NsRejectFailed => "ns_reject_failed",
            Counter::NsFibPassed => "ns_fib_passed",
            Counter::NsDsrReceived => "ns_dsr_received",
            Counter::NsDsrFallback => "ns_dsr_fallback",
            Counter::NsDsrFailed => "ns_dsr_failed",
            Counter::NsDsrIgnored => "ns_dsr_ignored",
            Counter::NsDsrClashDrop => "ns_dsr_clash_drop",
            Counter::NsCtClashDrop => "ns_ct_clash_drop",
            Counter::NsRejectLimited => "ns_reject_limited",
            Counter::NsRejectLimitedSource => "ns_reject_limited_source",
            Counter::NsCtLostFlow => "ns_ct_lost_flow",
            Counter::NsNewFlowCtFull => "ns_new_flow_ct_full",
            Counter::SockNoLocal => "sock_no_local",
            Counter::GuardNoLocalDrop => "guard_no_local_drop",
            Counter::GuardSourceRangeDrop => "guard_source_range_drop",
            Counter::GuardRecordFailed => "guard_record_failed",
            Counter::NsRewriteFailed => "ns_rewrite_failed",
            Counter::NsForwardFailed => "ns_forward_failed",
            Counter::NsMalformed => "ns_malformed",
            Counter::NsInternal => "ns_internal",
            Counter::EventLost => "event_lost",
            Counter::NsXdpForwarded => "ns_xdp_forwarded",
            Counter::PodNewFlow => "pod_new_flow",
            Counter::PodTracked => "pod_tracked",
            Counter::PodRevNat => "pod_rev_nat",
        }
    }
}
