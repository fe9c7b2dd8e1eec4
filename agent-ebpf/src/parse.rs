//! Parsing Ethernet, IPv4 and IPv6 (with its extension headers) and the
//! first bytes of TCP, UDP and ICMP, once per packet at the program's entry
//! (Katran's `packet_description`): [`Ipv4`] and [`Ipv6`] hold the header,
//! where the L4 header starts, its ports and TCP flags, and the rest of the
//! program reads them there, never from the packet again.
//!
//! IPv4 is read through direct packet pointers (`ctx.data()` ..
//! `ctx.data_end()`), bounds-checked; headers that are not in the linear
//! part (GRO, veth) are pulled first (`bpf_skb_pull_data`), which is why no
//! pointer is kept past parsing: every helper that may change the packet
//! invalidates them, and writers derive their own (csum.rs). IPv6's
//! extension headers are walked with `bpf_skb_load_bytes`. Offsets below
//! are from the start of the Ethernet header, where TC programs see
//! `skb->data`.

use core::mem::MaybeUninit;

use agent_common::{Ip6, proto};
use aya_ebpf::{EbpfContext as _, bindings::__sk_buff, programs::TcContext};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// Offsets of IPv4 header fields (no VLAN tag: the devices ferry manages
/// carry untagged IPv4).
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_TTL_OFF: usize = IP_OFF + 8;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;
pub const IPV4_MIN_HLEN: usize = 20;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

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

/// The fixed IPv6 header; multi-byte fields are raw (network order).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (the high nibble of the first byte), traffic class, flow label.
    pub ver_tc_flow: [u8; 4],
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: Ip6,
    pub daddr: Ip6,
}
pub const IPV6_HLEN: usize = 40;
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);

/// Offsets of IPv6 header fields (untagged, as for IPv4).
pub const IP6_HOP_LIMIT_OFF: usize = IP_OFF + 7;
pub const IP6_SADDR_OFF: usize = IP_OFF + 8;
pub const IP6_DADDR_OFF: usize = IP_OFF + 24;

impl Ipv6Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.ver_tc_flow[0] >> 4
    }

    /// Where the packet ends (from the start of the Ethernet header at
    /// `ip_off` - ETH_HLEN): what follows is padding, or not this packet's.
    #[inline(always)]
    pub fn end(&self, ip_off: usize) -> usize {
        ip_off + IPV6_HLEN + u16::from_be(self.payload_len) as usize
    }
}

/// Extension headers walked to the upper-layer header: hop-by-hop options,
/// routing, fragment, destination options.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// At most this many extension headers are walked; a packet with more
/// is not looked at (it passes).
pub const IPV6_EXT_MAX: usize = 4;

/// What a TCP/UDP packet's first bytes say, read once at parsing.
/// `repr(C)` without padding, as [`Ipv4`]: the compiler may fill padding
/// with any register, and the verifier refuses a packet pointer stored in
/// part.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct L4Facts {
    /// Source and destination port (raw); zeros when `has_ports` is false.
    pub ports: [u16; 2],
    /// TCP: the FIN/SYN/RST bits (0 for UDP, or when not in the packet).
    pub tcp_flags: u8,
    /// The ports are in the packet (else it is not looked at).
    pub has_ports: bool,
    /// The L4 checksum field is in the packet: the segment can be rewritten.
    pub csum_in_packet: bool,
    /// UDP: the checksum field is 0 (no checksum).
    pub udp_unchecked: bool,
}
const _: () = assert!(core::mem::size_of::<L4Facts>() == 8);

/// An IPv4 packet: its header, where its L4 header starts, and (TCP/UDP)
/// its [`L4Facts`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub hdr: Ipv4Hdr,
    pub l4: L4Facts,
    /// Where the L4 header starts (at most 14 + 60): a u32, which keeps the struct at 32
    /// bytes without padding (`ferry_tc_in`'s frame is near the verifier's limit). Read it
    /// with [`Packet::l4_off`].
    pub l4_off: u32,
}
const _: () = assert!(core::mem::size_of::<Ipv4>() == 32);

