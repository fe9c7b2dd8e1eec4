//! A **test double of kube-apiserver**, which cannot be installed on these machines (no
//! container engine, no recent Go toolchain). It serves just what a kube-proxy-like client
//! reads — Services, discovery.k8s.io/v1 EndpointSlices and Nodes — and keeps the real
//! server's rules for them:
//!
//! - one global, monotonically increasing `resourceVersion` (etcd's revision), stamped on
//!   every write and returned in list responses' `metadata.resourceVersion`;
//! - lists with `limit`/`continue` pagination, label selectors (`key`, `!key`, `key=value`,
//!   `key!=value`) and the `metadata.name`/`metadata.namespace` field selectors;
//! - `watch=true` responses streaming newline-delimited ADDED/MODIFIED/DELETED/BOOKMARK/ERROR
//!   events, replaying the history after the requested `resourceVersion`, with objects that
//!   move into or out of a selector seen as ADDED or DELETED; progress BOOKMARKs when
//!   `allowWatchBookmarks=true`; `timeoutSeconds` ending the stream;
//! - streaming lists (`sendInitialEvents=true&resourceVersionMatch=NotOlderThan`, which also
//!   needs `allowWatchBookmarks=true`): the current objects as ADDED events, then a BOOKMARK
//!   annotated `k8s.io/initial-events-end: "true"`; or, when built without them, the 422 that
//!   Kubernetes 1.33 answers while its WatchList feature gate is off;
//! - an expired `resourceVersion` (older than the last compaction) answered by an ERROR event
//!   with code 410 **inside a 200 response**, and open watches ended the same way when the
//!   history is compacted;
//! - TLS with a generated CA and a leaf certificate for IP 127.0.0.1, an optional bearer
//!   token (401 without it), `Status` objects for errors, legacy discovery and `/version`.
//!
//! It is not a real API server: writes come through this module's methods (not HTTP),
//! there is no admission, validation or defaulting of objects, and `continue` pages are cut
//! from the current state rather than from the first page's snapshot.
//!
//! The double listens on 127.0.0.1 **inside a lab's node network namespace** (where the
//! agent runs): a short-lived thread enters the namespace and binds the socket, which stays
//! in that namespace, and a private tokio runtime serves it. Tests drive it directly: write
//! objects, stop and restart it (same port, same CA), stall watches, compact the history,
//! withhold list responses, and read the requests it saw.

mod http;
mod state;
mod tls;

use std::{
    fs::File,
    io,
    net::TcpListener as StdListener,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{runtime::Runtime, sync::watch, task::AbortHandle};

pub use self::{
    http::Logged,
    state::{ApiError, Key, Resource},
};
use self::{http::Shared, state::State, tls::Pki};
use crate::{manifests::Manifest, proc::lock};

/// How to run the double.
#[derive(Clone, Debug)]
pub struct Options {
    /// Port on 127.0.0.1 (0: any free port, kept across restarts).
    pub port: u16,
    /// Require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Serve streaming lists (the WatchList feature gate).
    pub streaming_lists: bool,
    /// How often watches that allow bookmarks get a progress BOOKMARK (the real server:
    /// about a minute; shorter here so that tests see them).
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 6443,
            token: Some("ferry-lab-token".into()),
            streaming_lists: true,
            bookmark_interval: Duration::from_secs(2),
        }
    }
}

/// The running double. Dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    pki: Pki,
    netns: Option<PathBuf>,
    port: u16,
    /// The accept loop first, then its connections.
    serving: Arc<Mutex<Vec<AbortHandle>>>,
    running: AtomicBool,
    rt: Option<Runtime>,
}

