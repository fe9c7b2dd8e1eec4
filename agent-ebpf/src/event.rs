//! `ferry monitor`'s events (agent_common::event): drops, new flows, ICMP
//! errors translated and port unreachables sent, written into the
//! `ferry_events_v1` ring buffer while a monitor holds the lease in
//! `ferry_mon_v1`.
//!
//! Off costs the paths that can emit (never the tracked hit path) one
//! array lookup, which the verifier inlines, and a compare with 0 ([`on`]).
//! Everything else (the clock, the reservation, the record) is in a
//! function of its own called only when on, so its frame and code stay off
//! the packet paths. An expired lease (a monitor that died) is cleared by
//! the first program that finds it, which brings the cost back to the
//! compare. A full ring loses the event, counted `EventLost`; the packet is
//! never affected.
//!
//! Addresses of either family: the emit functions take the family's map
//! form (`u32` or `Ip6`) and tell them apart by size, so that callers
//! generic over the family need no further bound.

use agent_common::{
    drop::DropReason,
    event::{Event, FAMILY_V4, FAMILY_V6, MonitorControl, event_flags, kind, program},
    stats::Counter,
};
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};

use crate::{
    ct::CtValue,
    icmp::Side,
    maps::{EVENTS, MONITOR, count},
    parse::{self, Packet, Tuple},
    tc::verdict,
};

/// A monitor holds (or held, and it has not been found expired yet) the
/// lease: the only cost when none does.
#[inline(always)]
fn on() -> bool {
    match MONITOR.get_ptr(0) {
        // SAFETY: the map's one value, read as a plain u64.
        Some(c) => unsafe { (*c).lease_until_ns != 0 },
        None => false,
    }
}

/// A dropped packet `ip` (seen by `ferry_tc_in`, for frontend `rev_nat_id`,
/// or 0 when unknown: the monitor then finds it by the destination):
/// counted as `reason` says, and reported while a monitor listens. Returns
/// the verdict (SHOT). The packet must still be as it arrived (its ports
/// are read from it, only when on): the caller's tuple is not taken, so
/// that it need not be kept in the caller's frame.
#[inline(always)]
pub fn drop<P: Packet>(ctx: &TcContext, ip: &P, rev_nat_id: u16, reason: DropReason) -> i32 {
    count(reason.counter());
    if on() {
        emit_packet(
            ctx,
            ip,
            head(kind::DROP, reason as u8, program::TC_IN, rev_nat_id),
            0,
        );
    }
    verdict::SHOT
}

/// A new flow (packet `ip`, as it arrived) to frontend `rev_nat_id`,
/// translated as its FORWARD entry `fwd` says (backend, SNAT source).
#[inline(always)]
pub fn new_flow<P: Packet, V: CtValue>(ctx: &TcContext, ip: &P, rev_nat_id: u16, fwd: &V) {
    if on() {
        emit_new_flow(
            ctx,
            ip,
            head(kind::NEW_FLOW, 0, program::TC_IN, rev_nat_id),
            fwd,
        );
    }
}

/// An ICMP error met on `side` about the flow `quoted` (as the error
/// quoted it) translated with the entry `v` of frontend `rev_nat_id`.
#[inline(always)]
pub fn icmp_translated<A: Copy, V: CtValue>(
    ctx: &TcContext,
    quoted: &Tuple<A>,
    rev_nat_id: u16,
    v: &V,
    side: Side,
) {
    if on() {
        let prog = match side {
            Side::Ingress => program::TC_IN,
            Side::Egress => program::TC_OUT,
            Side::Pod => program::TC_POD,
        };
        emit_translated(
            ctx,
            quoted,
            head(kind::ICMP_TRANSLATED, 0, prog, rev_nat_id),
            v,
            true,
        );
    }
}

/// The answer to packet `ip` (ports `sport`, `dport`, raw: the packet is
/// the answer now) for frontend `rev_nat_id`, which has no endpoints: `v`
/// is the port unreachable's verdict (SHOT when none was sent: the reason
/// was reported where it was decided). Returns `v`.
#[inline(always)]
pub fn rejected<P: Packet>(
    ctx: &TcContext,
    ip: &P,
    rev_nat_id: u16,
    (sport, dport): (u16, u16),
    v: i32,
) -> i32 {
    if v != verdict::SHOT && on() {
        emit_packet(
            ctx,
            ip,
            head(kind::PORT_UNREACHABLE, 0, program::TC_IN, rev_nat_id) | PORTS_GIVEN,
            sport as u32 | (dport as u32) << 16,
        );
    }
    v
}

/// In a [`head`]: the ports are given, not to be read from the packet.
const PORTS_GIVEN: u64 = 1 << 63;

