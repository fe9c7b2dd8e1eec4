//! Checksums: rewriting address and port fields of a TCP/UDP packet with the
//! kernel's incremental helpers, and the one's-complement arithmetic (RFC
//! 1071, RFC 1624) for what the helpers cannot do: checksums inside an ICMP
//! payload and packets built from scratch.
//!
//! All values are raw (network order) as loaded from the packet. One's
//! complement sums do not depend on byte order as long as every word is read
//! the same way (RFC 1071 §2(B)), so words read natively from network bytes
//! give the right bytes when stored natively again.

use agent_common::Ip6;
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM},
    helpers::generated as h,
    programs::TcContext,
};

use crate::{
    drop::DropReason,
    parse::{
        IP_CSUM_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, IP6_DADDR_OFF, IP6_SADDR_OFF,
        IPV4_MIN_HLEN, IPV6_HLEN, Ipv4, Ipv4Hdr, Ipv6, L4, Tuple, store_ip6,
    },
};

/// The furthest L4 header [`rewrite6`] writes directly (a mask: extension
/// headers of up to ~1 KiB); a packet whose L4 header is further goes
/// through the helpers ([`rewrite`]).
const L4_OFF_MAX: usize = 0x3ff;

/// What a failed rewrite helper means: the packet may be half rewritten.
const FAILED: DropReason = DropReason::RewriteFailed;

/// One's-complement addition of two 32-bit partial sums (end-around carry).
#[inline(always)]
pub fn add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// Folds a 64-bit sum of a few 32-bit terms to a 32-bit partial sum (end-around carry).
#[inline(always)]
pub fn fold64(sum: u64) -> u32 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    ((s & 0xffff_ffff) + (s >> 32)) as u32
}

/// Folds a 32-bit partial sum to 16 bits (not complemented).
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Adds the change of a 32-bit field from `old` to `new` to a difference
/// (RFC 1624: ~m + m').
#[inline(always)]
pub fn diff4(acc: u32, old: u32, new: u32) -> u32 {
    add(add(acc, !old), new)
}

/// Adds the change of a 16-bit field (at an even offset) to a difference.
#[inline(always)]
pub fn diff2(acc: u32, old: u16, new: u16) -> u32 {
    add(add(acc, (!old) as u32), new as u32)
}

/// Adds the change of an IPv6 address (four 32-bit words) to a difference.
#[inline(always)]
pub fn diff16(acc: u32, old: &Ip6, new: &Ip6) -> u32 {
    let mut d = acc;
    let mut i = 0;
    while i < 4 {
        d = diff4(d, old[i], new[i]);
        i += 1;
    }
    d
}

/// The checksum field after the bytes it covers changed by `diff`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    !fold(add((!check) as u32, diff))
}

/// The RFC 1071 checksum to store over `N` 16-bit words.
#[inline(always)]
pub fn of_words<const N: usize>(words: &[u16; N]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        sum = add(sum, words[i] as u32);
        i += 1;
    }
    !fold(sum)
}

/// Sets an IPv4 address of a TCP/UDP packet (`dst` chooses which) and fixes
/// both checksums: the IP header's and the L4 pseudo-header's. The
/// BPF_F_PSEUDO_HDR flag lets the helper handle CHECKSUM_PARTIAL packets
/// (whose L4 field holds only the pseudo-header sum) and keep a
/// CHECKSUM_COMPLETE `skb->csum` right.
#[inline(always)]
pub fn set_addr(ctx: &TcContext, l4: &L4, dst: bool, old: u32, new: u32) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let off = if dst { IP_DADDR_OFF } else { IP_SADDR_OFF };
    ctx.l4_csum_replace(
        l4.csum_off,
        old as u64,
        new as u64,
        BPF_F_PSEUDO_HDR as u64 | l4.csum_flags | 4,
    )
    .map_err(|_| FAILED)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
        .map_err(|_| FAILED)?;
    ctx.store(off, &new, 0).map_err(|_| FAILED)
}

