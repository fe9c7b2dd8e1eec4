//! Services and EndpointSlices as the agent reads them: YAML files in a manifests directory.
//!
//! Dual-stack Services are written as the API server stores them: `clusterIPs` with one
//! address per family (the primary one also in `clusterIP`), `ipFamilies` in the same order,
//! `ipFamilyPolicy`; their endpoints come in one EndpointSlice per address family
//! (`addressType: IPv4` / `IPv6`), both labelled with the service's name. Services and slices
//! built without those settings are written exactly as before (IPv4, no `ipFamilies`).
//!
//! Files are written atomically (a temporary file in the same directory whose name does not end
//! in `.yaml`, then a rename), so the agent never reads half a file.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// Something that is written as one manifest file.
pub trait Manifest {
    fn kind(&self) -> &'static str;
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
    fn to_value(&self) -> Value;

    /// `<kind>-<namespace>-<name>.yaml`
    fn file_name(&self) -> String {
        format!(
            "{}-{}-{}.yaml",
            self.kind().to_lowercase(),
            self.namespace(),
            self.name()
        )
    }

    fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.to_value()).expect("a JSON value is always valid YAML")
    }
}

/// A service's targetPort: a number, or the name of a container port (resolved per slice).
#[derive(Clone, Debug)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl From<u16> for TargetPort {
    fn from(n: u16) -> Self {
        TargetPort::Number(n)
    }
}

impl From<&str> for TargetPort {
    fn from(s: &str) -> Self {
        TargetPort::Name(s.to_owned())
    }
}

#[derive(Clone, Debug)]
pub struct ServicePort {
    pub name: String,
    /// i64 so that a test can write an invalid port (70000).
    pub port: i64,
    pub protocol: String,
    pub target_port: Option<TargetPort>,
    /// i64 so that a test can write an invalid one.
    pub node_port: Option<i64>,
}

