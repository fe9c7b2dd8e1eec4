//! Direct server return for IPv6 (`--lb-mode dsr`), as dsr.rs does it for
//! IPv4 and as Cilium does it for IPv6: the frontend travels in a
//! destination options header ([`DsrOpt6`], Cilium's `dsr_opt_v6` byte for
//! byte) inserted right after the fixed header. Everything else is dsr.rs's
//! design, read there: which packets carry the header (UDP: every datagram;
//! TCP: SYNs and the packet that creates the flow on A), what B trusts
//! (DSR on, a frontend this cluster serves, a backend of it on this node:
//! `MEMBERS_V6`, `NODES_V6`), the REPLY entry B makes and never makes over
//! another flow's, and what happens when the header does not fit.
//!
//! When it does not fit (the route's MTU, as `bpf_fib_lookup` checks it,
//! is below the packet plus 24 bytes): what IPv4 does, not an ICMPv6 Packet
//! Too Big. A new flow whose first packet is a UDP datagram or a TCP SYN
//! falls back to SNAT for its whole life (nodeport.rs); any other packet
//! of a DSR flow goes without the header, DNATed only (`NsDsrFallback`).
//!
//! Only a destination options header that is the first extension header
//! (where A puts it) is looked at.
//!
//! Stack: as dsr.rs, the entry points are BPF-to-BPF calls that take the
//! skb and a pointer, and keep their temporaries in a per-CPU scratch map
//! (`ferry_dsr6_scr`).

use agent_common::{
    Ct6Key, Ct6Value, DSR_OPT6_HDR_LEN, DSR_OPT6_LEN, DSR_OPT6_SIZE, DSR_OPT6_TYPE, DsrOpt6, Ip6,
    Member6Key, NEXTHDR_DEST, Svc6Key, backend_flags, ct_dir, ct_flags, proto, scope,
    stats::Counter, svc_flags,
};
use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_EXIST, BPF_F_ADJ_ROOM_NO_CSUM_RESET, BPF_F_MARK_MANGLED_0,
        BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_NOEXIST,
        bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_fib_lookup,
    },
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};

use crate::{
    csum, ct,
    drop::{DropReason, Outcome, Raw},
    fib,
    maps::{BACKENDS_V6, CT_V6, MEMBERS_V6, NODE_ADDR_V6, NODES_V6, SERVICES_V6, count},
    parse::{self, IP_OFF, IPV6_HLEN, Ipv6Hdr, L4, TCP_SYN, load_into},
    select, verdict,
};

/// The fixed header followed by the destination options header.
#[repr(C)]
pub struct HdrWithOpt {
    hdr: Ipv6Hdr,
    opt: DsrOpt6,
}

/// The IPv6 DSR paths' temporaries (one per CPU, as dsr.rs's).
#[repr(C)]
struct Scratch {
    fib: bpf_fib_lookup,
    /// The fixed header as it is in the packet.
    hdr: Ipv6Hdr,
    /// What is written back.
    out: HdrWithOpt,
    /// The header as it arrived (B).
    opt: DsrOpt6,
    svc: Svc6Key,
    member: Member6Key,
    key: Ct6Key,
    val: Ct6Value,
    frontend: Ip6,
    /// The L4 header's ports as they arrived, and its checksum (A).
    ports: [u16; 2],
    l4: L4,
}

/// Per-CPU scratch space of the IPv6 DSR paths, as `ferry_dsr_scr`.
#[map(name = "ferry_dsr6_scr")]
static DSR6_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's slot, used by this program run alone.
    DSR6_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn context(skb: *mut __sk_buff) -> Option<TcContext> {
    core::ptr::NonNull::new(skb).map(TcContext::new)
}

/// The first packet of a new flow to a remote backend at `backend`: does
/// the header fit it (the route's MTU)?
#[inline(never)]
pub fn option_fits(skb: *mut __sk_buff, backend: *const Ip6) -> bool {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return false;
    };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return false;
    }
    // SAFETY: the caller's address (a map value or its stack).
    s.hdr.daddr = unsafe { *backend };
    route_with_option(&ctx, s).is_some()
}

