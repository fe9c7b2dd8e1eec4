//! Destroys connected UDP sockets stuck on a removed backend (cilium#12859).
//!
//! connect4 rewrites a connected UDP socket's destination once; when that
//! backend leaves the service the socket would keep sending to it forever.
//! The agent lists the removed UDP backends in `ferry_dead4_v1` and runs
//! this iterator (`iter/udp`, once per network namespace): every socket
//! connected to a listed backend, and translated by ferry (its cookie has a
//! `ferry_sk4_v1` entry for that backend), is destroyed with the kfunc
//! `bpf_sock_destroy` (Linux 6.5 and later). The socket is disconnected with
//! ECONNABORTED (a blocked recv() returns it, the next send() fails with
//! EDESTADDRREQ); the application connects again and gets a live backend.

use agent_common::{Dead4Key, SOCK_DESTROY_CALL_MAGIC, SockRev4Key};
use aya_ebpf::helpers::generated as h;

use crate::maps::{DEAD_V4, SOCK_REV_V4};

/// `struct sock_common` offsets (unchanged for many kernel releases).
const SKC_DADDR: usize = 0;
const SKC_DPORT: usize = 12;
const SKC_FAMILY: usize = 16;
const SKC_STATE: usize = 18;
const AF_INET: u16 = 2;
/// A connected UDP socket is in TCP_ESTABLISHED.
const TCP_ESTABLISHED: u8 = 1;

/// `ctx` is `struct bpf_iter__udp *`: meta at 0, udp_sk at 8.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub fn ferry_udp_gc(ctx: *mut u64) -> i32 {
    // SAFETY: the verifier types every access below (BTF pointers).
    unsafe {
        let sk = core::ptr::read_volatile(ctx.add(1)) as *mut u8;
        if sk.is_null() {
            return 0;
        }
        let family = core::ptr::read_volatile(sk.add(SKC_FAMILY) as *const u16);
        let state = core::ptr::read_volatile(sk.add(SKC_STATE));
        if family != AF_INET || state != TCP_ESTABLISHED {
            return 0;
        }
        let addr = core::ptr::read_volatile(sk.add(SKC_DADDR) as *const u32);
        let port = core::ptr::read_volatile(sk.add(SKC_DPORT) as *const u16);
        let dead = Dead4Key {
            addr,
            port,
            _pad: 0,
        };
        if DEAD_V4.get(&dead).is_none() {
            return 0;
        }
        let rev = SockRev4Key {
            cookie: h::bpf_get_socket_cookie(sk as *mut _),
            addr,
            port,
            _pad: 0,
        };
        if SOCK_REV_V4.get(&rev).is_none() {
            return 0;
        }
        sock_destroy(sk);
    }
    0
}

/// `bpf_sock_destroy(sk)`, as a placeholder call the agent patches (see
/// [`SOCK_DESTROY_CALL_MAGIC`]).
#[inline(always)]
unsafe fn sock_destroy(sk: *mut u8) -> i64 {
    let ret: i64;
    // SAFETY: a call clobbers r0-r5, as declared.
    unsafe {
        core::arch::asm!(
            "call {magic}",
            magic = const SOCK_DESTROY_CALL_MAGIC,
            inlateout("r1") sk => _,
            lateout("r0") ret,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
        );
    }
    ret
}