/// A v1 Service.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub type_: String,
    /// `Some("None")` makes it headless.
    pub cluster_ip: Option<String>,
    /// The ClusterIPs after `cluster_ip` in `clusterIPs` (a dual-stack Service's second
    /// family).
    pub extra_cluster_ips: Vec<String>,
    /// `ipFamilies` ("IPv4", "IPv6"), in `clusterIPs` order; empty: not written.
    pub ip_families: Vec<String>,
    /// `ipFamilyPolicy`: SingleStack, PreferDualStack or RequireDualStack; `None`: not written.
    pub ip_family_policy: Option<String>,
    pub ports: Vec<ServicePort>,
    /// `Some(timeout)` for sessionAffinity ClientIP (`None` timeout = the API default).
    pub affinity: Option<Option<u32>>,
    pub labels: Vec<(String, String)>,
    pub internal_traffic_policy: Option<String>,
    pub external_name: Option<String>,
    pub external_traffic_policy: Option<String>,
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress[].ip`
    pub lb_ingress: Vec<String>,
    pub health_check_node_port: Option<i64>,
    pub source_ranges: Vec<String>,
    pub annotations: Vec<(String, String)>,
    /// metadata.creationTimestamp (RFC 3339): the older of two Services claiming one
    /// address keeps it.
    pub created: Option<String>,
}

impl Service {
    /// A ClusterIP service in namespace `default`.
    pub fn cluster_ip(name: &str, ip: &str) -> Service {
        Service {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            type_: "ClusterIP".to_owned(),
            cluster_ip: Some(ip.to_owned()),
            extra_cluster_ips: Vec::new(),
            ip_families: Vec::new(),
            ip_family_policy: None,
            ports: Vec::new(),
            affinity: None,
            labels: Vec::new(),
            internal_traffic_policy: None,
            external_name: None,
            external_traffic_policy: None,
            external_ips: Vec::new(),
            lb_ingress: Vec::new(),
            health_check_node_port: None,
            source_ranges: Vec::new(),
            annotations: Vec::new(),
            created: None,
        }
    }

    /// An IPv6 single-stack ClusterIP service (`ipFamilies: [IPv6]`, `ipFamilyPolicy:
    /// SingleStack`), e.g. `Service::cluster_ip6("web", "fd00:96::a")`.
    pub fn cluster_ip6(name: &str, ip: &str) -> Service {
        Service::cluster_ip(name, ip)
            .cluster_ips(&[ip])
            .ip_family_policy("SingleStack")
    }

    /// A dual-stack ClusterIP service with `policy` (PreferDualStack or RequireDualStack) and
    /// one ClusterIP per family, the primary first: `["10.96.0.10", "fd00:96::a"]`.
    pub fn dual_stack(name: &str, policy: &str, ips: &[&str]) -> Service {
        let primary = ips.first().copied().unwrap_or_default();
        Service::cluster_ip(name, primary)
            .cluster_ips(ips)
            .ip_family_policy(policy)
    }

    /// A NodePort service (give its ports nodePorts with [`node_port`](Service::node_port)).
    pub fn node_port_service(name: &str, cluster_ip: &str) -> Service {
        Service {
            type_: "NodePort".to_owned(),
            ..Service::cluster_ip(name, cluster_ip)
        }
    }

    /// A LoadBalancer service (its ingress IPs: [`lb_ingress`](Service::lb_ingress)).
    pub fn load_balancer(name: &str, cluster_ip: &str) -> Service {
        Service {
            type_: "LoadBalancer".to_owned(),
            ..Service::cluster_ip(name, cluster_ip)
        }
    }

    /// A headless service (clusterIP: None).
    pub fn headless(name: &str) -> Service {
        Service::cluster_ip(name, "None")
    }

    /// An ExternalName service (no cluster IP).
    pub fn external_name(name: &str, target: &str) -> Service {
        Service {
            type_: "ExternalName".to_owned(),
            cluster_ip: None,
            external_name: Some(target.to_owned()),
            ..Service::cluster_ip(name, "")
        }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_owned();
        self
    }

    /// `clusterIPs` (the first also `clusterIP`), and `ipFamilies` in the same order, each
    /// address's family (as the API server fills it in). Any type of Service.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.cluster_ip = ips.first().map(|ip| (*ip).to_owned());
        self.extra_cluster_ips = ips.iter().skip(1).map(|ip| (*ip).to_owned()).collect();
        self.ip_families = ips.iter().map(|ip| family_of(ip).to_owned()).collect();
        self
    }

    /// `ipFamilies` as given (after [`cluster_ips`](Service::cluster_ips), to write a
    /// Service whose families and addresses disagree).
    pub fn ip_families(mut self, families: &[&str]) -> Self {
        self.ip_families = families.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// `ipFamilyPolicy`: SingleStack, PreferDualStack or RequireDualStack.
    pub fn ip_family_policy(mut self, policy: &str) -> Self {
        self.ip_family_policy = Some(policy.to_owned());
        self
    }

    /// A port whose targetPort is the same number.
    pub fn port(self, name: &str, port: i64, protocol: &str) -> Self {
        self.port_opt(name, port, protocol, None)
    }

    /// A port with an explicit targetPort (a number or a name).
    pub fn port_to(
        self,
        name: &str,
        port: i64,
        protocol: &str,
        target: impl Into<TargetPort>,
    ) -> Self {
        self.port_opt(name, port, protocol, Some(target.into()))
    }

    fn port_opt(
        mut self,
        name: &str,
        port: i64,
        protocol: &str,
        target: Option<TargetPort>,
    ) -> Self {
        self.ports.push(ServicePort {
            name: name.to_owned(),
            port,
            protocol: protocol.to_owned(),
            target_port: target,
            node_port: None,
        });
        self
    }

    /// The nodePort of the port added last.
    pub fn node_port(mut self, node_port: i64) -> Self {
        self.ports
            .last_mut()
            .expect("node_port() follows a port")
            .node_port = Some(node_port);
        self
    }

    /// externalTrafficPolicy (Cluster or Local).
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.external_traffic_policy = Some(policy.to_owned());
        self
    }

    pub fn external_ip(mut self, ip: &str) -> Self {
        self.external_ips.push(ip.to_owned());
        self
    }

    /// An IP of `status.loadBalancer.ingress`.
    pub fn lb_ingress(mut self, ip: &str) -> Self {
        self.lb_ingress.push(ip.to_owned());
        self
    }

    pub fn health_check_node_port(mut self, port: i64) -> Self {
        self.health_check_node_port = Some(port);
        self
    }

    /// A loadBalancerSourceRanges entry (CIDR).
    pub fn source_range(mut self, cidr: &str) -> Self {
        self.source_ranges.push(cidr.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.to_owned(), value.to_owned()));
        self
    }

    /// sessionAffinity: ClientIP with this timeoutSeconds.
    pub fn affinity(mut self, timeout_seconds: u32) -> Self {
        self.affinity = Some(Some(timeout_seconds));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// metadata.creationTimestamp, e.g. "2026-01-01T00:00:00Z".
    pub fn created(mut self, timestamp: &str) -> Self {
        self.created = Some(timestamp.to_owned());
        self
    }

    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.internal_traffic_policy = Some(policy.to_owned());
        self
    }
}

