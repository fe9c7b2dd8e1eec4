//! ferry's kernel programs.
//!
//! Socket-layer load balancing (cgroup sock_addr hooks): a connect() or an
//! unconnected UDP sendmsg() to a service frontend is rewritten to a backend
//! before any packet exists, so pod-to-service traffic needs no per-packet
//! NAT. recvmsg() and getpeername() translate the backend back to the
//! service, so the application only ever sees the address it dialled.
//!
//! North-south load balancing (TC on the node's devices, `tc.rs`): traffic
//! from outside the cluster to NodePorts, externalIPs and LoadBalancer IPs is
//! translated per packet with connection tracking, for IPv4 and IPv6;
//! `xdp.rs` is its IPv4 fast path before the skb (`--acceleration`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod ct;
#[cfg(target_arch = "bpf")]
mod drop;
#[cfg(target_arch = "bpf")]
mod dsr;
#[cfg(target_arch = "bpf")]
mod dsr6;
#[cfg(target_arch = "bpf")]
mod event;
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod fib;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod icmp6;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nexthop;
#[cfg(target_arch = "bpf")]
mod nodeport;
#[cfg(target_arch = "bpf")]
mod ns;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod pod_lb;
#[cfg(target_arch = "bpf")]
mod ratelimit;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod side;
#[cfg(target_arch = "bpf")]
mod sock_destroy;
#[cfg(target_arch = "bpf")]
mod sock_lb;
#[cfg(target_arch = "bpf")]
mod sock_release;
#[cfg(target_arch = "bpf")]
mod sock_rev;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod verdict;
#[cfg(target_arch = "bpf")]
mod xdp;
#[cfg(target_arch = "bpf")]
mod xdp6;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this is never linked in.
    loop {}
}

/// `cargo clippy --workspace` builds this crate for the host, where it is empty.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
