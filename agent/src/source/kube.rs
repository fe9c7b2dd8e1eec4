//! The Kubernetes API source: Services, EndpointSlices and this node's Node object through
//! kube-rs reflectors, sent as the same [`Update`] snapshots as the manifests source.
//!
//! Each of the three kinds has its own reflector task: a `watcher` (list+watch, or a streaming
//! list where the server supports it) with kube's default backoff, feeding a reflector
//! [`Store`]. The tasks only signal "synced" (an `InitDone`: a first list, or a re-list after
//! an expired resourceVersion) and "changed" (an applied or deleted object). A coordinator
//! sends the first snapshot once all three stores are synced, then a fresh snapshot after
//! each change, coalescing bursts over [`DEBOUNCE`].
//!
//! Nothing is ever cleared on an error: a store keeps its last state while the API server is
//! down, and the datapath keeps serving it. A re-list replaces a store's content atomically
//! (at `InitDone`), so deletions missed while cut off disappear then.

#[cfg(test)]
mod contract_tests;

use std::{
    collections::BTreeMap,
    fmt::{self, Debug},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tracing::{debug, info, warn};

use super::Update;
use crate::model::Inputs;

/// How long the coordinator gathers changes before sending one snapshot: a burst (a rollout
/// touching many slices, a re-list) becomes one diff, while a single change still reaches
/// the kernel in well under kube-proxy's 1 s minimum sync period. The window is not extended
/// by further events, so a steady stream of changes still yields a snapshot every 20 ms.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// Links an EndpointSlice to its Service; slices without it are not a Service's.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// kube-proxy's own informer filter: objects of another proxy and headless Services' slices
/// are never needed, so the API server need not send them.
const NOT_OTHER_PROXY_NOR_HEADLESS: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// How each watch fetches its initial state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// Streaming lists, falling back to list+watch for good when the server refuses them
    /// (Kubernetes 1.33 answers 422 while its WatchList feature gate is off; 1.27..1.31
    /// likewise unless enabled).
    #[default]
    Auto,
    /// Streaming lists only (`sendInitialEvents=true`, one watch request).
    Streaming,
    /// A paginated list, then a watch from its resourceVersion.
    ListWatch,
}

/// The API client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "no API server configuration (no --kubeconfig, KUBECONFIG, ~/.kube/config nor in-cluster service account): {0}"
    )]
    Infer(#[source] InferConfigError),
    #[error("building the API client: {0}")]
    Client(#[source] kube::Error),
}

/// An API client from `kubeconfig`, else `KUBECONFIG` (or ~/.kube/config), else the
/// in-cluster service account. Reads local files only: the server is not contacted yet.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc_error = |source| KubeError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(kc_error)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(kc_error)?
        }
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// What [`watch`] needs besides the client.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub node_name: String,
    pub initial_list: InitialList,
}

/// The three kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Services,
    EndpointSlices,
    Node,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Services, Kind::EndpointSlices, Kind::Node];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Services => "Services",
            Kind::EndpointSlices => "EndpointSlices",
            Kind::Node => "Node",
        })
    }
}

/// What a reflector task tells the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// The store holds a complete list (first sync or re-list).
    Synced(Kind),
    /// An object was applied or deleted.
    Changed(Kind),
}

