//! ICMPv6: errors about translated flows, and the port unreachable a
//! frontend with no endpoints answers with (icmp.rs for IPv4, whose rules
//! these follow).
//!
//! Every other ICMPv6 message passes untouched: Neighbor Discovery
//! (133-137), echo, MLD and all informational messages (type >= 128), and
//! errors about no flow of ours. Unlike ICMP, the ICMPv6 checksum covers a
//! pseudo-header, so a changed outer address changes it too.

use agent_common::{Ct6Key, Ip6, NodeConfig, proto, stats::Counter};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_RECOMPUTE_CSUM},
    helpers::generated as h,
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};

use crate::{
    csum,
    drop::{DropReason, Outcome, Raw},
    event,
    family::V6,
    icmp::{self, ICMP_HLEN, IcmpHdr},
    maps::{ICMP6_SOURCES, count},
    parse::{
        self, ETH_HLEN, IP_OFF, IP6_DADDR_OFF, IP6_SADDR_OFF, IPPROTO_ICMPV6, IPV6_HLEN, Ipv6,
        Ipv6Hdr, Tuple,
    },
    ratelimit,
    side::Side,
    verdict,
};

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// Translates an ICMPv6 error (destination unreachable, Packet Too Big,
/// time exceeded, parameter problem) about a tracked flow, so the host it
/// goes to recognises its own packet in it: the flow's entry and the rules
/// for the outer addresses are those of [`icmp::translate_error`]. Packet
/// Too Big keeps its MTU (path MTU discovery through ferry), a parameter
/// problem its pointer (no length changes). The quoted packet's extension
/// headers are walked as an arriving packet's are.
///
/// A function of its own (a BPF-to-BPF call), so that its frame is not
/// added to the TCP/UDP path's (see tc.rs).
#[inline(never)]
pub fn translate_error(ctx: &TcContext, ip: &Ipv6, side: Side) -> Raw {
    Raw::of(translate_error_body(ctx, ip, side))
}

#[inline(always)]
fn translate_error_body(ctx: &TcContext, ip: &Ipv6, side: Side) -> Outcome {
    let icmp_off = ip.l4_off;
    let Ok(icmp) = ctx.load::<IcmpHdr>(icmp_off) else {
        return Ok(verdict::PASS);
    };
    if !matches!(
        icmp.ty,
        ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB
    ) {
        return Ok(verdict::PASS);
    }
    let inner_off = icmp_off + ICMP_HLEN;
    let Ok(inner) = ctx.load::<Ipv6Hdr>(inner_off) else {
        return Ok(verdict::PASS);
    };
    if inner.version() != 6 {
        return Ok(verdict::PASS);
    }
    let Some((inner_proto, inner_l4)) =
        parse::ipv6_upper(ctx, inner.next_hdr, inner_off + IPV6_HLEN)
    else {
        return Ok(verdict::PASS);
    };
    if inner_proto != proto::TCP && inner_proto != proto::UDP {
        return Ok(verdict::PASS);
    }
    // Only what the IPv6 packet holds is quoted (see icmp.rs).
    let end = ip.hdr.end(IP_OFF);
    if inner_l4 + 4 > end {
        return Ok(verdict::PASS);
    }
    let Ok(ports) = ctx.load::<[u16; 2]>(inner_l4) else {
        return Ok(verdict::PASS);
    };
    let quoted = Tuple {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: ports[0],
        dport: ports[1],
        proto: inner_proto,
    };
    let Some(v) = icmp::error_flow::<Ct6Key>(&quoted, ip.hdr.daddr, side) else {
        return Ok(verdict::PASS);
    };
    event::icmp_translated(ctx, &quoted, &v, side);
    let at = At {
        icmp: icmp_off,
        inner: inner_off,
        inner_l4,
        end,
    };
    rewrite_error(ctx, ip, &at, icmp.check, &quoted, &v)?;
    // IPv6's forwarding reads the outer addresses from the packet.
    icmp::translated::<V6>(ctx, ip, ip.hdr.saddr, ip.hdr.daddr, v.flags, side)
}

/// Where the parts of an ICMPv6 error are.
struct At {
    icmp: usize,
    inner: usize,
    inner_l4: usize,
    /// The end of the (outer) IPv6 packet.
    end: usize,
}

