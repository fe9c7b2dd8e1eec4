//! Socket-layer load balancing for IPv4 (cgroup sock_addr hooks).
//!
//! Forward path (connect4, sendmsg4): look the destination up as a frontend
//! (slot 0); refuse at once when it has no usable backend, as kube-proxy's
//! REJECT rule does, or when it is a ClusterIP on a port no Service defines;
//! otherwise pick a backend (select.rs, shared with the north-south path:
//! affinity, else a random slot), rewrite the destination and remember, per
//! socket, which service the backend stands for. What kube-proxy drops
//! instead (a Local policy without a local endpoint, a client outside a
//! LoadBalancer's source ranges) is recorded in the socket's storage for the
//! egress guard (guard.rs), which sees each packet's source address.
//!
//! Reverse path (recvmsg4, getpeername4): rewrite a backend source back to
//! the service the socket dialled.

use agent_common::{
    Backend4, GuardDest4, SockGuard4, SockRev4, SockRev4Key, Svc4Key, SvcValue, affinity_client,
    guard_flags, proto, scope, stats::Counter, svc_flags,
};
use aya_ebpf::{
    EbpfContext as _, helpers::generated as h, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use aya_log_ebpf::debug;

use crate::{
    maps::{REV_NAT_V4, SOCK_GUARD, SOCK_REV_V4, count},
    select::{self, Client, lookup_svc},
};

/// Hook verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn ferry_conn4(ctx: SockAddrContext) -> i32 {
    xlate_fwd(
        &ctx,
        true,
        Counter::ConnectTranslated,
        Counter::ConnectRefused,
    )
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_send4(ctx: SockAddrContext) -> i32 {
    xlate_fwd(
        &ctx,
        false,
        Counter::SendmsgTranslated,
        Counter::SendmsgRefused,
    )
}

#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_recv4(ctx: SockAddrContext) -> i32 {
    xlate_rev(&ctx, Counter::RecvmsgRevNat);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn ferry_peer4(ctx: SockAddrContext) -> i32 {
    xlate_rev(&ctx, Counter::GetpeernameRevNat);
    ALLOW
}

#[inline(always)]
fn xlate_fwd(ctx: &SockAddrContext, connect: bool, translated: Counter, refused: Counter) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let l4 = sa.protocol as u8;
    if l4 != proto::TCP && l4 != proto::UDP {
        return ALLOW;
    }
    let addr = sa.user_ip4;
    // Network order in the low 16 bits.
    let port = sa.user_port as u16;
    let mut key = Svc4Key {
        addr,
        port,
        slot: 0,
        proto: l4,
        scope: scope::EXTERNAL,
        _pad: [0; 2],
    };
    let Some(mut svc) = lookup_svc(&key) else {
        // kube-proxy's cluster-ips-check: a ClusterIP on a port (or
        // protocol) no Service defines is refused, not sent out as is. The
        // agent marks each ClusterIP with port 0 / protocol 0.
        key.port = 0;
        key.proto = 0;
        if lookup_svc(&key).is_some() {
            return refuse(ctx, refused, addr, port);
        }
        return ALLOW;
    };
    // The frontend's own entry: its source ranges are keyed by its id.
    let (ext_flags, ext_rev_nat_id) = (svc.flags, svc.rev_nat_id);
    if svc.flags & svc_flags::TWO_SCOPES != 0 {
        // externalTrafficPolicy Local: in-cluster clients use every endpoint.
        key.scope = scope::INTERNAL;
        svc = lookup_svc(&key).unwrap_or_default();
    }
    if svc.count == 0 {
        if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
            return let_through_to_drop(ctx, refused, addr, port);
        }
        return refuse(ctx, refused, addr, port);
    }
    let Some(backend) = select_backend(ctx, &key, &svc) else {
        count(Counter::BackendMiss);
        return refuse(ctx, refused, addr, port);
    };
    let ranged = (ext_flags & svc_flags::SOURCE_RANGES != 0).then_some(GuardDest4 {
        addr: backend.addr,
        port: backend.port,
        rev_nat_id: ext_rev_nat_id,
    });
    if !record_ranges(ctx, connect, ranged) {
        count(Counter::GuardRecordFailed);
        return refuse(ctx, refused, addr, port);
    }

    let rev_key = SockRev4Key {
        cookie: unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let rev = SockRev4 {
        addr,
        port,
        rev_nat_id: svc.rev_nat_id,
    };
    if SOCK_REV_V4.insert(&rev_key, &rev, 0).is_err() {
        count(Counter::SockRevUpdateFailed);
    }
    // 4-byte stores: the verifier rejects narrower writes to these fields.
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    count(translated);
    ALLOW
}