impl Ipv4 {
    /// Nothing parsed yet (all zeros), in `slot`: `mem::zeroed()` would cost a byte loop
    /// (see [`zeroed_in`]).
    #[inline(always)]
    pub fn empty_in(slot: &mut MaybeUninit<Ipv4>) -> &mut Ipv4 {
        // SAFETY: integers and bools, for which all zeros is valid.
        unsafe { zeroed_in(slot) }
    }
}

/// Zeroes `slot` with one 8-byte store per word, and returns it. `mem::zeroed()` and zero
/// struct literals become calls to the eBPF build's `memset`, a loop of one-byte stores (a
/// 40-byte header: ~200 instructions run on every packet, and 64 bytes of FIB parameters
/// ~320); volatile stores cannot be merged back into such a call.
///
/// # Safety
/// All zeros must be a valid `T` (integers, bools, arrays and structs of them).
#[inline(always)]
pub unsafe fn zeroed_in<T>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 8 == 0 && align_of::<T>() >= 4) };
    let words = slot.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: within `slot` (its size is a multiple of 8), 4-aligned.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte written; all zeros is a valid T (the caller's promise).
    unsafe { slot.assume_init_mut() }
}

/// The bytes of a TCP header read at parsing (through the flags, and the
/// checksum field at 16..18); a UDP header's 8.
const TCP_READ: usize = 18;
const UDP_READ: usize = 8;

/// What [`ipv4_direct`] found.
const PARSED: u8 = 0;
const NOT_IPV4: u8 = 1;
/// A header the packet needs is not (all) in the linear part.
const SHORT: u8 = 2;

/// Parses the IPv4 packet of the frame (its EtherType already checked by
/// the entry point) into `ip`, read directly; false when it is none. A
/// frame whose headers are not all in the linear part is pulled (as far as
/// the skb has bytes) and read again.
#[inline(always)]
pub fn ipv4(ctx: &TcContext, ip: &mut Ipv4) -> bool {
    match ipv4_direct(ctx, ip) {
        PARSED => return true,
        NOT_IPV4 => return false,
        _ => {}
    }
    // Not linear (or truly short): pull what the headers need, at most the
    // skb's length, then parse what is there.
    let want = (IP_OFF + 60 + TCP_READ) as u32;
    let len = ctx.len();
    let pull = if want < len { want } else { len };
    // SAFETY: the program's own skb.
    unsafe { aya_ebpf::helpers::generated::bpf_skb_pull_data(ctx.as_ptr().cast(), pull) };
    match ipv4_direct(ctx, ip) {
        PARSED => true,
        NOT_IPV4 => false,
        _ => ipv4_short(ctx, ip),
    }
}

#[inline(always)]
fn valid_v4(hdr: &Ipv4Hdr) -> bool {
    hdr.ver_ihl >> 4 == 4 && hdr.header_len() >= IPV4_MIN_HLEN
}

/// A `T` (a u16, u32 or an array of them) of the packet at address `at`, read with loads of
/// its fields' width. Packet words are not aligned to their size (the IPv4 header starts 14
/// bytes in), and an unaligned read makes the eBPF backend split every one into byte loads
/// (its target declares no misaligned access): the IPv4 header and ports cost ~60
/// instructions so, on every packet. The verifier checks packet access for alignment only
/// under BPF_F_STRICT_ALIGNMENT (which ferry never sets) or on architectures without efficient
/// misaligned access (x86-64 and arm64 have it), and their JITs load such words as they are;
/// csum.rs and xdp.rs store header words the same way.
///
/// # Safety
/// `size_of::<T>()` bytes from `at` are in the packet (checked by the caller).
#[inline(always)]
pub unsafe fn packet_word<T: Copy>(at: usize) -> T {
    // SAFETY: the caller's bounds check; see above for the alignment.
    unsafe { core::ptr::read(at as *const T) }
}

