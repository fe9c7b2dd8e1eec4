//! A random, seeded history of changes to a manifests directory: Services, EndpointSlices
//! and Nodes written, changed, renamed and removed one file at a time (one object per file,
//! written atomically). The universe is small on purpose, so that histories collide:
//! Services change type, ports, policies and annotations; slices move between Services;
//! Services claim one another's addresses; Node addresses move NodePorts. Addresses are the
//! lab's (10.96/16 service addresses, 10.244/16 pods and nodes) and documentation ranges for
//! external addresses; they are only ever written into maps.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    lab::NODE_NAME,
    manifests::{Endpoint, EndpointSlice, Manifest, Manifests, Node, Service},
};

/// xorshift64*: small, deterministic, enough to pick cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// The seed in `$var` (to replay a run), else a new one from the clock.
pub fn seed(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("{var}={s:?} is no seed (a u64): {e}")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}

const NAMESPACES: &[&str] = &["default", "shop"];
const SERVICES: &[&str] = &["web", "api", "edge"];
const SLICES: &[&str] = &["a", "b", "c", "d"];
/// The other node of the cluster (endpoints there, an address of its own).
pub const OTHER_NODE: &str = "node-2";
/// externalIPs: documentation addresses, the ClusterIP of default/web, an address of each
/// node in some of their address sets (refused while a Node has it).
const EXTERNAL_IPS: &[&str] = &[
    "192.0.2.1",
    "192.0.2.2",
    "10.96.0.10",
    "10.244.0.201",
    "10.244.0.210",
];
/// status.loadBalancer.ingress: one shared with the externalIPs.
const LB_IPS: &[&str] = &["192.0.2.1", "192.0.2.3", "198.51.100.10"];
const SOURCE_RANGES: &[&str] = &["10.0.0.0/8", "198.51.100.0/24", "192.0.2.128/25"];
const PODS: &[&str] = &[
    "10.244.0.2",
    "10.244.0.3",
    "10.244.0.4",
    "10.244.0.5",
    "10.244.0.6",
    "10.244.1.2",
];
const CREATED: &[&str] = &[
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:01Z",
    "2026-01-01T00:00:02Z",
];
/// (name, port, protocol, the backends' port, nodePorts to choose from)
const PORTS: &[(&str, i64, &str, u16, [i64; 2])] = &[
    ("http", 80, "TCP", 8080, [30080, 30180]),
    ("dns", 53, "UDP", 5353, [30053, 30153]),
    ("alt", 81, "TCP", 8081, [30081, 30181]),
];
/// This node's address sets: the bridge's address (NodePorts on a device), one no device
/// holds, and the bridge's with an ExternalIP.
const THIS_NODE_ADDRESSES: &[&[(&str, &str)]] = &[
    &[("InternalIP", "10.244.0.1")],
    &[("InternalIP", "10.244.0.200")],
    &[("InternalIP", "10.244.0.1"), ("ExternalIP", "10.244.0.210")],
];
const OTHER_NODE_ADDRESSES: &[&[(&str, &str)]] = &[
    &[("InternalIP", "10.244.0.201")],
    &[("InternalIP", "10.244.0.202")],
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Debug)]
struct SvcSpec {
    ty: Type,
    cluster_ip: String,
    /// Indexes into PORTS, with the nodePort chosen for each.
    ports: BTreeMap<usize, i64>,
    affinity: Option<u32>,
    etp_local: bool,
    itp_local: bool,
    external_ips: Vec<String>,
    lb_ips: Vec<&'static str>,
    source_ranges: Vec<&'static str>,
    maglev: bool,
    created: Option<&'static str>,
}

impl SvcSpec {
    /// The addresses it claims (some of its ports, on each).
    fn addresses(&self) -> Vec<String> {
        let lb = self.lb_ips.iter().map(|ip| ip.to_string());
        std::iter::once(self.cluster_ip.clone())
            .chain(self.external_ips.iter().cloned())
            .chain(lb)
            .collect()
    }
}

#[derive(Clone, Debug)]
struct EpSpec {
    ip: &'static str,
    node: &'static str,
    /// (ready, serving, terminating)
    conditions: (bool, bool, bool),
}