/// Rewrites the quoted packet to the translation `v` names (addresses,
/// ports and, when quoted, its L4 checksum), the outer addresses, and the
/// ICMPv6 checksum that covers all of them (the outer ones through its
/// pseudo-header). Every store recomputes a CHECKSUM_COMPLETE `skb->csum`
/// over its bytes, the checksum field's included.
#[inline(always)]
fn rewrite_error(
    ctx: &TcContext,
    ip: &Ipv6,
    at: &At,
    check: u16,
    q: &Tuple<Ip6>,
    v: &agent_common::Ct6Value,
) -> Result<(), DropReason> {
    let shot = |_| DropReason::RewriteFailed;
    let recompute = BPF_F_RECOMPUTE_CSUM as u64;
    // The quoted source becomes (nat_daddr, nat_dport), its destination
    // (nat_saddr, nat_sport).
    let new_addrs: [Ip6; 2] = [v.nat_daddr, v.nat_saddr];
    let new_ports: [u16; 2] = [v.nat_dport, v.nat_sport];
    let addr_diff = csum::diff16(
        csum::diff16(0, &q.saddr, &new_addrs[0]),
        &q.daddr,
        &new_addrs[1],
    );
    let port_diff = csum::diff2(csum::diff2(0, q.sport, new_ports[0]), q.dport, new_ports[1]);
    let mut icmp_diff = csum::add(addr_diff, port_diff);

    // The quoted L4 checksum (UDP's is in the first 8 bytes, TCP's only
    // when more is quoted), kept consistent so the host finds exactly the
    // packet it sent: its pseudo-header and ports changed.
    let udp = q.proto == proto::UDP;
    let l4_csum_off = at.inner_l4 + if udp { 6 } else { 16 };
    if l4_csum_off + 2 <= at.end
        && let Ok(old) = ctx.load::<u16>(l4_csum_off)
        && !(udp && old == 0)
    {
        let mut l4_new = csum::apply(old, icmp_diff);
        if udp && l4_new == 0 {
            l4_new = 0xffff;
        }
        icmp_diff = csum::diff2(icmp_diff, old, l4_new);
        ctx.store(l4_csum_off, &l4_new, recompute).map_err(shot)?;
    }
    ctx.store(at.inner + 8, &new_addrs, recompute)
        .map_err(shot)?;
    ctx.store(at.inner_l4, &new_ports, recompute)
        .map_err(shot)?;

    // The outer destination follows the quoted source; the outer source
    // the quoted destination only when the error comes from that host (a
    // router's address stays).
    let outer_daddr = if ip.hdr.daddr == q.saddr {
        new_addrs[0]
    } else {
        ip.hdr.daddr
    };
    let outer_saddr = if ip.hdr.saddr == q.daddr {
        new_addrs[1]
    } else {
        ip.hdr.saddr
    };
    icmp_diff = csum::diff16(icmp_diff, &ip.hdr.saddr, &outer_saddr);
    icmp_diff = csum::diff16(icmp_diff, &ip.hdr.daddr, &outer_daddr);
    if outer_saddr != ip.hdr.saddr {
        ctx.store(IP6_SADDR_OFF, &outer_saddr, recompute)
            .map_err(shot)?;
    }
    if outer_daddr != ip.hdr.daddr {
        ctx.store(IP6_DADDR_OFF, &outer_daddr, recompute)
            .map_err(shot)?;
    }
    ctx.store(at.icmp + 2, &csum::apply(check, icmp_diff), recompute)
        .map_err(shot)
}

/// The most of the offending packet an ICMPv6 error quotes: the error
/// must fit the minimum IPv6 MTU, 1280 bytes (RFC 4443 2.4 (c)).
const QUOTE_MAX: usize = 1280 - IPV6_HLEN - ICMP_HLEN;

/// The headers of a port unreachable, before the quoted packet.
#[repr(C)]
#[derive(Clone, Copy)]
struct UnreachHdrs {
    ip: Ipv6Hdr,
    icmp: IcmpHdr,
}
const UNREACH_HLEN: usize = core::mem::size_of::<UnreachHdrs>();
const _: () = assert!(UNREACH_HLEN == IPV6_HLEN + ICMP_HLEN);

/// The port unreachable's scratch space: the quoted packet is read into it,
/// summed there and written back after the new headers (one per CPU, not
/// pinned: it holds no state).
#[repr(C)]
struct RejectScratch {
    /// The MACs, swapped.
    eth: [u8; 12],
    hdrs: UnreachHdrs,
    /// The quote, and room for the zeros that pad it to whole words.
    quote: [u8; QUOTE_MAX + 4],
}

