//! The load tool: `wrk` (Debian's package), run inside a client namespace.
//!
//! Short connections: `wrk -H "Connection: close"` makes the server close after each response
//! and wrk reconnect, so requests/s is connections/s (connect, one request, close).
//! Latency: one kept-alive connection (`-c1`), `--latency` for its percentiles.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::proc::{self, Placement};

/// What one wrk run reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub requests: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// connect + read + write + timeout socket errors, and non-2xx responses.
    pub errors: u64,
}

/// Where a client runs: its namespace, and the lab cgroup when ferry's socket hooks must see it.
#[derive(Clone, Debug)]
pub struct ClientPlace {
    pub netns_path: PathBuf,
    pub cgroup: Option<PathBuf>,
}

/// Runs wrk against `url` for `secs` seconds with `conns` connections. `close` makes every
/// request a new connection. Killed if it overruns by 15 s.
pub fn wrk(
    place: &ClientPlace,
    url: &str,
    secs: f64,
    conns: u32,
    close: bool,
) -> Result<WrkResult> {
    wrk_on(place, &WrkOpts::default(), url, secs, conns, close)
}

/// How [`wrk_on`] runs wrk.
#[derive(Clone, Debug, Default)]
pub struct WrkOpts {
    /// Pinned to this CPU (`taskset -c`: wrk and its threads run there only).
    pub cpu: Option<usize>,
    /// wrk's threads (`-t`; 0 is 1), the connections shared among them.
    pub threads: u32,
    /// A wrk Lua script (`-s`), e.g. one that gives each thread its own server address.
    pub script: Option<std::path::PathBuf>,
}

/// [`wrk`] as `opts` says.
pub fn wrk_on(
    place: &ClientPlace,
    opts: &WrkOpts,
    url: &str,
    secs: f64,
    conns: u32,
    close: bool,
) -> Result<WrkResult> {
    let duration = format!("{}s", secs.max(1.0).round() as u64);
    let mut cmd = pinned(opts.cpu, "wrk");
    // wrk wants at least as many connections as threads.
    let threads = opts.threads.clamp(1, conns.max(1));
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &conns.to_string(),
        "-d",
        &duration,
        "--latency",
    ])
    .args(["--timeout", "2s"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    if let Some(script) = &opts.script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url);
    let text = stdout_at(place, &mut cmd, secs, &format!("wrk {url}"))?;
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// Runs a load `cmd` at `place` for a run of `secs` (killed if it overruns by 15 s) and returns
/// what it printed; `what` names it in errors.
pub fn stdout_at(place: &ClientPlace, cmd: &mut Command, secs: f64, what: &str) -> Result<String> {
    let placement = Placement {
        netns: Some(place.netns_path.clone()),
        cgroup: place.cgroup.clone(),
    };
    let out = proc::output_placed(cmd, &placement, Duration::from_secs_f64(secs + 15.0))
        .with_context(|| format!("running {what}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// `program`, pinned to `cpu` (`taskset -c`) when one is given.
pub fn pinned(cpu: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Parses wrk's report.
pub fn parse(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_dist = false;
    let mut seen_rps = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().ok()?;
            seen_rps = true;
        } else if l.starts_with("Latency Distribution") {
            in_dist = true;
        } else if in_dist && (l.starts_with("50%") || l.starts_with("99%")) {
            let mut it = l.split_whitespace();
            let pct = it.next()?;
            let v = duration_us(it.next()?)?;
            if pct == "50%" {
                r.p50_us = Some(v);
            } else {
                r.p99_us = Some(v);
                in_dist = false;
            }
        } else if l.contains(" requests in ") {
            r.requests = l.split_whitespace().next()?.parse().ok()?;
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            r.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().ok()?;
        }
    }
    seen_rps.then_some(r)
}

/// `123.45us`, `1.23ms`, `2.00s` -> microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("m") {
        (n, 60e6)
    } else {
        (s.strip_suffix('s')?, 1e6)
    };
    Some(num.parse::<f64>().ok()? * mult)
}

/// What one CPU did over an interval, from `/proc/stat` (in USER_HZ ticks, 10 ms here): time
/// busy (user, nice, system, irq, softirq), idle (idle, iowait), and stolen by the hypervisor
/// (the VM's vCPU waiting for a host CPU, which the guest sees only as this counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTicks {
    pub busy: u64,
    pub idle: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// CPU `cpu`'s counters now; zeros when /proc/stat cannot be read (the figures are notes).
    pub fn now(cpu: usize) -> CpuTicks {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| Self::parse(&t, cpu))
            .unwrap_or_default()
    }

    /// The `cpuN` line of a /proc/stat text: user nice system idle iowait irq softirq steal ...
    pub fn parse(stat: &str, cpu: usize) -> Option<CpuTicks> {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTicks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3) + at(4),
            steal: at(7),
        })
    }

    /// The counters from `before` to `self`.
    pub fn since(self, before: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: self.busy.saturating_sub(before.busy),
            idle: self.idle.saturating_sub(before.idle),
            steal: self.steal.saturating_sub(before.steal),
        }
    }

    /// The share of the interval stolen (0 when nothing was counted).
    pub fn steal_share(self) -> f64 {
        let total = self.busy + self.idle + self.steal;
        if total == 0 {
            0.0
        } else {
            self.steal as f64 / total as f64
        }
    }
}

/// CPU time (ns) of this process's children that have been waited for (`RUSAGE_CHILDREN`,
/// user + system): its difference around a wrk run is wrk's own CPU time, softirq work
/// done in its context included (the kernel has no IRQ time accounting here).
pub fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// Time on CPU (ns, the scheduler's `/proc/PID/task/*/schedstat`) of all of a process's threads:
/// around a run, what a server spent on it, softirq work done in its context included.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(std::result::Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let text = "Running 3s test @ http://10.96.0.10/\n  1 threads and 8 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   345.12us  100.00us   5.00ms   90.00%\n    Req/Sec    20.00k     1.00k   22.00k    70.00%\n  Latency Distribution\n     50%  320.00us\n     75%  400.00us\n     90%  500.00us\n     99%    1.20ms\n  60000 requests in 3.00s, 5.00MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 5\nRequests/sec:  20000.50\nTransfer/sec:      1.67MB\n";
        let r = parse(text).unwrap();
        assert_eq!(r.requests_per_sec, 20000.5);
        assert_eq!(r.requests, 60000);
        assert_eq!(r.p50_us, Some(320.0));
        assert_eq!(r.p99_us, Some(1200.0));
        assert_eq!(r.errors, 11);
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn reads_a_cpu_line_of_proc_stat() {
        let stat = "cpu  6271952 287770 2844376 5172632 72419 0 857955 178889 0 0\ncpu0 100 10 50 300 20 5 15 25 0 0\ncpu1 1 2 3 4 5 6 7 8 0 0\n";
        let t = CpuTicks::parse(stat, 0).unwrap();
        assert_eq!(
            t,
            CpuTicks {
                busy: 100 + 10 + 50 + 5 + 15,
                idle: 320,
                steal: 25
            }
        );
        assert_eq!(CpuTicks::parse(stat, 1).unwrap().steal, 8);
        assert!(CpuTicks::parse(stat, 2).is_none());
        let later = CpuTicks {
            busy: 270,
            idle: 330,
            steal: 45,
        };
        let d = later.since(t);
        assert_eq!(
            d,
            CpuTicks {
                busy: 90,
                idle: 10,
                steal: 20
            }
        );
        assert!((d.steal_share() - 20.0 / 120.0).abs() < 1e-12);
        assert_eq!(CpuTicks::default().steal_share(), 0.0);
    }
}