/// The IPv6 address at packet address `at`, read as four words (a copy of
/// the array is a call to the eBPF build's `memmove`, a loop of one-byte
/// copies, wherever the compiler cannot tell the packet from the
/// destination: ~130 instructions an address).
///
/// # Safety
/// 16 bytes from `at` are in the packet (checked by the caller).
#[inline(always)]
pub unsafe fn packet_ip6(at: usize) -> Ip6 {
    // SAFETY: the caller's bounds check; volatile, so that the four loads
    // are not merged back into a copy.
    unsafe {
        let w = |i: usize| core::ptr::read_volatile((at + 4 * i) as *const u32);
        [w(0), w(1), w(2), w(3)]
    }
}

/// Writes the IPv6 address `a` at packet address `at` as four words (see
/// [`packet_ip6`]).
///
/// # Safety
/// 16 bytes from `at` are in the packet (checked by the caller) and the
/// packet is writable.
#[inline(always)]
pub unsafe fn store_ip6(at: usize, a: &Ip6) {
    let mut i = 0;
    while i < 4 {
        // SAFETY: the caller's bounds check; volatile, as above.
        unsafe { core::ptr::write_volatile((at + 4 * i) as *mut u32, a[i]) };
        i += 1;
    }
}

/// The IPv4 header at packet address `h` (IPV4_MIN_HLEN bytes checked by the caller), read
/// field by field (a copy of the whole struct becomes a call to the eBPF build's `memmove`, a
/// loop of one-byte copies), each with one load ([`packet_word`]).
#[inline(always)]
pub fn read_hdr(h: usize) -> Ipv4Hdr {
    // SAFETY: the caller checked IPV4_MIN_HLEN bytes from `h`.
    unsafe {
        let u8_at = |o: usize| *((h + o) as *const u8);
        let u16_at = |o: usize| packet_word::<u16>(h + o);
        Ipv4Hdr {
            ver_ihl: u8_at(0),
            tos: u8_at(1),
            tot_len: u16_at(2),
            id: u16_at(4),
            frag_off: u16_at(6),
            ttl: u8_at(8),
            proto: u8_at(9),
            check: u16_at(10),
            saddr: packet_word::<u32>(h + 12),
            daddr: packet_word::<u32>(h + 16),
        }
    }
}

/// [`ipv4`] from the linear part, into `ip`.
#[inline(always)]
fn ipv4_direct(ctx: &TcContext, ip: &mut Ipv4) -> u8 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + IP_OFF + IPV4_MIN_HLEN > end {
        return SHORT;
    }
    ip.hdr = read_hdr(data + IP_OFF);
    if !valid_v4(&ip.hdr) {
        return NOT_IPV4;
    }
    let l4_off = IP_OFF + ip.hdr.header_len();
    ip.l4_off = l4_off as u32;
    ip.l4 = L4Facts::default();
    if ip.hdr.is_later_fragment() {
        return PARSED;
    }
    let p = data + l4_off;
    match ip.hdr.proto {
        proto::TCP => {
            if p + TCP_READ > end {
                return SHORT;
            }
            // SAFETY: TCP_READ bytes from `p` checked above.
            unsafe {
                ip.l4.ports = packet_word::<[u16; 2]>(p);
                ip.l4.tcp_flags = *((p + 13) as *const u8) & (TCP_FIN | TCP_SYN | TCP_RST);
            }
        }
        proto::UDP => {
            if p + UDP_READ > end {
                return SHORT;
            }
            // SAFETY: UDP_READ bytes from `p` checked above.
            unsafe {
                ip.l4.ports = packet_word::<[u16; 2]>(p);
                ip.l4.udp_unchecked = packet_word::<u16>(p + 6) == 0;
            }
        }
        _ => return PARSED,
    }
    ip.l4.has_ports = true;
    ip.l4.csum_in_packet = true;
    PARSED
}

