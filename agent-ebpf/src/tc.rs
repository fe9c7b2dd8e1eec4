//! The TC programs on the node's devices (north-south load balancing).
//!
//! `ferry_tc_in` (ingress): packets for NodePorts, externalIPs and
//! LoadBalancer IPs start or continue a translated flow; replies of remote
//! backends to our SNAT ports are translated back; ICMP errors about
//! translated flows are translated; with `--lb-mode dsr`, flows to remote
//! backends keep the client's address and carry their frontend to the
//! backend's node in an IP option (IPv6: a destination options header), and
//! packets arriving with it for a backend on this node are recorded and
//! stripped (dsr.rs, dsr6.rs). `ferry_tc_out`
//! (egress): replies of local backends (and of DSR flows received) get their
//! frontend back as the source, and ICMP errors they send about a flow are
//! translated likewise. `ferry_tc_pod` (ingress of the devices the node
//! reaches its local endpoints through): a local backend's replies to the
//! node address a masqueraded flow gave it (externalTrafficPolicy Cluster)
//! are translated back and forwarded to the client.
//!
//! IPv4 and IPv6 alike (see ns.rs); fragments after the
//! first pass untouched. Each family's handler is a function of its own (a
//! BPF-to-BPF call): the verifier counts the stack of a call chain, 512
//! bytes in all, and ferry_tc_in's IPv4 path with its own calls (fib.rs,
//! dsr.rs) is near that alone; the entry point itself uses none. So
//! neither family's frame limits the other's, and an IPv4 packet pays one
//! call more than when its path was the program's body.

use core::ptr::NonNull;

use agent_common::proto;
use aya_ebpf::{EbpfContext as _, bindings::__sk_buff, macros::classifier, programs::TcContext};

use crate::{
    drop::{self, DropReason, Outcome},
    family::{V4, V6},
    icmp, icmp6, nodeport, ns,
    parse::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    pod_lb,
    side::Side,
    verdict,
};

#[classifier]
pub fn ferry_tc_in(ctx: TcContext) -> i32 {
    match ethertype(&ctx) {
        ETH_P_IP => ipv4_in(skb(&ctx)),
        ETH_P_IPV6 => ipv6_in(skb(&ctx)),
        _ => verdict::PASS,
    }
}

#[classifier]
pub fn ferry_tc_out(ctx: TcContext) -> i32 {
    match ethertype(&ctx) {
        ETH_P_IP => ipv4_out(skb(&ctx)),
        ETH_P_IPV6 => ipv6_out(skb(&ctx)),
        _ => verdict::PASS,
    }
}

#[classifier]
pub fn ferry_tc_pod(ctx: TcContext) -> i32 {
    match ethertype(&ctx) {
        ETH_P_IP => ipv4_pod(skb(&ctx)),
        ETH_P_IPV6 => ipv6_pod(skb(&ctx)),
        _ => verdict::PASS,
    }
}

/// The frame's EtherType (host order; 0 for a frame too short to have one),
/// read straight from the packet: no stack in the entry point.
#[inline(always)]
pub(crate) fn ethertype(ctx: &TcContext) -> u16 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return 0;
    }
    // SAFETY: bounds checked above (the Ethernet header is in the linear
    // part of every skb a TC program sees).
    u16::from_be(unsafe { parse::packet_word::<u16>(data + 12) })
}

#[inline(always)]
pub(crate) fn skb(ctx: &TcContext) -> *mut __sk_buff {
    ctx.as_ptr().cast()
}

/// One family's handler on one side: a BPF-to-BPF function taking the skb
/// (see the module comment).
macro_rules! handler {
    ($name:ident, $family:ident, $side:expr) => {
        #[inline(never)]
        fn $name(skb: *mut __sk_buff) -> i32 {
            match NonNull::new(skb) {
                Some(p) => {
                    let ctx = TcContext::new(p);
                    drop::verdict($family(&ctx, $side), &ctx, $side)
                }
                None => verdict::PASS,
            }
        }
    };
}

handler!(ipv4_in, ipv4, Side::Ingress);
handler!(ipv4_out, ipv4, Side::Egress);
handler!(ipv4_pod, ipv4, Side::Pod);
handler!(ipv6_in, ipv6, Side::Ingress);
handler!(ipv6_out, ipv6, Side::Egress);
handler!(ipv6_pod, ipv6, Side::Pod);

/// One IPv4 packet met on `side` (a constant in each handler, folded away):
/// TCP and UDP to the north-south flows, ICMP errors to their translation.
#[inline(always)]
fn ipv4(ctx: &TcContext, side: Side) -> Outcome {
    let mut slot = core::mem::MaybeUninit::uninit();
    let ip = parse::Ipv4::empty_in(&mut slot);
    if !parse::ipv4(ctx, ip) {
        return Ok(verdict::PASS);
    }
    if ip.hdr.is_later_fragment() {
        return Ok(verdict::PASS);
    }
    match ip.hdr.proto {
        proto::TCP | proto::UDP => match side {
            Side::Ingress => nodeport::ingress::<V4>(ctx, ip),
            Side::Egress => nodeport::egress::<V4>(ctx, ip),
            // What no masqueraded flow takes goes to the per-packet
            // ClusterIP path (pod_lb.rs).
            Side::Pod => match nodeport::from_pod::<V4>(ctx, ip) {
                Ok(verdict::PASS) => pod_lb::from_pod::<V4>(ctx, ip),
                v => v,
            },
            // pod_lb.rs's own program.
            Side::PodOut => Ok(verdict::PASS),
        },
        parse::IPPROTO_ICMP => icmp::translate_error(ctx, ip, side),
        _ => Ok(verdict::PASS),
    }
}

/// One IPv6 packet met on `side`: as [`ipv4`], past the extension headers
/// (a later fragment, like anything else [`parse::ipv6`] does not take,
/// passes), parsed into the per-CPU scratch (ns.rs). ICMPv6 other than
/// errors (Neighbor Discovery, echo, MLD) passes untouched.
#[inline(always)]
fn ipv6(ctx: &TcContext, side: Side) -> Outcome {
    let ip = ns::packet6().ok_or(DropReason::Internal)?;
    if !parse::ipv6(ctx, ip) {
        return Ok(verdict::PASS);
    }
    let ip = &*ip;
    match ip.proto {
        proto::TCP | proto::UDP => match side {
            Side::Ingress => nodeport::ingress::<V6>(ctx, ip),
            Side::Egress => nodeport::egress::<V6>(ctx, ip),
            Side::Pod => match nodeport::from_pod::<V6>(ctx, ip) {
                Ok(verdict::PASS) => pod_lb::from_pod::<V6>(ctx, ip),
                v => v,
            },
            // pod_lb.rs's own program.
            Side::PodOut => Ok(verdict::PASS),
        },
        parse::IPPROTO_ICMPV6 => icmp6::translate_error(ctx, ip, side).get(),
        _ => Ok(verdict::PASS),
    }
}
