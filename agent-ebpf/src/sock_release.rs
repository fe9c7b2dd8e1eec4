//! Socket release (cgroup/sock_release, both families): forgets a closing
//! socket's reverse entry, so that the socket reverse maps
//! (`ferry_sk4_v1`, `ferry_sk6_v1`) hold the live translated sockets only.
//!
//! Without it nothing ever deleted an entry: at thousands of short
//! connections a second each connect's insert took a cold node of the
//! 262,144 (and, once the map was full, evicted under the LRU's global
//! lock). With it a connect's insert pops a node a closed socket just gave
//! back, from the CPU's own free list: connect4/6 went from ~1,060 to ~670
//! ns per connection (bpf_stats, east-west bench at 10,000 Services), and
//! this hook costs ~390 ns per connection (the client's delete plus the
//! server socket's precheck), so the CPU time is about even; what it buys is
//! a reverse map of live sockets, whose entries churn no longer evicts.
//!
//! A connected socket's peer is the backend its connect or sendmsg hook
//! wrote, so its key is rebuilt from the socket alone. Every socket in the
//! cgroup comes through here when it closes: one that ferry never sent to a
//! backend leaves after a read of the port bitmap (`ferry_skport_v1`, the
//! backend ports the forward hooks have used). What this cannot find is left
//! to the LRU: an unconnected UDP socket's entries (one per Service it sent
//! to, its peer is unset), a socket connected again elsewhere since, and a
//! TCP socket whose failed connect cleared its peer.

use agent_common::{Ip6, proto, v4_mapped};
use aya_ebpf::{
    EbpfContext as _, bindings::bpf_sock, helpers::generated as h, macros::cgroup_sock,
    programs::SockContext,
};

use crate::{
    family::{Family, V4, V6},
    sock_lb::port_marked,
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
    if !port_marked(port) {
        return;
    }
    let l4 = sk.protocol as u8;
    if l4 != proto::TCP && l4 != proto::UDP {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { h::bpf_get_socket_cookie(ctx.as_ptr()) };
    match sk.family {
        AF_INET => V4::rev_remove(&V4::rev_key(cookie, sk.dst_ip4, port)),
        AF_INET6 => {
            let addr = load_dst_ip6(sk);
            // A dual-stack socket connected to an IPv4 backend: its entry
            // is an IPv4 one (sock_lb.rs).
            match v4_mapped(&addr) {
                Some(addr4) => V4::rev_remove(&V4::rev_key(cookie, addr4, port)),
                None => V6::rev_remove(&V6::rev_key(cookie, addr, port)),
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