/// Watches the API until `tx` is closed, sending a snapshot once every store is synced and
/// after each (debounced) change.
pub async fn watch(client: Client, opts: WatchOptions, tx: mpsc::Sender<Update>) {
    let (signals, mut rx) = mpsc::channel(256);
    // Dropping the set (when this function returns) aborts the reflector tasks.
    let mut tasks = JoinSet::new();
    let node_selector = format!("metadata.name={}", opts.node_name);
    let selectors = |kind| match kind {
        Kind::Services => Selectors {
            labels: Some(NOT_OTHER_PROXY_NOR_HEADLESS.into()),
            fields: None,
        },
        Kind::EndpointSlices => Selectors {
            labels: Some(format!(
                "{SERVICE_NAME_LABEL},{NOT_OTHER_PROXY_NOR_HEADLESS}"
            )),
            fields: None,
        },
        Kind::Node => Selectors {
            labels: None,
            fields: Some(node_selector.clone()),
        },
    };
    let mode = opts.initial_list;
    let services = Reflector::<Service>::spawn(
        &mut tasks,
        Kind::Services,
        Api::all(client.clone()),
        selectors(Kind::Services),
        mode,
        signals.clone(),
    );
    let slices = Reflector::<EndpointSlice>::spawn(
        &mut tasks,
        Kind::EndpointSlices,
        Api::all(client.clone()),
        selectors(Kind::EndpointSlices),
        mode,
        signals.clone(),
    );
    let nodes = Reflector::<Node>::spawn(
        &mut tasks,
        Kind::Node,
        Api::all(client),
        selectors(Kind::Node),
        mode,
        signals,
    );
    let stores = Stores {
        services,
        slices,
        nodes,
        node_name: opts.node_name,
    };
    info!(node = %stores.node_name, initial_list = ?mode, "watching the Kubernetes API");

    let mut synced = [false; Kind::ALL.len()];
    let mut first_sent = false;
    let mut due: Option<Instant> = None;
    loop {
        let deadline = async {
            match due {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = rx.recv() => {
                let Some(signal) = signal else { return };
                debug!(?signal, "reflector");
                if let Signal::Synced(kind) = signal {
                    synced[kind.index()] = true;
                }
                if !first_sent {
                    // The first snapshot goes out as soon as the last store is complete:
                    // nothing to coalesce with, and /readyz waits for it.
                    if synced.iter().all(|&s| s) {
                        info!("every store synced: sending the first full snapshot");
                        first_sent = true;
                        if tx.send(stores.snapshot()).await.is_err() {
                            return;
                        }
                    }
                } else {
                    due.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                }
            }
            () = deadline => {
                due = None;
                if tx.send(stores.snapshot()).await.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// Readers of the three stores.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    node_name: String,
}

impl Stores {
    fn snapshot(&self) -> Update {
        Update {
            inputs: Inputs {
                services: keyed(self.services.state()),
                slices: keyed(self.slices.state()),
                nodes: self
                    .nodes
                    .state()
                    .into_iter()
                    .map(|n| (n.name_any(), Arc::unwrap_or_clone(n)))
                    .collect(),
                node_name: self.node_name.clone(),
                // Settings that are not the cluster's (maglev_default...) are the agent's.
                ..Inputs::default()
            },
            diagnostics: Vec::new(),
        }
    }
}

fn keyed<K: ResourceExt + Clone>(objects: Vec<Arc<K>>) -> BTreeMap<(String, String), K> {
    objects
        .into_iter()
        .map(|o| {
            (
                (o.namespace().unwrap_or_default(), o.name_any()),
                Arc::unwrap_or_clone(o),
            )
        })
        .collect()
}

/// Label and field selectors of one watch.
#[derive(Clone, Debug, Default)]
struct Selectors {
    labels: Option<String>,
    fields: Option<String>,
}

impl Selectors {
    fn config(&self, streaming: bool) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(labels) = &self.labels {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.fields {
            config = config.fields(fields);
        }
        if streaming {
            config.streaming_lists()
        } else {
            config
        }
    }
}

/// One kind's watch and store.
struct Reflector<K: Resource<DynamicType = ()> + Clone + 'static> {
    kind: Kind,
    api: Api<K>,
    selectors: Selectors,
    mode: InitialList,
    writer: Writer<K>,
    signals: mpsc::Sender<Signal>,
}

impl<K> Reflector<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts the task; returns the store it fills.
    fn spawn(
        tasks: &mut JoinSet<()>,
        kind: Kind,
        api: Api<K>,
        selectors: Selectors,
        mode: InitialList,
        signals: mpsc::Sender<Signal>,
    ) -> Store<K> {
        let (store, writer) = reflector::store();
        tasks.spawn(
            Reflector {
                kind,
                api,
                selectors,
                mode,
                writer,
                signals,
            }
            .run(),
        );
        store
    }

    async fn run(mut self) {
        let mut streaming = self.mode != InitialList::ListWatch;
        loop {
            let config = self.selectors.config(streaming);
            let mut events = watcher(self.api.clone(), config).default_backoff().boxed();
            // The watcher retries for ever; it ends only when we restart it without
            // streaming lists (or the coordinator is gone).
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event.modify(slim),
                    Err(e)
                        if streaming && self.mode == InitialList::Auto && refuses_streaming(&e) =>
                    {
                        info!(
                            kind = %self.kind,
                            "the API server refused a streaming list ({e}): using list+watch"
                        );
                        streaming = false;
                        break;
                    }
                    Err(e) => {
                        warn!(
                            kind = %self.kind,
                            "watch failed, retrying with backoff (the datapath keeps its state): {e}"
                        );
                        continue;
                    }
                };
                self.writer.apply_watcher_event(&event);
                let signal = match event {
                    watcher::Event::InitDone => Signal::Synced(self.kind),
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                        Signal::Changed(self.kind)
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                };
                if let Signal::Synced(kind) = signal {
                    debug!(%kind, objects = self.writer.as_reader().len(), "listed");
                }
                if self.signals.send(signal).await.is_err() {
                    return;
                }
            }
            if self.signals.is_closed() {
                return;
            }
        }
    }
}

/// A server without streaming lists rejects `sendInitialEvents` as an invalid request.
fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 400 || s.code == 422)
}

/// Drops what ferry never reads and that can be large: managed fields on every object, and a
/// Node's list of container images.
fn slim<K: Resource + 'static>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(node) = (obj as &mut dyn std::any::Any).downcast_mut::<Node>()
        && let Some(status) = node.status.as_mut()
    {
        status.images = None;
    }
}
