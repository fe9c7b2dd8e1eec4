//! `ferry_xdp`: the fast path of north-south load balancing, on the node's
//! devices before any skb exists (`--acceleration native|generic`). The
//! entry point dispatches by EtherType: IPv4 here, IPv6 in xdp6.rs (a
//! function of its own, with the same semantics; what follows is said of
//! IPv4, xdp6.rs says where IPv6 differs).
//!
//! It handles what most of the traffic is: packets of tracked flows (a
//! client's, DNAT and SNAT as the flow has it; a remote backend's reply to
//! one of our SNAT ports) and new flows to exposed frontends (service
//! lookup, source ranges, backend choice and the two conntrack entries as
//! the TC program makes them, so that a flow started here continues under
//! TC and the other way round). Translated packets are rewritten in place
//! with their checksums computed here (no skb, no checksum helpers), their
//! TTL decremented, and sent with `bpf_fib_lookup` + `bpf_redirect` (the
//! FIB's answer kept per destination on each CPU for up to a second:
//! nexthop.rs), out of the ingress device too: not XDP_TX, because on veth
//! XDP_TX wakes the peer's NAPI only when the peer runs an XDP program (Linux's
//! `veth_xdp_flush` checks the peer's `xdp_prog`), so with a peer whose
//! NAPI comes from GRO the frames wait in its ring and are lost; a redirect
//! goes through `ndo_xdp_xmit`, which flushes whenever the peer has NAPI.
//!
//! Everything else is XDP_PASS, for `ferry_tc_in` (still attached) to
//! handle as without XDP: IP options (DSR), fragments, ICMP, DSR flows
//! and DSR mode's new flows to remote backends,
//! frontends without endpoints (TC answers them), packets for no frontend,
//! flows whose backend went away (TC forgets and chooses again), and
//! anything the FIB cannot send straight away (no neighbour, TTL expiring,
//! the MTU) or that leaves through a device other than the node's
//! north-south ones (a local backend behind a bridge: see `may_send_to`).
//! A route lookup is made before any state: a new flow that XDP
//! cannot send is left to TC whole.
//!
//! Drops (source range, no local endpoint, no backend, NAT failed, a
//! segment too short) count their `DropReason` as TC's do; drops and new
//! flows send `ferry monitor` their events as TC's do (program `xdp`).

use agent_common::{NextHop4, NodeConfig, ct_dir, ct_flags, proto, scope, stats::Counter};
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated as h,
    macros::xdp,
    programs::XdpContext,
};

use crate::{
    csum,
    ct::{self, CtValue},
    drop::{self, DropReason, Raw},
    event,
    family::V4,
    fib::AF_INET,
    maps::{NODE_ADDR_V4, NODE_CONFIG, count},
    nexthop::{self, Hop},
    nodeport::{self, Admission, Entries},
    ns::{CtVal, Ns, Room},
    parse::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IP_OFF, IPV4_MIN_HLEN, Ipv4, Ipv4Hdr, Tuple},
    select::{self, Frontend},
    xdp6,
};

pub(crate) const PASS: u32 = xdp_action::XDP_PASS;

/// A result of the paths: an XDP action, or why the packet is dropped.
pub(crate) type Action = Result<u32, DropReason>;

/// The frame's EtherType (host order; 0 for a frame too short to have one).
#[inline(always)]
fn ethertype(ctx: &XdpContext) -> u16 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return 0;
    }
    // SAFETY: bounds checked above.
    u16::from_be(unsafe { parse::packet_word::<u16>(data + 12) })
}

#[xdp]
pub fn ferry_xdp(ctx: XdpContext) -> u32 {
    let r = match ethertype(&ctx) {
        ETH_P_IP => ipv4(&ctx),
        // A function of its own (xdp6.rs): IPv4's frame stays as it is.
        ETH_P_IPV6 => xdp6::ipv6(&ctx),
        _ => Raw::of(Ok(PASS as i32)),
    };
    match r.get() {
        Ok(a) => a as u32,
        Err(reason) => {
            event::xdp_drop(&ctx, reason);
            drop::xdp_drop(reason)
        }
    }
}

