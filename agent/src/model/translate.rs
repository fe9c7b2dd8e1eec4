//! One Service, its EndpointSlices and this node → its frontends, with
//! kube-proxy's semantics (minus what ferry cannot program yet: SCTP).
//!
//! A dual-stack Service is translated once per family it has (its
//! `clusterIPs`), as kube-proxy runs one proxier per family: each family's
//! frontends (its ClusterIP, its node addresses' NodePorts, its externalIPs
//! and load-balancer IPs) get that family's endpoints (the slices of its
//! `addressType`) and that family's source ranges; addresses of a family
//! the Service does not have are ignored.
//!
//! [`translate_service`] is the unit the control loop calls for each Service
//! that changed; it reads only that Service's objects, so a change costs the
//! same at 10 or 50,000 Services. [`translate`] runs it over a whole set of
//! objects (start-up, the periodic full sweep, tests): both go through the
//! same claims index ([`super::claims`]), so the incremental path and a full
//! translation of the same objects always agree.
//!
//! The translation is pure and deterministic: the same inputs always give
//! the same frontends and the same diagnostics in the same order. Malformed
//! input never aborts it: the broken part is skipped with a [`Diagnostic`]
//! (see [`super::objects`]) and everything else is still programmed.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{
    AddrKey, BackendAddr, Cidr, Desired, Diagnostic, Family, Frontend, FrontendKey, FrontendKind,
    HealthCheck, Protocol, Scope, ServiceName,
    claims::{Claim, Claims},
    objects::{EndpointObj, Hints, NodeObj, Obj, ObjKey, ServiceObj, SliceObj, SvcPort, SvcSpec},
};

/// The agent's own settings that translation depends on (not cluster data).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The node ferry runs on: its Node object's addresses carry NodePorts,
    /// endpoints with this nodeName are "local".
    pub node_name: String,
    /// Maglev for services without the `ferry.io/lb-algorithm` annotation.
    pub maglev_default: bool,
    /// `--external-ip-ranges`: when non-empty, only externalIPs inside
    /// these ranges are served (the DenyServiceExternalIPs admission
    /// plugin's job, for clusters that do not run it).
    pub external_ip_ranges: Vec<Cidr>,
    /// `--service-cluster-ip-range`: externalIPs inside it are refused (a
    /// tenant could otherwise shadow a ClusterIP that is not allocated yet).
    pub service_cidrs: Vec<Cidr>,
}

/// What translation reads of the Nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeView<'a> {
    /// This node's object, if the source has it.
    pub this: Option<&'a NodeObj>,
    /// Every node's addresses: externalIPs on them are refused.
    pub all_ips: Option<&'a HashSet<IpAddr>>,
}

/// Which parts of the Node objects a Service's translation read: a change
/// to one of them makes the Service translate again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeUse {
    /// This node's addresses (NodePorts).
    pub addresses: bool,
    /// This node's zone (topology hints).
    pub zone: bool,
    /// Every node's addresses (externalIPs are checked against them).
    pub cluster_addresses: bool,
}

/// One address:port/protocol of a Service with its entries (one, or the
/// external and internal entries of an externalTrafficPolicy Local address,
/// which live or die together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub addr: AddrKey,
    pub frontends: Vec<(FrontendKey, Frontend)>,
}

impl Group {
    pub fn kind(&self) -> FrontendKind {
        self.frontends[0].1.kind
    }
}

/// The translation of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translated {
    pub groups: Vec<Group>,
    pub health_check: Option<HealthCheck>,
    pub diags: Vec<Diagnostic>,
    pub node_use: NodeUse,
    /// A NodePort could not be programmed: this node's Node object is missing.
    pub missing_node: bool,
}

