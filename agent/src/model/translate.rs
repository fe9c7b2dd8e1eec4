//! Services, EndpointSlices and this node's Node object → [`Desired`], with
//! kube-proxy's semantics (minus what ferry cannot program yet: IPv6, SCTP).
//!
//! The translation is pure and deterministic: the same [`Inputs`] always give
//! the same frontends and the same diagnostics in the same order, so the
//! datapath can diff two results and tests can compare them exactly.
//!
//! Malformed input never aborts the translation: the broken part (a port, an
//! address, an endpoint, a whole object when its identity is broken) is
//! skipped with a [`Diagnostic`] and everything else is still programmed,
//! as kube-proxy does.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use tracing::debug;

use super::{
    BackendAddr, Cidr4, Desired, Diagnostic, Frontend, FrontendKey, FrontendKind, HealthCheck,
    Protocol, Scope, ServiceName, Severity,
};

/// Links an EndpointSlice to its Service (same namespace).
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Objects carrying this label belong to another proxy: kube-proxy's informers
/// filter them out whatever the value.
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The Node label topology hints are matched against.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// sessionAffinityConfig.clientIP.timeoutSeconds: default and valid range
/// (the API server's validation).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Everything the translation reads. Maps are keyed by (namespace, name) and
/// ordered, which makes the translation deterministic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    pub services: BTreeMap<(String, String), Service>,
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
    /// The name of the node ferry runs on: selects the Node object whose
    /// addresses carry NodePorts and the endpoints that are "local".
    pub node_name: String,
    /// Maglev for services without the `ferry.io/lb-algorithm` annotation.
    pub maglev_default: bool,
}

/// Annotation choosing a service's north-south backend selection:
/// `maglev` or `random`.
pub const LB_ALGORITHM_ANNOTATION: &str = "ferry.io/lb-algorithm";

/// Computes the frontends ferry must program, and what was wrong with the
/// inputs.
pub fn translate(inputs: &Inputs) -> (Desired, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let node = NodeAddrs::new(inputs, &mut diags);
    let slices = index_slices(inputs, &mut diags);
    let mut cx = Cx {
        desired: Desired {
            node_ips: node.ips.iter().flatten().copied().collect(),
            ..Desired::default()
        },
        node,
        slices,
        diags,
        maglev_default: inputs.maglev_default,
    };
    for ((namespace, name), svc) in &inputs.services {
        translate_service(&mut cx, namespace, name, svc);
    }
    (cx.desired, cx.diags)
}

/// The translation's working state.
struct Cx {
    node: NodeAddrs,
    slices: SliceIndex,
    desired: Desired,
    diags: Vec<Diagnostic>,
    maglev_default: bool,
}

/// Names the object a diagnostic is about.
#[derive(Clone, Copy)]
struct Obj<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
}

impl Obj<'_> {
    fn diag(self, severity: Severity, reason: impl Into<String>) -> Diagnostic {
        Diagnostic {
            kind: self.kind,
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            reason: reason.into(),
            severity,
        }
    }

    fn warning(self, reason: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Warning, reason)
    }

    fn info(self, reason: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Info, reason)
    }
}

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.contains_key(key))
}

fn name_missing(meta: &ObjectMeta) -> bool {
    meta.name.as_deref().is_none_or(str::is_empty)
}

/// How a port is named in diagnostics: by name when it has one, else by its
/// index in the list (as in `kubectl explain` field paths).
fn port_label(name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("ports[{index}]")
    } else {
        format!("port {name:?}")
    }
}

/// What a `protocol` field says.
enum Proto {
    Supported(Protocol),
    Sctp,
    Unknown(String),
}

/// Parses a port's protocol; absent means TCP (the API server's default).
fn parse_protocol(raw: Option<&str>) -> Proto {
    match raw.unwrap_or("TCP") {
        "TCP" => Proto::Supported(Protocol::Tcp),
        "UDP" => Proto::Supported(Protocol::Udp),
        "SCTP" => Proto::Sctp,
        other => Proto::Unknown(other.to_owned()),
    }
}