/// Sets an IPv6 address of a TCP/UDP packet (`dst` chooses which) and fixes
/// the L4 checksum, whose pseudo-header holds it (IPv6 has no header
/// checksum). The helper takes the difference of all 16 bytes at once (size
/// 0) and, with BPF_F_PSEUDO_HDR, handles CHECKSUM_PARTIAL packets and moves
/// a CHECKSUM_COMPLETE `skb->csum` by the checksum field's change, as for
/// IPv4. Unlike IPv4, no header checksum changes the other way to make up
/// for the address's own change in the bytes: the store recomputes
/// `skb->csum` over them (BPF_F_RECOMPUTE_CSUM), which keeps it right on
/// every kernel (Linux 6.16's BPF_F_IPV6 flag would do the same in the helper).
#[inline(always)]
pub fn set_addr6(
    ctx: &TcContext,
    l4: &L4,
    dst: bool,
    old: &Ip6,
    new: &Ip6,
) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let off = if dst { IP6_DADDR_OFF } else { IP6_SADDR_OFF };
    ctx.l4_csum_replace(
        l4.csum_off,
        0,
        diff16(0, old, new) as u64,
        BPF_F_PSEUDO_HDR as u64 | l4.csum_flags,
    )
    .map_err(|_| FAILED)?;
    ctx.store(off, new, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| FAILED)
}

/// An address of a TCP/UDP packet's family: how it is rewritten.
pub trait AddrField: Copy + PartialEq {
    /// Sets the source (`dst` false) or destination address from `old` to
    /// `new`, with the checksums that cover it.
    fn set(ctx: &TcContext, l4: &L4, dst: bool, old: Self, new: Self) -> Result<(), DropReason>;
}

impl AddrField for u32 {
    #[inline(always)]
    fn set(ctx: &TcContext, l4: &L4, dst: bool, old: u32, new: u32) -> Result<(), DropReason> {
        set_addr(ctx, l4, dst, old, new)
    }
}

impl AddrField for Ip6 {
    #[inline(always)]
    fn set(ctx: &TcContext, l4: &L4, dst: bool, old: Ip6, new: Ip6) -> Result<(), DropReason> {
        set_addr6(ctx, l4, dst, &old, &new)
    }
}

/// Sets the source (`dst` false) or destination port of a TCP/UDP packet and
/// fixes its checksum (ports are covered as data, not pseudo-header).
#[inline(always)]
pub fn set_port(ctx: &TcContext, l4: &L4, dst: bool, old: u16, new: u16) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    let off = l4.off + if dst { 2 } else { 0 };
    ctx.l4_csum_replace(l4.csum_off, old as u64, new as u64, l4.csum_flags | 2)
        .map_err(|_| FAILED)?;
    // A UDP datagram without checksum (still 0 after the helper, which writes a computed 0
    // as 0xffff): nothing in it makes up for the new port, so a CHECKSUM_COMPLETE
    // `skb->csum` must follow the store itself (found by the packet fuzzer).
    let unchecked = l4.csum_flags != 0 && ctx.load::<u16>(l4.csum_off) == Ok(0);
    let flags = if unchecked {
        BPF_F_RECOMPUTE_CSUM as u64
    } else {
        0
    };
    ctx.store(off, &new, flags).map_err(|_| FAILED)
}

/// Rewrites a TCP/UDP packet's addresses and ports from `old` to the given
/// ones, skipping fields that stay the same. A failed helper leaves the
/// packet half rewritten: the caller must drop it (`DropReason::RewriteFailed`).
#[inline(always)]
pub fn rewrite<A: AddrField>(
    ctx: &TcContext,
    l4: &L4,
    old: &Tuple<A>,
    saddr: A,
    sport: u16,
    daddr: A,
    dport: u16,
) -> Result<(), DropReason> {
    A::set(ctx, l4, false, old.saddr, saddr)?;
    A::set(ctx, l4, true, old.daddr, daddr)?;
    set_port(ctx, l4, false, old.sport, sport)?;
    set_port(ctx, l4, true, old.dport, dport)
}

