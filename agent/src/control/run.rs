//! The agent's control loop: source events in, a flush per burst of them,
//! timers for retries, the safety sweep, the node's devices and conntrack.
//!
//! Events are applied as they come; whatever else is already queued joins
//! them (a burst becomes one flush, with no waiting window), and the flush
//! programs only the Services they touched. Nothing here waits on the
//! network or the API server while it holds the datapath.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use anyhow::bail;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use super::{Controller, Flush, events::EventSink};
use crate::{
    datapath::{Datapath, ct_gc::ConntrackGc, owner::NodeSettings},
    model::{Diagnostic, Family, Severity, translate::Config},
    server::{
        metrics::{self, Metrics},
        proxy_health::ProxyHealth,
        service_health::ServiceHealthServers,
        status::{self, Status},
    },
    source::event::{Delta, Event},
};

/// How many queued events at most join one flush (a re-list of 100,000
/// objects is applied and programmed in steps, keeping the loop live).
const MAX_BATCH: usize = 20_000;
/// The loop turns at least this often (the liveness heartbeat), and at
/// least every `--sync-period`.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the node's devices are looked at again (a NIC coming up).
const DEVICE_CHECK: Duration = Duration::from_secs(10);

/// The datapath being loaded (with the conntrack upkeep, kept alive with it).
pub type Loading = tokio::task::JoinHandle<anyhow::Result<(Datapath, ConntrackGc)>>;

/// Everything the loop runs with.
pub struct Parts {
    pub cfg: Config,
    pub datapath: Loading,
    pub events: mpsc::Receiver<Event>,
    pub health: ProxyHealth,
    pub metrics: Metrics,
    /// Requests for the agent's status (`ferry services`).
    pub status: mpsc::Receiver<status::Request>,
    /// Kubernetes Events (with the API source).
    pub sink: Option<EventSink>,
    /// The periodic full sync (kube-proxy's doFullSync).
    pub full_sync_period: Duration,
    /// `--sync-period`: health fails after 2 × this without a turn.
    pub sync_period: Duration,
    /// When the agent started: older trigger times are not measured.
    pub started: SystemTime,
}

/// Which kinds have been listed completely once.
#[derive(Default)]
struct Listed {
    services: bool,
    slices: bool,
    nodes: bool,
}

impl Listed {
    fn note(&mut self, ev: &Event) {
        match ev {
            Event::Service(Delta::Listed(_)) => self.services = true,
            Event::Slice(Delta::Listed(_)) => self.slices = true,
            Event::Node(Delta::Listed(_)) => self.nodes = true,
            _ => {}
        }
    }

    fn all(&self) -> bool {
        self.services && self.slices && self.nodes
    }
}

struct Loop {
    ctl: Controller,
    dp: Datapath,
    health: ProxyHealth,
    metrics: Metrics,
    sink: Option<EventSink>,
    service_health: ServiceHealthServers,
    listed: Listed,
    synced: bool,
}

pub async fn run(p: Parts) -> anyhow::Result<()> {
    let mut rx = p.events;
    let mut status_rx = p.status;
    let mut ctl = Controller::new(p.cfg, Some(p.started));
    let mut listed = Listed::default();
    // While the datapath loads, the source's first events are applied: the
    // two take their time side by side.
    let mut loading = p.datapath;
    let (dp, _conntrack_gc) = loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { bail!("the source stopped") };
                listed.note(&ev);
                for d in ctl.apply(ev) {
                    report_diagnostic(&d, None);
                }
            }
            loaded = &mut loading => break loaded??,
        }
    };
    let mut l = Loop {
        ctl,
        dp,
        health: p.health,
        metrics: p.metrics,
        sink: p.sink,
        service_health: ServiceHealthServers::default(),
        listed,
        synced: false,
    };
    // Everything may be listed already.
    l.flush(Instant::now()).await;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT.min(p.sync_period));
    let mut devices = tokio::time::interval(DEVICE_CHECK);
    let mut sweep = tokio::time::interval(p.full_sync_period);
    let mut links = tokio::time::interval(crate::datapath::LINK_CHECK_PERIOD);
    for t in [&mut heartbeat, &mut devices, &mut sweep, &mut links] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.reset();
    }
    loop {
        let retry_at = l.dp.next_retry();
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { bail!("the source stopped") };
                let received = Instant::now();
                l.health.queued();
                l.apply(ev);
                let mut n = 1;
                while n < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(ev) => { l.apply(ev); n += 1; }
                        Err(_) => break,
                    }
                }
                l.flush(received).await;
            }
            Some(ask) = status_rx.recv() => {
                let all = l.dp.status(Instant::now());
                let _ = ask.send(Status::new(all, &l.ctl.diagnostics()));
            }
            () = retry => {
                let out = l.dp.retry_due(Instant::now());
                if out.changed() || !out.failed.is_empty() {
                    info!(added = out.added, updated = out.updated, errors = out.failed.len(), "retried");
                }
                l.record_failures(&out.failed);
            }
            _ = sweep.tick() => {
                if l.synced {
                    let f = l.ctl.full_sync(&mut l.dp, Instant::now());
                    l.after(f, None, "full sync").await;
                }
            }
            _ = heartbeat.tick() => l.health.beat(),
            _ = links.tick() => {
                let report = l.dp.verify_links();
                l.health.links_verified(&report);
                l.metrics.links_verified(&report);
            }
            _ = devices.tick() => if l.synced { l.sync_node() },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping: the datapath stays in place (ferry cleanup removes it)");
    Ok(())
}