/// A port number field, 1..=65535.
fn parse_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

// ---------------------------------------------------------------------------
// Node

/// This node's IPv4 addresses, where NodePorts listen.
struct NodeAddrs {
    /// None when the Node object is missing.
    ips: Option<BTreeSet<Ipv4Addr>>,
    node_name: String,
    /// The missing Node was already reported (once is enough).
    reported_missing: bool,
}

impl NodeAddrs {
    fn new(inputs: &Inputs, diags: &mut Vec<Diagnostic>) -> Self {
        let node_name = inputs.node_name.clone();
        let ips = inputs.nodes.get(&node_name).map(|node| {
            let obj = Obj {
                kind: "Node",
                namespace: "",
                name: &node_name,
            };
            node_ips(node, obj, diags)
        });
        NodeAddrs {
            ips,
            node_name,
            reported_missing: false,
        }
    }

    /// The addresses for NodePort frontends; reports a missing Node the first
    /// time a NodePort needs it.
    fn ips(&mut self, diags: &mut Vec<Diagnostic>) -> Vec<Ipv4Addr> {
        match &self.ips {
            Some(ips) => ips.iter().copied().collect(),
            None => {
                if !self.reported_missing {
                    self.reported_missing = true;
                    let obj = Obj {
                        kind: "Node",
                        namespace: "",
                        name: &self.node_name,
                    };
                    diags.push(obj.warning("Node object not found: NodePorts are not programmed"));
                }
                Vec::new()
            }
        }
    }
}

/// The InternalIP and ExternalIP addresses of a Node (deduplicated). IPv6
/// ones are skipped silently: dual-stack nodes are normal, and NodePorts of
/// the IPv4 family only listen on IPv4 addresses.
fn node_ips(node: &Node, obj: Obj<'_>, diags: &mut Vec<Diagnostic>) -> BTreeSet<Ipv4Addr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let mut ips = BTreeSet::new();
    for addr in addresses {
        if addr.type_ != "InternalIP" && addr.type_ != "ExternalIP" {
            continue; // Hostname, InternalDNS...: not addresses to listen on
        }
        match addr.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                ips.insert(ip);
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => diags.push(obj.warning(format!(
                "{} address {:?} is not an IP address",
                addr.type_, addr.address
            ))),
        }
    }
    ips
}

// ---------------------------------------------------------------------------
// EndpointSlices

/// One endpoint of a slice, validated.
struct SliceEndpoint {
    ip: Ipv4Addr,
    state: EndpointState,
}

/// What the endpoint selection looks at.
#[derive(Clone, Copy)]
struct EndpointState {
    /// On this node.
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// Topology hints: None = the endpoint has none; Some(true) = its
    /// `hints.forZones` (or `forNodes`) include this node.
    hint_for_us: Option<bool>,
}

/// One port of a slice, validated.
struct SlicePort {
    name: String,
    proto: Protocol,
    port: u16,
}

struct ParsedSlice {
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

/// The validated IPv4 slices of each service, by (namespace, service name).
type SliceIndex = BTreeMap<(String, String), Vec<ParsedSlice>>;

/// Validates every slice once (so each problem is reported once, not once per
/// service port) and groups them by service.
fn index_slices(inputs: &Inputs, diags: &mut Vec<Diagnostic>) -> SliceIndex {
    let mut index = SliceIndex::new();
    let node_zone = inputs
        .nodes
        .get(&inputs.node_name)
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(ZONE_LABEL))
        .map(String::as_str);
    for ((namespace, name), slice) in &inputs.slices {
        let obj = Obj {
            kind: "EndpointSlice",
            namespace,
            name,
        };
        let meta = &slice.metadata;
        if name_missing(meta) {
            diags.push(obj.warning("metadata.name is missing"));
            continue;
        }
        if has_label(meta, PROXY_NAME_LABEL) {
            debug!(slice = %format_args!("{namespace}/{name}"), "ignored: service-proxy-name label");
            continue;
        }
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        let Some(service) = service.filter(|s| !s.is_empty()) else {
            diags.push(obj.warning(format!("label {SERVICE_NAME_LABEL} is missing")));
            continue;
        };
        // IPv6 and FQDN slices are normal in dual-stack clusters and not ours.
        if slice.address_type != "IPv4" {
            continue;
        }
        let parsed = parse_slice(slice, &inputs.node_name, node_zone, obj, diags);
        index
            .entry((namespace.clone(), service.clone()))
            .or_default()
            .push(parsed);
    }
    index
}

