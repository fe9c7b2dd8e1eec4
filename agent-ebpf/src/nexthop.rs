//! `ferry_xdp`'s next-hop cache (agent_common::nexthop says what it holds
//! and why it is per CPU): a destination's egress device and MACs as
//! `bpf_fib_lookup` last gave them on this CPU, used while younger than
//! `NEXT_HOP_MAX_AGE_NS`. Measured under BPF_PROG_TEST_RUN (progcost), the
//! route and neighbour lookup was most of XDP's per-packet cost on a
//! tracked flow; a fresh slot costs an inlined array lookup, a coarse clock
//! read and a few compares.

use agent_common::{NEXT_HOP_MAX_AGE_NS, NEXT_HOP_V4_SLOTS, NextHop4, maps as m, next_hop_slot};
use aya_ebpf::{bindings::bpf_fib_lookup, helpers::generated as h, macros::map, maps::PerCpuArray};

#[map(name = "ferry_nhop4_v1")]
static NEXT_HOP_V4: PerCpuArray<NextHop4> = PerCpuArray::with_max_entries(NEXT_HOP_V4_SLOTS, 0);

/// The lookup's 64-byte parameters when the cache has no answer: per-CPU
/// scratch, not the stack (a new flow's call chain, ferry_xdp -> new_flow
/// -> resolve, would pass the verifier's 512 bytes with them).
#[map(name = "ferry_fib_scr")]
static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

const _: () = assert!(m::NEXT_HOP_V4.len() <= 15);

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
pub fn cached(daddr: u32, iif: u32, tot_len: u16, now: u64, hop: &mut Hop) -> bool {
    let Some(e) = NEXT_HOP_V4.get_ptr(next_hop_slot(daddr)) else {
        return false;
    };
    // SAFETY: this CPU's slot, written only by this CPU.
    let e = unsafe { &*e };
    if e.stamp == 0
        || e.daddr != daddr
        || e.iif != iif
        || now.wrapping_sub(e.stamp) >= NEXT_HOP_MAX_AGE_NS
        || tot_len > e.mtu
    {
        return false;
    }
    hop.oif = e.oif;
    hop.macs = e.macs;
    true
}

/// Keeps what a successful lookup `p` (made for `daddr` arriving on `iif`)
/// answered, and returns it as a [`Hop`].
#[inline(always)]
pub fn remember(daddr: u32, iif: u32, p: &bpf_fib_lookup, now: u64, hop: &mut Hop) {
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
    let Some(e) = NEXT_HOP_V4.get_ptr_mut(next_hop_slot(daddr)) else {
        return;
    };
    // SAFETY: this CPU's slot; no other CPU writes or reads it.
    let e = unsafe { &mut *e };
    e.daddr = daddr;
    e.iif = iif;
    e.oif = hop.oif;
    e.mtu = mtu;
    e.macs = hop.macs;
    // A stamp of 0 is an empty slot: a clock that reads 0 stores 1. Not
    // `now | 1`: a packet in the same tick (4 ms at HZ=250) as an even
    // stamp would read an age of 2^64 - 1 and miss its own fresh slot.
    e.stamp = now.max(1);
}