/// The tuple of packet `ip`: its ports from `ports` ([`PORTS_GIVEN`]) or
/// the packet (0 when it has none to read).
#[inline(always)]
fn tuple_of<P: Packet>(ctx: &TcContext, ip: &P, head: u64, ports: u32) -> Tuple<P::Addr> {
    let (sport, dport) = if head & PORTS_GIVEN != 0 {
        (ports as u16, (ports >> 16) as u16)
    } else {
        ctx.load::<[u16; 2]>(ip.l4_off())
            .map_or((0, 0), |p| (p[0], p[1]))
    };
    Tuple {
        saddr: ip.saddr(),
        daddr: ip.daddr(),
        sport,
        dport,
        proto: ip.proto(),
    }
}

/// An event about packet `ip` with no translated tuple.
#[inline(never)]
fn emit_packet<P: Packet>(ctx: &TcContext, ip: &P, head: u64, ports: u32) {
    let t = tuple_of(ctx, ip, head, ports);
    if let Some(entry) = record(ctx, &t, head) {
        entry.submit(0);
    }
}

/// A new flow of packet `ip`, translated as `fwd` says.
#[inline(never)]
fn emit_new_flow<P: Packet, V: CtValue>(ctx: &TcContext, ip: &P, head: u64, fwd: &V) {
    let t = tuple_of(ctx, ip, head, 0);
    translated(ctx, &t, head, fwd, false);
}

/// kind | reason | program | rev-NAT id, in one register (a BPF call takes
/// five arguments).
#[inline(always)]
fn head(kind: u8, reason: u8, prog: u8, rev_nat_id: u16) -> u64 {
    kind as u64 | (reason as u64) << 8 | (prog as u64) << 16 | (rev_nat_id as u64) << 32
}

/// The address `a` (`u32` or `Ip6`) as an event's 16 bytes, and its family.
#[inline(always)]
fn words<A: Copy>(a: &A) -> ([u32; 4], u8) {
    const { assert!(size_of::<A>() == 4 || size_of::<A>() == 16) };
    // SAFETY: `A` is a u32 or four of them (asserted), read as what it is.
    unsafe {
        if size_of::<A>() == 4 {
            ([*(a as *const A as *const u32), 0, 0, 0], FAMILY_V4)
        } else {
            (*(a as *const A as *const [u32; 4]), FAMILY_V6)
        }
    }
}

/// A record of the ring, its header and original tuple written, or None
/// (no live lease: an expired one is cleared; or the ring is full).
#[inline(always)]
fn record<A: Copy>(
    ctx: &TcContext,
    t: &Tuple<A>,
    head: u64,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<Event>> {
    let c: *mut MonitorControl = MONITOR.get_ptr_mut(0)?;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the map's one value. A renewal racing this clear is lost
    // until the monitor's next one (it renews well before expiry: only a
    // monitor stalled past its lease meets this).
    unsafe {
        let lease = (*c).lease_until_ns;
        if lease == 0 {
            return None;
        }
        if now >= lease {
            (*c).lease_until_ns = 0;
            return None;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::EventLost);
        return None;
    };
    let (saddr, family) = words(&t.saddr);
    let (daddr, _) = words(&t.daddr);
    entry.write(Event {
        ts_ns: now,
        kind: head as u8,
        reason: (head >> 8) as u8,
        family,
        proto: t.proto,
        program: (head >> 16) as u8,
        flags: 0,
        rev_nat_id: (head >> 32) as u16,
        ifindex: parse::ifindex(ctx),
        backend_id: 0,
        saddr,
        daddr,
        sport: t.sport,
        dport: t.dport,
        nat_saddr: [0; 4],
        nat_daddr: [0; 4],
        nat_sport: 0,
        nat_dport: 0,
        ct_flags: 0,
        _pad: [0; 7],
    });
    Some(entry)
}

/// An ICMP error's event (see [`icmp_translated`]).
#[inline(never)]
fn emit_translated<A: Copy, V: CtValue>(
    ctx: &TcContext,
    t: &Tuple<A>,
    head: u64,
    v: &V,
    swapped: bool,
) {
    translated(ctx, t, head, v, swapped);
}

/// An event whose translated tuple a conntrack value gives: the new
/// source and destination of the flow's packets, or (`swapped`, an ICMP
/// error about them) what the quoted packet now says.
#[inline(always)]
fn translated<A: Copy, V: CtValue>(ctx: &TcContext, t: &Tuple<A>, head: u64, v: &V, swapped: bool) {
    let Some(mut entry) = record(ctx, t, head) else {
        return;
    };
    let (s, sp, d, dp) = if swapped {
        (v.nat_daddr(), v.nat_dport(), v.nat_saddr(), v.nat_sport())
    } else {
        (v.nat_saddr(), v.nat_sport(), v.nat_daddr(), v.nat_dport())
    };
    // SAFETY: written whole by `record`.
    let e = unsafe { entry.assume_init_mut() };
    e.flags = event_flags::TRANSLATED;
    e.backend_id = v.backend_id();
    e.nat_saddr = words(&s).0;
    e.nat_daddr = words(&d).0;
    e.nat_sport = sp;
    e.nat_dport = dp;
    e.ct_flags = v.flags();
    entry.submit(0);
}
