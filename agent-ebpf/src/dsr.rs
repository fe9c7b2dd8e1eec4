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
//!   flow; B refreshes its entry from it, but only a SYN makes one). The
//!   SYN is what B needs to create its entry; the pod's replies keep that
//!   entry alive from then on (egress refreshes it), and the client's later
//!   segments need no state on B.
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
//! What B trusts. An IP option cannot say who wrote it: B sees the client's
//! address as the source, so anyone who can send packets to a pod address
//! can forge the option. B therefore honours an option only when
//! - DSR is on here (`--lb-mode dsr`; with SNAT, the default, every option
//!   passes untouched, as Cilium processes them only with DSR enabled);
//! - it names a frontend this cluster serves: a LoadBalancer IP or an
//!   externalIP (every node has the same), or a NodePort on the address of
//!   a cluster node (`NODES_V4`, from the Node objects);
//! - the packet is addressed to a backend of that frontend that runs on
//!   this node (`MEMBERS_V4`, then the backend's LOCAL flag);
//! - for TCP, it makes state only from a SYN;
//! - and the flow's REPLY entry is free, its own, or a finished DSR flow's:
//!   an entry that DSR did not make, or a live DSR flow of another
//!   frontend, is never replaced (`NsDsrClashDrop`, the packet dropped).
//!
//! So a forger can make a pod answer from a frontend that really serves
//! it, to whatever address it put as the source: what sending to the
//! frontend does anyway. What remains: a forged SYN naming such a frontend,
//! on the 5-tuple of a connection straight to the pod (which no conntrack
//! entry records), rewrites that connection's replies. An encapsulation
//! whose outer source is a node (Cilium's IPIP/Geneve DSR) would let B
//! check the sender against `NODES_V4`, but only where the fabric drops
//! spoofed node addresses, at 20+ bytes and an MTU cut on every packet;
//! see the README. Anything not honoured passes untouched and is counted
//! (`NsDsrIgnored`). Only the first option is looked at: A always puts its
//! own there.
//!
//! Stack: the entry points are functions of their own (BPF-to-BPF calls,
//! off the other paths), and the verifier counts their stack on top of the
//! calling program's, within 512 bytes in all. So they take only the skb
//! and a conntrack value, parse again what they need, and keep their large
//! temporaries (FIB parameters, headers, keys) in a per-CPU scratch map.

use agent_common::{
    Ct4Key, Ct4Value, DSR_OPT_LEN, DSR_OPT_TYPE, DsrOpt4, Member4Key, Svc4Key, backend_flags,
    ct_dir, ct_flags, proto, scope, stats::Counter, svc_flags,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_EXIST, BPF_F_ADJ_ROOM_NO_CSUM_RESET, BPF_F_MARK_MANGLED_0,
        BPF_F_RECOMPUTE_CSUM, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_NOEXIST,
        bpf_adj_room_mode::BPF_ADJ_ROOM_NET, bpf_fib_lookup,
    },
    helpers::generated as h,
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};

