//! The control loop against the real kernel maps (issue 10), through the real agent:
//!
//! - a random history of manifest changes, applied incrementally as it happens, ends in the
//!   state a fresh agent's full sync of the final manifests writes (ids aside);
//! - a restart over unchanged objects writes nothing and keeps every entry as it was, ids
//!   included; a restart after one endpoint changed writes only that Service's entries.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::*;
use ferry::{
    cmd::services::ServicesView,
    model::{FrontendKey, Protocol},
};
use ferry_tests::{
    Endpoint, EndpointSlice, Lab, Node, Service,
    history::{self, History, OTHER_NODE},
    lab::{GATEWAY, NODE_NAME},
    manifests::Manifest,
    pinned_maps::{self, Owner, PinnedMaps},
    require_root, services,
};

/// Replays a run of the history test: `FERRY_EQUIV_SEED=<seed printed by the run>`.
const SEED_VAR: &str = "FERRY_EQUIV_SEED";
/// The sentinel Service's address: in no history.
const SENTINEL_IP: &str = "10.96.255.254";
/// Sorts after every object's file: within one pass of the manifests watcher (files in
/// name order) it is read last, so once the kernel has it, every change written before
/// it has been applied.
const SENTINEL_FILE: &str = "zz-sentinel.yaml";
/// How long one batch of changes may take to reach the kernel (a debug-build agent
/// computing Maglev tables).
const SETTLE: Duration = Duration::from_secs(20);
const MAP_WRITES: &str = "ferry_map_writes_total";

/// Writes the sentinel Service with port `port` (a new port each time) and waits until the
/// kernel has that frontend: everything written before is applied then.
fn barrier(lab: &Lab, port: u16) -> Duration {
    let svc = Service::cluster_ip("sentinel", SENTINEL_IP)
        .namespace("zz")
        .port("barrier", i64::from(port), "TCP");
    lab.manifests().write_raw(SENTINEL_FILE, &svc.to_yaml());
    lab.wait_services(
        |v| services::frontend(v, SENTINEL_IP, port, Protocol::Tcp).is_some(),
        SETTLE,
    )
}

/// The kernel's state without ids (frontends joined with the agent's status, its
/// diagnostics, every map's entries resolved and counted).
fn id_free(lab: &Lab) -> Vec<String> {
    let view = lab.services_with_status();
    PinnedMaps::read(&lab.pin_dir()).id_free(&view)
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_random_history_applied_incrementally_ends_where_a_full_sync_of_the_final_manifests_does() {
    require_root!();
    let seed = history::seed(SEED_VAR);
    println!("seed {seed} (replay: {SEED_VAR}={seed})");
    let t0 = Instant::now();
    let lab = Lab::new("a_random_history_ends_where_a_full_sync_does");
    let m = lab.manifests();
    let mut h = History::new(seed);
    // Some objects are there before the agent: its first full sync takes them.
    for i in 0..8 {
        println!("before start {i}: {}", h.step(m));
    }
    start_agent(&lab);
    let steps = 40 + h.rng().below(21);
    let mut barriers = 0u16;
    let mut waited = Duration::ZERO;
    for i in 0..steps {
        println!("step {i}: {}", h.step(m));
        // Some steps are waited for (the agent applies them alone), the others are
        // written in bursts (the agent takes several at once).
        if h.rng().chance(30) {
            barriers += 1;
            waited += barrier(&lab, barriers);
        }
    }
    barriers += 1;
    waited += barrier(&lab, barriers);
    m.remove_raw(SENTINEL_FILE);
    lab.wait_services(|v| !services::has_address(v, SENTINEL_IP), SETTLE);
    assert!(lab.agent_running(), "the agent died during the history");
    println!(
        "{steps} steps, {barriers} waits for the agent ({} ms in all); {}",
        waited.as_millis(),
        h.summary()
    );
    let incremental = id_free(&lab);

    lab.stop_agent();
    let out = lab.ferry_cleanup();
    assert!(
        out.status.success(),
        "ferry cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lab.pins().is_empty(), "pins left: {:?}", lab.pins());
    // A fresh agent on the final manifests: empty maps, one full sync.
    start_agent(&lab);
    let full = id_free(&lab);
    println!(
        "final state ({} lines, {} s in all):\n{}",
        full.len(),
        t0.elapsed().as_secs(),
        full.iter()
            .filter(|l| !l.starts_with("maglev") || l.len() < 300)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        incremental == full,
        "seed {seed}: the incrementally programmed maps (-) differ from a full sync of the final manifests (+):\n{}\nreplay: {SEED_VAR}={seed}",
        pinned_maps::diff(&incremental, &full, 200)
    );
}

/// The node's objects and four Services that use every kind of entry: two ClusterIP ports
/// with affinity and a terminating endpoint, a NodePort with an externalIP, a Maglev
/// LoadBalancer with externalTrafficPolicy Local and source ranges, a LoadBalancer with
/// internalTrafficPolicy Local; endpoints on this node and on another.
fn realistic_set(lab: &Lab) -> EndpointSlice {
    let m = lab.manifests();
    m.apply(&Node::new(NODE_NAME, GATEWAY));
    m.apply(&Node::new(OTHER_NODE, "10.244.0.201"));
    m.apply(
        &Service::cluster_ip("web", "10.96.0.10")
            .port_to("http", 80, "TCP", 8080u16)
            .port_to("dns", 53, "UDP", 5353u16)
            .affinity(60),
    );
    m.apply(
        &EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint(Endpoint::ready("10.244.0.2"))
            .endpoint(Endpoint::ready("10.244.0.3"))
            .endpoint(Endpoint::ready("10.244.1.2").node(OTHER_NODE)),
    );
    m.apply(
        &EndpointSlice::new("web-2", "web")
            .port("http", 8080, "TCP")
            .port("dns", 5353, "UDP")
            .endpoint(Endpoint::terminating("10.244.0.4", true)),
    );
    m.apply(
        &Service::node_port_service("api", "10.96.0.11")
            .port_to("http", 80, "TCP", 8080u16)
            .node_port(30080)
            .external_ip("192.0.2.10"),
    );
    let api = EndpointSlice::new("api-1", "api")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready("10.244.0.21"))
        .endpoint(Endpoint::ready("10.244.0.22"))
        .endpoint(Endpoint::ready("10.244.1.21").node(OTHER_NODE));
    m.apply(&api);
    m.apply(
        &Service::load_balancer("shop", "10.96.0.12")
            .port_to("http", 80, "TCP", 8080u16)
            .node_port(30081)
            .lb_ingress("198.51.100.20")
            .external_traffic_policy("Local")
            .health_check_node_port(32080)
            .source_range("192.0.2.0/24")
            .source_range("198.51.100.7/32")
            .annotation("ferry.io/lb-algorithm", "maglev"),
    );
    m.apply(
        &EndpointSlice::new("shop-1", "shop")
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::ready("10.244.0.31"))
            .endpoint(Endpoint::ready("10.244.1.31").node(OTHER_NODE)),
    );
    m.apply(
        &Service::load_balancer("edge", "10.96.0.13")
            .port_to("https", 443, "TCP", 8443u16)
            .node_port(30443)
            .lb_ingress("198.51.100.21")
            .internal_traffic_policy("Local"),
    );
    m.apply(
        &EndpointSlice::new("edge-1", "edge")
            .port("https", 8443, "TCP")
            .endpoint(Endpoint::ready("10.244.0.41"))
            .endpoint(Endpoint::ready("10.244.1.41").node(OTHER_NODE)),
    );
    api
}

