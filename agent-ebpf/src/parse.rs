//! Parsing Ethernet/IPv4 and the first bytes of TCP, UDP and ICMP.
//!
//! Everything is read with `bpf_skb_load_bytes` into the stack rather than
//! through direct packet pointers: it works on non-linear skbs (GRO, veth)
//! without a pull, keeps the verifier out of variable-offset pointer
//! arithmetic (IP options), and leaves no packet pointer to invalidate when a
//! later helper changes the packet. Offsets below are from the start of the
//! Ethernet header, where TC programs see `skb->data`.

use agent_common::proto;
use aya_ebpf::{EbpfContext as _, bindings::__sk_buff, programs::TcContext};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;

/// Offsets of IPv4 header fields (no VLAN tag: the devices ferry manages
/// carry untagged IPv4).
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_TTL_OFF: usize = IP_OFF + 8;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;
pub const IPV4_MIN_HLEN: usize = 20;

pub const IPPROTO_ICMP: u8 = 1;

/// The fixed IPv4 header; multi-byte fields are raw (network order).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_MIN_HLEN);

impl Ipv4Hdr {
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.ver_ihl & 0x0f) as usize) * 4
    }

    /// A fragment other than the first carries no L4 header: nothing to
    /// match it on. (First fragments are translated on their ports; the
    /// later ones of such a datagram are not, a known limitation.)
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be(self.frag_off) & 0x1fff != 0
    }
}

/// The fixed IPv6 header; multi-byte fields are raw (network order). Read
/// only by the egress guard (the north-south programs are IPv4 only).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (the high nibble of the first byte), traffic class, flow label.
    pub ver_tc_flow: [u8; 4],
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: agent_common::Ip6,
    pub daddr: agent_common::Ip6,
}
pub const IPV6_HLEN: usize = 40;
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);

/// An IPv4 packet: its header and where its L4 header starts.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub hdr: Ipv4Hdr,
    pub l4_off: usize,
}

#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ipv4> {
    let ethertype: u16 = ctx.load(12).ok()?;
    if ethertype != ETH_P_IP.to_be() {
        return None;
    }
    let hdr: Ipv4Hdr = ctx.load(IP_OFF).ok()?;
    let hlen = hdr.header_len();
    if hdr.ver_ihl >> 4 != 4 || hlen < IPV4_MIN_HLEN {
        return None;
    }
    Some(Ipv4 {
        hdr,
        l4_off: IP_OFF + hlen,
    })
}

/// A TCP or UDP flow as one packet carries it; all fields raw.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// Where a TCP or UDP header keeps its checksum, and the flags its updates
/// need: UDP's checksum is optional, 0 meaning "none", which
/// BPF_F_MARK_MANGLED_0 keeps (and a computed 0 becomes 0xffff).
#[derive(Clone, Copy)]
pub struct L4 {
    pub off: usize,
    pub csum_off: usize,
    pub csum_flags: u64,
}

#[inline(always)]
pub fn l4(ip: &Ipv4) -> Option<L4> {
    match ip.hdr.proto {
        proto::TCP => Some(L4 {
            off: ip.l4_off,
            csum_off: ip.l4_off + 16,
            csum_flags: 0,
        }),
        proto::UDP => Some(L4 {
            off: ip.l4_off,
            csum_off: ip.l4_off + 6,
            csum_flags: aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 as u64,
        }),
        _ => None,
    }
}

/// The flow of a TCP or UDP packet (source and destination ports are the
/// first four bytes of both headers).
#[inline(always)]
pub fn tuple(ctx: &TcContext, ip: &Ipv4) -> Option<Tuple> {
    let ports: [u16; 2] = ctx.load(ip.l4_off).ok()?;
    Some(Tuple {
        saddr: ip.hdr.saddr,
        daddr: ip.hdr.daddr,
        sport: ports[0],
        dport: ports[1],
        proto: ip.hdr.proto,
    })
}

/// TCP flag bits kept in conntrack.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// The FIN/SYN/RST bits of a TCP packet (0 for UDP).
#[inline(always)]
pub fn tcp_flags(ctx: &TcContext, ip: &Ipv4) -> u8 {
    if ip.hdr.proto != proto::TCP {
        return 0;
    }
    ctx.load::<u8>(ip.l4_off + 13).unwrap_or(0) & (TCP_FIN | TCP_SYN | TCP_RST)
}

/// The device the program runs on (`skb->ifindex`): at ingress the one the
/// packet arrived on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context of a TC program is its `__sk_buff`.
    unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex }
}
