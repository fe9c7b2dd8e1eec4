//! ferry's view of the cluster, independent of where it came from (YAML
//! manifests or the API server) and of how it is programmed.
//!
//! [`objects`] holds the compact, validated form of Services,
//! EndpointSlices and Nodes; [`translate`] turns one Service (with its
//! slices and this node) into its frontends: address, port, protocol, scope
//! and the backends that may serve it; [`claims`] settles which Service owns
//! an address two of them claim. Nothing here knows about maps.

pub mod claims;
pub mod docs;
pub mod names;
pub mod objects;
pub mod translate;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

pub use translate::{Config, Inputs, Objects, translate, translate_objects};

/// Pushes onto a list that is short as a rule (a Service's slices, an
/// address's claims): the first few pushes grow it by one, not to `Vec`'s
/// minimum of four, which at 10,000 Services held megabytes of empty slots.
pub(crate) fn push_short<T>(v: &mut Vec<T>, x: T) {
    insert_short(v, v.len(), x);
}

/// [`push_short`] at a position.
pub(crate) fn insert_short<T>(v: &mut Vec<T>, at: usize, x: T) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
    v.insert(at, x);
}

/// namespace/name of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The IANA number used in map keys.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => agent_common::proto::TCP,
            Protocol::Udp => agent_common::proto::UDP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            agent_common::proto::TCP => Some(Protocol::Tcp),
            agent_common::proto::UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Which traffic a frontend entry serves (see `agent_common::scope`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The entry every client uses; for an externalTrafficPolicy Local
    /// frontend it holds only this node's endpoints.
    External,
    /// The cluster-wide entry of an externalTrafficPolicy Local frontend,
    /// used by clients inside the cluster (the socket layer), as kube-proxy
    /// short-circuits pods to all endpoints.
    Internal,
}

impl Scope {
    pub const fn number(self) -> u8 {
        match self {
            Scope::External => agent_common::scope::EXTERNAL,
            Scope::Internal => agent_common::scope::INTERNAL,
        }
    }
}

/// What a frontend address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

/// An address, port and protocol a Service claims: the unit of conflicts and
/// of the rev-NAT id (shared by an address's external and internal entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct AddrKey {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl AddrKey {
    pub fn scoped(self, scope: Scope) -> FrontendKey {
        FrontendKey {
            ip: self.ip,
            port: self.port,
            proto: self.proto,
            scope,
        }
    }
}

impl fmt::Display for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SockAddr(self.ip, self.port), self.proto)
    }
}

/// An address and port as people write them: `10.96.0.10:53`,
/// `[fd00:96::a]:53`.
#[derive(Clone, Copy, Debug)]
pub struct SockAddr(pub IpAddr, pub u16);

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        std::net::SocketAddr::new(self.0, self.1).fmt(f)
    }
}

/// An address family. A dual-stack Service is programmed per family, as
/// kube-proxy runs one proxier per family: each family's frontends get that
/// family's endpoints, node addresses and source ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// 0 or 1: for per-family arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// As Kubernetes spells it (`ipFamilies`, `addressType`).
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

impl FrontendKey {
    pub fn addr(&self) -> AddrKey {
        AddrKey {
            ip: self.ip,
            port: self.port,
            proto: self.proto,
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SockAddr(self.ip, self.port), self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SockAddr(self.ip, self.port), self.proto)
    }
}

/// Everything the datapath needs to program one frontend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Frontend {
    pub service: ServiceName,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    /// The usable backends, sorted and deduplicated: the ready endpoints, or
    /// when none is ready the serving+terminating ones. Empty = reject.
    pub backends: Vec<BackendAddr>,
    /// The backends on this node (north-south traffic to them keeps the
    /// client's address without SNAT).
    pub local_backends: BTreeSet<BackendAddr>,
    /// The backends are terminating endpoints (KEP-1669 fallback).
    pub terminating: bool,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges (LoadBalancer frontends only); empty = all.
    pub source_ranges: Vec<Cidr>,
    /// Maglev consistent hashing for north-south traffic.
    pub maglev: bool,
    pub etp_local: bool,
    pub itp_local: bool,
    /// `backends` is empty because the Local traffic policy leaves none on
    /// this node while the Service has endpoints elsewhere: kube-proxy drops
    /// this traffic (the client times out) where a Service without any
    /// endpoint is rejected.
    pub drop_no_local: bool,
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The prefix of `addr` of length `len` (host bits cleared; `len` at
    /// most the family's bits).
    pub fn new(addr: IpAddr, len: u8) -> Cidr {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Cidr {
                    addr: IpAddr::V4((u32::from(a) & mask).into()),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Cidr {
                    addr: IpAddr::V6((u128::from(a) & mask).into()),
                    len,
                }
            }
        }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// `ip` is in the prefix (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(&ip) == self.family() && Cidr::new(ip, self.len).addr == self.addr
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// "a.b.c.d/len", "x::y/len", or a bare address (a host prefix); IPv4
    /// read as kube-proxy reads it (`ParseIPSloppy`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let Some(addr) = objects::parse_ip_sloppy(addr) else {
            return Err(format!("{s:?} is not a CIDR"));
        };
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        match len.map(str::parse::<u8>) {
            None => Ok(Cidr::new(addr, max)),
            Some(Ok(len)) if len <= max => Ok(Cidr::new(addr, len)),
            Some(_) => Err(format!("{s:?} is not a CIDR")),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An externalTrafficPolicy Local LoadBalancer's healthCheckNodePort: the
/// agent answers it so load balancers only send to nodes with endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Ready endpoints on this node.
    pub local_ready: usize,
    /// Serving and terminating endpoints on this node (still served, but
    /// the node reports 503 so load balancers drain it).
    pub local_terminating: usize,
}

/// The complete state ferry wants in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub health_checks: BTreeMap<ServiceName, HealthCheck>,
    /// This node's addresses (its Node object's InternalIP/ExternalIP).
    pub node_ips: Vec<IpAddr>,
    /// Every Node's InternalIP/ExternalIP addresses (this one's too): the
    /// addresses a DSR option may name for a NodePort.
    pub cluster_node_ips: BTreeSet<IpAddr>,
}

/// A problem with one input object: reported, the object skipped, the rest
/// programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// "Service", "EndpointSlice", "Node" or "manifest".
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: String,
    pub severity: Severity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Not supported yet or ignored on purpose (SCTP, say): informational.
    Info,
    /// Malformed: the object (or part of it) was skipped.
    Warning,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ns, name) = (Shown(&self.namespace), Shown(&self.name));
        if self.namespace.is_empty() {
            write!(f, "{} {name}: {}", self.kind, self.reason)
        } else {
            write!(f, "{} {ns}/{name}: {}", self.kind, self.reason)
        }
    }
}

/// A name as a diagnostic shows it: as is, or quoted and escaped when it
/// holds a control character (a manifest's names are not checked by an API
/// server, and a line break in one would forge a log line).
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.chars().any(char::is_control) {
            write!(f, "{:?}", self.0)
        } else {
            f.write_str(self.0)
        }
    }
}
