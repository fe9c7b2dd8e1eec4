//! `cargo xtask bench [--quick]`: ferry side by side with direct pod IPs and kube-proxy's
//! iptables and nftables rules (issue 6; the method is in docs/benchmarks.md).
//!
//! xtask only orchestrates: setup, a build, then `ferry-bench run` (package ferry-tests), which
//! builds the labs, measures, and writes `benchmarks.md`, `benchmarks.json` and the plots.
//! The full run uses the release build and writes into docs/; `--quick` is a smoke run (tiny
//! sizes, one short round) on the debug build that writes to a temporary directory, and is
//! what `cargo xtask test` runs last ([`smoke`]): it checks that the tables are there and
//! asserts no timing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::setup;
use crate::toolchain::STABLE;
use crate::util::{Cmd, is_root, root, target_dir};

pub struct Options {
    /// A short run (smoke test), not a measurement.
    pub quick: bool,
}

/// Where a quick run writes (never over docs/benchmarks.md).
fn quick_dir() -> PathBuf {
    std::env::temp_dir().join("ferry-bench-quick")
}

pub fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!(
            "bench: the labs create network namespaces and cgroups and load eBPF programs, so \
             the bench needs root: `sudo -E env PATH=\"$PATH\" cargo xtask bench`"
        );
    }
    setup::run(false)?;
    let (profile, out) = if opts.quick {
        ("debug", quick_dir())
    } else {
        ("release", root().join("docs"))
    };
    let mut build = Cmd::cargo(STABLE);
    build.args(["build", "--workspace", "--bins"]);
    if !opts.quick {
        build.arg("--release");
    }
    build.run()?;
    let bench = target_dir().join(profile).join("ferry-bench");
    let mut cmd = Cmd::new(&bench);
    cmd.args(["run", "--out"]).arg(&out);
    if opts.quick {
        cmd.arg("--quick");
    }
    cmd.run()?;
    let md = out.join("benchmarks.md");
    if opts.quick {
        // The smoke test: every table must be there.
        check_tables(&md)?;
    } else if let Err(e) = check_tables(&md) {
        // A measurement run keeps what it measured; the report says why a section is missing.
        eprintln!("warning: {e:#}");
    }
    eprintln!("bench: wrote {}", md.display());
    Ok(())
}

/// Sections whose tables a run must produce; north-south may say why it was not measured.
const REQUIRED: &[(&str, &str)] = &[
    (
        "## 1. East-west",
        "| services (N) | direct pod IP | ferry |",
    ),
    ("## 3. Program cost", "| path | program | ns per packet"),
    (
        "## 4. Control plane",
        "| services | endpoints | ferry, manifests |",
    ),
];

/// Fails unless the report has every section and the required tables (no timing is checked).
fn check_tables(md: &Path) -> Result<()> {
    let text = std::fs::read_to_string(md)
        .with_context(|| format!("bench: ferry-bench wrote no {}", md.display()))?;
    let mut missing = Vec::new();
    for (section, table) in REQUIRED {
        if !text.contains(section) || !text.contains(table) {
            let why = text
                .split(section)
                .nth(1)
                .and_then(|rest| rest.split("**Not measured:**").nth(1))
                .and_then(|r| r.lines().next())
                .map(|r| format!(": not measured:{r}"))
                .unwrap_or_default();
            missing.push(format!("{section}{why}"));
        }
    }
    for section in ["## Targets", "## 2. North-south"] {
        if !text.contains(section) {
            missing.push(section.to_owned());
        }
    }
    if !missing.is_empty() {
        bail!(
            "bench: {} lacks tables:\n  {}",
            md.display(),
            missing.join("\n  ")
        );
    }
    Ok(())
}

/// The bench smoke test `cargo xtask test` runs last: `cargo xtask bench --quick`.
pub fn smoke() -> Result<()> {
    run(&Options { quick: true })
}
