//! lab-client: TCP and UDP clients for the lab, printing one JSON line per attempt.
//!
//! ```text
//! lab-client tcp ADDR:PORT [--count N] [--interval-ms MS] [--timeout-ms MS] [--hold]
//! lab-client udp ADDR:PORT [--connected] [--count N] [--interval-ms MS] [--timeout-ms MS]
//!                           [--source-port PORT] [--reconnect]
//! ```
//!
//! `--count 0` runs until killed. tcp: one connection per attempt, sends `hello`, reads one
//! line; prints `{"ok":true,"reply":"...","peer":"<getpeername>",...}` or
//! `{"ok":false,"stage":"connect","error":"ECONNREFUSED","elapsed_ms":N}`. With `--hold`, after
//! the first reply each line read from stdin is sent on the same connection and its reply
//! printed. udp: datagrams from one socket (sendto, or send after connect with `--connected`),
//! each reply printed with its recvfrom source (`"from"`); a reply not received within the
//! timeout (default 2 s) is `"error":"timeout"`; `--source-port` binds the socket to that port
//! (one fixed 5-tuple); `--reconnect` (with `--connected`) connects the socket again after an
//! attempt failed with an error other than a timeout (an application that handles a destroyed
//! socket). Exit status 0 if every attempt succeeded. ADDR is IPv4 (`10.96.0.10:53`) or IPv6
//! (`[fd00:96::a]:53`, also `[::ffff:10.96.0.10]:53`): the socket is of that family (the UDP
//! one bound to 0.0.0.0 or `[::]`).

use std::{
    io::{self, BufRead, BufReader, ErrorKind, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

struct Opts {
    target: SocketAddr,
    count: u64,
    interval: Duration,
    timeout: Duration,
    hold: bool,
    connected: bool,
    reconnect: bool,
    source_port: u16,
}

fn usage() -> ExitCode {
    let _ = writeln!(
        io::stderr(),
        "usage: lab-client tcp ADDR:PORT [--count N] [--interval-ms MS] [--timeout-ms MS] [--hold]\n       lab-client udp ADDR:PORT [--connected] [--count N] [--interval-ms MS] [--timeout-ms MS] [--source-port PORT] [--reconnect]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(target)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let Ok(target) = target.parse::<SocketAddr>() else {
        return usage();
    };
    let mut opts = Opts {
        target,
        count: 1,
        interval: Duration::ZERO,
        timeout: Duration::from_secs(2),
        hold: false,
        connected: false,
        reconnect: false,
        source_port: 0,
    };
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        let mut number = || rest.next().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--count" => match number() {
                Some(n) => opts.count = n,
                None => return usage(),
            },
            "--interval-ms" => match number() {
                Some(n) => opts.interval = Duration::from_millis(n),
                None => return usage(),
            },
            "--timeout-ms" => match number() {
                Some(n) => opts.timeout = Duration::from_millis(n),
                None => return usage(),
            },
            "--source-port" => match number().and_then(|n| u16::try_from(n).ok()) {
                Some(n) => opts.source_port = n,
                None => return usage(),
            },
            "--hold" => opts.hold = true,
            "--connected" => opts.connected = true,
            "--reconnect" => opts.reconnect = true,
            _ => return usage(),
        }
    }
    let all_ok = match mode.as_str() {
        "tcp" => run_tcp(&opts),
        "udp" => run_udp(&opts),
        _ => return usage(),
    };
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A JSON object built by hand (std only).
#[derive(Default)]
struct Line(Vec<String>);

impl Line {
    fn str(mut self, key: &str, value: &str) -> Self {
        self.0.push(format!("\"{key}\":{}", quote(value)));
        self
    }

    fn raw(mut self, key: &str, value: impl ToString) -> Self {
        self.0.push(format!("\"{key}\":{}", value.to_string()));
        self
    }

    fn print(self) {
        let mut out = io::stdout().lock();
        // Whoever reads us may be gone; then there is nobody left to tell.
        if writeln!(out, "{{{}}}", self.0.join(","))
            .and_then(|()| out.flush())
            .is_err()
        {
            std::process::exit(0);
        }
    }
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            c if (c as u32) < 0x20 => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The errno name of an error (or "timeout").
fn errno_name(e: &io::Error) -> String {
    if let Some(code) = e.raw_os_error() {
        let name = match code {
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EHOSTUNREACH => "EHOSTUNREACH",
            libc::ENETUNREACH => "ENETUNREACH",
            libc::ECONNRESET => "ECONNRESET",
            libc::ECONNABORTED => "ECONNABORTED",
            libc::EPERM => "EPERM",
            libc::EACCES => "EACCES",
            libc::EINVAL => "EINVAL",
            libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            libc::EADDRINUSE => "EADDRINUSE",
            // A receive timeout (SO_RCVTIMEO) surfaces as EAGAIN.
            libc::EAGAIN => "timeout",
            libc::EPIPE => "EPIPE",
            libc::ENOBUFS => "ENOBUFS",
            libc::EMSGSIZE => "EMSGSIZE",
            libc::ENOTCONN => "ENOTCONN",
            libc::EDESTADDRREQ => "EDESTADDRREQ",
            _ => return format!("errno{code}"),
        };
        return name.to_owned();
    }
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".to_owned(),
        ErrorKind::UnexpectedEof => "EOF".to_owned(),
        _ => e.to_string(),
    }
}

/// When an attempt started: for its duration, and as microseconds since the Unix epoch
/// (`t_us`, comparable with the clock of the test that reads us).
#[derive(Clone, Copy)]
struct Start {
    at: Instant,
    t_us: u128,
}

