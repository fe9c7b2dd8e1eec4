//! IPv6 for the packet fuzzer: the fixture's IPv6 addresses, reading IPv6 frames the way
//! `parse::ipv6` in the programs does (at most four extension headers, later fragments and
//! routing headers with segments left not looked at, UDP without checksum not looked at),
//! checksums computed from scratch over the pseudo-header, what a translation may change, and
//! the generator of IPv6 frames (valid and broken).

use std::net::{Ipv6Addr, SocketAddrV6};

use agent_common::{
    Ct6Key, Ct6Value,
    net::{ip6_from_raw, port_from_raw},
};

use super::{fixture::Endpoint6, rng::Rng};
use crate::progtest::{
    ETH_HLEN, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, Ip6Opts,
    NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_ROUTING, TCP_ACK, TCP_SYN, fold, icmp6,
    ipv6, options_header, pseudo_sum_v6, routing_header, sum, tcp6, udp6,
};

/// `a:b:c::d`.
const fn addr(a: u16, b: u16, c: u16, d: u16) -> Ipv6Addr {
    Ipv6Addr::new(a, b, c, 0, 0, 0, 0, d)
}

pub const NODE: Ipv6Addr = addr(0xfd00, 0x18, 0, 2);
pub const CLIENT: Ipv6Addr = addr(0x2001, 0xdb8, 0x100, 7);
pub const OUTSIDER: Ipv6Addr = addr(0x2001, 0xdb8, 0x200, 0x99);
pub const LB_VIP: Ipv6Addr = addr(0x2001, 0xdb8, 0x10, 0x10);
pub const LB_NO_ENDPOINTS: Ipv6Addr = addr(0x2001, 0xdb8, 0x10, 0x12);
pub const EXTERNAL_IP: Ipv6Addr = addr(0x2001, 0xdb8, 0x50, 0x50);
pub const LOCAL_POD: Ipv6Addr = addr(0xfd00, 0x244, 0, 5);
pub const REMOTE_POD: Ipv6Addr = addr(0xfd00, 0x244, 1, 9);
pub const ROUTER: Ipv6Addr = addr(0xfd00, 0x64, 0, 0xfe);

/// A TCP/UDP flow of an IPv6 frame (host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple6 {
    pub saddr: Ipv6Addr,
    pub daddr: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple6 {
    pub fn reversed(&self) -> Tuple6 {
        Tuple6 {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

pub fn key_tuple(k: &Ct6Key) -> Tuple6 {
    Tuple6 {
        saddr: Ipv6Addr::from(ip6_from_raw(k.saddr)),
        daddr: Ipv6Addr::from(ip6_from_raw(k.daddr)),
        sport: port_from_raw(k.sport),
        dport: port_from_raw(k.dport),
        proto: k.proto,
    }
}

pub fn nat_tuple(k: &Ct6Key, v: &Ct6Value) -> Tuple6 {
    Tuple6 {
        saddr: Ipv6Addr::from(ip6_from_raw(v.nat_saddr)),
        daddr: Ipv6Addr::from(ip6_from_raw(v.nat_daddr)),
        sport: port_from_raw(v.nat_sport),
        dport: port_from_raw(v.nat_dport),
        proto: k.proto,
    }
}

pub fn is_v6(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ETH_P_IPV6.to_be_bytes()[..])
}

fn a16(b: &[u8], off: usize) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::from(
        <[u8; 16]>::try_from(b.get(off..off + 16)?).ok()?,
    ))
}

/// The IPv6 header at `off` of `b` as the programs read it: version 6, the upper-layer
/// protocol and its offset (None: a packet the programs do not look at).
#[derive(Clone, Copy, Debug)]
pub struct Ip6 {
    pub saddr: Ipv6Addr,
    pub daddr: Ipv6Addr,
    /// Where the payload ends (40 + payload length, from `off`'s header start).
    pub end: usize,
    pub proto: u8,
    pub l4: usize,
    /// A fragment header (first fragment) was walked.
    pub fragment: bool,
}

