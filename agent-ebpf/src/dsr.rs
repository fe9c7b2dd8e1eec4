//! Direct server return (`--lb-mode dsr`: `node_flags::DSR`) for flows to a
//! backend on another node (externalTrafficPolicy Cluster), as Cilium does
//! it for IPv4: the frontend travels in an IP option.
//!
//! Node A, the one the client reached ([`forward`]): the packet is DNATed
//! to the backend and keeps the client's source; a [`DsrOpt4`] option naming
//! the frontend the client called is inserted right after the fixed IPv4
//! header; the packet is routed through the FIB (fib.rs). A keeps a FORWARD
//! entry only (flag DSR): the replies never come back through it.
//!
//! Node B, the backend's ([`receive`]): a packet carrying the option for a
//! destination on this node creates or refreshes the flow's REPLY entry
//! (backend -> client, to leave from the frontend), and the option is
//! removed before the pod sees the packet (Linux ignores unknown options,
//! but the pod has no use for it, and an ICMP error the pod sends then
//! quotes exactly what the client sent, once translated). The pod's replies
//! take the ordinary egress path (`nodeport::egress`) straight to the
//! client, and ICMP errors it sends about the flow are translated from the
//! same entry, as for a local backend.
//!
//! Which packets carry the option:
//! - UDP: every datagram. There is no handshake: any datagram may be the
//!   first B sees, and each refreshes B's entry.
//! - TCP: SYNs, and the packet that creates the flow on A (after A lost a
//!   flow, B may have lost it too). The SYN is what B needs to create its
//!   entry; the pod's replies keep that entry alive from then on (egress
//!   refreshes it), and the client's later segments need no state on B.
//!   Data segments are sized to the path MTU by the client's MSS, so 8 more
//!   bytes would not fit them; and established flows cost nothing extra on
//!   either node. The price: a flow whose entry B lost (LRU eviction)
//!   mid-connection loses the translation of its replies, and the client
//!   resets it.
//!
//! When the option does not fit (the packet with it would exceed the MTU
//! of the route to the backend, as `bpf_fib_lookup` checks it, or the IP
//! header has no room for 8 more bytes), counted `NsDsrFallback`:
//! - a new flow whose first packet is a UDP datagram or a TCP SYN falls
//!   back to SNAT for its whole life (nodeport.rs), which works whatever
//!   the later packets' sizes;
//! - any other packet goes without the option, DNATed only: B either knows
//!   the flow already (its earlier datagrams or its SYN carried the option)
//!   or could not have answered it anyway.
//!
//! B honours an option only when it names a frontend this node exposes too
//! (every node has the same LoadBalancer IPs and externalIPs; a NodePort
//! names node A, so B checks the port against its own address on the
//! device), which keeps forged options from making a pod's replies come
//! from arbitrary addresses; and only for a destination on this node: the
//! node's own address on the device (hostNetwork backends), or an address
//! the FIB reaches directly (no gateway) through another device (the pods'
//! bridge or veths). Anything else, including options B has no use for,
//! passes untouched. Only the first option is looked at: A always puts its
//! own there. B honours options whatever its own mode, so that the nodes of
//! a cluster need not switch modes at the same instant.
//!
//! Stack: the entry points are functions of their own (BPF-to-BPF calls,
//! off the other paths), and the verifier counts their stack on top of the
//! calling program's, within 512 bytes in all. So they take only the skb
//! and a conntrack value, parse again what they need, and keep their large
//! temporaries (FIB parameters, headers, keys) in a per-CPU scratch map.

use agent_common::{
    Ct4Key, Ct4Value, DSR_OPT_LEN, DSR_OPT_TYPE, DsrOpt4, Svc4Key, ct_dir, ct_flags, proto, scope,
    stats::Counter, svc_flags,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_F_ADJ_ROOM_NO_CSUM_RESET, BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM,
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_fib_lookup,
    },
    helpers::generated as h,
    programs::TcContext,
};