/// [`ipv4`] of a frame shorter than its L4 header should be (a hostile or
/// truncated one), with the bytes it has: ports when they are there, the
/// flags byte likewise; never rewritten (no checksum field). Written into
/// `ip` (an `Option` would not do: its BTF, with the niche of a bool, is
/// one the kernel refuses); false when it is no IPv4 packet.
#[inline(never)]
fn ipv4_short(ctx: &TcContext, ip: &mut Ipv4) -> bool {
    let Ok(hdr) = ctx.load::<Ipv4Hdr>(IP_OFF) else {
        return false;
    };
    if !valid_v4(&hdr) {
        return false;
    }
    let l4_off = IP_OFF + hdr.header_len();
    let mut l4 = L4Facts::default();
    if (hdr.proto == proto::TCP || hdr.proto == proto::UDP) && !hdr.is_later_fragment() {
        if let Ok(ports) = ctx.load::<[u16; 2]>(l4_off) {
            l4.ports = ports;
            l4.has_ports = true;
        }
        if hdr.proto == proto::TCP {
            l4.tcp_flags = ctx.load::<u8>(l4_off + 13).unwrap_or(0) & (TCP_FIN | TCP_SYN | TCP_RST);
        }
    }
    ip.hdr = hdr;
    ip.l4_off = l4_off as u32;
    ip.l4 = l4;
    true
}

/// An IPv6 packet: its fixed header, its upper-layer protocol (past the
/// extension headers) and where that header starts.
#[derive(Clone, Copy)]
pub struct Ipv6 {
    pub hdr: Ipv6Hdr,
    pub proto: u8,
    pub l4_off: usize,
    pub l4: L4Facts,
    /// The first bytes of the L4 header as loaded (parsing's buffer).
    pub l4_head: [u16; 7],
}

/// The IPv6 packet of the frame, when ferry may look at it: version 6, at
/// most [`IPV6_EXT_MAX`] extension headers, not a fragment other than the
/// first (as for IPv4, a first fragment is matched on its ports and the
/// later ones pass), no routing header with segments left (the packet is
/// not at its final destination yet: the stack routes it on), and no UDP
/// datagram with a zero checksum (invalid in IPv6, RFC 8200 8.1: the
/// receiver discards it, so it is not translated).
///
/// Parsed into `ip` (IPv6's handlers keep it in a per-CPU scratch map, see
/// ns.rs); false when the packet is not one to look at.
#[inline(always)]
pub fn ipv6(ctx: &TcContext, ip: &mut Ipv6) -> bool {
    match ipv6_direct(ctx, ip) {
        PARSED => return true,
        NOT_IPV4 => return false,
        _ => {}
    }
    ipv6_loaded(ctx, ip)
}

/// [`ipv6`]'s common case read directly from the linear part, as IPv4's
/// is (two `bpf_skb_load_bytes` calls less): a TCP or UDP header right
/// after the fixed header, all of it in the linear part. PARSED, or
/// NOT_IPV4 (here: not to be looked at) for a UDP datagram without
/// checksum, which [`ipv6`] passes;
/// anything else (extension headers, another protocol, a short or
/// non-linear frame, not version 6) is left to [`ipv6_loaded`].
#[inline(always)]
fn ipv6_direct(ctx: &TcContext, ip: &mut Ipv6) -> u8 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let h = data + IP_OFF;
    let p = h + IPV6_HLEN;
    if p + UDP_READ > end {
        return SHORT;
    }
    // SAFETY: the fixed header and UDP_READ bytes after it checked above
    // (TCP_READ below); words read as packet_word says.
    unsafe {
        let first = packet_word::<u32>(h).to_ne_bytes();
        let next = *((h + 6) as *const u8);
        if first[0] >> 4 != 6 || (next != proto::TCP && next != proto::UDP) {
            return SHORT;
        }
        let mut l4 = L4Facts {
            ports: packet_word::<[u16; 2]>(p),
            tcp_flags: 0,
            has_ports: true,
            csum_in_packet: false,
            udp_unchecked: false,
        };
        let csum_end = if next == proto::TCP {
            if p + TCP_READ > end {
                return SHORT;
            }
            l4.tcp_flags = *((p + 13) as *const u8) & (TCP_FIN | TCP_SYN | TCP_RST);
            IP_OFF + IPV6_HLEN + 18
        } else {
            if packet_word::<u16>(p + 6) == 0 {
                return NOT_IPV4;
            }
            IP_OFF + IPV6_HLEN + 8
        };
        l4.csum_in_packet = csum_end <= ctx.len() as usize;
        ip.hdr.ver_tc_flow = first;
        ip.hdr.payload_len = packet_word::<u16>(h + 4);
        ip.hdr.next_hdr = next;
        ip.hdr.hop_limit = *((h + 7) as *const u8);
        ip.hdr.saddr = packet_ip6(h + 8);
        ip.hdr.daddr = packet_ip6(h + 24);
        ip.l4 = l4;
    }
    ip.proto = ip.hdr.next_hdr;
    ip.l4_off = IP_OFF + IPV6_HLEN;
    PARSED
}

