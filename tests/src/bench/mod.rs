//! `ferry-bench`: ferry side by side with the physical limit and kube-proxy's iptables and
//! nftables layouts, in labs of network namespaces (see docs/benchmarks.md for the method).
//!
//! Every section compares contenders inside one run, interleaved round by round, and reports
//! medians with their range: the machines are shared and noisy, so absolute numbers mean
//! little and ratios are the result. Nothing is asserted: a section that cannot run says why.

pub mod bpfstats;
pub mod control;
pub mod eastwest;
pub mod env;
pub mod flood;
pub mod kubeproxy;
pub mod load;
pub mod monitor;
pub mod napi;
pub mod northsouth;
pub mod progcost;
pub mod report;
pub mod server;
pub mod shortconn;
pub mod sinkdrop;
pub mod stats;
pub mod synth;
pub mod xdpgen;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{Lab, lab::ipv6_twin};

/// The address family a measurement ran over. The labs are dual-stack: every IPv4 address
/// has its IPv6 twin ([`ipv6_twin`]), so one topology serves both and a family picks which
/// of each pair a client dials. Results written before IPv6 was measured read as IPv4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// This family's address of a lab address: the address itself, or its IPv6 twin.
    pub fn addr(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => v4.into(),
            Family::V6 => ipv6_twin(v4).into(),
        }
    }

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// `http://ip:port/` or `http://[ipv6]:port/`.
pub fn http_url(ip: IpAddr, port: u16) -> String {
    format!("http://{}/", SocketAddr::new(ip, port))
}

/// `families` in round `round`'s order: rotated by one each round, as the contenders are, so
/// that neither family always runs first.
pub fn rotated(families: &[Family], round: usize) -> Vec<Family> {
    let n = families.len().max(1);
    (0..families.len())
        .map(|k| families[(k + round) % n])
        .collect()
}

/// A section's result, or why it was not measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Outcome<T> {
    Done(T),
    NotMeasured(String),
}

impl<T> Outcome<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            Outcome::Done(t) => Some(t),
            Outcome::NotMeasured(_) => None,
        }
    }

    fn from_result(r: Result<T>) -> Self {
        r.map_or_else(|e| Outcome::NotMeasured(format!("{e:#}")), Outcome::Done)
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// A smoke run: small sizes, one short round.
    pub quick: bool,
    /// Where benchmarks.md, benchmarks.json and the plots go.
    pub out: PathBuf,
    /// Sections to run (all when empty): eastwest, northsouth, progcost, control, flood.
    pub only: Vec<String>,
    /// Keep the other sections of the report already in `out` (benchmarks.json) and replace
    /// only the ones run now; with `only` empty, run nothing and re-render the report.
    pub merge: bool,
    /// Run ferry with `ferry monitor` listening (east-west and north-south).
    pub monitor: bool,
    /// The east-west section's service counts instead of its defaults (both families).
    pub eastwest_sizes: Option<Vec<usize>>,
    /// Rounds of the east-west, north-south and flood sections instead of their defaults.
    pub rounds: Option<usize>,
    /// East-west: per-program run counts and run time (BPF_ENABLE_STATS) around every run.
    pub bpf_stats: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub quick: bool,
    pub machine: env::Machine,
    pub took_secs: f64,
    pub eastwest: Outcome<eastwest::Results>,
    pub northsouth: Outcome<northsouth::Results>,
    pub progcost: Outcome<progcost::Results>,
    pub control: Outcome<Vec<control::SizeResult>>,
    /// Absent from reports written before the section existed.
    #[serde(default = "skipped_section")]
    pub flood: Outcome<flood::Results>,
}

