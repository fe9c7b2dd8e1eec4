//! Frame builders of the table tests: one call builds the IPv4 or the IPv6 frame, chosen by
//! the addresses' family, on top of the from-scratch builders of [`super`] (every checksum
//! computed with their own RFC 1071 code).

use std::net::{IpAddr, SocketAddr};

use agent_common::{DSR_OPT_LEN, DSR_OPT_TYPE};

use super::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    IPV6_HLEN, Ip6Opts, IpOpts, NEXTHDR_DEST, TCP_ACK, checksum, ethernet, icmp, icmp6, ipv4,
    ipv4_with_options, ipv6,
    net::{GW_MAC, ME_MAC, NODE_MAC, PEER_MAC, ip4, ip6},
    options_header, parse_ipv4, parse_ipv6, tcp, tcp6, udp, udp6,
};

fn v6s(a: SocketAddr) -> std::net::SocketAddrV6 {
    match a {
        SocketAddr::V6(a) => a,
        SocketAddr::V4(a) => panic!("{a} is no IPv6 socket address"),
    }
}

/// The Ethernet type of an IP packet, from its version nibble.
fn ethertype(ip_packet: &[u8]) -> u16 {
    if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    }
}

/// A frame arriving from outside (router -> node).
pub fn inbound(ip_packet: Vec<u8>) -> Vec<u8> {
    ethernet(NODE_MAC, PEER_MAC, ethertype(&ip_packet), &ip_packet)
}

/// A frame leaving the node (node -> router).
pub fn outbound(ip_packet: Vec<u8>) -> Vec<u8> {
    ethernet(PEER_MAC, NODE_MAC, ethertype(&ip_packet), &ip_packet)
}

/// The TCP/UDP source port of a frame of either family.
pub fn sport(frame: &[u8]) -> u16 {
    if frame.len() > 13 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IPV6 {
        parse_ipv6(frame).sport
    } else {
        parse_ipv4(frame).sport
    }
}

/// A packet routed through the FIB to the next hop `d0` -> gateway: its MACs, TTL or hop
/// limit one less (the IPv4 header checksum recomputed from scratch).
pub fn routed(mut p: Vec<u8>) -> Vec<u8> {
    if ethertype(&p) == ETH_P_IPV6 {
        p[7] -= 1;
    } else {
        p[8] -= 1;
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        p[10] = 0;
        p[11] = 0;
        let c = checksum(0, &p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    ethernet(GW_MAC, ME_MAC, ethertype(&p), &p)
}

/// An IP packet with the default header fields.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(IpOpts::default(), s, d, proto, l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(Ip6Opts::default(), s, d, proto, l4),
        _ => panic!("{src} -> {dst}: mixed families"),
    }
}

/// A TCP segment: seq 1000, ack 2000 when ACK is set.
pub fn tcp_segment(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ack = if flags & TCP_ACK != 0 { 2000 } else { 0 };
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => tcp(s, d, 1000, ack, flags, payload),
        _ => tcp6(v6s(src), v6s(dst), 1000, ack, flags, payload),
    }
}

pub fn tcp_packet(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_packet(
        src.ip(),
        dst.ip(),
        IPPROTO_TCP,
        &tcp_segment(src, dst, flags, payload),
    )
}

/// A UDP datagram (`with_checksum` false: the "no checksum" 0, which IPv6 forbids).
pub fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8], csum: bool) -> Vec<u8> {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => udp(s, d, payload, csum),
        _ => udp6(v6s(src), v6s(dst), payload, csum),
    }
}

pub fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    ip_packet(
        src.ip(),
        dst.ip(),
        IPPROTO_UDP,
        &udp_datagram(src, dst, payload, true),
    )
}

/// A UDP packet whose datagram carries no checksum.
pub fn udp_packet_nocsum(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    ip_packet(
        src.ip(),
        dst.ip(),
        IPPROTO_UDP,
        &udp_datagram(src, dst, payload, false),
    )
}

