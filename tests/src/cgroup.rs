//! The lab's cgroup: a child directory of the cgroup2 mount, never the root itself.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::proc::POLL;

/// Where cgroup2 is mounted (ferry's own reading of mountinfo; on hybrid hosts
/// /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf> {
    ferry::mountinfo::cgroup2_mount().context("no cgroup2 mount in /proc/self/mountinfo")
}

/// True if `path` is a mount point (of any type) in this mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    ferry::mountinfo::mounts().iter().any(|m| m.point == path)
}

/// The PIDs in a cgroup (empty if it does not exist).
pub fn procs(cg: &Path) -> Vec<u32> {
    fs::read_to_string(cg.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills, by PID, every process left in the lab cgroup (only the lab puts processes there),
/// again and again until it is empty (a dying process may have forked) or `timeout` passed.
pub fn kill_all(cg: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = procs(cg);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process inside the lab's own cgroup.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        thread::sleep(POLL);
    }
}

/// Waits until the cgroup has no process (up to `timeout`), then removes it.
pub fn remove(cg: &Path, timeout: Duration) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = procs(cg);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("cgroup {} still has processes {left:?}", cg.display());
        }
        thread::sleep(POLL);
    }
    // A just-emptied cgroup may briefly refuse rmdir (EBUSY) while exiting tasks are released.
    loop {
        match fs::remove_dir(cg) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("rmdir {}", cg.display()));
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// The cgroup v2 path of a process, relative to the cgroup2 mount (the `0::` line).
pub fn of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}
