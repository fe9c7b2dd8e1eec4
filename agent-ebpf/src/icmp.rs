//! ICMP: errors about translated flows, and the port unreachable a frontend
//! with no endpoints answers with.

use agent_common::{Ct4Key, NodeConfig, ct_dir, ct_flags, proto, stats::Counter};
use aya_ebpf::{bindings::BPF_F_RECOMPUTE_CSUM, helpers::generated as h, programs::TcContext};

use crate::{
    csum,
    ct::{self, CtKey, CtValue},
    drop::{DropReason, Outcome, Raw},
    event,
    family::Addr,
    maps::{ICMP_SOURCES, count},
    ns::Ns,
    parse::{
        self, ETH_HLEN, IP_CSUM_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, IPV4_MIN_HLEN, Ipv4,
        Ipv4Hdr, Tuple,
    },
    ratelimit,
    side::Side,
    verdict,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// The header of an ICMP or ICMPv6 message (the same 8 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: u16,
    /// Unused for port unreachable; the next-hop MTU for fragmentation
    /// needed and Packet Too Big; the pointer of a parameter problem.
    pub rest: u32,
}
pub const ICMP_HLEN: usize = core::mem::size_of::<IcmpHdr>();

/// Translates an ICMP error (destination unreachable, including
/// fragmentation needed, and time exceeded) about a tracked flow, so the
/// host it goes to recognises its own packet in it.
///
/// The quoted packet is one the error's receiver sent, as it looked after
/// ferry translated it. Swapped, its tuple is the key of the flow's entry
/// for the direction the error travels: a backend's error about the
/// client's packet (client -> backend, or node:port -> backend after SNAT)
/// is keyed like the backend's replies (REPLY); a client's error about a
/// reply (frontend -> client) like the client's packets (FORWARD, ingress
/// only). That entry's value is the translation: the quoted source becomes
/// (nat_daddr, nat_dport), its destination (nat_saddr, nat_sport). The outer
/// destination follows the quoted source; the outer source follows the
/// quoted destination only when the error comes from that host itself (a
/// router's address is left as it is, so traceroute-like errors still name
/// the hop).
///
/// On a pod device, only errors about its pods' flows, sent to the host
/// that sent the quoted packet (an error to another pod is left alone):
/// arriving from a pod ([`Side::Pod`]), a local backend's error to the node
/// address a masqueraded flow gave it, and a client pod's error about a
/// reply of its per-packet ClusterIP flow (pod_lb.rs: its FORWARD entry,
/// flagged POD; the error then goes to the backend); leaving towards a pod
/// ([`Side::PodOut`]), a backend's error about a per-packet flow's packet
/// (its REPLY entry, flagged POD, not masqueraded: those come back in
/// through `ferry_tc_pod`), the quote given its ClusterIP back.
///
/// Arriving from a pod, a function of its own (a BPF-to-BPF call): its
/// frame is not added to the per-packet ClusterIP path's (pod_lb.rs).
#[inline(always)]
pub fn translate_error(ctx: &TcContext, ip: &Ipv4, side: Side) -> Outcome {
    if side == Side::Pod {
        translate_error_call(ctx, ip, side).get()
    } else {
        translate_error_body(ctx, ip, side)
    }
}

#[inline(never)]
fn translate_error_call(ctx: &TcContext, ip: &Ipv4, side: Side) -> Raw {
    Raw::of(translate_error_body(ctx, ip, side))
}

