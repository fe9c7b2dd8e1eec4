//! `ferry-bench shortconn`: a short-connection HTTP client that dials each connection's server
//! at random among its targets, as a Service spreads connections (and as a client-side load
//! balancer over pod IPs would).
//!
//! wrk cannot: its threads each keep one address for the whole run, so "direct pod IPs" over
//! two backends gives each wrk thread a server of its own, while ferry (and kube-proxy) spread
//! every thread's connections over both; on one CPU that spreading costs by itself (the bench's
//! one-backend pair, eastwest.rs). With this client both sides of a pair spread alike: direct
//! dials a random backend's pod IP per connection, ferry dials the ClusterIP and ferry's hook
//! picks a random backend. Like wrk with `Connection: close` it is a lean event loop: each
//! thread keeps its share of the connections in flight with epoll, each connection is connect,
//! one request, the server's response and close, then a new one at once. What it costs per
//! connection is paid alike by both sides of a pair.

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::load::{ClientPlace, WrkResult};
use crate::proc::{self, Placement};

/// What a run counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Connections that got a 200 response and the server's close.
    pub requests: u64,
    /// Connections that failed (refused, reset, another status, closed without a response).
    pub errors: u64,
    pub secs: f64,
}

/// The client's arguments.
#[derive(Clone, Debug)]
pub struct Opts {
    pub targets: Vec<SocketAddr>,
    /// Connections in flight, shared among the threads.
    pub conns: u32,
    pub threads: u32,
    pub secs: f64,
}

/// Runs the client in this process: `opts.threads` threads, each an epoll loop over its share
/// of `opts.conns`, for `opts.secs`.
pub fn run(opts: &Opts) -> Result<Counts> {
    if opts.targets.is_empty() {
        bail!("no target");
    }
    let threads = opts.threads.clamp(1, opts.conns.max(1));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.secs);
    let results: Vec<Result<Counts>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                // The connections as evenly as they divide.
                let share = opts.conns / threads + u32::from(t < opts.conns % threads);
                let targets = &opts.targets;
                s.spawn(move || worker(targets, share as usize, deadline, seed(t)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let mut total = Counts {
        secs: start.elapsed().as_secs_f64(),
        ..Counts::default()
    };
    for r in results {
        let c = r?;
        total.requests += c.requests;
        total.errors += c.errors;
    }
    Ok(total)
}

/// A per-thread seed: the clock's nanoseconds and the thread's number.
fn seed(thread: u32) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(thread) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

/// xorshift64*: enough to pick a server.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

enum Phase {
    Connecting,
    Reading,
}

struct Conn {
    fd: OwnedFd,
    phase: Phase,
    /// The response's first bytes (its status line's start).
    head: [u8; 12],
    got: usize,
}

const STATUS_200: &[u8; 12] = b"HTTP/1.1 200";

fn worker(targets: &[SocketAddr], conns: usize, deadline: Instant, seed: u64) -> Result<Counts> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: a fresh descriptor of ours.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let requests: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| format!("GET / HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n").into_bytes())
        .collect();
    let mut rng = Rng(seed);
    let mut counts = Counts::default();
    let mut slots: Vec<Option<(Conn, usize)>> = (0..conns).map(|_| None).collect();
    for i in 0..conns {
        open(
            ep.as_raw_fd(),
            targets,
            &mut rng,
            &mut slots,
            i,
            &mut counts,
        );
    }
    // SAFETY: epoll_event is plain data.
    let mut events: [libc::epoll_event; 64] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: a valid epoll descriptor and buffer.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 64, 50) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            let done = match slots[i].as_mut() {
                Some((c, target)) => step(
                    ep.as_raw_fd(),
                    i,
                    c,
                    &requests[*target],
                    ev.events,
                    &mut buf,
                ),
                None => continue,
            };
            match done {
                Step::More => continue,
                Step::Ok => counts.requests += 1,
                Step::Failed => counts.errors += 1,
            }
            // Closed (its descriptor dropped) and replaced at once.
            slots[i] = None;
            open(
                ep.as_raw_fd(),
                targets,
                &mut rng,
                &mut slots,
                i,
                &mut counts,
            );
        }
    }
    Ok(counts)
}

enum Step {
    More,
    Ok,
    Failed,
}

/// Opens connection `i` to a random target; a connect that fails at once counts as an error
/// and is tried again (a few times: past them the slot stays empty).
fn open(
    ep: RawFd,
    targets: &[SocketAddr],
    rng: &mut Rng,
    slots: &mut [Option<(Conn, usize)>],
    i: usize,
    counts: &mut Counts,
) {
    for _ in 0..8 {
        let target = rng.below(targets.len());
        match connect(ep, targets[target], i) {
            Ok(c) => {
                slots[i] = Some((c, target));
                return;
            }
            Err(_) => counts.errors += 1,
        }
    }
}

