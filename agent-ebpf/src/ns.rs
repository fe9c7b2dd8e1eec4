//! The north-south programs' per-family parts behind one trait, so that the
//! TCP/UDP translation (nodeport.rs), conntrack (ct.rs) and the ICMP error
//! lookups are written once and compiled for each family, as the socket
//! layer is (family.rs): [`V4`] and [`V6`] name the packet type, the
//! conntrack map, the node's addresses, the flow hash, the FIB forwarding,
//! the port unreachable and direct server return (dsr.rs, dsr6.rs).

use core::mem::MaybeUninit;

use agent_common::{
    Ip6, NodeConfig, affinity_client, affinity_id_v6, flow_hash_v4, flow_hash_v6, node_flags,
};
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};

use crate::{
    csum::{self, AddrField},
    ct::CtKey,
    drop::{DropReason, Outcome},
    dsr, dsr6,
    family::{Addr, Family, V4, V6},
    fib, icmp, icmp6,
    maps::{NODE_ADDR_V4, NODE_ADDR_V6, NODES_V4, NODES_V6},
    parse::{self, Ipv4, Ipv6, L4, Packet, Tuple},
    select::{Client, Frontend},
    verdict,
};

pub trait Ns: Family<Key: Frontend<Addr: AddrField>> {
    /// A parsed packet of the family.
    type Ip: Packet<Addr = Addr<Self>>;
    /// The conntrack key (and through it the value and the map).
    type Ct: CtKey<Addr = Addr<Self>>;
    /// Direct server return (`--lb-mode dsr`) applies to this family's
    /// flows (both families do: an IPv4 option, an IPv6 destination
    /// options header).
    const DSR: bool;
    /// The TCP/UDP paths (tracked packets, new flows, egress, the pod side)
    /// are functions of their own (BPF-to-BPF calls) rather than inlined
    /// into the packet's handler: IPv6's keys and values are too large for
    /// one frame with the calls below it (see tc.rs).
    const OUTLINE: bool;

    /// This node's address on device `ifindex`: the SNAT source.
    fn node_addr(ifindex: u32) -> Option<Addr<Self>>;
    /// `addr` is a cluster node's (a host-network backend).
    fn is_node(addr: &Addr<Self>) -> bool;
    /// Where a flow lands in a Maglev table or among the slots.
    fn flow_hash(t: &Tuple<Addr<Self>>) -> u32;
    /// The client's session affinity identity.
    fn client(saddr: &Addr<Self>) -> Client;
    /// Rewrites the packet `ip` (its L4 checksum at `l4`, its flow `t`)
    /// to the given addresses and ports, with the checksums.
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        ctx: &TcContext,
        ip: &Self::Ip,
        l4: &L4,
        t: &Tuple<Addr<Self>>,
        saddr: Addr<Self>,
        sport: u16,
        daddr: Addr<Self>,
        dport: u16,
    ) -> Result<(), DropReason>;
    /// Routes the translated packet (parsed as `ip`, now from `saddr` to
    /// `daddr`) through the FIB (fib.rs).
    fn forward(ctx: &TcContext, ip: &Self::Ip, saddr: Addr<Self>, daddr: Addr<Self>) -> Outcome;
    /// Answers a packet to a frontend without endpoints with an ICMP port
    /// unreachable.
    fn reject(ctx: &TcContext, ip: &Self::Ip, cfg: &NodeConfig) -> Outcome;

    /// A packet for no frontend that may carry a DSR option (dsr.rs):
    /// PASS unless DSR handled it.
    fn dsr_receive(ctx: &TcContext, ip: &Self::Ip, cfg: &NodeConfig) -> Outcome;
    /// Whether the DSR option fits the first packet of a flow to `backend`.
    fn dsr_option_fits(ctx: &TcContext, backend: Addr<Self>) -> bool;
    /// Translates and forwards a packet of a DSR flow.
    fn dsr_forward(ctx: &TcContext, v: &<Self::Ct as CtKey>::Value, first: bool) -> Outcome;

    /// Runs `f` (a new flow) with a room for its keys and values ([`Room`]).
    fn with_room(f: impl FnOnce(&mut Room<Self>) -> Outcome) -> Outcome;
}

impl Ns for V4 {
    type Ip = Ipv4;
    type Ct = agent_common::Ct4Key;
    const DSR: bool = true;
    const OUTLINE: bool = false;

