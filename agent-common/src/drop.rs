//! Why the datapath dropped a packet: one reason enum for every drop of the
//! kernel programs. Each reason feeds its per-CPU counter (the `ferry_stats`
//! slot [`DropReason::counter`] names, exported as `ferry_datapath_*` and
//! `ferry_drops_total{reason}`) and, while `ferry monitor` listens, a drop
//! event that carries it.

use crate::stats::Counter;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The client is outside the LoadBalancer's loadBalancerSourceRanges.
    SourceRange = 1,
    /// externalTrafficPolicy Local with no endpoint on this node.
    NoLocalEndpoint = 2,
    /// A backend slot or backend missed (the agent is mid-update).
    NoBackend = 3,
    /// No free SNAT port, a full conntrack map, or no node address to SNAT to.
    NatFailed = 4,
    /// The flow's conntrack entry is held by a live flow.
    CtClash = 5,
    /// An honoured DSR option clashes with a live flow.
    DsrClash = 6,
    /// Adding or removing the DSR option, or its reply entry, failed.
    DsrFailed = 7,
    /// ICMP port unreachable beyond the node's budget.
    RejectLimited = 8,
    /// ICMP port unreachable beyond the source's budget.
    RejectLimitedSource = 9,
    /// The ICMP port unreachable could not be built in place.
    RejectFailed = 10,
    /// Rewriting the packet failed half way.
    RewriteFailed = 11,
    /// Handing the translated packet to its next hop failed.
    ForwardFailed = 12,
    /// Too short or malformed to translate.
    Malformed = 13,
    /// Egress guard: a Local-policy ClusterIP with no endpoint on this node.
    GuardNoLocal = 14,
    /// Egress guard: a source outside a LoadBalancer's source ranges.
    GuardSourceRange = 15,
    /// A per-CPU scratch map was missing.
    Internal = 16,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::SourceRange,
        DropReason::NoLocalEndpoint,
        DropReason::NoBackend,
        DropReason::NatFailed,
        DropReason::CtClash,
        DropReason::DsrClash,
        DropReason::DsrFailed,
        DropReason::RejectLimited,
        DropReason::RejectLimitedSource,
        DropReason::RejectFailed,
        DropReason::RewriteFailed,
        DropReason::ForwardFailed,
        DropReason::Malformed,
        DropReason::GuardNoLocal,
        DropReason::GuardSourceRange,
        DropReason::Internal,
    ];

    /// The per-CPU counter the reason feeds.
    pub const fn counter(self) -> Counter {
        match self {
            DropReason::SourceRange => Counter::NsSourceRangeDrop,
            DropReason::NoLocalEndpoint => Counter::NsNoLocalDrop,
            DropReason::NoBackend => Counter::BackendMiss,
            DropReason::NatFailed => Counter::NsNatFailed,
            DropReason::CtClash => Counter::NsCtClashDrop,
            DropReason::DsrClash => Counter::NsDsrClashDrop,
            DropReason::DsrFailed => Counter::NsDsrFailed,
            DropReason::RejectLimited => Counter::NsRejectLimited,
            DropReason::RejectLimitedSource => Counter::NsRejectLimitedSource,
            DropReason::RejectFailed => Counter::NsRejectFailed,
            DropReason::RewriteFailed => Counter::NsRewriteFailed,
            DropReason::ForwardFailed => Counter::NsForwardFailed,
            DropReason::Malformed => Counter::NsMalformed,
            DropReason::GuardNoLocal => Counter::GuardNoLocalDrop,
            DropReason::GuardSourceRange => Counter::GuardSourceRangeDrop,
            DropReason::Internal => Counter::NsInternal,
        }
    }

    /// Stable name (metrics label, `ferry monitor`, `ferry trace`).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::SourceRange => "source_range",
            DropReason::NoLocalEndpoint => "no_local_endpoint",
            DropReason::NoBackend => "no_backend",
            DropReason::NatFailed => "nat_failed",
            DropReason::CtClash => "ct_clash",
            DropReason::DsrClash => "dsr_clash",
            DropReason::DsrFailed => "dsr_failed",
            DropReason::RejectLimited => "reject_limited",
            DropReason::RejectLimitedSource => "reject_limited_source",
            DropReason::RejectFailed => "reject_failed",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::ForwardFailed => "forward_failed",
            DropReason::Malformed => "malformed",
            DropReason::GuardNoLocal => "guard_no_local",
            DropReason::GuardSourceRange => "guard_source_range",
            DropReason::Internal => "internal",
        }
    }

    /// The reason a raw value (an event's byte) names.
    pub fn from_raw(raw: u8) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| *r as u8 == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_and_round_trip() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(DropReason::from_raw(*r as u8), Some(*r));
            for other in &DropReason::ALL[i + 1..] {
                assert_ne!(r.counter() as u32, other.counter() as u32);
                assert_ne!(r.name(), other.name());
            }
        }
        assert_eq!(DropReason::from_raw(0), None);
    }
}