/// Translates one Service with its slices (those labelled with its name,
/// any order) for this node.
pub fn translate_service<'a>(
    svc: &ServiceObj,
    slices: impl IntoIterator<Item = &'a SliceObj>,
    node: NodeView<'_>,
    cfg: &Config,
) -> Translated {
    let mut out = Translated::default();
    let Some(spec) = &svc.spec else {
        return out;
    };
    let obj = Obj {
        kind: "Service",
        namespace: &svc.name.namespace,
        name: &svc.name.name,
    };
    let slices: Vec<&SliceObj> = slices.into_iter().collect();
    let zone = node.this.and_then(|n| n.zone.as_deref());
    let external_ips = allowed_external_ips(spec, node, cfg, obj, &mut out);
    if let Some(port) = spec.health_check_node_port {
        out.health_check = Some(health_check(port, &slices, spec.primary_family()));
    }
    let maglev = spec.maglev.unwrap_or(cfg.maglev_default);
    for &cluster_ip in &spec.cluster_ips {
        let family = Family::of(&cluster_ip);
        let of_family = |ip: &&IpAddr| Family::of(ip) == family;
        let node_ips: Option<Vec<IpAddr>> = node
            .this
            .map(|n| n.ips.iter().filter(of_family).copied().collect());
        let fam = FamilyCx {
            cluster_ip,
            external_ips: external_ips.iter().filter(of_family).copied().collect(),
            lb_ips: spec.lb_ips.iter().filter(of_family).copied().collect(),
            source_ranges: spec
                .source_ranges
                .iter()
                .filter(|c| c.family() == family)
                .copied()
                .collect(),
        };
        for port in &spec.ports {
            let cands = candidates(&slices, &port.name, port.proto, family);
            if cands.values().any(|e| !e.hints.zones().is_empty()) {
                out.node_use.zone = true;
            }
            let addrs: &[IpAddr] = match port.node_port {
                Some(_) => {
                    out.node_use.addresses = true;
                    node_ips.as_deref().unwrap_or_else(|| {
                        out.missing_node = true;
                        &[]
                    })
                }
                None => &[],
            };
            let sel = Selections {
                cluster: select_cluster(&cands, port.proto, &cfg.node_name, zone),
                local: select_local(&cands, port.proto),
            };
            let view = PortCx {
                svc: &svc.name,
                spec,
                fam: &fam,
                port,
                maglev,
                sel: &sel,
            };
            out.groups.extend(port_groups(&view, addrs));
        }
    }
    out
}

/// One family's addresses of a Service.
struct FamilyCx {
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<Cidr>,
}

/// externalIPs that may be served: not a node's address, not inside the
/// service CIDR, inside `--external-ip-ranges` when it is set (the
/// CVE-2020-8554 class: a tenant must not capture traffic meant for others).
fn allowed_external_ips(
    spec: &SvcSpec,
    node: NodeView<'_>,
    cfg: &Config,
    obj: Obj<'_>,
    out: &mut Translated,
) -> Vec<IpAddr> {
    if !spec.external_ips.is_empty() {
        out.node_use.cluster_addresses = true;
    }
    let mut ok = Vec::with_capacity(spec.external_ips.len());
    for &ip in &spec.external_ips {
        let why = if node.all_ips.is_some_and(|all| all.contains(&ip))
            || node.this.is_some_and(|n| n.ips.contains(&ip))
        {
            Some("is a node's address".to_owned())
        } else if let Some(c) = cfg.service_cidrs.iter().find(|c| c.contains(ip)) {
            Some(format!("is inside the service CIDR {c}"))
        } else if !cfg.external_ip_ranges.is_empty()
            && !cfg.external_ip_ranges.iter().any(|c| c.contains(ip))
        {
            Some("is outside --external-ip-ranges".to_owned())
        } else {
            None
        };
        match why {
            Some(why) => out
                .diags
                .push(obj.warning(format!("externalIP {ip} {why}: refused"))),
            None => ok.push(ip),
        }
    }
    ok
}

/// The endpoints of one service port, by (ip, target port).
type Candidates<'a> = BTreeMap<(IpAddr, u16), &'a EndpointObj>;

/// The endpoints of one service port in one family: resolved by port name
/// and protocol in each slice (a named targetPort may be a different number
/// in each), merged over all slices of the family.
fn candidates<'a>(
    slices: &[&'a SliceObj],
    port_name: &str,
    proto: Protocol,
    family: Family,
) -> Candidates<'a> {
    let mut out: Candidates<'a> = BTreeMap::new();
    for slice in slices {
        for port in slice
            .ports
            .iter()
            .filter(|p| p.name == port_name && p.proto == proto)
        {
            for ep in slice
                .endpoints
                .iter()
                .filter(|e| Family::of(&e.ip) == family)
            {
                // An endpoint moving between slices, or an IP reused by a new
                // pod while the old one terminates, shows up twice: like
                // kube-proxy, prefer a non-terminating copy.
                let key = (ep.ip, port.port);
                if !out.contains_key(&key) || !ep.terminating {
                    out.insert(key, ep);
                }
            }
        }
    }
    out
}