/// Looks up the route of the packet whose (translated) header is `s.hdr`,
/// grown by the header, into `s.fib`: its return code, or None when the
/// header does not fit.
#[inline(always)]
fn route_with_option(ctx: &TcContext, s: &mut Scratch) -> Option<u32> {
    let tot_len =
        u16::from_be(s.hdr.payload_len).checked_add((IPV6_HLEN + DSR_OPT6_SIZE) as u16)?;
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    s.fib = unsafe { core::mem::zeroed() };
    let rc = fib::lookup6_hdr(ctx, &s.hdr, tot_len, &mut s.fib);
    (rc != BPF_FIB_LKUP_RET_FRAG_NEEDED).then_some(rc)
}

/// dsr.rs's `forward` for IPv6: DNAT to the backend `v` names, the header
/// naming the frontend when the packet should carry one and it fits, and
/// out through the FIB.
#[inline(never)]
pub fn forward(skb: *mut __sk_buff, v: *const Ct6Value, first: bool) -> Raw {
    Raw::of(forward_body(skb, v, first))
}

#[inline(always)]
fn forward_body(skb: *mut __sk_buff, v: *const Ct6Value, first: bool) -> Outcome {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return Err(DropReason::Internal);
    };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return Err(DropReason::Malformed);
    }
    let Some((l4_proto, l4_off)) = parse::ipv6_upper(&ctx, s.hdr.next_hdr, IP_OFF + IPV6_HLEN)
    else {
        return Err(DropReason::Malformed);
    };
    if load_into(&ctx, l4_off, &mut s.ports).is_err() {
        return Err(DropReason::Malformed);
    }
    // SAFETY: the flow's conntrack value (a map value or the scratch room).
    let backend_port = unsafe { (*v).nat_dport };
    s.frontend = s.hdr.daddr;
    let frontend_port = s.ports[1];
    let udp = l4_proto == proto::UDP;
    s.l4 = L4 {
        off: l4_off,
        csum_off: l4_off + if udp { 6 } else { 16 },
        csum_flags: if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 },
    };
    let wants =
        first || l4_proto == proto::UDP || ctx.load::<u8>(l4_off + 13).unwrap_or(0) & TCP_SYN != 0;
    let mut route = None;
    if wants {
        // SAFETY: as above.
        s.hdr.daddr = unsafe { (*v).nat_daddr };
        route = route_with_option(&ctx, s);
        if route.is_none() {
            count(Counter::NsDsrFallback);
        }
    }
    // SAFETY: as above; the address is read in place.
    let backend = unsafe { &(*v).nat_daddr };
    if let Err(e) = csum::set_addr6(&ctx, &s.l4, true, &s.frontend, backend) {
        return Err(e);
    }
    if let Err(e) = csum::set_port(&ctx, &s.l4, true, frontend_port, backend_port) {
        return Err(e);
    }
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return Err(DropReason::RewriteFailed);
    }
    if let Some(rc) = route {
        match insert_option(&ctx, s, frontend_port) {
            Ok(()) => return fib::send6(&ctx, s.hdr.hop_limit, rc, &s.fib),
            Err(Insert::Unchanged) => count(Counter::NsDsrFallback),
            Err(Insert::Broken) => return Err(DropReason::DsrFailed),
        }
    }
    // Without the header: the route of the packet as it is.
    // SAFETY: as above.
    s.fib = unsafe { core::mem::zeroed() };
    let rc = fib::lookup6_hdr(&ctx, &s.hdr, 0, &mut s.fib);
    fib::send6(&ctx, s.hdr.hop_limit, rc, &s.fib)
}

/// How adding or removing the header failed.
enum Insert {
    /// Nothing was changed: the packet can go on as it is.
    Unchanged,
    /// The packet was resized but not rewritten: it must be dropped.
    Broken,
}

