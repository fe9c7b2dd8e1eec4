//! `ferry_xdp`'s IPv6 fast path (xdp.rs dispatches here by EtherType): the
//! IPv4 path's semantics for IPv6 TCP/UDP packets whose next header is TCP
//! or UDP itself. A client's packet of a tracked flow (DNAT, and SNAT for
//! externalTrafficPolicy Cluster, as its FORWARD entry says), a remote
//! backend's reply to one of our SNAT ports, and a new flow to an exposed
//! frontend (`nodeport::admit::<V6>` and the two conntrack entries as TC's
//! IPv6 new flow makes them, so that either program continues a flow the
//! other started) are translated in place and redirected to the FIB's next
//! hop, the hop limit decremented.
//!
//! IPv6 has no header checksum: the L4 checksum, whose pseudo-header holds
//! both addresses, is updated here over the changed 128-bit addresses and
//! ports (RFC 1624). A UDP datagram without checksum (0, invalid in IPv6:
//! RFC 8200 8.1) is not parsed by TC either (`parse::ipv6`): passed.
//!
//! Everything else is XDP_PASS for `ferry_tc_in`: extension headers (the DSR
//! destination options header among them), fragments, ICMPv6, a hop limit
//! that would expire here, DSR flows and DSR mode's new remote flows,
//! frontends without endpoints, packets for no frontend, flows whose backend
//! went away, and whatever the FIB cannot send at once (no neighbour, a
//! packet larger than the route's MTU: IPv6 routers do not fragment, the
//! Packet Too Big is the stack's) or only to a device XDP may not send to.
//! The next hop comes from this CPU's IPv6 next-hop cache when fresh
//! (nexthop.rs, `ferry_nhop6_v1`, as IPv4's), else from `bpf_fib_lookup`
//! (AF_INET6).
//!
//! The stack: IPv6's packet, keys and values are kept as TC's IPv6 path
//! keeps them (ns.rs: the parsed packet and a new flow's [`Room`] in the
//! per-CPU scratch `ferry_ns6_scr`, the FIB's parameters in nexthop.rs's),
//! and its parts are functions of their own, each called from the entry
//! point: the IPv4 path's frame does not hold IPv6's, and a new flow's
//! frame (320 bytes) is not added to the tracked path's.

use agent_common::{Ip6, NextHop6, NodeConfig, ct_dir, ct_flags, proto, scope, stats::Counter};
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated as h,
    programs::XdpContext,
};

use crate::{
    csum,
    ct::{self, CtValue},
    drop::{DropReason, Raw},
    event,
    family::V6,
    fib::{AF_INET6, IPV6_FLOWINFO_MASK},
    maps::{NODE_ADDR_V4, NODE_ADDR_V6, NODE_CONFIG, count},
    nexthop::{self, Hop},
    nodeport::{self, Admission, Entries},
    ns::{self, CtVal, Ns, Room},
    parse::{self, IP_OFF, IPV6_HLEN, Ipv6, packet_ip6, packet_word, store_ip6},
    select::{self, Frontend},
    xdp::{self, Action, PASS, TCP_READ, UDP_READ},
};

/// What [`tracked`] returns for a packet that no flow knows: not an action.
const NEW_FLOW: i32 = i32::MIN;

/// The IPv6 packet of an XDP frame (its EtherType IPv6): translated and
/// sent, passed, or dropped. Its tracked paths, a new flow and the new
/// flow's event are functions of their own, each called from the entry
/// point (the new flow not from the tracked path), so that the deepest
/// call chain, the entry's frame and the new flow's, stays within the
/// verifier's 512 bytes.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Raw {
    let r = tracked(ctx);
    if !matches!(r.get(), Ok(NEW_FLOW)) {
        return r;
    }
    let r = new_flow(ctx);
    if r.get().is_ok_and(|a| a as u32 != PASS) {
        // Made and sent (anything else passes to TC, which reports it).
        new_flow_event(ctx);
    }
    r
}

