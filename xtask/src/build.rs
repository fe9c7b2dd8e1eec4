//! `cargo xtask build` and `cargo xtask build-ebpf`.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::toolchain::{NIGHTLY, STABLE, bpf_target, bpf_target_arch};
use crate::util::{Cmd, root};

/// `cargo +STABLE build --workspace`: the agent's build.rs (aya-build) builds
/// and embeds the eBPF object with the pinned nightly.
pub fn workspace(release: bool) -> Result<()> {
    let mut cmd = Cmd::cargo(STABLE);
    cmd.args(["build", "--workspace"]);
    if release {
        cmd.arg("--release");
    }
    cmd.run()
}

/// Builds only the eBPF object, the way aya-build does, into target/ebpf, and
/// returns its path. Always the release profile: that is what the agent embeds.
pub fn ebpf() -> Result<PathBuf> {
    let target = bpf_target();
    let target_dir = root().join("target/ebpf");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", bpf_target_arch()),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    let mut cmd = Cmd::cargo(NIGHTLY);
    cmd.args([
        "build",
        "-p",
        "agent-ebpf",
        "--bins",
        "--release",
        "--target",
        target,
    ])
    .args(["-Z", "build-std=core", "--target-dir"])
    .arg(&target_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
    .env_remove("RUSTFLAGS");
    cmd.run()?;
    let object = target_dir.join(target).join("release/agent-ebpf");
    if !object.is_file() {
        bail!(
            "build-ebpf: cargo succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}