fn parse_slice(
    slice: &EndpointSlice,
    node_name: &str,
    node_zone: Option<&str>,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> ParsedSlice {
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let name = p.name.clone().unwrap_or_default();
        let label = port_label(&name, i);
        let proto = match parse_protocol(p.protocol.as_deref()) {
            Proto::Supported(proto) => proto,
            // Reported on the Service's side, where the port is defined.
            Proto::Sctp => continue,
            Proto::Unknown(other) => {
                diags.push(obj.warning(format!("{label}: protocol {other:?} is not valid")));
                continue;
            }
        };
        // kube-proxy ignores a slice port without a number (it would mean "all
        // ports", which no proxy implements).
        let Some(raw) = p.port else {
            diags.push(obj.warning(format!("{label}: port number is missing")));
            continue;
        };
        let Some(port) = parse_port(raw) else {
            diags.push(obj.warning(format!("{label}: port {raw} out of range")));
            continue;
        };
        ports.push(SlicePort { name, proto, port });
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Consumers must use the first address only (API documentation).
        let Some(addr) = ep.addresses.first() else {
            diags.push(obj.warning(format!("endpoints[{i}] has no addresses")));
            continue;
        };
        let Ok(ip) = addr.parse::<Ipv4Addr>() else {
            diags.push(obj.warning(format!("endpoint address {addr:?} is not an IPv4 address")));
            continue;
        };
        let cond = ep.conditions.clone().unwrap_or_default();
        // As kube-proxy reads them: nil ready and nil serving mean true
        // ("interpret unknown as ready"), nil terminating means false.
        let ready = cond.ready.unwrap_or(true);
        endpoints.push(SliceEndpoint {
            ip,
            state: EndpointState {
                local: ep.node_name.as_deref() == Some(node_name),
                ready,
                serving: cond.serving.unwrap_or(true),
                terminating: cond.terminating.unwrap_or(false),
                hint_for_us: hint_for_us(ep.hints.as_ref(), node_name, node_zone),
            },
        });
    }
    ParsedSlice { ports, endpoints }
}

/// Whether an endpoint's topology hints name this node (forNodes, used by
/// trafficDistribution PreferSameNode) or its zone (forZones).
fn hint_for_us(
    hints: Option<&k8s_openapi::api::discovery::v1::EndpointHints>,
    node_name: &str,
    node_zone: Option<&str>,
) -> Option<bool> {
    let hints = hints?;
    let zones = hints.for_zones.as_deref().unwrap_or_default();
    let nodes = hints.for_nodes.as_deref().unwrap_or_default();
    if zones.is_empty() && nodes.is_empty() {
        return None;
    }
    Some(
        nodes.iter().any(|n| n.name == node_name)
            || node_zone.is_some_and(|z| zones.iter().any(|f| f.name == z)),
    )
}

/// The endpoints of one service port: (ip, target port) → state.
type Candidates = BTreeMap<(Ipv4Addr, u16), EndpointState>;

