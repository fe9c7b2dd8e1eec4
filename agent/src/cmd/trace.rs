//! `ferry trace SRC DST:PORT/PROTO`: what the kernel would do with that
//! flow, decided from the pinned maps (datapath/trace.rs); nothing is sent
//! and nothing is written.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::Path,
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    cli::{TraceArgs, TraceOutput},
    datapath::{
        Maps, routes,
        trace::{self, Client, Flow, Origin},
    },
    model::{FrontendKey, Protocol, Scope},
    northsouth::monotonic_seconds,
    paths::PinDir,
};

/// SRC: `IP` or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_src(s: &str) -> anyhow::Result<(IpAddr, Option<u16>)> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| anyhow!("SRC `{s}` is not an address: IP or IP:PORT ([IPv6]:PORT)"))
}

/// DST: `IP:PORT/PROTO` (`[IPv6]:PORT/PROTO`), PROTO tcp or udp.
pub fn parse_dst(s: &str) -> anyhow::Result<(SocketAddr, Protocol)> {
    let Some((addr, proto)) = s.rsplit_once('/') else {
        bail!("DST `{s}` has no protocol: IP:PORT/PROTO, e.g. 10.96.0.10:80/tcp");
    };
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => bail!("DST `{s}`: unknown protocol `{proto}` (ferry balances tcp and udp)"),
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| anyhow!("DST `{s}`: `{addr}` is not IP:PORT ([IPv6]:PORT for IPv6)"))?;
    Ok((addr, proto))
}

/// The network namespace cookie the socket hooks key affinity on
/// (`bpf_get_netns_cookie`): that of the namespace at `netns`, or this
/// process's own. Read from a socket made in that namespace, by a thread
/// of its own (setns moves only the calling thread).
pub fn netns_cookie(netns: Option<&Path>) -> anyhow::Result<u64> {
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || -> anyhow::Result<u64> {
        if let Some(path) = &netns {
            let f = std::fs::File::open(path)
                .with_context(|| format!("opening network namespace {}", path.display()))?;
            // SAFETY: a valid descriptor; affects this thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("entering network namespace {}", path.display()));
            }
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
            .context("a socket to read the network namespace cookie from")?;
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: valid out-pointers of the option's size.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("SO_NETNS_COOKIE (Linux 5.14 or later)");
        }
        Ok(cookie)
    })
    .join()
    .map_err(|_| anyhow!("reading the network namespace cookie: the thread panicked"))?
}

fn traced(args: &TraceArgs) -> anyhow::Result<trace::Trace> {
    let (src, sport) = parse_src(&args.src)?;
    let (dst, proto) = parse_dst(&args.dst)?;
    let bpffs = &args.bpffs;
    let maps = Maps::open_pinned(&PinDir::new(bpffs)).with_context(|| {
        format!(
            "reading ferry's maps under {} (is the agent running, with this --bpffs?)",
            bpffs.display()
        )
    })?;
    let (from, inferred) = match args.from {
        Some(f) => (f, false),
        None => {
            // The node's own route to the client, as `ip route get SRC`.
            let probe = match src {
                IpAddr::V6(a) => a.to_ipv4_mapped().map_or(src, IpAddr::V4),
                v4 => v4,
            };
            let route = routes::Resolver::new().and_then(|mut r| r.get(probe)).ok();
            (trace::infer_from(&maps, src, route), true)
        }
    };
    let netns_cookie = match (from, &args.netns) {
        // The per-packet path keys affinity on the pod's address.
        (Origin::External | Origin::PodPacket, _) => None,
        (_, Some(p)) => Some(netns_cookie(Some(p))?),
        // A host process shares this process's namespace.
        (Origin::Host, None) => Some(netns_cookie(None)?),
        (Origin::Pod, None) => None,
    };
    let flow = Flow {
        src,
        sport,
        dst: dst.ip(),
        dport: dst.port(),
        proto,
    };
    let client = Client {
        from,
        inferred,
        netns_cookie,
    };
    let mut t = trace::trace(&maps, flow, client, monotonic_seconds());
    if !args.no_agent
        && let Some(fe) = t.frontend.as_mut()
        && let Some(status) = super::services::agent_status(args.agent)
    {
        let key = FrontendKey {
            ip: fe.address,
            port: fe.port,
            proto: fe.protocol,
            scope: Scope::External,
        }
        .to_string();
        if let Some(p) = status.frontends.iter().find(|p| p.frontend == key) {
            fe.service = Some(p.service.clone());
            fe.port_name = p.port_name.clone();
        }
    }
    Ok(t)
}

/// An error's chain on one line, each cause once (a typed error may show
/// its source in its own message too).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !line.ends_with(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line
}

pub fn run(args: &TraceArgs) -> anyhow::Result<()> {
    let t = match traced(args) {
        Ok(t) => t,
        Err(e) => {
            // One line naming the cause, whatever failed (and no backtrace,
            // whatever RUST_BACKTRACE says).
            eprintln!("Error: ferry trace: {}", one_line(&e));
            std::process::exit(1);
        }
    };
    match args.output {
        TraceOutput::Json => println!("{}", serde_json::to_string_pretty(&t)?),
        TraceOutput::Text => print!("{}", trace::render(&t)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_destinations_parse_or_say_why_not() {
        assert_eq!(
            parse_src("172.18.0.100:40001").unwrap(),
            ("172.18.0.100".parse().unwrap(), Some(40001))
        );
        assert_eq!(
            parse_src("fd00::1").unwrap(),
            ("fd00::1".parse().unwrap(), None)
        );
        assert_eq!(
            parse_src("[fd00::1]:5").unwrap(),
            ("fd00::1".parse().unwrap(), Some(5))
        );
        assert!(
            parse_src("nowhere")
                .unwrap_err()
                .to_string()
                .contains("SRC `nowhere`")
        );
        let (a, p) = parse_dst("[fd00:96::a]:80/TCP").unwrap();
        assert_eq!((a.port(), p), (80, Protocol::Tcp));
        let e = parse_dst("10.96.0.10:80/sctp").unwrap_err().to_string();
        assert!(e.contains("unknown protocol `sctp`"), "{e}");
        let e = parse_dst("10.96.0.10:80").unwrap_err().to_string();
        assert!(e.contains("no protocol"), "{e}");
        let e = parse_dst("10.96.0:80/udp").unwrap_err().to_string();
        assert!(e.contains("is not IP:PORT"), "{e}");
    }

    #[test]
    fn this_processs_netns_cookie_is_read() {
        // Any kernel since 5.14 answers; the value only has to be stable.
        if let Ok(c) = netns_cookie(None) {
            assert_eq!(netns_cookie(None).unwrap(), c);
        }
    }
}
