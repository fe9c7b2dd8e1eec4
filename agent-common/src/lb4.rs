//! IPv4 load-balancing maps, after Cilium's split (bpf/lib/lb.h): one service
//! map whose slot 0 is the frontend and whose slots 1..=count name backends,
//! a backend map, a reverse-NAT map and, for the socket layer, a per-socket
//! reverse translation map and a session-affinity map. IPv6 gets its own
//! `*6` types and maps beside these.

/// Key of the service map. `addr`/`port` are network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Svc4Key {
    pub addr: u32,
    pub port: u16,
    /// 0 = the frontend, 1..=count = backend slots (host order).
    pub slot: u16,
    pub proto: u8,
    /// [`scope`]: which traffic this entry serves.
    pub scope: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Svc4Key>() == 12);

/// Lookup scopes of a frontend: in-cluster clients read the `INTERNAL` entry
/// when the `EXTERNAL` one is flagged `svc_flags::TWO_SCOPES`.
pub mod scope {
    pub const EXTERNAL: u8 = 0;
    pub const INTERNAL: u8 = 1;
}

/// Value of the service map. In slot 0 `count`, `flags`, `rev_nat_id` and
/// `affinity_timeout` describe the frontend and `backend_id` is 0; in a
/// backend slot only `backend_id` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SvcValue {
    pub backend_id: u32,
    /// Number of usable backends (slots 1..=count). 0 = reject.
    pub count: u16,
    pub rev_nat_id: u16,
    /// [`svc_flags`].
    pub flags: u16,
    pub _pad: u16,
    /// Session affinity timeout in seconds (with `svc_flags::AFFINITY`).
    pub affinity_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<SvcValue>() == 16);

pub mod svc_flags {
    /// sessionAffinity: ClientIP.
    pub const AFFINITY: u16 = 1 << 0;
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 1;
    /// The frontend is a node address on a nodePort.
    pub const NODE_PORT: u16 = 1 << 2;
    /// The frontend is an externalIPs address.
    pub const EXTERNAL_IP: u16 = 1 << 3;
    /// The frontend is a LoadBalancer ingress IP.
    pub const LOAD_BALANCER: u16 = 1 << 4;
    /// externalTrafficPolicy: Local.
    pub const ETP_LOCAL: u16 = 1 << 5;
    /// internalTrafficPolicy: Local.
    pub const ITP_LOCAL: u16 = 1 << 6;
    /// The external-scope entry holds only node-local backends
    /// (externalTrafficPolicy Local); clients inside the cluster (the socket
    /// layer) use the internal-scope entry, which holds all of them, as
    /// kube-proxy short-circuits pods to the cluster-wide endpoints.
    pub const TWO_SCOPES: u16 = 1 << 7;
    /// loadBalancerSourceRanges: only clients in the service's ranges
    /// (the source-range LPM map) may use its external frontends.
    pub const SOURCE_RANGES: u16 = 1 << 8;
    /// Maglev consistent hashing instead of a random choice (north-south).
    pub const MAGLEV: u16 = 1 << 9;
    /// No usable endpoint (count 0) because a Local traffic policy leaves
    /// none on this node while the Service has endpoints elsewhere: the
    /// traffic is dropped (the client times out), as kube-proxy does; a
    /// frontend with count 0 without this flag has no endpoint anywhere and
    /// is rejected.
    pub const DROP_NO_LOCAL: u16 = 1 << 10;

    /// Every flag with the name tools show it by: the one list, so a new
    /// flag cannot be left out of `ferry services` (a test checks that the
    /// bits are contiguous from bit 0).
    pub const NAMES: &[(u16, &str)] = &[
        (AFFINITY, "SessionAffinity"),
        (CLUSTER_IP, "ClusterIP"),
        (NODE_PORT, "NodePort"),
        (EXTERNAL_IP, "ExternalIP"),
        (LOAD_BALANCER, "LoadBalancer"),
        (ETP_LOCAL, "ExternalTrafficPolicyLocal"),
        (ITP_LOCAL, "InternalTrafficPolicyLocal"),
        (TWO_SCOPES, "TwoScopes"),
        (SOURCE_RANGES, "SourceRanges"),
        (MAGLEV, "Maglev"),
        (DROP_NO_LOCAL, "DropNoLocalEndpoints"),
    ];
}

/// Value of the backend map (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend4 {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    /// [`backend_state`].
    pub state: u8,
    /// [`backend_flags`].
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Backend4>() == 12);

pub mod backend_flags {
    /// The endpoint runs on this node: north-south traffic to it needs no
    /// SNAT, so the pod sees the client's own address.
    pub const LOCAL: u8 = 1 << 0;
}