use crate::{
    csum, ct, fib,
    maps::{CT_V4, DSR_SCRATCH, NODE_ADDR_V4, SERVICES_V4, count},
    nodeport::EXPOSED,
    parse::{self, IP_OFF, IPV4_MIN_HLEN, Ipv4Hdr, L4, TCP_SYN},
    select,
    tc::verdict,
};

const OPT_LEN: usize = DSR_OPT_LEN as usize;
/// IHL is 4 bits of 32-bit words.
const IPV4_MAX_HLEN: usize = 60;

/// The fixed header followed by the option, as written after inserting it.
#[repr(C)]
pub struct HdrWithOpt {
    hdr: Ipv4Hdr,
    opt: DsrOpt4,
}

/// The DSR paths' temporaries (one per CPU; a TC program runs to its end
/// on one CPU, and its redirects happen after it returned).
#[repr(C)]
pub struct Scratch {
    fib: bpf_fib_lookup,
    /// The fixed header as it is in the packet.
    hdr: Ipv4Hdr,
    /// What is written back: the new fixed header (and the option).
    out: HdrWithOpt,
    /// The option as it arrived (B).
    opt: DsrOpt4,
    svc: Svc4Key,
    key: Ct4Key,
    val: Ct4Value,
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's slot, used by this program run alone.
    DSR_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The raw context a DSR entry point is called with.
#[inline(always)]
pub fn skb(ctx: &TcContext) -> *mut __sk_buff {
    ctx.as_ptr().cast()
}

#[inline(always)]
fn context(skb: *mut __sk_buff) -> Option<TcContext> {
    core::ptr::NonNull::new(skb).map(TcContext::new)
}

/// Loads `size_of::<T>()` packet bytes at `off` into `dst` (in the scratch
/// map, where `ctx.load` would use the stack).
#[inline(always)]
fn load_into<T>(ctx: &TcContext, off: usize, dst: &mut T) -> Result<(), ()> {
    let rc = unsafe {
        h::bpf_skb_load_bytes(
            ctx.as_ptr(),
            off as u32,
            (dst as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// The first packet of a new flow to a remote backend at `backend`: does
/// the option fit it (the header's room, the route's MTU)?
#[inline(never)]
pub fn option_fits(skb: *mut __sk_buff, backend: u32) -> bool {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return false;
    };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return false;
    }
    s.hdr.daddr = backend;
    route_with_option(&ctx, s).is_some()
}

/// Looks up the route of the packet whose (translated) header is `s.hdr`,
/// grown by the option, into `s.fib`; its return code, or None when the
/// option does not fit. (A FIB without an answer is no reason: the stack
/// will forward the packet.)
#[inline(always)]
fn route_with_option(ctx: &TcContext, s: &mut Scratch) -> Option<u32> {
    if s.hdr.header_len() + OPT_LEN > IPV4_MAX_HLEN {
        return None;
    }
    let tot_len = u16::from_be(s.hdr.tot_len).saturating_add(OPT_LEN as u16);
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    s.fib = unsafe { core::mem::zeroed() };
    let rc = fib::lookup(ctx, &s.hdr, tot_len, &mut s.fib);
    (rc != BPF_FIB_LKUP_RET_FRAG_NEEDED).then_some(rc)
}

/// Translates a packet of a DSR flow on A (DNAT to the backend `v` names;
/// the source stays the client's) and forwards it through the FIB, with the
/// option naming the frontend the packet was for when it should carry one
/// (see the module comment) and it fits. `first`: the packet creates the
/// flow and `option_fits` said yes; it carries the option.
#[inline(never)]
pub fn forward(skb: *mut __sk_buff, v: *const Ct4Value, first: bool) -> i32 {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return verdict::SHOT;
    };
    // SAFETY: the flow's conntrack value (a map value or the caller's copy).
    let (backend, backend_port) = unsafe { ((*v).nat_daddr, (*v).nat_dport) };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return verdict::SHOT;
    }
    let l4_off = IP_OFF + s.hdr.header_len();
    let Ok(ports) = ctx.load::<[u16; 2]>(l4_off) else {
        return verdict::SHOT;
    };
    let (frontend, frontend_port) = (s.hdr.daddr, ports[1]);
    let l4 = if s.hdr.proto == proto::UDP {
        L4 {
            off: l4_off,
            csum_off: l4_off + 6,
            csum_flags: BPF_F_MARK_MANGLED_0 as u64,
        }
    } else {
        L4 {
            off: l4_off,
            csum_off: l4_off + 16,
            csum_flags: 0,
        }
    };

    let wants = first
        || s.hdr.proto == proto::UDP
        || ctx.load::<u8>(l4_off + 13).unwrap_or(0) & TCP_SYN != 0;
    let mut route = None;
    if wants {
        s.hdr.daddr = backend;
        route = route_with_option(&ctx, s);
        if route.is_none() {
            count(Counter::NsDsrFallback);
        }
    }

    if let Err(e) = csum::set_addr(&ctx, &l4, true, frontend, backend) {
        return e;
    }
    if let Err(e) = csum::set_port(&ctx, &l4, true, frontend_port, backend_port) {
        return e;
    }
    // Re-read: DNAT rewrote the destination and the checksum.
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return verdict::SHOT;
    }
    if let Some(rc) = route {
        match insert_option(&ctx, s, frontend, frontend_port) {
            Ok(()) => return fib::send(&ctx, &s.out.hdr, rc, &s.fib),
            Err(Insert::Unchanged) => {
                // The helper refused (memory, a UDP GSO packet): as if it
                // did not fit.
                count(Counter::NsDsrFallback);
            }
            Err(Insert::Broken) => {
                count(Counter::NsDsrFailed);
                return verdict::SHOT;
            }
        }
    }
    // Without the option: the route of the packet as it is.
    // SAFETY: as above.
    s.fib = unsafe { core::mem::zeroed() };
    let rc = fib::lookup(&ctx, &s.hdr, 0, &mut s.fib);
    fib::send(&ctx, &s.hdr, rc, &s.fib)
}