/// Per-CPU scratch space of the ICMPv6 port unreachable: the quoted packet,
/// summed and written back there. Not pinned, no state.
#[map(name = "ferry_rej6_scr")]
static REJECT6_SCRATCH: PerCpuArray<RejectScratch> = PerCpuArray::with_max_entries(1, 0);

/// Hop limit of ferry's ICMPv6 errors (Linux's default).
const ICMPV6_HOP_LIMIT: u8 = 64;

/// Answers a packet to a frontend with no endpoints with an ICMPv6
/// destination unreachable, code 4 (port unreachable), from the frontend,
/// built in place of the packet and sent back out of the device it came in
/// on, as [`icmp::reject`] does for IPv4 (rate-limited alike, the node's
/// budget shared with it, each source's in `ferry_icmps6_v1`).
///
/// The error quotes as much of the packet as fits the minimum IPv6 MTU.
/// Never sent (the packet dropped, `NsRejectFailed`) where RFC 4443 2.4 (e)
/// forbids it: a source that names no single node (unspecified, multicast,
/// loopback), a multicast destination, a frame sent to a link-layer
/// multicast or broadcast address. (The offending packet is never an ICMPv6
/// error: only TCP and UDP get here.) The CHECKSUM_PARTIAL limitation of
/// [`icmp::reject`] applies alike.
#[inline(always)]
pub fn reject(ctx: &TcContext, ip: &Ipv6, cfg: &NodeConfig) -> Outcome {
    let group_mac = ctx.load::<u8>(0).map_or(true, |b| b & 1 != 0);
    if group_mac || !is_unicast(&ip.hdr.saddr) || is_multicast(&ip.hdr.daddr) {
        return Err(DropReason::RejectFailed);
    }
    ratelimit::allow(&ICMP6_SOURCES, &ip.hdr.saddr, cfg)?;
    // Before the packet becomes the answer: the event quotes the client's.
    event::port_unreachable(ctx, ip);
    let skb: *mut __sk_buff = ctx.as_ptr().cast();
    if !build_reject(skb) {
        return Err(DropReason::RejectFailed);
    }
    count(Counter::NsRejected);
    Ok(unsafe { h::bpf_redirect(parse::ifindex(ctx), 0) as i32 })
}

/// Builds the port unreachable in place of the packet (the skb `skb`): a
/// function of its own, off the paths of every other packet, with its
/// temporaries in the scratch map. False when a helper failed (the packet
/// may then be half rewritten: the caller drops it).
#[inline(never)]
fn build_reject(skb: *mut __sk_buff) -> bool {
    let (Some(ctx), Some(s)) = (
        core::ptr::NonNull::new(skb).map(TcContext::new),
        REJECT6_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }),
    ) else {
        return false;
    };
    let Ok(payload_len) = ctx.load::<u16>(IP_OFF + 4) else {
        return false;
    };
    // The IPv6 packet as far as the frame holds it (Ethernet padding and
    // anything past the payload length are not its), cut to what fits.
    let end = (IP_OFF + IPV6_HLEN + u16::from_be(payload_len) as usize).min(ctx.len() as usize);
    // Masked and checked again for the verifier: 40 <= n <= QUOTE_MAX.
    let n = end.saturating_sub(IP_OFF).min(QUOTE_MAX) & 0x7ff;
    if !(IPV6_HLEN..=QUOTE_MAX).contains(&n) {
        return false;
    }
    let quote = s.quote.as_mut_ptr();
    if unsafe { h::bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, quote.cast(), n as u32) } != 0 {
        return false;
    }
    // Zeros after the quote up to the next whole word: the sum below runs
    // over whole words, and the checksum pads an odd length with zero.
    // SAFETY: the buffer has QUOTE_MAX + 4 bytes, n <= QUOTE_MAX.
    unsafe {
        *quote.add(n) = 0;
        *quote.add(n + 1) = 0;
        *quote.add(n + 2) = 0;
    }
    let upper_len = ((ICMP_HLEN + n) as u16).to_be();
    // The pseudo-header: the addresses (the offending packet's, swapped:
    // the same sum), the upper-layer length and the next header; then the
    // ICMPv6 header and the quote.
    let Some(addr_sum) = sum_at(quote, 8, 32) else {
        return false;
    };
    let mut sum = csum::add(addr_sum, upper_len as u32);
    sum = csum::add(sum, (IPPROTO_ICMPV6 as u32).to_be());
    sum = csum::add(
        sum,
        u32::from_ne_bytes([ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0]),
    );
    let Some(quote_sum) = sum_words(quote, (n + 3) & !3) else {
        return false;
    };
    s.hdrs = UnreachHdrs {
        ip: Ipv6Hdr {
            ver_tc_flow: [0x60, 0, 0, 0],
            payload_len: upper_len,
            next_hdr: IPPROTO_ICMPV6,
            hop_limit: ICMPV6_HOP_LIMIT,
            saddr: [0; 4],
            daddr: [0; 4],
        },
        icmp: IcmpHdr {
            ty: ICMPV6_DEST_UNREACH,
            code: ICMPV6_PORT_UNREACH,
            check: !csum::fold(csum::add(sum, quote_sum)),
            rest: 0,
        },
    };
    // From the offending packet's destination (the frontend) to its source,
    // straight from the quoted header.
    // SAFETY: within the quote (n >= 40) and the header, which do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(quote.add(24), s.hdrs.ip.saddr.as_mut_ptr().cast(), 16);
        core::ptr::copy_nonoverlapping(quote.add(8), s.hdrs.ip.daddr.as_mut_ptr().cast(), 16);
    }

    if parse::load_into(&ctx, 0, &mut s.eth).is_err() {
        return false;
    }
    for i in 0..6 {
        s.eth.swap(i, i + 6);
    }
    if ctx
        .change_tail((ETH_HLEN + UNREACH_HLEN + n) as u32, 0)
        .is_err()
    {
        return false;
    }
    // As in icmp.rs: RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE `skb->csum`
    // (which covers the IP packet, not the MACs) right.
    let recompute = BPF_F_RECOMPUTE_CSUM as u64;
    ctx.store(0, &s.eth, 0).is_ok()
        && ctx.store(IP_OFF, &s.hdrs, recompute).is_ok()
        && unsafe {
            h::bpf_skb_store_bytes(
                skb.cast(),
                (IP_OFF + UNREACH_HLEN) as u32,
                quote.cast(),
                n as u32,
                recompute,
            )
        } == 0
}

