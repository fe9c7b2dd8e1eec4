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
    net::Ipv4Addr,
};

pub use translate::{Config, Inputs, Objects, translate, translate_objects};

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
    pub ip: Ipv4Addr,
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
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct FrontendKey {
    pub ip: Ipv4Addr,
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
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
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
    pub source_ranges: Vec<Cidr4>,
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

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Cidr4 {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr4 {
    /// The prefix of `addr` of length `len` (host bits cleared; `len` <= 32).
    pub fn new(addr: Ipv4Addr, len: u8) -> Cidr4 {
        let len = len.min(32);
        Cidr4 {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(len)),
            len,
        }
    }

    fn mask(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.addr)
    }
}

impl std::str::FromStr for Cidr4 {
    type Err = String;

    /// "a.b.c.d/len" (or a bare address: /32).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        match (objects::parse_ipv4_sloppy(addr), len.parse::<u8>()) {
            (Some(addr), Ok(len)) if len <= 32 => Ok(Cidr4::new(addr, len)),
            _ => Err(format!("{s:?} is not an IPv4 CIDR")),
        }
    }
}

impl fmt::Display for Cidr4 {
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
    /// This node's IPv4 addresses (its Node object's InternalIP/ExternalIP).
    pub node_ips: Vec<Ipv4Addr>,
    /// Every Node's InternalIP/ExternalIP IPv4 addresses (this one's too):
    /// the addresses a DSR option may name for a NodePort.
    pub cluster_node_ips: BTreeSet<Ipv4Addr>,
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