pub mod backend_state {
    /// Ready: serves new connections.
    pub const ACTIVE: u8 = 0;
    /// Serving but terminating: used only when a service has no ready
    /// endpoint (KEP-1669 fallback).
    pub const TERMINATING: u8 = 1;
}

/// Value of the reverse-NAT map (key: rev-NAT id, u16).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat4 {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat4>() == 8);

/// Key of the socket reverse-translation map: which service a socket's
/// backend address stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRev4Key {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRev4Key>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRev4 {
    pub addr: u32,
    pub port: u16,
    pub rev_nat_id: u16,
}
const _: () = assert!(core::mem::size_of::<SockRev4>() == 8);

/// A connected socket's reverse translation in the socket slot array
/// (`maps::SOCK_SLOTS_V4`), at [`crate::maps::sock_slot`] of its cookie:
/// the backend it was sent to and the service that stands for. `cookie` 0
/// is a free slot. Network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockSlot4 {
    pub cookie: u64,
    pub backend: u32,
    pub backend_port: u16,
    pub port: u16,
    pub addr: u32,
    pub rev_nat_id: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockSlot4>() == 24);

/// Key of the membership map (`maps::MEMBERS_V4`): a backend of an exposed
/// frontend (named by its rev-NAT id on this node). Network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member4Key {
    pub rev_nat_id: u16,
    pub proto: u8,
    pub _pad: u8,
    pub addr: u32,
    pub port: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<Member4Key>() == 12);

/// A destination the socket layer translated to a backend of a LoadBalancer
/// IP with loadBalancerSourceRanges. Network order; `rev_nat_id` names the
/// frontend's external entry (the key of its ranges).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuardDest4 {
    pub addr: u32,
    pub port: u16,
    pub rev_nat_id: u16,
}
const _: () = assert!(core::mem::size_of::<GuardDest4>() == 8);

/// Per-socket record of the egress guard (socket-local storage): what the
/// socket layer let through that each packet must still be checked for once
/// its source address is known (a connect() has none yet). Sockets without
/// a record pay one pointer test per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockGuard4 {
    /// [`guard_flags`].
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Set by connect(): the socket's connected destination.
    pub conn: GuardDest4,
    /// Set by an unconnected sendmsg(): its datagram's destination (the
    /// packet leaves before the next sendmsg runs).
    pub msg: GuardDest4,
}
const _: () = assert!(core::mem::size_of::<SockGuard4>() == 20);

pub mod guard_flags {
    /// The socket sent to a ClusterIP untranslated (a Local traffic policy
    /// without a local endpoint): its packets to a ClusterIP are dropped.
    pub const NO_LOCAL: u8 = 1 << 0;
    /// `conn` holds a source-ranged destination.
    pub const RANGES_CONN: u8 = 1 << 1;
    /// `msg` holds a source-ranged destination.
    pub const RANGES_MSG: u8 = 1 << 2;
}

/// Key of the dead-backend map (`maps::DEAD_V4`): a UDP backend just removed
/// from a service. Network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dead4Key {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Dead4Key>() == 8);

/// The immediate of the placeholder helper call `ferry_udp_gc` makes in
/// place of the kfunc `bpf_sock_destroy` (bpf-linker 0.13 emits no `.ksyms`
/// BTF for extern functions, so aya cannot relocate a real kfunc call). The
/// agent patches it into a kfunc call (src_reg 2, imm the function's
/// vmlinux BTF id) before loading the object; left unpatched (no such
/// kfunc), only that program fails to load.
pub const SOCK_DESTROY_CALL_MAGIC: i32 = 0x6665_7279;

/// Key of the affinity map. For the socket layer the client is its network
/// namespace cookie (a pod's identity before its socket has an address);
/// north-south traffic keys on the client IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub rev_nat_id: u16,
    /// [`affinity_client`].
    pub kind: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

pub mod affinity_client {
    pub const NETNS_COOKIE: u8 = 0;
    pub const IPV4: u8 = 1;
    /// [`crate::affinity_id_v6`] of the client's address.
    pub const IPV6: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// Seconds of CLOCK_MONOTONIC (bpf_ktime_get_ns / 1e9) at last use.
    pub last_used: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no implicit padding (asserted above).
    unsafe impl aya::Pod for Svc4Key {}
    unsafe impl aya::Pod for SvcValue {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for SockRev4Key {}
    unsafe impl aya::Pod for SockRev4 {}
    unsafe impl aya::Pod for SockSlot4 {}
    unsafe impl aya::Pod for Dead4Key {}
    unsafe impl aya::Pod for Member4Key {}
    unsafe impl aya::Pod for SockGuard4 {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
}
