//! The objects ferry reads, in the compact form it keeps: only the fields it
//! uses, validated once when they arrive. A source converts each Kubernetes
//! object as it comes ([`ServiceObj::from_k8s`], [`SliceObj::from_k8s`],
//! [`NodeObj::from_k8s`]) and drops the original, so the agent holds the
//! cluster once, small, instead of whole k8s-openapi objects with managed
//! fields and annotations it never reads.
//!
//! Validation follows the API server where an object stored by it could
//! still be off (names as DNS labels, ports in range, addresses read with
//! kube-proxy's lenient parser). A broken part (a port, an endpoint) is
//! dropped with a [`Diagnostic`]; a broken identity drops the whole object
//! (`spec: None`), so its frontends go away: the kernel state is always a
//! function of the current objects, whatever their history.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::SystemTime,
};

use super::Family;

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    Cidr, Diagnostic, Protocol, ServiceName, Severity,
    docs::{self, HintsDoc, NodeDoc, ServiceDoc, ServicePortDoc, ServiceSpecDoc, SliceDoc},
    names::{self, NameRule},
};

/// Links an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Objects carrying this label belong to another proxy: kube-proxy's informers
/// filter them out whatever the value.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Headless services' slices carry it; kube-proxy never watches them.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The Node label topology hints are matched against.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Set by the EndpointSlice controller: when the change that produced this
/// slice happened (the start of `network_programming_duration_seconds`).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Annotation choosing a service's north-south backend selection:
/// `maglev` or `random`.
pub const LB_ALGORITHM_ANNOTATION: &str = "ferry.io/lb-algorithm";
/// The cluster autoscaler's taint on a node it is about to remove (KEP-3836).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// sessionAffinityConfig.clientIP.timeoutSeconds: default and valid range
/// (the API server's validation).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// (namespace, name) of a namespaced object; namespace "" for cluster-scoped ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Names the object a diagnostic is about.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Obj<'_> {
    pub fn diag(self, severity: Severity, reason: impl Into<String>) -> Diagnostic {
        Diagnostic {
            kind: self.kind,
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            reason: reason.into(),
            severity,
        }
    }

    pub fn warning(self, reason: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Warning, reason)
    }

    pub fn info(self, reason: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Info, reason)
    }
}

// ---------------------------------------------------------------------------
// Services

/// A Service as ferry keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceObj {
    pub name: ServiceName,
    /// metadata.uid: Kubernetes Events about the Service name it.
    pub uid: Option<String>,
    /// metadata.creationTimestamp (seconds): the older of two services
    /// claiming one address keeps it.
    pub created: Option<i64>,
    /// None: not proxied (ExternalName, headless, another proxy's, not
    /// allocated, or broken as a whole: then `diags` says why).
    pub spec: Option<SvcSpec>,
    pub diags: Vec<Diagnostic>,
}

/// What translation needs of a proxied Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcSpec {
    /// One per family the Service has (`clusterIPs`, primary first): the
    /// families it is programmed for.
    pub cluster_ips: Vec<IpAddr>,
    /// Both families; each family's are served only if the Service has
    /// that family (kube-proxy's `MapIPsByIPFamily`).
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress IPs (LoadBalancer services only, not in
    /// "Proxy" mode).
    pub lb_ips: Vec<IpAddr>,
    /// type NodePort or LoadBalancer: the ports' nodePorts are used.
    pub node_ports: bool,
    pub ports: Vec<SvcPort>,
    pub affinity_timeout: Option<u32>,
    pub itp_local: bool,
    pub etp_local: bool,
    /// loadBalancerSourceRanges, both families; empty = everyone.
    pub source_ranges: Vec<Cidr>,
    /// Some(true) = Maglev, Some(false) = random, None = the agent's default.
    pub maglev: Option<bool>,
    pub health_check_node_port: Option<u16>,
}

impl SvcSpec {
    /// The family of the first cluster IP (`ipFamilies[0]`).
    pub fn primary_family(&self) -> Family {
        self.cluster_ips.first().map_or(Family::V4, Family::of)
    }
}

/// A validated service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcPort {
    pub name: String,
    pub proto: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

impl ServiceObj {
    /// A full k8s-openapi Service (tests, tools), through its lean form.
    pub fn from_k8s(key: &ObjKey, svc: &Service) -> ServiceObj {
        Self::from_doc(key, &docs::from_k8s(svc))
    }

