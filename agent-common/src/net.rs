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

/// An IPv6 address as the kernel stores it (`user_ip6`, `ip6h->daddr`):
/// four words, each holding four bytes in network order.
#[inline(always)]
pub const fn ip6_to_raw(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

#[inline(always)]
pub const fn ip6_from_raw(raw: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        raw[0].to_ne_bytes(),
        raw[1].to_ne_bytes(),
        raw[2].to_ne_bytes(),
        raw[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}
