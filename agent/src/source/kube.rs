//! The Kubernetes API source: Services, EndpointSlices and Nodes through kube-rs watchers,
//! passed through as per-object events (the same [`Event`]s as the manifests source).
//!
//! Each kind has its own task: a `watcher` (list+watch, or a streaming list where the server
//! supports it) with kube's default backoff. Every object is converted to ferry's compact form
//! as it arrives and the original dropped: the agent keeps no reflector store, only the
//! control loop's tracker holds the cluster. A list (the first, or a re-list after an expired
//! resourceVersion) ends with a [`Delta::Listed`] naming every object in it, so deletions
//! missed while cut off disappear then.
//!
//! Nothing is ever cleared on an error: while the API server is down the tracker keeps its
//! state, and the datapath keeps serving it.

pub mod apiserver;
#[cfg(test)]
mod contract_tests;

use std::{
    fmt::{self, Debug},
    path::PathBuf,
};

use futures::StreamExt as _;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::{
    Api, Client, Resource, ResourceExt,
    config::{InferConfigError, KubeconfigError},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{debug, info, warn};

use super::event::{Delta, Event};
use crate::model::{
    ServiceName,
    docs::{NodeDoc as Node, ServiceDoc as Service, SliceDoc as EndpointSlice},
    objects::{NodeObj, ObjKey, SERVICE_NAME_LABEL, ServiceObj, SliceObj},
};

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
    #[error("--master {url}: not a URL: {detail}")]
    Master { url: String, detail: String },
    #[error(
        "no API server address: a service account but no --master, no kubeconfig to take the server from ({}) and no KUBERNETES_SERVICE_HOST",
        apiserver::DISCOVERY_KUBECONFIGS.join(", ")
    )]
    NoServer,
}

/// An API client and where its server came from ([`apiserver`]). Reads local files only:
/// the server is not contacted yet.
pub async fn client(
    sources: &apiserver::Sources,
) -> Result<(Client, apiserver::Origin), KubeError> {
    let (config, origin) = apiserver::config(sources).await?;
    let client = Client::try_from(config).map_err(KubeError::Client)?;
    Ok((client, origin))
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
    Nodes,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Services => "Services",
            Kind::EndpointSlices => "EndpointSlices",
            Kind::Nodes => "Nodes",
        })
    }
}

/// Watches the API until `tx` is closed, sending every change as it comes.
pub async fn watch(client: Client, opts: WatchOptions, tx: mpsc::Sender<Event>) {
    // Dropping the set (when this function returns) aborts the watch tasks.
    let mut tasks = JoinSet::new();
    let mode = opts.initial_list;
    let services = Selectors {
        labels: Some(NOT_OTHER_PROXY_NOR_HEADLESS.into()),
        fields: None,
    };
    let slices = Selectors {
        labels: Some(format!(
            "{SERVICE_NAME_LABEL},{NOT_OTHER_PROXY_NOR_HEADLESS}"
        )),
        fields: None,
    };
    tasks.spawn(
        Watch::<Service> {
            kind: Kind::Services,
            api: Api::all(client.clone()),
            selectors: services,
            mode,
            tx: tx.clone(),
            node_name: opts.node_name.clone(),
        }
        .run(),
    );
    tasks.spawn(
        Watch::<EndpointSlice> {
            kind: Kind::EndpointSlices,
            api: Api::all(client.clone()),
            selectors: slices,
            mode,
            tx: tx.clone(),
            node_name: opts.node_name.clone(),
        }
        .run(),
    );
    // Every Node: their addresses are the NodePorts a DSR option may name and the addresses
    // no externalIP may take.
    tasks.spawn(
        Watch::<Node> {
            kind: Kind::Nodes,
            api: Api::all(client),
            selectors: Selectors::default(),
            mode,
            tx: tx.clone(),
            node_name: opts.node_name.clone(),
        }
        .run(),
    );
    info!(node = %opts.node_name, initial_list = ?mode, "watching the Kubernetes API");
    tx.closed().await;
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

/// How one kind's objects become events.
trait Convert:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn applied(&self, node_name: &str) -> Event;
    fn deleted(&self) -> Event;
    fn listed(keys: Vec<ObjKey>) -> Event;
}

fn key_of<K: ResourceExt>(o: &K) -> ObjKey {
    ObjKey::new(o.namespace().unwrap_or_default(), o.name_any())
}

impl Convert for Service {
    fn applied(&self, _: &str) -> Event {
        Event::Service(Delta::Applied(ServiceObj::from_doc(&key_of(self), self)))
    }
    fn deleted(&self) -> Event {
        let k = key_of(self);
        Event::Service(Delta::Deleted(ServiceName {
            namespace: k.namespace,
            name: k.name,
        }))
    }
    fn listed(keys: Vec<ObjKey>) -> Event {
        Event::Service(Delta::Listed(
            keys.into_iter()
                .map(|k| ServiceName {
                    namespace: k.namespace,
                    name: k.name,
                })
                .collect(),
        ))
    }
}

impl Convert for EndpointSlice {
    fn applied(&self, node_name: &str) -> Event {
        Event::Slice(Delta::Applied(SliceObj::from_doc(
            &key_of(self),
            self,
            node_name,
        )))
    }
    fn deleted(&self) -> Event {
        Event::Slice(Delta::Deleted(key_of(self)))
    }
    fn listed(keys: Vec<ObjKey>) -> Event {
        Event::Slice(Delta::Listed(keys))
    }
}

impl Convert for Node {
    fn applied(&self, _: &str) -> Event {
        Event::Node(Delta::Applied(NodeObj::from_doc(&self.name_any(), self)))
    }
    fn deleted(&self) -> Event {
        Event::Node(Delta::Deleted(self.name_any()))
    }
    fn listed(keys: Vec<ObjKey>) -> Event {
        Event::Node(Delta::Listed(keys.into_iter().map(|k| k.name).collect()))
    }
}

/// One kind's watch.
struct Watch<K> {
    kind: Kind,
    api: Api<K>,
    selectors: Selectors,
    mode: InitialList,
    tx: mpsc::Sender<Event>,
    node_name: String,
}

impl<K: Convert> Watch<K> {
    async fn run(self) {
        let mut streaming = self.mode != InitialList::ListWatch;
        loop {
            let config = self.selectors.config(streaming);
            let mut events = watcher(self.api.clone(), config).default_backoff().boxed();
            // The keys of the list in progress.
            let mut listing: Vec<ObjKey> = Vec::new();
            // The watcher retries for ever; it ends only when we restart it without
            // streaming lists (or the loop is gone).
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
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
                let out = match event {
                    watcher::Event::Init => {
                        listing.clear();
                        continue;
                    }
                    watcher::Event::InitApply(o) => {
                        listing.push(key_of(&o));
                        o.applied(&self.node_name)
                    }
                    watcher::Event::InitDone => {
                        debug!(kind = %self.kind, objects = listing.len(), "listed");
                        K::listed(std::mem::take(&mut listing))
                    }
                    watcher::Event::Apply(o) => o.applied(&self.node_name),
                    watcher::Event::Delete(o) => o.deleted(),
                };
                if self.tx.send(out).await.is_err() {
                    return;
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }
}

/// A server without streaming lists rejects `sendInitialEvents` as an invalid request.
fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 400 || s.code == 422)
}
