//! ferry-demo [--keep | --down]
//!
//! gin-vue-admin's network on one machine (see `ferry_tests::demo`): a one-node lab built from
//! `deploy/examples/gin-vue-admin/`, real servers and clients, one report line per result
//! (`ok` or `FAIL` with what failed). Exits non-zero if any line failed.
//!
//! Without `--keep` everything is removed at the end, also on failure and on Ctrl-C. With
//! `--keep` the lab stays up, the way in is printed, and its id is written to
//! /tmp/ferry-demo.state so that `ferry-demo --down` removes it.
//!
//! `ferry-demo http-server --pod NAME --port PORT` is the demo's small HTTP server (the gin,
//! vue and web-server pods run it).

use std::{
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
    process::ExitCode,
};

use ferry_tests::{
    demo::{self, checks::Line, http_server, keep},
    is_root, proc,
};

const USAGE: &str = "usage: ferry-demo [--keep | --down]";

/// Programs the demo runs, with the Debian package that has each.
const PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("sysctl", "procps"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
    ("mariadb-install-db", "mariadb-server"),
    ("mariadbd", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("nginx", "nginx"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
    ("getent", "libc-bin"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["http-server", "--pod", pod, "--port", port] => {
            let Ok(port) = port.parse() else {
                eprintln!("ferry-demo http-server: bad port {port}");
                return ExitCode::from(2);
            };
            if let Err(e) = http_server::serve(pod, port) {
                eprintln!("ferry-demo http-server: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        ["-h" | "--help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [] => run(false),
        ["--keep"] => run(true),
        ["--down"] => {
            if !is_root() {
                return needs_root();
            }
            exit(keep::down().into_iter().fold(true, |all, l| {
                print_line(&l);
                all && l.ok
            }))
        }
        _ => {
            eprintln!("ferry-demo: unknown arguments {args:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn needs_root() -> ExitCode {
    eprintln!("ferry-demo needs root (network namespaces, cgroups, bpffs, eBPF programs)");
    ExitCode::from(2)
}

fn print_line(l: &Line) {
    println!("{}  {}", if l.ok { "ok  " } else { "FAIL" }, l.text);
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(keep: bool) -> ExitCode {
    if !is_root() {
        return needs_root();
    }
    if let Some(id) = keep::kept_id() {
        print_line(&Line::fail(format!(
            "a kept demo lab exists (id {id}): remove it first: cargo xtask demo --down"
        )));
        return ExitCode::FAILURE;
    }
    if let Err(missing) = preflight() {
        print_line(&Line::fail(missing));
        return ExitCode::FAILURE;
    }
    // A panic (a lab helper that could not do its job) becomes one FAIL line; the lab's
    // guard removes what was built on the way out.
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        println!("FAIL  {msg}");
    }));
    match panic::catch_unwind(AssertUnwindSafe(|| demo::run(keep))) {
        Ok(report) => exit(report.failed == 0),
        Err(_) => ExitCode::FAILURE,
    }
}

/// The ferry binary and every program the demo runs must be there.
fn preflight() -> Result<(), String> {
    let ferry = std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .or_else(|| proc::sibling_binary("ferry"));
    if !ferry.is_some_and(|p| p.is_file()) {
        return Err(
            "the ferry binary was not found (FERRY_BIN, or next to ferry-demo): build \
                    it: cargo build -p agent (cargo xtask demo does)"
                .into(),
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|(prog, _)| !std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
        .map(|(prog, pkg)| format!("{prog} (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing programs: {}. `cargo xtask demo` installs them (its setup step), or: \
             apt-get install --no-install-recommends <the packages>",
            missing.join(", ")
        ))
    }
}