    /// Converts a Service read from a source, keyed by `key` (the namespace
    /// a manifest defaulted, say).
    pub fn from_doc(key: &ObjKey, svc: &ServiceDoc) -> ServiceObj {
        let name = ServiceName {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let obj = Obj {
            kind: "Service",
            namespace: &key.namespace,
            name: &key.name,
        };
        let mut diags = Vec::new();
        let spec = service_spec(svc, obj, &mut diags);
        ServiceObj {
            name,
            uid: svc.metadata.uid.clone(),
            created: svc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            spec,
            diags,
        }
    }
}

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.contains_key(key))
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Checks an object's namespace and name as the API server would; a
/// diagnostic when they would not have been accepted.
fn identity_ok(
    obj: Obj<'_>,
    rule: NameRule,
    namespaced: bool,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    if obj.name.is_empty() {
        diags.push(obj.warning("metadata.name is missing"));
        return false;
    }
    if let Err(why) = names::check(obj.name, rule) {
        diags.push(obj.warning(format!("metadata.name: {why}")));
        return false;
    }
    if namespaced && let Err(why) = names::check(obj.namespace, NameRule::Dns1123Label) {
        diags.push(obj.warning(format!("metadata.namespace: {why}")));
        return false;
    }
    true
}

fn service_spec(svc: &ServiceDoc, obj: Obj<'_>, diags: &mut Vec<Diagnostic>) -> Option<SvcSpec> {
    if !identity_ok(obj, NameRule::Dns1035Label, true, diags) {
        return None;
    }
    if has_label(&svc.metadata, PROXY_NAME_LABEL) {
        return None; // another proxy's
    }
    let spec = svc.spec.as_ref()?;
    let node_ports = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => false,
        "NodePort" | "LoadBalancer" => true,
        "ExternalName" => return None,
        other => {
            diags.push(obj.warning(format!("type {other:?} is not a service type")));
            return None;
        }
    };
    let cluster_ips = cluster_ips(spec, obj, diags)?;
    let external_ips = parse_ips(spec.external_ips.iter().flatten(), "externalIP", obj, diags);
    let lb_ips = if spec.type_.as_deref() == Some("LoadBalancer") {
        parse_ips(lb_ingress_ips(svc), "loadBalancer ingress IP", obj, diags)
    } else {
        Vec::new()
    };
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
    let maglev = lb_algorithm(&svc.metadata, obj, diags);
    let affinity_timeout = affinity_timeout(spec, obj, diags);
    let itp_local = is_local_policy(
        spec.internal_traffic_policy.as_deref(),
        "internalTrafficPolicy",
        obj,
        diags,
    );
    let mut ports: Vec<SvcPort> = spec
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, sp)| service_port(sp, i, node_ports, obj, diags))
        .collect();
    // Kept for the Service's life: no empty slots (collect's first
    // allocation holds four).
    ports.shrink_to_fit();
    Some(SvcSpec {
        cluster_ips,
        external_ips,
        lb_ips,
        node_ports,
        ports,
        affinity_timeout,
        itp_local,
        etp_local,
        source_ranges,
        maglev,
        health_check_node_port,
    })
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

/// Validates one service port. None (and a diagnostic) skips just this port.
fn service_port(
    sp: &ServicePortDoc,
    index: usize,
    node_ports: bool,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<SvcPort> {
    let name = sp.name.clone().unwrap_or_default();
    let label = port_label(&name, index);
    if !name.is_empty()
        && let Err(why) = names::check(&name, NameRule::IanaSvcName)
    {
        diags.push(obj.warning(format!("{label}: name {why}")));
        return None;
    }
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
    Some(SvcPort {
        name,
        proto,
        port,
        node_port,
    })
}

/// The cluster IPs, one per family, primary first. None when the service
/// has none (headless, or not allocated) or one is malformed: a service
/// whose identity is broken is skipped as a whole. A second address of a
/// family already seen is ignored with a warning (the API server allows
/// one per family).
fn cluster_ips(
    spec: &ServiceSpecDoc,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<IpAddr>> {
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
        None | Some(&"None") => return None, // not allocated, or headless
        Some(_) => {}
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for text in raw {
        let Some(ip) = parse_ip_sloppy(text) else {
            diags.push(obj.warning(format!("clusterIP {text:?} is not an IP address")));
            return None;
        };
        if ips.iter().any(|seen| Family::of(seen) == Family::of(&ip)) {
            diags.push(obj.warning(format!(
                "clusterIPs: {text:?} is a second {} address: ignored",
                Family::of(&ip).name()
            )));
            continue;
        }
        super::push_short(&mut ips, ip);
    }
    Some(ips)
}

/// The `ip` of each load-balancer ingress, except those in "Proxy" mode:
/// there the load balancer delivers to the nodes itself and kube-proxy does
/// not capture the address.
fn lb_ingress_ips(svc: &ServiceDoc) -> impl Iterator<Item = &String> {
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    ingress
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|ing| ing.ip.as_ref())
}

/// Parses a list of optional addresses (both families, deduplicated);
/// malformed ones are reported and skipped alone.
fn parse_ips<'a>(
    raw: impl Iterator<Item = &'a String>,
    what: &str,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for text in raw {
        match parse_ip_sloppy(text) {
            Some(ip) => {
                if !out.contains(&ip) {
                    out.push(ip)
                }
            }
            None => diags.push(obj.warning(format!("{what} {text:?} is not an IP address"))),
        }
    }
    out
}