/// Parses the packet into IPv6's scratch (ns.rs) and sends it on when it
/// belongs to a tracked flow: a client's packet, or a remote backend's
/// reply to one of our SNAT ports. [`NEW_FLOW`] when it is TCP/UDP that no
/// flow knows.
#[inline(never)]
fn tracked(ctx: &XdpContext) -> Raw {
    let pass = Raw::of(Ok(PASS as i32));
    let Some(ip) = ns::packet6() else {
        return pass;
    };
    if !parse(ctx, ip) {
        return pass;
    }
    let ip: &Ipv6 = ip;
    let Some(t) = parse::tuple(ip) else {
        return pass;
    };
    let tcp_flags = parse::tcp_flags(ip);
    let sent = |r: Raw| r.get().is_ok_and(|a| a as u32 != PASS);

    // A client's packet of a tracked flow.
    if let Some(entry) = ct::lookup(&ct::key::<<V6 as Ns>::Ct>(&t, ct_dir::FORWARD)) {
        // SAFETY: a live map value, read in place.
        let v = unsafe { &*entry };
        if v.flags() & ct_flags::DSR != 0 || !nodeport::backend_still_there::<V6>(v) {
            return pass;
        }
        let now = nexthop::now();
        let r = send(ctx, ip, v, now);
        if sent(r) {
            ct::touch(entry, xdp::seconds(now), tcp_flags);
            count(Counter::NsTracked);
        }
        return r;
    }
    // A remote backend's reply to one of our SNAT ports.
    let Some(cfg) = NODE_CONFIG.get_ptr(0) else {
        return pass;
    };
    // SAFETY: a live map value, read only.
    if ct::snat_ports(unsafe { &*cfg }).contains(t.dport)
        && let Some(entry) = ct::lookup(&ct::key::<<V6 as Ns>::Ct>(&t, ct_dir::REPLY))
    {
        // SAFETY: as above.
        let v = unsafe { &*entry };
        let now = nexthop::now();
        let r = send(ctx, ip, v, now);
        if sent(r) {
            ct::touch(entry, xdp::seconds(now), tcp_flags);
            count(Counter::NsTracked);
        }
        return r;
    }
    Raw::of(Ok(NEW_FLOW))
}

/// The `ferry monitor` event of the new flow [`new_flow`] made and sent:
/// the packet as it arrived (the scratch's parse) and its FORWARD entry
/// (the room's key).
#[inline(never)]
fn new_flow_event(ctx: &XdpContext) {
    let Some(ip) = ns::packet6() else {
        return;
    };
    let Some(t) = parse::tuple(&*ip) else {
        return;
    };
    let _ = V6::with_room(|room| {
        // SAFETY: new_flow wrote the FORWARD key before it sent the packet.
        event::xdp_new_flow(ctx, &t, unsafe { room.key.assume_init_ref() });
        Ok(0)
    });
}

/// An IPv6 packet whose next header is TCP or UDP (no extension header),
/// its L4 header in the frame, parsed into `ip`; false for anything else
/// (passed).
#[inline(always)]
fn parse(ctx: &XdpContext, ip: &mut Ipv6) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    let h = data + IP_OFF;
    let p = h + IPV6_HLEN;
    if p + UDP_READ > end {
        return false;
    }
    // SAFETY: the fixed header and UDP_READ bytes after it checked above
    // (TCP_READ below); words read as parse::packet_word says.
    unsafe {
        let first = packet_word::<u32>(h).to_ne_bytes();
        let next_hdr = *((h + 6) as *const u8);
        // Version 6, and TCP or UDP right after the fixed header (an
        // extension header, ICMPv6, anything else: TC's).
        if first[0] >> 4 != 6 || (next_hdr != proto::TCP && next_hdr != proto::UDP) {
            return false;
        }
        if next_hdr == proto::TCP {
            if p + TCP_READ > end {
                return false;
            }
            ip.l4.tcp_flags =
                *((p + 13) as *const u8) & (parse::TCP_FIN | parse::TCP_SYN | parse::TCP_RST);
            ip.l4.udp_unchecked = false;
        } else {
            // UDP checksum 0: invalid in IPv6, TC's parser leaves it alone.
            if packet_word::<u16>(p + 6) == 0 {
                return false;
            }
            ip.l4.tcp_flags = 0;
            ip.l4.udp_unchecked = false;
        }
        ip.hdr.ver_tc_flow = first;
        ip.hdr.payload_len = packet_word::<u16>(h + 4);
        ip.hdr.next_hdr = next_hdr;
        ip.hdr.hop_limit = *((h + 7) as *const u8);
        ip.hdr.saddr = packet_ip6(h + 8);
        ip.hdr.daddr = packet_ip6(h + 24);
        ip.l4.ports = packet_word::<[u16; 2]>(p);
    }
    ip.proto = ip.hdr.next_hdr;
    ip.l4_off = IP_OFF + IPV6_HLEN;
    ip.l4.has_ports = true;
    ip.l4.csum_in_packet = true;
    true
}

