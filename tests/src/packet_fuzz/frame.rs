//! Reading Ethernet/IPv4 frames the way the TC programs do (offsets from the Ethernet header,
//! bytes read wherever the frame has them, whatever the IP lengths say), and checksums computed
//! from scratch (RFC 1071) to judge what the programs wrote.

use crate::progtest::{ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, fold, sum};
use std::net::Ipv4Addr;

/// The fixed IPv4 header of a frame, as `parse::ipv4` in the programs accepts it: ethertype
/// IPv4, 20 bytes present, version 4, IHL at least 5 (nothing else is checked there).
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub ihl: usize,
    pub tot_len: usize,
    pub frag: u16,
    pub proto: u8,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
}

impl Ip {
    pub fn parse(frame: &[u8]) -> Option<Ip> {
        Ip::parse_at(frame, ETH_HLEN, true)
    }

    /// The header at `off` (`ethernet`: check the ethertype before it).
    fn parse_at(frame: &[u8], off: usize, ethernet: bool) -> Option<Ip> {
        if ethernet && frame.get(12..14)? != ETH_P_IP.to_be_bytes() {
            return None;
        }
        let h = frame.get(off..off + 20)?;
        let ihl = (h[0] & 0x0f) as usize * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        Some(Ip {
            ihl,
            tot_len: u16::from_be_bytes([h[2], h[3]]) as usize,
            frag: u16::from_be_bytes([h[6], h[7]]),
            proto: h[9],
            saddr: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            daddr: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        })
    }

    /// A fragment other than the first (the programs pass them untouched).
    pub fn later_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }

    /// Any fragment: its L4 checksum covers bytes that are not in this packet.
    pub fn fragment(&self) -> bool {
        self.frag & 0x3fff != 0
    }

    /// The IP payload's range in the frame, when IHL and the total length are consistent
    /// and the frame holds it (Ethernet padding may follow).
    fn payload(&self, frame: &[u8]) -> Option<std::ops::Range<usize>> {
        let end = ETH_HLEN + self.tot_len;
        (self.ihl <= self.tot_len && end <= frame.len()).then_some(ETH_HLEN + self.ihl..end)
    }
}

/// BPF_PROG_TEST_RUN refuses (EINVAL, before any program runs) an IPv4 or IPv6 frame without
/// room for the fixed IP header: the kernel cannot build such an skb for a test run.
pub fn refused_by_test_run(frame: &[u8]) -> bool {
    let header = match frame.get(12..14) {
        Some(&[0x08, 0x00]) => 20,
        Some(&[0x86, 0xdd]) => 40,
        _ => 0,
    };
    frame.len() < ETH_HLEN + header
}

/// A TCP or UDP flow (addresses and ports as read, host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    pub fn reversed(&self) -> Tuple {
        Tuple {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

fn ports_at(frame: &[u8], off: usize) -> Option<(u16, u16)> {
    let p = frame.get(off..off + 4)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// The TCP/UDP flow of a frame, when the programs can read its ports.
pub fn tuple(frame: &[u8]) -> Option<Tuple> {
    let ip = Ip::parse(frame)?;
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return None;
    }
    let (sport, dport) = ports_at(frame, ETH_HLEN + ip.ihl)?;
    Some(Tuple {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
    })
}

/// The flow of the packet an ICMP destination unreachable or time exceeded quotes, when the
/// programs can read it (as `icmp::translate_error` does).
pub fn quoted_tuple(frame: &[u8]) -> Option<Tuple> {
    let ip = Ip::parse(frame)?;
    let icmp = ETH_HLEN + ip.ihl;
    if ip.proto != IPPROTO_ICMP || !matches!(frame.get(icmp..icmp + 8)?[0], 3 | 11) {
        return None;
    }
    let inner = Ip::parse_at(frame, icmp + 8, false)?;
    if inner.later_fragment() || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP) {
        return None;
    }
    let (sport, dport) = ports_at(frame, icmp + 8 + inner.ihl)?;
    Some(Tuple {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport,
        dport,
        proto: inner.proto,
    })
}

/// The first IP option is ferry's DSR option type.
pub fn has_dsr_option(frame: &[u8]) -> bool {
    Ip::parse(frame).is_some_and(|ip| {
        ip.ihl > 20 && frame.get(ETH_HLEN + 20) == Some(&agent_common::DSR_OPT_TYPE)
    })
}

/// Whether the IPv4 header checksum verifies (None: no complete header).
pub fn ip_csum_ok(frame: &[u8]) -> Option<bool> {
    let ip = Ip::parse(frame)?;
    let h = frame.get(ETH_HLEN..ETH_HLEN + ip.ihl)?;
    Some(fold(sum(0, h)) == 0xffff)
}

/// Where the L4 checksum of a frame sits and what it covers: (checksum offset, covered
/// range, pseudo-header sum). None when it cannot be judged from this frame alone (lengths
/// inconsistent or beyond the frame, a fragment, UDP without checksum, other protocols).
fn l4_layout(frame: &[u8]) -> Option<(usize, std::ops::Range<usize>, u32)> {
    let ip = Ip::parse(frame)?;
    if ip.fragment() {
        return None;
    }
    let l4 = ip.payload(frame)?;
    let len = l4.len();
    let pseudo = |proto| crate::progtest::pseudo_sum(ip.saddr, ip.daddr, proto, len);
    let (csum_off, min, pseudo) = match ip.proto {
        IPPROTO_TCP => (16, 20, pseudo(IPPROTO_TCP)),
        IPPROTO_UDP => (6, 8, pseudo(IPPROTO_UDP)),
        IPPROTO_ICMP => (2, 4, 0),
        _ => return None,
    };
    if len < min {
        return None;
    }
    let at = l4.start + csum_off;
    if ip.proto == IPPROTO_UDP && frame[at..at + 2] == [0, 0] {
        return None;
    }
    Some((at, l4, pseudo))
}

