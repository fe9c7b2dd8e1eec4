//! Forwarding a translated packet straight to its next hop.
//!
//! A packet that the ingress program gave a node address as its source
//! (SNAT to a remote backend, or a reply from a remote backend that now
//! comes from a NodePort's node address) cannot go up the stack: IPv4 input
//! drops packets that arrive with a local source address as martians
//! (`fib_validate_source`, unless `accept_local`). So, as Cilium does, such
//! packets are routed here with `bpf_fib_lookup` and redirected to the
//! egress of the device the FIB names, with the MACs it gives (or through
//! `bpf_redirect_neigh` when the neighbour is not resolved yet). When the
//! FIB has no answer the packet is handed to the stack (counted).
//!
//! DSR packets (the client's source kept, the frontend in an IP option, see
//! dsr.rs) go the same way: the stack could forward them, but the lookup
//! also tells whether the option still fits the route's MTU.
//!
//! IPv6 packets that the programs gave a node address ([`forward6`]) are
//! routed the same way, for the same reasons (the stack's input path is no
//! place for a packet that now comes from this node), with the hop limit
//! in place of the TTL.

use core::mem::MaybeUninit;

use agent_common::stats::Counter;
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated as h,
    programs::TcContext,
};

use crate::{
    drop::{DropReason, Outcome, Raw},
    maps::count,
    parse::{
        IP_CSUM_OFF, IP_OFF, IP_TTL_OFF, IP6_DADDR_OFF, IP6_HOP_LIMIT_OFF, IP6_SADDR_OFF, Ipv4Hdr,
    },
    verdict,
};

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// The traffic class and flow label of an IPv6 header's first word
/// (network order): the lookup's `flowinfo`.
pub const IPV6_FLOWINFO_MASK: u32 = 0x0fff_ffff_u32.to_be();

/// A return code of [`lookup`] that is no FIB answer: the packet's TTL
/// would expire here, it is for the stack.
pub const RC_STACK: u32 = u32::MAX;

/// The fields of a parsed IPv4 header the lookup and the TTL decrement
/// use, in one word for [`forward`]: TTL, ToS, protocol.
#[inline(always)]
pub fn meta(ip: &Ipv4Hdr) -> u32 {
    u32::from_ne_bytes([ip.ttl, ip.tos, ip.proto, 0])
}

/// The lookup's parameters in `slot`, all zeros, written word by word (see
/// [`crate::parse::zeroed_in`]: `mem::zeroed()` of these 64 bytes is a loop of 64 one-byte
/// stores).
#[inline(always)]
pub fn params(slot: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    unsafe { crate::parse::zeroed_in(slot) }
}

/// Routes the (already translated) IPv4 packet, now from `saddr` to
/// `daddr` (its other fields as parsed, in `meta`: nothing is read again),
/// and redirects it to the egress of the next hop's device, decrementing
/// its TTL as a router does. A function of its own (a BPF-to-BPF call):
/// the lookup's 64-byte parameters live in its frame, not in the callers'
/// (`ferry_tc_in`'s is near the 512-byte limit).
#[inline(never)]
pub fn forward(ctx: &TcContext, saddr: u32, daddr: u32, meta: u32) -> Raw {
    Raw::of(forward_body(ctx, saddr, daddr, meta))
}

#[inline(always)]
fn forward_body(ctx: &TcContext, saddr: u32, daddr: u32, meta: u32) -> Outcome {
    let [ttl, tos, proto, _] = meta.to_ne_bytes();
    // The fields `lookup` and `send` read (the rest is never read).
    let ip = Ipv4Hdr {
        ver_ihl: 0,
        tos,
        tot_len: 0,
        id: 0,
        frag_off: 0,
        ttl,
        proto,
        check: 0,
        saddr,
        daddr,
    };
    let mut slot = MaybeUninit::uninit();
    let p = params(&mut slot);
    let rc = lookup(ctx, &ip, 0, p);
    send(ctx, &ip, rc, p)
}