/// A packet no flow knows (parsed into the scratch by [`tracked`]): a new
/// flow when it is for an exposed frontend, decided by `nodeport::admit` as
/// TC's are, its keys and values in IPv6's room (ns.rs).
#[inline(never)]
fn new_flow(ctx: &XdpContext) -> Raw {
    let (Some(ip), Some(cfg)) = (ns::packet6(), NODE_CONFIG.get_ptr(0)) else {
        return Raw::of(Ok(PASS as i32));
    };
    // SAFETY: parsed by `tracked`; a live map value, read only.
    let (ip, cfg) = (&*ip, unsafe { &*cfg });
    Raw::of(V6::with_room(|room| new_flow_body(ctx, ip, cfg, room)))
}

#[inline(always)]
fn new_flow_body(
    ctx: &XdpContext,
    ip: &Ipv6,
    cfg: &NodeConfig,
    room: &mut Room<V6>,
) -> Result<i32, DropReason> {
    let Some(t) = parse::tuple(ip) else {
        return Ok(PASS as i32);
    };
    let Some(svc) = select::lookup_svc(room.svc.write(
        <V6 as crate::family::Family>::Key::frontend(t.daddr, t.dport, t.proto, scope::EXTERNAL),
    )) else {
        return Ok(PASS as i32);
    };
    // SAFETY: written just above.
    let svc_key = unsafe { room.svc.assume_init_ref() };
    let mut slot = core::mem::MaybeUninit::uninit();
    match nodeport::admit::<V6>(svc_key, &svc, &t, cfg, true, &mut slot)? {
        // Not exposed, or no endpoint (the port unreachable is TC's).
        Admission::NotExposed | Admission::NoEndpoints => return Ok(PASS as i32),
        Admission::Flow => {}
    }
    // SAFETY: admit wrote it (Admission::Flow).
    let flow = unsafe { slot.assume_init_ref() };
    if flow.dsr_candidate {
        // A DSR flow (or its fallback): TC's.
        return Ok(PASS as i32);
    }
    let keep_client = flow.keep_client;
    // The source the backend sees: the client's, or the node's on the
    // ingress device (SNAT), kept in the room's REPLY value until the
    // entries are built.
    let node_addr = if keep_client {
        t.saddr
    } else {
        V6::node_addr(xdp::ingress_ifindex(ctx)).ok_or(DropReason::NatFailed)?
    };
    // Routed first: a flow XDP cannot send is made by TC, whole.
    let mut hop_slot = core::mem::MaybeUninit::uninit();
    let hop = Hop::zeroed_in(&mut hop_slot);
    if !route(ctx, ip, &node_addr, &flow.addr, nexthop::now(), hop) {
        return Ok(PASS as i32);
    }
    let tcp_flags = parse::tcp_flags(ip);
    if t.proto == proto::TCP && tcp_flags & parse::TCP_SYN == 0 {
        count(Counter::NsCtLostFlow);
    }
    let (fwd, rev, fwd_key) = nodeport::flow_entries::<V6>(
        (&mut room.val, &mut room.rev, &mut room.key),
        &t,
        (flow.addr, flow.port),
        flow.id,
        svc.rev_nat_id,
        flow.ct_flags(false),
        tcp_flags,
    );
    let snat = (!keep_client).then_some(node_addr);
    if let Entries::Lost =
        nodeport::insert_entries::<V6>(fwd_key, fwd, rev, &mut room.rkey, &t, snat, cfg)?
    {
        // Another CPU made the flow first: TC follows it.
        return Ok(PASS as i32);
    }
    nodeport::count_new_flow();
    rewrite_and_send(ctx, ip, fwd, hop).map(|a| a as i32)
}

