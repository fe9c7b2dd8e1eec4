//! The incremental path against a full sync: for random sequences of
//! Service / EndpointSlice / Node changes (creations, updates, deletions,
//! conflicts, type changes, slices moving between Services, re-lists, agent
//! restarts), the maps the control loop leaves are exactly, through the
//! codec, what a full translation of the final objects programs into empty
//! maps. Seeded and reproducible: a failure names its seed and step.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use k8s_openapi::{
    api::{
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus, Service,
            ServicePort, ServiceSpec, ServiceStatus,
        },
        discovery::v1::{
            Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};

use super::*;
use crate::{
    datapath::{
        codec,
        mem_maps::{Contents, MemMaps},
        programmer::Programmer,
        service_table::ServiceTable,
    },
    model::{
        BackendAddr, Cidr, FrontendKey, ServiceName,
        objects::{NodeObj, ObjKey, ServiceObj, SliceObj},
        translate::{Inputs, Objects, translate_objects},
    },
    source::event::Delta,
};

/// xorshift64*: small, deterministic, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const NODE: &str = "node-a";
const SERVICES: &[&str] = &["web", "db", "dns", "api", "lb"];
const NAMESPACES: &[&str] = &["aaa", "shop"];
const CLUSTER_IPS: &[&str] = &["10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4"];
/// External addresses, some equal to ClusterIPs or node addresses on purpose.
const EXTERNAL: &[&str] = &["192.0.2.1", "192.0.2.2", "10.96.0.1", "172.18.0.2"];
const PODS: &[&str] = &[
    "10.244.0.1",
    "10.244.0.2",
    "10.244.1.1",
    "10.244.1.2",
    "10.244.2.9",
];
const NODE_IPS: &[&str] = &["172.18.0.2", "172.18.0.3", "172.18.0.4"];
const ZONES: &[&str] = &["zone-a", "zone-b"];

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        ..ObjectMeta::default()
    }
}

fn random_service(r: &mut Rng, ns: &str, name: &str) -> Service {
    let ty = *r.pick(&[
        "ClusterIP",
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
    ]);
    let mut ports = Vec::new();
    for (pname, port, proto, np) in [
        ("http", 80, "TCP", 30080),
        ("dns", 53, "UDP", 30053),
        ("alt", 81, "TCP", 30081),
    ] {
        if r.chance(60) {
            ports.push(ServicePort {
                name: Some(pname.into()),
                port,
                protocol: Some(proto.into()),
                node_port: (ty == "NodePort" || ty == "LoadBalancer")
                    .then_some(np + r.below(2) as i32),
                ..ServicePort::default()
            });
        }
    }
    let mut m = meta(Some(ns), name);
    m.creation_timestamp = r
        .chance(80)
        .then(|| Time(jiff::Timestamp::from_second(1_700_000_000 + r.below(5) as i64).unwrap()));
    // Maglev tables are costly to compute in a debug build: rare here,
    // covered in depth by the programmer's own tests.
    if r.chance(4) {
        m.annotations = Some(
            [(
                crate::model::objects::LB_ALGORITHM_ANNOTATION.to_owned(),
                "maglev".to_owned(),
            )]
            .into(),
        );
    }
    let cluster_ip = r.pick(CLUSTER_IPS).to_string();
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some(ty.into()),
            cluster_ip: Some(cluster_ip.clone()),
            cluster_ips: Some(vec![cluster_ip]),
            ports: Some(ports),
            external_ips: r.chance(40).then(|| vec![r.pick(EXTERNAL).to_string()]),
            external_traffic_policy: r.chance(30).then(|| "Local".into()),
            internal_traffic_policy: r.chance(20).then(|| "Local".into()),
            session_affinity: r.chance(20).then(|| "ClientIP".into()),
            load_balancer_source_ranges: r
                .chance(30)
                .then(|| vec![r.pick(&["10.0.0.0/8", "198.51.100.0/24"]).to_string()]),
            health_check_node_port: Some(32000),
            ..ServiceSpec::default()
        }),
        status: (ty == "LoadBalancer" && r.chance(70)).then(|| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(r.pick(EXTERNAL).to_string()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        }),
    }
}

