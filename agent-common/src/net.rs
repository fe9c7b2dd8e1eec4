//! Conversions between host values and the network-order fields in the maps.

/// An IPv4 address as the kernel stores it (`user_ip4`, `iph->daddr`).
#[inline(always)]
pub const fn ip4_to_raw(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

#[inline(always)]
pub const fn ip4_from_raw(raw: u32) -> [u8; 4] {
    raw.to_ne_bytes()
}

/// A port as the kernel stores it (network order in a u16).
#[inline(always)]
pub const fn port_to_raw(port: u16) -> u16 {
    port.to_be()
}

#[inline(always)]
pub const fn port_from_raw(raw: u16) -> u16 {
    u16::from_be(raw)
}
