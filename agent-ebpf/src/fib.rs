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

use agent_common::stats::Counter;
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated as h,
    programs::TcContext,
};

use crate::{
    maps::count,
    parse::{IP_CSUM_OFF, IP_OFF, IP_TTL_OFF, Ipv4Hdr},
    tc::verdict,
};

pub const AF_INET: u8 = 2;

/// A return code of [`lookup`] that is no FIB answer: the packet's TTL
/// would expire here, it is for the stack.
pub const RC_STACK: u32 = u32::MAX;

/// Routes the (already translated) IPv4 packet and redirects it to the
/// egress of the next hop's device, decrementing its TTL as a router does.
/// A function of its own (a BPF-to-BPF call): the lookup's 64-byte
/// parameters live in its frame, not in the callers' (`ferry_tc_in`'s is
/// near the 512-byte limit).
#[inline(never)]
pub fn forward(ctx: &TcContext) -> i32 {
    // Re-read: the header was rewritten since it was parsed.
    let Ok(ip) = ctx.load::<Ipv4Hdr>(IP_OFF) else {
        return verdict::SHOT;
    };
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let rc = lookup(ctx, &ip, 0, &mut p);
    send(ctx, &ip, rc, &p)
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

/// Sends the packet the way the lookup (`rc`, `p`) says: see the module
/// comment. `ip` is its header as it is now (TTL and protocol are used).
#[inline(always)]
pub fn send(ctx: &TcContext, ip: &Ipv4Hdr, rc: u32, p: &bpf_fib_lookup) -> i32 {
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if decrement_ttl(ctx, ip).is_err() {
                return verdict::SHOT;
            }
            // SAFETY: the union member the helper fills on success.
            let macs = unsafe { p.__bindgen_anon_6.__bindgen_anon_2 };
            let mut eth = [0u8; 12];
            eth[..6].copy_from_slice(&macs.dmac);
            eth[6..].copy_from_slice(&macs.smac);
            if ctx.store(0, &eth, 0).is_err() {
                return verdict::SHOT;
            }
            unsafe { h::bpf_redirect(p.ifindex, 0) as i32 }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            if decrement_ttl(ctx, ip).is_err() {
                return verdict::SHOT;
            }
            // No parameters: the helper looks the next hop up again and
            // resolves its neighbour before transmitting.
            unsafe { h::bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
        }
        _ => {
            count(Counter::NsFibPassed);
            verdict::OK
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