/// The backends a frontend uses, and whether they are the terminating
/// fallback.
#[derive(Default)]
struct Selection {
    backends: Vec<BackendAddr>,
    /// The subset of `backends` on this node.
    local: BTreeSet<BackendAddr>,
    terminating: bool,
}

fn selection<'a>(
    cands: &Candidates<'a>,
    proto: Protocol,
    keep: impl Fn(&EndpointObj) -> bool,
) -> Selection {
    let mut sel = Selection::default();
    for (&(ip, port), ep) in cands.iter().filter(|(_, ep)| keep(ep)) {
        let b = BackendAddr { ip, port, proto };
        sel.backends.push(b);
        if ep.local {
            sel.local.insert(b);
        }
    }
    sel
}

/// Where hints send cluster-wide traffic: kube-proxy's
/// `topologyModeFromHints` (pkg/proxy/topology.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyMode {
    None,
    PreferSameNode,
    PreferSameZone,
}

/// Hints are used whenever every ready endpoint carries them (the
/// EndpointSlice controller writes them only when the Service asked): node
/// hints when all have one and one names this node, else zone hints when
/// all have one and one names this node's zone, else none.
pub fn topology_mode<'a>(
    ready: impl Iterator<Item = &'a Hints>,
    zone: Option<&str>,
) -> TopologyMode {
    let (mut all_node, mut for_node, mut all_zone, mut for_zone) = (true, false, true, false);
    for h in ready {
        if !h.has_nodes() {
            all_node = false;
        } else if h.for_this_node() {
            for_node = true;
        }
        if h.zones().is_empty() {
            all_zone = false;
        } else if zone.is_some_and(|z| h.zones().iter().any(|hz| &**hz == z)) {
            for_zone = true;
        }
    }
    if all_node && for_node {
        TopologyMode::PreferSameNode
    } else if all_zone && for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

/// kube-proxy's `availableForTopology`.
fn available_for_topology(h: &Hints, mode: TopologyMode, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => h.for_this_node(),
        TopologyMode::PreferSameZone => zone.is_some_and(|z| h.zones().iter().any(|hz| &**hz == z)),
    }
}

/// Cluster-wide endpoints (kube-proxy's `clusterEndpoints`): the ready ones
/// the topology allows; when there are none, the serving and terminating
/// ones (KEP-1669, so connections drain instead of failing); else none, and
/// the datapath rejects.
fn select_cluster(
    cands: &Candidates<'_>,
    proto: Protocol,
    _node: &str,
    zone: Option<&str>,
) -> Selection {
    let mode = topology_mode(cands.values().filter(|e| e.ready).map(|e| &e.hints), zone);
    let ready = selection(cands, proto, |e| {
        e.ready && available_for_topology(&e.hints, mode, zone)
    });
    if !ready.backends.is_empty() {
        return ready;
    }
    let mut fallback = selection(cands, proto, |e| e.serving && e.terminating);
    fallback.terminating = !fallback.backends.is_empty();
    fallback
}

/// This node's endpoints for a Local traffic policy (kube-proxy's
/// `localEndpoints`): the ready local ones, else the serving and
/// terminating local ones. Topology does not apply.
fn select_local(cands: &Candidates<'_>, proto: Protocol) -> Selection {
    let ready = selection(cands, proto, |e| e.local && e.ready);
    if !ready.backends.is_empty() {
        return ready;
    }
    let mut fallback = selection(cands, proto, |e| e.local && e.serving && e.terminating);
    fallback.terminating = !fallback.backends.is_empty();
    fallback
}

struct Selections {
    cluster: Selection,
    local: Selection,
}

impl Selections {
    /// A Local policy finds no endpoint on this node while the Service has
    /// some elsewhere (kube-proxy: no local endpoints but `hasEndpoints`, any
    /// ready or serving-terminating endpoint, which `cluster` then holds):
    /// drop, not reject.
    fn drops_no_local(&self) -> bool {
        self.local.backends.is_empty() && !self.cluster.backends.is_empty()
    }
}

