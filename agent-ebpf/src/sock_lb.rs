//! Socket-layer load balancing (cgroup sock_addr hooks), IPv4 and IPv6.
//!
//! Forward path (connect4, sendmsg4): look the destination up as a frontend
//! (slot 0); refuse at once when it has no usable backend, as kube-proxy's
//! REJECT rule does, or when it is a ClusterIP on a port no Service defines;
//! otherwise pick a backend (select.rs, shared with the north-south path:
//! affinity, else a random slot), rewrite the destination and remember, per
//! socket, which service the backend stands for (sock_rev.rs). What kube-proxy drops
//! instead (a Local policy without a local endpoint, a client outside a
//! LoadBalancer's source ranges) is recorded in the socket's storage for the
//! egress guard (guard.rs), which sees each packet's source address.
//!
//! Reverse path (recvmsg4, getpeername4): rewrite a backend source back to
//! the service the socket dialled. The kernel runs getpeername4 on every
//! accept() that asks for the peer, and recvmsg4 on every datagram a UDP
//! server reads: nearly all of these sockets were never translated. A
//! bitmap of the backend ports the forward path has used
//! (`ferry_skport_v1`, set before each reverse entry is written) lets them
//! go after one array read, without the socket cookie, the slot and the
//! lookup in the large reverse map (a cache and TLB miss on a busy node).
//!
//! IPv6 (connect6, sendmsg6, recvmsg6, getpeername6) runs the same code
//! over the IPv6 maps (family.rs). A dual-stack socket's IPv4-mapped
//! destination (`::ffff:a.b.c.d`) is an IPv4 one: it is looked up in the
//! IPv4 maps and translated to `::ffff:backend`, its reverse entry and its
//! guard record are IPv4 ones (its packets are IPv4). The kernel hands an
//! unconnected sendmsg() of such a socket to a mapped address to sendmsg4
//! (udpv6_sendmsg calls udp_sendmsg), so that case is ferry_send4's; its
//! replies come back through recvmsg6 with the mapped address.

