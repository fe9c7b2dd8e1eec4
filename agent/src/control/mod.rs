//! The control plane: source events in, kernel changes out, at the grain of
//! one Service.
//!
//! [`Controller`] is the synchronous core: the [`tracker`] holds every
//! object once and marks Services dirty; a flush translates the dirty ones
//! (and the ones that won or lost an address because of them, through the
//! claims index), and hands each Service's frontends to the datapath's
//! owner ([`Dataplane`]) as one batch. A full sync translates everything and
//! makes the kernel exactly that (start-up over a previous agent's state,
//! the periodic safety sweep). [`run`] is the agent's loop around it.

pub mod events;
pub mod run;
pub mod tracker;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

pub use run::run;

use self::tracker::Tracker;
use crate::{
    datapath::{
        lbmaps::LbMaps,
        service_table::{FullSync, ServiceFrontends, ServiceTable, SyncOutcome},
    },
    model::{
        Diagnostic, FrontendKind, HealthCheck, Scope, ServiceName,
        claims::Claims,
        translate::{Config, Translated, missing_node_diag},
    },
    source::event::Event,
};

/// What the controller needs of the datapath's owner.
pub trait Dataplane {
    /// Syncs a batch of Services (each one's frontends replace what it had).
    fn sync_services(
        &mut self,
        batch: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) -> SyncOutcome;
    /// A full sync: the kernel becomes exactly the frontends the chunks
    /// bring (see `ServiceTable::full_begin`).
    fn full_begin(&mut self) -> FullSync;
    fn full_chunk(
        &mut self,
        full: &mut FullSync,
        chunk: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    );
    fn full_end(&mut self, full: FullSync) -> SyncOutcome;
}

impl<M: LbMaps> Dataplane for ServiceTable<M> {
    fn sync_services(
        &mut self,
        batch: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) -> SyncOutcome {
        self.sync(batch, now)
    }

    fn full_begin(&mut self) -> FullSync {
        ServiceTable::full_begin(self)
    }

    fn full_chunk(
        &mut self,
        full: &mut FullSync,
        chunk: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) {
        ServiceTable::full_chunk(self, full, chunk, now)
    }

    fn full_end(&mut self, full: FullSync) -> SyncOutcome {
        ServiceTable::full_end(self, full)
    }
}

/// What one flush did.
#[derive(Debug, Default)]
pub struct Flush {
    pub outcome: SyncOutcome,
    /// Services translated.
    pub services: usize,
    /// Trigger times of the slice changes programmed.
    pub triggers: Vec<SystemTime>,
    /// Problems that appeared with this flush (to log once, and as Events).
    pub new_diags: Vec<Diagnostic>,
    /// Health check node ports changed.
    pub health_checks_changed: bool,
    /// Translation and programming, together.
    pub took: Duration,
}

pub struct Controller {
    pub cfg: Config,
    pub tracker: Tracker,
    claims: Claims,
    /// Each Service's current problems (conversion, translation, conflicts).
    diags: HashMap<ServiceName, Vec<Diagnostic>>,
    health_checks: BTreeMap<ServiceName, HealthCheck>,
    /// Services with a NodePort this node cannot program (no Node object).
    missing_node: HashSet<ServiceName>,
    /// Each Service's ports whose Local policy finds no endpoint on this node
    /// while others exist (only Services that have some): kube-proxy's
    /// `sync_proxy_rules_no_local_endpoints_total` is their sum.
    no_local: HashMap<ServiceName, NoLocal>,
}

/// Service ports whose traffic a Local policy drops, by policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLocal {
    pub internal: usize,
    pub external: usize,
}

impl NoLocal {
    /// kube-proxy counts service ports: a ClusterIP frontend for internal
    /// traffic; any external frontend of a port for external traffic.
    fn of(frontends: &ServiceFrontends) -> NoLocal {
        let mut internal = HashSet::new();
        let mut external = HashSet::new();
        for (key, fe) in frontends.iter().filter(|(_, fe)| fe.drop_no_local) {
            let port = (fe.port_name.as_str(), key.proto);
            if fe.kind == FrontendKind::ClusterIP {
                internal.insert(port);
            } else if key.scope == Scope::External {
                external.insert(port);
            }
        }
        NoLocal {
            internal: internal.len(),
            external: external.len(),
        }
    }
}

impl Controller {
    /// `not_before`: slice trigger times older than this are not measured.
    pub fn new(cfg: Config, not_before: Option<SystemTime>) -> Self {
        Controller {
            tracker: Tracker::new(&cfg.node_name, not_before),
            cfg,
            claims: Claims::default(),
            diags: HashMap::new(),
            health_checks: BTreeMap::new(),
            missing_node: HashSet::new(),
            no_local: HashMap::new(),
        }
    }

    /// Applies one source event; returns the problems it brought.
    pub fn apply(&mut self, ev: Event) -> Vec<Diagnostic> {
        self.tracker.apply(ev)
    }

    pub fn has_work(&self) -> bool {
        self.tracker.has_dirty()
    }

    /// Translates the dirty Services and syncs them.
    pub fn flush(&mut self, dp: &mut impl Dataplane, now: Instant) -> Flush {
        self.sync(dp, now)
    }