/// The endpoints of one service port, by (ip, target port): resolved by
/// port name and protocol in each slice (a named targetPort may be a
/// different number in each), merged over all slices.
fn candidates(slices: &[ParsedSlice], port_name: &str, proto: Protocol) -> Candidates {
    let mut out = BTreeMap::new();
    for slice in slices {
        for port in slice
            .ports
            .iter()
            .filter(|p| p.name == port_name && p.proto == proto)
        {
            for ep in &slice.endpoints {
                // An endpoint moving between slices, or an IP reused by a new
                // pod while the old one terminates, shows up twice: like
                // kube-proxy, prefer a non-terminating copy.
                let key = (ep.ip, port.port);
                if !out.contains_key(&key) || !ep.state.terminating {
                    out.insert(key, ep.state);
                }
            }
        }
    }
    out
}

/// The backends a frontend uses, and whether they are the terminating
/// fallback.
struct Selection {
    backends: Vec<BackendAddr>,
    /// The subset of `backends` on this node.
    local: BTreeSet<BackendAddr>,
    terminating: bool,
}

/// KEP-1669: the ready endpoints; when there are none, the serving and
/// terminating ones (so connections drain gracefully instead of failing);
/// otherwise none, and the datapath rejects.
fn select(cands: &Candidates, proto: Protocol, local_only: bool, topology: bool) -> Selection {
    // Topology-aware routing (kube-proxy's CategorizeEndpoints): for
    // cluster-wide traffic of a service that asks for it, keep the ready
    // endpoints hinted for this node's zone, but only when every ready
    // endpoint carries hints and at least one is ours; otherwise ignore
    // hints (a half-hinted slice is mid-rollout).
    let ready_hints: Vec<Option<bool>> = cands
        .values()
        .filter(|c| c.ready)
        .map(|c| c.hint_for_us)
        .collect();
    let use_hints = topology
        && !local_only
        && !ready_hints.is_empty()
        && ready_hints.iter().all(Option::is_some)
        && ready_hints.contains(&Some(true));
    let pick = |f: &dyn Fn(&EndpointState) -> bool| -> (Vec<BackendAddr>, BTreeSet<BackendAddr>) {
        let chosen: Vec<(BackendAddr, bool)> = cands
            .iter()
            .filter(|(_, c)| (!local_only || c.local) && f(c))
            .map(|(&(ip, port), c)| (BackendAddr { ip, port, proto }, c.local))
            .collect();
        let local = chosen.iter().filter(|(_, l)| *l).map(|(b, _)| *b).collect();
        (chosen.into_iter().map(|(b, _)| b).collect(), local)
    };
    let (ready, local) = pick(&|c| c.ready && (!use_hints || c.hint_for_us == Some(true)));
    if !ready.is_empty() {
        return Selection {
            backends: ready,
            local,
            terminating: false,
        };
    }
    let (fallback, local) = pick(&|c| c.serving && c.terminating);
    let terminating = !fallback.is_empty();
    Selection {
        backends: fallback,
        local,
        terminating,
    }
}

// ---------------------------------------------------------------------------
// Services

/// The per-service settings shared by all its ports.
struct ServiceView {
    name: ServiceName,
    cluster_ips: Vec<Ipv4Addr>,
    external_ips: Vec<Ipv4Addr>,
    lb_ips: Vec<Ipv4Addr>,
    /// type NodePort or LoadBalancer: the ports' nodePorts are used.
    node_ports: bool,
    affinity_timeout: Option<u32>,
    itp_local: bool,
    etp_local: bool,
    /// loadBalancerSourceRanges; empty = everyone.
    source_ranges: Vec<Cidr4>,
    /// Topology-aware routing asked for (trafficDistribution or annotation).
    topology: bool,
    maglev: bool,
    health_check_node_port: Option<u16>,
}

/// A validated service port.
struct PortView {
    name: String,
    proto: Protocol,
    port: u16,
    node_port: Option<u16>,
}