use agent_common::{
    Ip6, SvcValue, affinity_client, guard_flags, proto, scope, stats::Counter, svc_flags, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _, bindings::bpf_sock_addr, helpers::generated as h, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{
    family::{Addr, Family, V4, V6},
    maps::{SOCK_PORTS, count},
    select::{self, Client, Frontend},
    sock_rev,
};

/// Hook verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// What a forward hook is: connect (else an unconnected sendmsg) and its
/// counters.
#[derive(Clone, Copy)]
struct Fwd {
    connect: bool,
    translated: Counter,
    refused: Counter,
}

const CONNECT: Fwd = Fwd {
    connect: true,
    translated: Counter::ConnectTranslated,
    refused: Counter::ConnectRefused,
};
const SENDMSG: Fwd = Fwd {
    connect: false,
    translated: Counter::SendmsgTranslated,
    refused: Counter::SendmsgRefused,
};

#[cgroup_sock_addr(connect4)]
pub fn ferry_conn4(ctx: SockAddrContext) -> i32 {
    fwd4(&ctx, CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_send4(ctx: SockAddrContext) -> i32 {
    fwd4(&ctx, SENDMSG)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_recv4(ctx: SockAddrContext) -> i32 {
    rev4(&ctx, Counter::RecvmsgRevNat);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn ferry_peer4(ctx: SockAddrContext) -> i32 {
    rev4(&ctx, Counter::GetpeernameRevNat);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn ferry_conn6(ctx: SockAddrContext) -> i32 {
    fwd6(&ctx, CONNECT)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ferry_send6(ctx: SockAddrContext) -> i32 {
    fwd6(&ctx, SENDMSG)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn ferry_recv6(ctx: SockAddrContext) -> i32 {
    rev6(&ctx, Counter::RecvmsgRevNat);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn ferry_peer6(ctx: SockAddrContext) -> i32 {
    rev6(&ctx, Counter::GetpeernameRevNat);
    ALLOW
}

/// The socket's protocol when it is one ferry balances.
#[inline(always)]
fn tcp_or_udp(sa: &bpf_sock_addr) -> Option<u8> {
    let l4 = sa.protocol as u8;
    (l4 == proto::TCP || l4 == proto::UDP).then_some(l4)
}

/// The IPv6 destination, one 4-byte load per word (the width the verifier
/// knows these fields by).
#[inline(always)]
fn load_ip6(sa: &bpf_sock_addr) -> Ip6 {
    // SAFETY: fields of the kernel's context.
    unsafe {
        [
            core::ptr::read_volatile(&sa.user_ip6[0]),
            core::ptr::read_volatile(&sa.user_ip6[1]),
            core::ptr::read_volatile(&sa.user_ip6[2]),
            core::ptr::read_volatile(&sa.user_ip6[3]),
        ]
    }
}

/// Sets the IPv6 destination with 4-byte stores (the verifier rejects
/// narrower writes to these fields).
#[inline(always)]
fn store_ip6(sa: &mut bpf_sock_addr, addr: Ip6) {
    for (i, word) in addr.into_iter().enumerate() {
        // SAFETY: fields of the kernel's context.
        unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], word) };
    }
}

/// connect4 / sendmsg4: the IPv4 maps.
#[inline(always)]
fn fwd4(ctx: &SockAddrContext, hook: Fwd) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(l4) = tcp_or_udp(sa) else {
        return ALLOW;
    };
    let addr = sa.user_ip4;
    // Network order in the low 16 bits.
    let port = sa.user_port as u16;
    xlate_fwd::<V4>(ctx, hook, addr, port, l4, |addr, port| {
        // 4-byte stores: the verifier rejects narrower writes to these fields.
        sa.user_ip4 = addr;
        sa.user_port = port as u32;
    })
}

/// connect6 / sendmsg6: the IPv6 maps, or the IPv4 ones for an
/// IPv4-mapped destination.
#[inline(always)]
fn fwd6(ctx: &SockAddrContext, hook: Fwd) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(l4) = tcp_or_udp(sa) else {
        return ALLOW;
    };
    let addr = load_ip6(sa);
    let port = sa.user_port as u16;
    match v4_mapped(&addr) {
        Some(addr4) => xlate_fwd::<V4>(ctx, hook, addr4, port, l4, |backend, port| {
            // ::ffff:backend: the prefix is already there.
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[3], backend) };
            sa.user_port = port as u32;
        }),
        None => xlate_fwd::<V6>(ctx, hook, addr, port, l4, |backend, port| {
            store_ip6(sa, backend);
            sa.user_port = port as u32;
        }),
    }
}

/// The forward translation of `addr`:`port` over `l4` in family `F`'s
/// maps; `write` sets the socket's destination to the chosen backend.
#[inline(always)]
fn xlate_fwd<F: Family>(
    ctx: &SockAddrContext,
    hook: Fwd,
    addr: Addr<F>,
    port: u16,
    l4: u8,
    write: impl FnOnce(Addr<F>, u16),
) -> i32 {
    // --socket-lb-host-netns-only: pods' sockets are left to the per-packet
    // path (pod_lb.rs).
    if !crate::pod_lb::socket_lb_applies(ctx.as_ptr()) {
        return ALLOW;
    }
    let refused = hook.refused;
    let mut key = F::Key::frontend(addr, port, l4, scope::EXTERNAL);
    let Some(mut svc) = key.lookup() else {
        // kube-proxy's cluster-ips-check: a ClusterIP on a port (or
        // protocol) no Service defines is refused, not sent out as is. The
        // agent marks each ClusterIP with port 0 / protocol 0.
        if F::Key::frontend(addr, 0, 0, scope::EXTERNAL)
            .lookup()
            .is_some()
        {
            return refuse::<F>(ctx, refused, addr, port);
        }
        leave_slot(ctx, hook, l4);
        return ALLOW;
    };
    // The frontend's own entry: its source ranges are keyed by its id.
    let (ext_flags, ext_rev_nat_id) = (svc.flags, svc.rev_nat_id);
    if svc.flags & svc_flags::TWO_SCOPES != 0 {
        // externalTrafficPolicy Local: in-cluster clients use every endpoint.
        key = F::Key::frontend(addr, port, l4, scope::INTERNAL);
        svc = key.lookup().unwrap_or_default();
    }
    if svc.count == 0 {
        if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
            let verdict = let_through_to_drop::<F>(ctx, refused, addr, port);
            if verdict == ALLOW {
                leave_slot(ctx, hook, l4);
            }
            return verdict;
        }
        return refuse::<F>(ctx, refused, addr, port);
    }
    let Some(backend) = select_backend(ctx, &key, &svc) else {
        count(Counter::BackendMiss);
        return refuse::<F>(ctx, refused, addr, port);
    };
    let (backend_addr, backend_port) = F::Key::backend_dest(&backend);
    let ranged = (ext_flags & svc_flags::SOURCE_RANGES != 0).then_some((
        backend_addr,
        backend_port,
        ext_rev_nat_id,
    ));
    if !record_ranges::<F>(ctx, hook.connect, ranged) {
        count(Counter::GuardRecordFailed);
        return refuse::<F>(ctx, refused, addr, port);
    }

    // Before the entry: a reverse hook that finds the bit unset skips it.
    mark_port(backend_port);
    let cookie = unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) };
    if !sock_rev::remember::<F>(
        cookie,
        hook.connect,
        backend_addr,
        backend_port,
        (addr, port),
        svc.rev_nat_id,
    ) {
        count(Counter::SockRevUpdateFailed);
    }
    write(backend_addr, backend_port);
    count(hook.translated);
    ALLOW
}

