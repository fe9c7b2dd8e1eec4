//! A two-node lab for north-south traffic.
//!
//! ```text
//!  fy<id>-ext1  eth0 172.18.0.100 fd00:172:18::100 ──┐
//!  fy<id>-ext2  eth0 172.18.0.101 fd00:172:18::101 ──┤   fy<id>-net: bridge br0, the L2
//!  fy<id>-node1 eth0 172.18.0.11  fd00:172:18::11  ──┤   segment 172.18.0.0/24 and
//!  fy<id>-node2 eth0 172.18.0.12  fd00:172:18::12  ──┘   fd00:172:18::/64 (veth peers
//!                                                        v-ext1, v-ext2, v-node1, v-node2)
//!
//!  node N: ip_forward=1 and IPv6 forwarding=1, rp_filter=0, br0 10.244.N.1/24 and
//!          fd00:10:244:N::1/64 with its pods (10.244.N.2, .3, ... and fd00:10:244:N::2, ::3,
//!          ...; default routes via 10.244.N.1 and fd00:10:244:N::1), routes to the other
//!          node's pod CIDRs (10.244.M.0/24 via its 172.18.0.1M, fd00:10:244:M::/64 via its
//!          fd00:172:18::1M), its own cgroup (<lab cgroup>/nodeN) and pin dir (<bpffs>/nodeN),
//!          and `ferry agent --node-name nodeN --interfaces eth0` running in its namespace.
//! ```
//!
//! Dual-stack like every lab (see [`crate::lab`]): each IPv4 address has its IPv6 twin
//! ([`ipv6_twin`]), each /24 a /64, and IPv6 is routed wherever IPv4 is. The Node objects list
//! both InternalIPs.
//!
//! The external clients have no route beyond the segment: a test points the ranges it uses
//! (load balancer IPs in [`LB_RANGE`], externalIPs in [`EXTERNAL_IP_RANGE`]) at the node it
//! wants with [`Cluster::route`]. They run in the lab cgroup, where no agent attaches anything,
//! so their sockets are never translated: what reaches them went through the nodes' devices.
//! The pods of node N run in node N's cgroup, where node N's agent hooks sockets.
//!
//! A [`Cluster`] is built on a bare [`Lab`] (and dereferences to it): its id, cgroup, bpffs,
//! manifests directory (both agents read the same one, which holds the two Node objects),
//! process tracking and cleanup. Everything is made inside lab namespaces; nothing is linked
//! to the root namespace. Checksum offload is off on every veth end.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    net::{Ipv4Addr, Ipv6Addr},
    ops::Deref,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Mutex, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ferry::{cmd::services::ServicesView, datapath::codec::FlowView};
use serde_json::Value;

use crate::{
    agent::{AgentOpts, http_status_in, read_lossy},
    cleanup::{self, Record},
    lab::{HEALTHZ_PORT, IPV6_USABLE_DEADLINE, Lab, Pod, ipv6_twin, ipv6_twin_net},
    manifests::Node,
    netns,
    netns::{checksum_offload_off, sysctl},
    proc::{self, POLL, Placement, Proc, lock},
};