    /// Translates every Service and makes the kernel exactly that. Two
    /// passes, so that the cluster's frontends are never all held at once:
    /// the first settles every address's owner (translations dropped), the
    /// second translates again, chunk by chunk, and programs what each
    /// Service owns.
    pub fn full_sync(&mut self, dp: &mut impl Dataplane, now: Instant) -> Flush {
        const CHUNK: usize = 512;
        let t0 = Instant::now();
        // Whatever was dirty is covered by this.
        self.tracker.take_dirty();
        let names: Vec<ServiceName> = {
            let mut v: Vec<ServiceName> = self.tracker.service_names().cloned().collect();
            v.sort();
            v
        };
        self.claims = Claims::default();
        for name in &names {
            let t = self.tracker.translate(name, &self.cfg);
            let created = self.tracker.service(name).and_then(|s| s.created);
            self.claims.set_service(name, created, &t.groups);
        }
        let mut flush = Flush {
            services: names.len(),
            ..Flush::default()
        };
        self.missing_node.clear();
        let mut full = dp.full_begin();
        for chunk in names.chunks(CHUNK) {
            let batch: Vec<(ServiceName, ServiceFrontends)> = chunk
                .iter()
                .map(|name| {
                    let t = self.tracker.translate(name, &self.cfg);
                    let frontends = self.settle(name, t, &mut flush);
                    (name.clone(), frontends)
                })
                .collect();
            dp.full_chunk(&mut full, batch, now);
        }
        // Services that left while the agent was not looking.
        self.diags
            .retain(|name, _| names.binary_search(name).is_ok());
        self.health_checks
            .retain(|name, _| names.binary_search(name).is_ok());
        self.no_local
            .retain(|name, _| names.binary_search(name).is_ok());
        flush.outcome = dp.full_end(full);
        flush.took = t0.elapsed();
        flush
    }

    fn sync(&mut self, dp: &mut impl Dataplane, now: Instant) -> Flush {
        let t0 = Instant::now();
        let mut translated: BTreeMap<ServiceName, Translated> = BTreeMap::new();
        // Settle claims first: a Service that wins or loses an address
        // because of another's change is translated in the same flush.
        loop {
            let dirty = self.tracker.take_dirty();
            if dirty.is_empty() {
                break;
            }
            for name in dirty {
                let t = self.tracker.translate(&name, &self.cfg);
                let created = self.tracker.service(&name).and_then(|s| s.created);
                for change in self.claims.set_service(&name, created, &t.groups) {
                    // The old and new owners, and every other claimant:
                    // its report names the owner.
                    let others: Vec<ServiceName> = [change.old, change.new]
                        .into_iter()
                        .flatten()
                        .chain(self.claims.claimants(&change.addr).cloned())
                        .collect();
                    for other in others {
                        if other != name && !translated.contains_key(&other) {
                            self.tracker.mark_dirty(other);
                        }
                    }
                }
                translated.insert(name, t);
            }
        }
        let mut flush = Flush {
            services: translated.len(),
            ..Flush::default()
        };
        let mut batch = Vec::with_capacity(translated.len());
        for (name, t) in translated {
            let frontends = self.settle(&name, t, &mut flush);
            batch.push((name, frontends));
        }
        flush.outcome = dp.sync_services(batch, now);
        flush.took = t0.elapsed();
        flush
    }

    /// After claims are settled: records a Service's problems, health check
    /// and trigger time, and returns the frontends it owns.
    fn settle(&mut self, name: &ServiceName, t: Translated, flush: &mut Flush) -> ServiceFrontends {
        let mut diags: Vec<Diagnostic> = self
            .tracker
            .service(name)
            .map(|s| s.diags.clone())
            .unwrap_or_default();
        diags.extend(t.diags.iter().cloned());
        diags.extend(self.claims.conflicts_of(name, &t.groups));
        let old = self.diags.get(name);
        flush.new_diags.extend(
            diags
                .iter()
                .filter(|d| !old.is_some_and(|o| o.contains(d)))
                .cloned(),
        );
        if diags.is_empty() {
            self.diags.remove(name);
        } else {
            self.diags.insert(name.clone(), diags);
        }
        let hc_changed = match &t.health_check {
            Some(hc) => self.health_checks.insert(name.clone(), hc.clone()).as_ref() != Some(hc),
            None => self.health_checks.remove(name).is_some(),
        };
        flush.health_checks_changed |= hc_changed;
        if t.missing_node {
            if self.missing_node.is_empty() {
                flush.new_diags.push(missing_node_diag(&self.cfg.node_name));
            }
            self.missing_node.insert(name.clone());
        } else {
            self.missing_node.remove(name);
        }
        if let Some(trigger) = self.tracker.take_trigger(name) {
            flush.triggers.push(trigger);
        }
        let frontends: ServiceFrontends = t
            .groups
            .into_iter()
            .filter(|g| self.claims.owns(name, g))
            .flat_map(|g| g.frontends)
            .collect();
        match NoLocal::of(&frontends) {
            n if n == NoLocal::default() => self.no_local.remove(name),
            n => self.no_local.insert(name.clone(), n),
        };
        frontends
    }

    /// Service ports whose Local policy drops their traffic on this node.
    pub fn no_local_endpoints(&self) -> NoLocal {
        self.no_local
            .values()
            .fold(NoLocal::default(), |a, n| NoLocal {
                internal: a.internal + n.internal,
                external: a.external + n.external,
            })
    }

    pub fn health_checks(&self) -> &BTreeMap<ServiceName, HealthCheck> {
        &self.health_checks
    }

    /// Every current problem, in a fixed order: files, nodes, slices, then
    /// each Service's.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut out = self.tracker.other_diagnostics();
        if !self.missing_node.is_empty() {
            out.push(missing_node_diag(&self.cfg.node_name));
        }
        let mut names: Vec<&ServiceName> = self.diags.keys().collect();
        names.sort();
        for name in names {
            out.extend(self.diags[name].iter().cloned());
        }
        out
    }
}

#[cfg(test)]
#[path = "equivalence_tests.rs"]
mod equivalence_tests;

#[cfg(test)]
#[path = "golden_tests.rs"]
mod golden_tests;