/// A non-blocking connect to `to`, registered for writability (the connect's end) as `i`.
fn connect(ep: RawFd, to: SocketAddr, i: usize) -> io::Result<Conn> {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr(to);
    // SAFETY: a socket address of the length given.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), len) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        fd.as_raw_fd(),
        libc::EPOLLOUT as u32,
        i,
    )?;
    Ok(Conn {
        fd,
        phase: Phase::Connecting,
        head: [0; 12],
        got: 0,
    })
}

fn ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, i: usize) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: i as u64,
    };
    // SAFETY: valid descriptors and event.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One readiness event of connection `i`.
fn step(ep: RawFd, i: usize, c: &mut Conn, request: &[u8], events: u32, buf: &mut [u8]) -> Step {
    let fd = c.fd.as_raw_fd();
    match c.phase {
        Phase::Connecting => {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an int-sized option into an int.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if rc < 0 || err != 0 {
                return Step::Failed;
            }
            // A fresh socket's send buffer takes the whole request.
            // SAFETY: the request's bytes.
            let sent = unsafe {
                libc::send(
                    fd,
                    request.as_ptr().cast(),
                    request.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if sent != request.len() as isize {
                return Step::Failed;
            }
            c.phase = Phase::Reading;
            match ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i) {
                Ok(()) => Step::More,
                Err(_) => Step::Failed,
            }
        }
        Phase::Reading => loop {
            // SAFETY: a buffer of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let n = n as usize;
                let take = (c.head.len() - c.got).min(n);
                c.head[c.got..c.got + take].copy_from_slice(&buf[..take]);
                c.got += take;
                continue;
            }
            if n == 0 {
                return if c.got == c.head.len() && &c.head == STATUS_200 {
                    Step::Ok
                } else {
                    Step::Failed
                };
            }
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) if events & (libc::EPOLLERR as u32) == 0 => Step::More,
                Some(libc::EINTR) => continue,
                _ => Step::Failed,
            };
        },
    }
}

/// `to` as a C socket address and its length.
fn sockaddr(to: SocketAddr) -> ([u8; 28], libc::socklen_t) {
    let mut out = [0u8; 28];
    match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a plain C struct copied into a buffer at least its size.
            unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), sin) };
            (
                out,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), sin6) };
            (
                out,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// The command line of [`run`] (`ferry-bench shortconn`).
pub fn parse_args(args: &[String]) -> Result<Opts> {
    let mut opts = Opts {
        targets: Vec::new(),
        conns: 8,
        threads: 1,
        secs: 1.0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--targets" => {
                opts.targets = v
                    .split(',')
                    .map(|t| t.parse().with_context(|| format!("target {t}")))
                    .collect::<Result<_>>()?
            }
            "--conns" => opts.conns = v.parse().context("--conns")?,
            "--threads" => opts.threads = v.parse().context("--threads")?,
            "--secs" => opts.secs = v.parse().context("--secs")?,
            _ => bail!("unknown argument {a}"),
        }
    }
    if opts.targets.is_empty() {
        bail!("--targets is required");
    }
    Ok(opts)
}

/// Runs `ferry-bench shortconn` (this build's) at `place`, pinned to `cpu`, for `secs`, and
/// reads its counts as a [`WrkResult`] (no latency percentiles).
pub fn run_on(
    place: &ClientPlace,
    cpu: Option<usize>,
    targets: &[SocketAddr],
    conns: u32,
    threads: u32,
    secs: f64,
) -> Result<WrkResult> {
    let bin: PathBuf = std::env::current_exe().context("this executable")?;
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args([
        "shortconn",
        "--targets",
        &list.join(","),
        "--conns",
        &conns.to_string(),
        "--threads",
        &threads.to_string(),
        "--secs",
        &secs.to_string(),
    ]);
    let placement = Placement {
        netns: Some(place.netns_path.clone()),
        cgroup: place.cgroup.clone(),
    };
    let out = proc::output_placed(&mut cmd, &placement, Duration::from_secs_f64(secs + 15.0))
        .context("running ferry-bench shortconn")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ferry-bench shortconn failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let c: Counts = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("unexpected shortconn output:\n{text}"))?;
    Ok(WrkResult {
        requests_per_sec: if c.secs > 0.0 {
            c.requests as f64 / c.secs
        } else {
            0.0
        },
        requests: c.requests,
        p50_us: None,
        p99_us: None,
        errors: c.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_every_target_about_as_often() {
        let mut rng = Rng(seed(0));
        let mut hits = [0u32; 2];
        for _ in 0..10_000 {
            hits[rng.below(2)] += 1;
        }
        assert!(
            hits.iter().all(|&h| (4_500..=5_500).contains(&h)),
            "{hits:?}"
        );
    }

    #[test]
    fn parses_its_command_line() {
        let args: Vec<String> = [
            "--targets",
            "10.0.0.1:80,[fd00::1]:8080",
            "--conns",
            "8",
            "--threads",
            "2",
            "--secs",
            "1.5",
        ]
        .map(String::from)
        .into();
        let o = parse_args(&args).unwrap();
        assert_eq!(o.targets.len(), 2);
        assert_eq!((o.conns, o.threads, o.secs), (8, 2, 1.5));
        assert!(parse_args(&["--conns".into(), "8".into()]).is_err());
    }
}
