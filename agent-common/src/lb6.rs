//! IPv6 load-balancing maps beside the IPv4 ones (Cilium's split: lb6_*).
//! Same layout rules and meanings as [`crate::lb4`]; the frontend value
//! ([`crate::SvcValue`]), the affinity map of the socket layer and the
//! Maglev tables are shared: rev-NAT ids and backend ids are one space for
//! both families, so an id names one entry of one family's map.
//!
//! An address is four 32-bit words exactly as the kernel holds them
//! (`bpf_sock_addr.user_ip6`, `ipv6hdr.saddr`): network byte order, word
//! by word. A dual-stack socket's IPv4-mapped destination (`::ffff:a.b.c.d`)
//! is looked up in the IPv4 maps, never here.

/// An IPv6 address in map form (see the module doc).
pub type Ip6 = [u32; 4];

/// Key of the IPv6 service map ([`crate::Svc4Key`]'s fields, 128-bit address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc6Key {
    pub addr: Ip6,
    pub port: u16,
    /// 0 = the frontend, 1..=count = backend slots (host order).
    pub slot: u16,
    pub proto: u8,
    /// [`crate::scope`].
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Svc6Key>() == 24);

/// Value of the IPv6 backend map (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: Ip6,
    pub port: u16,
    pub proto: u8,
    /// [`crate::backend_state`].
    pub state: u8,
    /// [`crate::backend_flags`].
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Backend6>() == 24);

/// Value of the IPv6 reverse-NAT map (key: rev-NAT id, u16).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat6 {
    pub addr: Ip6,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat6>() == 20);

/// Key of the IPv6 socket reverse-translation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRev6Key {
    pub cookie: u64,
    pub addr: Ip6,
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockRev6Key>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRev6 {
    pub addr: Ip6,
    pub port: u16,
    pub rev_nat_id: u16,
}
const _: () = assert!(core::mem::size_of::<SockRev6>() == 20);

/// [`crate::SockSlot4`] of IPv6 (`maps::SOCK_SLOTS_V6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockSlot6 {
    pub cookie: u64,
    pub backend: Ip6,
    pub addr: Ip6,
    pub backend_port: u16,
    pub port: u16,
    pub rev_nat_id: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockSlot6>() == 48);

/// Key of the IPv6 membership map ([`crate::Member4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member6Key {
    pub rev_nat_id: u16,
    pub proto: u8,
    pub _pad: u8,
    pub addr: Ip6,
    pub port: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<Member6Key>() == 24);

/// Key of the IPv6 dead-backend map ([`crate::Dead4Key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dead6Key {
    pub addr: Ip6,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Dead6Key>() == 20);

/// [`crate::GuardDest4`] for IPv6 packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuardDest6 {
    pub addr: Ip6,
    pub port: u16,
    pub rev_nat_id: u16,
}
const _: () = assert!(core::mem::size_of::<GuardDest6>() == 20);

/// The egress guard's per-socket record for the socket's IPv6 packets
/// ([`crate::SockGuard4`]; a dual-stack socket's IPv4-mapped destinations
/// send IPv4 packets and are recorded in the IPv4 record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockGuard6 {
    /// [`crate::guard_flags`].
    pub flags: u8,
    pub _pad: [u8; 3],
    pub conn: GuardDest6,
    pub msg: GuardDest6,
}
const _: () = assert!(core::mem::size_of::<SockGuard6>() == 44);

/// Data of the IPv6 source-range LPM trie key ([`crate::SrcRange4`]):
/// the prefix covers `rev_nat_id` and its padding
/// ([`crate::SRC_RANGE_PREFIX_BITS`]) plus the CIDR's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcRange6 {
    pub rev_nat_id: u16,
    pub _pad: u16,
    pub addr: Ip6,
}
const _: () = assert!(core::mem::size_of::<SrcRange6>() == 20);

/// The first three words of an IPv4-mapped IPv6 address (`::ffff:0:0/96`)
/// as the kernel holds them: a dual-stack socket dialling an IPv4 address.
pub const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// The IPv4 address (map form) of an IPv4-mapped IPv6 address.
#[inline(always)]
pub fn v4_mapped(addr: &Ip6) -> Option<u32> {
    (addr[0] == V4_MAPPED_PREFIX[0]
        && addr[1] == V4_MAPPED_PREFIX[1]
        && addr[2] == V4_MAPPED_PREFIX[2])
        .then_some(addr[3])
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no implicit padding (asserted above).
    unsafe impl aya::Pod for Svc6Key {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for RevNat6 {}
    unsafe impl aya::Pod for SockRev6Key {}
    unsafe impl aya::Pod for SockRev6 {}
    unsafe impl aya::Pod for SockSlot6 {}
    unsafe impl aya::Pod for Member6Key {}
    unsafe impl aya::Pod for Dead6Key {}
    unsafe impl aya::Pod for SockGuard6 {}
    unsafe impl aya::Pod for SrcRange6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_reads_the_low_word() {
        let mapped = [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([10, 96, 0, 10]),
        ];
        assert_eq!(
            v4_mapped(&mapped),
            Some(u32::from_ne_bytes([10, 96, 0, 10]))
        );
        let native = [u32::from_ne_bytes([0xfd, 0, 0, 0]), 0, 0, 1];
        assert_eq!(v4_mapped(&native), None);
    }
}
