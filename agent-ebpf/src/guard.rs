//! The egress guard: `cgroup_skb/egress` on the cgroup of the socket hooks.
//!
//! Two of kube-proxy's rules drop traffic, which a sock_addr hook cannot do
//! (it can only refuse at once, a REJECT): the decision needs the packet, or
//! the packet's source address, which a connect() does not have yet. The
//! socket layer records what it let through in the socket's own storage
//! (`ferry_guard4_v1`, see `agent_common::SockGuard4`), and this program
//! drops the packets the rule forbids:
//!
//! - a Local traffic policy with endpoints only on other nodes: the hook
//!   leaves the ClusterIP untranslated and marks the socket; every packet of
//!   it to a ClusterIP is dropped here, so none leaves the socket (kube-proxy
//!   drops it; a Service with no endpoint anywhere is refused by the hook);
//! - loadBalancerSourceRanges: a socket that reached a backend through a
//!   ranged LoadBalancer IP sends only if its packet's source address is in
//!   the ranges (kube-proxy's firewall check covers pods and the host too).
//!
//! Sockets without a record (nearly all) cost one storage lookup per packet.
//!
//! IPv6 packets (the skb's protocol, then the header's version) are checked
//! the same way against the socket's IPv6 record (`ferry_guard6_v1`) and
//! the IPv6 maps; a dual-stack socket sending to an IPv4-mapped destination
//! sends IPv4 packets, checked against its IPv4 record. Only the fixed IPv6
//! header is read: a packet whose next header is not TCP or UDP (extension
//! headers, which a socket's own TCP/UDP packets carry only when the
//! application adds them) passes.

use core::ptr;

use agent_common::{guard_flags, proto, scope, stats::Counter};
use aya_ebpf::{
    EbpfContext as _, bindings::__sk_buff, helpers::generated as h, macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{
    family::{Addr, Family, V4, V6},
    maps::count,
    parse::{IPV6_HLEN, Ipv4Hdr, Ipv6Hdr},
    select::Frontend,
};

/// cgroup_skb/egress verdicts.
const PASS: i32 = 1;
/// Dropped; the sender gets EPERM, which TCP ignores for a SYN: it
/// retransmits until the connect times out, as behind a drop on the wire.
const DROP: i32 = 0;
/// Dropped with congestion notification: a UDP sender (without IP_RECVERR)
/// sees its send succeed, and the datagram is lost, as behind a drop.
const DROP_CN: i32 = 2;

/// `skb->protocol` of an IPv6 packet (network order, as the field holds it).
const ETH_P_IPV6_BE: u32 = 0x86dd_u16.to_be() as u32;

#[cgroup_skb(egress)]
pub fn ferry_guard4(ctx: SkBuffContext) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: the context is the kernel's __sk_buff; `sk` is a context field.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    let sk = unsafe { h::bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return PASS;
    }
    // The IP layer sets the protocol before the egress hook runs (ip_output,
    // ip6_output); anything but IPv6 takes the IPv4 path, which checks the
    // header's version itself.
    if unsafe { (*skb).protocol } == ETH_P_IPV6_BE {
        let Some(g) = record::<V6>(sk) else {
            return PASS;
        };
        return match ipv6(&ctx) {
            Some(p) => check::<V6>(&ctx, g, p),
            None => PASS,
        };
    }
    let Some(g) = record::<V4>(sk) else {
        return PASS;
    };
    match ipv4(&ctx) {
        Some(p) => check::<V4>(&ctx, g, p),
        None => PASS,
    }
}

/// The socket's guard record of family `F`, copied out.
#[inline(always)]
fn record<F: Family>(sk: *mut aya_ebpf::bindings::bpf_sock) -> Option<F::Guard> {
    let map = ptr::from_ref(F::guard_map()).cast_mut().cast();
    let g = unsafe { h::bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), 0) };
    if g.is_null() {
        return None;
    }
    // SAFETY: a storage value of this map is an `F::Guard`.
    Some(unsafe { *g.cast::<F::Guard>() })
}

/// What the guard reads of a packet.
struct Packet<A> {
    l4: u8,
    saddr: A,
    daddr: A,
    /// Where the TCP/UDP header starts.
    l4_off: usize,
}

/// cgroup_skb data starts at the network header: one read of it.
#[inline(always)]
fn ipv4(ctx: &SkBuffContext) -> Option<Packet<u32>> {
    let ip = ctx.load::<Ipv4Hdr>(0).ok()?;
    if ip.ver_ihl >> 4 != 4 {
        return None;
    }
    Some(Packet {
        l4: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        l4_off: ip.header_len(),
    })
}

#[inline(always)]
fn ipv6(ctx: &SkBuffContext) -> Option<Packet<agent_common::Ip6>> {
    let ip = ctx.load::<Ipv6Hdr>(0).ok()?;
    if ip.ver_tc_flow[0] >> 4 != 6 || (ip.next_hdr != proto::TCP && ip.next_hdr != proto::UDP) {
        return None;
    }
    Some(Packet {
        l4: ip.next_hdr,
        saddr: ip.saddr,
        daddr: ip.daddr,
        l4_off: IPV6_HLEN,
    })
}

#[inline(always)]
fn check<F: Family>(ctx: &SkBuffContext, mut g: F::Guard, p: Packet<Addr<F>>) -> i32 {
    let flags = *F::guard_flags(&mut g);
    let (l4, saddr, daddr) = (p.l4, p.saddr, p.daddr);
    let verdict_drop = if l4 == proto::UDP { DROP_CN } else { DROP };

    if flags & guard_flags::NO_LOCAL != 0 {
        // The agent marks every ClusterIP (port 0, protocol 0).
        let mark = F::Key::frontend(daddr, 0, 0, scope::EXTERNAL);
        if mark.lookup().is_some() {
            count(Counter::GuardNoLocalDrop);
            return verdict_drop;
        }
    }

    if flags & (guard_flags::RANGES_CONN | guard_flags::RANGES_MSG) == 0
        || (l4 != proto::TCP && l4 != proto::UDP)
    {
        return PASS;
    }
    let Ok(dport) = ctx.load::<u16>(p.l4_off + 2) else {
        return PASS;
    };
    let hit = |connect: bool| {
        let (addr, port, rev_nat_id) = F::guard_dest(&g, connect);
        (addr == daddr && port == dport).then_some(rev_nat_id)
    };
    let rev_nat_id = if flags & guard_flags::RANGES_CONN != 0
        && let Some(id) = hit(true)
    {
        id
    } else if flags & guard_flags::RANGES_MSG != 0
        && let Some(id) = hit(false)
    {
        id
    } else {
        return PASS;
    };
    if !F::in_source_ranges(rev_nat_id, saddr) {
        count(Counter::GuardSourceRangeDrop);
        return verdict_drop;
    }
    PASS
}