/// Where a translated packet goes and what it becomes.
#[derive(Clone, Copy)]
struct Nat {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn nat_of(v: &CtVal<V4>) -> Nat {
    Nat {
        saddr: v.nat_saddr(),
        daddr: v.nat_daddr(),
        sport: v.nat_sport(),
        dport: v.nat_dport(),
    }
}

/// The bytes of a TCP header read (through the flags and the checksum
/// field) and rewritten; a UDP header's 8.
pub(crate) const TCP_READ: usize = 18;
pub(crate) const UDP_READ: usize = 8;

/// An IPv4 TCP/UDP packet (its EtherType checked by the entry point)
/// without options or fragmentation, its L4 header in the frame, parsed
/// into `ip`; false for anything else (passed).
#[inline(always)]
fn parse(ctx: &XdpContext, ip: &mut Ipv4) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    let p = data + IP_OFF + IPV4_MIN_HLEN;
    if p + UDP_READ > end {
        return false;
    }
    // The EtherType is IPv4's (the entry point's dispatch).
    ip.hdr = parse::read_hdr(data + IP_OFF);
    // Version 4 and no options (a DSR option, anything else: TC's).
    if ip.hdr.ver_ihl != 0x45 {
        return false;
    }
    // Any fragment (MF set or an offset): TC's.
    if u16::from_be(ip.hdr.frag_off) & 0x3fff != 0 {
        return false;
    }
    ip.l4_off = (IP_OFF + IPV4_MIN_HLEN) as u32;
    // SAFETY: UDP_READ bytes from `p` checked above, TCP_READ below.
    unsafe {
        ip.l4.ports = core::ptr::read_unaligned(p as *const [u16; 2]);
        match ip.hdr.proto {
            proto::TCP => {
                if p + TCP_READ > end {
                    // A truncated segment: TC's (it drops it if it is
                    // for a frontend).
                    return false;
                }
                ip.l4.tcp_flags =
                    *((p + 13) as *const u8) & (parse::TCP_FIN | parse::TCP_SYN | parse::TCP_RST);
            }
            proto::UDP => {
                ip.l4.udp_unchecked = core::ptr::read_unaligned((p + 6) as *const u16) == 0;
            }
            _ => return false,
        }
    }
    ip.l4.has_ports = true;
    ip.l4.csum_in_packet = true;
    true
}

/// Every path's result in one register (drop.rs's `Raw`): merged from the
/// paths as a `Result`, its unused half would be undefined, which the
/// verifier refuses to read (and the program's register allocation
/// decides whether it is).
#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Raw {
    let pass = Raw::of(Ok(PASS as i32));
    let mut slot = core::mem::MaybeUninit::uninit();
    let ip = Ipv4::empty_in(&mut slot);
    if !parse(ctx, ip) {
        return pass;
    }
    let ip: &Ipv4 = ip;
    let Some(t) = parse::tuple(ip) else {
        return pass;
    };
    let tcp_flags = parse::tcp_flags(ip);
    // Sent (not passed, not dropped).
    let sent = |r: Raw| r.get().is_ok_and(|a| a as u32 != PASS);

    // A client's packet of a tracked flow.
    let fwd_key: <V4 as Ns>::Ct = ct::key(&t, ct_dir::FORWARD);
    if let Some(entry) = ct::lookup(&fwd_key) {
        // SAFETY: a live map value, copied out.
        let v = unsafe { &*entry };
        if v.flags() & ct_flags::DSR != 0 || !nodeport::backend_still_there::<V4>(v) {
            return pass;
        }
        let now = nexthop::now();
        let r = send(ctx, ip, &nat_of(v), now);
        if sent(r) {
            ct::touch(entry, seconds(now), tcp_flags);
            count(Counter::NsTracked);
        }
        return r;
    }
    // A remote backend's reply to one of our SNAT ports.
    // The node's configuration in place (no 32-byte copy in this frame, which
    // the new flow's frame is added to); none yet (the agent starting): TC's.
    let Some(cfg) = NODE_CONFIG.get_ptr(0) else {
        return pass;
    };
    // SAFETY: a live map value, read only.
    let cfg = unsafe { &*cfg };
    if ct::snat_ports(cfg).contains(t.dport) {
        let rkey: <V4 as Ns>::Ct = ct::key(&t, ct_dir::REPLY);
        if let Some(entry) = ct::lookup(&rkey) {
            // SAFETY: as above.
            let v = unsafe { &*entry };
            let now = nexthop::now();
            let r = send(ctx, ip, &nat_of(v), now);
            if sent(r) {
                ct::touch(entry, seconds(now), tcp_flags);
                count(Counter::NsTracked);
            }
            return r;
        }
    }
    let r = new_flow(ctx, ip, &t, cfg);
    if sent(r) {
        // Made and sent (anything else passes to TC, which reports it).
        event::xdp_new_flow(ctx, &t, &fwd_key);
    }
    r
}