fn random_slice(r: &mut Rng, ns: &str, name: &str) -> EndpointSlice {
    let mut m = meta(Some(ns), name);
    m.labels = Some(
        [(
            crate::model::objects::SERVICE_NAME_LABEL.to_owned(),
            r.pick(SERVICES).to_string(),
        )]
        .into(),
    );
    let hinted = r.chance(30);
    let endpoints = (0..r.below(4))
        .map(|_| Endpoint {
            addresses: vec![r.pick(PODS).to_string()],
            node_name: Some(r.pick(&[NODE, "node-b"]).to_string()),
            conditions: Some(EndpointConditions {
                ready: Some(r.chance(70)),
                serving: Some(r.chance(80)),
                terminating: Some(r.chance(30)),
            }),
            hints: hinted.then(|| EndpointHints {
                for_zones: Some(vec![ForZone {
                    name: r.pick(ZONES).to_string(),
                }]),
                ..EndpointHints::default()
            }),
            ..Endpoint::default()
        })
        .collect();
    let ports = [
        ("http", 8080, "TCP"),
        ("dns", 5353, "UDP"),
        ("alt", 8081, "TCP"),
    ]
    .into_iter()
    .filter(|_| r.chance(70))
    .map(|(n, p, proto)| EndpointPort {
        name: Some(n.into()),
        port: Some(p),
        protocol: Some(proto.into()),
        ..EndpointPort::default()
    })
    .collect();
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(ports),
    }
}

fn random_node(r: &mut Rng, name: &str) -> Node {
    let mut m = meta(None, name);
    m.labels = Some(
        [(
            crate::model::objects::ZONE_LABEL.to_owned(),
            r.pick(ZONES).to_string(),
        )]
        .into(),
    );
    Node {
        metadata: m,
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: r.pick(NODE_IPS).to_string(),
            }]),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

fn cfg() -> Config {
    Config {
        node_name: NODE.into(),
        ..Config::default()
    }
}

/// The maps' content without ids: what each frontend serves.
#[derive(Debug, PartialEq, Eq)]
struct Canonical {
    frontends: BTreeMap<FrontendKey, CanonicalFrontend>,
    /// Addresses marked as ClusterIPs.
    cluster_ips: BTreeSet<IpAddr>,
    /// Entries no frontend reaches (must be none).
    orphans: (usize, usize, usize),
}

#[derive(Debug, PartialEq, Eq)]
struct CanonicalFrontend {
    flags: u16,
    affinity_timeout: u32,
    backends: Vec<(BackendAddr, u8, u8)>,
    rev_nat: (IpAddr, u16),
    ranges: BTreeSet<Cidr>,
    maglev: Vec<BackendAddr>,
}