/// What the groups of one port are made from.
struct PortCx<'a> {
    svc: &'a ServiceName,
    spec: &'a SvcSpec,
    fam: &'a FamilyCx,
    port: &'a SvcPort,
    maglev: bool,
    sel: &'a Selections,
}

impl PortCx<'_> {
    fn frontend(&self, kind: FrontendKind, sel: &Selection) -> Frontend {
        Frontend {
            service: self.svc.clone(),
            port_name: self.port.name.clone(),
            kind,
            backends: sel.backends.clone(),
            local_backends: sel.local.clone(),
            terminating: sel.terminating,
            affinity_timeout: self.spec.affinity_timeout,
            // kube-proxy applies source ranges to the load balancer's IPs only.
            source_ranges: if kind == FrontendKind::LoadBalancer {
                self.fam.source_ranges.clone()
            } else {
                Vec::new()
            },
            maglev: self.maglev,
            etp_local: false,
            itp_local: false,
            drop_no_local: false,
        }
    }
}

/// The groups of one port.
fn port_groups(cx: &PortCx<'_>, node_ips: &[IpAddr]) -> Vec<Group> {
    let (spec, port) = (cx.spec, cx.port);
    let mut groups = Vec::new();
    {
        let ip = cx.fam.cluster_ip;
        // internalTrafficPolicy Local: in-cluster clients only reach
        // endpoints on their own node. externalTrafficPolicy does not apply.
        let sel = if spec.itp_local {
            &cx.sel.local
        } else {
            &cx.sel.cluster
        };
        let fe = Frontend {
            itp_local: spec.itp_local,
            drop_no_local: spec.itp_local && cx.sel.drops_no_local(),
            ..cx.frontend(FrontendKind::ClusterIP, sel)
        };
        let addr = AddrKey {
            ip,
            port: port.port,
            proto: port.proto,
        };
        groups.push(Group {
            addr,
            frontends: vec![(addr.scoped(Scope::External), fe)],
        });
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
        cx.fam
            .external_ips
            .iter()
            .map(|&ip| (ip, port.port, FrontendKind::ExternalIP)),
    );
    external.extend(
        cx.fam
            .lb_ips
            .iter()
            .map(|&ip| (ip, port.port, FrontendKind::LoadBalancer)),
    );
    for (ip, fport, kind) in external {
        let addr = AddrKey {
            ip,
            port: fport,
            proto: port.proto,
        };
        let frontends = if spec.etp_local {
            // Traffic from outside only reaches this node's endpoints (and
            // keeps its source address); pods and the host reach the address
            // as if through the load balancer, i.e. every endpoint, through
            // the internal entry.
            let ext = Frontend {
                etp_local: true,
                drop_no_local: cx.sel.drops_no_local(),
                ..cx.frontend(kind, &cx.sel.local)
            };
            let int = cx.frontend(kind, &cx.sel.cluster);
            vec![
                (addr.scoped(Scope::External), ext),
                (addr.scoped(Scope::Internal), int),
            ]
        } else {
            vec![(
                addr.scoped(Scope::External),
                cx.frontend(kind, &cx.sel.cluster),
            )]
        };
        groups.push(Group { addr, frontends });
    }
    groups
}

/// Counts this node's endpoints of a service (distinct addresses, any port)
/// for its healthCheckNodePort, as kube-proxy's health server does. A
/// dual-stack pod has an endpoint in each family's slice: the primary
/// family's are counted, so that it counts once.
fn health_check(node_port: u16, slices: &[&SliceObj], family: Family) -> HealthCheck {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for ep in slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.local && Family::of(&e.ip) == family)
    {
        if ep.ready {
            ready.insert(ep.ip);
        } else if ep.serving && ep.terminating {
            terminating.insert(ep.ip);
        }
    }
    HealthCheck {
        node_port,
        local_ready: ready.len(),
        local_terminating: terminating.len(),
    }
}

// ---------------------------------------------------------------------------
// Whole sets of objects