/// Bytes `bpf_csum_diff` sums in one call on every kernel (older ones
/// refuse more).
const CSUM_CHUNK: usize = 512;
const _: () = assert!(QUOTE_MAX + 4 <= 3 * CSUM_CHUNK);

/// The one's-complement sum (unfolded) of the `size` bytes at `off` in the
/// quote buffer `p` (`size` a multiple of 4, at most [`CSUM_CHUNK`];
/// `off + size` within the buffer: the caller's bounds).
#[inline(always)]
fn sum_at(p: *mut u8, off: usize, size: usize) -> Option<u32> {
    // SAFETY: within the buffer, as the caller says.
    let rc =
        unsafe { h::bpf_csum_diff(core::ptr::null_mut(), 0, p.add(off).cast(), size as u32, 0) };
    (rc >= 0).then_some(rc as u32)
}

/// The one's-complement sum (unfolded) of the first `len` bytes of the
/// quote buffer `p` (`len` a multiple of 4, at most `QUOTE_MAX + 4`).
#[inline(always)]
fn sum_words(p: *mut u8, len: usize) -> Option<u32> {
    if len > QUOTE_MAX + 4 {
        return None;
    }
    let mut sum = sum_at(p, 0, len.min(CSUM_CHUNK))?;
    if len > CSUM_CHUNK {
        sum = csum::add(
            sum,
            sum_at(p, CSUM_CHUNK, (len - CSUM_CHUNK).min(CSUM_CHUNK))?,
        );
    }
    if len > 2 * CSUM_CHUNK {
        sum = csum::add(sum, sum_at(p, 2 * CSUM_CHUNK, len - 2 * CSUM_CHUNK)?);
    }
    Some(sum)
}

/// A source an ICMPv6 error may go to: not unspecified, loopback or
/// multicast (RFC 4443 2.4 (e.6)).
#[inline(always)]
fn is_unicast(a: &Ip6) -> bool {
    let unspecified_or_loopback =
        a[0] == 0 && a[1] == 0 && a[2] == 0 && (a[3] == 0 || a[3] == 1u32.to_be());
    !unspecified_or_loopback && !is_multicast(a)
}

/// ff00::/8.
#[inline(always)]
fn is_multicast(a: &Ip6) -> bool {
    a[0].to_ne_bytes()[0] == 0xff
}