fn translate_service(cx: &mut Cx, namespace: &str, name: &str, svc: &Service) {
    let obj = Obj {
        kind: "Service",
        namespace,
        name,
    };
    let Some((mut view, spec)) = service_view(svc, obj, &mut cx.diags) else {
        return;
    };
    view.maglev = lb_algorithm(svc, cx.maglev_default, obj, &mut cx.diags);
    let slices = cx.slices.get(&(namespace.to_owned(), name.to_owned()));
    let slices = slices.map(Vec::as_slice).unwrap_or_default();
    if let Some(node_port) = view.health_check_node_port {
        cx.desired
            .health_checks
            .insert(view.name.clone(), health_check(node_port, slices));
    }
    for (i, sp) in spec.ports.iter().flatten().enumerate() {
        let Some(port) = port_view(sp, i, view.node_ports, obj, &mut cx.diags) else {
            continue;
        };
        let cands = candidates(slices, &port.name, port.proto);
        let node_ips = match port.node_port {
            Some(_) => cx.node.ips(&mut cx.diags),
            None => Vec::new(),
        };
        for group in port_frontends(&view, &port, &cands, &node_ips) {
            insert_group(&mut cx.desired, group, obj, &mut cx.diags);
        }
    }
}

/// Validates the service-wide fields. None when the service is not proxied
/// (ExternalName, headless, another proxy's, no IPv4 clusterIP) or is
/// broken as a whole.
fn service_view<'s>(
    svc: &'s Service,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(ServiceView, &'s ServiceSpec)> {
    if name_missing(&svc.metadata) {
        diags.push(obj.warning("metadata.name is missing"));
        return None;
    }
    if has_label(&svc.metadata, PROXY_NAME_LABEL) {
        ignored(obj, "service-proxy-name label");
        return None;
    }
    let Some(spec) = svc.spec.as_ref() else {
        ignored(obj, "no spec");
        return None;
    };
    let node_ports = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => false,
        "NodePort" | "LoadBalancer" => true,
        "ExternalName" => {
            ignored(obj, "type ExternalName");
            return None;
        }
        other => {
            diags.push(obj.warning(format!("type {other:?} is not a service type")));
            return None;
        }
    };
    let mut ipv6 = false;
    let cluster_ips = cluster_ips(spec, obj, diags, &mut ipv6)?;
    if cluster_ips.is_empty() {
        // An IPv6 single-stack service: kube-proxy's IPv4 proxier ignores
        // the service entirely, NodePorts included.
        diags.push(obj.info("IPv6 not supported yet"));
        return None;
    }
    let external_ips = parse_ips(
        spec.external_ips.iter().flatten(),
        "externalIP",
        obj,
        diags,
        &mut ipv6,
    );
    let lb_ips = if spec.type_.as_deref() == Some("LoadBalancer") {
        parse_ips(
            lb_ingress_ips(svc),
            "loadBalancer ingress IP",
            obj,
            diags,
            &mut ipv6,
        )
    } else {
        Vec::new()
    };
    if ipv6 {
        diags.push(obj.info("IPv6 not supported yet"));
    }
    let source_ranges = source_ranges(spec, obj, diags)?;
    let etp_local = is_local_policy(
        spec.external_traffic_policy.as_deref(),
        "externalTrafficPolicy",
        obj,
        diags,
    );
    // The API server allocates healthCheckNodePort only for LoadBalancer
    // services with externalTrafficPolicy Local.
    let health_check_node_port = spec
        .health_check_node_port
        .filter(|_| etp_local && spec.type_.as_deref() == Some("LoadBalancer"))
        .and_then(parse_port);
    let view = ServiceView {
        topology: topology_requested(svc, spec),
        source_ranges,
        maglev: false,
        health_check_node_port,
        name: ServiceName {
            namespace: obj.namespace.to_owned(),
            name: obj.name.to_owned(),
        },
        cluster_ips,
        external_ips,
        lb_ips,
        node_ports,
        affinity_timeout: affinity_timeout(spec, obj, diags),
        itp_local: is_local_policy(
            spec.internal_traffic_policy.as_deref(),
            "internalTrafficPolicy",
            obj,
            diags,
        ),
        etp_local,
    };
    Some((view, spec))
}

