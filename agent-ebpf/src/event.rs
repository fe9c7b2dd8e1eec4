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
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    programs::{TcContext, XdpContext},
};

use crate::{
    ct::{self, CtKey, CtValue},
    maps::{EVENTS, MONITOR, count},
    parse::{self, IP_OFF, IPV4_MIN_HLEN, Ipv4Hdr, Packet, Tuple},
    side::Side,
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

/// A packet dropped for `reason` on `side` (counted by the caller,
/// drop.rs), reported while a monitor listens. Called at the program's
/// edge, so the tuple is read again from the packet (only when on): as it
/// arrived, unless the drop came half way through its rewrite. The
/// frontend is found by the monitor from the destination.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: DropReason, side: Side) {
    if on() {
        emit_drop(ctx, head(kind::DROP, reason as u8, side.program(), 0));
    }
}

/// A new flow (packet `ip`, as it arrived), translated as its FORWARD
/// entry `fwd` says (frontend, backend, SNAT source).
#[inline(always)]
pub fn new_flow<P: Packet, V: CtValue>(ctx: &TcContext, ip: &P, fwd: &V) {
    if on() {
        emit_new_flow(ctx, ip, fwd);
    }
}

/// An ICMP error met on `side` about the flow `quoted` (as the error
/// quoted it) translated with the conntrack entry `v`.
#[inline(always)]
pub fn icmp_translated<A: Copy, V: CtValue>(ctx: &TcContext, quoted: &Tuple<A>, v: &V, side: Side) {
    if on() {
        emit_translated(ctx, quoted, side.program(), v);
    }
}

/// A port unreachable about to be sent in answer to packet `ip` (still as
/// it arrived), whose frontend has no endpoints. Should building it fail,
/// a `reject_failed` drop follows.
#[inline(always)]
pub fn port_unreachable<P: Packet>(ctx: &TcContext, ip: &P) {
    if on() {
        emit_packet(ctx, ip, head(kind::PORT_UNREACHABLE, 0, program::TC_IN, 0));
    }
}

/// A packet `ferry_xdp` dropped for `reason` (counted by drop.rs), while
/// a monitor listens: its tuple read from the frame (an IPv4 packet
/// without options or an IPv6 one without extension headers, the only
/// kinds XDP keeps; as it arrived, unless the drop came half way through
/// its rewrite).
#[inline(always)]
pub fn xdp_drop(ctx: &XdpContext, reason: DropReason) {
    if on() {
        emit_xdp_drop(ctx, head(kind::DROP, reason as u8, program::XDP, 0));
    }
}

