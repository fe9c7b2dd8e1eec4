//! The control loop against the real kernel maps (issue 10), through the real agent:
//!
//! - a random history of manifest changes, applied incrementally as it happens, ends in the
//!   state a fresh agent's full sync of the final manifests writes (ids aside), and a
//!   restart over that state writes nothing;
//! - a restart over unchanged objects writes nothing and keeps every entry as it was, ids
//!   included; a restart after one endpoint changed writes only that Service's entries.

mod agent_view;
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use agent_view::AgentView;
use ferry::{
    cmd::services::ServicesView,
    model::{FrontendKey, Protocol},
};
use ferry_tests::{
    AgentOpts, Endpoint, EndpointSlice, Lab, Node, Service,
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
const SENTINEL_FILE: &str = "zz-sentinel.yaml";
/// How long one batch of changes may take to reach the kernel: generous, for a debug-build
/// agent computing Maglev tables on a busy machine (a condition is polled, never waited out).
const SETTLE: Duration = Duration::from_secs(30);
const MAP_WRITES: &str = "ferry_map_writes_total";

/// The lab's agent, with room to start on a busy machine (a full sync of Maglev tables).
fn start(lab: &Lab) -> Duration {
    let took = lab.start_agent(&AgentOpts {
        ready_timeout: Duration::from_secs(60),
        ..AgentOpts::default()
    });
    common::report("agent start -> /readyz 200", took);
    took
}

/// Stops the agent (SIGTERM to its PID), which must exit cleanly.
fn stop(lab: &Lab) {
    let status = lab.stop_agent();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent's exit: {status:?}; log:\n{}",
        lab.agent_log()
    );
}

/// Writes the sentinel Service with port `port` (a new one each time) and waits until
/// `ferry services`, with the agent's status joined, shows that frontend. The manifests
/// watcher reads every file changed before the sentinel no later than the sentinel, and the
/// loop answers the status only between flushes: once the answer shows the sentinel, every
/// change written before it has been programmed.
fn barrier(lab: &Lab, agent: &AgentView, port: u16) -> Duration {
    let svc = Service::cluster_ip("sentinel", SENTINEL_IP)
        .namespace("zz")
        .port("barrier", i64::from(port), "TCP");
    lab.manifests().write_raw(SENTINEL_FILE, &svc.to_yaml());
    agent
        .wait_services(
            &format!("sentinel {SENTINEL_IP}:{port}"),
            |v| services::frontend(v, SENTINEL_IP, port, Protocol::Tcp).is_some(),
            SETTLE,
            || lab.agent_log(),
        )
        .1
}

/// `ferry services` with the agent's status joined (polled: a busy agent may miss one ask).
fn view(lab: &Lab, agent: &AgentView) -> ServicesView {
    agent
        .wait_services("the agent's view", |_| true, SETTLE, || lab.agent_log())
        .0
}

/// The kernel's state without ids: frontends joined with the agent's status, its
/// diagnostics, every map's entries resolved and counted.
fn id_free(lab: &Lab, agent: &AgentView) -> Vec<String> {
    let view = view(lab, agent);
    PinnedMaps::read(&lab.pin_dir()).id_free(&view)
}

/// `ferry_map_writes_total` of the running agent (polled until its metrics answer).
fn map_writes(lab: &Lab, agent: &AgentView) -> u64 {
    agent_view::wait_for(
        &format!("{MAP_WRITES} in the agent's metrics"),
        SETTLE,
        || {
            agent.metrics().lines().find_map(|l| {
                let (name, value) = l.split_once(' ')?;
                (name == MAP_WRITES).then(|| value.trim().parse::<u64>().ok())?
            })
        },
        || lab.agent_log(),
    )
}