#[inline(always)]
fn translate_error_body(ctx: &TcContext, ip: &Ipv4, side: Side) -> Outcome {
    let icmp_off = ip.l4_off as usize;
    let Ok(icmp) = ctx.load::<IcmpHdr>(icmp_off) else {
        return Ok(verdict::PASS);
    };
    if icmp.ty != ICMP_DEST_UNREACH && icmp.ty != ICMP_TIME_EXCEEDED {
        return Ok(verdict::PASS);
    }
    let inner_off = icmp_off + ICMP_HLEN;
    let Ok(inner) = ctx.load::<Ipv4Hdr>(inner_off) else {
        return Ok(verdict::PASS);
    };
    if inner.ver_ihl >> 4 != 4
        || inner.header_len() < IPV4_MIN_HLEN
        || inner.is_later_fragment()
        || (inner.proto != proto::TCP && inner.proto != proto::UDP)
    {
        return Ok(verdict::PASS);
    }
    let inner_l4 = inner_off + inner.header_len();
    // Only what the IP packet holds is quoted: bytes after its total length are not, and the
    // ICMP checksum does not cover them (found by the packet fuzzer).
    if inner_l4 + 4 > IP_OFF + u16::from_be(ip.hdr.tot_len) as usize {
        return Ok(verdict::PASS);
    }
    let Ok(ports) = ctx.load::<[u16; 2]>(inner_l4) else {
        return Ok(verdict::PASS);
    };
    let flow = Tuple {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: ports[0],
        dport: ports[1],
        proto: inner.proto,
    };
    let Some(v) = error_flow::<Ct4Key>(&flow, ip.hdr.daddr, side) else {
        return Ok(verdict::PASS);
    };
    event::icmp_translated(ctx, &flow, &v, side);
    let quoted = Quoted {
        off: inner_off,
        hdr: inner,
        l4_off: inner_l4,
        sport: ports[0],
        dport: ports[1],
    };
    let new = Endpoints {
        saddr: v.nat_daddr,
        sport: v.nat_dport,
        daddr: v.nat_saddr,
        dport: v.nat_sport,
    };
    let (outer_saddr, outer_daddr) = rewrite_error(ctx, ip, icmp_off, &quoted, &new)?;
    translated::<crate::family::V4>(ctx, ip, outer_saddr, outer_daddr, v.flags, side)
}

/// The conntrack entry that translates an ICMP error (of either family)
/// met on `side` about the packet `quoted` (its addresses, ports and
/// protocol as the error quotes them), the error going to `to`: see
/// [`translate_error`]. None when no flow of ours sent that packet, or
/// none that `side` translates.
#[inline(always)]
pub fn error_flow<K: CtKey>(quoted: &Tuple<K::Addr>, to: K::Addr, side: Side) -> Option<K::Value> {
    // An error goes to the host that sent what it quotes: on a pod device,
    // one to anyone else (another pod) is none of the flow's.
    if side.pod_device() && to != quoted.saddr {
        return None;
    }
    let mut key = K::new(
        quoted.daddr,
        quoted.saddr,
        quoted.dport,
        quoted.sport,
        quoted.proto,
        ct_dir::REPLY,
    );
    let (entry, reply) = match ct::lookup(&key) {
        Some(v) => (v, true),
        // A client's error about a reply: keyed like its packets.
        None if side == Side::Ingress || side == Side::Pod => {
            key.set_dir(ct_dir::FORWARD);
            (ct::lookup(&key)?, false)
        }
        None => return None,
    };
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    let (pod, snat) = (
        v.flags() & ct_flags::POD != 0,
        v.flags() & ct_flags::SNAT != 0,
    );
    let ours = match side {
        Side::Ingress | Side::Egress => true,
        // A local backend's error to a node address of ours, or a client
        // pod's about its per-packet flow's reply.
        Side::Pod => (reply && snat) || (!reply && pod),
        // A backend's error to its per-packet flow's client pod.
        Side::PodOut => pod && !snat,
    };
    ours.then_some(v)
}

/// An ICMP error (parsed as `ip`, now from `saddr` to `daddr`) of a flow
/// with conntrack `flags` was translated on `side`: counted, and routed
/// when it now comes from or goes to a node address.
#[inline(always)]
pub fn translated<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    saddr: Addr<F>,
    daddr: Addr<F>,
    flags: u8,
    side: Side,
) -> Outcome {
    count(Counter::NsIcmpTranslated);
    if side != Side::Egress && flags & ct_flags::SNAT != 0 {
        // Now from or to a node address: see fib.rs.
        F::forward(ctx, ip, saddr, daddr)
    } else {
        Ok(verdict::OK)
    }
}

/// The packet an ICMP error quotes.
struct Quoted {
    off: usize,
    hdr: Ipv4Hdr,
    l4_off: usize,
    sport: u16,
    dport: u16,
}