/// loadBalancerSourceRanges, both families. A malformed range makes the
/// service fail closed (skipped with a warning): opening a service its owner
/// meant to restrict would be worse than not serving it.
fn source_ranges(
    spec: &ServiceSpecDoc,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<Cidr>> {
    let mut out = Vec::new();
    for raw in spec.load_balancer_source_ranges.iter().flatten() {
        let raw = raw.trim();
        match raw.parse::<Cidr>() {
            Ok(cidr) => {
                if !out.contains(&cidr) {
                    out.push(cidr);
                }
            }
            Err(_) => {
                diags.push(obj.warning(format!(
                    "loadBalancerSourceRanges entry {raw:?} is not a CIDR: service skipped"
                )));
                return None;
            }
        }
    }
    out.sort();
    Some(out)
}

/// The `ferry.io/lb-algorithm` annotation: Some(maglev?) or None (default).
fn lb_algorithm(meta: &ObjectMeta, obj: Obj<'_>, diags: &mut Vec<Diagnostic>) -> Option<bool> {
    match annotation(meta, LB_ALGORITHM_ANNOTATION) {
        None => None,
        Some("maglev") => Some(true),
        Some("random") => Some(false),
        Some(other) => {
            diags.push(obj.warning(format!(
                "annotation {LB_ALGORITHM_ANNOTATION}={other:?} is neither maglev nor random: using the default"
            )));
            None
        }
    }
}

fn affinity_timeout(
    spec: &ServiceSpecDoc,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<u32> {
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

// ---------------------------------------------------------------------------
// EndpointSlices

/// An EndpointSlice as ferry keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceObj {
    pub key: ObjKey,
    /// The Service it belongs to (same namespace); None when it is not one
    /// ferry uses (another proxy's, no service label, another address
    /// family, broken).
    pub service: Option<String>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointObj>,
    /// The controller's last-change-trigger-time.
    pub trigger_time: Option<SystemTime>,
    pub diags: Vec<Diagnostic>,
}

/// One port of a slice, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub proto: Protocol,
    pub port: u16,
}

/// One endpoint of a slice, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointObj {
    /// Of its slice's addressType.
    pub ip: IpAddr,
    /// On this node (its nodeName is the agent's).
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hints: Hints,
}

/// An endpoint's topology hints, reduced to what kube-proxy's
/// `CategorizeEndpoints` asks of them. One pointer, null when the endpoint
/// has none (the rule), so that an endpoint takes 32 bytes, not 48: 100,000
/// of them are kept at 10,000 Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints(Option<Box<HintSet>>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct HintSet {
    has_nodes: bool,
    for_this_node: bool,
    zones: Box<[Box<str>]>,
}

impl Hints {
    /// `for_this_node` implies `has_nodes`.
    pub fn new(has_nodes: bool, for_this_node: bool, zones: Box<[Box<str>]>) -> Hints {
        let has_nodes = has_nodes || for_this_node;
        Hints((has_nodes || !zones.is_empty()).then(|| {
            Box::new(HintSet {
                has_nodes,
                for_this_node,
                zones,
            })
        }))
    }

    /// hints.forNodes is set (non-empty).
    pub fn has_nodes(&self) -> bool {
        self.0.as_ref().is_some_and(|h| h.has_nodes)
    }

    /// hints.forNodes names this node.
    pub fn for_this_node(&self) -> bool {
        self.0.as_ref().is_some_and(|h| h.for_this_node)
    }

    /// hints.forZones (empty = none).
    pub fn zones(&self) -> &[Box<str>] {
        self.0.as_ref().map_or(&[], |h| &h.zones)
    }
}

impl SliceObj {
    /// A full k8s-openapi EndpointSlice (tests, tools), through its lean form.
    pub fn from_k8s(key: &ObjKey, slice: &EndpointSlice, node_name: &str) -> SliceObj {
        Self::from_doc(key, &docs::from_k8s(slice), node_name)
    }