/// The kinds of ICMP / ICMPv6 errors the rows use, each family's type and code.
#[derive(Clone, Copy, Debug)]
pub enum IcmpErr {
    PortUnreachable,
    /// IPv4 fragmentation needed / IPv6 packet too big, with the MTU.
    TooBig(u32),
    /// Time exceeded in transit (TTL / hop limit).
    TimeExceeded,
    /// ICMPv6 parameter problem (erroneous header field) with its pointer.
    ParamProblem(u32),
    /// ICMPv6 destination unreachable, no route.
    NoRoute,
}

impl IcmpErr {
    fn type_code_rest(self, v6: bool) -> (u8, u8, u32) {
        match (self, v6) {
            (IcmpErr::PortUnreachable, false) => (3, 3, 0),
            (IcmpErr::PortUnreachable, true) => (1, 4, 0),
            // The next-hop MTU in the low 16 bits.
            (IcmpErr::TooBig(mtu), false) => (3, 4, mtu),
            (IcmpErr::TooBig(mtu), true) => (2, 0, mtu),
            (IcmpErr::TimeExceeded, false) => (11, 0, 0),
            (IcmpErr::TimeExceeded, true) => (3, 0, 0),
            (IcmpErr::ParamProblem(ptr), true) => (4, 0, ptr),
            (IcmpErr::NoRoute, true) => (1, 0, 0),
            (e, false) => panic!("{e:?} has no IPv4 row"),
        }
    }
}

/// An ICMP error packet from `from` to `to` quoting `quote`, with the header fields Linux gives
/// its errors (IPv4: precedence "internetwork control", no DF, the IP id `id`; IPv6: traffic
/// class and flow label 0; TTL / hop limit 64).
pub fn icmp_error(from: IpAddr, to: IpAddr, err: IcmpErr, quote: &[u8], id: u16) -> Vec<u8> {
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            let (ty, code, rest) = err.type_code_rest(false);
            ipv4(
                icmp_opts(id),
                f,
                t,
                IPPROTO_ICMP,
                &icmp(ty, code, rest, quote),
            )
        }
        _ => {
            let (f, t) = (ip6(from), ip6(to));
            let (ty, code, rest) = err.type_code_rest(true);
            ipv6(
                icmp6_opts(),
                f,
                t,
                IPPROTO_ICMPV6,
                &icmp6(f, t, ty, code, rest, quote),
            )
        }
    }
}

/// The IPv4 header fields of the ICMP errors Linux sends (and ferry's reject).
pub fn icmp_opts(id: u16) -> IpOpts {
    IpOpts {
        tos: 0xc0,
        id,
        dont_fragment: false,
        ttl: 64,
    }
}

/// The IPv6 header fields of ICMPv6 errors (ferry's reject too).
pub fn icmp6_opts() -> Ip6Opts {
    Ip6Opts {
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 64,
    }
}

/// The ICMP port unreachable ferry must answer `orig` (an inbound frame) with, from `from` to
/// `to`, sent back where it came from: IPv4 quotes the IP header and 8 bytes; IPv6 as much of
/// the packet (not its Ethernet padding) as fits in 1280 bytes.
pub fn port_unreachable(orig: &[u8], from: IpAddr, to: IpAddr) -> Vec<u8> {
    let ip = &orig[ETH_HLEN..];
    let quote = match from {
        IpAddr::V4(_) => &ip[..28],
        IpAddr::V6(_) => {
            let len = (IPV6_HLEN + u16::from_be_bytes([ip[4], ip[5]]) as usize).min(ip.len());
            &ip[..len.min(1280 - IPV6_HLEN - 8)]
        }
    };
    let dst: [u8; 6] = orig[6..12].try_into().unwrap();
    let src: [u8; 6] = orig[0..6].try_into().unwrap();
    let p = icmp_error(from, to, IcmpErr::PortUnreachable, quote, 0);
    ethernet(dst, src, ethertype(&p), &p)
}

/// The IPv4 DSR option naming `frontend`, byte for byte: type 0x9a, length 8, port, address.
pub fn dsr_option(frontend: SocketAddr) -> [u8; 8] {
    let mut o = [DSR_OPT_TYPE, DSR_OPT_LEN, 0, 0, 0, 0, 0, 0];
    o[2..4].copy_from_slice(&frontend.port().to_be_bytes());
    o[4..8].copy_from_slice(&ip4(frontend.ip()).octets());
    o
}