/// loadBalancerSourceRanges as IPv4 prefixes. A malformed range makes the
/// service fail closed (skipped with a warning): opening a service its owner
/// meant to restrict would be worse than not serving it. IPv6 ranges are
/// skipped (IPv4 clients never match them).
fn source_ranges(
    spec: &ServiceSpec,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<Cidr4>> {
    let mut out = Vec::new();
    for raw in spec.load_balancer_source_ranges.iter().flatten() {
        let raw = raw.trim();
        let (addr, len) = raw.split_once('/').unwrap_or((raw, "32"));
        if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            continue;
        }
        match (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) {
            (Ok(addr), Ok(len)) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let addr = Ipv4Addr::from(u32::from(addr) & mask);
                out.push(Cidr4 { addr, len });
            }
            _ => {
                diags.push(obj.warning(format!(
                    "loadBalancerSourceRanges entry {raw:?} is not an IPv4 CIDR: service skipped"
                )));
                return None;
            }
        }
    }
    Some(out)
}

/// trafficDistribution PreferClose / PreferSameZone / PreferSameNode, or the
/// topology-mode annotation (and its older name), as kube-proxy reads them.
fn topology_requested(svc: &Service, spec: &ServiceSpec) -> bool {
    let distribution = matches!(
        spec.traffic_distribution.as_deref(),
        Some("PreferClose" | "PreferSameZone" | "PreferSameNode")
    );
    let annotations = svc.metadata.annotations.as_ref();
    let annotation = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .is_some_and(|v| v.eq_ignore_ascii_case("auto"))
    };
    distribution
        || annotation("service.kubernetes.io/topology-mode")
        || annotation("service.kubernetes.io/topology-aware-hints")
}

/// The `ferry.io/lb-algorithm` annotation, else the agent's default.
fn lb_algorithm(svc: &Service, default: bool, obj: Obj<'_>, diags: &mut Vec<Diagnostic>) -> bool {
    let value = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION));
    match value.map(String::as_str) {
        None => default,
        Some("maglev") => true,
        Some("random") => false,
        Some(other) => {
            diags.push(obj.warning(format!(
                "annotation {LB_ALGORITHM_ANNOTATION}={other:?} is neither maglev nor random: using the default"
            )));
            default
        }
    }
}

/// Counts this node's endpoints of a service (distinct addresses, any port)
/// for its healthCheckNodePort, as kube-proxy's health server does.
fn health_check(node_port: u16, slices: &[ParsedSlice]) -> HealthCheck {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for ep in slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.state.local)
    {
        if ep.state.ready {
            ready.insert(ep.ip);
        } else if ep.state.serving && ep.state.terminating {
            terminating.insert(ep.ip);
        }
    }
    HealthCheck {
        node_port,
        local_ready: ready.len(),
        local_terminating: terminating.len(),
    }
}

/// A service that is not ferry's to proxy: not an error, just noted.
fn ignored(obj: Obj<'_>, why: &str) {
    debug!(service = %format_args!("{}/{}", obj.namespace, obj.name), "ignored: {why}");
}

/// The IPv4 cluster IPs (empty for an IPv6-only service). None when the
/// service has none (headless, or not allocated) or one is malformed: a
/// service whose identity is broken is skipped as a whole.
fn cluster_ips(
    spec: &ServiceSpec,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
    ipv6: &mut bool,
) -> Option<Vec<Ipv4Addr>> {
    // clusterIPs supersedes clusterIP (its first entry is the same address).
    let raw: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .into_iter()
            .collect(),
    };
    match raw.first() {
        None => {
            ignored(obj, "no clusterIP");
            return None;
        }
        Some(&"None") => {
            ignored(obj, "headless");
            return None;
        }
        Some(_) => {}
    }
    let mut v4 = Vec::new();
    for ip in raw {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => v4.push(ip),
            Ok(IpAddr::V6(_)) => *ipv6 = true,
            Err(_) => {
                diags.push(obj.warning(format!("clusterIP {ip:?} is not an IP address")));
                return None;
            }
        }
    }
    Some(v4)
}

