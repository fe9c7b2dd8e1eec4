//! Builds agent-ebpf with the pinned nightly (aya-build) and embeds the object.
//! `AYA_BUILD_SKIP=1` skips that (unit tests and clippy on machines without
//! the eBPF toolchain): an empty object is embedded and the agent refuses to
//! load it with a clear error.

use std::path::PathBuf;

/// Keep in step with xtask/src/toolchain.rs (NIGHTLY).
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    revision();
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

/// FERRY_GIT_REVISION for `ferry --version` and `ferry_build_info`: the
/// environment's (an image build without .git passes it), else the checkout's
/// HEAD, else "unknown".
fn revision() {
    println!("cargo:rerun-if-env-changed=FERRY_GIT_REVISION");
    let from_env = std::env::var("FERRY_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty());
    let from_git = || {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !rev.is_empty()).then_some(rev)
    };
    let rev = from_env
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".into());
    // A new commit moves HEAD's ref (or HEAD itself when detached).
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=FERRY_GIT_REVISION={rev}");
}
