//! The hardened server on loopback, with real sockets and short limits.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

async fn start(max_connections: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let limits = Limits {
        header_read_timeout: TIMEOUT,
        max_connections,
    };
    serve_with(
        "test",
        "127.0.0.1:0".parse().unwrap(),
        limits,
        |path| async move { Reply::text(StatusCode::OK, path) },
    )
    .await
    .unwrap()
}

/// Reads until the server closes the connection; the time that took and what was read.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (Duration, String) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (t0.elapsed(), String::from_utf8_lossy(&got).into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}; read {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// One GET on a fresh connection; the status line.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (_, text) = until_closed(&mut s, SLACK).await;
    text.lines().next().unwrap_or_default().to_string()
}

fn assert_closed_by_timeout(what: &str, took: Duration) {
    assert!(
        took >= TIMEOUT - Duration::from_millis(50) && took <= TIMEOUT + SLACK,
        "{what}: closed after {took:?}, the timeout is {TIMEOUT:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let (addr, _server) = start(8).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (took, text) = until_closed(&mut s, TIMEOUT + SLACK).await;
    assert_closed_by_timeout("idle after accept", took);
    assert!(text.is_empty(), "{text}");
}

#[tokio::test]
async fn headers_trickled_byte_by_byte_do_not_extend_the_timeout() {
    let (addr, _server) = start(8).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, text) = until_closed(&mut s, TIMEOUT + SLACK).await;
    assert_closed_by_timeout("slowloris", t0.elapsed());
    // hyper answers a timed-out head with 408 or just closes; never with a 200.
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let (addr, _server) = start(8).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.ends_with("/readyz"), "{first}");
    // Kept alive: nothing more is sent, and the server closes it.
    let (took, rest) = until_closed(&mut s, TIMEOUT + SLACK).await;
    assert_closed_by_timeout("idle keep-alive", took);
    assert!(rest.is_empty(), "{rest}");
}

#[tokio::test]
async fn beyond_the_cap_the_oldest_idle_connection_is_closed_and_requests_are_served() {
    let (addr, _server) = start(4).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // The accept queue is FIFO: the four are admitted before the fifth.
    let t0 = Instant::now();
    assert_eq!(get(addr, "/livez").await, "HTTP/1.1 200 OK");
    assert!(t0.elapsed() < TIMEOUT, "served at once: {:?}", t0.elapsed());
    // The oldest one was closed to make room, long before its timeout.
    let (took, _) = until_closed(&mut idle[0], TIMEOUT + SLACK).await;
    assert!(took < TIMEOUT, "evicted after {took:?}");
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_keep_requests_waiting() {
    let (addr, _server) = start(16).await;
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut worst = Duration::ZERO;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let t0 = Instant::now();
        assert_eq!(get(addr, path).await, "HTTP/1.1 200 OK", "{path}");
        worst = worst.max(t0.elapsed());
    }
    println!("slowest answer under 1000 idle connections: {worst:?}");
    assert!(worst < TIMEOUT, "{worst:?}");
}

#[tokio::test]
async fn stopping_a_server_closes_its_connections() {
    let (addr, server) = start(8).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(s.read(&mut buf).await.unwrap() > 0);
    server.abort();
    let (took, _) = until_closed(&mut s, TIMEOUT + SLACK).await;
    assert!(took < TIMEOUT, "closed after {took:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