impl Manifest for Service {
    fn kind(&self) -> &'static str {
        "Service"
    }

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn to_value(&self) -> Value {
        let mut spec = Map::new();
        spec.insert("type".into(), json!(self.type_));
        if let Some(ip) = &self.cluster_ip {
            let mut ips = vec![ip];
            ips.extend(&self.extra_cluster_ips);
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!(ips));
        }
        if !self.ip_families.is_empty() {
            spec.insert("ipFamilies".into(), json!(self.ip_families));
        }
        if let Some(policy) = &self.ip_family_policy {
            spec.insert("ipFamilyPolicy".into(), json!(policy));
        }
        if let Some(target) = &self.external_name {
            spec.insert("externalName".into(), json!(target));
        }
        if !self.ports.is_empty() {
            let ports: Vec<Value> = self
                .ports
                .iter()
                .map(|p| {
                    let mut port = Map::new();
                    if !p.name.is_empty() {
                        port.insert("name".into(), json!(p.name));
                    }
                    port.insert("port".into(), json!(p.port));
                    port.insert("protocol".into(), json!(p.protocol));
                    let target = match &p.target_port {
                        None => json!(p.port),
                        Some(TargetPort::Number(n)) => json!(n),
                        Some(TargetPort::Name(s)) => json!(s),
                    };
                    port.insert("targetPort".into(), target);
                    if let Some(n) = p.node_port {
                        port.insert("nodePort".into(), json!(n));
                    }
                    Value::Object(port)
                })
                .collect();
            spec.insert("ports".into(), Value::Array(ports));
        }
        match self.affinity {
            Some(timeout) => {
                spec.insert("sessionAffinity".into(), json!("ClientIP"));
                let timeout = timeout.unwrap_or(10_800);
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": timeout}}),
                );
            }
            None => {
                spec.insert("sessionAffinity".into(), json!("None"));
            }
        }
        if let Some(p) = &self.internal_traffic_policy {
            spec.insert("internalTrafficPolicy".into(), json!(p));
        }
        if let Some(p) = &self.external_traffic_policy {
            spec.insert("externalTrafficPolicy".into(), json!(p));
        }
        if !self.external_ips.is_empty() {
            spec.insert("externalIPs".into(), json!(self.external_ips));
        }
        if let Some(n) = self.health_check_node_port {
            spec.insert("healthCheckNodePort".into(), json!(n));
        }
        if !self.source_ranges.is_empty() {
            spec.insert("loadBalancerSourceRanges".into(), json!(self.source_ranges));
        }
        let mut meta = metadata(&self.name, &self.namespace, &self.labels);
        if !self.annotations.is_empty() {
            let annotations: Map<String, Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            meta["annotations"] = Value::Object(annotations);
        }
        if let Some(t) = &self.created {
            meta["creationTimestamp"] = json!(t);
        }
        let mut svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": spec,
        });
        if !self.lb_ingress.is_empty() {
            let ingress: Vec<Value> = self.lb_ingress.iter().map(|ip| json!({"ip": ip})).collect();
            svc["status"] = json!({"loadBalancer": {"ingress": ingress}});
        }
        svc
    }
}

/// "IPv6" for an address with a colon, else "IPv4" (the test names its addresses).
fn family_of(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

fn metadata(name: &str, namespace: &str, labels: &[(String, String)]) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(namespace));
    if !labels.is_empty() {
        let labels: Map<String, Value> =
            labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        meta.insert("labels".into(), Value::Object(labels));
    }
    Value::Object(meta)
}

/// One endpoint of a slice, with its conditions.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
}

impl Endpoint {
    /// ready, serving, not terminating, on node-1.
    pub fn ready(ip: impl ToString) -> Endpoint {
        Endpoint::new(ip, true, true, false)
    }

    /// Terminating (hence not ready), still serving or not.
    pub fn terminating(ip: impl ToString, serving: bool) -> Endpoint {
        Endpoint::new(ip, false, serving, true)
    }

    pub fn new(ip: impl ToString, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.to_string(),
            ready,
            serving,
            terminating,
            node_name: Some("node-1".to_owned()),
        }
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node_name = Some(node.to_owned());
        self
    }
}