/// Rounds of history per run: each round's fresh agent goes on, incrementally, in the next.
const ROUNDS: usize = 3;

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_random_history_applied_incrementally_ends_where_a_full_sync_of_the_final_manifests_does() {
    require_root!();
    let seed = history::seed(SEED_VAR);
    println!("seed {seed} (replay: {SEED_VAR}={seed})");
    let t0 = Instant::now();
    let lab = Lab::new("a_random_history_ends_where_a_full_sync_does");
    let agent = AgentView::of_lab(&lab);
    let m = lab.manifests();
    let mut h = History::new(seed);
    // Some objects are there before the agent: its first full sync takes them.
    for i in 0..8 {
        println!("before start {i}: {}", h.step(m));
    }
    start(&lab);
    // The sentinel's port: a new one for each barrier.
    let mut barriers = 0u16;
    for round in 0..ROUNDS {
        let steps = 40 + h.rng().below(21);
        let mut waited = Duration::ZERO;
        let mut waits = 0;
        for i in 0..steps {
            println!("round {round} step {i}: {}", h.step(m));
            // Some steps are waited for (the agent programs them alone), the others are
            // written in bursts (the agent takes several at once).
            if h.rng().chance(30) {
                barriers += 1;
                waits += 1;
                waited += barrier(&lab, &agent, barriers);
            }
        }
        // Quiescence: the sentinel is programmed (so everything before it is), then removed.
        barriers += 1;
        waited += barrier(&lab, &agent, barriers);
        m.remove_raw(SENTINEL_FILE);
        agent.wait_services(
            "the sentinel gone",
            |v| !services::has_address(v, SENTINEL_IP),
            SETTLE,
            || lab.agent_log(),
        );
        assert!(lab.agent_running(), "the agent died during the history");
        let incremental = id_free(&lab, &agent);
        println!(
            "round {round}: {steps} steps, {waits} waits for the agent ({} ms in all), {} map writes since the agent started",
            waited.as_millis(),
            map_writes(&lab, &agent),
        );

        // By the way: a restart over the state the history left (its ids as they fell)
        // adopts it all and writes nothing.
        let left = PinnedMaps::read(&lab.pin_dir()).lines();
        stop(&lab);
        start(&lab);
        let writes = map_writes(&lab, &agent);
        let adopted = PinnedMaps::read(&lab.pin_dir()).lines();
        assert!(
            writes == 0 && adopted == left,
            "seed {seed}, round {round}: a restart over unchanged manifests wrote {writes} times; the maps before (-) and after (+):\n{}\nreplay: {SEED_VAR}={seed}",
            pinned_maps::diff(&left, &adopted, 100)
        );

        // The same manifests into empty maps: stop, remove everything, start afresh.
        stop(&lab);
        let out = lab.ferry_cleanup();
        assert!(
            out.status.success(),
            "ferry cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(lab.pins().is_empty(), "pins left: {:?}", lab.pins());
        start(&lab);
        let full = id_free(&lab, &agent);
        println!(
            "round {round}: full sync of the final manifests: {} map writes; state ({} lines):\n{}",
            map_writes(&lab, &agent),
            full.len(),
            full.join("\n")
        );
        assert!(
            incremental == full,
            "seed {seed}, round {round}: the incrementally programmed maps (-) differ from a full sync of the final manifests (+):\n{}\nreplay: {SEED_VAR}={seed}",
            pinned_maps::diff(&incremental, &full, 200)
        );
    }
    println!(
        "seed {seed}: {ROUNDS} rounds equal in {} s; changes made: {}",
        t0.elapsed().as_secs(),
        h.summary()
    );
}

/// The node's objects and Services that use every kind of entry: two ClusterIP ports with
/// affinity and a terminating endpoint, a NodePort with an externalIP, a Maglev LoadBalancer
/// with externalTrafficPolicy Local and source ranges, a LoadBalancer with
/// internalTrafficPolicy Local, one served only by terminating endpoints, one with none;
/// endpoints on this node and on another. Returns api's slice.
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
    m.apply(&Service::cluster_ip("drain", "10.96.0.14").port_to("http", 80, "TCP", 8080u16));
    m.apply(
        &EndpointSlice::new("drain-1", "drain")
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::terminating("10.244.0.51", true))
            .endpoint(Endpoint::terminating("10.244.1.51", true).node(OTHER_NODE)),
    );
    m.apply(&Service::cluster_ip("idle", "10.96.0.15").port_to("http", 80, "TCP", 8080u16));
    api
}

/// Entries (map, key) whose value differs, or that only one side has, with their owner.
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