/// [`ipv6`] with `bpf_skb_load_bytes`: any frame.
#[inline(always)]
fn ipv6_loaded(ctx: &TcContext, ip: &mut Ipv6) -> bool {
    if load_into(ctx, IP_OFF, &mut ip.hdr).is_err() || ip.hdr.version() != 6 {
        return false;
    }
    let Some((proto, l4_off)) = ipv6_upper(ctx, ip.hdr.next_hdr, IP_OFF + IPV6_HLEN) else {
        return false;
    };
    ip.l4 = L4Facts::default();
    if proto == proto::TCP || proto == proto::UDP {
        // One load (into the scratch, not the stack): the ports and, TCP,
        // the flags, UDP, the checksum.
        let n = if proto == proto::TCP { 14 } else { 8 };
        let buf = ip.l4_head.as_mut_ptr().cast::<u8>();
        if load_bytes(ctx, l4_off, buf, n).is_ok() {
            let b = &ip.l4_head;
            if proto == proto::UDP && b[3] == 0 {
                return false;
            }
            ip.l4.ports = [b[0], b[1]];
            ip.l4.has_ports = true;
            let csum_end = l4_off + if proto == proto::TCP { 18 } else { 8 };
            ip.l4.csum_in_packet = csum_end <= ctx.len() as usize;
            if proto == proto::TCP {
                ip.l4.tcp_flags = b[6].to_ne_bytes()[1] & (TCP_FIN | TCP_SYN | TCP_RST);
            }
        } else if load_bytes(ctx, l4_off, buf, 4).is_ok() {
            // Shorter than its header: the ports (and TCP flags when
            // there), never rewritten.
            ip.l4.ports = [ip.l4_head[0], ip.l4_head[1]];
            ip.l4.has_ports = true;
            ip.l4_head[6] = 0;
            // SAFETY: byte 13 of the 14-byte buffer.
            if proto == proto::TCP
                && load_bytes(ctx, l4_off + 13, unsafe { buf.add(13) }, 1).is_ok()
            {
                ip.l4.tcp_flags = ip.l4_head[6].to_ne_bytes()[1] & (TCP_FIN | TCP_SYN | TCP_RST);
            }
        }
    }
    ip.proto = proto;
    ip.l4_off = l4_off;
    true
}

#[inline(always)]
fn load_bytes(ctx: &TcContext, off: usize, dst: *mut u8, n: usize) -> Result<(), ()> {
    // SAFETY: `dst` has room for `n` bytes (the caller's buffer).
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.as_ptr(),
            off as u32,
            dst.cast(),
            n as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// Loads `size_of::<T>()` packet bytes at `off` straight into `dst` (where
/// `ctx.load` would copy them through the stack).
#[inline(always)]
pub fn load_into<T>(ctx: &TcContext, off: usize, dst: &mut T) -> Result<(), ()> {
    // SAFETY: `dst` is valid for its size; T is plain data (headers).
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.as_ptr(),
            off as u32,
            (dst as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// Walks the extension headers of an IPv6 packet (or of the packet an
/// ICMPv6 error quotes) from `off`, where a header of type `next` starts:
/// the upper-layer protocol and its offset. None for what [`ipv6`] passes
/// (more headers than [`IPV6_EXT_MAX`], a later fragment, a routing header
/// with segments left) and for headers beyond the frame.
#[inline(always)]
pub fn ipv6_upper(ctx: &TcContext, mut next: u8, mut off: usize) -> Option<(u8, usize)> {
    for _ in 0..IPV6_EXT_MAX {
        if !is_extension(next) {
            return Some((next, off));
        }
        // Hop-by-hop, routing, destination options: next header, length
        // in 8-octet units past the first 8 (routing: then its type and the
        // segments left). Fragment: next header, reserved, offset (13 bits)
        // and flags; 8 octets.
        let h: [u8; 4] = ctx.load(off).ok()?;
        if next == NEXTHDR_FRAGMENT {
            if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                return None;
            }
            off += 8;
        } else {
            if next == NEXTHDR_ROUTING && h[3] != 0 {
                return None;
            }
            off += (h[1] as usize + 1) * 8;
        }
        next = h[0];
    }
    (!is_extension(next)).then_some((next, off))
}

#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST
    )
}

