//! `ferry-bench serve`: the backends' HTTP/1.1 server, small and fast so that the load tool
//! measures the path to it rather than the server. Keeps connections alive unless the request
//! says `Connection: close`; every request gets the same 200 response. One thread (tokio's
//! current-thread runtime), so both backends together use at most the two cores' share the
//! kernel leaves them. It exits by itself after `lifetime`. It listens on IPv4 and, where the
//! namespace has IPv6, on an IPv6-only socket beside it (so IPv4 clients meet a plain IPv4
//! socket, never an IPv4-mapped one).

use std::{
    io::Write,
    net::{Ipv6Addr, SocketAddr},
    os::fd::FromRawFd,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

const KEEP_ALIVE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
const CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

/// Serves on 0.0.0.0:`port` and [::]:`port` (IPv6 only; skipped where the namespace has no
/// IPv6) until `lifetime` passed; prints `ready` once listening.
pub fn serve(port: u16, lifetime: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("binding port {port}"))?;
        let listener6 = listen_v6_only(port).ok();
        println!("ready");
        std::io::stdout().flush()?;
        let accept = async {
            tokio::join!(accept_loop(&listener), async {
                if let Some(l) = &listener6 {
                    accept_loop(l).await;
                }
            });
        };
        tokio::select! {
            () = accept => {}
            () = tokio::time::sleep(lifetime) => {}
        }
        Ok(())
    })
}

async fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// A listener on [::]:`port` with IPV6_V6ONLY set, beside the IPv4 one on the same port.
fn listen_v6_only(port: u16) -> Result<TcpListener> {
    // SAFETY: socket(2) returns a new descriptor (or -1), which the TcpSocket then owns.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("an IPv6 socket");
    }
    // SAFETY: fd is a valid socket descriptor owned by nobody else.
    let socket = unsafe { TcpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt(2) on our socket with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("IPV6_V6ONLY");
    }
    socket.set_reuseaddr(true)?;
    socket
        .bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        .with_context(|| format!("binding [::]:{port}"))?;
    Ok(socket.listen(1024)?)
}

async fn connection(mut s: TcpStream) {
    let mut buf = vec![0u8; 8192];
    let mut have = 0;
    loop {
        let Ok(n) = s.read(&mut buf[have..]).await else {
            return;
        };
        if n == 0 {
            return;
        }
        have += n;
        while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let close = contains_ignore_case(&buf[..end], b"connection: close");
            let reply = if close { CLOSE } else { KEEP_ALIVE };
            if s.write_all(reply).await.is_err() {
                return;
            }
            if close {
                let _ = s.shutdown().await;
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return; // a header larger than 8 KiB: not from the load tool
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_headers() {
        assert_eq!(find(b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n"), Some(14));
        assert!(contains_ignore_case(
            b"GET / HTTP/1.1\r\nConnection: Close",
            b"connection: close"
        ));
        assert!(!contains_ignore_case(
            b"GET / HTTP/1.1\r\n",
            b"connection: close"
        ));
    }
}