fn canonical(c: &Contents) -> Canonical {
    let mut frontends = BTreeMap::new();
    let mut used_backends = BTreeSet::new();
    let mut used_revs = BTreeSet::new();
    let cluster_ips: BTreeSet<IpAddr> =
        c.services.keys().filter_map(codec::cluster_ip_of).collect();
    let frontend_entries = c
        .services
        .iter()
        .filter(|(k, _)| codec::slot_of(k) == 0 && codec::cluster_ip_of(k).is_none());
    for (k, v) in frontend_entries {
        let key = codec::frontend_key(k).expect("a valid key");
        let backends = (1..=v.count)
            .map(|s| {
                let slot = c.services[&codec::svc_key(&key, s)];
                used_backends.insert(slot.backend_id);
                let b = c.backends[&slot.backend_id];
                (codec::backend_addr(&b).unwrap(), b.state(), b.flags())
            })
            .collect();
        used_revs.insert(v.rev_nat_id);
        let ranges = c
            .ranges
            .iter()
            .filter(|(rev, _)| *rev == v.rev_nat_id && key.scope == crate::model::Scope::External)
            .map(|(_, cidr)| *cidr)
            .collect();
        let maglev = if key.scope == crate::model::Scope::External
            && v.flags & agent_common::svc_flags::MAGLEV != 0
        {
            (0..agent_common::MAGLEV_TABLE_SIZE)
                .filter_map(|i| c.maglev.get(&codec::maglev_key(v.rev_nat_id, i)))
                .map(|id| codec::backend_addr(&c.backends[id]).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        frontends.insert(
            key,
            CanonicalFrontend {
                flags: v.flags,
                affinity_timeout: v.affinity_timeout,
                backends,
                rev_nat: codec::rev_nat_target(&c.rev_nat[&v.rev_nat_id]),
                ranges,
                maglev,
            },
        );
    }
    let slots = c.services.len()
        - cluster_ips.len()
        - frontends.len()
        - frontends.values().map(|f| f.backends.len()).sum::<usize>();
    Canonical {
        frontends,
        cluster_ips,
        orphans: (
            slots,
            c.backends
                .keys()
                .filter(|id| !used_backends.contains(id))
                .count(),
            c.rev_nat
                .keys()
                .filter(|id| !used_revs.contains(id))
                .count(),
        ),
    }
}

/// The test's own record of the objects, independent of the tracker.
#[derive(Default, Clone)]
struct World {
    inputs: Inputs,
}

impl World {
    fn events(&self) -> Vec<Event> {
        let o = Objects::from_inputs(&self.inputs, NODE);
        let mut evs: Vec<Event> = Vec::new();
        evs.extend(
            o.services
                .values()
                .cloned()
                .map(|s| Event::Service(Delta::Applied(s))),
        );
        evs.extend(
            o.slices
                .values()
                .cloned()
                .map(|s| Event::Slice(Delta::Applied(s))),
        );
        evs.extend(
            o.nodes
                .values()
                .cloned()
                .map(|n| Event::Node(Delta::Applied(n))),
        );
        evs
    }
}

/// The state a full sync of `world` writes into empty maps.
fn full_sync_of(world: &World) -> Canonical {
    let (desired, _) = translate_objects(&Objects::from_inputs(&world.inputs, NODE), &cfg());
    let maps = MemMaps::default();
    let mut p = Programmer::adopt(maps.clone());
    let r = p.apply(&desired);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    canonical(&maps.contents())
}

fn run_sequence(seed: u64, steps: usize) {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let maps = MemMaps::default();
    let mut table = ServiceTable::new(Programmer::adopt(maps.clone()));
    let mut ctl = Controller::new(cfg(), None);
    let mut world = World::default();
    // Start: a few objects, then the full sync.
    for ev in world.events() {
        ctl.apply(ev);
    }
    ctl.full_sync(&mut table, Instant::now());
    let trace = std::env::var("FERRY_SEED").is_ok();
    for step in 0..steps {
        let ns = *r.pick(NAMESPACES);
        if trace {
            eprintln!("--- step {step}");
        }
        match r.below(10) {
            0..=2 => {
                let name = *r.pick(SERVICES);
                let svc = random_service(&mut r, ns, name);
                if trace {
                    eprintln!("service {ns}/{name}: {:?} {:?}", svc.spec, svc.status);
                }
                world
                    .inputs
                    .services
                    .insert((ns.into(), name.into()), svc.clone());
                ctl.apply(Event::Service(Delta::Applied(ServiceObj::from_k8s(
                    &ObjKey::new(ns, name),
                    &svc,
                ))));
            }
            3 => {
                let name = *r.pick(SERVICES);
                if trace {
                    eprintln!("delete service {ns}/{name}");
                }
                world.inputs.services.remove(&(ns.into(), name.into()));
                ctl.apply(Event::Service(Delta::Deleted(ServiceName {
                    namespace: ns.into(),
                    name: name.into(),
                })));
            }
            4..=6 => {
                let name = format!("s{}", r.below(6));
                let slice = random_slice(&mut r, ns, &name);
                if trace {
                    eprintln!("slice {ns}/{name}: {:?}", slice);
                }
                world
                    .inputs
                    .slices
                    .insert((ns.into(), name.clone()), slice.clone());
                let key = ObjKey::new(ns, name);
                ctl.apply(Event::Slice(Delta::Applied(SliceObj::from_k8s(
                    &key, &slice, NODE,
                ))));
            }
            7 => {
                let name = format!("s{}", r.below(6));
                if trace {
                    eprintln!("delete slice {ns}/{name}");
                }
                world.inputs.slices.remove(&(ns.into(), name.clone()));
                ctl.apply(Event::Slice(Delta::Deleted(ObjKey::new(ns, name))));
            }
            8 => {
                let name = *r.pick(&[NODE, "node-b"]);
                if trace {
                    eprintln!("node {name}");
                }
                if r.chance(20) {
                    world.inputs.nodes.remove(name);
                    ctl.apply(Event::Node(Delta::Deleted(name.into())));
                } else {
                    let node = random_node(&mut r, name);
                    world.inputs.nodes.insert(name.into(), node.clone());
                    ctl.apply(Event::Node(Delta::Applied(NodeObj::from_k8s(name, &node))));
                }
            }
            _ => {
                if trace {
                    eprintln!("relist or restart");
                }
                if r.chance(30) {
                    // A re-list of the slices: one is gone meanwhile.
                    if let Some(k) = world.inputs.slices.keys().next().cloned() {
                        world.inputs.slices.remove(&k);
                    }
                    let keys = world
                        .inputs
                        .slices
                        .keys()
                        .map(|(ns, n)| ObjKey::new(ns, n))
                        .collect();
                    ctl.apply(Event::Slice(Delta::Listed(keys)));
                } else if r.chance(30) {
                    // The agent restarts: adopts the maps, full sync.
                    table = ServiceTable::new(Programmer::adopt(maps.clone()));
                    ctl = Controller::new(cfg(), None);
                    for ev in world.events() {
                        ctl.apply(ev);
                    }
                    ctl.full_sync(&mut table, Instant::now());
                }
            }
        }
        let flush_now = r.chance(40);
        if flush_now || trace {
            if trace {
                eprintln!("flush");
            }
            let f = ctl.flush(&mut table, Instant::now());
            assert!(
                f.outcome.failed.is_empty(),
                "seed {seed} step {step}: {:?}",
                f.outcome.failed
            );
            // After every flush, not only at the end: the first step that
            // goes wrong is the one reported.
            same(seed, step, &maps, &world);
            same_diags(seed, step, &ctl, &world);
        }
    }
    ctl.flush(&mut table, Instant::now());
    same(seed, steps, &maps, &world);
    same_diags(seed, steps, &ctl, &world);
}

/// Each Service's problems as the loop reports them, in a comparable form.
fn diags_of(ctl: &Controller) -> BTreeMap<String, BTreeSet<String>> {
    ctl.diags
        .iter()
        .map(|(n, d)| {
            (
                format!("{}/{}", n.namespace, n.name),
                d.iter().map(|d| format!("{d:?}")).collect(),
            )
        })
        .collect()
}

/// The problems the loop reports after the history are those a full sync
/// of the final objects reports (a conflict names the address's owner now,
/// not the one it had when the loser was last translated).
fn same_diags(seed: u64, step: usize, ctl: &Controller, world: &World) {
    let mut fresh = Controller::new(cfg(), None);
    for ev in world.events() {
        fresh.apply(ev);
    }
    let mut table = ServiceTable::new(Programmer::adopt(MemMaps::default()));
    fresh.full_sync(&mut table, Instant::now());
    assert_eq!(
        diags_of(ctl),
        diags_of(&fresh),
        "seed {seed} step {step}: diagnostics (left: incremental, right: full sync)"
    );
}

fn same(seed: u64, step: usize, maps: &MemMaps, world: &World) {
    let got = canonical(&maps.contents());
    let want = full_sync_of(world);
    assert_eq!(
        got.orphans,
        (0, 0, 0),
        "seed {seed} step {step}: stray entries"
    );
    if got != want {
        let keys: BTreeSet<&FrontendKey> =
            got.frontends.keys().chain(want.frontends.keys()).collect();
        for k in keys {
            let (g, w) = (got.frontends.get(k), want.frontends.get(k));
            if g != w {
                panic!(
                    "seed {seed} step {step}: frontend {k} differs:\n incremental {g:#?}\n full sync   {w:#?}"
                );
            }
        }
    }
}

#[test]
fn incremental_and_full_sync_agree_on_random_histories() {
    let only: Option<u64> = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in only.map_or(1..=200, |s| s..=s) {
        run_sequence(seed, 60);
    }
}

#[test]
fn one_change_translates_one_service() {
    let mut world = World::default();
    let mut r = Rng(7);
    for (i, name) in SERVICES.iter().enumerate() {
        let mut svc = random_service(&mut r, "shop", name);
        svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        svc.spec.as_mut().unwrap().cluster_ip = Some(format!("10.96.1.{}", i + 1));
        svc.spec.as_mut().unwrap().cluster_ips = None;
        svc.spec.as_mut().unwrap().external_ips = None;
        world
            .inputs
            .services
            .insert(("shop".into(), (*name).into()), svc);
    }
    let maps = MemMaps::default();
    let mut table = ServiceTable::new(Programmer::adopt(maps.clone()));
    let mut ctl = Controller::new(cfg(), None);
    for ev in world.events() {
        ctl.apply(ev);
    }
    assert_eq!(
        ctl.full_sync(&mut table, Instant::now()).services,
        SERVICES.len()
    );
    let slice = random_slice(&mut Rng(3), "shop", "x");
    let mut slice = slice;
    slice.metadata.labels = Some(
        [(
            crate::model::objects::SERVICE_NAME_LABEL.to_owned(),
            "db".to_owned(),
        )]
        .into(),
    );
    ctl.apply(Event::Slice(Delta::Applied(SliceObj::from_k8s(
        &ObjKey::new("shop", "x"),
        &slice,
        NODE,
    ))));
    let f = ctl.flush(&mut table, Instant::now());
    assert_eq!(f.services, 1, "only the slice's Service is translated");
    // An unchanged object changes nothing.
    ctl.apply(Event::Slice(Delta::Applied(SliceObj::from_k8s(
        &ObjKey::new("shop", "x"),
        &slice,
        NODE,
    ))));
    assert!(!ctl.has_work());
}