/// The next hop of the packet `ip` translated to `saddr` -> `daddr`, into
/// `hop`: true when XDP may send it there. This CPU's cached answer for
/// `daddr` when fresh (nexthop.rs), else the FIB's ([`resolve`]). A hop
/// limit that would expire here is the stack's.
#[inline(always)]
fn route(ctx: &XdpContext, ip: &Ipv6, saddr: &Ip6, daddr: &Ip6, now: u64, hop: &mut Hop) -> bool {
    if ip.hdr.hop_limit <= 1 {
        return false;
    }
    let tot_len = (IPV6_HLEN as u16).wrapping_add(u16::from_be(ip.hdr.payload_len));
    let iif = xdp::ingress_ifindex(ctx);
    nexthop::cached::<NextHop6>(daddr, iif, tot_len, now, hop)
        || resolve(ctx, ip, saddr, daddr, hop)
}

/// Looks up the route of the packet `ip` translated to `saddr` -> `daddr`:
/// true when the FIB names the next hop with its MACs, the packet fits the
/// route's MTU (the lookup checks the length given) and XDP may send to its
/// device; the answer is then kept in the next-hop cache and written to
/// `hop`. Inlined, unlike IPv4's: a new IPv6 flow's frames (ferry_xdp, the
/// new flow, this) would pass the verifier's 512 bytes of stack.
#[inline(always)]
fn resolve(ctx: &XdpContext, ip: &Ipv6, saddr: &Ip6, daddr: &Ip6, hop: &mut Hop) -> bool {
    let Some(p) = nexthop::params() else {
        return false;
    };
    let iif = xdp::ingress_ifindex(ctx);
    p.family = AF_INET6;
    p.l4_protocol = ip.hdr.next_hdr;
    p.__bindgen_anon_1.tot_len = (IPV6_HLEN as u16).wrapping_add(u16::from_be(ip.hdr.payload_len));
    p.ifindex = iif;
    p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(ip.hdr.ver_tc_flow) & IPV6_FLOWINFO_MASK;
    p.__bindgen_anon_3.ipv6_src = *saddr;
    p.__bindgen_anon_4.ipv6_dst = *daddr;
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
    nexthop::remember::<NextHop6>(daddr, iif, p, nexthop::now(), hop);
    true
}

/// Writes the ports and the checksum field (at `CSUM`, after its change by
/// `diff`) of the L4 header at `l4p`, whose first `READ` bytes must be in
/// the frame (else false, nothing written). UDP (`udp`): a computed 0 is
/// sent as 0xffff (0 is "no checksum", invalid in IPv6).
///
/// # Safety
/// `l4p` and `end` are the frame's pointers (L4 header start, end).
#[inline(always)]
unsafe fn set_l4<const READ: usize, const CSUM: usize>(
    l4p: usize,
    end: usize,
    ports: [u16; 2],
    diff: u32,
    udp: bool,
) -> bool {
    if l4p + READ > end {
        return false;
    }
    // SAFETY: READ bytes from `l4p` checked above (CSUM + 2 <= READ).
    unsafe {
        core::ptr::write(l4p as *mut [u16; 2], ports);
        let cp = (l4p + CSUM) as *mut u16;
        let mut new = csum::apply(core::ptr::read(cp), diff);
        if udp && new == 0 {
            new = 0xffff;
        }
        core::ptr::write(cp, new);
    }
    true
}

