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
    io::{self, Read as _},
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

use super::load::{self, ClientPlace, WrkResult};

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
    sock: Socket,
    /// Its target's index.
    target: usize,
    phase: Phase,
    /// The response's first bytes (its status line's start).
    head: [u8; 12],
    got: usize,
}

const STATUS_200: &[u8; 12] = b"HTTP/1.1 200";

/// What one readiness event did to a connection.
enum Step {
    More,
    Ok,
    Failed,
}

/// One thread's connections, each in slot `i` of `slots`, registered with `ep` as `i`.
struct Worker<'a> {
    ep: OwnedFd,
    targets: &'a [SocketAddr],
    /// Each target's request.
    requests: Vec<Vec<u8>>,
    rng: Rng,
    slots: Vec<Option<Conn>>,
    counts: Counts,
}

fn worker(targets: &[SocketAddr], conns: usize, deadline: Instant, seed: u64) -> Result<Counts> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    let mut w = Worker {
        // SAFETY: a fresh descriptor of ours.
        ep: unsafe { OwnedFd::from_raw_fd(ep) },
        targets,
        requests: targets
            .iter()
            .map(|t| {
                format!("GET / HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n").into_bytes()
            })
            .collect(),
        rng: Rng(seed),
        slots: (0..conns).map(|_| None).collect(),
        counts: Counts::default(),
    };
    for i in 0..conns {
        w.open(i);
    }
    // SAFETY: epoll_event is plain data.
    let mut events: [libc::epoll_event; 64] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        // SAFETY: a valid epoll descriptor and buffer.
        let n = unsafe { libc::epoll_wait(w.ep.as_raw_fd(), events.as_mut_ptr(), 64, 50) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        for ev in &events[..n as usize] {
            let i = ev.u64 as usize;
            match w.step(i, ev.events, &mut buf) {
                Step::More => continue,
                Step::Ok => w.counts.requests += 1,
                Step::Failed => w.counts.errors += 1,
            }
            // Closed (its socket dropped) and replaced at once.
            w.slots[i] = None;
            w.open(i);
        }
    }
    Ok(w.counts)
}

impl Worker<'_> {
    /// Opens connection `i` to a random target; a connect that fails at once counts as an
    /// error and is tried again (a few times: past them the slot stays empty).
    fn open(&mut self, i: usize) {
        for _ in 0..8 {
            let target = self.rng.below(self.targets.len());
            match self.connect(target, i) {
                Ok(c) => {
                    self.slots[i] = Some(c);
                    return;
                }
                Err(_) => self.counts.errors += 1,
            }
        }
    }

    /// A non-blocking connect to target `target`, registered for writability (the connect's
    /// end) as `i`.
    fn connect(&self, target: usize, i: usize) -> io::Result<Conn> {
        let to = self.targets[target];
        let sock = Socket::new(Domain::for_address(to), Type::STREAM.nonblocking(), None)?;
        match sock.connect(&to.into()) {
            Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
            _ => {}
        }
        self.ctl(libc::EPOLL_CTL_ADD, &sock, libc::EPOLLOUT as u32, i)?;
        Ok(Conn {
            sock,
            target,
            phase: Phase::Connecting,
            head: [0; 12],
            got: 0,
        })
    }

    fn ctl(&self, op: i32, sock: &Socket, events: u32, i: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: i as u64,
        };
        // SAFETY: valid descriptors and event.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, sock.as_raw_fd(), &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One readiness event (`events`) of connection `i`.
    fn step(&mut self, i: usize, events: u32, buf: &mut [u8]) -> Step {
        let Some(c) = self.slots[i].as_mut() else {
            return Step::More;
        };
        match c.phase {
            Phase::Connecting => {
                if !matches!(c.sock.take_error(), Ok(None)) {
                    return Step::Failed;
                }
                // A fresh socket's send buffer takes the whole request.
                let request = &self.requests[c.target];
                if !matches!(c.sock.send_with_flags(request, libc::MSG_NOSIGNAL), Ok(n) if n == request.len())
                {
                    return Step::Failed;
                }
                c.phase = Phase::Reading;
                let sock = &self.slots[i].as_ref().expect("the slot just read").sock;
                match self.ctl(libc::EPOLL_CTL_MOD, sock, libc::EPOLLIN as u32, i) {
                    Ok(()) => Step::More,
                    Err(_) => Step::Failed,
                }
            }
            Phase::Reading => loop {
                match (&c.sock).read(buf) {
                    Ok(0) => {
                        return if c.got == c.head.len() && &c.head == STATUS_200 {
                            Step::Ok
                        } else {
                            Step::Failed
                        };
                    }
                    Ok(n) => {
                        let take = (c.head.len() - c.got).min(n);
                        c.head[c.got..c.got + take].copy_from_slice(&buf[..take]);
                        c.got += take;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            && events & (libc::EPOLLERR as u32) == 0 =>
                    {
                        return Step::More;
                    }
                    Err(_) => return Step::Failed,
                }
            },
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
    let mut cmd = load::pinned(cpu, &bin);
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
    let text = load::stdout_at(place, &mut cmd, secs, "ferry-bench shortconn")?;
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
