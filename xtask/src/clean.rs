//! `cargo xtask clean-lab`: removes what crashed lab runs left behind.
//!
//! Only names the lab library uses: network namespaces `fy` + 6 hex digits
//! (and anything after), cgroup v2 directories `ferry-lab-*`, mounts under
//! `/tmp/ferry-lab-*` (bpffs and others). Nothing else is touched.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{
    mountinfo::{self, Mount, mounts},
    util::{Cmd, is_root},
};

const NETNS_DIR: &str = "/run/netns";
const CGROUP_PREFIX: &str = "ferry-lab-";
const MOUNT_PREFIX: &str = "/tmp/ferry-lab-";

/// Removes the leftovers (`kill`: kills processes still inside first; `dry_run`: only lists).
pub fn run(kill: bool, dry_run: bool) -> Result<()> {
    if !is_root() && !dry_run {
        bail!("clean-lab: needs root (it deletes network namespaces, cgroups and mounts)");
    }
    let netns = lab_netns();
    let cgroups = cgroup2_mount().map(|m| lab_cgroups(&m)).unwrap_or_default();
    let mut mounts: Vec<Mount> = mounts()
        .into_iter()
        .filter(|m| m.point.to_string_lossy().starts_with(MOUNT_PREFIX))
        .collect();
    if netns.is_empty() && cgroups.is_empty() && mounts.is_empty() {
        eprintln!("clean-lab: nothing to clean");
        return Ok(());
    }

    if dry_run {
        for ns in &netns {
            eprintln!("clean-lab: would delete netns {ns}");
        }
        for cg in &cgroups {
            eprintln!("clean-lab: would remove cgroup {}", cg.display());
        }
        for m in &mounts {
            eprintln!(
                "clean-lab: would unmount {} ({})",
                m.point.display(),
                m.fstype
            );
        }
        return Ok(());
    }

    // Processes still running inside: listed, killed only with --kill.
    let mut pids: Vec<String> = Vec::new();
    for ns in &netns {
        let out = Cmd::new("ip")
            .args(["netns", "pids", ns])
            .try_output()
            .unwrap_or_default();
        pids.extend(out.split_whitespace().map(str::to_owned));
    }
    for cg in &cgroups {
        pids.extend(cgroup_procs(cg));
    }
    pids.sort();
    pids.dedup();
    if !pids.is_empty() {
        if kill {
            Cmd::new("kill").arg("-KILL").args(&pids).run()?;
            std::thread::sleep(std::time::Duration::from_millis(200));
        } else {
            eprintln!(
                "clean-lab: processes still run in lab namespaces/cgroups: {} (rerun with --kill \
                 to kill them)",
                pids.join(" ")
            );
        }
    }

    let mut failed = Vec::new();
    // Deepest first, so nested mounts come off before their parents.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.point.components().count()));
    for m in &mounts {
        let shown = format!("{} ({})", m.point.display(), m.fstype);
        match Cmd::new("umount").arg("-l").arg(&m.point).run() {
            Ok(()) => eprintln!("clean-lab: unmounted {shown}"),
            Err(e) => failed.push(format!("{shown}: {e}")),
        }
    }
    for dir in lab_tmp_dirs(&mounts) {
        // Only empty directories: files there may be someone's evidence.
        let _ = remove_empty_tree(&dir);
        if dir.exists() {
            eprintln!("clean-lab: kept {} (not empty)", dir.display());
        }
    }
    for ns in &netns {
        match Cmd::new("ip").args(["netns", "del", ns]).run() {
            Ok(()) => eprintln!("clean-lab: deleted netns {ns}"),
            Err(e) => failed.push(format!("netns {ns}: {e}")),
        }
    }
    for cg in &cgroups {
        match remove_empty_tree(cg) {
            Ok(()) => eprintln!("clean-lab: removed cgroup {}", cg.display()),
            Err(e) => failed.push(format!(
                "cgroup {} not removed (still has processes: {}): {e}",
                cg.display(),
                cgroup_procs(cg).join(" ")
            )),
        }
    }
    if !failed.is_empty() {
        bail!("clean-lab: could not remove:\n  {}", failed.join("\n  "));
    }
    eprintln!(
        "clean-lab: done: {} netns, {} cgroups, {} mounts",
        netns.len(),
        cgroups.len(),
        mounts.len()
    );
    Ok(())
}

/// `fy` + 6 hex digits (+ anything) in /run/netns.
fn lab_netns() -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_lab_netns(n))
        .collect();
    names.sort();
    names
}

fn is_lab_netns(name: &str) -> bool {
    name.strip_prefix("fy").is_some_and(|rest| {
        rest.len() >= 6 && rest.as_bytes()[..6].iter().all(u8::is_ascii_hexdigit)
    })
}

/// Directories named `ferry-lab-*` in the cgroup2 tree (searched a few levels deep).
fn lab_cgroups(mount: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(mount.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(CGROUP_PREFIX) {
                found.push(path);
            } else if depth < 4 {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// PIDs in a cgroup and its descendants.
fn cgroup_procs(dir: &Path) -> Vec<String> {
    let mut pids: Vec<String> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for sub in subdirs(dir) {
        pids.extend(cgroup_procs(&sub));
    }
    pids
}

/// rmdir bottom-up; fails on the first directory that is not empty. Works for
/// cgroups (whose control files vanish with rmdir) and plain empty directories.
fn remove_empty_tree(dir: &Path) -> std::io::Result<()> {
    for sub in subdirs(dir) {
        remove_empty_tree(&sub)?;
    }
    fs::remove_dir(dir)
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The top-level `/tmp/ferry-lab-*` directories of the unmounted mount points.
fn lab_tmp_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = mounts
        .iter()
        .filter_map(|m| m.point.strip_prefix("/tmp").ok()?.components().next())
        .map(|c| Path::new("/tmp").join(c))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Where cgroup v2 is mounted (the hybrid location on these machines).
pub fn cgroup2_mount() -> Option<PathBuf> {
    mountinfo::cgroup2_mount()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names() {
        assert!(is_lab_netns("fy0a1b2c"));
        assert!(is_lab_netns("fy0a1b2c-client"));
        assert!(!is_lab_netns("fyi"));
        assert!(!is_lab_netns("fy0a1b2g"));
        assert!(!is_lab_netns("cni-1234"));
    }

    #[test]
    fn tmp_dirs() {
        let m = |p: &str| Mount {
            point: PathBuf::from(p),
            fstype: "bpf".into(),
        };
        let dirs = lab_tmp_dirs(&[m("/tmp/ferry-lab-1/bpffs"), m("/tmp/ferry-lab-1/x")]);
        assert_eq!(dirs, vec![PathBuf::from("/tmp/ferry-lab-1")]);
    }
}
