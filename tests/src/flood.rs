//! Clients that hold a server's connections open (idle, or sending their request head a
//! byte at a time, slowloris-style), one-shot GETs that measure their latency, and what the
//! server tests read about a process (its sockets, CPU time, descriptor limits).
//!
//! Sockets are made by a thread that enters a lab network namespace first, so they live in
//! that namespace; nothing is ever connected from the root namespace.

use std::{
    fs::File,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::proc::lock;

/// Runs `f` on a thread that first enters the network namespace `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(netns)?;
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a namespace file we hold open; only this thread moves.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    })
}

/// One answered GET.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub took: Duration,
}

/// `GET path` on a new connection from inside `netns`, within `timeout`.
pub fn http_get_in(
    netns: &Path,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let t0 = Instant::now();
    let run = || -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(
            timeout
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(1)),
        ))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    };
    let raw = in_netns(netns, run)
        .and_then(|r| r)
        .map_err(|e| format!("GET http://{addr}{path}: {e} after {:?}", t0.elapsed()))?;
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(Answer { status, body, took })
}

/// What a flood's clients saw.
#[derive(Clone, Debug, Default)]
pub struct FloodStats {
    /// Connections made (first ones and replacements).
    pub connected: usize,
    /// Connects that failed or timed out.
    pub failed: usize,
    /// Connections the server closed.
    pub closed_by_server: usize,
    /// Connections open at the last look.
    pub open: usize,
}

/// How a flood behaves.
#[derive(Clone, Copy, Debug)]
pub struct FloodOpts {
    /// Connections that send nothing.
    pub idle: usize,
    /// Connections that send a request head one byte every 500 ms and never finish it.
    pub slow: usize,
    /// Replace connections the server closes (until [`Flood::stop_reconnecting`]).
    pub reconnect: bool,
}

/// Clients holding connections to `target` open from a namespace, on a thread of their own.
pub struct Flood {
    stop: Arc<AtomicBool>,
    reconnect: Arc<AtomicBool>,
    stats: Arc<Mutex<FloodStats>>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Slot {
    stream: Option<TcpStream>,
    slow: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const TRICKLE_EVERY: Duration = Duration::from_millis(500);
const PACE: Duration = Duration::from_millis(20);

impl Flood {
    pub fn start(netns: &Path, target: SocketAddr, opts: FloodOpts) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let reconnect = Arc::new(AtomicBool::new(opts.reconnect));
        let stats = Arc::new(Mutex::new(FloodStats::default()));
        let netns: PathBuf = netns.to_owned();
        let (s, r, st) = (stop.clone(), reconnect.clone(), stats.clone());
        let thread = thread::spawn(move || {
            let ns = File::open(&netns).expect("opening the flood's namespace");
            // SAFETY: a namespace file we hold open; this thread is ours.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "entering {}: {}",
                netns.display(),
                io::Error::last_os_error()
            );
            run(target, opts, &s, &r, &st);
        });
        Flood {
            stop,
            reconnect,
            stats,
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> FloodStats {
        lock(&self.stats).clone()
    }

    /// Keeps the open connections but no longer replaces closed ones.
    pub fn stop_reconnecting(&self) {
        self.reconnect.store(false, Ordering::SeqCst);
    }

    /// Polls the stats until `pred` holds or `within` passes; the last stats and the time.
    pub fn wait(
        &self,
        within: Duration,
        pred: impl Fn(&FloodStats) -> bool,
    ) -> (FloodStats, Option<Duration>) {
        let t0 = Instant::now();
        loop {
            let st = self.stats();
            if pred(&st) {
                return (st, Some(t0.elapsed()));
            }
            if t0.elapsed() >= within {
                return (st, None);
            }
            thread::sleep(crate::proc::POLL);
        }
    }

    /// Closes every connection; the final stats.
    pub fn stop(mut self) -> FloodStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

fn connect(target: SocketAddr, slow: bool, stats: &Mutex<FloodStats>) -> Option<TcpStream> {
    let made = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).and_then(|mut s| {
        if slow {
            write!(s, "GET /healthz HTTP/1.1\r\nHost: {target}\r\nX-Slow: ")?;
        }
        s.set_nonblocking(true)?;
        Ok(s)
    });
    let mut st = lock(stats);
    match made {
        Ok(s) => {
            st.connected += 1;
            Some(s)
        }
        Err(_) => {
            st.failed += 1;
            None
        }
    }
}

/// True while the server keeps the connection open (whatever it sent is read and dropped).
fn still_open(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn run(
    target: SocketAddr,
    opts: FloodOpts,
    stop: &AtomicBool,
    reconnect: &AtomicBool,
    stats: &Mutex<FloodStats>,
) {
    let mut slots: Vec<Slot> = (0..opts.idle + opts.slow)
        .map(|i| Slot {
            stream: None,
            slow: i >= opts.idle,
        })
        .collect();
    for slot in &mut slots {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        slot.stream = connect(target, slot.slow, stats);
    }
    let mut last_trickle = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let trickle = last_trickle.elapsed() >= TRICKLE_EVERY;
        if trickle {
            last_trickle = Instant::now();
        }
        let mut closed = 0;
        for slot in &mut slots {
            if let Some(s) = &mut slot.stream {
                let open = still_open(s) && !(trickle && slot.slow && s.write_all(b"a").is_err());
                if !open {
                    slot.stream = None;
                    closed += 1;
                }
            }
            if slot.stream.is_none() && reconnect.load(Ordering::SeqCst) {
                slot.stream = connect(target, slot.slow, stats);
            }
        }
        {
            let mut st = lock(stats);
            st.closed_by_server += closed;
            st.open = slots.iter().filter(|s| s.stream.is_some()).count();
        }
        // The attacker's pace between rounds, not a wait for anything.
        thread::sleep(PACE);
    }
}

/// Descriptors of a process that are sockets.
pub fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Descriptors a process holds.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// User + system CPU time of a process.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the 3rd field,
    // utime and stime the 14th and 15th.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// (soft, hard) RLIMIT_NOFILE of a process.
pub fn nofile_of(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    Some((nums.next()?, nums.next()?))
}

/// Sets another process's RLIMIT_NOFILE (prlimit(2)).
pub fn set_nofile_of(pid: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: valid pointers; a limit on a process the caller started.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