fn map_writes(lab: &Lab) -> f64 {
    lab.metric(MAP_WRITES).unwrap_or_else(|| {
        panic!(
            "no {MAP_WRITES} in the agent's metrics:\n{}",
            lab.metrics_text()
        )
    })
}

/// Entries (map, key) whose value differs, or that only one side has.
fn changed(a: &PinnedMaps, b: &PinnedMaps) -> Vec<(Owner, String)> {
    let index = |p: &PinnedMaps| -> BTreeMap<(&'static str, String), (String, Owner)> {
        p.entries
            .iter()
            .map(|e| ((e.map, e.key.clone()), (e.value.clone(), e.owner)))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let keys: BTreeSet<&(&'static str, String)> = ia.keys().chain(ib.keys()).collect();
    keys.into_iter()
        .filter(|k| ia.get(*k).map(|v| &v.0) != ib.get(*k).map(|v| &v.0))
        .map(|k| {
            let owner = ia.get(k).or_else(|| ib.get(k)).expect("a key of either").1;
            let line = format!(
                "{} {}: {:?} -> {:?}",
                k.0,
                k.1,
                ia.get(k).map(|v| &v.0),
                ib.get(k).map(|v| &v.0)
            );
            (owner, line)
        })
        .collect()
}

/// What one Service holds in the maps: its frontends' keys and slot counts, the backend
/// ids its slots name, its rev-NAT ids and DSR memberships.
#[derive(Debug, Default)]
struct Footprint {
    slots: BTreeMap<FrontendKey, usize>,
    backends: BTreeSet<u32>,
    rev_nats: BTreeSet<u16>,
    members: usize,
}

fn footprint(maps: &PinnedMaps, frontends: &BTreeSet<FrontendKey>) -> Footprint {
    let mut f = Footprint::default();
    for key in frontends {
        if let Some(kf) = maps.state.frontends.get(key) {
            f.slots.insert(*key, kf.backend_ids.len());
            f.backends.extend(&kf.backend_ids);
            f.rev_nats.insert(kf.value.rev_nat_id);
        }
    }
    f.members = maps
        .entries
        .iter()
        .filter(|e| e.map == agent_common::maps::MEMBERS_V4)
        .filter(|e| matches!(e.owner, Owner::RevNat(r) if f.rev_nats.contains(&r)))
        .count();
    f
}

/// The frontends `ferry services` names as `service`'s.
fn frontends_of(v: &ServicesView, service: &str) -> BTreeSet<FrontendKey> {
    v.frontends
        .iter()
        .filter(|f| f.service.as_deref() == Some(service))
        .map(|f| FrontendKey {
            ip: f.address,
            port: f.port,
            proto: f.protocol,
            scope: f.scope,
        })
        .collect()
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_restart_writes_nothing_over_unchanged_objects_and_only_the_changed_service_otherwise() {
    require_root!();
    let lab = Lab::new("a_restart_writes_only_what_changed");
    let api = realistic_set(&lab);
    start_agent(&lab);
    let view = lab.services_with_status();
    for (ip, port) in [
        ("10.96.0.10", 80),
        ("10.96.0.11", 80),
        ("10.244.0.1", 30080),
        ("192.0.2.10", 80),
        ("198.51.100.20", 80),
        ("198.51.100.21", 443),
    ] {
        assert!(
            services::frontend(&view, ip, port, Protocol::Tcp)
                .is_some_and(|f| f.status == "programmed"),
            "{ip}:{port} is not programmed:\n{}",
            lab.services_table()
        );
    }
    assert!(view.diagnostics.is_empty(), "{:?}", view.diagnostics);
    let first = map_writes(&lab);
    assert!(first > 0.0, "the first agent programmed nothing");
    let before = PinnedMaps::read(&lab.pin_dir());
    println!(
        "first agent: {first} map writes; {} entries ({} service-map, {} backends, {} Maglev)",
        before.entries.len(),
        before.count(agent_common::maps::SERVICES_V4),
        before.count(agent_common::maps::BACKENDS_V4),
        before.count(agent_common::maps::MAGLEV),
    );

    // Nothing changed: the next agent adopts everything and writes nothing.
    let status = lab.stop_agent();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent's exit: {status:?}"
    );
    let stopped = PinnedMaps::read(&lab.pin_dir());
    assert!(
        stopped.lines() == before.lines(),
        "the agent's exit changed the maps:\n{}",
        pinned_maps::diff(&before.lines(), &stopped.lines(), 100)
    );
    start_agent(&lab);
    let writes = map_writes(&lab);
    let after = PinnedMaps::read(&lab.pin_dir());
    assert!(
        after.lines() == before.lines(),
        "a restart over unchanged objects changed the maps (- before, + after):\n{}",
        pinned_maps::diff(&before.lines(), &after.lines(), 100)
    );
    assert_eq!(
        writes,
        0.0,
        "a restart over unchanged objects wrote to the maps; log:\n{}",
        lab.agent_log()
    );
    println!("restart over unchanged objects: {writes} map writes, every entry as it was");

    // One endpoint of api replaced while no agent runs: only api's entries are written.
    let api_frontends = frontends_of(&view, "default/api");
    assert_eq!(api_frontends.len(), 3, "api's frontends: {api_frontends:?}");
    lab.stop_agent();
    let mut moved = api.clone();
    moved.endpoints.retain(|e| e.ip != "10.244.0.22");
    lab.manifests()
        .apply(&moved.endpoint(Endpoint::ready("10.244.0.23")));
    start_agent(&lab);
    let writes = map_writes(&lab);
    let now = PinnedMaps::read(&lab.pin_dir());
    let v = lab.services();
    for (ip, port) in [
        ("10.96.0.11", 80),
        ("10.244.0.1", 30080),
        ("192.0.2.10", 80),
    ] {
        assert!(
            services::active_is(
                &v,
                ip,
                port,
                Protocol::Tcp,
                &["10.244.0.21:8080", "10.244.0.23:8080", "10.244.1.21:8080"]
            ),
            "{ip}:{port} does not have the new endpoint:\n{}",
            lab.services_table()
        );
    }
    let (was, is) = (
        footprint(&before, &api_frontends),
        footprint(&now, &api_frontends),
    );
    // At most: each frontend's slot 0 and every slot, once; each membership added or
    // removed; each backend entry added or removed.
    let bound: usize = api_frontends
        .iter()
        .map(|k| 1 + was.slots.get(k).max(is.slots.get(k)).copied().unwrap_or(0))
        .sum::<usize>()
        + was.members
        + is.members
        + was.backends.union(&is.backends).count();
    let diff = changed(&before, &now);
    println!(
        "restart after one endpoint of api changed: {writes} map writes (bound {bound}); changed entries:\n{}",
        diff.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        writes > 0.0 && writes <= bound as f64,
        "{writes} map writes for one endpoint of api; expected 1..={bound}"
    );
    let foreign: Vec<&String> = diff
        .iter()
        .filter(|(owner, _)| match owner {
            Owner::Frontend(k) => !api_frontends.contains(k),
            Owner::Backend(id) => !was.backends.contains(id) && !is.backends.contains(id),
            Owner::RevNat(id) => !was.rev_nats.contains(id),
            Owner::Node | Owner::Stray => true,
        })
        .map(|(_, l)| l)
        .collect();
    assert!(!diff.is_empty(), "nothing changed in the maps");
    assert!(
        foreign.is_empty(),
        "entries that are not api's changed: {foreign:#?}"
    );
    assert_eq!(was.rev_nats, is.rev_nats, "api's rev-NAT ids are kept");
}