struct Endpoints {
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
}

/// Rewrites the quoted packet to `new` (addresses, ports, its IP checksum
/// and, when quoted, its L4 checksum), the ICMP checksum that covers all of
/// it, and the outer addresses with the outer IP checksum. Returns the
/// outer addresses as they now are.
#[inline(always)]
fn rewrite_error(
    ctx: &TcContext,
    ip: &Ipv4,
    icmp_off: usize,
    q: &Quoted,
    new: &Endpoints,
) -> Result<(u32, u32), DropReason> {
    let shot = |_| DropReason::RewriteFailed;
    let addr_diff = csum::diff4(
        csum::diff4(0, q.hdr.saddr, new.saddr),
        q.hdr.daddr,
        new.daddr,
    );
    let port_diff = csum::diff2(csum::diff2(0, q.sport, new.sport), q.dport, new.dport);

    let mut hdr = q.hdr;
    hdr.saddr = new.saddr;
    hdr.daddr = new.daddr;
    hdr.check = csum::apply(q.hdr.check, addr_diff);
    // Everything stored below lies inside the ICMP message: its checksum
    // changes by the sum of those changes.
    let mut icmp_diff = csum::diff2(addr_diff, q.hdr.check, hdr.check);
    icmp_diff = csum::add(icmp_diff, port_diff);

    // The quoted L4 checksum (UDP's is in the 8 bytes every error quotes,
    // TCP's only when the error quotes more). Kept consistent so the client
    // finds exactly the packet it sent.
    let udp = q.hdr.proto == proto::UDP;
    let l4_csum_off = q.l4_off + if udp { 6 } else { 16 };
    let end = IP_OFF + u16::from_be(ip.hdr.tot_len) as usize;
    if l4_csum_off + 2 <= end
        && let Ok(old) = ctx.load::<u16>(l4_csum_off)
        && !(udp && old == 0)
    {
        let mut l4_new = csum::apply(old, csum::add(addr_diff, port_diff));
        if udp && l4_new == 0 {
            l4_new = 0xffff;
        }
        icmp_diff = csum::diff2(icmp_diff, old, l4_new);
        ctx.store(l4_csum_off, &l4_new, 0).map_err(shot)?;
    }
    ctx.store(q.off, &hdr, 0).map_err(shot)?;
    ctx.store(q.l4_off, &[new.sport, new.dport], 0)
        .map_err(shot)?;
    // Size 0: `to` is a precomputed difference. ICMP has no pseudo-header.
    ctx.l4_csum_replace(icmp_off + 2, 0, icmp_diff as u64, 0)
        .map_err(shot)?;

    let outer_daddr = if ip.hdr.daddr == q.hdr.saddr {
        new.saddr
    } else {
        ip.hdr.daddr
    };
    let outer_saddr = if ip.hdr.saddr == q.hdr.daddr {
        new.daddr
    } else {
        ip.hdr.saddr
    };
    set_outer_addr(ctx, IP_SADDR_OFF, ip.hdr.saddr, outer_saddr)?;
    set_outer_addr(ctx, IP_DADDR_OFF, ip.hdr.daddr, outer_daddr)?;
    Ok((outer_saddr, outer_daddr))
}