/// A packet no flow knows: a new flow when it is for an exposed frontend,
/// decided by `nodeport::admit` as TC's new flows are. A
/// function of its own: its keys, values and route lookup are not added to
/// the tracked paths' frame (the verifier's 512 bytes count a call chain).
#[inline(never)]
fn new_flow(ctx: &XdpContext, ip: &Ipv4, t: &Tuple, cfg: &NodeConfig) -> Raw {
    Raw::of(new_flow_body(ctx, ip, t, cfg).map(|a| a as i32))
}

#[inline(always)]
fn new_flow_body(ctx: &XdpContext, ip: &Ipv4, t: &Tuple, cfg: &NodeConfig) -> Action {
    let mut room = Room::<V4>::new();
    let Some(svc) = select::lookup_svc(room.svc.write(
        <V4 as crate::family::Family>::Key::frontend(t.daddr, t.dport, t.proto, scope::EXTERNAL),
    )) else {
        return Ok(PASS);
    };
    // SAFETY: written just above.
    let svc_key = unsafe { room.svc.assume_init_ref() };
    // As parsed: the L4 checksum is in the frame.
    let mut slot = core::mem::MaybeUninit::uninit();
    match nodeport::admit::<V4>(svc_key, &svc, t, cfg, true, &mut slot)? {
        // Not exposed, or no endpoint (the port unreachable is TC's to send).
        Admission::NotExposed | Admission::NoEndpoints => return Ok(PASS),
        Admission::Flow => {}
    }
    // SAFETY: admit wrote it (Admission::Flow).
    let flow = unsafe { slot.assume_init_ref() };
    if flow.dsr_candidate {
        // A DSR flow (or its fallback): TC's.
        return Ok(PASS);
    }
    let (backend_addr, backend_port, keep_client) = (flow.addr, flow.port, flow.keep_client);
    let node_addr = if keep_client {
        t.saddr
    } else {
        V4::node_addr(ingress_ifindex(ctx)).ok_or(DropReason::NatFailed)?
    };
    // Routed first: a flow XDP cannot send is made by TC, whole.
    let mut slot = core::mem::MaybeUninit::uninit();
    let hop = Hop::zeroed_in(&mut slot);
    if !route(ctx, ip, node_addr, backend_addr, nexthop::now(), hop) {
        return Ok(PASS);
    }
    let tcp_flags = parse::tcp_flags(ip);
    if t.proto == proto::TCP && tcp_flags & parse::TCP_SYN == 0 {
        count(Counter::NsCtLostFlow);
    }
    let (fwd, rev, fwd_key) = nodeport::flow_entries::<V4>(
        (&mut room.val, &mut room.rev, &mut room.key),
        t,
        (backend_addr, backend_port),
        flow.id,
        svc.rev_nat_id,
        flow.ct_flags(false),
        tcp_flags,
    );
    let snat = (!keep_client).then_some(node_addr);
    if let Entries::Lost =
        nodeport::insert_entries::<V4>(fwd_key, fwd, rev, &mut room.rkey, t, snat, cfg)?
    {
        // Another CPU made the flow first: TC follows it.
        return Ok(PASS);
    }
    nodeport::count_new_flow();
    let nat = nat_of(fwd);
    rewrite_and_send(ctx, ip, nat, hop)
}