/// A new flow `ferry_xdp` made for the packet of tuple `t` (as it
/// arrived), translated as its FORWARD entry (key `fwd_key`) says. Called
/// by the program's top frame once the flow is made: the entry is read
/// back from the map (only when on), since the frames that built it are
/// too deep for this one's too.
#[inline(always)]
pub fn xdp_new_flow<A: Copy, K: CtKey>(ctx: &XdpContext, t: &Tuple<A>, fwd_key: &K) {
    if on() {
        emit_xdp_new_flow(ctx, t, fwd_key);
    }
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

type Entry = aya_ebpf::maps::ring_buf::RingBufEntry<Event>;

/// A record of the ring, zeroed, its header written, or None (no live
/// lease: an expired one is cleared; or the ring is full). Every field is
/// written in place: these functions run below the packet paths' frames,
/// whose call chain has little of the verifier's 512 bytes of stack left.
#[inline(always)]
fn record(ifindex: u32, head: u64) -> Option<Entry> {
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
    let e = entry.as_mut_ptr();
    // SAFETY: the reservation is an `Event`'s room, ours until submitted.
    unsafe {
        core::ptr::write_bytes(e, 0, 1);
        (*e).ts_ns = now;
        (*e).kind = head as u8;
        (*e).reason = (head >> 8) as u8;
        (*e).program = (head >> 16) as u8;
        (*e).rev_nat_id = (head >> 32) as u16;
        (*e).ifindex = ifindex;
    }
    Some(entry)
}

/// Writes the original tuple (addresses `saddr`, `daddr`; raw ports).
#[inline(always)]
fn set_tuple<A: Copy>(e: *mut Event, saddr: &A, daddr: &A, sport: u16, dport: u16, proto: u8) {
    let (s, family) = words(saddr);
    // SAFETY: a reservation of the caller's, zeroed by `record`.
    unsafe {
        (*e).family = family;
        (*e).proto = proto;
        (*e).saddr = s;
        (*e).daddr = words(daddr).0;
        (*e).sport = sport;
        (*e).dport = dport;
    }
}

/// Writes the original tuple of packet `ip` (its ports 0 when unreadable).
#[inline(always)]
fn set_packet<P: Packet>(ctx: &TcContext, e: *mut Event, ip: &P) {
    let ports = ctx.load::<u32>(ip.l4_off()).unwrap_or(0);
    // Raw: the first two bytes are the source port, as the packet has them.
    let p: [u16; 2] = unsafe { core::mem::transmute(ports) };
    set_tuple(e, &ip.saddr(), &ip.daddr(), p[0], p[1], ip.proto());
}

/// Writes the translated tuple a conntrack value gives: the new source and
/// destination of the flow's packets, or (`swapped`, an ICMP error about
/// them) what the quoted packet now says.
#[inline(always)]
fn set_translation<V: CtValue>(e: *mut Event, v: &V, swapped: bool) {
    let (s, sp, d, dp) = if swapped {
        (v.nat_daddr(), v.nat_dport(), v.nat_saddr(), v.nat_sport())
    } else {
        (v.nat_saddr(), v.nat_sport(), v.nat_daddr(), v.nat_dport())
    };
    // SAFETY: a reservation of the caller's, zeroed by `record`.
    unsafe {
        (*e).flags = event_flags::TRANSLATED;
        (*e).backend_id = v.backend_id();
        (*e).nat_saddr = words(&s).0;
        (*e).nat_daddr = words(&d).0;
        (*e).nat_sport = sp;
        (*e).nat_dport = dp;
        (*e).ct_flags = v.flags();
    }
}

/// An event about packet `ip` with no translated tuple.
#[inline(never)]
fn emit_packet<P: Packet>(ctx: &TcContext, ip: &P, head: u64) {
    if let Some(mut entry) = record(parse::ifindex(ctx), head) {
        set_packet(ctx, entry.as_mut_ptr(), ip);
        entry.submit(0);
    }
}

/// A drop's event: the packet's tuple read from the packet itself (IPv4,
/// or IPv6 past its extension headers; ports 0 when there are none).
#[inline(never)]
fn emit_drop(ctx: &TcContext, head: u64) {
    let Some(mut entry) = record(parse::ifindex(ctx), head) else {
        return;
    };
    let e = entry.as_mut_ptr();
    match ctx.load::<u16>(12).map(u16::from_be) {
        Ok(parse::ETH_P_IP) => {
            if let Ok(h) = ctx.load::<parse::Ipv4Hdr>(parse::IP_OFF) {
                let ports = l4_ports(ctx, h.proto, parse::IP_OFF + h.header_len());
                set_tuple(e, &h.saddr, &h.daddr, ports[0], ports[1], h.proto);
            }
        }
        Ok(parse::ETH_P_IPV6) => {
            // SAFETY: the reservation is an `Event`'s room: the header is
            // read straight into its address fields' place, not the stack.
            let (s, d) = unsafe { (&mut (*e).saddr, &mut (*e).daddr) };
            let next = ctx.load::<u8>(parse::IP_OFF + 6).unwrap_or(0);
            let ok = ctx
                .load::<[u32; 4]>(parse::IP6_SADDR_OFF)
                .map(|a| *s = a)
                .is_ok()
                && ctx
                    .load::<[u32; 4]>(parse::IP6_DADDR_OFF)
                    .map(|a| *d = a)
                    .is_ok();
            if ok {
                let (proto, off) = parse::ipv6_upper(ctx, next, parse::IP_OFF + parse::IPV6_HLEN)
                    .unwrap_or((next, 0));
                let ports = l4_ports(ctx, proto, off);
                // SAFETY: as above.
                unsafe {
                    (*e).family = FAMILY_V6;
                    (*e).proto = proto;
                    (*e).sport = ports[0];
                    (*e).dport = ports[1];
                }
            }
        }
        _ => {}
    }
    entry.submit(0);
}

/// The raw ports of a TCP or UDP header at `off` (0 for other protocols,
/// or none readable).
#[inline(always)]
fn l4_ports(ctx: &TcContext, proto: u8, off: usize) -> [u16; 2] {
    if off == 0 || (proto != agent_common::proto::TCP && proto != agent_common::proto::UDP) {
        return [0, 0];
    }
    ctx.load::<[u16; 2]>(off).unwrap_or([0, 0])
}

/// A new flow of packet `ip`, translated as `fwd` says.
#[inline(never)]
fn emit_new_flow<P: Packet, V: CtValue>(ctx: &TcContext, ip: &P, fwd: &V) {
    let head = head(kind::NEW_FLOW, 0, program::TC_IN, fwd.rev_nat_id());
    if let Some(mut entry) = record(parse::ifindex(ctx), head) {
        let e = entry.as_mut_ptr();
        set_packet(ctx, e, ip);
        set_translation(e, fwd, false);
        entry.submit(0);
    }
}

/// An ICMP error's event (see [`icmp_translated`]).
#[inline(never)]
fn emit_translated<A: Copy, V: CtValue>(ctx: &TcContext, t: &Tuple<A>, prog: u8, v: &V) {
    let head = head(kind::ICMP_TRANSLATED, 0, prog, v.rev_nat_id());
    if let Some(mut entry) = record(parse::ifindex(ctx), head) {
        let e = entry.as_mut_ptr();
        set_tuple(e, &t.saddr, &t.daddr, t.sport, t.dport, t.proto);
        set_translation(e, v, true);
        entry.submit(0);
    }
}

/// An XDP drop's event (see [`xdp_drop`]).
#[inline(never)]
fn emit_xdp_drop(ctx: &XdpContext, head: u64) {
    let Some(mut entry) = record(ctx.ingress_ifindex() as u32, head) else {
        return;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    let p = data + IP_OFF + IPV4_MIN_HLEN;
    // SAFETY: the ethertype and the IPv4 header within the frame, checked;
    // the ports likewise.
    unsafe {
        let ethertype = if data + 14 <= end {
            u16::from_be(core::ptr::read_unaligned((data + 12) as *const u16))
        } else {
            0
        };
        if ethertype == parse::ETH_P_IP && p <= end {
            let h = core::ptr::read_unaligned((data + IP_OFF) as *const Ipv4Hdr);
            let ports = if p + 4 <= end
                && h.ver_ihl == 0x45
                && (h.proto == agent_common::proto::TCP || h.proto == agent_common::proto::UDP)
            {
                core::ptr::read_unaligned(p as *const [u16; 2])
            } else {
                [0, 0]
            };
            set_tuple(
                entry.as_mut_ptr(),
                &h.saddr,
                &h.daddr,
                ports[0],
                ports[1],
                h.proto,
            );
        } else if ethertype == parse::ETH_P_IPV6 && data + IP_OFF + parse::IPV6_HLEN <= end {
            // IPv6 (xdp6.rs): its next header TCP or UDP, the only kind
            // XDP keeps.
            let h = data + IP_OFF;
            let p = h + parse::IPV6_HLEN;
            let next = *((h + 6) as *const u8);
            let ports = if p + 4 <= end
                && (next == agent_common::proto::TCP || next == agent_common::proto::UDP)
            {
                core::ptr::read_unaligned(p as *const [u16; 2])
            } else {
                [0, 0]
            };
            let saddr = core::ptr::read_unaligned((h + 8) as *const agent_common::Ip6);
            let daddr = core::ptr::read_unaligned((h + 24) as *const agent_common::Ip6);
            set_tuple(entry.as_mut_ptr(), &saddr, &daddr, ports[0], ports[1], next);
        }
    }
    entry.submit(0);
}

/// An XDP new flow's event (see [`xdp_new_flow`]).
#[inline(never)]
fn emit_xdp_new_flow<A: Copy, K: CtKey>(ctx: &XdpContext, t: &Tuple<A>, fwd_key: &K) {
    let Some(fwd) = ct::lookup(fwd_key) else {
        return;
    };
    // SAFETY: a live map value, read in place.
    let fwd = unsafe { &*fwd };
    let head = head(kind::NEW_FLOW, 0, program::XDP, fwd.rev_nat_id());
    if let Some(mut entry) = record(ctx.ingress_ifindex() as u32, head) {
        let e = entry.as_mut_ptr();
        set_tuple(e, &t.saddr, &t.daddr, t.sport, t.dport, t.proto);
        set_translation(e, fwd, false);
        entry.submit(0);
    }
}