/// How adding or removing the option failed.
enum Insert {
    /// Nothing was changed: the packet can go on as it is.
    Unchanged,
    /// The header was resized but not rewritten: the packet must be dropped.
    Broken,
}

/// Inserts the option naming the frontend (`addr`, `port`, raw) after the
/// fixed header `s.hdr`, and fixes IHL, the total length and the header
/// checksum; the new fixed header is left in `s.out.hdr`.
#[inline(always)]
fn insert_option(ctx: &TcContext, s: &mut Scratch, addr: u32, port: u16) -> Result<(), Insert> {
    // The room goes right after the fixed 20 bytes, whatever IHL says (the
    // helper's BPF_ADJ_ROOM_NET offset), zeroed: options already there
    // follow ours. NO_CSUM_RESET: the L4 checksum does not cover IP
    // options, so a CHECKSUM_UNNECESSARY verdict stays true.
    ctx.adjust_room(
        OPT_LEN as i32,
        BPF_ADJ_ROOM_NET,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET as u64,
    )
    .map_err(|_| Insert::Unchanged)?;
    s.out.opt = DsrOpt4 {
        ty: DSR_OPT_TYPE,
        len: DSR_OPT_LEN,
        port,
        addr,
    };
    s.out.hdr = s.hdr;
    s.out.hdr.ver_ihl = s.hdr.ver_ihl.wrapping_add((OPT_LEN / 4) as u8);
    s.out.hdr.tot_len = u16::from_be(s.hdr.tot_len)
        .wrapping_add(OPT_LEN as u16)
        .to_be();
    // Incrementally (RFC 1624), so that a header that arrived damaged
    // stays detectably damaged.
    let mut d = header_diff(&s.hdr, &s.out.hdr);
    d = csum::diff4(d, 0, opt_first_word(&s.out.opt));
    d = csum::diff4(d, 0, addr);
    s.out.hdr.check = csum::apply(s.hdr.check, d);
    // RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE skb->csum right.
    ctx.store(IP_OFF, &s.out, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| Insert::Broken)
}

