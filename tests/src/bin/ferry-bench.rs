//! ferry-bench: ferry side by side with direct pod IPs and kube-proxy's iptables and nftables
//! rules (see docs/benchmarks.md). Run by `cargo xtask bench`; needs root.
//!
//! ```text
//! ferry-bench run [--quick] [--out DIR] [--only SECTION[,SECTION..]] [--merge] [--monitor]
//!                 [--bpf-stats] [--sizes N[,N..]] [--rounds N]
//!     --merge: rerun only the --only sections into DIR's existing report (none: re-render it)
//!     --monitor: ferry measured again each round with `ferry monitor` listening (east-west,
//!                north-south), beside its runs without
//!     --bpf-stats: east-west: the lab's programs' run counts and time per contender
//!     --rounds: the east-west, north-south and flood sections' rounds (default 5)
//!     --sizes: the east-west section's service counts (default 1,1000,10000), both families
//! ferry-bench serve --port PORT [--lifetime SECS]     (the backends' HTTP server)
//! ferry-bench shortconn --targets ADDR[,ADDR..] [--conns N] [--threads N] [--secs S]
//!     (east-west's short-connection client: each connection to a random target; prints its
//!     counts as one JSON line)
//! ```

use std::{path::PathBuf, process::ExitCode, time::Duration};

use ferry_tests::{
    bench::{self, Options, server, shortconn},
    is_root,
};

const USAGE: &str = "usage: ferry-bench run [--quick] [--out DIR] [--only eastwest,northsouth,progcost,control,flood] [--merge] [--monitor] [--bpf-stats] [--sizes N[,N..]] [--rounds N]\n       ferry-bench serve --port PORT [--lifetime SECS]\n       ferry-bench shortconn --targets ADDR[,ADDR..] [--conns N] [--threads N] [--secs S]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("shortconn") => short_connections(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: &[String]) -> ExitCode {
    let mut port = None;
    let mut lifetime = 3600;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next().and_then(|v| v.parse().ok())) {
            ("--port", Some(v)) => port = u16::try_from(v).ok(),
            ("--lifetime", Some(v)) => lifetime = v,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(port) = port else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match server::serve(port, Duration::from_secs(lifetime)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn short_connections(args: &[String]) -> ExitCode {
    let opts = match shortconn::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ferry-bench shortconn: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match shortconn::run(&opts) {
        Ok(c) => {
            println!("{}", serde_json::to_string(&c).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-bench shortconn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> ExitCode {
    let mut opts = Options {
        quick: false,
        out: PathBuf::from("docs"),
        only: Vec::new(),
        merge: false,
        monitor: false,
        eastwest_sizes: None,
        rounds: None,
        bpf_stats: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--merge" => opts.merge = true,
            "--monitor" => opts.monitor = true,
            "--bpf-stats" => opts.bpf_stats = true,
            "--rounds" => match it.next().map(|v| v.parse::<usize>()) {
                Some(Ok(r)) if r > 0 => opts.rounds = Some(r),
                _ => return usage(),
            },
            "--out" => match it.next() {
                Some(v) => opts.out = PathBuf::from(v),
                None => return usage(),
            },
            "--only" => match it.next() {
                Some(v) => opts.only = v.split(',').map(str::to_owned).collect(),
                None => return usage(),
            },
            "--sizes" => match it.next().map(|v| {
                v.split(',')
                    .map(str::parse::<usize>)
                    .collect::<Result<Vec<_>, _>>()
            }) {
                Some(Ok(sizes)) if !sizes.is_empty() => opts.eastwest_sizes = Some(sizes),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    if !is_root() {
        eprintln!("ferry-bench needs root (network namespaces, cgroups, bpffs, eBPF)");
        return ExitCode::from(2);
    }
    match bench::run(&opts) {
        Ok(path) => {
            println!("bench: wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