impl ApiServer {
    /// Starts the double on 127.0.0.1 in the network namespace `netns` (a /run/netns file),
    /// or in the caller's namespace when None.
    pub fn start_in(netns: Option<&Path>, opts: Options) -> Result<ApiServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lab-apiserver")
            .enable_all()
            .build()
            .context("the double's runtime")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            token: opts.token.clone(),
            streaming_lists: AtomicBool::new(opts.streaming_lists),
            hold_lists: watch::Sender::new(false),
            log: Mutex::new(Vec::new()),
            port: AtomicU16::new(opts.port),
        });
        let ticker = shared.clone();
        rt.spawn(async move {
            let mut every = tokio::time::interval(opts.bookmark_interval);
            loop {
                every.tick().await;
                lock(&ticker.state).bookmark_all();
            }
        });
        let mut server = ApiServer {
            shared,
            pki: Pki::generate().context("generating the double's certificates")?,
            netns: netns.map(Path::to_owned),
            port: opts.port,
            serving: Arc::new(Mutex::new(Vec::new())),
            running: AtomicBool::new(false),
            rt: Some(rt),
        };
        server.port = server.listen()?;
        server.shared.port.store(server.port, Ordering::Relaxed);
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// Writes a kubeconfig for the double (CA data and token embedded).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        tls::write_kubeconfig(
            path,
            &self.url(),
            &self.pki.ca_pem,
            self.shared.token.as_deref(),
        )
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    /// Binds (in the namespace) and spawns the accept loop; returns the bound port.
    fn listen(&self) -> Result<u16> {
        let std_listener = bind_in_netns(self.netns.as_deref(), self.port)
            .with_context(|| format!("binding 127.0.0.1:{} for the API double", self.port))?;
        let port = std_listener.local_addr()?.port();
        let _enter = self.rt().enter();
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.pki.server.clone());
        let (shared, serving) = (self.shared.clone(), self.serving.clone());
        let accept =
            self.rt().spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // As Go's net package does for every TCP connection (and so
                    // kube-apiserver): without it a watch event written while the
                    // previous one is unacknowledged waits for the delayed ACK (40 ms).
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    let conn = tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req| {
                            let shared = shared.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(http::handle(shared, req).await)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                    let mut tasks = lock(&serving);
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(conn.abort_handle());
                }
            });
        lock(&self.serving).insert(0, accept.abort_handle());
        self.running.store(true, Ordering::SeqCst);
        Ok(port)
    }

    /// Stops serving: the port is closed and every connection (open watches too) is cut, as
    /// when the API server goes down. The objects and the history stay.
    pub fn stop(&self) {
        let tasks: Vec<AbortHandle> = lock(&self.serving).drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in &tasks {
            while !t.is_finished() {
                thread::sleep(Duration::from_millis(5));
            }
        }
        lock(&self.shared.state).close_watches();
        self.running.store(false, Ordering::SeqCst);
    }

    /// Serves again on the same port with the same certificates.
    pub fn start(&self) -> Result<()> {
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.listen().map(drop)
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    fn write(&self, obj: &Value, must_exist: Option<bool>) -> Result<Value, ApiError> {
        lock(&self.shared.state).write(obj.clone(), must_exist)
    }

    /// Creates an object (409 if it exists); returns it as stored.
    pub fn create(&self, obj: &Value) -> Result<Value, ApiError> {
        self.write(obj, Some(false))
    }

    /// Replaces an object (404 if missing).
    pub fn update(&self, obj: &Value) -> Result<Value, ApiError> {
        self.write(obj, Some(true))
    }

    /// Creates or replaces an object.
    pub fn apply_value(&self, obj: &Value) -> Value {
        self.write(obj, None)
            .unwrap_or_else(|e| panic!("apply: {e:?}"))
    }

    /// Creates or replaces one of the lab's manifests (Service, EndpointSlice).
    pub fn apply(&self, obj: &impl Manifest) -> Value {
        self.apply_value(&obj.to_value())
    }

    pub fn delete_key(&self, key: &Key) -> Result<Value, ApiError> {
        lock(&self.shared.state).delete(key)
    }

    /// Deletes one of the lab's manifests (panics if it does not exist).
    pub fn delete(&self, obj: &impl Manifest) {
        let key = Key::of(&obj.to_value()).unwrap_or_else(|e| panic!("delete: {e:?}"));
        self.delete_key(&key)
            .unwrap_or_else(|e| panic!("delete {key:?}: {e:?}"));
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.state).rv
    }

    /// Compacts the history: watches from any earlier resourceVersion get 410, and every open
    /// watch receives a 410 ERROR event and is closed.
    pub fn compact(&self) {
        lock(&self.shared.state).compact();
    }

    /// Holds watch events back (a stalled connection) or delivers what was held.
    pub fn stall_watches(&self, stalled: bool) {
        lock(&self.shared.state).set_stalled(stalled);
    }

    /// Makes lists and streaming lists wait (true) or answer (false).
    pub fn hold_lists(&self, held: bool) {
        self.shared.hold_lists.send_replace(held);
    }

    /// Serve streaming lists or refuse them with 422.
    pub fn set_streaming_lists(&self, on: bool) {
        self.shared.streaming_lists.store(on, Ordering::SeqCst);
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// How many requests satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Logged) -> bool) -> usize {
        lock(&self.shared.log).iter().filter(|r| pred(r)).count()
    }

    pub fn open_watches(&self) -> usize {
        lock(&self.shared.state).open_watches()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A listening socket on 127.0.0.1:`port` in the namespace: bound by a thread that entered
/// it (setns affects only the calling thread, which then exits).
fn bind_in_netns(netns: Option<&Path>, port: u16) -> io::Result<StdListener> {
    let netns = netns.map(Path::to_owned);
    thread::spawn(move || {
        if let Some(path) = netns {
            let ns = File::open(&path)?;
            // SAFETY: setns(2) on an open namespace file; only this thread moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let listener = StdListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the binding thread panicked")))
}