/// `now` (nexthop::now, the coarse clock) in the seconds conntrack
/// entries are stamped with, as `select::now_seconds` reads them: the
/// tracked paths read the clock once for the next hop and the entry.
#[inline(always)]
pub(crate) fn seconds(now: u64) -> u32 {
    agent_common::clock::ns_to_seconds(now) as u32
}

#[inline(always)]
pub(crate) fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    ctx.ingress_ifindex() as u32
}

/// The next hop of the packet `ip` translated to `saddr` -> `daddr`, into
/// `hop`: true when XDP may send it there. This CPU's cached answer for
/// `daddr` when fresh (nexthop.rs), else the FIB's ([`resolve`]). A TTL
/// that would expire here is the stack's.
#[inline(always)]
fn route(ctx: &XdpContext, ip: &Ipv4, saddr: u32, daddr: u32, now: u64, hop: &mut Hop) -> bool {
    if ip.hdr.ttl <= 1 {
        return false;
    }
    let tot_len = u16::from_be(ip.hdr.tot_len);
    nexthop::cached::<NextHop4>(&daddr, ingress_ifindex(ctx), tot_len, now, hop)
        || resolve(ctx, ip, saddr, daddr, hop)
}

/// Looks up the route of the packet `ip` translated to `saddr` -> `daddr`:
/// true when the FIB names the next hop with its MACs, the packet fits its
/// MTU and XDP may send to the device ([`may_send_to`]); the answer is
/// then kept in the next-hop cache and written to `hop`. A function of its
/// own, its parameters in per-CPU scratch: the cached path does not set
/// them up, and no caller's frame holds them.
#[inline(never)]
fn resolve(ctx: &XdpContext, ip: &Ipv4, saddr: u32, daddr: u32, hop: &mut Hop) -> bool {
    let Some(p) = nexthop::params() else {
        return false;
    };
    let iif = ingress_ifindex(ctx);
    p.family = AF_INET;
    p.l4_protocol = ip.hdr.proto;
    p.__bindgen_anon_1.tot_len = u16::from_be(ip.hdr.tot_len);
    p.ifindex = iif;
    p.__bindgen_anon_2.tos = ip.hdr.tos;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the program's own context and a parameter struct of the size given.
    let rc = unsafe {
        h::bpf_fib_lookup(
            ctx.ctx.cast(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc as u32 != BPF_FIB_LKUP_RET_SUCCESS || !may_send_to(ctx, p.ifindex) {
        return false;
    }
    nexthop::remember::<NextHop4>(&daddr, iif, p, nexthop::now(), hop);
    true
}

/// A tracked packet: routed, then rewritten to `nat` and sent; PASS (the
/// packet untouched) when the FIB cannot send it.
#[inline(never)]
fn send(ctx: &XdpContext, ip: &Ipv4, nat: &Nat, now: u64) -> Raw {
    Raw::of(send_body(ctx, ip, *nat, now).map(|a| a as i32))
}

#[inline(always)]
fn send_body(ctx: &XdpContext, ip: &Ipv4, nat: Nat, now: u64) -> Action {
    let mut slot = core::mem::MaybeUninit::uninit();
    let hop = Hop::zeroed_in(&mut slot);
    if !route(ctx, ip, nat.saddr, nat.daddr, now, hop) {
        return Ok(PASS);
    }
    rewrite_and_send(ctx, ip, nat, hop)
}

/// Rewrites the packet to `nat` with both checksums (RFC 1624, the TTL's
/// decrement in the header's), sets the next hop's MACs, and redirects it
/// to the next hop's device (the ingress one included).
#[inline(always)]
fn rewrite_and_send(ctx: &XdpContext, ip: &Ipv4, nat: Nat, hop: &Hop) -> Action {
    let old = &ip.hdr;
    let [old_sport, old_dport] = ip.l4.ports;
    let addr_diff = csum::diff4(csum::diff4(0, old.saddr, nat.saddr), old.daddr, nat.daddr);
    let l4_diff = csum::diff2(
        csum::diff2(addr_diff, old_sport, nat.sport),
        old_dport,
        nat.dport,
    );
    // TTL and protocol form one 16-bit word of the header checksum.
    let ttl_diff = csum::diff2(
        0,
        u16::from_ne_bytes([old.ttl, old.proto]),
        u16::from_ne_bytes([old.ttl - 1, old.proto]),
    );
    let (data, end) = (ctx.data(), ctx.data_end());
    let l4p = data + IP_OFF + IPV4_MIN_HLEN;
    let csum_off = if old.proto == proto::TCP { 16 } else { 6 };
    // As parsed: a TCP header's TCP_READ bytes, a UDP header's UDP_READ.
    if l4p + UDP_READ > end || (old.proto == proto::TCP && l4p + TCP_READ > end) {
        return Err(DropReason::RewriteFailed);
    }
    // SAFETY: the Ethernet and IP headers and the L4 bytes written
    // checked above.
    unsafe {
        let hdr = (data + IP_OFF) as *mut Ipv4Hdr;
        (*hdr).saddr = nat.saddr;
        (*hdr).daddr = nat.daddr;
        (*hdr).ttl = old.ttl - 1;
        (*hdr).check = csum::apply(old.check, csum::add(addr_diff, ttl_diff));
        core::ptr::write_unaligned(l4p as *mut [u16; 2], [nat.sport, nat.dport]);
        let cp = (l4p + csum_off) as *mut u16;
        let check = core::ptr::read_unaligned(cp);
        // A UDP datagram without checksum (0) keeps none; a computed 0 is
        // sent as 0xffff (RFC 768).
        if !(old.proto == proto::UDP && check == 0) {
            let mut new = csum::apply(check, l4_diff);
            if old.proto == proto::UDP && new == 0 {
                new = 0xffff;
            }
            core::ptr::write_unaligned(cp, new);
        }
        set_macs(data, hop);
    }
    count(Counter::NsXdpForwarded);
    // Out of the ingress device too: a redirect, not XDP_TX (see the
    // module's doc: on veth, XDP_TX wakes the peer only if it runs XDP).
    // SAFETY: a plain helper call.
    Ok(unsafe { h::bpf_redirect(hop.oif, 0) } as u32)
}

/// Writes the next hop's MACs (destination, source) into the Ethernet
/// header at `data`.
///
/// # Safety
/// `data` is the frame's start, its first 12 bytes checked to be in the frame.
#[inline(always)]
pub(crate) unsafe fn set_macs(data: usize, hop: &Hop) {
    // Six 2-byte stores (the frame starts 2-aligned), volatile so that
    // they stay stores: as a 12-byte copy LLVM calls a byte-by-byte
    // memmove, 10 % of a tracked packet's cost.
    // SAFETY: the caller's bounds check.
    unsafe {
        let macs: [u16; 6] = core::mem::transmute(hop.macs);
        let eth = data as *mut u16;
        let mut i = 0;
        while i < 6 {
            eth.add(i).write_volatile(macs[i]);
            i += 1;
        }
    }
}

/// Whether XDP may send a packet out of device `ifindex` (the FIB's
/// egress): the ingress device or another of the node's
/// north-south devices (those with an address in `ferry_node_addr_v4`,
/// where the agent attaches this program too). A native redirect to a
/// device that cannot transmit XDP frames (a bridge, a pod's veth whose
/// peer has no NAPI) drops the packet, so anything else (local pods
/// behind a bridge, say) is the stack's: passed to TC before any state.
#[inline(always)]
fn may_send_to(ctx: &XdpContext, ifindex: u32) -> bool {
    ifindex == ingress_ifindex(ctx) || NODE_ADDR_V4.get_ptr(&ifindex).is_some()
}
