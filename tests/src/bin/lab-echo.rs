//! lab-echo --name POD [--tcp PORT]... [--udp PORT]...
//!
//! A backend for the lab. Each TCP connection gets `pod=<name> port=<port> peer=<ip>:<port>`:
//! as an HTTP/1.1 200 response (Connection: close) if the first request is HTTP, else as one
//! raw line per line received until the client closes. Each UDP datagram gets the same text
//! back. Prints `ready` on stdout once every socket is bound. Threads, std (and libc).
//!
//! Each port is served over both families by two sockets: one bound to 0.0.0.0 (IPv4, as
//! ever) and one to `[::]` with IPV6_V6ONLY (IPv6 only, so that IPv4 clients keep meeting an
//! AF_INET socket and their peers print as `a.b.c.d:port`); IPv6 peers print as
//! `[addr]:port`. Where the kernel has no IPv6 at all, only the IPv4 sockets are made.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    process::ExitCode,
    thread,
    time::Duration,
};

fn usage() -> ExitCode {
    let _ = writeln!(
        io::stderr(),
        "usage: lab-echo --name POD [--tcp PORT]... [--udp PORT]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--name", Some(v)) => name = Some(v),
            ("--tcp", Some(v)) => match v.parse::<u16>() {
                Ok(p) => tcp.push(p),
                Err(_) => return usage(),
            },
            ("--udp", Some(v)) => match v.parse::<u16>() {
                Ok(p) => udp.push(p),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let Some(name) = name else { return usage() };
    if tcp.is_empty() && udp.is_empty() {
        return usage();
    }

    let ipv6 = ipv6_available();
    let mut tcp_listeners = Vec::new();
    for port in &tcp {
        match TcpListener::bind(("0.0.0.0", *port)) {
            Ok(l) => tcp_listeners.push((l, *port)),
            Err(e) => {
                let _ = writeln!(io::stderr(), "lab-echo: bind tcp {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
        if ipv6 {
            match bind_v6_only(libc::SOCK_STREAM, *port) {
                Ok(fd) => tcp_listeners.push((TcpListener::from(fd), *port)),
                Err(e) => {
                    let _ = writeln!(io::stderr(), "lab-echo: bind tcp [::]:{port}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut udp_sockets = Vec::new();
    for port in &udp {
        match UdpSocket::bind(("0.0.0.0", *port)) {
            Ok(s) => udp_sockets.push((s, *port)),
            Err(e) => {
                let _ = writeln!(io::stderr(), "lab-echo: bind udp {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
        if ipv6 {
            match bind_v6_only(libc::SOCK_DGRAM, *port) {
                Ok(fd) => udp_sockets.push((UdpSocket::from(fd), *port)),
                Err(e) => {
                    let _ = writeln!(io::stderr(), "lab-echo: bind udp [::]:{port}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    let mut threads = Vec::new();
    for (listener, port) in tcp_listeners {
        let name = name.clone();
        threads.push(thread::spawn(move || serve_tcp(listener, port, &name)));
    }
    for (socket, port) in udp_sockets {
        let name = name.clone();
        threads.push(thread::spawn(move || serve_udp(socket, port, &name)));
    }
    let mut stdout = io::stdout();
    if writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

/// False where the kernel has no IPv6 (socket(2) says EAFNOSUPPORT).
fn ipv6_available() -> bool {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return io::Error::last_os_error().raw_os_error() != Some(libc::EAFNOSUPPORT);
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    true
}

/// A socket of `kind` bound to `[::]:port` with IPV6_V6ONLY (and SO_REUSEADDR, as std's
/// bind does), listening if it is a stream socket.
fn bind_v6_only(kind: libc::c_int, port: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe { libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    for (level, option) in [
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    ] {
        // SAFETY: setsockopt(2) on our descriptor with a c_int value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                level,
                option,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.ip().octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: bind(2) with a sockaddr_in6 of the size given.
    let rc = unsafe {
        libc::bind(
            raw,
            (&sin6 as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our bound stream socket.
    if kind == libc::SOCK_STREAM && unsafe { libc::listen(raw, 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn body(name: &str, port: u16, peer: SocketAddr) -> String {
    format!("pod={name} port={port} peer={peer}")
}

fn serve_tcp(listener: TcpListener, port: u16, name: &str) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let name = name.to_owned();
                thread::spawn(move || {
                    if let Err(e) = answer_tcp(stream, port, &name) {
                        let _ = writeln!(io::stderr(), "lab-echo: tcp {port}: {e}");
                    }
                });
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "lab-echo: accept on {port}: {e}");
            }
        }
    }
}

fn is_http_request_line(line: &str) -> bool {
    let mut parts = line.trim_end().split(' ');
    let method = parts.next().unwrap_or_default();
    let _target = parts.next();
    let version = parts.next().unwrap_or_default();
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && version.starts_with("HTTP/")
        && parts.next().is_none()
}

fn answer_tcp(stream: TcpStream, port: u16, name: &str) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = writeln!(io::stderr(), "lab-echo: tcp {port} from {peer}");
    let text = body(name, port, peer);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Ok(());
    }
    if is_http_request_line(&first) {
        // Read the headers up to the empty line; the body (if any) is not needed.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
        let body = format!("{text}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
        let _ = writer.shutdown(std::net::Shutdown::Write);
        // Let the client close first, so that the server does not hold TIME_WAIT state.
        let mut sink = [0u8; 512];
        while reader.read(&mut sink).unwrap_or(0) > 0 {}
        return Ok(());
    }
    // Raw: one reply line per line received, until the client closes.
    let mut line = first;
    loop {
        writer.write_all(format!("{text}\n").as_bytes())?;
        writer.flush()?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}

fn serve_udp(socket: UdpSocket, port: u16, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(body(name, port, peer).as_bytes(), peer) {
                    let _ = writeln!(io::stderr(), "lab-echo: udp {port} reply to {peer}: {e}");
                }
            }
            Err(e) => {
                let _ = writeln!(io::stderr(), "lab-echo: udp {port}: {e}");
            }
        }
    }
}
