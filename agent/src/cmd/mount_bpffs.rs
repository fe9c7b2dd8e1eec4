//! `ferry mount-bpffs`: a bpf filesystem where none is, for the init container of nodes
//! that have none (kind's). The agent pins its maps and links there, so the datapath outlives
//! the agent's container; with `mountPropagation: Bidirectional` the mount reaches the host.

use anyhow::Context as _;
use tracing::info;

use crate::{cli::MountBpffsArgs, datapath::pin_dir, paths};

pub fn run(args: &MountBpffsArgs) -> anyhow::Result<()> {
    // A bpffs (or a directory in one) already: the host or an earlier run mounted it.
    let already = args.path.exists() && paths::is_on_bpffs(&args.path).unwrap_or(false);
    if already {
        info!(path = %args.path.display(), "already a bpf filesystem");
        return Ok(());
    }
    pin_dir::mount_bpffs(&args.path)
        .with_context(|| format!("mounting a bpf filesystem at {}", args.path.display()))
}