/// Inserts the header naming the frontend (`s.frontend`, `port` raw) after
/// the fixed header `s.hdr`, and fixes its next header and payload length.
/// IPv6 has no header checksum, and the upper layer's pseudo-header counts
/// the upper-layer length, not the payload length: no checksum changes.
#[inline(always)]
fn insert_option(ctx: &TcContext, s: &mut Scratch, port: u16) -> Result<(), Insert> {
    let payload_len = u16::from_be(s.hdr.payload_len)
        .checked_add(DSR_OPT6_SIZE as u16)
        .ok_or(Insert::Unchanged)?;
    ctx.adjust_room(
        DSR_OPT6_SIZE as i32,
        BPF_ADJ_ROOM_NET,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET as u64,
    )
    .map_err(|_| Insert::Unchanged)?;
    s.out.opt = DsrOpt6 {
        next_hdr: s.hdr.next_hdr,
        hdr_len: DSR_OPT6_HDR_LEN,
        opt_type: DSR_OPT6_TYPE,
        opt_len: DSR_OPT6_LEN,
        addr: s.frontend,
        port,
        pad: 0,
    };
    s.out.hdr = s.hdr;
    s.out.hdr.next_hdr = NEXTHDR_DEST;
    s.out.hdr.payload_len = payload_len.to_be();
    ctx.store(IP_OFF, &s.out, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| Insert::Broken)
}

/// dsr.rs's `receive` for IPv6: a TCP/UDP packet for no frontend whose
/// first extension header is a destination options header.
#[inline(never)]
pub fn receive(skb: *mut __sk_buff, dsr_on: bool) -> Raw {
    Raw::of(receive_body(skb, dsr_on))
}

#[inline(always)]
fn receive_body(skb: *mut __sk_buff, dsr_on: bool) -> Outcome {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return Err(DropReason::Internal);
    };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err()
        || s.hdr.next_hdr != NEXTHDR_DEST
        || load_into(&ctx, IP_OFF + IPV6_HLEN, &mut s.opt).is_err()
        || s.opt.hdr_len != DSR_OPT6_HDR_LEN
        || s.opt.opt_type != DSR_OPT6_TYPE
        || s.opt.opt_len != DSR_OPT6_LEN
    {
        return Ok(verdict::PASS);
    }
    let Some((l4_proto, l4_off)) =
        parse::ipv6_upper(&ctx, s.opt.next_hdr, IP_OFF + IPV6_HLEN + DSR_OPT6_SIZE)
    else {
        return ignored();
    };
    if l4_proto != proto::TCP && l4_proto != proto::UDP {
        return ignored();
    }
    if load_into(&ctx, l4_off, &mut s.ports).is_err() {
        return ignored();
    }
    let (sport, dport) = (s.ports[0], s.ports[1]);
    if !dsr_on {
        return ignored();
    }
    let ifindex = parse::ifindex(&ctx);
    let Some(rev_nat_id) = frontend(s, l4_proto, ifindex) else {
        return ignored();
    };
    if !local_member(s, rev_nat_id, l4_proto, dport) {
        return ignored();
    }

    let tcp_flags = if l4_proto == proto::TCP {
        ctx.load::<u8>(l4_off + 13).unwrap_or(0) & (parse::TCP_FIN | TCP_SYN | parse::TCP_RST)
    } else {
        0
    };
    let starts = l4_proto != proto::TCP || tcp_flags & TCP_SYN != 0;
    let now = select::now_seconds();
    s.key = Ct6Key {
        saddr: s.hdr.daddr,
        daddr: s.hdr.saddr,
        sport: dport,
        dport: sport,
        proto: l4_proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    s.val = Ct6Value {
        nat_saddr: s.opt.addr,
        nat_daddr: s.hdr.saddr,
        nat_sport: s.opt.port,
        nat_dport: sport,
        backend_id: 0,
        rev_nat_id,
        flags: ct_flags::DSR | ct_flags::LOCAL,
        tcp_flags,
        last_seen: now,
    };
    match ct::lookup(&s.key) {
        None if !starts => return ignored(),
        None => {
            if CT_V6.insert(&s.key, &s.val, BPF_NOEXIST as u64).is_err() {
                return Err(DropReason::DsrClash);
            }
        }
        Some(e) => {
            // SAFETY: a live map value, read in place.
            let old = unsafe { &*e };
            let dsr = old.flags & ct_flags::DSR != 0;
            let same = dsr && old.nat_saddr == s.opt.addr && old.nat_sport == s.opt.port;
            if same && tcp_flags & TCP_SYN == 0 {
                ct::touch(e, now, tcp_flags);
            } else if starts && (same || (dsr && ct::reply_flow_over(&s.key, old, now))) {
                if CT_V6.insert(&s.key, &s.val, BPF_EXIST as u64).is_err() {
                    return Err(DropReason::DsrFailed);
                }
            } else {
                return Err(DropReason::DsrClash);
            }
        }
    }
    match strip_option(&ctx, s) {
        Ok(()) => count(Counter::NsDsrReceived),
        // Left as it was: delivered with the header, whose option Linux
        // skips (its type's high bits are 00).
        Err(Insert::Unchanged) => count(Counter::NsDsrFailed),
        Err(Insert::Broken) => return Err(DropReason::DsrFailed),
    }
    Ok(verdict::OK)
}