impl Ip6 {
    pub fn parse_at(b: &[u8], off: usize) -> Option<Ip6> {
        let h = b.get(off..off + IPV6_HLEN)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let (mut next, mut at) = (h[6], off + IPV6_HLEN);
        let mut fragment = false;
        let ext = |n| {
            matches!(
                n,
                NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST
            )
        };
        for _ in 0..4 {
            if !ext(next) {
                break;
            }
            let e = b.get(at..at + 4)?;
            if next == NEXTHDR_FRAGMENT {
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return None;
                }
                fragment = true;
                at += 8;
            } else {
                if next == NEXTHDR_ROUTING && e[3] != 0 {
                    return None;
                }
                at += (e[1] as usize + 1) * 8;
            }
            next = e[0];
        }
        if ext(next) {
            return None;
        }
        Some(Ip6 {
            saddr: a16(h, 8)?,
            daddr: a16(h, 24)?,
            end: off + IPV6_HLEN + u16::from_be_bytes([h[4], h[5]]) as usize,
            proto: next,
            l4: at,
            fragment,
        })
    }

    pub fn parse(frame: &[u8]) -> Option<Ip6> {
        if !is_v6(frame) {
            return None;
        }
        Ip6::parse_at(frame, ETH_HLEN)
    }

    fn ports(&self, b: &[u8]) -> Option<(u16, u16)> {
        let p = b.get(self.l4..self.l4 + 4)?;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }
}

/// The TCP/UDP flow of a frame the programs look at.
pub fn tuple(frame: &[u8]) -> Option<Tuple6> {
    let ip = Ip6::parse(frame)?;
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return None;
    }
    if ip.proto == IPPROTO_UDP && frame.get(ip.l4 + 6..ip.l4 + 8) == Some(&[0, 0][..]) {
        return None;
    }
    let (sport, dport) = ip.ports(frame)?;
    Some(Tuple6 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
    })
}

/// ICMPv6 errors: destination unreachable, packet too big, time exceeded, parameter problem.
pub fn is_error_type(ty: u8) -> bool {
    ty < 128
}

/// The flow of the packet an ICMPv6 error quotes (when its ports can be read).
pub fn quoted_tuple(frame: &[u8]) -> Option<Tuple6> {
    let ip = Ip6::parse(frame)?;
    if ip.proto != IPPROTO_ICMPV6 || !is_error_type(*frame.get(ip.l4)?) {
        return None;
    }
    let inner = Ip6::parse_at(frame, ip.l4 + 8)?;
    if inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP {
        return None;
    }
    let (sport, dport) = inner.ports(frame)?;
    Some(Tuple6 {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport,
        dport,
        proto: inner.proto,
    })
}

/// (checksum offset, covered range, pseudo-header sum) of the upper-layer checksum, when it
/// can be judged from the frame (lengths consistent, not a fragment, UDP checksummed).
fn l4_layout(frame: &[u8]) -> Option<(usize, std::ops::Range<usize>, u32)> {
    let ip = Ip6::parse(frame)?;
    if ip.fragment || ip.end > frame.len() || ip.l4 > ip.end {
        return None;
    }
    let len = ip.end - ip.l4;
    let (off, min) = match ip.proto {
        IPPROTO_TCP => (16, 20),
        IPPROTO_UDP => (6, 8),
        IPPROTO_ICMPV6 => (2, 4),
        _ => return None,
    };
    if len < min {
        return None;
    }
    let at = ip.l4 + off;
    if ip.proto == IPPROTO_UDP && frame[at..at + 2] == [0, 0] {
        return None;
    }
    Some((
        at,
        ip.l4..ip.end,
        pseudo_sum_v6(ip.saddr, ip.daddr, ip.proto, len),
    ))
}

/// Whether the TCP/UDP/ICMPv6 checksum verifies (pseudo-header included).
pub fn l4_csum_ok(frame: &[u8]) -> Option<bool> {
    let (_, range, pseudo) = l4_layout(frame)?;
    Some(fold(sum(pseudo, &frame[range])) == 0xffff)
}

