//! The agent's HTTP/1.1 servers (health, metrics, health-check node ports):
//! hyper with its tokio timer, for GET endpoints, hardened against clients
//! that hold connections open.
//!
//! - hyper's header read timeout closes a connection that has not sent a
//!   complete request head in time. Its timer starts whenever the connection
//!   waits for a head: after accept (slowloris, or nothing sent at all) and
//!   after each response (an idle keep-alive connection). So the one setting
//!   is both the header timeout and the idle timeout.
//! - Connections are capped per server and in total ([`super::conns`]).
//! - accept(2) errors back off (5 ms doubling to 1 s) instead of spinning;
//!   when descriptors run out, an idle connection is closed to make room and
//!   the accept is retried 1 ms later.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::conns::{self, ServerId};

/// A response: status, content type, body.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
    pub fn json(status: StatusCode, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

/// How long clients may hold a server's connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From the moment a connection waits for a request head (after accept,
    /// after a response) until the head is complete.
    pub header_read_timeout: Duration,
    /// Connections of one server; beyond, its oldest idle one is closed.
    pub max_connections: usize,
}

/// Probes (kubelet, load balancers) send their request at once and close or
/// come back within seconds; Prometheus reconnects when its keep-alive
/// connection was closed between scrapes.
pub const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(5),
    max_connections: 128,
};

const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// After closing a connection to free a descriptor: time for its task to close it.
const EVICTED_RETRY: Duration = Duration::from_millis(1);
/// A run of accept failures is logged once per this period (with its count).
const WARN_EVERY: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds `addr` now (so a busy port fails the agent at start, clearly) and
/// serves `handler(path)` on a background task with [`LIMITS`]; aborting the
/// returned task closes the listener and every connection.
pub async fn serve<F, Fut>(
    what: &'static str,
    addr: SocketAddr,
    handler: F,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    serve_with(what, addr, LIMITS, handler).await
}

/// How often a busy port is tried again (kube-proxy retries its health and
/// metrics servers every 5 s).
const BIND_RETRY: Duration = Duration::from_secs(5);

/// [`serve`], except that a port another process holds (kube-proxy, during a
/// migration) is not fatal: it is logged with the cause and tried again every
/// [`BIND_RETRY`] until free, as kube-proxy does for its own servers, and the
/// rest of the agent runs meanwhile. Other bind errors fail at once.
pub async fn serve_when_free<F, Fut>(
    what: &'static str,
    addr: SocketAddr,
    handler: F,
) -> io::Result<tokio::task::JoinHandle<()>>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            warn!(
                %addr,
                "{what} server: the port is in use (kube-proxy still running on this node?): \
                 serving once it is free; `ferry preflight` shows what is missing"
            );
            return Ok(tokio::spawn(async move {
                let listener = loop {
                    tokio::time::sleep(BIND_RETRY).await;
                    match TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if e.kind() != io::ErrorKind::AddrInUse => {
                            warn!(%addr, error = %e, "{what} server: binding failed");
                        }
                        Err(_) => {}
                    }
                };
                start(what, LIMITS, listener, handler).await;
            }));
        }
        Err(e) => return Err(e),
    };
    Ok(tokio::spawn(start(what, LIMITS, listener, handler)))
}

/// Serves on a bound listener until aborted.
async fn start<F, Fut>(what: &'static str, limits: Limits, listener: TcpListener, handler: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    if let Ok(bound) = listener.local_addr() {
        info!(%bound, "{what} server listening");
    }
    let server = Server {
        what,
        limits,
        id: lock().new_server(),
        handler: Arc::new(handler),
    };
    server.accept_loop(listener).await
}

/// [`serve`] with other limits.
pub async fn serve_with<F, Fut>(
    what: &'static str,
    addr: SocketAddr,
    limits: Limits,
    handler: F,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, tokio::spawn(start(what, limits, listener, handler))))
}

fn lock() -> std::sync::MutexGuard<'static, conns::Registry> {
    conns::global().lock().expect("connection registry lock")
}

struct Server<F> {
    what: &'static str,
    limits: Limits,
    id: ServerId,
    handler: Arc<F>,
}

impl<F> Drop for Server<F> {
    /// The accept task ends (aborted): its connections go with it.
    fn drop(&mut self) {
        lock().close_server(self.id);
    }
}

impl<F, Fut> Server<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    async fn accept_loop(&self, listener: TcpListener) {
        let mut backoff = Duration::ZERO;
        // Failures since the last warning, and when that was.
        let (mut failures, mut warned) = (0u64, None::<Instant>);
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    self.admit(stream, peer);
                    // Under a flood accept is always ready: let the connections
                    // just evicted close their sockets before the next one.
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    // Out of descriptors: the connection stays queued; an idle
                    // one of ours makes room for it, and the retry comes soon.
                    let evicted = is_out_of_descriptors(&e)
                        .then(|| lock().evict(None))
                        .flatten()
                        .is_some();
                    let wait = if evicted {
                        EVICTED_RETRY
                    } else {
                        backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                        backoff
                    };
                    failures += 1;
                    let retry_in_ms = wait.as_millis() as u64;
                    if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        warn!(server = self.what, error = %e, evicted, retry_in_ms, failures,
                            "accept failed");
                        (failures, warned) = (0, Some(Instant::now()));
                    } else {
                        debug!(server = self.what, error = %e, evicted, retry_in_ms, "accept failed");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let admitted = lock().admit(self.id, peer.ip(), self.limits.max_connections);
        let Ok(conns::Admitted { id, busy, closed }) = admitted else {
            // Every connection of this server is handling a request.
            debug!(server = self.what, %peer, "connection refused: at the cap, none idle");
            return;
        };
        let handler = self.handler.clone();
        let what = self.what;
        let svc = service_fn(move |req: Request<Incoming>| {
            let handler = handler.clone();
            let busy = busy.clone();
            async move {
                busy.store(true, Ordering::Release);
                let _idle_again = scopeguard(move || busy.store(false, Ordering::Release));
                let reply = if req.method() == hyper::Method::GET {
                    handler(req.uri().path().to_string()).await
                } else {
                    Reply::text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n")
                };
                let resp = Response::builder()
                    .status(reply.status)
                    .header("content-type", reply.content_type)
                    .body(Full::new(Bytes::from(reply.body)))
                    .expect("static headers");
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(server = what, %peer, error = %e, "connection closed");
                },
                // Evicted, or the server stopped: dropping `conn` closes the socket.
                _ = closed => debug!(server = what, %peer, "connection evicted"),
            }
            lock().remove(id);
        });
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Runs `f` when dropped (also when the request future is dropped mid-way).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