    /// Converts an EndpointSlice for the agent running on `node_name`.
    pub fn from_doc(key: &ObjKey, slice: &SliceDoc, node_name: &str) -> SliceObj {
        let obj = Obj {
            kind: "EndpointSlice",
            namespace: &key.namespace,
            name: &key.name,
        };
        let mut out = SliceObj {
            key: key.clone(),
            service: None,
            ports: Vec::new(),
            endpoints: Vec::new(),
            trigger_time: annotation(&slice.metadata, TRIGGER_TIME_ANNOTATION)
                .and_then(|raw| raw.parse::<jiff::Timestamp>().ok())
                .map(SystemTime::from),
            diags: Vec::new(),
        };
        let diags = &mut out.diags;
        if !identity_ok(obj, NameRule::Dns1123Subdomain, true, diags) {
            return out;
        }
        let meta = &slice.metadata;
        if has_label(meta, PROXY_NAME_LABEL) {
            return out;
        }
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        let Some(service) = service.filter(|s| !s.is_empty()) else {
            diags.push(obj.warning(format!("label {SERVICE_NAME_LABEL} is missing")));
            return out;
        };
        // FQDN slices are not for proxies (kube-proxy ignores them too).
        let family = match slice.address_type.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => return out,
        };
        out.ports = slice_ports(slice, obj, diags);
        out.endpoints = endpoints(slice, family, node_name, obj, diags);
        out.service = Some(service.clone());
        out
    }

    /// The service this slice feeds, if any.
    pub fn service_name(&self) -> Option<ServiceName> {
        self.service.as_ref().map(|s| ServiceName {
            namespace: self.key.namespace.clone(),
            name: s.clone(),
        })
    }
}

fn slice_ports(slice: &SliceDoc, obj: Obj<'_>, diags: &mut Vec<Diagnostic>) -> Vec<SlicePort> {
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
        super::push_short(&mut ports, SlicePort { name, proto, port });
    }
    ports
}

fn endpoints(
    slice: &SliceDoc,
    family: Family,
    node_name: &str,
    obj: Obj<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<EndpointObj> {
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Consumers must use the first address only (API documentation).
        let Some(addr) = ep.addresses.first() else {
            diags.push(obj.warning(format!("endpoints[{i}] has no addresses")));
            continue;
        };
        let Some(ip) = parse_ip_sloppy(addr).filter(|ip| Family::of(ip) == family) else {
            diags.push(obj.warning(format!(
                "endpoint address {addr:?} is not an {} address",
                family.name()
            )));
            continue;
        };
        let cond = ep.conditions.as_ref();
        // As kube-proxy reads them: nil ready and nil serving mean true
        // ("interpret unknown as ready"), nil terminating means false.
        endpoints.push(EndpointObj {
            ip,
            local: ep.node_name.as_deref() == Some(node_name),
            ready: cond.and_then(|c| c.ready).unwrap_or(true),
            serving: cond.and_then(|c| c.serving).unwrap_or(true),
            terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
            hints: hints(ep.hints.as_ref(), node_name),
        });
    }
    endpoints
}

fn hints(hints: Option<&HintsDoc>, node_name: &str) -> Hints {
    let Some(h) = hints else {
        return Hints::default();
    };
    let nodes = h.for_nodes.as_deref().unwrap_or_default();
    let zones = h.for_zones.as_deref().unwrap_or_default();
    Hints::new(
        !nodes.is_empty(),
        nodes.iter().any(|n| n.name == node_name),
        zones.iter().map(|z| z.name.as_str().into()).collect(),
    )
}

// ---------------------------------------------------------------------------
// Nodes

/// A Node as ferry keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObj {
    pub name: String,
    /// InternalIP and ExternalIP addresses of both families, deduplicated,
    /// in order.
    pub ips: Vec<IpAddr>,
    /// topology.kubernetes.io/zone.
    pub zone: Option<String>,
    /// metadata.deletionTimestamp is set.
    pub deleting: bool,
    /// Carries the cluster autoscaler's ToBeDeletedByClusterAutoscaler taint.
    pub to_be_deleted: bool,
    pub diags: Vec<Diagnostic>,
}

impl NodeObj {
    /// A full k8s-openapi Node (tests, tools), through its lean form.
    pub fn from_k8s(name: &str, node: &Node) -> NodeObj {
        Self::from_doc(name, &docs::from_k8s(node))
    }