/// The `ip` of each load-balancer ingress, except those in "Proxy" mode:
/// there the load balancer delivers to the nodes itself and kube-proxy does
/// not capture the address.
fn lb_ingress_ips(svc: &Service) -> impl Iterator<Item = &String> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    ingress
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|ing| ing.ip.as_ref())
}

/// Parses a list of optional addresses: IPv4 ones are kept, IPv6 ones
/// flagged, malformed ones reported and skipped alone.
fn parse_ips<'a>(
    raw: impl Iterator<Item = &'a String>,
    what: &str,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
    ipv6: &mut bool,
) -> Vec<Ipv4Addr> {
    let mut v4 = Vec::new();
    for ip in raw {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => v4.push(ip),
            Ok(IpAddr::V6(_)) => *ipv6 = true,
            Err(_) => diags.push(obj.warning(format!("{what} {ip:?} is not an IP address"))),
        }
    }
    v4
}

fn affinity_timeout(spec: &ServiceSpec, obj: Obj<'_>, diags: &mut Vec<Diagnostic>) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("" | "None") => None,
        Some("ClientIP") => {
            let cfg = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref());
            let Some(t) = cfg.and_then(|c| c.timeout_seconds) else {
                return Some(DEFAULT_AFFINITY_TIMEOUT);
            };
            match u32::try_from(t) {
                Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t),
                _ => {
                    diags.push(obj.warning(format!(
                        "sessionAffinityConfig.clientIP.timeoutSeconds {t} out of range \
                         1..={MAX_AFFINITY_TIMEOUT}: using {DEFAULT_AFFINITY_TIMEOUT}"
                    )));
                    Some(DEFAULT_AFFINITY_TIMEOUT)
                }
            }
        }
        Some(other) => {
            diags.push(obj.warning(format!(
                "sessionAffinity {other:?} is not valid: using None"
            )));
            None
        }
    }
}

/// internal/externalTrafficPolicy: "Local" or not (absent means Cluster).
fn is_local_policy(
    raw: Option<&str>,
    field: &str,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    match raw {
        Some("Local") => true,
        None | Some("" | "Cluster") => false,
        Some(other) => {
            diags.push(obj.warning(format!("{field} {other:?} is not valid: using Cluster")));
            false
        }
    }
}