/// The segment's prefix length (172.18.0.0/24).
pub const SEGMENT_PREFIX_LEN: u8 = 24;
/// The segment's IPv6 prefix length (fd00:172:18::/64).
pub const SEGMENT_PREFIX6_LEN: u8 = 64;
/// The first external client's address.
pub const EXT1_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
/// The first external client's IPv6 address (fd00:172:18::100).
pub const EXT1_IP6: Ipv6Addr = ipv6_twin(EXT1_IP);
/// The second external client's address (outside the source ranges of the tests).
pub const EXT2_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 101);
/// The second external client's IPv6 address (fd00:172:18::101).
pub const EXT2_IP6: Ipv6Addr = ipv6_twin(EXT2_IP);
/// Where load balancer ingress IPs come from (TEST-NET-1).
pub const LB_RANGE: &str = "192.0.2.0/24";
/// Where externalIPs come from (TEST-NET-2).
pub const EXTERNAL_IP_RANGE: &str = "198.51.100.0/24";
/// The router of [`Cluster::add_routed_client`] on the segment.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 254);
/// The router's IPv6 address on the segment (fd00:172:18::254).
pub const ROUTER_IP6: Ipv6Addr = ipv6_twin(ROUTER_IP);
/// The network behind that router.
pub const ROUTED_NET: &str = "172.19.0.0/24";
/// The IPv6 network behind that router.
pub const ROUTED_NET6: &str = "fd00:172:19::/64";
/// IPv6's minimum link MTU: below it the kernel turns IPv6 off on a device.
const IPV6_MIN_MTU: u32 = 1280;

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    /// `node1`, `node2`: the Node object's name and `--node-name`.
    pub name: String,
    /// Its address on the segment (eth0), the Node object's InternalIP.
    pub ip: Ipv4Addr,
    /// Its IPv6 address on the segment (eth0, fd00:172:18::1N), the Node object's second
    /// InternalIP.
    pub ip6: Ipv6Addr,
    pub netns: String,
    pub netns_path: PathBuf,
    /// Its cgroup: its pods run there and its agent attaches the socket hooks there.
    pub cgroup: PathBuf,
    /// Its agent's `--bpffs`.
    pub pin_dir: PathBuf,
    /// Its bridge address, the pods' default gateway (10.244.N.1).
    pub gateway: Ipv4Addr,
    /// Its bridge IPv6 address, the pods' IPv6 default gateway (fd00:10:244:N::1).
    pub gateway6: Ipv6Addr,
    /// 10.244.N.0/24
    pub pod_cidr: String,
    /// fd00:10:244:N::/64
    pub pod_cidr6: String,
}

impl ClusterNode {
    /// The node itself as a place to run programs (as a hostNetwork pod would): its network
    /// namespace and its cgroup, so its agent's socket hooks apply.
    pub fn host(&self) -> Pod {
        Pod {
            name: self.name.clone(),
            ip: self.ip,
            ip6: self.ip6,
            netns: self.netns.clone(),
            netns_path: self.netns_path.clone(),
            cgroup: Some(self.cgroup.clone()),
        }
    }
}

/// The two-node lab. Dropping it stops the agents and removes everything.
pub struct Cluster {
    // Dropped after `Drop for Cluster` ran (agents stopped), like any field.
    lab: Lab,
    nodes: Vec<ClusterNode>,
    net: String,
    agents: Mutex<BTreeMap<String, Proc>>,
    agent_logs: Mutex<BTreeMap<String, Vec<PathBuf>>>,
    pod_count: Mutex<BTreeMap<String, u8>>,
    routed: Mutex<u8>,
}

impl Deref for Cluster {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Cluster {
    /// Creates the two nodes, the segment and the clients `ext1` and `ext2` (panics with the
    /// reason if it cannot).
    pub fn new(test: &str) -> Cluster {
        Cluster::try_new(test)
            .unwrap_or_else(|e| panic!("setting up the cluster for {test}: {e:#}"))
    }

    pub fn try_new(test: &str) -> Result<Cluster> {
        let lab = Lab::try_new_bare(test)?;
        let prefix = Record::netns_prefix(lab.id());
        let nodes = (1..=2u8)
            .map(|n| {
                let name = format!("node{n}");
                let ns = format!("{prefix}{name}");
                let ip = Ipv4Addr::new(172, 18, 0, 10 + n);
                let gateway = Ipv4Addr::new(10, 244, n, 1);
                ClusterNode {
                    ip,
                    ip6: ipv6_twin(ip),
                    netns_path: netns::path(&ns),
                    netns: ns,
                    cgroup: lab.cgroup().join(&name),
                    pin_dir: lab.bpffs().join(&name),
                    gateway,
                    gateway6: ipv6_twin(gateway),
                    pod_cidr: format!("10.244.{n}.0/24"),
                    pod_cidr6: ipv6_twin_net(gateway),
                    name,
                }
            })
            .collect();
        let cluster = Cluster {
            net: format!("{prefix}net"),
            lab,
            nodes,
            agents: Mutex::new(BTreeMap::new()),
            agent_logs: Mutex::new(BTreeMap::new()),
            pod_count: Mutex::new(BTreeMap::new()),
            routed: Mutex::new(0),
        };
        // From here on, a failure drops `cluster`, which removes what was made so far.
        cluster.setup()?;
        Ok(cluster)
    }