/// Rewrites an IPv4 TCP/UDP packet (parsed as `ip`, its L4 checksum where
/// `l4` says) to the given addresses and ports: the header fields and the
/// IP checksum (RFC 1624, computed here) written directly, then the L4
/// checksum with at most two helper calls, because only the kernel knows
/// the skb's `ip_summed`:
/// - the addresses' change as one difference with BPF_F_PSEUDO_HDR: added
///   to the field (CHECKSUM_NONE/UNNECESSARY/COMPLETE) or to the
///   pseudo-header sum a CHECKSUM_PARTIAL field holds, and taken off a
///   CHECKSUM_COMPLETE `skb->csum` (the packet's bytes changed by exactly
///   the field's change: the header's checksum cancels its addresses');
/// - the ports' as one difference without it: a CHECKSUM_PARTIAL field is
///   left alone (the device sums the ports), any other gets it, and
///   `skb->csum` stays (the ports and the field cancel).
///
/// A UDP datagram without checksum (0, which BPF_F_MARK_MANGLED_0 keeps)
/// has nothing to make up for new ports: they are stored by the helper that
/// moves `skb->csum` over them. Packet pointers are derived here, after any
/// helper the caller ran, and none is used after the first helper below.
#[inline(always)]
pub fn rewrite4(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
) -> Result<(), DropReason> {
    let old = &ip.hdr;
    let [old_sport, old_dport] = ip.l4.ports;
    let addrs = old.saddr != saddr || old.daddr != daddr;
    let ports = old_sport != sport || old_dport != dport;
    // Summed in 64 bits and folded once: the same value as chained `diff4`/`diff2` (both are
    // 0 only when every term is, else the one value in 1..=u32::MAX congruent to the sum mod
    // 2^32 - 1), without an end-around carry after every term.
    let addr_diff = fold64((!old.saddr) as u64 + saddr as u64 + (!old.daddr) as u64 + daddr as u64);
    let unchecked = ip.l4.udp_unchecked;

    // A segment without its checksum field cannot be rewritten.
    if !ip.l4.csum_in_packet {
        return Err(FAILED);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let iph = data + IP_OFF;
    // Masked for the verifier: at most 14 + 60.
    let l4p = data + (ip.l4_off as usize & 0x7f);
    if iph + IPV4_MIN_HLEN > end || l4p + 4 > end {
        return Err(FAILED);
    }
    // SAFETY: both ranges checked above; the skb is writable (the
    // verifier's prologue uncloned it for a program that writes directly).
    unsafe {
        if addrs {
            let hdr = iph as *mut Ipv4Hdr;
            (*hdr).saddr = saddr;
            (*hdr).daddr = daddr;
            (*hdr).check = apply(old.check, addr_diff);
        }
        if ports && !unchecked {
            // Halfword stores (see parse::packet_word: an unaligned write is four byte
            // stores).
            core::ptr::write(l4p as *mut [u16; 2], [sport, dport]);
        }
    }
    if addrs {
        l4_csum_diff(
            ctx,
            l4.csum_off,
            addr_diff,
            BPF_F_PSEUDO_HDR as u64 | l4.csum_flags,
        )?;
    }
    if ports {
        ports_csum(ctx, l4, unchecked, (old_sport, old_dport), (sport, dport))?;
    }
    Ok(())
}

/// Rewrites an IPv6 TCP/UDP packet (parsed as `ip`, its L4 checksum where
/// `l4` says; its flow `old`) to the given addresses and ports, as
/// [`rewrite4`] does IPv4's: the fields written directly and the L4
/// checksum with at most two `bpf_l4_csum_replace` calls (the addresses' change as one
/// difference with BPF_F_PSEUDO_HDR, the ports' as one without). IPv6 has
/// no header checksum to cancel the addresses' change in the bytes: for a
/// CHECKSUM_COMPLETE `skb->csum`, which the first helper moved by the
/// field's change alone (as for IPv4), `bpf_csum_update` adds the
/// addresses' (a no-op for any other `ip_summed`). The same packet and the
/// same `skb->csum` (as a checksum) as [`rewrite`]'s helpers give, for
/// three helper calls at most instead of two to four per changed field.
/// Headers not in the linear part (or past `L4_OFF_MAX`): [`rewrite`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn rewrite6(
    ctx: &TcContext,
    ip: &Ipv6,
    l4: &L4,
    old: &Tuple<Ip6>,
    saddr: Ip6,
    sport: u16,
    daddr: Ip6,
    dport: u16,
) -> Result<(), DropReason> {
    let (old_sport, old_dport) = (old.sport, old.dport);
    let addrs = old.saddr != saddr || old.daddr != daddr;
    let ports = old_sport != sport || old_dport != dport;
    if !addrs && !ports {
        return Ok(());
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let l4_off = ip.l4_off;
    let iph = data + IP_OFF;
    // Bounded for the verifier (extension headers: at most L4_OFF_MAX).
    let l4p = data + (l4_off & L4_OFF_MAX);
    if l4_off > L4_OFF_MAX || !ip.l4.csum_in_packet || iph + IPV6_HLEN > end || l4p + 4 > end {
        return rewrite(ctx, l4, old, saddr, sport, daddr, dport);
    }
    let mut sum = 0u64;
    let mut i = 0;
    while i < 4 {
        sum += (!old.saddr[i]) as u64 + saddr[i] as u64 + (!old.daddr[i]) as u64 + daddr[i] as u64;
        i += 1;
    }
    let addr_diff = fold64(sum);
    let unchecked = ip.l4.udp_unchecked;
    // SAFETY: both ranges checked above; the skb is writable (the
    // verifier's prologue uncloned it for a program that writes directly).
    unsafe {
        if addrs {
            store_ip6(iph + 8, &saddr);
            store_ip6(iph + 24, &daddr);
        }
        if ports && !unchecked {
            core::ptr::write(l4p as *mut [u16; 2], [sport, dport]);
        }
    }
    if addrs {
        l4_csum_diff(
            ctx,
            l4.csum_off,
            addr_diff,
            BPF_F_PSEUDO_HDR as u64 | l4.csum_flags,
        )?;
        // SAFETY: the program's own skb (an error: not CHECKSUM_COMPLETE).
        unsafe { h::bpf_csum_update(ctx.as_ptr().cast(), addr_diff) };
    }
    if ports {
        ports_csum(ctx, l4, unchecked, (old_sport, old_dport), (sport, dport))?;
    }
    Ok(())
}

/// The ports' part of [`rewrite4`] and [`rewrite6`], after their direct
/// stores: a UDP datagram without a checksum (`unchecked`, its ports not
/// stored yet) gets them through the helper, any other packet its L4
/// checksum moved by the ports' difference.
#[inline(always)]
fn ports_csum(
    ctx: &TcContext,
    l4: &L4,
    unchecked: bool,
    old: (u16, u16),
    new: (u16, u16),
) -> Result<(), DropReason> {
    if unchecked {
        return ctx
            .store(l4.off, &[new.0, new.1], BPF_F_RECOMPUTE_CSUM as u64)
            .map_err(|_| FAILED);
    }
    let diff = fold64((!old.0) as u64 + new.0 as u64 + (!old.1) as u64 + new.1 as u64);
    l4_csum_diff(ctx, l4.csum_off, diff, l4.csum_flags)
}

/// `bpf_l4_csum_replace` of a precomputed difference (size 0).
#[inline(always)]
fn l4_csum_diff(ctx: &TcContext, off: usize, diff: u32, flags: u64) -> Result<(), DropReason> {
    // SAFETY: the program's own skb.
    let rc =
        unsafe { h::bpf_l4_csum_replace(ctx.as_ptr().cast(), off as u32, 0, diff as u64, flags) };
    if rc == 0 { Ok(()) } else { Err(FAILED) }
}