/// The backend and rev-NAT ids the kernel's entries of `frontends` name.
fn ids_of(maps: &PinnedMaps, frontends: &BTreeSet<FrontendKey>) -> (BTreeSet<u32>, BTreeSet<u16>) {
    let mut backends = BTreeSet::new();
    let mut rev_nats = BTreeSet::new();
    for f in frontends.iter().filter_map(|k| maps.state.frontends.get(k)) {
        backends.extend(&f.backend_ids);
        rev_nats.insert(f.value.rev_nat_id);
    }
    (backends, rev_nats)
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn a_restart_writes_nothing_over_unchanged_objects_and_only_the_changed_service_otherwise() {
    require_root!();
    let lab = Lab::new("a_restart_writes_only_what_changed");
    let agent = AgentView::of_lab(&lab);
    let api = realistic_set(&lab);
    start(&lab);
    let view = view(&lab, &agent);
    for (ip, port) in [
        ("10.96.0.10", 80),
        ("10.96.0.11", 80),
        ("10.244.0.1", 30080),
        ("192.0.2.10", 80),
        ("198.51.100.20", 80),
        ("198.51.100.21", 443),
        ("10.96.0.14", 80),
        ("10.96.0.15", 80),
    ] {
        assert!(
            services::frontend(&view, ip, port, Protocol::Tcp)
                .is_some_and(|f| f.status == "programmed"),
            "{ip}:{port} is not programmed:\n{}",
            agent.services_table()
        );
    }
    assert!(view.diagnostics.is_empty(), "{:?}", view.diagnostics);
    let first = map_writes(&lab, &agent);
    assert!(first > 0, "the first agent programmed nothing");
    let before = PinnedMaps::read(&lab.pin_dir());
    println!(
        "first agent: {first} map writes; {} entries ({} service-map, {} backends, {} Maglev, {} memberships, {} source ranges)",
        before.entries.len(),
        before.count(agent_common::maps::SERVICES_V4),
        before.count(agent_common::maps::BACKENDS_V4),
        before.count(agent_common::maps::MAGLEV),
        before.count(agent_common::maps::MEMBERS_V4),
        before.count(agent_common::maps::SRC_RANGE_V4),
    );

    // Nothing changed: the next agent adopts everything and writes nothing.
    stop(&lab);
    let stopped = PinnedMaps::read(&lab.pin_dir());
    assert!(
        stopped.lines() == before.lines(),
        "the agent's exit changed the maps:\n{}",
        pinned_maps::diff(&before.lines(), &stopped.lines(), 100)
    );
    start(&lab);
    let writes = map_writes(&lab, &agent);
    let after = PinnedMaps::read(&lab.pin_dir());
    assert!(
        after.lines() == before.lines(),
        "a restart over unchanged objects changed the maps (- before, + after):\n{}",
        pinned_maps::diff(&before.lines(), &after.lines(), 100)
    );
    assert_eq!(
        writes,
        0,
        "a restart over unchanged objects wrote to the maps; log:\n{}",
        lab.agent_log()
    );
    let again = self::view(&lab, &agent);
    assert!(
        again == view,
        "the restarted agent's view differs:\n{}",
        agent.services_table()
    );
    println!(
        "restart over unchanged objects: 0 map writes, all {} entries as they were",
        after.entries.len()
    );

    // One endpoint of api replaced while no agent runs: only api's entries are written.
    let api_frontends = frontends_of(&view, "default/api");
    assert_eq!(api_frontends.len(), 3, "api's frontends: {api_frontends:?}");
    stop(&lab);
    let mut moved = api.clone();
    moved.endpoints.retain(|e| e.ip != "10.244.0.22");
    lab.manifests()
        .apply(&moved.endpoint(Endpoint::ready("10.244.0.23")));
    start(&lab);
    let writes = map_writes(&lab, &agent);
    let now = PinnedMaps::read(&lab.pin_dir());
    let v = self::view(&lab, &agent);
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
            agent.services_table()
        );
    }
    let diff = changed(&before, &now);
    println!(
        "restart after one endpoint of api changed: {writes} map writes; {} entries changed:\n{}",
        diff.len(),
        diff.iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every changed entry is api's: a slot or slot 0 of its frontends, a backend entry
    // they name (before or after), an entry keyed by its rev-NAT ids.
    let (old_backends, old_revs) = ids_of(&before, &api_frontends);
    let (new_backends, new_revs) = ids_of(&now, &api_frontends);
    assert_eq!(old_revs, new_revs, "api's rev-NAT ids are kept");
    let foreign: Vec<&String> = diff
        .iter()
        .filter(|(owner, _)| match owner {
            Owner::Frontend(k) => !api_frontends.contains(k),
            Owner::Backend(id) => !old_backends.contains(id) && !new_backends.contains(id),
            Owner::RevNat(id) => !old_revs.contains(id),
            Owner::Node | Owner::Stray => true,
        })
        .map(|(_, l)| l)
        .collect();
    assert!(
        foreign.is_empty(),
        "entries that are not api's changed: {foreign:#?}"
    );
    // Each changed entry took one write; beyond them, only each updated frontend's commit
    // (its slot 0, rewritten with the same value when its backend count is unchanged).
    let bound = diff.len() + api_frontends.len();
    assert!(
        !diff.is_empty() && writes as usize >= diff.len() && writes as usize <= bound,
        "{writes} map writes for one endpoint of api, {} entries changed: expected {}..={bound}",
        diff.len(),
        diff.len()
    );
}
