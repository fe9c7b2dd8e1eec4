//! `ferry_xdp`'s next-hop caches (`maps::NEXT_HOP_V4`, `maps::NEXT_HOP_V6`): what `bpf_fib_lookup`
//! answered for a destination, kept for [`NEXT_HOP_MAX_AGE_NS`] so that a
//! tracked flow's packets (and new flows to a destination already resolved)
//! skip the route and neighbour lookup, most of what XDP's forwarding cost.
//!
//! A per-CPU array of [`NEXT_HOP_V4_SLOTS`] slots, direct-mapped by a hash
//! of the destination ([`next_hop_slot`]), each tagged with the destination
//! and the ingress device it was resolved for: a collision or a stale slot
//! is a lookup as before. Per CPU, so a slot is only ever written by the CPU
//! that reads it (no torn MACs, no cache line shared between CPUs); each CPU
//! resolves a destination at most once per [`NEXT_HOP_MAX_AGE_NS`].
//!
//! What a slot does not see until it is older than that: a neighbour's new
//! MAC or its loss, a new route, the egress device leaving the node's
//! north-south set or going away (a redirect to a device that is gone is
//! a drop). The age bounds each of these, with no agent involved (a
//! generation bumped on every netlink neighbour and route change would
//! need the agent to watch them, and would still lag by its own delay).
//! The source address is not in the tag: XDP's translated packets come
//! from the node's address on the ingress device (SNAT: the tag's ingress
//! device decides it), or keep the client's (eTP Local) or the frontend's
//! (replies), and routes by source (policy routing) are resolved once per
//! age for all of a destination's sources.
//!
//! Cilium's XDP and TC datapaths (bpf/lib/fib.h) call `bpf_fib_lookup` on
//! every forwarded packet, older versions keeping a neighbour MAC map
//! beside it; Katran does no route lookup at all and sends every packet to
//! one gateway MAC that its control plane writes. This is between the
//! two: the FIB decides, once a second per destination and CPU.

/// One resolved next hop. `stamp` 0 is an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop4 {
    /// `bpf_ktime_get_coarse_ns` when resolved.
    pub stamp: u64,
    /// The tag: the destination (network order) and the ingress ifindex the
    /// lookup was made for (the FIB takes it as the input device, and XDP's
    /// "may send to" check compares the egress with it).
    pub daddr: u32,
    pub iif: u32,
    /// The egress ifindex the FIB named.
    pub oif: u32,
    /// The route's MTU (`mtu_result`): a larger packet is looked up again
    /// (and left to the stack when it does not fit).
    pub mtu: u16,
    pub _pad: u16,
    /// The Ethernet header's first 12 bytes as they are written: the next
    /// hop's MAC, then the egress device's.
    pub macs: [u8; 12],
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<NextHop4>() == 40);

/// One resolved IPv6 next hop ([`NextHop4`]'s fields, the destination's
/// 16 bytes as the packet has them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop6 {
    pub stamp: u64,
    pub daddr: crate::Ip6,
    pub iif: u32,
    pub oif: u32,
    pub mtu: u16,
    pub _pad: u16,
    pub macs: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<NextHop6>() == 48);

/// How long a resolved next hop is used without asking the FIB again: a
/// neighbour's new MAC (or a new route) reaches a flow's packets within
/// this. One second: the kernel itself keeps sending to a STALE
/// neighbour's old MAC for its `delay_first_probe_time` (5 s) before it
/// probes, so this adds no blackhole longer than the stack's own; and at
/// one lookup per destination per CPU per second the lookup's cost is gone
/// from the packet rate.
pub const NEXT_HOP_MAX_AGE_NS: u64 = 1_000_000_000;

/// Slots of the cache on each CPU (a power of two): 4,096 x 40 bytes =
/// 160 KiB per CPU.
pub const NEXT_HOP_V4_SLOTS_LOG2: u32 = 12;
pub const NEXT_HOP_V4_SLOTS: u32 = 1 << NEXT_HOP_V4_SLOTS_LOG2;

/// Slots of the IPv6 cache on each CPU: 2,048 x 48 bytes = 96 KiB per CPU.
pub const NEXT_HOP_V6_SLOTS_LOG2: u32 = 11;
pub const NEXT_HOP_V6_SLOTS: u32 = 1 << NEXT_HOP_V6_SLOTS_LOG2;

/// The slot of destination `daddr` (network order, as the packet has it):
/// Fibonacci hashing, the top bits of a multiplication.
#[inline(always)]
pub fn next_hop_slot(daddr: u32) -> u32 {
    daddr.wrapping_mul(0x9e37_79b1) >> (32 - NEXT_HOP_V4_SLOTS_LOG2)
}

/// The slot of IPv6 destination `daddr`: its four words folded, then as
/// [`next_hop_slot`] (a node's destinations differ in their low words).
#[inline(always)]
pub fn next_hop_slot6(daddr: &crate::Ip6) -> u32 {
    let folded = daddr[0] ^ daddr[1] ^ daddr[2] ^ daddr[3];
    folded.wrapping_mul(0x9e37_79b1) >> (32 - NEXT_HOP_V6_SLOTS_LOG2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_in_range_and_spread() {
        let mut seen = [false; NEXT_HOP_V4_SLOTS as usize];
        for i in 0..1024u32 {
            // 10.244.x.y in network order, as consecutive pod addresses.
            let a = u32::from_ne_bytes([10, 244, (i >> 8) as u8, i as u8]);
            let s = next_hop_slot(a);
            assert!(s < NEXT_HOP_V4_SLOTS);
            seen[s as usize] = true;
        }
        // 1,024 consecutive addresses land in many distinct slots.
        assert!(seen.iter().filter(|s| **s).count() > 600);
        // IPv6: fd00:10:244::x, the last word varying.
        let mut seen = [false; NEXT_HOP_V6_SLOTS as usize];
        for i in 0..1024u32 {
            let last = u32::from_ne_bytes([0, 0, (i >> 8) as u8, i as u8]);
            let a = [0x0a00_00fd_u32, 0x0000_4402, 0, last];
            let s = next_hop_slot6(&a);
            assert!(s < NEXT_HOP_V6_SLOTS);
            seen[s as usize] = true;
        }
        assert!(seen.iter().filter(|s| **s).count() > 500);
    }
}
