//! `ferry agent`: load the datapath, adopt what a previous agent left, then
//! program every update from the source as a diff until SIGTERM — which
//! leaves the datapath in place, as kube-proxy leaves its rules.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    cli::{AgentArgs, LbAlgorithm},
    datapath::{
        Datapath, LoadOptions, MapSizes, Maps, Programmer,
        ct_gc::{self, ConntrackGc},
    },
    model::{self, BackendAddr, Desired, Diagnostic, Severity},
    northsouth::{self, NorthSouth},
    paths::{self, PinDir},
    server::{
        health::Health,
        http,
        metrics::{self, Metrics},
    },
    source::{self, Update, changes::Changes},
};

/// Where the agent's view of the cluster comes from.
enum Source {
    Manifests(std::path::PathBuf),
    Kube(::kube::Client),
}

/// A sync that failed is retried after this long (kube-proxy backs off
/// between its minimum and full sync periods).
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname().context("no --node-name, no $NODE_NAME and no hostname")?,
    };
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => paths::cgroup2_mount().context("finding the cgroup2 mount (--cgroup)")?,
    };
    // Static manifests, or the API: --kubeconfig, else KUBECONFIG, else in-cluster.
    let source = match args.manifests.clone() {
        Some(path) => Source::Manifests(path),
        None => Source::Kube(
            source::kube::client(args.kubeconfig.as_deref())
                .await
                .context("configuring the Kubernetes API client")?,
        ),
    };
    info!(node = %node_name, cgroup = %cgroup.display(), bpffs = %args.bpffs.display(), "starting");

    let health = Health::default();
    let metrics = Metrics::default();
    {
        let h = health.clone();
        http::serve("healthz", args.healthz_bind_address, move |path| {
            let h = h.clone();
            async move { h.reply(&path) }
        })
        .await
        .with_context(|| {
            format!(
                "binding --healthz-bind-address {}",
                args.healthz_bind_address
            )
        })?;
    }

    serve_metrics(&args, &metrics).await?;

    let (mut datapath, maps) = Datapath::load(&LoadOptions {
        pin_dir: args.bpffs.clone(),
        cgroup: cgroup.clone(),
        sizes: MapSizes {
            conntrack: args.conntrack_max,
            maglev_services: args.maglev_max_services,
        },
    })
    .context("loading the datapath")?;
    // Conntrack collection and fill, off this loop (stops when dropped).
    let _conntrack_gc =
        ConntrackGc::spawn(&datapath.pins).context("starting the conntrack upkeep")?;
    let mut programmer = Programmer::adopt(maps);
    let mut north_south = NorthSouth::new(args.interfaces.clone(), args.lb_mode);
    let maglev_default = args.lb_algorithm == LbAlgorithm::Maglev;
    info!(
        frontends = programmer.frontend_count(),
        "adopted the kernel's state"
    );

    let (tx, mut rx) = mpsc::channel::<Update>(4);
    match source {
        Source::Manifests(path) => {
            tokio::spawn(source::manifests::watch(path, node_name.clone(), tx));
        }
        Source::Kube(client) => {
            let opts = source::kube::WatchOptions {
                node_name: node_name.clone(),
                initial_list: args.initial_list,
            };
            tokio::spawn(source::kube::watch(client, opts, tx));
        }
    }
    // For the change counters and the network programming latency.
    let started = SystemTime::now();
    let mut inputs: Option<model::Inputs> = None;
    let mut triggers: Vec<SystemTime> = Vec::new();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut reporter = DiagnosticReporter::default();
    let mut last: Option<Desired> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = rx.recv() => {
                let Some(mut update) = update else { bail!("the source stopped") };
                update.inputs.maglev_default = maglev_default;
                health.queued();
                let changes = Changes::between(inputs.as_ref(), &update.inputs, started);
                metrics.changes(changes.services, changes.endpoint_slices);
                triggers.extend(changes.trigger_times);
                let (desired, diags) = model::translate(&update.inputs);
                reporter.report(update.diagnostics.iter().chain(&diags));
                let (ok, gone_udp) = sync(&mut programmer, &desired, &health, &metrics);
                destroy_udp_sockets(&mut datapath, &gone_udp);
                north_south.sync(&desired, &mut datapath, programmer.maps_mut()).await;
                if let Err(e) =
                    northsouth::sync_cluster_nodes(programmer.maps_mut(), &desired.cluster_node_ips)
                {
                    warn!(error = %e, "cluster node addresses (DSR)");
                }
                retry_at = (!ok).then(|| tokio::time::Instant::now() + RETRY_AFTER);
                last = Some(desired);
                inputs = Some(update.inputs);
                if ok {
                    metrics.network_programmed(&std::mem::take(&mut triggers));
                }
            }
            () = retry => {
                let (ok, gone_udp) = match last.as_ref() {
                    Some(d) => sync(&mut programmer, d, &health, &metrics),
                    None => (true, Vec::new()),
                };
                destroy_udp_sockets(&mut datapath, &gone_udp);
                retry_at = (!ok).then(|| tokio::time::Instant::now() + RETRY_AFTER);
                if ok {
                    metrics.network_programmed(&std::mem::take(&mut triggers));
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    info!("stopping: the datapath stays in place (ferry cleanup removes it)");
    Ok(())
}

/// Connected UDP sockets still on a backend that left every service get
/// destroyed, so their applications reconnect (cilium#12859).
fn destroy_udp_sockets(datapath: &mut Datapath, gone: &[BackendAddr]) {
    if gone.is_empty() {
        return;
    }
    if let Some(gc) = &mut datapath.sock_gc {
        gc.run(&mut datapath.ebpf, gone);
    }
}

/// Programs `desired`; true when every frontend made it into the kernel,
/// and the UDP backends it removed.
fn sync(
    p: &mut Programmer,
    desired: &Desired,
    health: &Health,
    metrics: &Metrics,
) -> (bool, Vec<BackendAddr>) {
    let t0 = Instant::now();
    let report = p.apply(desired);
    let took = t0.elapsed();
    let programmed = metrics::Programmed {
        frontends: p.frontend_count(),
        backends: p.backend_count(),
        service_entries: p.service_entries(),
        rev_nat: p.rev_nat_count(),
    };
    metrics.sync_done(took, programmed, &report.error_reasons);
    let ok = report.errors.is_empty();
    health.synced(ok);
    if report.changed() || !ok {
        info!(
            added = report.added,
            updated = report.updated,
            removed = report.removed,
            unchanged = report.unchanged,
            errors = report.errors.len(),
            took_us = took.as_micros() as u64,
            "synced"
        );
    }
    for e in &report.errors {
        warn!("{e}");
    }
    (ok, report.gone_udp)
}

async fn serve_metrics(args: &AgentArgs, metrics: &Metrics) -> anyhow::Result<()> {
    let m = metrics.clone();
    let pins = PinDir::new(&args.bpffs);
    http::serve("metrics", args.metrics_bind_address, move |path| {
        let m = m.clone();
        let pins = pins.clone();
        async move {
            if path != "/metrics" {
                return http::Reply::text(hyper::StatusCode::NOT_FOUND, "not found\n");
            }
            // The CT map filling up is the failure operators must see coming
            // (cilium#24177): measured at every scrape, not every collection.
            if let Ok(fill) = ct_gc::fill(&pins) {
                m.conntrack(fill);
            }
            // Own handle on the pinned maps: scrapes never wait for a sync.
            let counters: Vec<(&'static str, u64)> = Maps::open_pinned(&pins)
                .map(|maps| {
                    maps.counters()
                        .into_iter()
                        .map(|(c, n)| (c.name(), n))
                        .collect()
                })
                .unwrap_or_default();
            http::Reply {
                status: hyper::StatusCode::OK,
                content_type: "text/plain; version=0.0.4",
                body: m.render(&counters),
            }
        }
    })
    .await
    .with_context(|| {
        format!(
            "binding --metrics-bind-address {}",
            args.metrics_bind_address
        )
    })?;
    Ok(())
}

/// Logs each diagnostic once while it persists, not on every update.
#[derive(Default)]
struct DiagnosticReporter {
    seen: BTreeSet<String>,
}

impl DiagnosticReporter {
    fn report<'a>(&mut self, diags: impl Iterator<Item = &'a Diagnostic>) {
        let mut now = BTreeSet::new();
        for d in diags {
            let line = d.to_string();
            if !self.seen.contains(&line) {
                match d.severity {
                    Severity::Warning => warn!("skipped: {line}"),
                    Severity::Info => info!("{line}"),
                }
            }
            now.insert(line);
        }
        self.seen = now;
    }
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}