#[inline(always)]
fn set_outer_addr(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), DropReason> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(off, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

/// The ICMP message of a port unreachable: header, then the offending
/// packet's IP header and first 8 bytes of its payload (RFC 792).
#[repr(C)]
struct UnreachMsg {
    icmp: IcmpHdr,
    orig_ip: Ipv4Hdr,
    orig_l4: [u8; 8],
}
const UNREACH_MSG_WORDS: usize = core::mem::size_of::<UnreachMsg>() / 2;

#[repr(C)]
struct Unreach {
    ip: Ipv4Hdr,
    msg: UnreachMsg,
}
const UNREACH_LEN: usize = core::mem::size_of::<Unreach>();
const _: () = assert!(UNREACH_LEN == 56);

/// IP ToS of ICMP errors: precedence "internetwork control", as Linux sends.
const TOS_INTERNETCONTROL: u8 = 0xc0;
const ICMP_TTL: u8 = 64;

/// Answers a packet to a frontend with no endpoints with an ICMP port
/// unreachable from the frontend, built in place of the packet and sent
/// back out of the device it came in on (kube-proxy's REJECT: the client
/// gets "connection refused" at once instead of timing out).
///
/// Only packets without IP options are answered (the quoted header then
/// has a fixed size); others, and packets too short to quote, are dropped
/// (counted as `NsRejectFailed`). Answers are rate-limited as the kernel
/// limits its own (ratelimit.rs): beyond the budget the packet is dropped
/// unanswered (`NsRejectLimited`, `NsRejectLimitedSource`).
///
/// Limitation: a packet that arrived with its checksum still to be filled
/// in by offload (CHECKSUM_PARTIAL, from a local veth or a virtio guest)
/// keeps that state, which BPF cannot clear. If a device later completes
/// that checksum, it writes into the ICMP message at the old L4 checksum's
/// offset: harmless for UDP (the ICMP's unused field), but for TCP it
/// damages the quoted header. Physical NICs never hand such packets in.
#[inline(always)]
pub fn reject(ctx: &TcContext, ip: &Ipv4, cfg: &NodeConfig) -> Outcome {
    if ip.hdr.header_len() != IPV4_MIN_HLEN || !is_unicast(ip.hdr.saddr) {
        return Err(DropReason::RejectFailed);
    }
    ratelimit::allow(&ICMP_SOURCES, &ip.hdr.saddr, cfg)?;
    // Before the packet becomes the answer: the event quotes the client's.
    event::port_unreachable(ctx, ip);
    build_reject(ctx, ip).map_err(|()| DropReason::RejectFailed)?;
    count(Counter::NsRejected);
    Ok(unsafe { h::bpf_redirect(parse::ifindex(ctx), 0) as i32 })
}

#[inline(always)]
fn build_reject(ctx: &TcContext, ip: &Ipv4) -> Result<(), ()> {
    let orig = ip.hdr;
    let orig_l4: [u8; 8] = ctx.load(ip.l4_off as usize).map_err(|_| ())?;
    let macs: [u8; 12] = ctx.load(0).map_err(|_| ())?;

    let mut m = Unreach {
        ip: Ipv4Hdr {
            ver_ihl: 0x45,
            tos: TOS_INTERNETCONTROL,
            tot_len: (UNREACH_LEN as u16).to_be(),
            id: 0,
            frag_off: 0,
            ttl: ICMP_TTL,
            proto: parse::IPPROTO_ICMP,
            check: 0,
            saddr: orig.daddr,
            daddr: orig.saddr,
        },
        msg: UnreachMsg {
            icmp: IcmpHdr {
                ty: ICMP_DEST_UNREACH,
                code: ICMP_PORT_UNREACH,
                check: 0,
                rest: 0,
            },
            orig_ip: orig,
            orig_l4,
        },
    };
    // SAFETY: both are repr(C) structs of even size without padding, at
    // least 2-aligned: readable as 16-bit words.
    m.ip.check = csum::of_words(unsafe { &*(&m.ip as *const Ipv4Hdr as *const [u16; 10]) });
    m.msg.icmp.check = csum::of_words(unsafe {
        &*(&m.msg as *const UnreachMsg as *const [u16; UNREACH_MSG_WORDS])
    });

    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.change_tail((ETH_HLEN + UNREACH_LEN) as u32, 0)
        .map_err(|_| ())?;
    ctx.store(0, &eth, 0).map_err(|_| ())?;
    // RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE `skb->csum` (which covers the IP packet, not
    // the MACs) right for the new bytes (found by the packet fuzzer).
    ctx.store(IP_OFF, &m, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| ())
}

/// Not 0.0.0.0/8, multicast, or the limited broadcast: a host that may be
/// sent an error (RFC 1122 3.2.2).
#[inline(always)]
fn is_unicast(addr: u32) -> bool {
    let first = addr.to_ne_bytes()[0];
    first != 0 && first < 224
}