    fn setup(&self) -> Result<()> {
        let net = &self.net;
        self.add_netns(net)?;
        netns::ip(net, &["link", "add", "br0", "type", "bridge"])?;
        netns::ip(net, &["link", "set", "br0", "up"])?;
        for node in &self.nodes {
            self.setup_node(node)?;
        }
        // Each node reaches the other's pods through the other's eth0, in both families.
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.name != node.name) {
                netns::ip(
                    &node.netns,
                    &[
                        "route",
                        "add",
                        &other.pod_cidr,
                        "via",
                        &other.ip.to_string(),
                    ],
                )?;
                netns::ip(
                    &node.netns,
                    &[
                        "-6",
                        "route",
                        "add",
                        &other.pod_cidr6,
                        "via",
                        &other.ip6.to_string(),
                        "dev",
                        "eth0",
                    ],
                )?;
            }
        }
        for (name, ip) in [("ext1", EXT1_IP), ("ext2", EXT2_IP)] {
            self.add_external(name, ip)?;
        }
        Ok(())
    }

    /// Creates a namespace (recorded for cleanup first) with lo up and IPv6 on.
    fn add_netns(&self, ns: &str) -> Result<()> {
        cleanup::update(self.lab.id(), |r| r.netns.push(ns.to_owned()));
        netns::add(ns)?;
        netns::enable_ipv6(ns)?;
        netns::ip(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `eth0` in `ns` with `ip` and its IPv6 twin, its peer `peer` on the segment's bridge,
    /// both up, checksum offload off.
    fn plug_into_segment(&self, ns: &str, peer: &str, ip: Ipv4Addr) -> Result<()> {
        let net = &self.net;
        netns::ip(
            ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", net,
            ],
        )?;
        netns::ip(net, &["link", "set", peer, "master", "br0"])?;
        netns::ip(net, &["link", "set", peer, "up"])?;
        netns::ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{ip}/{SEGMENT_PREFIX_LEN}"),
                "dev",
                "eth0",
            ],
        )?;
        netns::add_ipv6(
            ns,
            "eth0",
            &format!("{}/{SEGMENT_PREFIX6_LEN}", ipv6_twin(ip)),
        )?;
        netns::ip(ns, &["link", "set", "eth0", "up"])?;
        checksum_offload_off(ns, "eth0")?;
        checksum_offload_off(net, peer)?;
        netns::wait_ipv6_usable(ns, "eth0", IPV6_USABLE_DEADLINE)?;
        Ok(())
    }

    fn setup_node(&self, node: &ClusterNode) -> Result<()> {
        let ns = &node.netns;
        self.add_netns(ns)?;
        sysctl(
            ns,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.default.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.lo.rp_filter=0",
                // The nodes forward between hosts of one segment (eTP Cluster to the other
                // node): no ICMP redirects telling clients to bypass them.
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        )?;
        self.plug_into_segment(ns, &format!("v-{}", node.name), node.ip)?;
        netns::ip(ns, &["link", "add", "br0", "type", "bridge"])?;
        netns::ip(
            ns,
            &["addr", "add", &format!("{}/24", node.gateway), "dev", "br0"],
        )?;
        netns::add_ipv6(ns, "br0", &format!("{}/64", node.gateway6))?;
        netns::ip(ns, &["link", "set", "br0", "up"])?;
        netns::wait_ipv6_usable(ns, "br0", IPV6_USABLE_DEADLINE)?;
        sysctl(
            ns,
            &[
                "net.ipv4.conf.eth0.rp_filter=0",
                "net.ipv4.conf.br0.rp_filter=0",
                "net.ipv4.conf.eth0.send_redirects=0",
                "net.ipv4.conf.br0.send_redirects=0",
            ],
        )?;
        cleanup::update(self.lab.id(), |r| r.child_cgroups.push(node.cgroup.clone()));
        fs::create_dir(&node.cgroup)
            .with_context(|| format!("creating cgroup {}", node.cgroup.display()))?;
        self.lab
            .manifests()
            .apply(&Node::new(&node.name, node.ip).address("InternalIP", node.ip6));
        Ok(())
    }

    fn add_external(&self, name: &str, ip: Ipv4Addr) -> Result<Pod> {
        let ns = format!("{}{name}", Record::netns_prefix(self.lab.id()));
        self.add_netns(&ns)?;
        sysctl(
            &ns,
            &[
                "net.ipv4.conf.all.accept_redirects=0",
                "net.ipv4.conf.default.accept_redirects=0",
                "net.ipv6.conf.all.accept_redirects=0",
                "net.ipv6.conf.default.accept_redirects=0",
            ],
        )?;
        self.plug_into_segment(&ns, &format!("v-{name}"), ip)?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            ip6: ipv6_twin(ip),
            netns_path: netns::path(&ns),
            netns: ns,
            cgroup: None,
        };
        if !self.lab.register_pod(pod.clone()) {
            bail!("the name {name} is taken");
        }
        Ok(pod)
    }

    /// Both nodes.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// A node by name (`node1`, `node2`).
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The segment's bridge namespace.
    pub fn net_netns(&self) -> &str {
        &self.net
    }

    /// An external client (`ext1`, `ext2`, or one added with [`add_routed_client`]).
    ///
    /// [`add_routed_client`]: Cluster::add_routed_client
    pub fn ext(&self, name: &str) -> Pod {
        self.lab.pod(name)
    }

    /// Adds a pod `fy<id>-<name>` behind `node` (10.244.N.2, .3, ... and their IPv6 twins
    /// fd00:10:244:N::2, ::3, ...), in that node's cgroup.
    pub fn add_pod_on(&self, node: &str, name: &str) -> Pod {
        self.try_add_pod_on(node, name)
            .unwrap_or_else(|e| panic!("adding pod {name} on {node}: {e:#}"))
    }

    fn try_add_pod_on(&self, node: &str, name: &str) -> Result<Pod> {
        let node = self.node(node).clone();
        let k = {
            let mut counts = lock(&self.pod_count);
            let k = counts.entry(node.name.clone()).or_insert(0);
            *k += 1;
            *k
        };
        if k > 250 {
            bail!("no address left on {}", node.name);
        }
        let o = node.gateway.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], k + 1);
        let ip6 = ipv6_twin(ip);
        let ns = format!("{}{name}", Record::netns_prefix(self.lab.id()));
        if netns::exists(&ns) {
            bail!("the name {name} is taken");
        }
        let peer = format!("veth{k}");
        self.add_netns(&ns)?;
        sysctl(
            &ns,
            &[
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        // The pair is born inside the lab: eth0 in the pod, its peer in the node namespace.
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
                &peer,
                "netns",
                &node.netns,
            ],
        )?;
        netns::ip(&node.netns, &["link", "set", &peer, "master", "br0"])?;
        netns::ip(&node.netns, &["link", "set", &peer, "up"])?;
        netns::ip(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns::add_ipv6(&ns, "eth0", &format!("{ip6}/64"))?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip(
            &ns,
            &["route", "add", "default", "via", &node.gateway.to_string()],
        )?;
        netns::ip(
            &ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &node.gateway6.to_string(),
                "dev",
                "eth0",
            ],
        )?;
        checksum_offload_off(&ns, "eth0")?;
        checksum_offload_off(&node.netns, &peer)?;
        netns::wait_ipv6_usable(&ns, "eth0", IPV6_USABLE_DEADLINE)?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            ip6,
            netns_path: netns::path(&ns),
            netns: ns,
            cgroup: Some(node.cgroup.clone()),
        };
        if !self.lab.register_pod(pod.clone()) {
            bail!("the name {name} is taken");
        }
        Ok(pod)
    }

    /// Points `prefix` (a CIDR such as [`LB_RANGE`]) at `node` in the client's routing table
    /// (replacing an earlier route of that prefix). An IPv6 prefix (one with a `:`, e.g.
    /// `fd00:10:244::/48` or `::/0`) goes via the node's IPv6 address; `default` is IPv4's.
    pub fn route(&self, client: &Pod, prefix: &str, node: &str) {
        let n = self.node(node);
        let result = if prefix.contains(':') {
            let via = n.ip6.to_string();
            netns::ip(
                &client.netns,
                &["-6", "route", "replace", prefix, "via", &via, "dev", "eth0"],
            )
        } else {
            let via = n.ip.to_string();
            netns::ip(&client.netns, &["route", "replace", prefix, "via", &via])
        };
        result.unwrap_or_else(|e| panic!("route {prefix} via {node} in {}: {e:#}", client.name));
    }

    /// Adds a client `fy<id>-<name>` (172.19.0.N) behind a router on the segment
    /// ([`ROUTER_IP`], namespace `fy<id>-rtr`, made with the first such client). The router's
    /// link towards the clients has MTU `mtu` while the clients' own end keeps 1500, so the
    /// clients advertise a full-size MSS and the router answers larger packets towards them
    /// with ICMP "fragmentation needed". The router sends [`LB_RANGE`] and
    /// [`EXTERNAL_IP_RANGE`] to `via_node`; both nodes route [`ROUTED_NET`] via the router.
    /// IPv6 likewise: the router is [`ROUTER_IP6`], the clients are in [`ROUTED_NET6`]
    /// (fd00:172:19::N+1, default route via fd00:172:19::1) and both nodes route it via the
    /// router; no IPv6 range is sent to a node. With `mtu` below 1280, IPv6's minimum, the
    /// kernel turns IPv6 off on the router's links towards the clients: then that network is
    /// IPv4 only and the client's `ip6` is configured on its own end but reaches nothing.
    pub fn add_routed_client(&self, name: &str, mtu: u32, via_node: &str) -> Pod {
        self.try_add_routed_client(name, mtu, via_node)
            .unwrap_or_else(|e| panic!("adding routed client {name}: {e:#}"))
    }

    fn try_add_routed_client(&self, name: &str, mtu: u32, via_node: &str) -> Result<Pod> {
        let prefix = Record::netns_prefix(self.lab.id());
        let rtr = format!("{prefix}rtr");
        let n = {
            let mut n = lock(&self.routed);
            *n += 1;
            *n
        };
        let v6 = mtu >= IPV6_MIN_MTU;
        let gateway = Ipv4Addr::new(172, 19, 0, 1);
        if n == 1 {
            self.add_netns(&rtr)?;
            sysctl(
                &rtr,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv6.conf.default.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )?;
            self.plug_into_segment(&rtr, "v-rtr", ROUTER_IP)?;
            netns::ip(&rtr, &["link", "add", "br1", "type", "bridge"])?;
            netns::ip(&rtr, &["link", "set", "br1", "mtu", &mtu.to_string(), "up"])?;
            netns::ip(
                &rtr,
                &["addr", "add", &format!("{gateway}/24"), "dev", "br1"],
            )?;
            if v6 {
                netns::add_ipv6(&rtr, "br1", &format!("{}/64", ipv6_twin(gateway)))?;
                netns::wait_ipv6_usable(&rtr, "br1", IPV6_USABLE_DEADLINE)?;
            }
            let via = self.node(via_node).ip.to_string();
            for range in [LB_RANGE, EXTERNAL_IP_RANGE] {
                netns::ip(&rtr, &["route", "add", range, "via", &via])?;
            }
            for node in &self.nodes {
                netns::ip(
                    &node.netns,
                    &["route", "add", ROUTED_NET, "via", &ROUTER_IP.to_string()],
                )?;
                netns::ip(
                    &node.netns,
                    &[
                        "-6",
                        "route",
                        "add",
                        ROUTED_NET6,
                        "via",
                        &ROUTER_IP6.to_string(),
                        "dev",
                        "eth0",
                    ],
                )?;
            }
        }
        let ip = Ipv4Addr::new(172, 19, 0, n + 1);
        let ip6 = ipv6_twin(ip);
        let ns = format!("{prefix}{name}");
        let peer = format!("r{n}");
        self.add_netns(&ns)?;
        netns::ip(
            &ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &rtr,
            ],
        )?;
        netns::ip(
            &rtr,
            &[
                "link",
                "set",
                &peer,
                "mtu",
                &mtu.to_string(),
                "master",
                "br1",
                "up",
            ],
        )?;
        netns::ip(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns::add_ipv6(&ns, "eth0", &format!("{ip6}/64"))?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip(
            &ns,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
        if v6 {
            netns::ip(
                &ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &ipv6_twin(gateway).to_string(),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        checksum_offload_off(&ns, "eth0")?;
        checksum_offload_off(&rtr, &peer)?;
        netns::wait_ipv6_usable(&ns, "eth0", IPV6_USABLE_DEADLINE)?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            ip6,
            netns_path: netns::path(&ns),
            netns: ns,
            cgroup: None,
        };
        if !self.lab.register_pod(pod.clone()) {
            bail!("the name {name} is taken");
        }
        Ok(pod)
    }

    // -----------------------------------------------------------------------------------------
    // Agents

    /// Starts `ferry agent` for `node` in its namespace (`--node-name`, `--cgroup`, `--bpffs`
    /// of that node, `--interfaces eth0`, the shared manifests) and waits until its /readyz
    /// answers 200. Returns the time it took.
    pub fn start_agent(&self, node: &str, opts: &AgentOpts) -> Duration {
        let node = self.node(node).clone();
        let bin = Lab::ferry_bin();
        let mut agents = lock(&self.agents);
        if agents.get(&node.name).is_some_and(Proc::is_running) {
            panic!("the agent of {} is already running", node.name);
        }
        let log_path = {
            let mut logs = lock(&self.agent_logs);
            let runs = logs.entry(node.name.clone()).or_default();
            let path =
                self.lab
                    .tmp_dir()
                    .join(format!("agent-{}-{}.log", node.name, runs.len() + 1));
            runs.push(path.clone());
            path
        };
        self.lab.add_agent_log(log_path.clone());
        let log = File::create(&log_path).expect("creating the agent log");
        let mut cmd = Command::new(&bin);
        cmd.arg("agent");
        // Lab agents never use the machine's kubeconfig.
        cmd.env_remove("KUBECONFIG");
        match &opts.kubeconfig {
            _ if opts.discover_api => &mut cmd,
            Some(kubeconfig) => cmd.arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("--manifests").arg(self.lab.manifests().dir()),
        };
        cmd.args(["--node-name", &node.name])
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(&node.pin_dir)
            .args(["--interfaces", "eth0"])
            .args(["--healthz-bind-address", &format!("0.0.0.0:{HEALTHZ_PORT}")])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup of the log fd"))
            .stderr(log);
        let placement = Placement {
            netns: Some(node.netns_path.clone()),
            cgroup: None,
        };
        let started = Instant::now();
        let child = proc::spawn_placed(&mut cmd, &placement)
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let pid = child.id();
        cleanup::update(self.lab.id(), |r| {
            r.node_agents.insert(node.name.clone(), pid);
            let entry = (bin.clone(), node.pin_dir.clone(), node.cgroup.clone());
            if !r.node_cleanups.contains(&entry) {
                r.node_cleanups.push(entry);
            }
        });
        let proc = Proc::new(format!("ferry agent of {}", node.name), child);
        let deadline = started + opts.ready_timeout;
        loop {
            if !proc.is_running() {
                let status = proc.wait_exit(Duration::ZERO);
                drop(proc);
                panic!(
                    "the agent of {} exited before it was ready ({status:?}); log:\n{}",
                    node.name,
                    read_lossy(&log_path)
                );
            }
            if http_status_in(&node.netns_path, HEALTHZ_PORT, "/readyz") == Some(200) {
                break;
            }
            if Instant::now() >= deadline {
                drop(proc);
                panic!(
                    "the agent of {} was not ready after {:?}; log:\n{}",
                    node.name,
                    opts.ready_timeout,
                    read_lossy(&log_path)
                );
            }
            thread::sleep(POLL);
        }
        agents.insert(node.name.clone(), proc);
        started.elapsed()
    }

    /// Starts both agents with default options; prints how long each took.
    pub fn start_agents(&self) {
        self.start_agents_with(&AgentOpts::default());
    }

    /// Starts both agents with these options; prints how long each took.
    pub fn start_agents_with(&self, opts: &AgentOpts) {
        for node in &self.nodes {
            let took = self.start_agent(&node.name, opts);
            println!(
                "latency: agent start on {} -> /readyz 200: {} ms",
                node.name,
                took.as_millis()
            );
        }
    }

    /// Sends SIGTERM to the node's agent and waits for it (SIGKILL after 10 s).
    pub fn stop_agent(&self, node: &str) -> Option<ExitStatus> {
        let proc = lock(&self.agents).remove(node)?;
        let status = proc.terminate_with(Duration::from_secs(10));
        cleanup::update(self.lab.id(), |r| {
            r.node_agents.remove(node);
        });
        status
    }

    pub fn agent_running(&self, node: &str) -> bool {
        lock(&self.agents).get(node).is_some_and(Proc::is_running)
    }

    /// The log of the node agent's latest run.
    pub fn agent_log(&self, node: &str) -> String {
        lock(&self.agent_logs)
            .get(node)
            .and_then(|runs| runs.last())
            .map(|p| read_lossy(p))
            .unwrap_or_default()
    }

    /// True once the node's agent attached its north-south programs to eth0 (both pinned
    /// TCX links exist).
    pub fn tc_attached(&self, node: &str) -> bool {
        let pin = &self.node(node).pin_dir;
        ["ferry_link_tcin_eth0", "ferry_link_tcout_eth0"]
            .iter()
            .all(|l| pin.join(l).exists())
    }

    /// The node's pinned TC links as the kernel reports them (`bpftool -j link show pinned`):
    /// (pin name, link id, program id), sorted by pin name.
    pub fn tc_links(&self, node: &str) -> Vec<(String, u64, u64)> {
        let pin = &self.node(node).pin_dir;
        let mut links = Vec::new();
        for name in ["ferry_link_tcin_eth0", "ferry_link_tcout_eth0"] {
            let path = pin.join(name);
            if !path.exists() {
                continue;
            }
            let out = proc::run(
                "bpftool",
                &["-j", "link", "show", "pinned", &path.to_string_lossy()],
            )
            .unwrap_or_else(|e| panic!("bpftool link show pinned {}: {e:#}", path.display()));
            let v: Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("bpftool -j printed no JSON ({e}): {out}"));
            links.push((
                name.to_owned(),
                v["id"].as_u64().unwrap_or_default(),
                v["prog_id"].as_u64().unwrap_or_default(),
            ));
        }
        links
    }

    /// Waits until both agents attached their TC programs to eth0; panics at once, saying so,
    /// if an agent reports a build without north-south programs. Returns how long it took.
    pub fn wait_north_south(&self, deadline: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let mut all = true;
            for node in &self.nodes {
                let log = self.agent_log(&node.name);
                if log.contains("no north-south programs") {
                    panic!(
                        "the agent of {} says this build has no north-south programs (ferry_tc_in/ferry_tc_out missing from the eBPF object); log:\n{log}",
                        node.name
                    );
                }
                all &= self.tc_attached(&node.name);
            }
            if all {
                return start.elapsed();
            }
            if start.elapsed() >= deadline {
                panic!(
                    "the TC programs were not attached to both nodes' eth0 within {deadline:?}; logs:\n{}",
                    self.lab.agent_logs()
                );
            }
            thread::sleep(POLL);
        }
    }

    // -----------------------------------------------------------------------------------------
    // ferry commands, per node

    fn pin_arg(&self, node: &str) -> String {
        self.node(node).pin_dir.to_string_lossy().into_owned()
    }

    /// `ferry services --bpffs <node pin> -o json`, or why it failed.
    pub fn try_services(&self, node: &str) -> std::result::Result<ServicesView, String> {
        let out = self
            .lab
            .ferry(&["services", "--bpffs", &self.pin_arg(node), "-o", "json"]);
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn services(&self, node: &str) -> ServicesView {
        self.try_services(node)
            .unwrap_or_else(|e| panic!("ferry services on {node}: {e}"))
    }

    /// `ferry services` (table) of the node.
    pub fn services_table(&self, node: &str) -> String {
        let out = self
            .lab
            .ferry(&["services", "--bpffs", &self.pin_arg(node)]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Polls the node's `ferry services` until `pred` holds; returns how long it took.
    pub fn wait_services(
        &self,
        node: &str,
        pred: impl Fn(&ServicesView) -> bool,
        deadline: Duration,
    ) -> Duration {
        crate::services::wait_until(
            &format!("ferry services on {node}"),
            || self.try_services(node),
            pred,
            deadline,
            || self.agent_log(node),
        )
    }

    /// `ferry conntrack --bpffs <node pin> -o json`: the node's flows.
    pub fn conntrack(&self, node: &str) -> Vec<FlowView> {
        let out = self
            .lab
            .ferry(&["conntrack", "--bpffs", &self.pin_arg(node), "-o", "json"]);
        assert!(
            out.status.success(),
            "ferry conntrack on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::flows::parse(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ferry conntrack -o json is not a list of flows ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `ferry conntrack` (table) of the node.
    pub fn conntrack_table(&self, node: &str) -> String {
        let out = self
            .lab
            .ferry(&["conntrack", "--bpffs", &self.pin_arg(node)]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `ferry stats --bpffs <node pin> -o json`.
    pub fn stats(&self, node: &str) -> Value {
        let out = self
            .lab
            .ferry(&["stats", "--bpffs", &self.pin_arg(node), "-o", "json"]);
        assert!(
            out.status.success(),
            "ferry stats on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ferry stats -o json is JSON")
    }

    /// What to look at when a test failed: both nodes' frontends, flows and counters.
    pub fn dump(&self) -> String {
        let mut text = String::new();
        for node in self.nodes.iter().filter(|n| n.pin_dir.exists()) {
            let stats = self
                .lab
                .ferry(&["stats", "--bpffs", &self.pin_arg(&node.name)]);
            text.push_str(&format!(
                "==== {} ({}): ferry services\n{}==== {}: ferry conntrack\n{}==== {}: ferry stats\n{}{}",
                node.name,
                node.ip,
                self.services_table(&node.name),
                node.name,
                self.conntrack_table(&node.name),
                node.name,
                String::from_utf8_lossy(&stats.stdout),
                String::from_utf8_lossy(&stats.stderr),
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() && !cleanup::signalled() {
            eprintln!(
                "==== cluster {} ({}) failed: kernel state\n{}",
                self.lab.id(),
                self.lab.test_name(),
                self.dump()
            );
        }
        // The agents go first; the lab's drop (next) removes the rest. A kept lab is left alone.
        if self.lab.kept.load(Ordering::SeqCst) {
            return;
        }
        let names: Vec<String> = lock(&self.agents).keys().cloned().collect();
        for name in names {
            self.stop_agent(&name);
        }
    }
}

/// Polls `check` every `interval` until it returns Ok, for at most `deadline`; returns the
/// value and how long it took, or the last error.
pub fn poll<T>(
    deadline: Duration,
    interval: Duration,
    mut check: impl FnMut() -> std::result::Result<T, String>,
) -> std::result::Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(e) if start.elapsed() >= deadline => {
                return Err(format!("still failing after {deadline:?}: {e}"));
            }
            Err(_) => thread::sleep(interval),
        }
    }
}

/// SHA-256 of a file (`sha256sum`).
pub fn sha256(path: &Path) -> String {
    let out = proc::run("sha256sum", &[&path.to_string_lossy()])
        .unwrap_or_else(|e| panic!("sha256sum {}: {e:#}", path.display()));
    out.split_whitespace().next().unwrap_or_default().to_owned()
}
