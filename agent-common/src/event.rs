//! Datapath events for `ferry monitor`: one fixed-size record per event,
//! written by the kernel programs into the `ferry_events_v1` ring buffer
//! while a monitor holds the lease in `ferry_mon_v1` ([`MonitorControl`]).
//!
//! Addresses are 16 bytes for both families: an IPv4 address fills the
//! first 4 (network order) and the rest is zero; [`Event::family`] says
//! which. Ports are network order, as everywhere in the maps.

/// What happened.
pub mod kind {
    /// A packet dropped: [`super::Event::reason`] says why.
    pub const DROP: u8 = 1;
    /// A new north-south flow: the translated tuple names the backend (and
    /// the SNAT source, when masqueraded).
    pub const NEW_FLOW: u8 = 2;
    /// An ICMP error about a tracked flow translated: the original tuple is
    /// the flow the error quotes, the translated one what it now quotes.
    pub const ICMP_TRANSLATED: u8 = 3;
    /// An ICMP port unreachable sent for a frontend without endpoints.
    pub const PORT_UNREACHABLE: u8 = 4;
    /// Kinds above this are unknown to this build (newer programs).
    pub const LAST: u8 = PORT_UNREACHABLE;
}

/// Which program saw the packet.
pub mod program {
    /// `ferry_tc_in`: ingress of a node device.
    pub const TC_IN: u8 = 1;
    /// `ferry_tc_out`: egress of a node device.
    pub const TC_OUT: u8 = 2;
    /// `ferry_tc_pod`: ingress of a device towards local endpoints.
    pub const TC_POD: u8 = 3;
    /// The socket hooks (connect/sendmsg) and the egress guard: room for
    /// their events.
    pub const SOCK: u8 = 4;
    pub const GUARD: u8 = 5;
    /// `ferry_xdp`: a node device's XDP fast path (`--acceleration`).
    pub const XDP: u8 = 6;
}

/// `Event::family` values (the IP version).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `Event::flags`.
pub mod event_flags {
    /// The translated tuple is meaningful.
    pub const TRANSLATED: u8 = 1 << 0;
}

/// One event: 104 bytes, 8-aligned (a ring buffer record's alignment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// [`kind`].
    pub kind: u8,
    /// A [`crate::drop::DropReason`] for a drop, else 0.
    pub reason: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// IANA protocol of the flow (TCP, UDP).
    pub proto: u8,
    /// [`program`].
    pub program: u8,
    /// [`event_flags`].
    pub flags: u8,
    /// The frontend's rev-NAT id, 0 when unknown (the user side then looks
    /// the frontend up by the original destination).
    pub rev_nat_id: u16,
    /// The device the program ran on.
    pub ifindex: u32,
    /// The backend's id (a new flow, an ICMP error), else 0.
    pub backend_id: u32,
    /// The original tuple (as the packet carried it).
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// The translated tuple (new source, new destination), when
    /// [`event_flags::TRANSLATED`].
    pub nat_saddr: [u32; 4],
    pub nat_daddr: [u32; 4],
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// The conntrack flags of the flow (`ct_flags`: SNAT, LOCAL, DSR).
    pub ct_flags: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Event>() == 104);
const _: () = assert!(core::mem::align_of::<Event>() == 8);

/// The single entry of `ferry_mon_v1`: while `lease_until_ns` (CLOCK_MONOTONIC
/// ns) lies ahead, the programs emit events. 0 means off, and off costs the
/// packet paths that can emit one array lookup (inlined by the verifier) and
/// a compare: no clock read, no reserve. A monitor renews its lease
/// ([`LEASE_NS`]) every [`RENEW_NS`] and clears it on exit; one that dies
/// leaves a lease that runs out, and the first program to find it expired
/// writes 0 back, so a crashed monitor costs nothing beyond [`LEASE_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorControl {
    pub lease_until_ns: u64,
    /// The monitor's process id (user space only: one reader at a time).
    pub pid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<MonitorControl>() == 16);

/// How long a monitor's lease lasts.
pub const LEASE_NS: u64 = 5_000_000_000;
/// How often a monitor renews it.
pub const RENEW_NS: u64 = 1_000_000_000;

/// The ring buffer's size: 256 KiB, about 2,400 events (each takes its
/// 104 bytes and an 8-byte header); a power of two of pages, as the kernel
/// requires. Beyond that, events are lost and counted (`event_lost`).
pub const RING_BYTES: u32 = 256 * 1024;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no implicit padding (asserted above).
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for MonitorControl {}
}