/// Validates one service port. None (and a diagnostic) skips just this port.
fn port_view(
    sp: &ServicePort,
    index: usize,
    node_ports: bool,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<PortView> {
    let name = sp.name.clone().unwrap_or_default();
    let label = port_label(&name, index);
    let proto = match parse_protocol(sp.protocol.as_deref()) {
        Proto::Supported(proto) => proto,
        Proto::Sctp => {
            diags.push(obj.info(format!("{label}: SCTP is not supported yet")));
            return None;
        }
        Proto::Unknown(other) => {
            diags.push(obj.warning(format!("{label}: protocol {other:?} is not valid")));
            return None;
        }
    };
    let Some(port) = parse_port(sp.port) else {
        diags.push(obj.warning(format!("{label}: port {} out of range", sp.port)));
        return None;
    };
    // nodePort is only meaningful for NodePort and LoadBalancer services (a
    // ClusterIP service keeps a stale one after a type change); 0 or absent
    // means none was allocated.
    let node_port = match sp.node_port.filter(|_| node_ports) {
        None | Some(0) => None,
        Some(n) => match parse_port(n) {
            Some(p) => Some(p),
            None => {
                diags.push(obj.warning(format!("{label}: nodePort {n} out of range")));
                return None;
            }
        },
    };
    Some(PortView {
        name,
        proto,
        port,
        node_port,
    })
}

/// The frontends of one port, in groups that must be programmed together:
/// an address's external and internal entries live or die as one.
fn port_frontends(
    view: &ServiceView,
    port: &PortView,
    cands: &Candidates,
    node_ips: &[Ipv4Addr],
) -> Vec<Vec<(FrontendKey, Frontend)>> {
    let cluster = select(cands, port.proto, false, view.topology);
    let local = select(cands, port.proto, true, false);
    let frontend = |kind, sel: &Selection| Frontend {
        service: view.name.clone(),
        port_name: port.name.clone(),
        kind,
        backends: sel.backends.clone(),
        local_backends: sel.local.clone(),
        terminating: sel.terminating,
        affinity_timeout: view.affinity_timeout,
        source_ranges: Vec::new(),
        maglev: view.maglev,
        etp_local: false,
        itp_local: false,
    };

    let mut groups = Vec::new();
    for &ip in &view.cluster_ips {
        // internalTrafficPolicy Local: in-cluster clients only reach
        // endpoints on their own node. externalTrafficPolicy does not apply.
        let sel = if view.itp_local { &local } else { &cluster };
        let fe = Frontend {
            itp_local: view.itp_local,
            ..frontend(FrontendKind::ClusterIP, sel)
        };
        let key = FrontendKey {
            ip,
            port: port.port,
            proto: port.proto,
            scope: Scope::External,
        };
        groups.push(vec![(key, fe)]);
    }

    let mut external = Vec::new();
    if let Some(node_port) = port.node_port {
        external.extend(
            node_ips
                .iter()
                .map(|&ip| (ip, node_port, FrontendKind::NodePort)),
        );
    }
    external.extend(
        view.external_ips
            .iter()
            .map(|&ip| (ip, port.port, FrontendKind::ExternalIP)),
    );
    external.extend(
        view.lb_ips
            .iter()
            .map(|&ip| (ip, port.port, FrontendKind::LoadBalancer)),
    );
    for (ip, fport, kind) in external {
        // kube-proxy applies source ranges to the load balancer's IPs only.
        let frontend = |kind, sel: &Selection| Frontend {
            source_ranges: if kind == FrontendKind::LoadBalancer {
                view.source_ranges.clone()
            } else {
                Vec::new()
            },
            ..frontend(kind, sel)
        };
        let key = |scope| FrontendKey {
            ip,
            port: fport,
            proto: port.proto,
            scope,
        };
        if view.etp_local {
            // Traffic from outside only reaches this node's endpoints (and
            // keeps its source address); pods and the host reach the address
            // as if through the load balancer, i.e. every endpoint, through
            // the internal entry.
            let ext = Frontend {
                etp_local: true,
                ..frontend(kind, &local)
            };
            let int = frontend(kind, &cluster);
            groups.push(vec![
                (key(Scope::External), ext),
                (key(Scope::Internal), int),
            ]);
        } else {
            groups.push(vec![(key(Scope::External), frontend(kind, &cluster))]);
        }
    }
    groups
}

/// Adds a group of frontends unless one of its keys is already taken:
/// services are translated in (namespace, name) order and the first claim
/// wins, so the outcome does not depend on event order.
fn insert_group(
    desired: &mut Desired,
    group: Vec<(FrontendKey, Frontend)>,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) {
    let taken = group
        .iter()
        .find_map(|(key, _)| desired.frontends.get(key).map(|fe| (key, fe)));
    if let Some((key, owner)) = taken {
        let owner_port = match owner.port_name.as_str() {
            "" => "the unnamed port".to_owned(),
            name => format!("port {name:?}"),
        };
        // The other service's name is escaped: a reason stays one line whatever the names
        // (found by the translate fuzz target).
        diags.push(obj.warning(format!(
            "{:?} frontend {key} conflicts with {owner_port} of service {}: skipped",
            group[0].1.kind,
            owner.service.to_string().escape_debug()
        )));
        return;
    }
    desired.frontends.extend(group);
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
