//! The metrics every Prometheus client library exports about its process
//! (client_golang's process collector, which kube-proxy has: the same names
//! and units), and `ferry_build_info`, read from /proc at scrape time.

use std::{fmt::Write as _, fs};

/// Appends the process and build-info metrics to `out`. A value /proc does
/// not give is left out rather than reported as 0.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP ferry_build_info The agent's version and source revision\n# TYPE ferry_build_info gauge\nferry_build_info{{version=\"{}\",revision=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        crate::REVISION
    );
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    if let Some(st) = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| Stat::parse(&s))
    {
        if ticks > 0.0 {
            metric(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (st.utime + st.stime) as f64 / ticks,
            );
            if let Some(boot) = boot_time() {
                metric(
                    out,
                    "process_start_time_seconds",
                    "gauge",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + st.starttime as f64 / ticks,
                );
            }
        }
        metric(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            st.vsize as f64,
        );
        metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            st.rss as f64 * page,
        );
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        metric(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        metric(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            lim.rlim_cur as f64,
        );
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

/// The fields of /proc/self/stat the metrics use (proc(5)).
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss: u64,
}

impl Stat {
    fn parse(s: &str) -> Option<Stat> {
        // The command name (field 2) is in parentheses and may hold spaces
        // and parentheses itself: fields are counted after the last ')'.
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): field n is f[n - 3].
        let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: n(14)?,
            stime: n(15)?,
            starttime: n(22)?,
            vsize: n(23)?,
            rss: n(24)?,
        })
    }
}

/// The boot time, seconds since the epoch (/proc/stat's btime).
fn boot_time() -> Option<u64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 25 0 0 20 0 4 0 98765 123456789 4321 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 150,
                stime: 25,
                starttime: 98765,
                vsize: 123_456_789,
                rss: 4321,
            })
        );
        assert_eq!(Stat::parse("1 (x) S"), None);
    }

    #[test]
    fn this_process_is_described() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "ferry_build_info{version=\"",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(out.contains(name), "{name} missing:\n{out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "a test binary holds more than 1 MB: {rss}");
    }
}
