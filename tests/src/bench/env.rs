//! What the bench needs around the lab: commands in lab namespaces (refusing any other),
//! HTTP from inside a namespace, the agent's log and memory, the machine's description.

use std::{
    fs::File,
    io::{Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns,
    proc::{self, Placement},
};

/// Runs `program args` inside the lab namespace `ns` with `nsenter --net=/run/netns/<ns>`.
/// Refuses any namespace that is not a lab's (`fy<id>-...`), so that no rule can ever land in
/// the root namespace. Returns the output and the wall-clock time it took.
pub fn in_lab_ns(
    ns: &str,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<(Output, Duration)> {
    if !is_lab_ns(ns) || !netns::exists(ns) {
        bail!("refusing to run {program} outside a lab namespace (got {ns:?})");
    }
    let net = format!("--net={}", netns::path(ns).display());
    let start = Instant::now();
    let out = proc::output_placed(
        Command::new("nsenter").arg(&net).arg(program).args(args),
        &Placement::default(),
        timeout,
    )
    .with_context(|| format!("running nsenter {net} {program}"))?;
    Ok((out, start.elapsed()))
}

/// Like [`in_lab_ns`], failing with stderr unless the program succeeds.
pub fn in_lab_ns_ok(ns: &str, program: &str, args: &[&str], timeout: Duration) -> Result<Duration> {
    let (out, took) = in_lab_ns(ns, program, args, timeout)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` in {ns} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// A lab namespace name: `fy` + 6 hex digits + `-` + a name.
pub fn is_lab_ns(ns: &str) -> bool {
    let b = ns.as_bytes();
    b.len() > 9 && ns.starts_with("fy") && b[2..8].iter().all(u8::is_ascii_hexdigit) && b[8] == b'-'
}

/// GET `path` from 127.0.0.1:`port` inside the network namespace file `ns_path`: a thread
/// enters the namespace (setns affects only itself) and makes the request. Returns the body.
pub fn http_get_in(ns_path: &Path, port: u16, path: &str) -> Result<String> {
    let ns_path = ns_path.to_owned();
    let path = path.to_owned();
    thread::spawn(move || -> Result<String> {
        let ns = File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: setns(2) on an open namespace file; only this short-lived thread moves.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok(body.to_owned())
    })
    .join()
    .unwrap_or_else(|_| bail!("the HTTP thread panicked"))
}

/// A Prometheus sample value (`name value` line, no labels) from a /metrics body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Peak resident set size (VmHWM) of a process, in bytes.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let kb: u64 = l
            .strip_prefix("VmHWM:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

/// One `synced` line of the agent's log.
#[derive(Clone, Debug)]
pub struct Synced {
    pub at: SystemTime,
    pub added: u64,
    pub updated: u64,
    pub removed: u64,
    pub took_us: u64,
    /// From the first event of the burst received to the map written.
    pub event_us: u64,
}

/// Every `synced` line of an agent log, in order.
pub fn synced_lines(log: &str) -> Vec<Synced> {
    log.lines()
        .filter(|l| l.contains(" synced "))
        .filter_map(|l| {
            let at = parse_rfc3339(l.split_whitespace().next()?)?;
            let field = |k: &str| -> u64 {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                    .unwrap_or(0)
            };
            Some(Synced {
                at,
                added: field("added"),
                updated: field("updated"),
                removed: field("removed"),
                took_us: field("took_us"),
                event_us: field("event_us"),
            })
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` (tracing's UTC timestamps).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u32 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// The machine the bench runs on, for the report.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub date: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim())
        })
        .unwrap_or("unknown")
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kb: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let date = proc::run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu,
        cores,
        memory_gib: mem_kb / 1024.0 / 1024.0,
        date,
    }
}

/// A program next to this executable (target/release/<name>), or an error naming the build.
pub fn sibling(name: &str) -> Result<PathBuf> {
    proc::sibling_binary(name).with_context(|| {
        format!("{name} is not built next to ferry-bench: cargo build --release --workspace")
    })
}

/// A tool from PATH, or an error naming its Debian package.
pub fn tool(name: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{name} is missing: apt-get install {package} (cargo xtask setup installs it)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps_and_synced_lines() {
        let t = parse_rfc3339("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(86_401_500));
        let t = parse_rfc3339("2024-03-01T12:00:00.000001Z").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(secs.as_secs(), 1_709_294_400);
        assert_eq!(secs.subsec_micros(), 1);
        let log = "2024-03-01T12:00:00.000001Z  INFO ferry::control::run: synced added=3 updated=1 removed=0 unchanged=0 errors=0 services=1 took_us=42 event_us=57\n\
                   2024-03-01T12:00:00.000002Z  INFO ferry::cmd::agent: starting";
        let s = synced_lines(log);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].added, s[0].updated, s[0].took_us), (3, 1, 42));
        assert_eq!(s[0].event_us, 57);
    }

    #[test]
    fn only_lab_namespaces() {
        assert!(is_lab_ns("fy0a1b2c-rt-ipt"));
        assert!(!is_lab_ns("fy0a1b2c"));
        assert!(!is_lab_ns("default"));
        assert!(!is_lab_ns("fyzzzzzz-x"));
        assert_eq!(metric("# HELP x\nx 3\nx_total 4\n", "x"), Some(3.0));
    }
}