/// The IPv6 DSR destination options header naming `frontend`, byte for byte as Cilium's
/// `struct dsr_opt_v6` (bpf/lib/nodeport.h): next header, Hdr Ext Len 2 (24 bytes), option
/// type 0x1B, option length 20, the 16-byte address, the port, two zero bytes.
pub fn dsr_header(next: u8, frontend: SocketAddr) -> Vec<u8> {
    let mut h = vec![next, 2, 0x1b, 20];
    h.extend_from_slice(&ip6(frontend.ip()).octets());
    h.extend_from_slice(&frontend.port().to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    assert_eq!(h.len(), 24);
    // The same bytes as the generic builder's (no padding needed: 24 is a multiple of 8).
    assert_eq!(h, options_header(next, &h[2..]));
    h
}

/// The packet `src` -> `dst` carrying `l4` (checksummed for `src`/`dst`: options and extension
/// headers are not in the pseudo-header) with the DSR option (IPv4) or destination options
/// header (IPv6) naming `frontend`; `ttl` is the TTL or hop limit.
pub fn dsr_packet_ttl(
    ttl: u8,
    src: SocketAddr,
    dst: SocketAddr,
    frontend: SocketAddr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let opts = IpOpts {
                ttl,
                ..IpOpts::default()
            };
            ipv4_with_options(opts, s, d, proto, &dsr_option(frontend), l4)
        }
        (s, d) => {
            let opts = Ip6Opts {
                hop_limit: ttl,
                ..Ip6Opts::default()
            };
            let mut p = dsr_header(proto, frontend);
            p.extend_from_slice(l4);
            ipv6(opts, ip6(s), ip6(d), NEXTHDR_DEST, &p)
        }
    }
}

pub fn dsr_packet(
    src: SocketAddr,
    dst: SocketAddr,
    frontend: SocketAddr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    dsr_packet_ttl(64, src, dst, frontend, proto, l4)
}

/// A TCP packet with the DSR option/header.
pub fn dsr_tcp(src: SocketAddr, dst: SocketAddr, frontend: SocketAddr, flags: u8) -> Vec<u8> {
    dsr_packet(
        src,
        dst,
        frontend,
        IPPROTO_TCP,
        &tcp_segment(src, dst, flags, b""),
    )
}

/// A UDP packet with the DSR option/header.
pub fn dsr_udp(src: SocketAddr, dst: SocketAddr, frontend: SocketAddr, payload: &[u8]) -> Vec<u8> {
    dsr_packet(
        src,
        dst,
        frontend,
        IPPROTO_UDP,
        &udp_datagram(src, dst, payload, true),
    )
}

/// The IPv4 packet carrying `options` (any bytes, a multiple of 4) before a SYN.
pub fn syn_with_options(src: SocketAddr, dst: SocketAddr, options: &[u8]) -> Vec<u8> {
    ipv4_with_options(
        IpOpts::default(),
        ip4(src.ip()),
        ip4(dst.ip()),
        IPPROTO_TCP,
        options,
        &tcp_segment(src, dst, super::TCP_SYN, b""),
    )
}

/// `got` and `want` side by side, 16 bytes a line, the differing lines marked, for a failing
/// row's message.
pub fn hex_diff(got: &[u8], want: &[u8]) -> String {
    let mut s = format!("got {} bytes, want {} bytes\n", got.len(), want.len());
    let line = |b: &[u8], at: usize| -> String {
        let end = (at + 16).min(b.len());
        if at >= b.len() {
            return " ".repeat(47);
        }
        let hex: Vec<String> = b[at..end].iter().map(|x| format!("{x:02x}")).collect();
        format!("{:<47}", hex.join(" "))
    };
    for at in (0..got.len().max(want.len())).step_by(16) {
        let (g, w) = (line(got, at), line(want, at));
        let mark = if g == w { ' ' } else { '!' };
        s.push_str(&format!("{mark} {at:04x}  got {g} | want {w}\n"));
    }
    s
}