/// A UDP socket connected again, now to a destination ferry does not
/// translate: the slot its earlier connect may hold (either family's: a
/// dual-stack socket's IPv4-mapped connect holds an IPv4 one) is freed
/// here, as its close would not find it (the release hook stops at a peer
/// on a port no backend uses). A TCP socket connects once.
#[inline(always)]
fn leave_slot(ctx: &SockAddrContext, hook: Fwd, l4: u8) {
    if !hook.connect || l4 != proto::UDP {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) };
    if !V4::slot_free(cookie) {
        V6::slot_free(cookie);
    }
}

/// The socket's guard record of family `F`, made empty if it has none
/// (null: no memory).
#[inline(always)]
fn guard_record<F: Family>(ctx: &SockAddrContext) -> *mut F::Guard {
    let mut init = F::Guard::default();
    F::guard_map().get_or_insert_ptr_mut(ctx, Some(&mut init))
}

/// A Local traffic policy without a local endpoint: kube-proxy drops the
/// traffic, so the destination stays the ClusterIP and the socket is marked
/// for the egress guard, which drops its packets to ClusterIPs.
#[inline(always)]
fn let_through_to_drop<F: Family>(
    ctx: &SockAddrContext,
    refused: Counter,
    addr: Addr<F>,
    port: u16,
) -> i32 {
    let g = guard_record::<F>(ctx);
    if g.is_null() {
        // Unmarked, the packets would leave: refuse instead.
        count(Counter::GuardRecordFailed);
        return refuse::<F>(ctx, refused, addr, port);
    }
    // SAFETY: the kernel's storage value for this socket.
    unsafe { *F::guard_flags(&mut *g) |= guard_flags::NO_LOCAL };
    count(Counter::SockNoLocal);
    ALLOW
}

/// Records (or clears) the socket's source-ranged destination (address,
/// port, the frontend's rev-NAT id) for this connect (`conn`) or datagram
/// (`msg`). False: the record was needed and could not be made.
#[inline(always)]
fn record_ranges<F: Family>(
    ctx: &SockAddrContext,
    connect: bool,
    ranged: Option<(Addr<F>, u16, u16)>,
) -> bool {
    let slot = if connect {
        guard_flags::RANGES_CONN
    } else {
        guard_flags::RANGES_MSG
    };
    let Some((addr, port, rev_nat_id)) = ranged else {
        // Most sockets have no record: one lookup that finds nothing.
        let g = F::guard_map().get_ptr_mut(ctx);
        if !g.is_null() {
            unsafe { *F::guard_flags(&mut *g) &= !slot };
        }
        return true;
    };
    let g = guard_record::<F>(ctx);
    if g.is_null() {
        return false;
    }
    // SAFETY: the kernel's storage value for this socket.
    unsafe {
        F::guard_set(&mut *g, connect, addr, port, rev_nat_id);
        *F::guard_flags(&mut *g) |= slot;
    }
    true
}

#[inline(always)]
fn refuse<F: Family>(ctx: &SockAddrContext, c: Counter, addr: Addr<F>, port: u16) -> i32 {
    count(c);
    F::log_refused(ctx, addr, port);
    // Makes connect()/sendmsg() fail with ECONNREFUSED instead of EPERM.
    unsafe { h::bpf_set_retval(-ECONNREFUSED) };
    DENY
}

