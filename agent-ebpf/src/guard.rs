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

use core::ptr;

use agent_common::{
    GuardDest4, SRC_RANGE_PREFIX_BITS, SockGuard4, SrcRange4, Svc4Key, guard_flags, proto, scope,
    stats::Counter,
};
use aya_ebpf::{
    EbpfContext as _, bindings::__sk_buff, helpers::generated as h, macros::cgroup_skb,
    maps::lpm_trie::Key, programs::SkBuffContext,
};

use crate::{
    maps::{SOCK_GUARD, SRC_RANGE_V4, count},
    parse::Ipv4Hdr,
    select::lookup_svc,
};

/// cgroup_skb/egress verdicts.
const PASS: i32 = 1;
/// Dropped; the sender gets EPERM, which TCP ignores for a SYN: it
/// retransmits until the connect times out, as behind a drop on the wire.
const DROP: i32 = 0;
/// Dropped with congestion notification: a UDP sender (without IP_RECVERR)
/// sees its send succeed, and the datagram is lost, as behind a drop.
const DROP_CN: i32 = 2;

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
    let map = ptr::from_ref(&SOCK_GUARD).cast_mut().cast();
    let g = unsafe { h::bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), 0) };
    if g.is_null() {
        return PASS;
    }
    // SAFETY: a storage value of this map is a SockGuard4.
    let g = unsafe { *g.cast::<SockGuard4>() };
    check(&ctx, &g)
}

#[inline(always)]
fn check(ctx: &SkBuffContext, g: &SockGuard4) -> i32 {
    // cgroup_skb data starts at the network header: one read of it.
    let Ok(ip) = ctx.load::<Ipv4Hdr>(0) else {
        return PASS;
    };
    if ip.ver_ihl >> 4 != 4 {
        return PASS;
    }
    let (l4, saddr, daddr) = (ip.proto, ip.saddr, ip.daddr);
    let verdict_drop = if l4 == proto::UDP { DROP_CN } else { DROP };

    if g.flags & guard_flags::NO_LOCAL != 0 {
        // The agent marks every ClusterIP (port 0, protocol 0).
        let mark = Svc4Key {
            addr: daddr,
            port: 0,
            slot: 0,
            proto: 0,
            scope: scope::EXTERNAL,
            _pad: [0; 2],
        };
        if lookup_svc(&mark).is_some() {
            count(Counter::GuardNoLocalDrop);
            return verdict_drop;
        }
    }

    if g.flags & (guard_flags::RANGES_CONN | guard_flags::RANGES_MSG) == 0
        || (l4 != proto::TCP && l4 != proto::UDP)
    {
        return PASS;
    }
    let Ok(dport) = ctx.load::<u16>(ip.header_len() + 2) else {
        return PASS;
    };
    let hit = |d: &GuardDest4| d.addr == daddr && d.port == dport;
    let rev_nat_id = if g.flags & guard_flags::RANGES_CONN != 0 && hit(&g.conn) {
        g.conn.rev_nat_id
    } else if g.flags & guard_flags::RANGES_MSG != 0 && hit(&g.msg) {
        g.msg.rev_nat_id
    } else {
        return PASS;
    };
    let key = Key::new(
        SRC_RANGE_PREFIX_BITS + 32,
        SrcRange4 {
            rev_nat_id,
            _pad: 0,
            addr: saddr,
        },
    );
    if SRC_RANGE_V4.get(&key).is_none() {
        count(Counter::GuardSourceRangeDrop);
        return verdict_drop;
    }
    PASS
}
