//! Destroys connected UDP sockets stuck on a removed backend (cilium#12859).
//!
//! connect4 rewrites a connected UDP socket's destination once; when that
//! backend leaves the service the socket would keep sending to it forever.
//! The agent lists the removed UDP backends in `ferry_dead4_v1` and runs
//! this iterator (`iter/udp`, once per network namespace): every socket
//! connected to a listed backend, and translated by ferry (its slot or a
//! reverse entry names that backend: sock_rev.rs), is destroyed with the kfunc
//! `bpf_sock_destroy` (Linux 6.5 and later). The socket is disconnected with
//! ECONNABORTED (a blocked recv() returns it, the next send() fails with
//! EDESTADDRREQ); the application connects again and gets a live backend.
//!
//! IPv6 sockets alike: an AF_INET6 socket connected to an IPv4-mapped
//! address (a dual-stack socket dialling an IPv4 service) is checked
//! against the IPv4 maps with the mapped address's low word, as connect6
//! recorded it; one connected to a native IPv6 backend against
//! `ferry_dead6_v1` and the IPv6 slots and reverse map.

use agent_common::{Dead4Key, Dead6Key, Ip6, SOCK_DESTROY_CALL_MAGIC, v4_mapped};
use aya_ebpf::helpers::generated as h;

use crate::{
    family::{V4, V6},
    maps::{DEAD_V4, DEAD_V6},
    sock_rev,
};

/// `struct sock_common` offsets (unchanged for many kernel releases).
const SKC_DADDR: usize = 0;
const SKC_DPORT: usize = 12;
const SKC_FAMILY: usize = 16;
const SKC_STATE: usize = 18;
/// `skc_v6_daddr` (struct in6_addr) follows skc_bound_dev_if, the bind
/// node, skc_prot and skc_net: byte 56 with CONFIG_NET_NS and CONFIG_IPV6
/// (Linux 6.18's BTF says so; the same since skc_v6_daddr moved into
/// sock_common in 3.13). A kernel without network namespaces would place
/// it 8 bytes earlier; the verifier checks the access against BTF, so a
/// wrong offset reads another field of the struct, never out of it.
const SKC_V6_DADDR: usize = 56;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
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
        if state != TCP_ESTABLISHED {
            return 0;
        }
        let port = core::ptr::read_volatile(sk.add(SKC_DPORT) as *const u16);
        let translated = match family {
            AF_INET => {
                let addr = core::ptr::read_volatile(sk.add(SKC_DADDR) as *const u32);
                dead_v4(sk, addr, port)
            }
            AF_INET6 => {
                let w = sk.add(SKC_V6_DADDR) as *const u32;
                let addr: Ip6 = [
                    core::ptr::read_volatile(w),
                    core::ptr::read_volatile(w.add(1)),
                    core::ptr::read_volatile(w.add(2)),
                    core::ptr::read_volatile(w.add(3)),
                ];
                match v4_mapped(&addr) {
                    Some(addr4) => dead_v4(sk, addr4, port),
                    None => dead_v6(sk, addr, port),
                }
            }
            _ => false,
        };
        if !translated {
            return 0;
        }
        sock_destroy(sk);
    }
    0
}

/// The socket's destination is a dead IPv4 backend ferry translated it to.
#[inline(always)]
fn dead_v4(sk: *mut u8, addr: u32, port: u16) -> bool {
    let dead = Dead4Key {
        addr,
        port,
        _pad: 0,
    };
    // SAFETY: only tested for presence.
    if unsafe { DEAD_V4.get(&dead) }.is_none() {
        return false;
    }
    // SAFETY: `sk` is the iterator's socket (a BTF pointer).
    let cookie = unsafe { h::bpf_get_socket_cookie(sk as *mut _) };
    sock_rev::find::<V4>(cookie, addr, port).is_some()
}

/// The socket's destination is a dead IPv6 backend ferry translated it to.
#[inline(always)]
fn dead_v6(sk: *mut u8, addr: Ip6, port: u16) -> bool {
    let dead = Dead6Key {
        addr,
        port,
        _pad: 0,
    };
    // SAFETY: only tested for presence.
    if unsafe { DEAD_V6.get(&dead) }.is_none() {
        return false;
    }
    // SAFETY: `sk` is the iterator's socket (a BTF pointer).
    let cookie = unsafe { h::bpf_get_socket_cookie(sk as *mut _) };
    sock_rev::find::<V6>(cookie, addr, port).is_some()
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
