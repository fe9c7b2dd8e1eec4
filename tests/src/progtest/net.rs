//! The address plan of the table tests, one per family: the same roles (node, client, VIP,
//! pods, routers) with an IPv4 and an IPv6 address each, so that one row builds the frames of
//! either family from the same builder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use agent_common::net::{ip4_to_raw, ip6_to_raw};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

pub const V4: &[Family] = &[Family::V4];
pub const V6: &[Family] = &[Family::V6];
pub const BOTH: &[Family] = &[Family::V4, Family::V6];

/// The device of a test run (the namespace's loopback): the node address maps' key.
pub const IFINDEX: u32 = 1;

/// The upstream router's MAC (source of what arrives) and the node's.
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The next hop of the FIB tests (`d0`) and its neighbour (the gateway).
pub const ME_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x02];

/// Rev-NAT ids the rows use.
pub const REV_LB: u16 = 7;
pub const REV_NODEPORT: u16 = 8;

/// The addresses of one family.
#[derive(Debug)]
pub struct Net {
    pub family: Family,
    /// This node's address on the device; node B's in the DSR rows.
    pub node: IpAddr,
    pub node_b: IpAddr,
    pub client: IpAddr,
    pub client2: IpAddr,
    pub outsider: IpAddr,
    pub lb_vip: IpAddr,
    pub external_ip: IpAddr,
    pub cluster_ip: IpAddr,
    pub local_pod: IpAddr,
    /// The node as the local pods' router.
    pub local_router: IpAddr,
    pub remote_pod: IpAddr,
    pub remote_pod2: IpAddr,
    /// A router between the node and remote pods.
    pub router: IpAddr,
    /// An address no node, pod or client has.
    pub forged: IpAddr,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// `a:b:c::d`.
pub const fn v6(a: u16, b: u16, c: u16, d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(a, b, c, 0, 0, 0, 0, d))
}

pub static NET4: Net = Net {
    family: Family::V4,
    node: v4(172, 18, 0, 2),
    node_b: v4(172, 18, 0, 3),
    client: v4(198, 51, 100, 7),
    client2: v4(198, 51, 100, 8),
    outsider: v4(203, 0, 113, 99),
    lb_vip: v4(203, 0, 113, 10),
    external_ip: v4(192, 0, 2, 50),
    cluster_ip: v4(10, 96, 0, 10),
    local_pod: v4(10, 244, 0, 5),
    local_router: v4(10, 244, 0, 1),
    remote_pod: v4(10, 244, 1, 9),
    remote_pod2: v4(10, 244, 1, 10),
    router: v4(100, 64, 0, 254),
    forged: v4(6, 6, 6, 6),
};

pub static NET6: Net = Net {
    family: Family::V6,
    node: v6(0xfd00, 0x18, 0, 2),
    node_b: v6(0xfd00, 0x18, 0, 3),
    client: v6(0x2001, 0xdb8, 0x100, 7),
    client2: v6(0x2001, 0xdb8, 0x100, 8),
    outsider: v6(0x2001, 0xdb8, 0x200, 0x99),
    lb_vip: v6(0x2001, 0xdb8, 0x10, 0x10),
    external_ip: v6(0x2001, 0xdb8, 0x50, 0x50),
    cluster_ip: v6(0xfd00, 0x96, 0, 0x10),
    local_pod: v6(0xfd00, 0x244, 0, 5),
    local_router: v6(0xfd00, 0x244, 0, 1),
    remote_pod: v6(0xfd00, 0x244, 1, 9),
    remote_pod2: v6(0xfd00, 0x244, 1, 0xa),
    router: v6(0xfd00, 0x64, 0, 0xfe),
    forged: v6(0x2001, 0xdb8, 0x666, 6),
};

impl Family {
    pub fn net(self) -> &'static Net {
        match self {
            Family::V4 => &NET4,
            Family::V6 => &NET6,
        }
    }

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// An address and port.
pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(a) => SocketAddr::new(IpAddr::V4(a), port),
        IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, port, 0, 0)),
    }
}

/// The IPv4 address, for what only IPv4 has.
pub fn ip4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("{a} is no IPv4 address"),
    }
}

pub fn ip6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => panic!("{a} is no IPv6 address"),
    }
}

pub fn raw4(ip: IpAddr) -> u32 {
    ip4_to_raw(ip4(ip).octets())
}

pub fn raw6(ip: IpAddr) -> [u32; 4] {
    ip6_to_raw(ip6(ip).octets())
}