    pub fn from_doc(name: &str, node: &NodeDoc) -> NodeObj {
        let obj = Obj {
            kind: "Node",
            namespace: "",
            name,
        };
        let mut diags = Vec::new();
        let mut ips = Vec::new();
        if identity_ok(obj, NameRule::Dns1123Subdomain, false, &mut diags) {
            let addresses = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_deref())
                .unwrap_or_default();
            for addr in addresses {
                if addr.type_ != "InternalIP" && addr.type_ != "ExternalIP" {
                    continue; // Hostname, InternalDNS...: not addresses to listen on
                }
                match parse_ip_sloppy(&addr.address) {
                    Some(ip) => {
                        if !ips.contains(&ip) {
                            ips.push(ip)
                        }
                    }
                    None => diags.push(obj.warning(format!(
                        "{} address {:?} is not an IP address",
                        addr.type_, addr.address
                    ))),
                }
            }
        }
        NodeObj {
            name: name.to_owned(),
            ips,
            zone: node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .cloned(),
            deleting: node.metadata.deletion_timestamp.is_some(),
            to_be_deleted: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == TO_BE_DELETED_TAINT),
            diags,
        }
    }
}

// ---------------------------------------------------------------------------
// Addresses

/// Parses an IP address as kube-proxy's `netutils.ParseIPSloppy`: IPv4
/// octets may carry leading zeros ("010.001.002.003", stored by API servers
/// before Go 1.17 made the strict parser reject them), read as decimal.
///
/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is IPv4, as Go reads it
/// (`To4()` is not nil): the datapath looks a dual-stack socket's mapped
/// destination up among the IPv4 frontends, never among the IPv6 ones.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_sloppy(s) {
        return Some(IpAddr::V4(v4));
    }
    let v6 = s.parse::<std::net::Ipv6Addr>().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// The IPv4 half of [`parse_ip_sloppy`], as Go 1.16's `parseIPv4` (which
/// k8s.io/utils forked): four dot-separated runs of decimal digits, any
/// number of leading zeros, each at most 255.
pub fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Leading zeros never overflow; the value does (Go stops at 0xFFFFFF).
        let digits = part.trim_start_matches('0');
        *o = if digits.is_empty() {
            0
        } else if digits.len() > 3 {
            return None;
        } else {
            u8::try_from(digits.parse::<u16>().ok()?).ok()?
        };
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go 1.16's `net.ParseIP` (what `netutils.ParseIPSloppy` is), case by
    /// case: what it reads, and what it refuses.
    #[test]
    fn sloppy_ipv4_reads_what_go_1_16_reads() {
        let reads = [
            ("172.30.0.041", [172, 30, 0, 41]),
            ("010.001.002.003", [10, 1, 2, 3]),
            ("0001.2.3.4", [1, 2, 3, 4]),
            ("000000000000000010.0.0.1", [10, 0, 0, 1]),
            ("0.0.0.0", [0, 0, 0, 0]),
            ("255.255.255.255", [255, 255, 255, 255]),
            ("00255.0.0.00", [255, 0, 0, 0]),
        ];
        for (text, octets) in reads {
            assert_eq!(
                parse_ipv4_sloppy(text),
                Some(Ipv4Addr::from(octets)),
                "{text:?}"
            );
        }
        for bad in [
            "256.0.0.1",
            "1000.0.0.1",
            "99999999999999999999.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "1.2.3.",
            ".1.2.3",
            "a.b.c.d",
            "1.2.3.4a",
            "+1.2.3.4",
            "0x1.2.3.4",
            " 1.2.3.4",
            "1.2.3.4 ",
            "",
        ] {
            assert_eq!(parse_ipv4_sloppy(bad), None, "{bad:?}");
        }
        assert!(matches!(parse_ip_sloppy("fd00::1"), Some(IpAddr::V6(_))));
        assert!(matches!(parse_ip_sloppy("010.0.0.1"), Some(IpAddr::V4(_))));
        assert_eq!(
            parse_ip_sloppy("::ffff:10.96.0.10"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)))
        );
    }

    /// 100,000 endpoints are kept at 10,000 Services: each stays small.
    #[test]
    fn endpoint_is_compact() {
        assert!(std::mem::size_of::<EndpointObj>() <= 32);
        let h = Hints::new(false, false, ["a".into(), "b".into()].into());
        assert_eq!(h.zones(), [Box::from("a"), Box::from("b")]);
        assert!(!h.has_nodes() && !h.for_this_node());
        // No hints at all is one value, however it was made.
        assert_eq!(Hints::new(false, false, Box::new([])), Hints::default());
        assert!(Hints::new(true, true, Box::new([])).for_this_node());
    }
}