/// Whether the TCP, UDP or ICMP checksum verifies (None: see [`l4_layout`]).
pub fn l4_csum_ok(frame: &[u8]) -> Option<bool> {
    let (_, range, pseudo) = l4_layout(frame)?;
    Some(fold(sum(pseudo, &frame[range])) == 0xffff)
}

/// Whether the IP header quoted by an ICMP error verifies (None: no such complete header
/// inside the ICMP message).
pub fn quoted_ip_csum_ok(frame: &[u8]) -> Option<bool> {
    let ip = Ip::parse(frame)?;
    let l4 = ip.payload(frame)?;
    if ip.proto != IPPROTO_ICMP || l4.len() < 28 || !matches!(frame[l4.start], 3 | 11) {
        return None;
    }
    let inner = Ip::parse_at(frame, l4.start + 8, false)?;
    let h = frame.get(l4.start + 8..l4.start + 8 + inner.ihl)?;
    (l4.start + 8 + inner.ihl <= l4.end).then(|| fold(sum(0, h)) == 0xffff)
}

/// Rewrites the IP header checksum (when the header is complete).
pub fn fix_ip_csum(frame: &mut [u8]) {
    let Some(ip) = Ip::parse(frame) else { return };
    let Some(h) = frame.get_mut(ETH_HLEN..ETH_HLEN + ip.ihl) else {
        return;
    };
    h[10] = 0;
    h[11] = 0;
    let c = !fold(sum(0, h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Rewrites the L4 checksum (when it can be computed from this frame; UDP's 0 included).
pub fn fix_l4_csum(frame: &mut [u8]) {
    if super::v6::is_v6(frame) {
        return super::v6::fix_l4_csum(frame);
    }
    let Some(ip) = Ip::parse(frame) else { return };
    if ip.proto == IPPROTO_UDP
        && let Some(l4) = ip.payload(frame)
        && l4.len() >= 8
    {
        // Any non-zero value, so that the layout below takes it as checksummed.
        frame[l4.start + 6] = 0xff;
    }
    let Some((at, range, pseudo)) = l4_layout(frame) else {
        return;
    };
    frame[at] = 0;
    frame[at + 1] = 0;
    let mut c = !fold(sum(pseudo, &frame[range]));
    if ip.proto == IPPROTO_UDP && c == 0 {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::progtest::{IpOpts, ethernet, icmp, ipv4, tcp, udp};

    fn frame(packet: &[u8]) -> Vec<u8> {
        ethernet([2; 6], [4; 6], ETH_P_IP, packet)
    }

    #[test]
    fn checksums_are_judged_from_scratch_and_only_where_they_can_be() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let (sa, sb) = (SocketAddrV4::new(a, 1000), SocketAddrV4::new(b, 80));
        let mut f = frame(&ipv4(
            IpOpts::default(),
            a,
            b,
            IPPROTO_TCP,
            &tcp(sa, sb, 1, 0, 2, b"x"),
        ));
        assert_eq!((ip_csum_ok(&f), l4_csum_ok(&f)), (Some(true), Some(true)));
        assert_eq!(tuple(&f).map(|t| (t.sport, t.dport)), Some((1000, 80)));
        f[ETH_HLEN + 20 + 4] ^= 1; // the sequence number
        assert_eq!(l4_csum_ok(&f), Some(false));
        fix_l4_csum(&mut f);
        assert_eq!(l4_csum_ok(&f), Some(true));
        f[ETH_HLEN + 8] = 1; // the TTL
        assert_eq!(ip_csum_ok(&f), Some(false));
        fix_ip_csum(&mut f);
        assert_eq!(ip_csum_ok(&f), Some(true));
        // A fragment's L4 checksum covers bytes it does not carry.
        f[ETH_HLEN + 6] |= 0x20;
        assert_eq!(l4_csum_ok(&f), None);

        let plain = frame(&ipv4(
            IpOpts::default(),
            a,
            b,
            IPPROTO_UDP,
            &udp(sa, sb, b"q", false),
        ));
        assert_eq!(l4_csum_ok(&plain), None, "UDP without checksum");
        let mut cut = plain.clone();
        cut.truncate(ETH_HLEN + 24);
        assert_eq!(
            l4_csum_ok(&cut),
            None,
            "the total length runs past the frame"
        );

        let quoted = ipv4(
            IpOpts::default(),
            b,
            a,
            IPPROTO_UDP,
            &udp(sb, sa, b"", true),
        );
        let err = frame(&ipv4(
            IpOpts::default(),
            a,
            b,
            IPPROTO_ICMP,
            &icmp(3, 3, 0, &quoted),
        ));
        assert_eq!(quoted_ip_csum_ok(&err), Some(true));
        assert_eq!(
            quoted_tuple(&err).map(|t| (t.saddr, t.dport)),
            Some((b, 1000))
        );
        assert!(refused_by_test_run(&err[..ETH_HLEN + 19]) && !refused_by_test_run(&err));
    }
}
