//! North-south IPv4 maps: connection tracking with the NAT each flow gets,
//! source ranges, Maglev tables and per-device node addresses. Used by the
//! TC programs on the node's devices.

/// A flow as one packet sees it. Each translated flow has two entries: the
/// client's direction (`FORWARD`, client -> frontend) and the backend's
/// (`REPLY`, backend -> client or -> the SNAT address). A DSR flow
/// ([`ct_flags::DSR`]) has one on each of two nodes: FORWARD where the client
/// arrived, REPLY on the backend's node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`ct_dir`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Ct4Key>() == 16);

pub mod ct_dir {
    pub const FORWARD: u8 = 0;
    pub const REPLY: u8 = 1;
}

/// What to write into a packet of the flow: its new source and destination.
/// For `FORWARD`: destination = the backend, source = the SNAT address and
/// port (or the client unchanged). For `REPLY`: source = the frontend,
/// destination = the client. All four fields are always filled (an
/// unchanged address is written as itself), so the REPLY key of a flow is
/// `(nat_daddr, nat_saddr, nat_dport, nat_sport)` of its FORWARD value and
/// an ICMP error about either direction is translated from one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Value {
    pub nat_saddr: u32,
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    pub backend_id: u32,
    pub rev_nat_id: u16,
    /// [`ct_flags`].
    pub flags: u8,
    /// TCP flags seen so far (SYN/FIN/RST bits), for idle timeouts.
    pub tcp_flags: u8,
    /// Seconds of CLOCK_MONOTONIC at the last packet.
    pub last_seen: u32,
}
const _: () = assert!(core::mem::size_of::<Ct4Value>() == 24);

pub mod ct_flags {
    /// The forward direction rewrites the source to the node (SNAT).
    pub const SNAT: u8 = 1 << 0;
    /// The backend is on this node.
    pub const LOCAL: u8 = 1 << 1;
    /// Direct server return. On the node the client reached (a FORWARD entry
    /// only): the client's address is kept and the frontend travels to the
    /// backend's node in a [`DsrOpt4`] IP option; the replies do not come
    /// back. On the backend's node (a REPLY entry only, made from the
    /// option): the pod's replies leave with the frontend as their source.
    pub const DSR: u8 = 1 << 2;
    /// A pod's flow to a ClusterIP translated per packet (the socket layer
    /// did not): DNAT only, the replies translated on the egress of the
    /// client pod's device (`ferry_tc_pod_out`).
    pub const POD: u8 = 1 << 3;
}

/// The IPv4 option that carries a DSR flow's frontend (the address and port
/// the client called) from the node the client reached to the backend's
/// node, as the first option after the fixed header. Cilium's layout and
/// type: 0x9a = copied (0x80, so every fragment carries it) | class 0 |
/// number 26, in the range RFC 4727 leaves for experiments. Multi-byte
/// fields raw (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DsrOpt4 {
    /// [`DSR_OPT_TYPE`].
    pub ty: u8,
    /// [`DSR_OPT_LEN`].
    pub len: u8,
    pub port: u16,
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<DsrOpt4>() == 8);

pub const DSR_OPT_TYPE: u8 = 0x9a;
pub const DSR_OPT_LEN: u8 = 8;

/// Data of the source-range LPM trie key (aya's `lpm_trie::Key<SrcRange4>`
/// puts the prefix length before it): the prefix covers `rev_nat_id` (32
/// bits with its padding) plus the CIDR's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcRange4 {
    pub rev_nat_id: u16,
    pub _pad: u16,
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<SrcRange4>() == 8);

/// Bits of `SrcRange4` before the address.
pub const SRC_RANGE_PREFIX_BITS: u32 = 32;

/// Maglev lookup table size: a prime, as the Maglev paper requires; every
/// node computes the same table from the same backends.
pub const MAGLEV_TABLE_SIZE: u32 = 16_381;

/// Key of the Maglev map: `rev_nat_id << 16 | index` (index < table size).
#[inline(always)]
pub const fn maglev_key(rev_nat_id: u16, index: u32) -> u32 {
    ((rev_nat_id as u32) << 16) | index
}

/// Per-node settings the TC programs read (array map, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// [`node_flags`].
    pub flags: u32,
    /// SNAT source ports are taken from [min, max] (host order). 0 in
    /// either, or min > max, means [`SNAT_PORT_MIN_DEFAULT`,
    /// `SNAT_PORT_MAX_DEFAULT`].
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Port unreachables the node sends per second, all sources together
    /// (0: [`ICMP_RATE_DEFAULT`]), as `net.ipv4.icmp_msgs_per_sec`.
    pub icmp_rate: u32,
    /// How many of them may go at once (0: [`ICMP_BURST_DEFAULT`]), as
    /// `net.ipv4.icmp_msgs_burst`.
    pub icmp_burst: u32,
    /// Milliseconds between port unreachables to one source after its burst
    /// of [`ICMP_SOURCE_BURST`] (0: [`ICMP_SOURCE_INTERVAL_MS_DEFAULT`]), as
    /// `net.ipv4.icmp_ratelimit`.
    pub icmp_source_interval_ms: u32,
    pub _pad: u32,
    /// The network namespace cookie of the agent (the host's: it runs in the
    /// node's namespace), as SO_NETNS_COOKIE gives it. With
    /// [`node_flags::SOCK_HOSTNS_ONLY`] the socket hooks translate only for
    /// sockets of that namespace.
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 32);

/// The kernel's defaults for its own ICMP errors (icmp_msgs_per_sec,
/// icmp_msgs_burst, icmp_ratelimit; the per-destination burst is
/// XRLIM_BURST_FACTOR).
pub const ICMP_RATE_DEFAULT: u32 = 1_000;
pub const ICMP_BURST_DEFAULT: u32 = 50;
pub const ICMP_SOURCE_INTERVAL_MS_DEFAULT: u32 = 1_000;
pub const ICMP_SOURCE_BURST: u32 = 6;