/// A discovery.k8s.io/v1 EndpointSlice of a service (IPv4 unless made with
/// [`ipv6`](EndpointSlice::ipv6)).
#[derive(Clone, Debug)]
pub struct EndpointSlice {
    pub name: String,
    pub namespace: String,
    pub service: String,
    /// `addressType`: IPv4 or IPv6 (the family of every address in the slice).
    pub address_type: String,
    pub ports: Vec<(String, u16, String)>,
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// An IPv4 slice.
    pub fn new(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            service: service.to_owned(),
            address_type: "IPv4".to_owned(),
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// An IPv6 slice (`addressType: IPv6`): its endpoints are pods' `ip6`.
    pub fn ipv6(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice::new(name, service).address_type("IPv6")
    }

    /// `addressType` as given (IPv4, IPv6, or FQDN, which proxies ignore).
    pub fn address_type(mut self, address_type: &str) -> Self {
        self.address_type = address_type.to_owned();
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_owned();
        self
    }

    /// A port of the slice: the service port's name, the backend port, the protocol.
    pub fn port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports
            .push((name.to_owned(), port, protocol.to_owned()));
        self
    }

    pub fn endpoint(mut self, ep: Endpoint) -> Self {
        self.endpoints.push(ep);
        self
    }

    pub fn endpoints(mut self, eps: impl IntoIterator<Item = Endpoint>) -> Self {
        self.endpoints.extend(eps);
        self
    }
}

impl Manifest for EndpointSlice {
    fn kind(&self) -> &'static str {
        "EndpointSlice"
    }

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn to_value(&self) -> Value {
        let labels = [(
            "kubernetes.io/service-name".to_owned(),
            self.service.clone(),
        )];
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(name, port, proto)| json!({"name": name, "port": port, "protocol": proto}))
            .collect();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|ep| {
                let mut v = json!({
                    "addresses": [ep.ip],
                    "conditions": {
                        "ready": ep.ready,
                        "serving": ep.serving,
                        "terminating": ep.terminating,
                    },
                });
                if let Some(node) = &ep.node_name {
                    v["nodeName"] = json!(node);
                }
                v
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": metadata(&self.name, &self.namespace, &labels),
            "addressType": self.address_type,
            "ports": ports,
            "endpoints": endpoints,
        })
    }
}

/// A v1 Node: its name and `status.addresses` (where NodePorts listen).
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    /// (type, address): InternalIP, ExternalIP, Hostname...
    pub addresses: Vec<(String, String)>,
}

impl Node {
    /// A node with one InternalIP.
    pub fn new(name: &str, internal_ip: impl ToString) -> Node {
        Node {
            name: name.to_owned(),
            addresses: vec![("InternalIP".to_owned(), internal_ip.to_string())],
        }
    }

    pub fn address(mut self, type_: &str, address: impl ToString) -> Self {
        self.addresses.push((type_.to_owned(), address.to_string()));
        self
    }
}

impl Manifest for Node {
    fn kind(&self) -> &'static str {
        "Node"
    }

    /// Nodes are cluster-scoped.
    fn namespace(&self) -> &str {
        ""
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn file_name(&self) -> String {
        format!("node-{}.yaml", self.name)
    }

    fn to_value(&self) -> Value {
        let addresses: Vec<Value> = self
            .addresses
            .iter()
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name},
            "status": {"addresses": addresses},
        })
    }
}

/// The manifests directory the agent watches.
#[derive(Clone, Debug)]
pub struct Manifests {
    dir: PathBuf,
}

impl Manifests {
    pub fn new(dir: impl Into<PathBuf>) -> Manifests {
        Manifests { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes (creates or replaces) an object's file.
    pub fn apply(&self, obj: &impl Manifest) {
        self.write_raw(&obj.file_name(), &obj.to_yaml());
    }

    /// Removes an object's file.
    pub fn delete(&self, obj: &impl Manifest) {
        self.remove_raw(&obj.file_name());
    }

    /// Writes any text as a file, atomically.
    pub fn write_raw(&self, file_name: &str, text: &str) {
        self.try_write_raw(file_name, text)
            .unwrap_or_else(|e| panic!("writing manifest {file_name}: {e:#}"));
    }

    fn try_write_raw(&self, file_name: &str, text: &str) -> Result<()> {
        let tmp = self.dir.join(format!(".{file_name}.tmp"));
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join(file_name)).context("renaming into place")?;
        Ok(())
    }

    /// Renames a file (atomically: the agent sees one file go and the other come).
    pub fn rename_raw(&self, from: &str, to: &str) {
        fs::rename(self.dir.join(from), self.dir.join(to))
            .unwrap_or_else(|e| panic!("renaming manifest {from} to {to}: {e}"));
    }

    pub fn remove_raw(&self, file_name: &str) {
        match fs::remove_file(self.dir.join(file_name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing manifest {file_name}: {e}"),
        }
    }
}