/// Whether the TCP/UDP checksum of a whole packet quoted by an ICMPv6 error verifies.
pub fn quoted_l4_csum_ok(frame: &[u8]) -> Option<bool> {
    let ip = Ip6::parse(frame)?;
    if ip.proto != IPPROTO_ICMPV6 || ip.end > frame.len() {
        return None;
    }
    if !is_error_type(*frame.get(ip.l4)?) {
        return None;
    }
    let q = ip.l4 + 8;
    let inner = Ip6::parse_at(frame, q)?;
    if inner.end != ip.end || inner.fragment || inner.l4 > inner.end {
        return None;
    }
    let min = match inner.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return None,
    };
    if inner.end - inner.l4 < min
        || (inner.proto == IPPROTO_UDP && frame[inner.l4 + 6..inner.l4 + 8] == [0, 0])
    {
        return None;
    }
    let p = pseudo_sum_v6(inner.saddr, inner.daddr, inner.proto, inner.end - inner.l4);
    Some(fold(sum(p, &frame[inner.l4..inner.end])) == 0xffff)
}

/// Rewrites the upper-layer checksum (when it can be computed; UDP's 0 included).
pub fn fix_l4_csum(frame: &mut [u8]) {
    if let Some(ip) = Ip6::parse(frame)
        && ip.proto == IPPROTO_UDP
        && ip.end <= frame.len()
        && ip.l4 + 8 <= ip.end
    {
        frame[ip.l4 + 6] = 0xff;
    }
    let Some((at, range, pseudo)) = l4_layout(frame) else {
        return;
    };
    frame[at] = 0;
    frame[at + 1] = 0;
    let mut c = !fold(sum(pseudo, &frame[range]));
    if frame[ETH_HLEN + 6] != IPPROTO_ICMPV6 && c == 0 && frame.len() > at {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The offsets of a frame a NAT translation may change (the frame otherwise byte for byte
/// the same, and of the same length): the MACs, the hop limit, both addresses, the ports and
/// the checksum; for an ICMPv6 error, the outer addresses and checksum and the quoted
/// packet's addresses, ports and checksum.
pub fn may_change(frame: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut r = vec![0..12, ETH_HLEN + 7..ETH_HLEN + 40];
    let Some(ip) = Ip6::parse(frame) else {
        return r;
    };
    match ip.proto {
        IPPROTO_TCP => r.extend([ip.l4..ip.l4 + 4, ip.l4 + 16..ip.l4 + 18]),
        IPPROTO_UDP => r.extend([ip.l4..ip.l4 + 4, ip.l4 + 6..ip.l4 + 8]),
        IPPROTO_ICMPV6 => {
            r.push(ip.l4 + 2..ip.l4 + 4);
            let q = ip.l4 + 8;
            r.push(q + 8..q + 40);
            if let Some(inner) = Ip6::parse_at(frame, q) {
                r.push(inner.l4..inner.l4 + 4);
                match inner.proto {
                    IPPROTO_TCP => r.push(inner.l4 + 16..inner.l4 + 18),
                    IPPROTO_UDP => r.push(inner.l4 + 6..inner.l4 + 8),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    r
}

/// The frame without ferry's DSR destination options header (Cilium's `dsr_opt_v6`: the
/// first extension header, 24 bytes, option 0x1B), the fixed header's next header and payload
/// length restored; None when the frame has none.
pub fn without_dsr_option(frame: &[u8]) -> Option<Vec<u8>> {
    let at = ETH_HLEN + IPV6_HLEN;
    let len = agent_common::DSR_OPT6_SIZE;
    let h = frame.get(at..at + len)?;
    if frame.get(ETH_HLEN + 6) != Some(&NEXTHDR_DEST)
        || h[1] != agent_common::DSR_OPT6_HDR_LEN
        || h[2] != agent_common::DSR_OPT6_TYPE
    {
        return None;
    }
    let mut out = frame[..at].to_vec();
    out.extend_from_slice(&frame[at + len..]);
    out[ETH_HLEN + 6] = h[0];
    let payload = u16::from_be_bytes([out[ETH_HLEN + 4], out[ETH_HLEN + 5]]);
    let payload = payload.checked_sub(len as u16)?;
    out[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload.to_be_bytes());
    Some(out)
}

/// The first offset where `output` differs from `input` outside what may change.
pub fn changed_outside(input: &[u8], output: &[u8]) -> Option<usize> {
    if input.len() != output.len() {
        return Some(input.len().min(output.len()));
    }
    let allowed = may_change(input);
    (0..input.len()).find(|&i| input[i] != output[i] && !allowed.iter().any(|r| r.contains(&i)))
}

/// The frame (for `prog`'s direction) of an IPv6 packet.
pub fn ether(prog: super::case::Prog, packet: &[u8]) -> Vec<u8> {
    use super::case::{NODE_MAC, PEER_MAC, Prog};
    match prog {
        Prog::In | Prog::Pod => crate::progtest::ethernet(NODE_MAC, PEER_MAC, ETH_P_IPV6, packet),
        Prog::Out | Prog::PodOut => {
            crate::progtest::ethernet(PEER_MAC, NODE_MAC, ETH_P_IPV6, packet)
        }
    }
}

fn sa(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

/// The answer to a TCP/UDP IPv6 frame: addresses and ports swapped.
pub fn reply(prog: super::case::Prog, to: &[u8]) -> Option<Vec<u8>> {
    let t = tuple(to)?;
    let ip = Ip6::parse(to)?;
    let (src, dst) = (sa(t.daddr, t.dport), sa(t.saddr, t.sport));
    let l4 = if t.proto == IPPROTO_TCP {
        let flags = to.get(ip.l4 + 13).copied().unwrap_or(0);
        let answer = if flags & TCP_SYN != 0 {
            TCP_SYN | TCP_ACK
        } else {
            TCP_ACK
        };
        tcp6(src, dst, 7000, 1001, answer, b"")
    } else {
        udp6(src, dst, b"re", true)
    };
    Some(ether(
        prog,
        &ipv6(Ip6Opts::default(), t.daddr, t.saddr, t.proto, &l4),
    ))
}

/// An ICMPv6 error about the IPv6 packet of `about` (quoting `quote` bytes), to its source,
/// from its destination or the router. ICMPv4 types are mapped: 3/4 -> packet too big,
/// 11 -> time exceeded, other 3/x -> destination unreachable (port unreachable for 3/3).
pub fn icmp_error(
    prog: super::case::Prog,
    about: &[u8],
    ty: u8,
    code: u8,
    from_router: bool,
    quote: usize,
) -> Option<Vec<u8>> {
    if !is_v6(about) || about.len() < ETH_HLEN + IPV6_HLEN {
        return None;
    }
    let saddr = a16(about, ETH_HLEN + 8)?;
    let daddr = a16(about, ETH_HLEN + 24)?;
    let packet = &about[ETH_HLEN..];
    let quoted = &packet[..quote.clamp(IPV6_HLEN, packet.len())];
    let (ty, code, rest) = match (ty, code) {
        (3, 4) => (2, 0, 1280),
        (11, c) => (3, c, 0),
        (3, 3) => (1, 4, 0),
        (3, c) => (1, c & 7, 0),
        (t, c) => (t, c, 0),
    };
    let from = if from_router { ROUTER } else { daddr };
    let msg = icmp6(from, saddr, ty, code, rest, quoted);
    let opts = Ip6Opts {
        traffic_class: 0,
        flow_label: 0,
        hop_limit: 64,
    };
    Some(ether(prog, &ipv6(opts, from, saddr, IPPROTO_ICMPV6, &msg)))
}

/// Generating IPv6 frames.
pub struct Gen6 {
    pub frontends: Vec<Endpoint6>,
    pub backends: Vec<Endpoint6>,
    pub flows: Vec<Tuple6>,
}

impl Gen6 {
    fn addr(&self, rng: &mut Rng) -> Ipv6Addr {
        match rng.below(12) {
            0..=2 => CLIENT,
            3 => OUTSIDER,
            4 => NODE,
            5 => LOCAL_POD,
            6 => REMOTE_POD,
            7 => ROUTER,
            8 => LB_VIP,
            9 => *rng.pick(&[
                Ipv6Addr::UNSPECIFIED,
                Ipv6Addr::LOCALHOST,
                "ff02::1".parse().unwrap(),
                "fe80::1".parse().unwrap(),
                "::ffff:10.244.0.5".parse().unwrap(),
            ]),
            _ => Ipv6Addr::from(((rng.next_u64() as u128) << 64) | rng.next_u64() as u128),
        }
    }

    fn port(&self, rng: &mut Rng) -> u16 {
        match rng.below(8) {
            0..=2 => 40_000 + rng.below(8) as u16,
            3..=4 => super::fixture::SNAT_PORTS.0 + rng.below(4) as u16,
            5 => *rng.pick(&[0, 1, 53, 80, 443, 8080, 30080, 65535]),
            _ => rng.u16(),
        }
    }

    /// Source, destination, protocol: to a frontend, of a flow, from a backend, or anything.
    fn flow(&self, rng: &mut Rng) -> (SocketAddrV6, SocketAddrV6, u8) {
        let proto = if rng.chance(1, 2) {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        };
        match rng.below(20) {
            0..=8 if !self.frontends.is_empty() => {
                let fe = *rng.pick(&self.frontends);
                let src = sa(self.addr(rng), self.port(rng));
                let p = if rng.chance(9, 10) { fe.proto } else { proto };
                (src, sa(fe.ip, fe.port), p)
            }
            9..=13 if !self.flows.is_empty() => {
                let t = *rng.pick(&self.flows);
                (sa(t.saddr, t.sport), sa(t.daddr, t.dport), t.proto)
            }
            14..=16 if !self.backends.is_empty() => {
                let b = *rng.pick(&self.backends);
                (
                    sa(b.ip, b.port),
                    sa(self.addr(rng), self.port(rng)),
                    b.proto,
                )
            }
            _ => (
                sa(self.addr(rng), self.port(rng)),
                sa(self.addr(rng), self.port(rng)),
                proto,
            ),
        }
    }

    fn opts(&self, rng: &mut Rng) -> Ip6Opts {
        Ip6Opts {
            traffic_class: if rng.chance(1, 8) { rng.byte() } else { 0 },
            flow_label: rng.next_u64() as u32 & 0xfffff,
            hop_limit: *rng.pick(&[64, 64, 64, 1, 0, 255]),
        }
    }

    fn payload(&self, rng: &mut Rng) -> Vec<u8> {
        let n = match rng.below(10) {
            0..=3 => 0,
            4..=7 => rng.below(64),
            _ => rng.below(1300),
        };
        rng.bytes(n)
    }

    /// Hop-by-hop options: padding, router alert, jumbo payload, unknown (skip / discard /
    /// ICMP) options, a bogus length.
    fn hbh_options(&self, rng: &mut Rng) -> Vec<u8> {
        match rng.below(6) {
            0 => vec![],
            1 => vec![5, 2, 0, 0],                     // router alert (MLD)
            2 => vec![0xc2, 4, 0, 1, 0, 0],            // jumbo payload
            3 => vec![0x3e, 2, 0xaa, 0xbb],            // unknown, skip
            4 => vec![0x80 | rng.byte() & 0x3f, 1, 0], // unknown, discard + ICMP
            _ => vec![1, rng.byte(), 0, 0, 0, 0],      // PadN with a length past the header
        }
    }

    /// Extension headers in front of an upper-layer `proto`: the chain's bytes and the first
    /// next-header value. Sometimes more than the programs walk, fragments first/later/atomic,
    /// routing headers with segments left.
    fn ext_chain(&self, rng: &mut Rng, proto: u8) -> (u8, Vec<u8>) {
        let n = *rng.pick(&[0, 0, 0, 1, 1, 2, 3, 4, 5, 6]);
        let mut headers: Vec<(u8, Vec<u8>)> = Vec::new();
        for i in 0..n {
            let kind = if i == 0 && rng.chance(1, 2) {
                NEXTHDR_HOP
            } else {
                *rng.pick(&[NEXTHDR_DEST, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_HOP])
            };
            headers.push((kind, Vec::new()));
        }
        let mut next = proto;
        let mut bytes = Vec::new();
        for (kind, _) in headers.iter().rev() {
            let h = match *kind {
                NEXTHDR_HOP => options_header(next, &self.hbh_options(rng)),
                NEXTHDR_DEST => options_header(next, &[0x1e, 2, 1, 2]),
                NEXTHDR_ROUTING => {
                    let left = *rng.pick(&[0, 0, 1, 2]);
                    let ty = *rng.pick(&[0, 2, 4, 3]);
                    routing_header(next, ty, left, &[REMOTE_POD, LOCAL_POD][..rng.below(3)])
                }
                _ => {
                    let (off, more) =
                        *rng.pick(&[(0, false), (0, true), (0, true), (1, false), (185, true)]);
                    crate::progtest::fragment_header(next, off, more, rng.next_u64() as u32)
                }
            };
            next = *kind;
            let mut h = h;
            h.extend_from_slice(&bytes);
            bytes = h;
        }
        (next, bytes)
    }

    fn tcp_flags(&self, rng: &mut Rng) -> u8 {
        *rng.pick(&[
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_SYN | TCP_ACK,
            0x11,
            0x04,
            0x18,
            0,
            0xff,
            0x03,
            0x29,
        ])
    }

    /// A TCP/UDP IPv6 packet, checksums right (pseudo-header over the final destination),
    /// maybe with extension headers.
    fn l4_packet(&self, rng: &mut Rng, src: SocketAddrV6, dst: SocketAddrV6, proto: u8) -> Vec<u8> {
        let payload = self.payload(rng);
        let l4 = if proto == IPPROTO_TCP {
            let flags = self.tcp_flags(rng);
            tcp6(
                src,
                dst,
                rng.next_u64() as u32,
                rng.next_u64() as u32,
                flags,
                &payload,
            )
        } else {
            udp6(src, dst, &payload, rng.chance(9, 10))
        };
        let (first, mut chain) = if rng.chance(1, 4) {
            self.ext_chain(rng, proto)
        } else {
            (proto, Vec::new())
        };
        chain.extend_from_slice(&l4);
        ipv6(self.opts(rng), *src.ip(), *dst.ip(), first, &chain)
    }

    fn icmp_packet(&self, rng: &mut Rng) -> Vec<u8> {
        let (src, dst, proto) = self.flow(rng);
        let from_router = rng.chance(1, 3);
        let inner = self.l4_packet(rng, src, dst, proto);
        let n = *rng.pick(&[40, 48, 48, 60, 44, inner.len(), inner.len()]);
        let mut quoted = inner[..n.min(inner.len())].to_vec();
        if rng.chance(1, 8) {
            // A forged inner payload length.
            let v = rng.u16();
            quoted[4..6].copy_from_slice(&v.to_be_bytes());
        }
        let &(ty, code, rest) = rng.pick(&[
            (1, 4, 0),
            (1, 0, 0),
            (1, 3, 0),
            (2, 0, 1280),
            (3, 0, 0),
            (4, 0, 6),
            (4, 1, 40),
        ]);
        let from = if from_router { ROUTER } else { *dst.ip() };
        let msg = icmp6(from, *src.ip(), ty, code, rest, &quoted);
        // Sometimes behind extension headers of its own.
        let (first, mut chain) = if rng.chance(1, 5) {
            self.ext_chain(rng, IPPROTO_ICMPV6)
        } else {
            (IPPROTO_ICMPV6, Vec::new())
        };
        chain.extend_from_slice(&msg);
        ipv6(self.opts(rng), from, *src.ip(), first, &chain)
    }

    /// Echo, NDP (router/neighbour solicitation and advertisement, redirect), MLD (with a
    /// hop-by-hop router alert), unknown informational types.
    fn icmp_info(&self, rng: &mut Rng) -> Vec<u8> {
        let (src, dst, _) = self.flow(rng);
        let (s, d) = (*src.ip(), *dst.ip());
        let &(ty, code) = rng.pick(&[
            (128, 0),
            (129, 0),
            (133, 0),
            (134, 0),
            (135, 0),
            (136, 0),
            (137, 0),
            (130, 0),
            (131, 0),
            (143, 0),
            (200, 0),
        ]);
        let n = rng.below(40);
        let mut body = rng.bytes(n);
        if matches!(ty, 135 | 136) {
            let mut t = d.octets().to_vec();
            t.extend([1, 1, 2, 0, 0, 0, 0, 1]);
            body = t;
        }
        let msg = icmp6(s, d, ty, code, 0, &body);
        let mut opts = self.opts(rng);
        if matches!(ty, 133..=137) {
            opts.hop_limit = 255;
        }
        if matches!(ty, 130 | 131 | 143) {
            let mut p = options_header(IPPROTO_ICMPV6, &[5, 2, 0, 0]);
            p.extend_from_slice(&msg);
            return ipv6(opts, s, d, NEXTHDR_HOP, &p);
        }
        ipv6(opts, s, d, IPPROTO_ICMPV6, &msg)
    }

    /// An IPv6 packet (no Ethernet header).
    pub fn packet(&self, rng: &mut Rng) -> Vec<u8> {
        match rng.below(100) {
            0..=59 => {
                let (s, d, p) = self.flow(rng);
                self.l4_packet(rng, s, d, p)
            }
            60..=79 => self.icmp_packet(rng),
            80..=91 => self.icmp_info(rng),
            92..=95 => {
                let (s, d, _) = self.flow(rng);
                let proto = *rng.pick(&[59u8, 47, 50, 132, 255, 4]);
                let n = rng.below(60);
                let body = rng.bytes(n);
                ipv6(self.opts(rng), *s.ip(), *d.ip(), proto, &body)
            }
            _ => {
                let n = IPV6_HLEN + rng.below(80);
                let mut p = rng.bytes(n);
                p[0] = 0x60 | (p[0] & 0x0f);
                p
            }
        }
    }

    /// Mutations for an IPv6 frame: payload length, next header, version, truncation, the
    /// extension headers' bytes, the ports and flags, trailing bytes.
    pub fn mutations(&self, rng: &mut Rng, frame: &[u8]) -> Vec<super::case::Mutation> {
        use super::case::Mutation;
        let l4 = Ip6::parse(frame).map_or(ETH_HLEN + IPV6_HLEN, |ip| ip.l4);
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let m = match rng.below(10) {
                0 => Mutation::Set(14, *rng.pick(&[0x60, 0x40, 0x70, 0x00, 0x6f])),
                1 => {
                    let any = rng.byte();
                    Mutation::Set(
                        18 + rng.below(2) as u16,
                        *rng.pick(&[0, 1, 8, 0x14, 0xff, any]),
                    )
                }
                2 => Mutation::Set(20, *rng.pick(&[0, 6, 17, 43, 44, 58, 60, 59, 255])),
                3 => Mutation::Set((54 + rng.below(16)) as u16, rng.byte()),
                4 => Mutation::Set((l4 + rng.below(20)) as u16, rng.byte()),
                5 => Mutation::Set(rng.below(frame.len().max(1)) as u16, rng.byte()),
                6 | 7 => Mutation::Trunc(
                    (ETH_HLEN + rng.below(frame.len().saturating_sub(ETH_HLEN).max(1))) as u16,
                ),
                8 => {
                    let n = 1 + rng.below(40);
                    Mutation::Append(if rng.chance(1, 2) {
                        vec![0; n]
                    } else {
                        rng.bytes(n)
                    })
                }
                _ => Mutation::Set(
                    l4 as u16 + 13,
                    *rng.pick(&[TCP_SYN, TCP_ACK, 0x04, 0x01, 0xff]),
                ),
            };
            out.push(m);
        }
        if rng.chance(1, 2) {
            out.push(Mutation::FixL4);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progtest::{ethernet, fragment_header};

    fn frame(packet: &[u8]) -> Vec<u8> {
        ethernet([2; 6], [4; 6], ETH_P_IPV6, packet)
    }

    #[test]
    fn ipv6_frames_are_read_as_the_programs_read_them() {
        let (a, b) = (sa(CLIENT, 40000), sa(LB_VIP, 80));
        let seg = tcp6(a, b, 1, 0, TCP_SYN, b"x");
        let mut f = frame(&ipv6(Ip6Opts::default(), CLIENT, LB_VIP, IPPROTO_TCP, &seg));
        assert_eq!(l4_csum_ok(&f), Some(true));
        assert_eq!(tuple(&f).map(|t| (t.sport, t.dport)), Some((40000, 80)));
        f[ETH_HLEN + IPV6_HLEN + 4] ^= 1;
        assert_eq!(l4_csum_ok(&f), Some(false));
        fix_l4_csum(&mut f);
        assert_eq!(l4_csum_ok(&f), Some(true));
        // The address is in the pseudo-header: changing it alone breaks the checksum, and
        // a translation may change it.
        let mut g = f.clone();
        g[ETH_HLEN + 39] ^= 1;
        assert_eq!(l4_csum_ok(&g), Some(false));
        assert_eq!(changed_outside(&f, &g), None);
        g[ETH_HLEN + IPV6_HLEN + 20] ^= 1; // the payload
        assert_eq!(changed_outside(&f, &g), Some(ETH_HLEN + IPV6_HLEN + 20));

        // Behind a first fragment: matched on its ports, checksum not judged. A later
        // fragment and a routing header with segments left: not looked at.
        let mut p = fragment_header(IPPROTO_TCP, 0, true, 9);
        p.extend_from_slice(&seg);
        let first = frame(&ipv6(
            Ip6Opts::default(),
            CLIENT,
            LB_VIP,
            NEXTHDR_FRAGMENT,
            &p,
        ));
        assert!(tuple(&first).is_some() && l4_csum_ok(&first).is_none());
        let mut p = fragment_header(IPPROTO_TCP, 1, false, 9);
        p.extend_from_slice(&seg);
        let later = frame(&ipv6(
            Ip6Opts::default(),
            CLIENT,
            LB_VIP,
            NEXTHDR_FRAGMENT,
            &p,
        ));
        assert!(tuple(&later).is_none());
        let mut p = routing_header(IPPROTO_TCP, 4, 1, &[REMOTE_POD]);
        p.extend_from_slice(&seg);
        let routed = frame(&ipv6(
            Ip6Opts::default(),
            CLIENT,
            LB_VIP,
            NEXTHDR_ROUTING,
            &p,
        ));
        assert!(tuple(&routed).is_none());
        // Five extension headers: more than the programs walk.
        let mut p = seg.clone();
        let mut next = IPPROTO_TCP;
        for _ in 0..5 {
            let mut h = options_header(next, &[]);
            h.extend_from_slice(&p);
            p = h;
            next = NEXTHDR_DEST;
        }
        let long = frame(&ipv6(Ip6Opts::default(), CLIENT, LB_VIP, NEXTHDR_DEST, &p));
        assert!(tuple(&long).is_none());

        // An ICMPv6 error quoting the whole segment (from the other side).
        let quoted = ipv6(Ip6Opts::default(), CLIENT, LB_VIP, IPPROTO_TCP, &seg);
        let msg = icmp6(ROUTER, CLIENT, 1, 4, 0, &quoted);
        let err = frame(&ipv6(
            Ip6Opts::default(),
            ROUTER,
            CLIENT,
            IPPROTO_ICMPV6,
            &msg,
        ));
        assert_eq!(l4_csum_ok(&err), Some(true));
        assert_eq!(quoted_l4_csum_ok(&err), Some(true));
        assert_eq!(quoted_tuple(&err).map(|t| t.daddr), Some(LB_VIP));
        // The quoted addresses and ports may change, the quoted payload not.
        let mut e2 = err.clone();
        e2[ETH_HLEN + IPV6_HLEN + 8 + 30] ^= 1;
        assert_eq!(changed_outside(&err, &e2), None);
        e2[err.len() - 1] ^= 1;
        assert_eq!(changed_outside(&err, &e2), Some(err.len() - 1));
    }
}
