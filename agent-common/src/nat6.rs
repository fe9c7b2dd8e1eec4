//! North-south IPv6 maps beside the IPv4 ones ([`crate::nat4`]): connection
//! tracking with NAT for IPv6 flows, the node's IPv6 addresses, the
//! cluster's. The semantics of every field are those of the IPv4 namesake;
//! only the addresses are 128 bits ([`crate::Ip6`]).

use crate::{Ip6, jhash_3words};

/// A flow as one packet sees it ([`crate::Ct4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct6Key {
    pub saddr: Ip6,
    pub daddr: Ip6,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`crate::ct_dir`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Ct6Key>() == 40);

/// What to write into a packet of the flow ([`crate::Ct4Value`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct6Value {
    pub nat_saddr: Ip6,
    pub nat_daddr: Ip6,
    pub nat_sport: u16,
    pub nat_dport: u16,
    pub backend_id: u32,
    pub rev_nat_id: u16,
    /// [`crate::ct_flags`].
    pub flags: u8,
    /// [`crate::tcp_flags`] seen so far.
    pub tcp_flags: u8,
    /// Seconds of CLOCK_MONOTONIC at the last packet.
    pub last_seen: u32,
}
const _: () = assert!(core::mem::size_of::<Ct6Value>() == 48);

/// An IPv6 address folded to one word (host order), for hashing.
/// The IPv6 destination options header that carries a DSR flow's frontend
/// from the node the client reached to the backend's node, inserted right
/// after the fixed header: Cilium's `struct dsr_opt_v6` (bpf/lib/nodeport.h)
/// byte for byte. One option, type [`DSR_OPT6_TYPE`] (0x1B: the two high
/// bits 00, "skip if unknown"; the third 0, "does not change en route"),
/// whose 20 data bytes are the address, the port and two zero bytes, which
/// make the header the 24 bytes (a multiple of 8) RFC 8200 requires.
/// Multi-byte fields raw (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DsrOpt6 {
    /// The header that follows (the one the fixed header named).
    pub next_hdr: u8,
    /// [`DSR_OPT6_HDR_LEN`]: 8-byte units after the first 8.
    pub hdr_len: u8,
    /// [`DSR_OPT6_TYPE`].
    pub opt_type: u8,
    /// [`DSR_OPT6_LEN`].
    pub opt_len: u8,
    pub addr: Ip6,
    pub port: u16,
    /// Zero.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<DsrOpt6>() == 24);

/// The destination options header's number (RFC 8200).
pub const NEXTHDR_DEST: u8 = 60;
pub const DSR_OPT6_TYPE: u8 = 0x1b;
/// The option's data length: the header less its 2-byte preamble and the
/// option's own type and length bytes.
pub const DSR_OPT6_LEN: u8 = 20;
/// Hdr Ext Len: (24 - 8) / 8.
pub const DSR_OPT6_HDR_LEN: u8 = 2;
/// The whole header's length.
pub const DSR_OPT6_SIZE: usize = 24;

#[inline(always)]
pub const fn fold_v6(a: &Ip6) -> u32 {
    u32::from_be(a[0]) ^ u32::from_be(a[1]) ^ u32::from_be(a[2]) ^ u32::from_be(a[3])
}

/// [`crate::flow_hash_v4`] for IPv6: the same lookup3 mix over the folded
/// addresses, so every node places a flow alike.
#[inline(always)]
pub const fn flow_hash_v6(saddr: &Ip6, daddr: &Ip6, sport: u16, dport: u16, proto: u8) -> u32 {
    let c = ((u16::from_be(sport) as u32) << 16) | u16::from_be(dport) as u32;
    jhash_3words(fold_v6(saddr), fold_v6(daddr), c, proto as u32)
}

/// The affinity client id of an IPv6 address ([`crate::affinity_client::IPV6`]):
/// 64 of its bits mixed with the other 64. Two clients that share an id share
/// a backend, nothing more.
#[inline(always)]
pub const fn affinity_id_v6(a: &Ip6) -> u64 {
    let hi = ((u32::from_be(a[0]) as u64) << 32) | u32::from_be(a[1]) as u64;
    let lo = ((u32::from_be(a[2]) as u64) << 32) | u32::from_be(a[3]) as u64;
    hi ^ lo.rotate_left(17)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no implicit padding (asserted above).
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for Ct6Value {}
    unsafe impl aya::Pod for DsrOpt6 {}
}