/// Conntrack idle timeouts in seconds, shared by the agent's collection and
/// the datapath's judgement of a clashing flow (kube-proxy relies on the
/// kernel's, 5 days for established TCP; Cilium's 6 h is the saner bound
/// for a map).
pub mod ct_timeout {
    pub const TCP: u32 = 6 * 3600;
    /// After a FIN or a RST was seen.
    pub const TCP_CLOSING: u32 = 10;
    pub const UDP: u32 = 120;
}

/// TCP flag bits as conntrack keeps them (`Ct4Value::tcp_flags`).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
}

/// A TCP flow whose FIN or RST was seen.
#[inline(always)]
pub const fn ct_closing(proto: u8, flags: u8) -> bool {
    proto == crate::proto::TCP && flags & (tcp_flags::FIN | tcp_flags::RST) != 0
}

/// A flow idle for `idle` seconds is past the timeout of its state: the
/// agent collects it.
#[inline(always)]
pub const fn ct_expired(proto: u8, flags: u8, idle: u32) -> bool {
    let timeout = if ct_closing(proto, flags) {
        ct_timeout::TCP_CLOSING
    } else if proto == crate::proto::TCP {
        ct_timeout::TCP
    } else {
        ct_timeout::UDP
    };
    idle > timeout
}

/// A flow is over, so a new one may take its 5-tuple: closing, or past its
/// idle timeout.
#[inline(always)]
pub const fn ct_over(proto: u8, flags: u8, idle: u32) -> bool {
    ct_closing(proto, flags) || ct_expired(proto, flags, idle)
}

/// New flows made while the conntrack map is at least this full (per mille,
/// as the agent last measured it) are counted: [`crate::stats::Counter::NsNewFlowCtFull`].
pub const CT_PRESSURE_PERMILLE: u32 = 900;

pub mod node_flags {
    /// externalTrafficPolicy Cluster to a remote backend: keep the client's
    /// address and let the backend's node answer (DSR) instead of SNAT.
    pub const DSR: u32 = 1 << 0;
    /// Packets from outside addressed to a ClusterIP are load-balanced like
    /// an externalIP's (`--external-cluster-ip`; Cilium's
    /// `bpf-lb-external-clusterip`).
    pub const EXTERNAL_CLUSTER_IP: u32 = 1 << 1;
    /// The socket hooks translate only for sockets of the host's network
    /// namespace (`NodeConfig::netns_cookie`); pods' traffic to ClusterIPs
    /// is translated per packet (`--socket-lb-host-netns-only`; Cilium's
    /// `bpf-lb-sock-hostns-only`).
    pub const SOCK_HOSTNS_ONLY: u32 = 1 << 2;
}

/// Default SNAT source port range: above Linux's default ephemeral range
/// (`net.ipv4.ip_local_port_range` = 32768..60999), so a translated flow
/// does not take a port the node's own sockets use. The node's sockets are
/// not in the conntrack map: a SNAT port they also used would steal their
/// replies. Only a client port inside the range is ever kept as the SNAT port.
pub const SNAT_PORT_MIN_DEFAULT: u16 = 61_000;
pub const SNAT_PORT_MAX_DEFAULT: u16 = 65_535;

/// The hash a north-south flow is placed with in a Maglev table
/// (`flow_hash_v4(..) % MAGLEV_TABLE_SIZE`). Every node must compute the same
/// value for the same flow, so it is a fixed function of the 5-tuple with no
/// per-node seed: Bob Jenkins' lookup3 final mix as Linux's `jhash_3words`
/// computes it, over host-order values
/// `a = saddr, b = daddr, c = sport << 16 | dport` with `initval = proto`.
/// Arguments are raw (network order), as they sit in packets and keys.
#[inline(always)]
pub const fn flow_hash_v4(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let c = ((u16::from_be(sport) as u32) << 16) | u16::from_be(dport) as u32;
    jhash_3words(u32::from_be(saddr), u32::from_be(daddr), c, proto as u32)
}

/// `jhash_3words` of Linux's include/linux/jhash.h (lookup3's `final`).
#[inline(always)]
pub const fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    const JHASH_INITVAL: u32 = 0xdead_beef;
    let init = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (
        a.wrapping_add(init),
        b.wrapping_add(init),
        c.wrapping_add(init),
    );
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TCP, UDP};

    #[test]
    fn a_flow_is_over_when_closing_or_idle_past_the_timeout_of_its_state() {
        let est = tcp_flags::SYN;
        assert!(!ct_over(TCP, est, ct_timeout::TCP), "established, idle 6 h");
        assert!(ct_over(TCP, est, ct_timeout::TCP + 1));
        assert!(ct_over(TCP, est | tcp_flags::FIN, 0), "closing: at once");
        assert!(ct_over(TCP, tcp_flags::RST, 0));
        assert!(!ct_expired(TCP, tcp_flags::FIN, ct_timeout::TCP_CLOSING));
        assert!(ct_expired(TCP, tcp_flags::FIN, ct_timeout::TCP_CLOSING + 1));
        assert!(
            !ct_over(UDP, 0, ct_timeout::UDP),
            "UDP has no closing state"
        );
        assert!(ct_over(UDP, 0, ct_timeout::UDP + 1));
        // Flag bits on a UDP entry mean nothing.
        assert!(!ct_over(UDP, tcp_flags::FIN, 0));
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, repr(C), no implicit padding (asserted above).
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct4Value {}
    unsafe impl aya::Pod for SrcRange4 {}
    unsafe impl aya::Pod for NodeConfig {}
}