/// A TCP/UDP packet arriving on a device for no frontend of ours: when it
/// carries the DSR option for a destination on this node, the flow's REPLY
/// entry is made or refreshed and the option removed. Anything else passes
/// untouched.
#[inline(never)]
pub fn receive(skb: *mut __sk_buff) -> i32 {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return verdict::PASS;
    };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err()
        || s.hdr.header_len() < IPV4_MIN_HLEN + OPT_LEN
        || load_into(&ctx, IP_OFF + IPV4_MIN_HLEN, &mut s.opt).is_err()
        || s.opt.ty != DSR_OPT_TYPE
        || s.opt.len != DSR_OPT_LEN
    {
        return verdict::PASS;
    }
    let l4_off = IP_OFF + s.hdr.header_len();
    let Ok(ports) = ctx.load::<[u16; 2]>(l4_off) else {
        return verdict::PASS;
    };
    let ifindex = parse::ifindex(&ctx);
    let node_addr = NODE_ADDR_V4.get_ptr(&ifindex).map(|p| unsafe { *p });
    let Some(rev_nat_id) = frontend(s, node_addr) else {
        return verdict::PASS;
    };
    if node_addr != Some(s.hdr.daddr) && !routed_here(&ctx, s, ifindex) {
        return verdict::PASS;
    }

    let tcp_flags = if s.hdr.proto == proto::TCP {
        ctx.load::<u8>(l4_off + 13).unwrap_or(0) & (parse::TCP_FIN | TCP_SYN | parse::TCP_RST)
    } else {
        0
    };
    let now = select::now_seconds();
    s.key = Ct4Key {
        saddr: s.hdr.daddr,
        daddr: s.hdr.saddr,
        sport: ports[1],
        dport: ports[0],
        proto: s.hdr.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    match ct::lookup(&s.key) {
        // The same flow again (a UDP datagram): a refresh. A SYN starts the
        // flow's TCP flags afresh; an entry of another frontend, or a local
        // flow's, is replaced (the pod cannot tell such flows apart).
        Some(e)
            if tcp_flags & TCP_SYN == 0
                && unsafe {
                    (*e).nat_saddr == s.opt.addr
                        && (*e).nat_sport == s.opt.port
                        && (*e).flags & ct_flags::DSR != 0
                } =>
        {
            ct::touch(e, now, tcp_flags)
        }
        _ => {
            s.val = Ct4Value {
                nat_saddr: s.opt.addr,
                nat_daddr: s.hdr.saddr,
                nat_sport: s.opt.port,
                nat_dport: ports[0],
                // The backend's id is A's business: B only translates replies.
                backend_id: 0,
                rev_nat_id,
                flags: ct_flags::DSR | ct_flags::LOCAL,
                tcp_flags,
                last_seen: now,
            };
            if CT_V4.insert(&s.key, &s.val, 0).is_err() {
                count(Counter::NsDsrFailed);
                return verdict::SHOT;
            }
        }
    }
    match strip_option(&ctx, s) {
        Ok(()) => count(Counter::NsDsrReceived),
        // The helper refused (memory, a UDP GSO packet) and left the packet
        // as it was: delivered with the option, which Linux ignores.
        Err(Insert::Unchanged) => count(Counter::NsDsrFailed),
        Err(Insert::Broken) => {
            count(Counter::NsDsrFailed);
            return verdict::SHOT;
        }
    }
    verdict::OK
}