/// Looks up the route of a packet with header `ip` (its addresses, ToS and
/// protocol) arriving on this device, into `p` (all zeros on entry).
/// `tot_len` 0: the helper checks the skb against the egress device's MTU
/// (on success only); otherwise it checks `tot_len` against the route's MTU
/// before anything else and answers BPF_FIB_LKUP_RET_FRAG_NEEDED when it
/// does not fit. A packet whose TTL would expire here gets no lookup but
/// [`RC_STACK`]: the stack sends the time-exceeded error (or drops it).
#[inline(always)]
pub fn lookup(ctx: &TcContext, ip: &Ipv4Hdr, tot_len: u16, p: &mut bpf_fib_lookup) -> u32 {
    if ip.ttl <= 1 {
        return RC_STACK;
    }
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = crate::parse::ifindex(ctx);
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = ip.saddr;
    p.__bindgen_anon_4.ipv4_dst = ip.daddr;
    let rc = unsafe {
        h::bpf_fib_lookup(
            ctx.as_ptr(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc as u32
}

/// Routes the (already translated) IPv6 packet and redirects it, as
/// [`forward`] does for IPv4 (a function of its own for the same reason).
#[inline(never)]
pub fn forward6(ctx: &TcContext) -> Raw {
    Raw::of(forward6_body(ctx))
}

#[inline(always)]
fn forward6_body(ctx: &TcContext) -> Outcome {
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    // The first 8 bytes of the header (version, traffic class, flow label,
    // payload length, next header, hop limit); the addresses are read
    // straight into the lookup's parameters (IPv6's frames are tight).
    let first = ctx
        .load::<[u8; 8]>(IP_OFF)
        .map_err(|_| DropReason::ForwardFailed)?;
    let hop_limit = first[7];
    let rc = lookup6(ctx, first, &mut p);
    send_with(ctx, rc, &p, || decrement_hop_limit(ctx, hop_limit))
}

/// [`lookup`] for an IPv6 packet whose header starts with `first` (the MTU
/// is checked against the skb, on success only). A hop limit that would
/// expire here: [`RC_STACK`].
#[inline(always)]
fn lookup6(ctx: &TcContext, first: [u8; 8], p: &mut bpf_fib_lookup) -> u32 {
    if first[7] <= 1 {
        return RC_STACK;
    }
    // SAFETY: the union members of IPv6, 16 bytes each.
    let addrs = unsafe {
        crate::parse::load_into(ctx, IP6_SADDR_OFF, &mut p.__bindgen_anon_3.ipv6_src).and_then(
            |()| crate::parse::load_into(ctx, IP6_DADDR_OFF, &mut p.__bindgen_anon_4.ipv6_dst),
        )
    };
    if addrs.is_err() {
        return RC_STACK;
    }
    p.family = AF_INET6;
    // The next header, as the kernel's own input route lookup takes it.
    p.l4_protocol = first[6];
    p.ifindex = crate::parse::ifindex(ctx);
    p.__bindgen_anon_2.flowinfo =
        u32::from_ne_bytes([first[0], first[1], first[2], first[3]]) & IPV6_FLOWINFO_MASK;
    let rc = unsafe {
        h::bpf_fib_lookup(
            ctx.as_ptr(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc as u32
}

/// [`lookup`] for an IPv6 packet whose (translated) fixed header is `ip`,
/// into `p` (all zeros on entry); `tot_len` as for IPv4 (the whole packet:
/// the route's MTU counts the 40-byte header), 0 to check the skb instead.
/// Used by DSR (dsr6.rs), whose header is not yet in the packet.
#[inline(always)]
pub fn lookup6_hdr(
    ctx: &TcContext,
    ip: &crate::parse::Ipv6Hdr,
    tot_len: u16,
    p: &mut bpf_fib_lookup,
) -> u32 {
    if ip.hop_limit <= 1 {
        return RC_STACK;
    }
    p.family = AF_INET6;
    p.l4_protocol = ip.next_hdr;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = crate::parse::ifindex(ctx);
    let w = ip.ver_tc_flow;
    p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(w) & IPV6_FLOWINFO_MASK;
    p.__bindgen_anon_3.ipv6_src = ip.saddr;
    p.__bindgen_anon_4.ipv6_dst = ip.daddr;
    let rc = unsafe {
        h::bpf_fib_lookup(
            ctx.as_ptr(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc as u32
}

/// [`send`] for an IPv6 packet whose hop limit is `hop_limit`.
#[inline(always)]
pub fn send6(ctx: &TcContext, hop_limit: u8, rc: u32, p: &bpf_fib_lookup) -> Outcome {
    send_with(ctx, rc, p, || decrement_hop_limit(ctx, hop_limit))
}

/// Sends the packet the way the lookup (`rc`, `p`) says: see the module
/// comment. `ip` is its header as it is now (TTL and protocol are used).
#[inline(always)]
pub fn send(ctx: &TcContext, ip: &Ipv4Hdr, rc: u32, p: &bpf_fib_lookup) -> Outcome {
    send_with(ctx, rc, p, || decrement_ttl(ctx, ip))
}

/// [`send`] with the family's TTL or hop limit decrement.
#[inline(always)]
fn send_with(
    ctx: &TcContext,
    rc: u32,
    p: &bpf_fib_lookup,
    decrement: impl Fn() -> Result<(), i64>,
) -> Outcome {
    let failed = |_| DropReason::ForwardFailed;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            decrement().map_err(failed)?;
            // SAFETY: the union member the helper fills on success.
            let macs = unsafe { p.__bindgen_anon_6.__bindgen_anon_2 };
            let mut eth = [0u8; 12];
            eth[..6].copy_from_slice(&macs.dmac);
            eth[6..].copy_from_slice(&macs.smac);
            ctx.store(0, &eth, 0).map_err(failed)?;
            Ok(unsafe { h::bpf_redirect(p.ifindex, 0) as i32 })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            decrement().map_err(failed)?;
            // No parameters: the helper looks the next hop up again and
            // resolves its neighbour before transmitting.
            Ok(unsafe { h::bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32 })
        }
        _ => {
            count(Counter::NsFibPassed);
            Ok(verdict::OK)
        }
    }
}

#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<(), i64> {
    // TTL and protocol form one 16-bit word of the header checksum.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 2)?;
    ctx.store(IP_TTL_OFF, &(ip.ttl - 1), 0)
}

/// IPv6 has no header checksum: the store moves a CHECKSUM_COMPLETE
/// `skb->csum` by the byte's change itself.
#[inline(always)]
fn decrement_hop_limit(ctx: &TcContext, hop_limit: u8) -> Result<(), i64> {
    ctx.store(
        IP6_HOP_LIMIT_OFF,
        &(hop_limit - 1),
        aya_ebpf::bindings::BPF_F_RECOMPUTE_CSUM as u64,
    )
}
