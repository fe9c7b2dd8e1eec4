//! Builds agent-ebpf with the pinned nightly (aya-build) and embeds the object.
//! `AYA_BUILD_SKIP=1` skips that (unit tests and clippy on machines without
//! the eBPF toolchain): an empty object is embedded and the agent refuses to
//! load it with a clear error.

use std::path::PathBuf;

/// Keep in step with xtask/src/toolchain.rs (NIGHTLY).
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../agent-ebpf")
        .canonicalize()?;
    let root = root.to_string_lossy();
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: &root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))?;
    let object = PathBuf::from(std::env::var("OUT_DIR")?).join("agent-ebpf");
    if !object.exists() {
        std::fs::write(&object, b"")?;
    }
    Ok(())
}