    #[inline(always)]
    fn node_addr(ifindex: u32) -> Option<u32> {
        NODE_ADDR_V4.get_ptr(&ifindex).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn is_node(addr: &u32) -> bool {
        NODES_V4.get_ptr(addr).is_some()
    }

    #[inline(always)]
    fn flow_hash(t: &Tuple) -> u32 {
        flow_hash_v4(t.saddr, t.daddr, t.sport, t.dport, t.proto)
    }

    #[inline(always)]
    fn client(saddr: &u32) -> Client {
        Client {
            id: *saddr as u64,
            kind: affinity_client::IPV4,
        }
    }

    #[inline(always)]
    fn rewrite(
        ctx: &TcContext,
        ip: &Ipv4,
        l4: &L4,
        _t: &Tuple,
        saddr: u32,
        sport: u16,
        daddr: u32,
        dport: u16,
    ) -> Result<(), DropReason> {
        csum::rewrite4(ctx, ip, l4, saddr, sport, daddr, dport)
    }

    #[inline(always)]
    fn forward(ctx: &TcContext, ip: &Ipv4, saddr: u32, daddr: u32) -> Outcome {
        fib::forward(ctx, saddr, daddr, fib::meta(&ip.hdr)).get()
    }

    #[inline(always)]
    fn reject(ctx: &TcContext, ip: &Ipv4, cfg: &NodeConfig) -> Outcome {
        icmp::reject(ctx, ip, cfg)
    }

    #[inline(always)]
    fn dsr_receive(ctx: &TcContext, ip: &Ipv4, cfg: &NodeConfig) -> Outcome {
        // Only packets with IP options can carry a DSR option: the node's
        // ordinary traffic pays nothing more than this test.
        if ip.hdr.header_len() > parse::IPV4_MIN_HLEN {
            return dsr::receive(dsr::skb(ctx), cfg.flags & node_flags::DSR != 0).get();
        }
        Ok(verdict::PASS)
    }

    #[inline(always)]
    fn dsr_option_fits(ctx: &TcContext, backend: u32) -> bool {
        dsr::option_fits(dsr::skb(ctx), backend)
    }

    #[inline(always)]
    fn dsr_forward(ctx: &TcContext, v: &agent_common::Ct4Value, first: bool) -> Outcome {
        dsr::forward(dsr::skb(ctx), v, first).get()
    }

    #[inline(always)]
    fn with_room(f: impl FnOnce(&mut Room<V4>) -> Outcome) -> Outcome {
        f(&mut Room::new())
    }
}

impl Ns for V6 {
    type Ip = Ipv6;
    type Ct = agent_common::Ct6Key;
    // The frontend in a destination options header, as Cilium carries it.
    const DSR: bool = true;
    const OUTLINE: bool = true;

    #[inline(always)]
    fn node_addr(ifindex: u32) -> Option<Ip6> {
        // Word by word: a copy of the array became a call to `memmove` (a
        // byte loop) on a new SNAT flow's path.
        NODE_ADDR_V6.get_ptr(&ifindex).map(|p| {
            let p = p.cast::<u32>();
            // SAFETY: a live map value of four words.
            let w = |i: usize| unsafe { core::ptr::read_volatile(p.add(i)) };
            [w(0), w(1), w(2), w(3)]
        })
    }

    #[inline(always)]
    fn is_node(addr: &Ip6) -> bool {
        NODES_V6.get_ptr(addr).is_some()
    }

    #[inline(always)]
    fn flow_hash(t: &Tuple<Ip6>) -> u32 {
        flow_hash_v6(&t.saddr, &t.daddr, t.sport, t.dport, t.proto)
    }

    #[inline(always)]
    fn client(saddr: &Ip6) -> Client {
        Client {
            id: affinity_id_v6(saddr),
            kind: affinity_client::IPV6,
        }
    }

    #[inline(always)]
    fn rewrite(
        ctx: &TcContext,
        ip: &Ipv6,
        l4: &L4,
        t: &Tuple<Ip6>,
        saddr: Ip6,
        sport: u16,
        daddr: Ip6,
        dport: u16,
    ) -> Result<(), DropReason> {
        csum::rewrite6(ctx, ip, l4, t, saddr, sport, daddr, dport)
    }

    /// IPv6's lookup reads the translated header's addresses into its
    /// parameters itself (its frame has no room for copies).
    #[inline(always)]
    fn forward(ctx: &TcContext, _ip: &Ipv6, _saddr: Ip6, _daddr: Ip6) -> Outcome {
        fib::forward6(ctx).get()
    }