#[inline(always)]
fn ignored() -> Outcome {
    count(Counter::NsDsrIgnored);
    Ok(verdict::PASS)
}

/// The rev-NAT id (on this node) of the frontend the header names, when it
/// is one this cluster serves (dsr.rs's `frontend`).
#[inline(always)]
fn frontend(s: &mut Scratch, l4_proto: u8, ifindex: u32) -> Option<u16> {
    s.svc = Svc6Key {
        addr: s.opt.addr,
        port: s.opt.port,
        slot: 0,
        proto: l4_proto,
        scope: scope::EXTERNAL,
        _pad: [0; 2],
    };
    if let Some(svc) = SERVICES_V6.get_ptr(&s.svc) {
        // SAFETY: a live map value; two fields read.
        let (flags, rev_nat_id) = unsafe { ((*svc).flags, (*svc).rev_nat_id) };
        if flags & (svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER) != 0 {
            return Some(rev_nat_id);
        }
    }
    NODES_V6.get_ptr(&s.opt.addr)?;
    // SAFETY: a live map value, copied.
    s.svc.addr = unsafe { *NODE_ADDR_V6.get_ptr(&ifindex)? };
    let svc = SERVICES_V6.get_ptr(&s.svc)?;
    let (flags, rev_nat_id) = unsafe { ((*svc).flags, (*svc).rev_nat_id) };
    (flags & svc_flags::NODE_PORT != 0).then_some(rev_nat_id)
}

/// The packet (`s.hdr`, destination port `dport`) is addressed to a backend
/// of the frontend `rev_nat_id` that runs on this node (`MEMBERS_V6`, then
/// the backend's own entry: still that address, still local).
#[inline(always)]
fn local_member(s: &mut Scratch, rev_nat_id: u16, l4_proto: u8, dport: u16) -> bool {
    s.member = Member6Key {
        rev_nat_id,
        proto: l4_proto,
        _pad: 0,
        addr: s.hdr.daddr,
        port: dport,
        _pad2: 0,
    };
    let Some(id) = MEMBERS_V6.get_ptr(&s.member).map(|p| unsafe { *p }) else {
        return false;
    };
    let Some(b) = BACKENDS_V6.get_ptr(&id) else {
        return false;
    };
    // SAFETY: a live map value, read in place.
    let b = unsafe { &*b };
    b.addr == s.hdr.daddr && b.port == dport && b.flags & backend_flags::LOCAL != 0
}

/// Removes the header `s.opt` (right after the fixed header `s.hdr`) and
/// fixes the fixed header's next header and payload length.
#[inline(always)]
fn strip_option(ctx: &TcContext, s: &mut Scratch) -> Result<(), Insert> {
    let payload_len = u16::from_be(s.hdr.payload_len)
        .checked_sub(DSR_OPT6_SIZE as u16)
        .ok_or(Insert::Unchanged)?;
    ctx.adjust_room(
        -(DSR_OPT6_SIZE as i32),
        BPF_ADJ_ROOM_NET,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET as u64,
    )
    .map_err(|_| Insert::Unchanged)?;
    s.out.hdr = s.hdr;
    s.out.hdr.next_hdr = s.opt.next_hdr;
    s.out.hdr.payload_len = payload_len.to_be();
    ctx.store(IP_OFF, &s.out.hdr, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| Insert::Broken)
}