impl Start {
    fn now() -> Start {
        let t_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        Start {
            at: Instant::now(),
            t_us,
        }
    }

    fn elapsed_ms(&self) -> u128 {
        self.at.elapsed().as_millis()
    }
}

fn failure(seq: u64, stage: &str, e: &io::Error, start: Start) -> Line {
    Line::default()
        .raw("ok", false)
        .raw("seq", seq)
        .raw("t_us", start.t_us)
        .str("stage", stage)
        .str("error", &errno_name(e))
        .str("detail", &e.to_string())
        .raw("elapsed_ms", start.elapsed_ms())
}

fn attempts(opts: &Opts) -> impl Iterator<Item = u64> + '_ {
    let endless = opts.count == 0;
    (1..)
        .take_while(move |&n| endless || n <= opts.count)
        .inspect(move |&n| {
            if n > 1 && !opts.interval.is_zero() {
                thread::sleep(opts.interval);
            }
        })
}

fn run_tcp(opts: &Opts) -> bool {
    let mut all_ok = true;
    for seq in attempts(opts) {
        all_ok &= tcp_once(opts, seq);
    }
    all_ok
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut reply = String::new();
    if reader.read_line(&mut reply)? == 0 {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            "connection closed without a reply",
        ));
    }
    Ok(reply.trim_end().to_owned())
}

fn tcp_once(opts: &Opts, seq: u64) -> bool {
    let start = Start::now();
    let stream = match TcpStream::connect_timeout(&opts.target, opts.timeout) {
        Ok(s) => s,
        Err(e) => {
            failure(seq, "connect", &e, start).print();
            return false;
        }
    };
    let connected_ms = start.elapsed_ms();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| errno_name(&e));
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let result = (|| {
        stream.set_read_timeout(Some(opts.timeout))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(b"hello\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let reply = read_reply(&mut reader)?;
        Ok::<_, io::Error>((writer, reader, reply))
    })();
    let (mut writer, mut reader, reply) = match result {
        Ok(r) => r,
        Err(e) => {
            failure(seq, "exchange", &e, start)
                .raw("connect_ms", connected_ms)
                .str("peer", &peer)
                .print();
            return false;
        }
    };
    Line::default()
        .raw("ok", true)
        .raw("seq", seq)
        .raw("t_us", start.t_us)
        .str("reply", &reply)
        .str("peer", &peer)
        .str("local", &local)
        .raw("connect_ms", connected_ms)
        .raw("elapsed_ms", start.elapsed_ms())
        .print();
    if !opts.hold {
        return true;
    }
    // Hold the connection: each stdin line goes out on it, each reply is printed.
    let mut all_ok = true;
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let Ok(line) = line else { break };
        let start = Start::now();
        let seq = seq + n as u64 + 1;
        let exchange = writer
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| read_reply(&mut reader));
        match exchange {
            Ok(reply) => Line::default()
                .raw("ok", true)
                .raw("seq", seq)
                .raw("t_us", start.t_us)
                .str("reply", &reply)
                .str("peer", &peer)
                .str("local", &local)
                .raw("elapsed_ms", start.elapsed_ms())
                .print(),
            Err(e) => {
                all_ok = false;
                failure(seq, "held", &e, start).print();
            }
        }
    }
    all_ok
}

fn run_udp(opts: &Opts) -> bool {
    let start = Start::now();
    let any = if opts.target.is_ipv6() {
        "::"
    } else {
        "0.0.0.0"
    };
    let socket = match UdpSocket::bind((any, opts.source_port)) {
        Ok(s) => s,
        Err(e) => {
            failure(0, "bind", &e, start).print();
            return false;
        }
    };
    if let Err(e) = socket.set_read_timeout(Some(opts.timeout)) {
        failure(0, "setsockopt", &e, start).print();
        return false;
    }
    let mut peer = None;
    if opts.connected {
        if let Err(e) = socket.connect(opts.target) {
            failure(0, "connect", &e, start).print();
            return false;
        }
        peer = Some(
            socket
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| errno_name(&e)),
        );
    }
    let mut all_ok = true;
    let mut buf = [0u8; 2048];
    let mut broken = false;
    for seq in attempts(opts) {
        let start = Start::now();
        if broken {
            broken = false;
            if let Err(e) = socket.connect(opts.target) {
                all_ok = false;
                broken = true;
                failure(seq, "reconnect", &e, start).print();
                continue;
            }
            peer = socket.peer_addr().map(|a| a.to_string()).ok();
        }
        let msg = format!("hello {seq}");
        let sent = if opts.connected {
            socket.send(msg.as_bytes())
        } else {
            socket.send_to(msg.as_bytes(), opts.target)
        };
        if let Err(e) = sent {
            all_ok = false;
            broken = opts.connected && opts.reconnect;
            failure(seq, "send", &e, start).print();
            continue;
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let mut line = Line::default()
                    .raw("ok", true)
                    .raw("seq", seq)
                    .raw("t_us", start.t_us)
                    .str("reply", &String::from_utf8_lossy(&buf[..n]))
                    .str("from", &from.to_string());
                if let Some(peer) = &peer {
                    line = line.str("peer", peer);
                }
                line.raw("elapsed_ms", start.elapsed_ms()).print();
            }
            Err(e) => {
                all_ok = false;
                let timeout = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                broken = opts.connected && opts.reconnect && !timeout;
                failure(seq, "recv", &e, start).print();
            }
        }
    }
    all_ok
}