/// The backend for this socket: the shared choice (affinity, else a random
/// slot or Maglev place: a connect has no flow to hash yet, its source port
/// comes later) with the client named by its network namespace, a pod's
/// identity before its socket has an address.
#[inline(always)]
fn select_backend<K: Frontend>(
    ctx: &SockAddrContext,
    key: &K,
    svc: &SvcValue,
) -> Option<K::Backend> {
    let client = Client {
        id: if svc.flags & svc_flags::AFFINITY != 0 {
            unsafe { h::bpf_get_netns_cookie(ctx.as_ptr()) }
        } else {
            0
        },
        kind: affinity_client::NETNS_COOKIE,
    };
    select::choose(key, svc, client, None).map(|c| c.backend)
}

/// recvmsg4 / getpeername4.
#[inline(always)]
fn rev4(ctx: &SockAddrContext, c: Counter) {
    let sa = unsafe { &mut *ctx.sock_addr };
    if tcp_or_udp(sa).is_none() {
        return;
    }
    let (addr, port) = (sa.user_ip4, sa.user_port as u16);
    xlate_rev::<V4>(ctx, c, addr, port, |addr, port| {
        sa.user_ip4 = addr;
        sa.user_port = port as u32;
    });
}

/// recvmsg6 / getpeername6: an IPv4-mapped source is an IPv4 backend.
#[inline(always)]
fn rev6(ctx: &SockAddrContext, c: Counter) {
    let sa = unsafe { &mut *ctx.sock_addr };
    if tcp_or_udp(sa).is_none() {
        return;
    }
    let addr = load_ip6(sa);
    let port = sa.user_port as u16;
    match v4_mapped(&addr) {
        Some(addr4) => xlate_rev::<V4>(ctx, c, addr4, port, |svc, port| {
            // ::ffff:service: the prefix is already there.
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[3], svc) };
            sa.user_port = port as u32;
        }),
        None => xlate_rev::<V6>(ctx, c, addr, port, |svc, port| {
            store_ip6(sa, svc);
            sa.user_port = port as u32;
        }),
    }
}

/// The word of `ferry_skport_v1` holding `port` (network order) and its bit.
#[inline(always)]
fn port_bit(port: u16) -> (u32, u64) {
    let port = u16::from_be(port) as u32;
    (port / 64, 1 << (port % 64))
}

/// Records that a reverse entry for a backend on `port` may exist. The
/// word is written only the first time (an atomic OR: other CPUs set other
/// bits of it), so it stays shared in every CPU's cache.
#[inline(always)]
fn mark_port(port: u16) {
    let (word, bit) = port_bit(port);
    let Some(p) = SOCK_PORTS.get_ptr_mut(word) else {
        return;
    };
    // SAFETY: an 8-byte value of the array.
    unsafe {
        if *p & bit == 0 {
            crate::atomic::or(p, bit);
        }
    }
}

/// False when no socket was ever translated to a backend on `port`: no
/// reverse entry can name it.
#[inline(always)]
pub(crate) fn port_marked(port: u16) -> bool {
    let (word, bit) = port_bit(port);
    // SAFETY: an 8-byte value of the array.
    SOCK_PORTS
        .get_ptr(word)
        .is_some_and(|p| unsafe { *p } & bit != 0)
}

/// The reverse translation of the backend `addr`:`port` this socket sees:
/// `write` sets the service it stands for.
#[inline(always)]
fn xlate_rev<F: Family>(
    ctx: &SockAddrContext,
    c: Counter,
    addr: Addr<F>,
    port: u16,
    write: impl FnOnce(Addr<F>, u16),
) {
    if !port_marked(port) {
        return;
    }
    let cookie = unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(((svc_addr, svc_port, rev_nat_id), held)) = sock_rev::find::<F>(cookie, addr, port)
    else {
        return;
    };
    // Only while the service still exists: a stale entry must not rewrite
    // traffic from an address that has since become something else.
    match F::rev_nat(rev_nat_id) {
        Some((a, p)) if a == svc_addr && p == svc_port => {
            write(svc_addr, svc_port);
            count(c);
        }
        _ => sock_rev::forget::<F>(cookie, addr, port, held),
    }
}
