//! What the lab's programs print: `lab-client` JSON lines and `lab-echo` replies.

use std::net::{SocketAddr, SocketAddrV4};

use serde_json::Value;

/// One line of `lab-client` output: one connection (TCP) or one datagram (UDP).
#[derive(Clone, Debug, Default)]
pub struct Attempt {
    pub ok: bool,
    pub seq: u64,
    /// connect, send, recv, read...
    pub stage: Option<String>,
    pub reply: Option<String>,
    /// getpeername(2) of the socket.
    pub peer: Option<String>,
    /// recvfrom(2) source address (UDP).
    pub from: Option<String>,
    /// errno name (ECONNREFUSED, ...) or "timeout".
    pub error: Option<String>,
    pub elapsed_ms: u64,
    /// When the attempt started, in microseconds since the Unix epoch (see [`now_us`]).
    pub started_us: u64,
    pub raw: String,
}

/// The current time on the clock of `Attempt::started_us`.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

impl Attempt {
    pub fn parse(line: &str) -> Option<Attempt> {
        let v: Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        Some(Attempt {
            ok: v["ok"].as_bool()?,
            seq: v["seq"].as_u64().unwrap_or_default(),
            stage: s("stage"),
            reply: s("reply"),
            peer: s("peer"),
            from: s("from"),
            error: s("error"),
            elapsed_ms: v["elapsed_ms"].as_u64().unwrap_or_default(),
            started_us: v["t_us"].as_u64().unwrap_or_default(),
            raw: line.to_owned(),
        })
    }

    /// The parsed echo reply, if the attempt got one from an IPv4 client's connection.
    pub fn echo(&self) -> Option<EchoReply> {
        EchoReply::parse(self.reply.as_deref()?)
    }

    /// The parsed echo reply, whatever the family of the client address the server saw.
    pub fn echo_any(&self) -> Option<EchoAny> {
        EchoAny::parse(self.reply.as_deref()?)
    }

    /// The pod that answered (over either family).
    pub fn pod(&self) -> Option<String> {
        self.echo_any().map(|e| e.pod)
    }
}

/// `pod=<name> port=<port> peer=<ip>:<port>`: what a lab-echo server answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoReply {
    pub pod: String,
    /// The server's own (backend) port.
    pub port: u16,
    /// The client address the server saw.
    pub peer: SocketAddrV4,
}

impl EchoReply {
    pub fn parse(text: &str) -> Option<EchoReply> {
        let mut pod = None;
        let mut port = None;
        let mut peer = None;
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("pod", v)) => pod = Some(v.to_owned()),
                Some(("port", v)) => port = v.parse().ok(),
                Some(("peer", v)) => peer = v.parse().ok(),
                _ => {}
            }
        }
        Some(EchoReply {
            pod: pod?,
            port: port?,
            peer: peer?,
        })
    }
}

/// An echo reply over either family: `peer=<ip>:<port>` or `peer=[<ipv6>]:<port>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoAny {
    pub pod: String,
    /// The server's own (backend) port.
    pub port: u16,
    /// The client address the server saw.
    pub peer: SocketAddr,
}

impl EchoAny {
    pub fn parse(text: &str) -> Option<EchoAny> {
        let mut pod = None;
        let mut port = None;
        let mut peer = None;
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("pod", v)) => pod = Some(v.to_owned()),
                Some(("port", v)) => port = v.parse().ok(),
                Some(("peer", v)) => peer = v.parse().ok(),
                _ => {}
            }
        }
        Some(EchoAny {
            pod: pod?,
            port: port?,
            peer: peer?,
        })
    }
}

/// Parses every JSON line; lines that are not attempts are skipped.
pub fn parse_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Attempt> {
    lines.into_iter().filter_map(Attempt::parse).collect()
}
