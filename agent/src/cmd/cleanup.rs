//! `ferry cleanup`: detach and unpin everything ferry put in the kernel.
//!
//! Removing a link's pin detaches it once no process holds it; with
//! `--cgroup`, ferry's links on that cgroup are detached outright, so even a
//! hung agent's hooks go. Maps go with their pins once no program uses them.

use std::{fs, path::Path};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{cli::CleanupArgs, datapath::sys, paths};

pub fn run(args: &CleanupArgs) -> anyhow::Result<()> {
    if let Some(cg) = &args.cgroup {
        let n = detach_from_cgroup(cg)?;
        info!(cgroup = %cg.display(), links = n, "detached ferry's links");
    }
    let removed = unpin_all(&args.bpffs)?;
    info!(dir = %args.bpffs.display(), pins = removed, "removed pins");
    Ok(())
}

/// Detaches every cgroup link on `cgroup` whose program is ferry's.
pub fn detach_from_cgroup(cgroup: &Path) -> anyhow::Result<usize> {
    let id = sys::cgroup_id(cgroup).with_context(|| format!("cgroup {}", cgroup.display()))?;
    let mut n = 0;
    for link in sys::link_ids() {
        let Ok(fd) = sys::link_fd(link) else { continue };
        let Ok(info) = sys::link_info(&fd) else {
            continue;
        };
        if info.kind != sys::BPF_LINK_TYPE_CGROUP || info.target != id {
            continue;
        }
        if !sys::prog_name(info.prog_id)
            .is_ok_and(|name| name.starts_with(paths::map_names::NAME_PREFIX))
        {
            continue;
        }
        sys::link_detach(&fd).with_context(|| format!("detaching link {link}"))?;
        n += 1;
    }
    Ok(n)
}

/// Removes ferry's pins (links first, so hooks go before the maps they
/// use), then the directory if it is left empty.
pub fn unpin_all(dir: &Path) -> anyhow::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(paths::map_names::NAME_PREFIX))
        .collect();
    // Links ("ferry_link_*") before maps.
    names.sort_by_key(|n| !n.starts_with("ferry_link_"));
    for name in &names {
        fs::remove_file(dir.join(name)).with_context(|| format!("unpinning {name}"))?;
    }
    if let Err(e) = fs::remove_dir(dir) {
        warn!(dir = %dir.display(), error = %e, "pin directory not removed");
    }
    Ok(names.len())
}
