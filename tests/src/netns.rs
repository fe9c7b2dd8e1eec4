//! Named network namespaces (`ip netns`), and commands run inside them.
//!
//! Links are only ever created inside lab namespaces (`ip -n NS link add ... netns OTHER`), so
//! nothing appears in the root namespace, not even for a moment.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use anyhow::Result;

use crate::proc::{self, Placement};

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
