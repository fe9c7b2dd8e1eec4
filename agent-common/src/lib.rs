//! The ABI shared by ferry's kernel programs (`agent-ebpf`) and its agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, and a
//! compile-time size assertion: the kernel compares keys byte for byte, so a
//! padding hole with garbage in it would be a lookup that silently misses.
//!
//! Byte order: addresses and ports are stored exactly as the kernel hands them
//! to the programs (network order), so the datapath never swaps bytes. The
//! agent converts with the helpers in [`net`].
#![no_std]

pub mod clock;
pub mod drop;
pub mod event;
pub mod lb4;
pub mod lb6;
pub mod maps;
pub mod nat4;
pub mod nat6;
pub mod net;
pub mod nexthop;
pub mod stats;

pub use lb4::*;
pub use lb6::*;
pub use nat4::*;
pub use nat6::*;
pub use nexthop::*;

/// IANA protocol numbers used in keys (same values as `IPPROTO_*`).
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}