/// Logs a new problem once and, with the API source, publishes it as an
/// Event on its Service.
fn report_diagnostic(d: &Diagnostic, sink: Option<(&mut EventSink, &Controller)>) {
    match d.severity {
        Severity::Warning => warn!("skipped: {d}"),
        Severity::Info => info!("{d}"),
    }
    if let Some((sink, ctl)) = sink {
        let svc = crate::model::ServiceName {
            namespace: d.namespace.clone(),
            name: d.name.clone(),
        };
        sink.publish(d, ctl.tracker.service(&svc));
    }
}

impl Loop {
    fn apply(&mut self, ev: Event) {
        self.listed.note(&ev);
        let new = self.ctl.apply(ev);
        self.report(&new);
    }

    /// Programs what the events changed (everything, the first time).
    async fn flush(&mut self, received: Instant) {
        let (svc_before, slices_before) = (
            self.ctl.tracker.service_changes,
            self.ctl.tracker.slice_changes,
        );
        if !self.synced {
            if !self.listed.all() {
                return;
            }
            // Everything is listed: make the kernel exactly that, over
            // whatever a previous agent left.
            let (s, e, n) = self.ctl.tracker.counts();
            info!(
                services = s,
                slices = e,
                nodes = n,
                "every kind listed: full sync"
            );
            self.sync_node();
            let f = self.ctl.full_sync(&mut self.dp, Instant::now());
            self.synced = true;
            self.after(f, Some(received), "synced").await;
            self.health.set_ready();
            return;
        }
        if self.ctl.tracker.this_node_changed || self.ctl.tracker.cluster_nodes_changed {
            self.sync_node();
        }
        if !self.ctl.has_work() {
            self.health.synced();
            return;
        }
        let f = self.ctl.flush(&mut self.dp, Instant::now());
        self.metrics.changes(
            self.ctl.tracker.service_changes - svc_before,
            self.ctl.tracker.slice_changes - slices_before,
        );
        self.after(f, Some(received), "synced").await;
    }

    /// Logs, metrics, status and the health check servers after a sync.
    async fn after(&mut self, f: Flush, received: Option<Instant>, what: &str) {
        let o = &f.outcome;
        let p = self.dp.table().programmer();
        let programmed = metrics::Programmed {
            frontends: p.frontend_count(),
            backends: p.backend_count(),
            service_entries: Family::ALL.map(|f| p.service_entries_of(f)),
            backends_of: Family::ALL.map(|f| p.backend_count_of(f)),
            rev_nat: Family::ALL.map(|f| p.rev_nat_count_of(f)),
            map_writes: p.writes(),
        };
        let reasons: Vec<&'static str> = o.failed.iter().map(|(_, _, e)| e.reason()).collect();
        self.metrics.sync_done(f.took, programmed, &reasons);
        self.metrics.network_programmed(&f.triggers);
        let no_local = self.ctl.no_local_endpoints();
        self.metrics
            .no_local_endpoints(no_local.internal, no_local.external);
        if o.changed() || !o.failed.is_empty() {
            info!(
                added = o.added,
                updated = o.updated,
                removed = o.removed,
                unchanged = o.unchanged,
                errors = o.failed.len(),
                services = f.services,
                took_us = f.took.as_micros() as u64,
                event_us = received.map_or(0, |r| r.elapsed().as_micros() as u64),
                "{what}"
            );
        }
        self.dp
            .retry_from(o.failed.iter().map(|(k, _, _)| k), Instant::now());
        self.record_failures(&o.failed);
        self.report(&f.new_diags);
        if f.health_checks_changed {
            self.service_health.sync(self.ctl.health_checks()).await;
        }
        self.health.synced();
    }

    /// One log line per failure as it happens (the retry's own failures
    /// repeat the line only when the error changes).
    fn record_failures(
        &mut self,
        failed: &[(
            crate::model::FrontendKey,
            crate::model::ServiceName,
            crate::error::Error,
        )],
    ) {
        for (key, svc, e) in failed {
            let repeat = self
                .dp
                .table()
                .failures()
                .find(|(k, _)| *k == key)
                .is_some_and(|(_, f)| f.attempts > 1);
            if repeat {
                debug!(service = %svc, frontend = %key, error = %e, "programming failed again");
            } else {
                warn!(service = %svc, frontend = %key, error = %e, "programming failed: will retry");
            }
        }
    }

    /// Logs each new problem once, and tells its Service's owner.
    fn report(&mut self, diags: &[Diagnostic]) {
        for d in diags {
            report_diagnostic(d, self.sink.as_mut().map(|s| (s, &self.ctl)));
        }
    }

    /// The node's devices and addresses, and its eligibility for load
    /// balancers (KEP-3836).
    fn sync_node(&mut self) {
        let t = &mut self.ctl.tracker;
        t.this_node_changed = false;
        t.cluster_nodes_changed = false;
        let this = t.this_node();
        let eligible = this.is_none_or(|n| !n.deleting && !n.to_be_deleted);
        self.health.set_node_eligible(eligible);
        let settings = NodeSettings {
            node_ips: this.map(|n| n.ips.clone()).unwrap_or_default(),
            cluster_node_ips: t
                .cluster_node_ips()
                .iter()
                .copied()
                .collect::<BTreeSet<_>>(),
        };
        if let Err(e) = self.dp.sync_node(&settings) {
            warn!(error = %e, "north-south devices");
        }
    }
}
