//! Named network namespaces (`ip netns`), and commands run inside them.
//!
//! Links are only ever created inside lab namespaces (`ip -n NS link add ... netns OTHER`), so
//! nothing appears in the root namespace, not even for a moment.

use std::{
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::proc::{self, POLL, Placement};

const NETNS_DIR: &str = "/run/netns";

/// The file of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

pub fn add(name: &str) -> Result<()> {
    proc::run("ip", &["netns", "add", name]).map(drop)
}

/// Deletes a named namespace; a missing one is not an error.
pub fn del(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    proc::run("ip", &["netns", "del", name]).map(drop)
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    proc::run("ip", &all)
}

/// Runs a program inside the namespace (setns only: mounts and cgroups stay as they are, so
/// bpffs and cgroup paths remain visible), killed after `timeout`.
pub fn output(ns: &str, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let placement = Placement {
        netns: Some(path(ns)),
        cgroup: None,
    };
    Ok(proc::output_placed(
        Command::new(program).args(args),
        &placement,
        timeout,
    )?)
}

/// Runs a program inside the namespace and fails with its stderr unless it succeeds.
pub fn run(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let out = output(ns, program, args, Duration::from_secs(30))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` in {ns} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sysctl -qw KEY=VALUE...` inside the namespace (/proc/sys/net follows the namespace).
pub fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["-qw"];
    args.extend_from_slice(settings);
    run(ns, "sysctl", &args).map(drop)
}

/// Turns IPv6 on in the namespace, for the devices it has (`all`) and those made later
/// (`default`), whatever the machine's own defaults are, without duplicate address detection
/// (`accept_dad=0`): call it before making the namespace's devices. Detection would keep
/// each device's link-local address `tentative` for a second or two after it comes up, and
/// until then the kernel sends no neighbour solicitation for a packet it forwards (it needs
/// a usable link-local source): a node would drop the first packets between pods of
/// different nodes. The lab's addresses are unique by construction.
pub fn enable_ipv6(ns: &str) -> Result<()> {
    sysctl(
        ns,
        &[
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )
}

/// `ethtool -K DEV tx off`: without it the kernel never checks checksums between veths, so a
/// broken checksum rewrite would go unnoticed.
pub fn checksum_offload_off(ns: &str, dev: &str) -> Result<()> {
    run(ns, "ethtool", &["-K", dev, "tx", "off"]).map(drop)
}

/// Adds an IPv6 address (`ADDR/LEN`) to a device without duplicate address detection
/// (`nodad`): it is usable at once, not `tentative` for a second.
pub fn add_ipv6(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"]).map(drop)
}

/// Waits until no IPv6 address of the device (global or link-local) is `tentative`
/// (duplicate address detection still running: the kernel would not use it as a source
/// yet); fails at once if one failed detection (`dadfailed`), or after `deadline`. Returns
/// how long it took (nothing, in namespaces set up by [`enable_ipv6`]: it is a check).
pub fn wait_ipv6_usable(ns: &str, dev: &str, deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let out = ip(ns, &["-6", "-o", "addr", "show", "dev", dev])?;
        if out.contains("dadfailed") {
            bail!("an IPv6 address of {dev} in {ns} failed duplicate address detection: {out}");
        }
        if !out.contains("tentative") {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            bail!(
                "the IPv6 addresses of {dev} in {ns} were still tentative after {deadline:?}: {out}"
            );
        }
        thread::sleep(POLL);
    }
}

/// Names of the existing namespaces starting with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}