#[derive(Clone, Debug)]
struct SliceSpec {
    service: &'static str,
    ports: Vec<usize>,
    endpoints: Vec<EpSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    Service(&'static str, &'static str),
    Slice(&'static str, &'static str),
    Node(&'static str),
}

impl Obj {
    fn file(&self, moved: bool) -> String {
        let base = match self {
            Obj::Service(ns, n) => format!("service-{ns}-{n}"),
            Obj::Slice(ns, n) => format!("endpointslice-{ns}-{n}"),
            Obj::Node(n) => format!("node-{n}"),
        };
        if moved {
            format!("{base}-moved.yaml")
        } else {
            format!("{base}.yaml")
        }
    }
}

/// The objects of the directory and the random changes made to them.
pub struct History {
    rng: Rng,
    services: BTreeMap<(&'static str, &'static str), SvcSpec>,
    slices: BTreeMap<(&'static str, &'static str), SliceSpec>,
    nodes: BTreeMap<&'static str, &'static [(&'static str, &'static str)]>,
    /// The file each object is in now.
    files: BTreeMap<Obj, String>,
    /// How often each kind of change was made.
    tally: BTreeMap<String, u32>,
}

impl History {
    pub fn new(seed: u64) -> History {
        History {
            rng: Rng::new(seed),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            nodes: BTreeMap::new(),
            files: BTreeMap::new(),
            tally: BTreeMap::new(),
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Makes one random change in `m`; returns what it did.
    pub fn step(&mut self, m: &Manifests) -> String {
        match self.rng.below(20) {
            0..=5 => self.write_service(m),
            6..=7 => self.delete_service(m),
            8..=13 => self.write_slice(m),
            14..=15 => self.delete_slice(m),
            16..=17 => self.change_node(m),
            _ => self.rename(m),
        }
    }

    fn count(&mut self, what: &str) {
        *self.tally.entry(what.to_owned()).or_default() += 1;
    }

    fn write(&mut self, m: &Manifests, obj: Obj, text: &str) {
        let file = self
            .files
            .entry(obj)
            .or_insert_with(|| obj.file(false))
            .clone();
        m.write_raw(&file, text);
    }

    fn remove(&mut self, m: &Manifests, obj: Obj) -> bool {
        match self.files.remove(&obj) {
            Some(file) => {
                m.remove_raw(&file);
                true
            }
            None => false,
        }
    }

    fn write_service(&mut self, m: &Manifests) -> String {
        let ns = self.rng.pick(NAMESPACES);
        let name = self.rng.pick(SERVICES);
        let (spec, kind, what) = match self.services.get(&(ns, name)).cloned() {
            Some(old) if self.rng.chance(70) => self.mutate_service((ns, name), old),
            Some(_) => (self.random_service(ns, name), "replaced", String::new()),
            None => (self.random_service(ns, name), "created", String::new()),
        };
        self.count(&format!("service {kind}"));
        let what = format!("{kind}{what}");
        let text = render_service(ns, name, &spec);
        self.write(m, Obj::Service(ns, name), &text);
        let line = format!("service {ns}/{name} {what}: {spec:?}");
        self.services.insert((ns, name), spec);
        line
    }

    fn random_service(&mut self, ns: &str, name: &str) -> SvcSpec {
        let r = &mut self.rng;
        let ty = r.pick(&[
            Type::ClusterIP,
            Type::ClusterIP,
            Type::NodePort,
            Type::LoadBalancer,
        ]);
        let mut ports = BTreeMap::new();
        for (i, p) in PORTS.iter().enumerate() {
            if r.chance(60) {
                ports.insert(i, r.pick(&p.4));
            }
        }
        let mut external_ips = Vec::new();
        if r.chance(35) {
            external_ips.push(r.pick(EXTERNAL_IPS).to_owned());
        }
        SvcSpec {
            ty,
            cluster_ip: own_cluster_ip(ns, name),
            ports,
            affinity: r.chance(25).then(|| r.pick(&[30, 10_800])),
            etp_local: r.chance(30),
            itp_local: r.chance(20),
            external_ips,
            lb_ips: if ty == Type::LoadBalancer && r.chance(80) {
                vec![r.pick(LB_IPS)]
            } else {
                Vec::new()
            },
            source_ranges: if r.chance(30) {
                vec![r.pick(SOURCE_RANGES)]
            } else {
                Vec::new()
            },
            maglev: r.chance(20),
            created: r.chance(85).then(|| r.pick(CREATED)),
        }
    }

    /// One change to an existing Service: the new spec, the kind of change, its detail.
    fn mutate_service(
        &mut self,
        me: (&'static str, &'static str),
        mut s: SvcSpec,
    ) -> (SvcSpec, &'static str, String) {
        // The addresses the other Services claim: taking one makes a conflict.
        let theirs: Vec<String> = self
            .services
            .iter()
            .filter(|(k, _)| **k != me)
            .flat_map(|(_, o)| o.addresses())
            .collect();
        let r = &mut self.rng;
        let (kind, what) = match r.below(13) {
            12 if !theirs.is_empty() => {
                let ip = theirs[r.below(theirs.len() as u64) as usize].clone();
                if !s.external_ips.contains(&ip) {
                    s.external_ips.push(ip.clone());
                }
                ("claim", format!("externalIP {ip}, another Service's"))
            }
            0 | 1 => {
                let ty = match (s.ty, r.chance(50)) {
                    (Type::ClusterIP, true) | (Type::LoadBalancer, false) => Type::NodePort,
                    (Type::NodePort, true) | (Type::ClusterIP, false) => Type::LoadBalancer,
                    _ => Type::ClusterIP,
                };
                s.ty = ty;
                if ty == Type::LoadBalancer && s.lb_ips.is_empty() {
                    s.lb_ips.push(r.pick(LB_IPS));
                }
                ("type", format!("type -> {ty:?}"))
            }
            2 => {
                let i = r.below(PORTS.len() as u64) as usize;
                let np = r.pick(&PORTS[i].4);
                match s.ports.insert(i, np) {
                    Some(_) => ("nodePort", format!("port {} nodePort -> {np}", PORTS[i].0)),
                    None => ("port added", format!("port {} added", PORTS[i].0)),
                }
            }
            3 => match s.ports.keys().next().copied() {
                Some(i) => {
                    s.ports.remove(&i);
                    ("port removed", format!("port {} removed", PORTS[i].0))
                }
                None => ("no port to remove", String::new()),
            },
            4 => {
                s.affinity = match s.affinity {
                    Some(_) => None,
                    None => Some(r.pick(&[30, 10_800])),
                };
                (
                    "sessionAffinity",
                    format!("sessionAffinity -> {:?}", s.affinity),
                )
            }
            5 => {
                s.etp_local = !s.etp_local;
                (
                    "externalTrafficPolicy",
                    format!("externalTrafficPolicy Local -> {}", s.etp_local),
                )
            }
            6 => {
                s.itp_local = !s.itp_local;
                (
                    "internalTrafficPolicy",
                    format!("internalTrafficPolicy Local -> {}", s.itp_local),
                )
            }
            7 => {
                s.external_ips = (0..r.below(3))
                    .map(|_| r.pick(EXTERNAL_IPS).to_owned())
                    .collect();
                s.external_ips.sort();
                s.external_ips.dedup();
                (
                    "externalIPs",
                    format!("externalIPs -> {:?}", s.external_ips),
                )
            }
            8 => {
                s.lb_ips = (0..r.below(3)).map(|_| r.pick(LB_IPS)).collect();
                s.lb_ips.sort();
                s.lb_ips.dedup();
                ("ingress", format!("ingress -> {:?}", s.lb_ips))
            }
            9 => {
                s.source_ranges = (0..r.below(3)).map(|_| r.pick(SOURCE_RANGES)).collect();
                s.source_ranges.sort();
                s.source_ranges.dedup();
                (
                    "loadBalancerSourceRanges",
                    format!("loadBalancerSourceRanges -> {:?}", s.source_ranges),
                )
            }
            10 => {
                s.maglev = !s.maglev;
                ("maglev", format!("maglev -> {}", s.maglev))
            }
            _ => {
                s.created = r.chance(85).then(|| r.pick(CREATED));
                (
                    "creationTimestamp",
                    format!("creationTimestamp -> {:?}", s.created),
                )
            }
        };
        (s, kind, format!(" ({what})"))
    }

    fn delete_service(&mut self, m: &Manifests) -> String {
        let ns = self.rng.pick(NAMESPACES);
        let name = self.rng.pick(SERVICES);
        let gone = self.services.remove(&(ns, name));
        if self.remove(m, Obj::Service(ns, name)) {
            // Another Service claims one of its addresses: it may take over.
            let shared = gone.is_some_and(|g| {
                let mine = g.addresses();
                self.services
                    .values()
                    .any(|o| o.addresses().iter().any(|a| mine.contains(a)))
            });
            self.count(if shared {
                "service deleted (an address shared)"
            } else {
                "service deleted"
            });
            format!("service {ns}/{name} deleted")
        } else {
            format!("service {ns}/{name}: none to delete")
        }
    }

    fn write_slice(&mut self, m: &Manifests) -> String {
        let ns = self.rng.pick(NAMESPACES);
        let name = self.rng.pick(SLICES);
        let old = self.slices.get(&(ns, name)).cloned();
        let (spec, kind, what) = match old {
            Some(old) if self.rng.chance(70) => self.mutate_slice(old),
            Some(_) => (self.random_slice(), "replaced", String::new()),
            None => (self.random_slice(), "created", String::new()),
        };
        self.count(&format!("slice {kind}"));
        let what = format!("{kind}{what}");
        let text = render_slice(ns, name, &spec);
        self.write(m, Obj::Slice(ns, name), &text);
        let line = format!("slice {ns}/{name} {what}: {spec:?}");
        self.slices.insert((ns, name), spec);
        line
    }

    fn random_endpoint(&mut self, taken: &[EpSpec]) -> Option<EpSpec> {
        let r = &mut self.rng;
        let free: Vec<&'static str> = PODS
            .iter()
            .copied()
            .filter(|ip| taken.iter().all(|e| e.ip != *ip))
            .collect();
        if free.is_empty() {
            return None;
        }
        Some(EpSpec {
            ip: r.pick(&free),
            node: r.pick(&[NODE_NAME, NODE_NAME, OTHER_NODE]),
            conditions: r.pick(&[
                (true, true, false),
                (true, true, false),
                (false, true, true),
                (false, false, true),
                (false, false, false),
            ]),
        })
    }

    fn random_slice(&mut self) -> SliceSpec {
        let service = self.rng.pick(SERVICES);
        let ports = (0..PORTS.len()).filter(|_| self.rng.chance(70)).collect();
        let mut endpoints = Vec::new();
        for _ in 0..self.rng.below(5) {
            if let Some(e) = self.random_endpoint(&endpoints) {
                endpoints.push(e);
            }
        }
        SliceSpec {
            service,
            ports,
            endpoints,
        }
    }

    /// One change to an existing slice: the new spec, the kind of change, its detail.
    fn mutate_slice(&mut self, mut s: SliceSpec) -> (SliceSpec, &'static str, String) {
        let (kind, what) = match self.rng.below(6) {
            0 => {
                let to = self.rng.pick(SERVICES);
                let from = std::mem::replace(&mut s.service, to);
                ("moved", format!("service {from} -> {to}"))
            }
            1 => match self.random_endpoint(&s.endpoints) {
                Some(e) => {
                    let line = format!("{} on {}", e.ip, e.node);
                    s.endpoints.push(e);
                    ("endpoint added", line)
                }
                None => ("no endpoint free", String::new()),
            },
            2 if !s.endpoints.is_empty() => {
                let i = self.rng.below(s.endpoints.len() as u64) as usize;
                ("endpoint removed", s.endpoints.remove(i).ip.to_owned())
            }
            3 if !s.endpoints.is_empty() => {
                let i = self.rng.below(s.endpoints.len() as u64) as usize;
                let c = self.rng.pick(&[
                    (true, true, false),
                    (false, true, true),
                    (false, false, true),
                ]);
                s.endpoints[i].conditions = c;
                (
                    "endpoint conditions",
                    format!("{} -> {c:?}", s.endpoints[i].ip),
                )
            }
            4 if !s.endpoints.is_empty() => {
                // A pod rescheduled: its locality (and so its backend entry) changes.
                let i = self.rng.below(s.endpoints.len() as u64) as usize;
                let e = &mut s.endpoints[i];
                e.node = if e.node == NODE_NAME {
                    OTHER_NODE
                } else {
                    NODE_NAME
                };
                ("endpoint node", format!("{} -> {}", e.ip, e.node))
            }
            _ => {
                let i = self.rng.below(PORTS.len() as u64) as usize;
                if let Some(at) = s.ports.iter().position(|&p| p == i) {
                    s.ports.remove(at);
                    ("port removed", PORTS[i].0.to_owned())
                } else {
                    s.ports.push(i);
                    ("port added", PORTS[i].0.to_owned())
                }
            }
        };
        (s, kind, format!(" ({what})"))
    }

    fn delete_slice(&mut self, m: &Manifests) -> String {
        let ns = self.rng.pick(NAMESPACES);
        let name = self.rng.pick(SLICES);
        self.slices.remove(&(ns, name));
        if self.remove(m, Obj::Slice(ns, name)) {
            self.count("slice deleted");
            format!("slice {ns}/{name} deleted")
        } else {
            format!("slice {ns}/{name}: none to delete")
        }
    }

    fn change_node(&mut self, m: &Manifests) -> String {
        let name = self.rng.pick(&[NODE_NAME, NODE_NAME, OTHER_NODE]);
        if self.nodes.contains_key(name) && self.rng.chance(20) {
            self.nodes.remove(name);
            self.remove(m, Obj::Node(name));
            self.count("node deleted");
            return format!("node {name} deleted");
        }
        let choices = if name == NODE_NAME {
            THIS_NODE_ADDRESSES
        } else {
            OTHER_NODE_ADDRESSES
        };
        let addrs = self.rng.pick(choices);
        let mut node = Node {
            name: name.to_owned(),
            addresses: Vec::new(),
        };
        for (t, ip) in addrs {
            node = node.address(t, ip);
        }
        self.write(m, Obj::Node(name), &node.to_yaml());
        self.nodes.insert(name, addrs);
        self.count("node written");
        format!("node {name} addresses {addrs:?}")
    }

    /// Moves an object to another file: the agent sees one file go and another come.
    fn rename(&mut self, m: &Manifests) -> String {
        let objs: Vec<Obj> = self.files.keys().copied().collect();
        if objs.is_empty() {
            return "rename: no file yet".to_owned();
        }
        let obj = self.rng.pick(&objs);
        let from = self.files[&obj].clone();
        let to = obj.file(from == obj.file(false));
        m.rename_raw(&from, &to);
        self.files.insert(obj, to.clone());
        self.count("file renamed");
        format!("renamed {from} -> {to}")
    }

    /// The counts of each kind of change, one line.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (what, n) in &self.tally {
            let _ = write!(s, "{what}: {n}; ");
        }
        s
    }
}

/// A Service's place in NAMESPACES x SERVICES.
fn service_index(ns: &str, name: &str) -> usize {
    NAMESPACES.iter().position(|x| *x == ns).unwrap_or(0) * SERVICES.len()
        + SERVICES.iter().position(|x| *x == name).unwrap_or(0)
}

/// Each Service's own ClusterIP (default/web's is also an externalIP candidate).
fn own_cluster_ip(ns: &str, name: &str) -> String {
    format!("10.96.0.{}", 10 + service_index(ns, name))
}

fn render_service(ns: &str, name: &str, s: &SvcSpec) -> String {
    let mut svc = match s.ty {
        Type::ClusterIP => Service::cluster_ip(name, &s.cluster_ip),
        Type::NodePort => Service::node_port_service(name, &s.cluster_ip),
        Type::LoadBalancer => Service::load_balancer(name, &s.cluster_ip),
    }
    .namespace(ns);
    for (&i, &np) in &s.ports {
        let (pname, port, proto, target, _) = PORTS[i];
        svc = svc.port_to(pname, port, proto, target);
        if s.ty != Type::ClusterIP {
            svc = svc.node_port(np);
        }
    }
    if let Some(t) = s.affinity {
        svc = svc.affinity(t);
    }
    if s.etp_local {
        svc = svc.external_traffic_policy("Local");
        if s.ty == Type::LoadBalancer {
            // The API server gives every eTP Local LoadBalancer one, its own.
            svc = svc.health_check_node_port(32000 + service_index(ns, name) as i64);
        }
    }
    if s.itp_local {
        svc = svc.internal_traffic_policy("Local");
    }
    for ip in &s.external_ips {
        svc = svc.external_ip(ip);
    }
    if s.ty == Type::LoadBalancer {
        for ip in &s.lb_ips {
            svc = svc.lb_ingress(ip);
        }
        for c in &s.source_ranges {
            svc = svc.source_range(c);
        }
    }
    if s.maglev {
        svc = svc.annotation("ferry.io/lb-algorithm", "maglev");
    }
    if let Some(t) = s.created {
        svc = svc.created(t);
    }
    svc.to_yaml()
}

fn render_slice(ns: &str, name: &str, s: &SliceSpec) -> String {
    let mut slice = EndpointSlice::new(name, s.service).namespace(ns);
    for &i in &s.ports {
        let (pname, _, proto, target, _) = PORTS[i];
        slice = slice.port(pname, target, proto);
    }
    for e in &s.endpoints {
        let (ready, serving, terminating) = e.conditions;
        slice = slice.endpoint(Endpoint::new(e.ip, ready, serving, terminating).node(e.node));
    }
    slice.to_yaml()
}