/// A parsed IP packet of either family, as the L4 helpers below read it.
pub trait Packet {
    /// The address in map form (`u32`, or [`Ip6`]'s four words).
    type Addr: Copy + PartialEq;
    /// The L4 protocol (IPv6: past the extension headers).
    fn proto(&self) -> u8;
    /// Where the L4 header starts.
    fn l4_off(&self) -> usize;
    fn saddr(&self) -> Self::Addr;
    fn daddr(&self) -> Self::Addr;
    /// TCP/UDP: what parsing read of the L4 header.
    fn l4_facts(&self) -> &L4Facts;
}

impl Packet for Ipv4 {
    type Addr = u32;

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.hdr.proto
    }

    #[inline(always)]
    fn l4_off(&self) -> usize {
        self.l4_off as usize
    }

    #[inline(always)]
    fn saddr(&self) -> u32 {
        self.hdr.saddr
    }

    #[inline(always)]
    fn daddr(&self) -> u32 {
        self.hdr.daddr
    }

    #[inline(always)]
    fn l4_facts(&self) -> &L4Facts {
        &self.l4
    }
}

impl Packet for Ipv6 {
    type Addr = Ip6;

    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn l4_off(&self) -> usize {
        self.l4_off
    }

    #[inline(always)]
    fn saddr(&self) -> Ip6 {
        self.hdr.saddr
    }

    #[inline(always)]
    fn daddr(&self) -> Ip6 {
        self.hdr.daddr
    }

    #[inline(always)]
    fn l4_facts(&self) -> &L4Facts {
        &self.l4
    }
}

/// A TCP or UDP flow as one packet carries it; all fields raw. `A`: the
/// address type of the family.
#[derive(Clone, Copy)]
pub struct Tuple<A = u32> {
    pub saddr: A,
    pub daddr: A,
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
pub fn l4<P: Packet>(ip: &P) -> Option<L4> {
    let off = ip.l4_off();
    match ip.proto() {
        proto::TCP => Some(L4 {
            off,
            csum_off: off + 16,
            csum_flags: 0,
        }),
        proto::UDP => Some(L4 {
            off,
            csum_off: off + 6,
            csum_flags: aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 as u64,
        }),
        _ => None,
    }
}

/// The flow of a TCP or UDP packet, as parsed (None when its ports are
/// not in the packet).
#[inline(always)]
pub fn tuple<P: Packet>(ip: &P) -> Option<Tuple<P::Addr>> {
    let f = ip.l4_facts();
    f.has_ports.then(|| Tuple {
        saddr: ip.saddr(),
        daddr: ip.daddr(),
        sport: f.ports[0],
        dport: f.ports[1],
        proto: ip.proto(),
    })
}

/// TCP flag bits kept in conntrack.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// The FIN/SYN/RST bits of a TCP packet (0 for UDP), as parsed.
#[inline(always)]
pub fn tcp_flags<P: Packet>(ip: &P) -> u8 {
    ip.l4_facts().tcp_flags
}

/// The device the program runs on (`skb->ifindex`): at ingress the one the
/// packet arrived on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context of a TC program is its `__sk_buff`.
    unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex }
}