/// The socket's guard record, made empty if it has none (null: no memory).
#[inline(always)]
fn guard_record(ctx: &SockAddrContext) -> *mut SockGuard4 {
    let mut init = SockGuard4::default();
    SOCK_GUARD.get_or_insert_ptr_mut(ctx, Some(&mut init))
}

/// A Local traffic policy without a local endpoint: kube-proxy drops the
/// traffic, so the destination stays the ClusterIP and the socket is marked
/// for the egress guard, which drops its packets to ClusterIPs.
#[inline(always)]
fn let_through_to_drop(ctx: &SockAddrContext, refused: Counter, addr: u32, port: u16) -> i32 {
    let g = guard_record(ctx);
    if g.is_null() {
        // Unmarked, the packets would leave: refuse instead.
        count(Counter::GuardRecordFailed);
        return refuse(ctx, refused, addr, port);
    }
    // SAFETY: the kernel's storage value for this socket.
    unsafe { (*g).flags |= guard_flags::NO_LOCAL };
    count(Counter::SockNoLocal);
    ALLOW
}

/// Records (or clears) the socket's source-ranged destination for this
/// connect (`conn`) or datagram (`msg`). False: the record was needed and
/// could not be made.
#[inline(always)]
fn record_ranges(ctx: &SockAddrContext, connect: bool, ranged: Option<GuardDest4>) -> bool {
    let slot = if connect {
        guard_flags::RANGES_CONN
    } else {
        guard_flags::RANGES_MSG
    };
    let Some(dest) = ranged else {
        // Most sockets have no record: one lookup that finds nothing.
        let g = SOCK_GUARD.get_ptr_mut(ctx);
        if !g.is_null() {
            unsafe { (*g).flags &= !slot };
        }
        return true;
    };
    let g = guard_record(ctx);
    if g.is_null() {
        return false;
    }
    // SAFETY: the kernel's storage value for this socket.
    unsafe {
        if connect {
            (*g).conn = dest;
        } else {
            (*g).msg = dest;
        }
        (*g).flags |= slot;
    }
    true
}

#[inline(always)]
fn refuse(ctx: &SockAddrContext, c: Counter, addr: u32, port: u16) -> i32 {
    count(c);
    debug!(
        ctx,
        "no usable backend for {:i}:{}",
        u32::from_be(addr),
        u16::from_be(port)
    );
    // Makes connect()/sendmsg() fail with ECONNREFUSED instead of EPERM.
    unsafe { h::bpf_set_retval(-ECONNREFUSED) };
    DENY
}

/// The backend for this socket: the shared choice (affinity, else a random
/// slot or Maglev place: a connect has no flow to hash yet, its source port
/// comes later) with the client named by its network namespace, a pod's
/// identity before its socket has an address.
#[inline(always)]
fn select_backend(ctx: &SockAddrContext, key: &Svc4Key, svc: &SvcValue) -> Option<Backend4> {
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

#[inline(always)]
fn xlate_rev(ctx: &SockAddrContext, c: Counter) {
    let sa = unsafe { &mut *ctx.sock_addr };
    let l4 = sa.protocol as u8;
    if l4 != proto::TCP && l4 != proto::UDP {
        return;
    }
    let key = SockRev4Key {
        cookie: unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        _pad: 0,
    };
    let Some(rev) = SOCK_REV_V4.get_ptr(&key).map(|p| unsafe { *p }) else {
        return;
    };
    // Only while the service still exists: a stale entry must not rewrite
    // traffic from an address that has since become something else.
    match REV_NAT_V4.get_ptr(&rev.rev_nat_id).map(|p| unsafe { *p }) {
        Some(svc) if svc.addr == rev.addr && svc.port == rev.port => {
            sa.user_ip4 = rev.addr;
            sa.user_port = rev.port as u32;
            count(c);
        }
        _ => {
            let _ = SOCK_REV_V4.remove(&key);
        }
    }
}
