//! The demo's addresses and its one network beyond the lab's pod bridge: the node's external
//! device `eth0`, wired by a veth pair to the external client's namespace.
//!
//! ```text
//!  external 172.18.0.100 ─ eth0 ┃ eth0 172.18.0.2 (node) ─ br0 10.244.0.1/24 ─ pods
//!  default route: the node      ┃ ip_forward=1, ferry's TC programs on eth0
//! ```
//!
//! Dual-stack like every lab: both ends also have their IPv6 twins (`fd00:172:18::100`,
//! `fd00:172:18::2`; see [`crate::lab::ipv6_twin`]), the client an IPv6 default route via the
//! node, and the node forwards IPv6 as it forwards IPv4.
//!
//! Everything lives in lab namespaces; nothing is linked to the machine's own network.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::{
    cleanup::{self, Record},
    lab::{Lab, Pod, ipv6_twin},
    netns,
};

pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The node's device facing the outside (the agent's `--interfaces`).
pub const NODE_DEVICE: &str = "eth0";
/// The node's address on it: the Node object's InternalIP.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// The external client's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
pub const EXTERNAL_PREFIX: u8 = 24;
/// The pod name of the external client (not a pod: a namespace outside the cluster).
pub const EXTERNAL: &str = "external";
/// The in-cluster pod the clients run in (like `kubectl run -it --rm toolbox`).
pub const CLIENT: &str = "client";

pub const KUBE_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const WEB_SERVER_LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 200);
pub const INGRESS_LB_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 201);

/// What the control plane gives one Service.
#[derive(Clone, Copy, Debug)]
pub struct Allocation {
    pub namespace: &'static str,
    pub name: &'static str,
    pub cluster_ip: Ipv4Addr,
    /// status.loadBalancer.ingress (type LoadBalancer).
    pub lb_ip: Option<Ipv4Addr>,
    /// One per service port, in order (type LoadBalancer).
    pub node_ports: &'static [u16],
    /// Used for LoadBalancer services with externalTrafficPolicy Local.
    pub health_check_node_port: u16,
}

const fn clusterip(namespace: &'static str, name: &'static str, last: u8) -> Allocation {
    Allocation {
        namespace,
        name,
        cluster_ip: Ipv4Addr::new(10, 96, 0, last),
        lb_ip: None,
        node_ports: &[],
        health_check_node_port: 0,
    }
}

/// Fixed addresses, so that the report and the instructions can name them.
pub const ALLOCATIONS: &[Allocation] = &[
    clusterip("kube-system", "kube-dns", 10),
    clusterip("default", "mysql", 20),
    clusterip("default", "redis", 21),
    Allocation {
        lb_ip: Some(WEB_SERVER_LB_IP),
        node_ports: &[30888],
        health_check_node_port: 32088,
        ..clusterip("default", "web-server", 22)
    },
    clusterip("default", "gin", 23),
    clusterip("default", "vue", 24),
    Allocation {
        lb_ip: Some(INGRESS_LB_IP),
        node_ports: &[30080],
        health_check_node_port: 32080,
        ..clusterip("ingress-nginx", "ingress-nginx-controller", 25)
    },
];

pub fn allocation(namespace: &str, name: &str) -> Option<Allocation> {
    ALLOCATIONS
        .iter()
        .find(|a| a.namespace == namespace && a.name == name)
        .copied()
}

/// Gives the node its external device and adds the external client's namespace behind it.
/// Returns the client as a [`Pod`] (for running programs in it; it is on no bridge).
pub fn add_external(lab: &Lab) -> Result<Pod> {
    let ns = format!("{}{EXTERNAL}", Record::netns_prefix(lab.id()));
    let node = lab.node_netns();
    cleanup::update(lab.id(), |r| r.netns.push(ns.clone()));
    netns::add(&ns)?;
    netns::enable_ipv6(&ns)?;
    // Born inside the lab: eth0 in the client, its peer eth0 in the node.
    netns::ip(
        &ns,
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            NODE_DEVICE,
            "netns",
            node,
        ],
    )?;
    let node_addr = format!("{NODE_IP}/{EXTERNAL_PREFIX}");
    let client_addr = format!("{EXTERNAL_IP}/{EXTERNAL_PREFIX}");
    netns::ip(node, &["addr", "add", &node_addr, "dev", NODE_DEVICE])?;
    netns::add_ipv6(node, NODE_DEVICE, &format!("{}/64", ipv6_twin(NODE_IP)))?;
    netns::ip(node, &["link", "set", NODE_DEVICE, "up"])?;
    netns::ip(&ns, &["addr", "add", &client_addr, "dev", "eth0"])?;
    netns::add_ipv6(&ns, "eth0", &format!("{}/64", ipv6_twin(EXTERNAL_IP)))?;
    netns::ip(&ns, &["link", "set", "eth0", "up"])?;
    netns::ip(&ns, &["link", "set", "lo", "up"])?;
    // The load balancer IPs (and everything else) are routed to the node, as a cloud load
    // balancer or a router in front of the cluster would.
    netns::ip(
        &ns,
        &["route", "add", "default", "via", &NODE_IP.to_string()],
    )?;
    netns::ip(
        &ns,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ipv6_twin(NODE_IP).to_string(),
            "dev",
            "eth0",
        ],
    )?;
    // The node forwards between its device and the pod bridge (this namespace's own sysctl).
    netns::sysctl(
        node,
        &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
    )?;
    // Checksums must be right on the wire: a broken NAT checksum update would show.
    netns::run(&ns, "ethtool", &["-K", "eth0", "tx", "off"])?;
    netns::run(node, "ethtool", &["-K", NODE_DEVICE, "tx", "off"])?;
    Ok(Pod {
        name: EXTERNAL.to_owned(),
        ip: EXTERNAL_IP,
        ip6: ipv6_twin(EXTERNAL_IP),
        netns_path: netns::path(&ns),
        netns: ns,
        cgroup: None,
    })
}
