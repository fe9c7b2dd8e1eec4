//! Services, EndpointSlices and Nodes built from fuzzer bytes (`arbitrary`), for the translate
//! target. Every field the translation reads is generated, mostly from small pools of
//! meaningful values (so that services, slices and nodes refer to each other, addresses
//! collide and policies match) and sometimes from raw bytes (anything a manifest could say).

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use ferry::model::{Config, Inputs};
use k8s_openapi::{
    api::{
        core::v1::{
            ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus,
            Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
            ForZone,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// At most this many objects of each kind, items of each list: enough for every interaction
/// (conflicts, several slices per service), small enough for fast runs.
const MAX_ITEMS: usize = 6;

/// A text field: a value from the field's pool, or anything.
#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Raw(String),
}

impl Text {
    fn get(&self, pool: &[&str]) -> String {
        match self {
            Text::Known(i) => pool[*i as usize % pool.len()].to_owned(),
            Text::Raw(s) => s.clone(),
        }
    }
}

/// A number field (ports, timeouts): a pool value, or any i32.
#[derive(Arbitrary, Debug)]
enum Num {
    Known(u8),
    Raw(i32),
}

const NUMS: &[i32] = &[
    0, 1, 53, 80, 443, 8080, 30080, 32088, 65535, 65536, -1, 10_800, 86_400, 86_401,
];

impl Num {
    fn get(&self) -> i32 {
        match self {
            Num::Known(i) => NUMS[*i as usize % NUMS.len()],
            Num::Raw(n) => *n,
        }
    }
}

const NAMESPACES: &[&str] = &["default", "shop", "kube-system", ""];
const NAMES: &[&str] = &["web", "api", "dns", "db", ""];
const NODES: &[&str] = &["node-a", "node-b", ""];
const ZONES: &[&str] = &["zone-1", "zone-2", ""];
/// Addresses, sloppy and broken ones included (ClusterIPs may have leading zeros).
const IPS: &[&str] = &[
    "10.96.0.10",
    "10.96.0.11",
    "10.244.0.5",
    "10.244.1.9",
    "172.18.0.2",
    "203.0.113.10",
    "0.0.0.0",
    "255.255.255.255",
    "010.096.000.010",
    "fd00::10",
    "::ffff:10.96.0.10",
    "None",
    "",
    "10.96.0",
    "not-an-ip",
];
const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", ""];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP", "tcp", ""];
const PORT_NAMES: &[&str] = &["http", "dns", "", "metrics"];
const POLICIES: &[&str] = &["Local", "Cluster", "", "local"];
const AFFINITIES: &[&str] = &["ClientIP", "None", "", "Cookie"];
const DISTRIBUTIONS: &[&str] = &["PreferClose", "PreferSameZone", "PreferSameNode", "Nearest"];
const SOURCE_RANGES: &[&str] = &[
    "198.51.100.0/24",
    "0.0.0.0/0",
    "10.0.0.1",
    " 203.0.113.0/24 ",
    "10.0.0.0/33",
    "10.0.0.0/-1",
    "fd00::/8",
    "300.0.0.0/8",
    "/8",
];
const IP_MODES: &[&str] = &["VIP", "Proxy", ""];
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN", "ipv4"];
const NODE_ADDRESS_TYPES: &[&str] = &["InternalIP", "ExternalIP", "Hostname", "InternalDNS"];
const SERVICE_LABELS: &[&str] = &[
    "kubernetes.io/service-name",
    "service.kubernetes.io/service-proxy-name",
    "service.kubernetes.io/headless",
    "app",
];
const ANNOTATIONS: &[&str] = &[
    "ferry.io/lb-algorithm",
    "service.kubernetes.io/topology-mode",
    "service.kubernetes.io/topology-aware-hints",
    "other",
];
const ANNOTATION_VALUES: &[&str] = &["maglev", "random", "Auto", "auto", "", "Maglev"];

/// A list of at most [`MAX_ITEMS`] items.
fn list<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=MAX_ITEMS)?;
    (0..n).map(|_| T::arbitrary(u)).collect()
}

fn opt_list<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Result<Option<Vec<T>>> {
    Ok(if u.arbitrary()? { Some(list(u)?) } else { None })
}

/// Metadata: namespace, name, labels, annotations.
#[derive(Debug)]
struct Meta {
    namespace: Option<Text>,
    name: Option<Text>,
    labels: Vec<(Text, Text)>,
    annotations: Vec<(Text, Text)>,
}

impl<'a> Arbitrary<'a> for Meta {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Meta {
            namespace: u.arbitrary()?,
            name: u.arbitrary()?,
            labels: list(u)?,
            annotations: list(u)?,
        })
    }
}

