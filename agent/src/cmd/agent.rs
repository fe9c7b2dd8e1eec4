//! `ferry agent`: parse the flags, start the servers, load the datapath
//! (adopting what a previous agent left), start the source, and hand all of
//! it to the control loop ([`crate::control::run`]). SIGTERM leaves the
//! datapath in place, as kube-proxy leaves its rules.

use std::time::SystemTime;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::{
    cli::{AgentArgs, LbAlgorithm},
    cmd::preflight,
    control::{self, events::EventSink, run::Parts},
    datapath::{
        Capacities, Datapath, LoadOptions, MapSizes, Maps, NorthSouth,
        ct_gc::{self, ConntrackGc},
    },
    model::translate::Config,
    paths::{self, PinDir},
    server::{http, metrics::Metrics, proxy_health::ProxyHealth, status},
    source,
};

/// Events queued between the source and the loop (the source waits when
/// the loop is behind).
const EVENT_QUEUE: usize = 4096;

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let started = SystemTime::now();
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname().context("no --node-name, no $NODE_NAME and no hostname")?,
    };
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => paths::cgroup2_mount().context("finding the cgroup2 mount (--cgroup)")?,
    };
    // Static manifests, or the API (where its server is: source::kube::apiserver).
    let client = match &args.manifests {
        Some(_) => None,
        None => {
            let mut sources = source::kube::apiserver::Sources::new(
                args.kubeconfig.as_deref(),
                args.master.as_deref(),
            );
            sources.service_account = args.service_account_dir.clone();
            if !args.apiserver_kubeconfig.is_empty() {
                sources.discover = args.apiserver_kubeconfig.clone();
            }
            let (client, origin) = source::kube::client(&sources)
                .await
                .context("configuring the Kubernetes API client")?;
            if origin == source::kube::apiserver::Origin::InCluster {
                warn!(
                    from = %origin,
                    "API server: the kubernetes Service's ClusterIP, which only answers once a proxy serves it: set --master (FERRY_APISERVER) or mount kube-proxy's or the kubelet's kubeconfig (deploy/README)"
                );
            } else {
                info!(from = %origin, "API server");
            }
            Some(client)
        }
    };
    info!(node = %node_name, cgroup = %cgroup.display(), bpffs = %args.bpffs.display(), "starting");
    if let Some(path) = &args.config {
        info!(config = %path.display(), "kube-proxy's configuration read");
        if !args.config_ignored.is_empty() {
            warn!(
                config = %path.display(),
                fields = %args.config_ignored.join(", "),
                "fields ferry does not use (it honours {})",
                crate::cmd::kube_proxy_config::HONOURED.join(", ")
            );
        }
    }
    // What `ferry preflight` reports, logged before anything can fail on it.
    let target = preflight::Target {
        bpffs: &args.bpffs,
        cgroup: Some(&cgroup),
        bind: [args.healthz_bind_address, args.metrics_bind_address],
    };
    let checks = preflight::checks(&target);
    // Connected UDP sockets in pods: destroyed only where their namespaces can be entered.
    let pods_reach = checks
        .iter()
        .any(|c| c.what == "udp-gc" && c.status == preflight::Status::Ok);
    for c in checks {
        match c.status {
            preflight::Status::Ok => debug!("preflight: {c}"),
            preflight::Status::Warn => warn!("preflight: {c}"),
            preflight::Status::Fail => error!("preflight: {c}"),
        }
    }
    // Before any server binds: idle connections must not run us out of files.
    crate::server::fd_limit::raise_soft_to_hard();

    let health = ProxyHealth::new(args.sync_period.into());
    let metrics = Metrics::default();
    let (status_asker, status_requests) = status::channel();
    {
        let h = health.clone();
        http::serve_when_free("healthz", args.healthz_bind_address, move |path| {
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
    serve_metrics(&args, &metrics, &status_asker).await?;

    // The datapath loads (the verifier takes a few hundred milliseconds) on
    // a thread of its own while the source starts reading: the first full
    // sync waits for both.
    let sizes = MapSizes {
        conntrack: args.conntrack_max,
        maglev_services: args.maglev_max_services,
    };
    let load = LoadOptions {
        pin_dir: args.bpffs.clone(),
        cgroup: cgroup.clone(),
        sizes,
    };
    let caps = Capacities {
        maglev_tables: sizes.maglev_services,
        ..Capacities::default()
    };
    let north_south = NorthSouth {
        interfaces: args.interfaces.clone(),
        mode: args.lb_mode,
        external_cluster_ip: args.external_cluster_ip,
        acceleration: args.acceleration,
        socket_lb_host_netns_only: args.socket_lb_host_netns_only,
    };
    let pins = PinDir::new(&args.bpffs);
    let features = metrics.clone();
    let datapath = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let datapath = Datapath::load(&load, caps, north_south).context("loading the datapath")?;
        let [north_south, udp] = datapath.features();
        features.features(&[
            north_south,
            udp,
            ("udp_socket_destroy_pods", udp.1 && pods_reach),
        ]);
        // Conntrack collection and fill, off the control loop (stops when dropped).
        let gc = ConntrackGc::spawn(&pins).context("starting the conntrack upkeep")?;
        info!(
            frontends = datapath.table().programmer().frontend_count(),
            "adopted the kernel's state"
        );
        Ok((datapath, gc))
    });

    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let sink = match (&args.manifests, client) {
        (Some(path), _) => {
            tokio::spawn(source::manifests::watch(
                path.clone(),
                node_name.clone(),
                tx,
            ));
            None
        }
        (None, Some(client)) => {
            let opts = source::kube::WatchOptions {
                node_name: node_name.clone(),
                initial_list: args.initial_list,
            };
            tokio::spawn(source::kube::watch(client.clone(), opts, tx));
            Some(EventSink::new(client, &node_name))
        }
        (None, None) => unreachable!("a client is made when there are no manifests"),
    };
    control::run(Parts {
        cfg: Config {
            node_name,
            maglev_default: args.lb_algorithm == LbAlgorithm::Maglev,
            external_ip_ranges: args.external_ip_ranges.clone(),
            service_cidrs: args.service_cluster_ip_range.clone(),
        },
        datapath,
        events: rx,
        health,
        metrics,
        status: status_requests,
        sink,
        full_sync_period: args.full_sync_period.into(),
        sync_period: args.sync_period.into(),
        started,
    })
    .await
}

async fn serve_metrics(
    args: &AgentArgs,
    metrics: &Metrics,
    status: &status::Asker,
) -> anyhow::Result<()> {
    let m = metrics.clone();
    let st = status.clone();
    let pins = PinDir::new(&args.bpffs);
    http::serve_when_free("metrics", args.metrics_bind_address, move |path| {
        let m = m.clone();
        let st = st.clone();
        let pins = pins.clone();
        async move {
            match path.as_str() {
                "/metrics" => {
                    // The CT map filling up is the failure operators must see
                    // coming (cilium#24177): measured at every scrape.
                    if let Ok(fill) = ct_gc::fill(&pins) {
                        m.conntrack(&fill);
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
                status::PATH => match st.json().await {
                    Some(json) => http::Reply::json(hyper::StatusCode::OK, json),
                    None => http::Reply::text(
                        hyper::StatusCode::SERVICE_UNAVAILABLE,
                        "the control loop did not answer\n",
                    ),
                },
                _ => http::Reply::text(hyper::StatusCode::NOT_FOUND, "not found\n"),
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

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}
