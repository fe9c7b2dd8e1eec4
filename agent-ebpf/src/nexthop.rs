//! `ferry_xdp`'s next-hop cache (agent_common::nexthop says what it holds
//! and why it is per CPU): a destination's egress device and MACs as
//! `bpf_fib_lookup` last gave them on this CPU, used while younger than
//! `NEXT_HOP_MAX_AGE_NS`. Measured under BPF_PROG_TEST_RUN (progcost), the
//! route and neighbour lookup was most of XDP's per-packet cost on a
//! tracked flow; a fresh slot costs an inlined array lookup, a coarse clock
//! read and a few compares.

use agent_common::{
    Ip6, NEXT_HOP_MAX_AGE_NS, NEXT_HOP_V4_SLOTS, NEXT_HOP_V6_SLOTS, NextHop4, NextHop6, maps as m,
    next_hop_slot, next_hop_slot6,
};
use aya_ebpf::{bindings::bpf_fib_lookup, helpers::generated as h, macros::map, maps::PerCpuArray};

#[map(name = "ferry_nhop4_v1")]
static NEXT_HOP_V4: PerCpuArray<NextHop4> = PerCpuArray::with_max_entries(NEXT_HOP_V4_SLOTS, 0);

#[map(name = "ferry_nhop6_v1")]
static NEXT_HOP_V6: PerCpuArray<NextHop6> = PerCpuArray::with_max_entries(NEXT_HOP_V6_SLOTS, 0);

/// A family's slot: its destination's type, the family's cache and the
/// slot a destination maps to.
pub trait Slot: Sized + 'static {
    type Addr: Copy + PartialEq;
    fn cache() -> &'static PerCpuArray<Self>;
    fn index(daddr: &Self::Addr) -> u32;
    /// stamp, destination, iif, oif, mtu, MACs.
    #[allow(clippy::type_complexity)]
    fn fields(
        &mut self,
    ) -> (
        &mut u64,
        &mut Self::Addr,
        &mut u32,
        &mut u32,
        &mut u16,
        &mut [u8; 12],
    );
}

macro_rules! slot {
    ($slot:ty, $addr:ty, $cache:ident, $index:expr) => {
        impl Slot for $slot {
            type Addr = $addr;
            #[inline(always)]
            fn cache() -> &'static PerCpuArray<Self> {
                &$cache
            }
            #[inline(always)]
            fn index(daddr: &$addr) -> u32 {
                $index(daddr)
            }
            #[inline(always)]
            fn fields(
                &mut self,
            ) -> (
                &mut u64,
                &mut $addr,
                &mut u32,
                &mut u32,
                &mut u16,
                &mut [u8; 12],
            ) {
                (
                    &mut self.stamp,
                    &mut self.daddr,
                    &mut self.iif,
                    &mut self.oif,
                    &mut self.mtu,
                    &mut self.macs,
                )
            }
        }
    };
}
slot!(NextHop4, u32, NEXT_HOP_V4, |d: &u32| next_hop_slot(*d));
slot!(NextHop6, Ip6, NEXT_HOP_V6, next_hop_slot6);

/// The lookup's 64-byte parameters when the cache has no answer: per-CPU
/// scratch, not the stack (a new flow's call chain, ferry_xdp -> new_flow
/// -> resolve, would pass the verifier's 512 bytes with them).
#[map(name = "ferry_fib_scr")]
static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

const _: () = assert!(m::NEXT_HOP_V4.len() <= 15 && m::NEXT_HOP_V6.len() <= 15);

/// Where a packet goes: the egress device and the Ethernet header's MACs
/// (destination, source) as written.
#[derive(Clone, Copy)]
pub struct Hop {
    pub oif: u32,
    pub macs: [u8; 12],
}

impl Hop {
    /// All zeros in `slot`, word by word (`Hop { .. }` of zeros is a call
    /// to a byte-by-byte memset, 10 % of a tracked packet's cost).
    #[inline(always)]
    pub fn zeroed_in(slot: &mut core::mem::MaybeUninit<Hop>) -> &mut Hop {
        // SAFETY: integers only; all zeros is a valid Hop.
        unsafe { crate::parse::zeroed_in(slot) }
    }
}

/// The lookup's parameters, all zeros, in this CPU's scratch.
#[inline(always)]
pub fn params() -> Option<&'static mut bpf_fib_lookup> {
    let p = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch, used by one program run at a time; a
    // `MaybeUninit` of the same layout.
    Some(crate::fib::params(unsafe {
        &mut *p.cast::<core::mem::MaybeUninit<bpf_fib_lookup>>()
    }))
}

/// The clock the slots are stamped with (one tick's resolution, no
/// clocksource read).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { h::bpf_ktime_get_coarse_ns() }
}

/// The next hop of `daddr` for a packet of `tot_len` bytes that arrived on
/// `iif`, into `hop`, when this CPU resolved it less than
/// `NEXT_HOP_MAX_AGE_NS` ago and the packet fits the route's MTU.
#[inline(always)]
pub fn cached<S: Slot>(daddr: &S::Addr, iif: u32, tot_len: u16, now: u64, hop: &mut Hop) -> bool {
    let Some(e) = S::cache().get_ptr_mut(S::index(daddr)) else {
        return false;
    };
    // SAFETY: this CPU's slot, written only by this CPU (and not here).
    let (stamp, tag, tag_iif, oif, mtu, macs) = unsafe { &mut *e }.fields();
    if *stamp == 0
        || *tag != *daddr
        || *tag_iif != iif
        || now.wrapping_sub(*stamp) >= NEXT_HOP_MAX_AGE_NS
        || tot_len > *mtu
    {
        return false;
    }
    hop.oif = *oif;
    hop.macs = *macs;
    true
}

/// Keeps what a successful lookup `p` (made for `daddr` arriving on `iif`)
/// answered, and returns it as a [`Hop`].
#[inline(always)]
pub fn remember<S: Slot>(daddr: &S::Addr, iif: u32, p: &bpf_fib_lookup, now: u64, hop: &mut Hop) {
    // SAFETY: the union members the helper fills on success.
    let (macs, mtu) = unsafe {
        (
            p.__bindgen_anon_6.__bindgen_anon_2,
            p.__bindgen_anon_1.mtu_result,
        )
    };
    hop.oif = p.ifindex;
    hop.macs[..6].copy_from_slice(&macs.dmac);
    hop.macs[6..].copy_from_slice(&macs.smac);
    let Some(e) = S::cache().get_ptr_mut(S::index(daddr)) else {
        return;
    };
    // SAFETY: this CPU's slot; no other CPU writes or reads it.
    let (stamp, tag, tag_iif, oif, slot_mtu, macs) = unsafe { &mut *e }.fields();
    *tag = *daddr;
    *tag_iif = iif;
    *oif = hop.oif;
    *slot_mtu = mtu;
    *macs = hop.macs;
    // A stamp of 0 is an empty slot: a clock that reads 0 stores 1. Not
    // `now | 1`: a packet in the same tick (4 ms at HZ=250) as an even
    // stamp would read an age of 2^64 - 1 and miss its own fresh slot.
    *stamp = now.max(1);
}