impl Meta {
    fn build(&self, label_pool: &[&str], value_pool: &[&str]) -> ObjectMeta {
        let map = |pairs: &[(Text, Text)], keys: &[&str], values: &[&str]| {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.get(keys), v.get(values)))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        ObjectMeta {
            namespace: self.namespace.as_ref().map(|t| t.get(NAMESPACES)),
            name: self.name.as_ref().map(|t| t.get(NAMES)),
            labels: map(&self.labels, label_pool, value_pool),
            annotations: map(&self.annotations, ANNOTATIONS, ANNOTATION_VALUES),
            ..ObjectMeta::default()
        }
    }
}

/// The (namespace, name) an object is stored under, as the sources key it: the namespace
/// defaults to "default", a missing name is "".
fn key(meta: &ObjectMeta) -> (String, String) {
    let ns = meta.namespace.clone().filter(|n| !n.is_empty());
    (
        ns.unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

#[derive(Arbitrary, Debug)]
struct Port {
    name: Option<Text>,
    protocol: Option<Text>,
    port: Num,
    node_port: Option<Num>,
}

#[derive(Debug)]
struct Svc {
    meta: Meta,
    spec: Option<Spec>,
    lb_ingress: Option<Vec<(Option<Text>, Option<Text>)>>,
}

#[derive(Debug)]
struct Spec {
    type_: Option<Text>,
    cluster_ip: Option<Text>,
    cluster_ips: Option<Vec<Text>>,
    external_ips: Option<Vec<Text>>,
    ports: Option<Vec<Port>>,
    session_affinity: Option<Text>,
    affinity_timeout: Option<Option<Num>>,
    etp: Option<Text>,
    itp: Option<Text>,
    health_check_node_port: Option<Num>,
    source_ranges: Option<Vec<Text>>,
    traffic_distribution: Option<Text>,
}

impl<'a> Arbitrary<'a> for Spec {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Spec {
            type_: u.arbitrary()?,
            cluster_ip: u.arbitrary()?,
            cluster_ips: opt_list(u)?,
            external_ips: opt_list(u)?,
            ports: opt_list(u)?,
            session_affinity: u.arbitrary()?,
            affinity_timeout: u.arbitrary()?,
            etp: u.arbitrary()?,
            itp: u.arbitrary()?,
            health_check_node_port: u.arbitrary()?,
            source_ranges: opt_list(u)?,
            traffic_distribution: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for Svc {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Svc {
            meta: u.arbitrary()?,
            spec: u.arbitrary()?,
            lb_ingress: opt_list(u)?,
        })
    }
}

fn texts(v: &Option<Vec<Text>>, pool: &[&str]) -> Option<Vec<String>> {
    v.as_ref().map(|v| v.iter().map(|t| t.get(pool)).collect())
}

impl Svc {
    fn build(&self) -> Service {
        let spec = self.spec.as_ref().map(|s| ServiceSpec {
            type_: s.type_.as_ref().map(|t| t.get(SERVICE_TYPES)),
            cluster_ip: s.cluster_ip.as_ref().map(|t| t.get(IPS)),
            cluster_ips: texts(&s.cluster_ips, IPS),
            external_ips: texts(&s.external_ips, IPS),
            ports: s.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.as_ref().map(|t| t.get(PORT_NAMES)),
                        protocol: p.protocol.as_ref().map(|t| t.get(PROTOCOLS)),
                        port: p.port.get(),
                        node_port: p.node_port.as_ref().map(Num::get),
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            session_affinity: s.session_affinity.as_ref().map(|t| t.get(AFFINITIES)),
            session_affinity_config: s.affinity_timeout.as_ref().map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: t.as_ref().map(Num::get),
                }),
            }),
            external_traffic_policy: s.etp.as_ref().map(|t| t.get(POLICIES)),
            internal_traffic_policy: s.itp.as_ref().map(|t| t.get(POLICIES)),
            health_check_node_port: s.health_check_node_port.as_ref().map(Num::get),
            load_balancer_source_ranges: texts(&s.source_ranges, SOURCE_RANGES),
            traffic_distribution: s
                .traffic_distribution
                .as_ref()
                .map(|t| t.get(DISTRIBUTIONS)),
            ..ServiceSpec::default()
        });
        let status = self.lb_ingress.as_ref().map(|ingress| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ingress
                        .iter()
                        .map(|(ip, mode)| LoadBalancerIngress {
                            ip: ip.as_ref().map(|t| t.get(IPS)),
                            ip_mode: mode.as_ref().map(|t| t.get(IP_MODES)),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        Service {
            metadata: self.meta.build(SERVICE_LABELS, NAMES),
            spec,
            status,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct SlicePort {
    name: Option<Text>,
    protocol: Option<Text>,
    port: Option<Num>,
}

#[derive(Debug)]
struct SliceEndpoint {
    addresses: Vec<Text>,
    conditions: Option<(Option<bool>, Option<bool>, Option<bool>)>,
    node_name: Option<Text>,
    hints: Option<Hints>,
}

/// hints.forZones and hints.forNodes.
#[derive(Debug)]
struct Hints {
    zones: Option<Vec<Text>>,
    nodes: Option<Vec<Text>>,
}

impl<'a> Arbitrary<'a> for SliceEndpoint {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(SliceEndpoint {
            addresses: list(u)?,
            conditions: u.arbitrary()?,
            node_name: u.arbitrary()?,
            hints: if u.arbitrary()? {
                Some(Hints {
                    zones: opt_list(u)?,
                    nodes: opt_list(u)?,
                })
            } else {
                None
            },
        })
    }
}

#[derive(Debug)]
struct Slice {
    meta: Meta,
    address_type: Text,
    ports: Option<Vec<SlicePort>>,
    endpoints: Vec<SliceEndpoint>,
}

impl<'a> Arbitrary<'a> for Slice {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Slice {
            meta: u.arbitrary()?,
            address_type: u.arbitrary()?,
            ports: opt_list(u)?,
            endpoints: list(u)?,
        })
    }
}

impl Slice {
    fn build(&self) -> EndpointSlice {
        EndpointSlice {
            metadata: self.meta.build(SERVICE_LABELS, NAMES),
            address_type: self.address_type.get(ADDRESS_TYPES),
            ports: self.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.as_ref().map(|t| t.get(PORT_NAMES)),
                        protocol: p.protocol.as_ref().map(|t| t.get(PROTOCOLS)),
                        port: p.port.as_ref().map(Num::get),
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    addresses: e.addresses.iter().map(|t| t.get(IPS)).collect(),
                    conditions: e.conditions.map(|(ready, serving, terminating)| {
                        EndpointConditions {
                            ready,
                            serving,
                            terminating,
                        }
                    }),
                    node_name: e.node_name.as_ref().map(|t| t.get(NODES)),
                    hints: e.hints.as_ref().map(|h| EndpointHints {
                        for_zones: texts(&h.zones, ZONES)
                            .map(|v| v.into_iter().map(|name| ForZone { name }).collect()),
                        for_nodes: texts(&h.nodes, NODES)
                            .map(|v| v.into_iter().map(|name| ForNode { name }).collect()),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
struct NodeObj {
    name: Option<Text>,
    zone: Option<Text>,
    addresses: Option<Vec<(Text, Text)>>,
}

impl<'a> Arbitrary<'a> for NodeObj {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(NodeObj {
            name: u.arbitrary()?,
            zone: u.arbitrary()?,
            addresses: opt_list(u)?,
        })
    }
}

impl NodeObj {
    fn build(&self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: self.name.as_ref().map(|t| t.get(NODES)),
                labels: self.zone.as_ref().map(|z| {
                    BTreeMap::from([("topology.kubernetes.io/zone".to_owned(), z.get(ZONES))])
                }),
                ..ObjectMeta::default()
            },
            status: self.addresses.as_ref().map(|a| NodeStatus {
                addresses: Some(
                    a.iter()
                        .map(|(ty, addr)| NodeAddress {
                            type_: ty.get(NODE_ADDRESS_TYPES),
                            address: addr.get(IPS),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }
}

/// Everything the translation reads, as the fuzzer chose it.
#[derive(Debug)]
pub struct World {
    node_name: Text,
    maglev_default: bool,
    services: Vec<Svc>,
    slices: Vec<Slice>,
    nodes: Vec<NodeObj>,
}

impl<'a> Arbitrary<'a> for World {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(World {
            node_name: u.arbitrary()?,
            maglev_default: u.arbitrary()?,
            services: list(u)?,
            slices: list(u)?,
            nodes: list(u)?,
        })
    }
}

impl World {
    /// The agent's settings the translation reads.
    pub fn config(&self) -> Config {
        Config {
            node_name: self.node_name.get(NODES),
            maglev_default: self.maglev_default,
            ..Config::default()
        }
    }

    /// The inputs, keyed as the sources key them (later objects of the same key win, as a
    /// second definition does in the manifests).
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::default();
        for s in &self.services {
            let svc = s.build();
            inputs.services.insert(key(&svc.metadata), svc);
        }
        for s in &self.slices {
            let slice = s.build();
            inputs.slices.insert(key(&slice.metadata), slice);
        }
        for n in &self.nodes {
            let node = n.build();
            inputs
                .nodes
                .insert(node.metadata.name.clone().unwrap_or_default(), node);
        }
        inputs
    }
}
