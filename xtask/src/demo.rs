//! `cargo xtask demo`: setup (which installs the demo's Debian packages), build the agent and
//! the demo, run the demo as root: gin-vue-admin's network on one machine (tests/src/demo/).

use std::time::Instant;

use anyhow::{Result, bail};

use crate::setup;
use crate::toolchain::STABLE;
use crate::util::{Cmd, is_root, target_dir};

pub fn run(keep: bool, down: bool, extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "demo: it creates network namespaces and cgroups and loads eBPF programs, so it \
             needs root. Run `sudo -E env PATH=\"$PATH\" cargo xtask demo`"
        );
    }
    if keep && down {
        bail!("demo: --keep and --down exclude each other");
    }
    let start = Instant::now();
    let demo = target_dir().join("debug/ferry-demo");
    // Removing a kept lab needs no setup and no build, only the demo binary that kept it.
    if !(down && demo.is_file()) {
        setup::run(false)?;
        Cmd::cargo(STABLE)
            .args(["build", "-p", "ferry-tests", "--bin", "ferry-demo"])
            .args(["-p", "agent", "--bin", "ferry"])
            .run()?;
    }
    let ready = start.elapsed().as_secs_f64();
    let mut cmd = Cmd::new(&demo);
    if keep {
        cmd.arg("--keep");
    }
    if down {
        cmd.arg("--down");
    }
    let result = cmd.args(extra).run();
    eprintln!(
        "demo: {} in {:.1} s (setup and build: {ready:.1} s)",
        if result.is_ok() { "done" } else { "failed" },
        start.elapsed().as_secs_f64()
    );
    result
}