use crate::{
    csum, ct,
    drop::{DropReason, Outcome, Raw},
    fib,
    maps::{CT_V4, MEMBERS_V4, NODE_ADDR_V4, NODES_V4, SERVICES_V4, count},
    parse::{self, IP_OFF, IPV4_MIN_HLEN, Ipv4Hdr, L4, TCP_SYN},
    select, verdict,
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
struct Scratch {
    fib: bpf_fib_lookup,
    /// The fixed header as it is in the packet.
    hdr: Ipv4Hdr,
    /// What is written back: the new fixed header (and the option).
    out: HdrWithOpt,
    /// The option as it arrived (B).
    opt: DsrOpt4,
    svc: Svc4Key,
    member: Member4Key,
    key: Ct4Key,
    val: Ct4Value,
}

/// Per-CPU scratch space of the DSR paths. Not pinned and not in
/// `agent_common::maps`: it holds no state, each load gets its own.
#[map(name = "ferry_dsr_scr")]
static DSR_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

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
pub fn forward(skb: *mut __sk_buff, v: *const Ct4Value, first: bool) -> Raw {
    Raw::of(forward_body(skb, v, first))
}

#[inline(always)]
fn forward_body(skb: *mut __sk_buff, v: *const Ct4Value, first: bool) -> Outcome {
    let (Some(ctx), Some(s)) = (context(skb), scratch()) else {
        return Err(DropReason::Internal);
    };
    // SAFETY: the flow's conntrack value (a map value or the caller's copy).
    let (backend, backend_port) = unsafe { ((*v).nat_daddr, (*v).nat_dport) };
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return Err(DropReason::Malformed);
    }
    let l4_off = IP_OFF + s.hdr.header_len();
    let Ok(ports) = ctx.load::<[u16; 2]>(l4_off) else {
        return Err(DropReason::Malformed);
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
        return Err(e);
    }
    if let Err(e) = csum::set_port(&ctx, &l4, true, frontend_port, backend_port) {
        return Err(e);
    }
    // Re-read: DNAT rewrote the destination and the checksum.
    if load_into(&ctx, IP_OFF, &mut s.hdr).is_err() {
        return Err(DropReason::RewriteFailed);
    }
    if let Some(rc) = route {
        match insert_option(&ctx, s, frontend, frontend_port) {
            Ok(()) => return fib::send(&ctx, &s.out.hdr, rc, &s.fib),
            Err(Insert::Unchanged) => {
                // The helper refused (memory, a UDP GSO packet): as if it
                // did not fit.
                count(Counter::NsDsrFallback);
            }
            Err(Insert::Broken) => return Err(DropReason::DsrFailed),
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

/// A TCP/UDP packet arriving on a device for no frontend of ours, with IP
/// options. When it carries the DSR option and the option is honoured (see
/// the module comment), the flow's REPLY entry is made or refreshed and the
/// option removed; a flow that clashes with a live entry is dropped. Any
/// other packet passes untouched (`NsDsrIgnored` when it carried the option).
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
        || s.hdr.header_len() < IPV4_MIN_HLEN + OPT_LEN
        || load_into(&ctx, IP_OFF + IPV4_MIN_HLEN, &mut s.opt).is_err()
        || s.opt.ty != DSR_OPT_TYPE
        || s.opt.len != DSR_OPT_LEN
    {
        return Ok(verdict::PASS);
    }
    let l4_off = IP_OFF + s.hdr.header_len();
    let Ok(ports) = ctx.load::<[u16; 2]>(l4_off) else {
        return ignored();
    };
    if !dsr_on {
        return ignored();
    }
    let ifindex = parse::ifindex(&ctx);
    let node_addr = NODE_ADDR_V4.get_ptr(&ifindex).map(|p| unsafe { *p });
    let Some(rev_nat_id) = frontend(s, node_addr) else {
        return ignored();
    };
    if !local_member(s, rev_nat_id, ports[1]) {
        return ignored();
    }

    let tcp_flags = if s.hdr.proto == proto::TCP {
        ctx.load::<u8>(l4_off + 13).unwrap_or(0) & (parse::TCP_FIN | TCP_SYN | parse::TCP_RST)
    } else {
        0
    };
    // Only a SYN starts TCP state; UDP has no handshake: any datagram may.
    let starts = s.hdr.proto != proto::TCP || tcp_flags & TCP_SYN != 0;
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
    match ct::lookup(&s.key) {
        None if !starts => return ignored(),
        None => {
            // Never over another flow's entry, even one made meanwhile.
            if CT_V4.insert(&s.key, &s.val, BPF_NOEXIST as u64).is_err() {
                return Err(DropReason::DsrClash);
            }
        }
        Some(e) => {
            // SAFETY: a live map value, copied out.
            let old = unsafe { *e };
            let dsr = old.flags & ct_flags::DSR != 0;
            let same = dsr && old.nat_saddr == s.opt.addr && old.nat_sport == s.opt.port;
            if same && tcp_flags & TCP_SYN == 0 {
                // The same flow again (a UDP datagram, a segment that
                // carried the option): a refresh.
                ct::touch(e, now, tcp_flags);
            } else if starts && (same || (dsr && ct::reply_flow_over(&s.key, &old, now))) {
                // A SYN of this flow starts its TCP flags afresh; a finished
                // DSR flow of another frontend makes room.
                if CT_V4.insert(&s.key, &s.val, BPF_EXIST as u64).is_err() {
                    return Err(DropReason::DsrFailed);
                }
            } else {
                // A flow this node translates otherwise, or a live DSR flow
                // of another frontend: it keeps its entry.
                return Err(DropReason::DsrClash);
            }
        }
    }
    match strip_option(&ctx, s) {
        Ok(()) => count(Counter::NsDsrReceived),
        // The helper refused (memory, a UDP GSO packet) and left the packet
        // as it was: delivered with the option, which Linux ignores.
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

/// The rev-NAT id (on this node) of the frontend the option `s.opt` names,
/// when it is one this cluster serves: a LoadBalancer IP or externalIP
/// (every node has the same), or a NodePort on a cluster node's address
/// (`NODES_V4`), which this node serves on its own address on the device.
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
        if flags & (svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER) != 0 {
            return Some(rev_nat_id);
        }
    }
    NODES_V4.get_ptr(&s.opt.addr)?;
    s.svc.addr = node_addr?;
    let svc = SERVICES_V4.get_ptr(&s.svc)?;
    let (flags, rev_nat_id) = unsafe { ((*svc).flags, (*svc).rev_nat_id) };
    (flags & svc_flags::NODE_PORT != 0).then_some(rev_nat_id)
}

/// The packet (`s.hdr`, destination port `dport`) is addressed to a backend
/// of the frontend `rev_nat_id` that runs on this node (`MEMBERS_V4`, then
/// the backend's own entry: still that address, still local).
#[inline(always)]
fn local_member(s: &mut Scratch, rev_nat_id: u16, dport: u16) -> bool {
    s.member = Member4Key {
        rev_nat_id,
        proto: s.hdr.proto,
        _pad: 0,
        addr: s.hdr.daddr,
        port: dport,
        _pad2: 0,
    };
    let Some(id) = MEMBERS_V4.get_ptr(&s.member).map(|p| unsafe { *p }) else {
        return false;
    };
    matches!(select::lookup_backend(id), Some(b)
        if b.addr == s.hdr.daddr && b.port == dport && b.flags & backend_flags::LOCAL != 0)
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