    #[inline(always)]
    fn reject(ctx: &TcContext, ip: &Ipv6, cfg: &NodeConfig) -> Outcome {
        icmp6::reject(ctx, ip, cfg)
    }

    #[inline(always)]
    fn dsr_receive(ctx: &TcContext, ip: &Ipv6, cfg: &NodeConfig) -> Outcome {
        // Only a packet whose first extension header is a destination
        // options header can carry the DSR header: the node's ordinary
        // traffic pays nothing more than this test.
        if ip.hdr.next_hdr == agent_common::NEXTHDR_DEST {
            return dsr6::receive(dsr::skb(ctx), cfg.flags & node_flags::DSR != 0).get();
        }
        Ok(verdict::PASS)
    }

    #[inline(always)]
    fn dsr_option_fits(ctx: &TcContext, backend: Ip6) -> bool {
        dsr6::option_fits(dsr::skb(ctx), &backend)
    }

    #[inline(always)]
    fn dsr_forward(ctx: &TcContext, v: &agent_common::Ct6Value, first: bool) -> Outcome {
        dsr6::forward(dsr::skb(ctx), v, first).get()
    }

    #[inline(always)]
    fn with_room(f: impl FnOnce(&mut Room<V6>) -> Outcome) -> Outcome {
        match scratch6() {
            // SAFETY: the room alone (the packet, the scratch's other
            // field, is borrowed by the caller).
            Some(s) => f(unsafe { &mut *core::ptr::addr_of_mut!((*s).room) }),
            None => Err(DropReason::Internal),
        }
    }
}

/// The value type of a family's conntrack map.
pub type CtVal<F> = <<F as Ns>::Ct as CtKey>::Value;

/// The keys and values a new flow is made of (nodeport.rs), each written
/// before it is read. IPv4's room is on the stack of the new flow's path,
/// as plain locals were. IPv6's would not fit the 512-byte stack with the
/// rest of the path (its keys and values hold four times the address), so
/// it is in a per-CPU scratch map (one per CPU: a TC program runs to its
/// end on its CPU, and nothing in the room outlives the packet).
#[repr(C)]
pub struct Room<F: Ns> {
    /// The frontend's service map key.
    pub svc: MaybeUninit<F::Key>,
    /// The FORWARD key.
    pub key: MaybeUninit<F::Ct>,
    /// The REPLY key.
    pub rkey: MaybeUninit<F::Ct>,
    /// The FORWARD value (or an entry found).
    pub val: MaybeUninit<CtVal<F>>,
    /// The REPLY value.
    pub rev: MaybeUninit<CtVal<F>>,
}

impl<F: Ns> Room<F> {
    /// An empty room: nothing to initialize (zeroing 80 bytes would cost a
    /// `memset` call on every packet for no frontend).
    #[inline(always)]
    pub const fn new() -> Self {
        Room {
            svc: MaybeUninit::uninit(),
            key: MaybeUninit::uninit(),
            rkey: MaybeUninit::uninit(),
            val: MaybeUninit::uninit(),
            rev: MaybeUninit::uninit(),
        }
    }
}

/// IPv6's per-CPU scratch (`ferry_ns6_scr`): the parsed packet and a new
/// flow's room.
#[repr(C)]
struct Scratch6 {
    pub ip: Ipv6,
    pub room: Room<V6>,
}

/// Per-CPU scratch space of the IPv6 north-south path: the parsed packet
/// and a new flow's [`Room`] (IPv6's values do not fit the stack). Not
/// pinned and not in `agent_common::maps`: it holds no state.
#[map(name = "ferry_ns6_scr")]
static NS6_SCRATCH: PerCpuArray<Scratch6> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's IPv6 scratch, as a raw pointer: its two fields are borrowed
/// apart (the packet by the handler, the room by a new flow).
#[inline(always)]
fn scratch6() -> Option<*mut Scratch6> {
    NS6_SCRATCH.get_ptr_mut(0)
}

/// This CPU's parsed IPv6 packet (in the scratch).
#[inline(always)]
pub fn packet6() -> Option<&'static mut Ipv6> {
    // SAFETY: this CPU's slot, used by this program run alone; the packet
    // field only.
    scratch6().map(|s| unsafe { &mut *core::ptr::addr_of_mut!((*s).ip) })
}
