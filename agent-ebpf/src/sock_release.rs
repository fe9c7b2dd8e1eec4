//! Socket release (cgroup/sock_release, both families): forgets a closing
//! socket's reverse translation (sock_rev.rs), so that the socket slots
//! (`ferry_skc4_v1`, `ferry_skc6_v1`) and the reverse maps (`ferry_sk4_v1`,
//! `ferry_sk6_v1`) hold live translated sockets only: a slot left taken
//! would send every later socket that maps to it to the reverse map.
//!
//! A connected socket's slot is found by its cookie alone; its reverse map
//! entry, when its slot was taken, by the peer its connect hook wrote.
//! Every socket in the cgroup comes through here when it closes: one that
//! ferry never sent to a backend leaves after a read of the port bitmap
//! (`ferry_skport_v1`, the backend ports the forward hooks have used). A
//! socket without a peer (a connect that failed before the handshake, a
//! disconnected UDP socket, a listener) has its slots checked by cookie.
//! What this cannot find is left to the LRU: an unconnected UDP socket's
//! entries (one per Service it sent to), and the map entry of a socket
//! connected again elsewhere since. A UDP socket connected again to what
//! ferry does not translate has its slot freed by that connect (sock_lb.rs,
//! `leave_slot`), as its close would stop at the port bitmap. A slot left
//! taken all the same would cost later sockets of that slot the reverse
//! map, never a wrong answer (a slot answers only for its cookie, and
//! cookies are not reused).

use agent_common::{Ip6, proto, v4_mapped};
use aya_ebpf::{
    EbpfContext as _, bindings::bpf_sock, helpers::generated as h, macros::cgroup_sock,
    programs::SockContext,
};

use crate::{
    family::{Family, V4, V6},
    sock_lb::port_marked,
    sock_rev,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[cgroup_sock(sock_release)]
pub fn ferry_release(ctx: SockContext) -> i32 {
    release(&ctx);
    // The hook cannot refuse a close; 1 is its only verdict.
    1
}

#[inline(always)]
fn release(ctx: &SockContext) {
    // SAFETY: the kernel hands every cgroup sock program a valid context.
    let sk = unsafe { &*ctx.sock };
    // Network order, as the forward hooks marked it.
    let port = unsafe { core::ptr::read_volatile(&sk.dst_port) };
    // No peer (a connect that failed early, a disconnected UDP socket, a
    // listener): only a slot can be left, whichever its backend was.
    let peerless = port == 0;
    if !peerless && !port_marked(port) {
        return;
    }
    let l4 = sk.protocol as u8;
    if l4 != proto::TCP && l4 != proto::UDP {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) };
    if peerless {
        if !V4::slot_free(cookie) && sk.family == AF_INET6 {
            V6::slot_free(cookie);
        }
        return;
    }
    match sk.family {
        AF_INET => sock_rev::release::<V4>(cookie, sk.dst_ip4, port),
        AF_INET6 => {
            let addr = load_dst_ip6(sk);
            // A dual-stack socket connected to an IPv4 backend: its entry
            // is an IPv4 one (sock_lb.rs).
            match v4_mapped(&addr) {
                Some(addr4) => sock_rev::release::<V4>(cookie, addr4, port),
                None => sock_rev::release::<V6>(cookie, addr, port),
            }
        }
        _ => {}
    }
}

/// The peer's IPv6 address, one 4-byte load per word (the width the
/// verifier knows these fields by).
#[inline(always)]
fn load_dst_ip6(sk: &bpf_sock) -> Ip6 {
    // SAFETY: fields of the kernel's context.
    unsafe {
        [
            core::ptr::read_volatile(&sk.dst_ip6[0]),
            core::ptr::read_volatile(&sk.dst_ip6[1]),
            core::ptr::read_volatile(&sk.dst_ip6[2]),
            core::ptr::read_volatile(&sk.dst_ip6[3]),
        ]
    }
}