/// Runs the sections and writes the report; returns the markdown file's path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    let start = Instant::now();
    let previous: Option<Report> = if opts.merge {
        let path = opts.out.join("benchmarks.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--merge: reading {}", path.display()))?;
        Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)
    } else {
        None
    };
    let wanted = |s: &str| {
        if opts.merge {
            opts.only.iter().any(|o| o == s)
        } else {
            opts.only.is_empty() || opts.only.iter().any(|o| o == s)
        }
    };
    let machine = env::machine();

    let eastwest = if wanted("eastwest") {
        Outcome::from_result(run_eastwest(opts))
    } else {
        skipped_section()
    };
    let northsouth = if wanted("northsouth") {
        let config = if opts.quick {
            northsouth::Config {
                rounds: 1,
                secs: 1.0,
                conns: 4,
                monitor: opts.monitor,
            }
        } else {
            northsouth::Config {
                rounds: opts.rounds.unwrap_or(5),
                secs: 3.0,
                conns: 8,
                monitor: opts.monitor,
            }
        };
        Outcome::from_result(northsouth::run(&config))
    } else {
        skipped_section()
    };
    let progcost = if wanted("progcost") {
        let (samples, rounds) = if opts.quick { (2_000, 1) } else { (50_000, 5) };
        Outcome::from_result(progcost::run(samples, rounds))
    } else {
        skipped_section()
    };
    let control = if wanted("control") {
        let size = |services, endpoints_per_service| control::Size {
            services,
            endpoints_per_service,
        };
        let config = if let Ok(sizes) = std::env::var("FERRY_BENCH_CONTROL_SIZES") {
            // "10000x10,1000x10": services x endpoints each, no kube-proxy timings (profiling).
            control::Config {
                sizes: sizes
                    .split(',')
                    .filter_map(|s| {
                        let (n, e) = s.split_once('x')?;
                        Some(size(n.trim().parse().ok()?, e.trim().parse().ok()?))
                    })
                    .collect(),
                changes: 40,
                kube_proxy_up_to: 0,
            }
        } else if opts.quick {
            control::Config {
                sizes: vec![size(100, 10)],
                changes: 3,
                kube_proxy_up_to: 100,
            }
        } else {
            control::Config {
                // 50,000 services with 2 endpoints each: 100,000 endpoints, as many as the
                // 10,000-service set, in the maps' default sizes.
                sizes: vec![size(1_000, 10), size(10_000, 10), size(50_000, 2)],
                changes: 40,
                kube_proxy_up_to: 10_000,
            }
        };
        Outcome::from_result(control::run(&config))
    } else {
        skipped_section()
    };
    let flood = if wanted("flood") {
        Outcome::from_result(run_flood(opts.quick, opts.rounds))
    } else {
        skipped_section()
    };
    let mut report = Report {
        quick: opts.quick,
        machine,
        took_secs: start.elapsed().as_secs_f64(),
        eastwest,
        northsouth,
        progcost,
        control,
        flood,
    };
    if let Some(prev) = previous {
        report.machine = prev.machine;
        report.took_secs += prev.took_secs;
        report.quick = prev.quick;
        if !wanted("eastwest") {
            report.eastwest = prev.eastwest;
        }
        if !wanted("northsouth") {
            report.northsouth = prev.northsouth;
        }
        if !wanted("progcost") {
            report.progcost = prev.progcost;
        }
        if !wanted("control") {
            report.control = prev.control;
        }
        if !wanted("flood") {
            report.flood = prev.flood;
        }
    }
    report::write(&opts.out, &report)
}

fn skipped_section<T>() -> Outcome<T> {
    Outcome::NotMeasured("not selected (--only)".into())
}

fn run_flood(quick: bool, rounds: Option<usize>) -> Result<flood::Results> {
    env::tool("iptables-restore", "iptables")?;
    let config = if quick {
        flood::Config {
            rounds: 1,
            secs: 1.0,
        }
    } else {
        flood::Config {
            rounds: rounds.unwrap_or(5),
            secs: 3.0,
        }
    };
    flood::run(&config)
}

/// The CPU east-west pins its load and servers to: one core pays for a connection end to end
/// (issue 14's setting), so a contender's per-connection CPU cost shows in connections/s.
const EASTWEST_CPU: usize = 0;

fn run_eastwest(opts: &Options) -> Result<eastwest::Results> {
    let (quick, monitor, bpf_stats) = (opts.quick, opts.monitor, opts.bpf_stats);
    env::tool("wrk", "wrk")?;
    env::tool("iptables-restore", "iptables")?;
    env::tool("ip6tables-restore", "iptables")?;
    env::tool("nft", "nftables")?;
    let mut config = if quick {
        eastwest::Config {
            sizes: vec![1, 100],
            // IPv6 at one size only: the smoke run checks its path and tables, briefly.
            ipv6_sizes: vec![100],
            rounds: 1,
            secs: 1.0,
            conns: 4,
            monitor,
            bpf_stats,
            pin_cpu: Some(EASTWEST_CPU),
            threads: 2,
            paired: true,
            kept_every: 1,
            one_backend: true,
            spread: true,
        }
    } else {
        eastwest::Config {
            sizes: vec![1, 1_000, 10_000],
            ipv6_sizes: vec![1, 1_000, 10_000],
            // 16 pairs of 1-second runs (the orders balanced) instead of 5 rounds of 3 s:
            // a ratio per pair resolves ferry / direct to about a percent where the rounds'
            // ±20 % drift could not; the latency runs every other round (8 of 1 s each) keep
            // the section's time about what it was.
            rounds: 16,
            secs: 1.0,
            conns: 8,
            monitor,
            bpf_stats,
            pin_cpu: Some(EASTWEST_CPU),
            threads: 2,
            paired: true,
            kept_every: 2,
            one_backend: true,
            spread: true,
        }
    };
    if let Some(sizes) = &opts.eastwest_sizes {
        config.sizes.clone_from(sizes);
        config.ipv6_sizes.clone_from(sizes);
    }
    if let Some(rounds) = opts.rounds {
        config.rounds = rounds;
    }
    let lab = Lab::try_new("bench-eastwest")?;
    eastwest::run(&lab, &config)
}
