//! `ferry cleanup`: detach and unpin everything ferry put in the kernel.
//!
//! Removing a link's pin detaches it once no process holds it; with
//! `--cgroup`, ferry's links on that cgroup are detached outright, so even a
//! hung agent's hooks go. Maps go with their pins once no program uses them.

use std::{collections::BTreeSet, fs, io, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::Context as _;
use aya::programs::{links::LinkType, loaded_links, loaded_programs};
use tracing::{info, warn};

use crate::{cli::CleanupArgs, datapath::sys, paths};

pub fn run(args: &CleanupArgs) -> anyhow::Result<()> {
    if args.kube_proxy {
        let tools = super::kube_proxy_rules::Tools {
            root: args.host_root.clone(),
        };
        let removed = super::kube_proxy_rules::remove(&tools)?;
        if removed.any() {
            info!(removed = %removed.describe(), "removed kube-proxy's rules");
        } else {
            info!("no kube-proxy rules to remove");
        }
        let left = super::kube_proxy_rules::find_with(&tools);
        if left.ipvs {
            warn!("kube-proxy's IPVS state is left: ipvsadm --clear; ip link del kube-ipvs0");
        }
        return Ok(());
    }
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
    // A cgroup2 directory's inode number is the kernel's id of the cgroup.
    let cgroup_id = fs::metadata(cgroup)
        .with_context(|| format!("cgroup {}", cgroup.display()))?
        .ino();
    let mut ours = BTreeSet::new();
    for prog in loaded_programs() {
        let prog = match prog {
            Ok(prog) => prog,
            Err(e) if went_away(&e) => continue,
            Err(e) => return Err(e).context("listing the kernel's bpf programs"),
        };
        if prog
            .name()
            .starts_with(paths::map_names::NAME_PREFIX.as_bytes())
        {
            ours.insert(prog.id());
        }
    }
    let mut n = 0;
    for link in loaded_links() {
        let link = match link {
            Ok(link) => link,
            Err(e) if went_away(&e) => continue,
            Err(e) => return Err(e).context("listing the kernel's bpf links"),
        };
        if !matches!(link.link_type(), Ok(LinkType::Cgroup)) || !ours.contains(&link.program_id()) {
            continue;
        }
        let fd = match sys::link_fd(link.id()) {
            Ok(fd) => fd,
            Err(e) if went_away(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("opening link {}", link.id())),
        };
        // Judged again on the descriptor we detach: what it is attached to
        // now, and with which program.
        let info = sys::link_info(&fd).with_context(|| format!("reading link {}", link.id()))?;
        if info.attachment != sys::Attachment::Cgroup(cgroup_id) || !ours.contains(&info.prog_id) {
            continue;
        }
        sys::link_detach(&fd).with_context(|| format!("detaching link {}", link.id()))?;
        n += 1;
    }
    Ok(n)
}

/// Whether a step of the walk met an object that went away meanwhile
/// (ENOENT), rather than failing (no privilege, say).
fn went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            == Some(libc::ENOENT)
    })
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