/// Kubernetes objects as sources read them, keyed by (namespace, name):
/// the input of a full translation (tests, tools).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    pub services: BTreeMap<(String, String), Service>,
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    pub nodes: BTreeMap<String, Node>,
}

/// The compact objects of a whole cluster, as the control loop's tracker
/// holds them.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: BTreeMap<ServiceName, ServiceObj>,
    pub slices: BTreeMap<ObjKey, SliceObj>,
    pub nodes: BTreeMap<String, NodeObj>,
}

impl Objects {
    /// Converts every object of `inputs` for the node `node_name`.
    pub fn from_inputs(inputs: &Inputs, node_name: &str) -> Objects {
        let mut o = Objects::default();
        for ((ns, name), svc) in &inputs.services {
            let s = ServiceObj::from_k8s(&ObjKey::new(ns, name), svc);
            o.services.insert(s.name.clone(), s);
        }
        for ((ns, name), slice) in &inputs.slices {
            let key = ObjKey::new(ns, name);
            let s = SliceObj::from_k8s(&key, slice, node_name);
            o.slices.insert(key, s);
        }
        for (name, node) in &inputs.nodes {
            o.nodes.insert(name.clone(), NodeObj::from_k8s(name, node));
        }
        o
    }
}

/// Translates a whole set of objects: every Service, conflicts settled by
/// the claims index, diagnostics in a fixed order (nodes, slices, then each
/// service's).
pub fn translate_objects(objects: &Objects, cfg: &Config) -> (Desired, Vec<Diagnostic>) {
    let mut diags: Vec<Diagnostic> = Vec::new();
    for n in objects.nodes.values() {
        diags.extend(n.diags.iter().cloned());
    }
    for s in objects.slices.values() {
        diags.extend(s.diags.iter().cloned());
    }
    let all_ips: HashSet<IpAddr> = objects
        .nodes
        .values()
        .flat_map(|n| n.ips.iter().copied())
        .collect();
    let node = NodeView {
        this: objects.nodes.get(&cfg.node_name),
        all_ips: Some(&all_ips),
    };
    let mut by_service: BTreeMap<ServiceName, Vec<&SliceObj>> = BTreeMap::new();
    for s in objects.slices.values() {
        if let Some(svc) = s.service_name() {
            by_service.entry(svc).or_default().push(s);
        }
    }
    let mut claims = Claims::default();
    let mut translated: BTreeMap<&ServiceName, Translated> = BTreeMap::new();
    let mut desired = Desired {
        node_ips: node.this.map(|n| n.ips.clone()).unwrap_or_default(),
        cluster_node_ips: all_ips.iter().copied().collect(),
        ..Desired::default()
    };
    let mut missing_node_reported = false;
    for (name, svc) in &objects.services {
        let slices = by_service.get(name).map(Vec::as_slice).unwrap_or_default();
        let t = translate_service(svc, slices.iter().copied(), node, cfg);
        for g in &t.groups {
            claims.claim(g.addr, Claim::of(svc, g.kind()));
        }
        translated.insert(name, t);
    }
    for (name, svc) in &objects.services {
        diags.extend(svc.diags.iter().cloned());
        let t = &translated[name];
        if t.missing_node && !missing_node_reported {
            missing_node_reported = true;
            diags.push(missing_node_diag(&cfg.node_name));
        }
        diags.extend(t.diags.iter().cloned());
        diags.extend(claims.conflicts_of(name, &t.groups));
        for g in &t.groups {
            if claims.owns(name, g) {
                desired.frontends.extend(g.frontends.iter().cloned());
            }
        }
        if let Some(hc) = &t.health_check {
            desired.health_checks.insert(name.clone(), hc.clone());
        }
    }
    (desired, diags)
}

/// The diagnostic of a NodePort that cannot be programmed.
pub fn missing_node_diag(node_name: &str) -> Diagnostic {
    Obj {
        kind: "Node",
        namespace: "",
        name: node_name,
    }
    .warning("Node object not found: NodePorts are not programmed")
}

/// Converts and translates Kubernetes objects (tests, tools).
pub fn translate(inputs: &Inputs, cfg: &Config) -> (Desired, Vec<Diagnostic>) {
    translate_objects(&Objects::from_inputs(inputs, &cfg.node_name), cfg)
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