/// The rev-NAT id of the frontend the option `s.opt` names, when this node
/// exposes it: the frontend itself, or for a NodePort (named by A's
/// address) the same port on this node's address on the device.
#[inline(always)]
fn frontend(s: &mut Scratch, node_addr: Option<u32>) -> Option<u16> {
    s.svc = Svc4Key {
        addr: s.opt.addr,
        port: s.opt.port,
        slot: 0,
        proto: s.hdr.proto,
        scope: scope::EXTERNAL,
        _pad: [0; 2],
    };
    if let Some(svc) = SERVICES_V4.get_ptr(&s.svc) {
        // SAFETY: a live map value; two fields read.
        let (flags, rev_nat_id) = unsafe { ((*svc).flags, (*svc).rev_nat_id) };
        if flags & EXPOSED != 0 {
            return Some(rev_nat_id);
        }
    }
    s.svc.addr = node_addr?;
    let svc = SERVICES_V4.get_ptr(&s.svc)?;
    let (flags, rev_nat_id) = unsafe { ((*svc).flags, (*svc).rev_nat_id) };
    (flags & svc_flags::NODE_PORT != 0).then_some(rev_nat_id)
}

/// The FIB reaches the packet's destination directly (no gateway) through
/// a device other than the one it arrived on: a pod of this node.
#[inline(always)]
fn routed_here(ctx: &TcContext, s: &mut Scratch, ifindex: u32) -> bool {
    // SAFETY: as in `route_with_option`.
    s.fib = unsafe { core::mem::zeroed() };
    let rc = fib::lookup(ctx, &s.hdr, 0, &mut s.fib);
    // FRAG_NEEDED with tot_len 0 comes after a successful lookup (the skb
    // as it is now, with the option, checked against the device's MTU).
    if !matches!(
        rc,
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED
    ) {
        return false;
    }
    // SAFETY: a gateway replaces the destination (as IPv4 unless the family
    // says otherwise: an IPv6 next hop).
    let next_hop = unsafe { s.fib.__bindgen_anon_4.ipv4_dst };
    s.fib.family == fib::AF_INET && next_hop == s.hdr.daddr && s.fib.ifindex != ifindex
}

/// Removes the option `s.opt` (the first one, after the fixed header
/// `s.hdr`) and fixes IHL, the total length and the header checksum.
#[inline(always)]
fn strip_option(ctx: &TcContext, s: &mut Scratch) -> Result<(), Insert> {
    // The 8 bytes right after the fixed header go (BPF_ADJ_ROOM_NET).
    ctx.adjust_room(
        -(OPT_LEN as i32),
        BPF_ADJ_ROOM_NET,
        BPF_F_ADJ_ROOM_NO_CSUM_RESET as u64,
    )
    .map_err(|_| Insert::Unchanged)?;
    s.out.hdr = s.hdr;
    s.out.hdr.ver_ihl = s.hdr.ver_ihl.wrapping_sub((OPT_LEN / 4) as u8);
    s.out.hdr.tot_len = u16::from_be(s.hdr.tot_len)
        .wrapping_sub(OPT_LEN as u16)
        .to_be();
    let mut d = header_diff(&s.hdr, &s.out.hdr);
    d = csum::diff4(d, opt_first_word(&s.opt), 0);
    d = csum::diff4(d, s.opt.addr, 0);
    s.out.hdr.check = csum::apply(s.hdr.check, d);
    ctx.store(IP_OFF, &s.out.hdr, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| Insert::Broken)
}

/// The checksum difference of the fields inserting or removing an option
/// changes in the fixed header: IHL (with the version and ToS) and the
/// total length.
#[inline(always)]
fn header_diff(old: &Ipv4Hdr, new: &Ipv4Hdr) -> u32 {
    let word0 = |h: &Ipv4Hdr| u16::from_ne_bytes([h.ver_ihl, h.tos]);
    csum::diff2(
        csum::diff2(0, word0(old), word0(new)),
        old.tot_len,
        new.tot_len,
    )
}

/// The option's first 32 bits (type, length, port) as they sit in the packet.
#[inline(always)]
fn opt_first_word(opt: &DsrOpt4) -> u32 {
    let port = opt.port.to_ne_bytes();
    u32::from_ne_bytes([opt.ty, opt.len, port[0], port[1]])
}