/// xdp.rs's `may_send_to` for IPv6: the ingress device, or one of the
/// node's north-south devices (an address of either family in the node
/// address maps).
#[inline(always)]
fn may_send_to(ctx: &XdpContext, ifindex: u32) -> bool {
    ifindex == xdp::ingress_ifindex(ctx)
        || NODE_ADDR_V6.get_ptr(&ifindex).is_some()
        || NODE_ADDR_V4.get_ptr(&ifindex).is_some()
}

/// A tracked packet: routed, then rewritten as the entry `v` says and
/// sent; PASS (the packet untouched) when the FIB cannot send it.
#[inline(never)]
fn send(ctx: &XdpContext, ip: &Ipv6, v: &CtVal<V6>, now: u64) -> Raw {
    Raw::of(send_body(ctx, ip, v, now).map(|a| a as i32))
}

#[inline(always)]
fn send_body(ctx: &XdpContext, ip: &Ipv6, v: &CtVal<V6>, now: u64) -> Action {
    let mut slot = core::mem::MaybeUninit::uninit();
    let hop = Hop::zeroed_in(&mut slot);
    if !route(ctx, ip, &v.nat_saddr, &v.nat_daddr, now, hop) {
        return Ok(PASS);
    }
    rewrite_and_send(ctx, ip, v, hop)
}

/// Rewrites the packet to the addresses and ports of `v` with its L4
/// checksum (RFC 1624 over both addresses, which the pseudo-header holds,
/// and the ports), decrements the hop limit (in no checksum), sets the next
/// hop's MACs and redirects it to the next hop's device.
#[inline(always)]
fn rewrite_and_send(ctx: &XdpContext, ip: &Ipv6, v: &CtVal<V6>, hop: &Hop) -> Action {
    let old = &ip.hdr;
    let [old_sport, old_dport] = ip.l4.ports;
    let (sport, dport) = (v.nat_sport, v.nat_dport);
    // Summed in 64 bits and folded once, as csum::rewrite4 does: the same
    // value as chained diff16/diff2, without an end-around carry per word.
    let mut sum = (!old_sport) as u64 + sport as u64 + (!old_dport) as u64 + dport as u64;
    let mut i = 0;
    while i < 4 {
        sum += (!old.saddr[i]) as u64
            + v.nat_saddr[i] as u64
            + (!old.daddr[i]) as u64
            + v.nat_daddr[i] as u64;
        i += 1;
    }
    let l4_diff = csum::fold64(sum);
    let (data, end) = (ctx.data(), ctx.data_end());
    let h = data + IP_OFF;
    let l4p = h + IPV6_HLEN;
    // Each protocol's bounds check with its own checksum offset (one test
    // of the protocol for both: the verifier follows them as one path).
    let written = if ip.proto == proto::UDP {
        // SAFETY: `l4p` is the L4 header's start in the frame.
        unsafe { set_l4::<UDP_READ, 6>(l4p, end, [sport, dport], l4_diff, true) }
    } else {
        // SAFETY: as above.
        unsafe { set_l4::<TCP_READ, 16>(l4p, end, [sport, dport], l4_diff, false) }
    };
    if !written {
        return Err(DropReason::RewriteFailed);
    }
    // SAFETY: the Ethernet and IPv6 headers are before the L4 bytes that
    // `set_l4` found in the frame.
    unsafe {
        if l4p > end {
            return Err(DropReason::RewriteFailed);
        }
        *((h + 7) as *mut u8) = old.hop_limit - 1;
        store_ip6(h + 8, &v.nat_saddr);
        store_ip6(h + 24, &v.nat_daddr);
        xdp::set_macs(data, hop);
    }
    count(Counter::NsXdpForwarded);
    // SAFETY: a plain helper call.
    Ok(unsafe { h::bpf_redirect(hop.oif, 0) } as u32)
}
