//! `cargo xtask demo`: setup, build the agent and the demo, run the demo as root.

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
    setup::run(false)?;
    Cmd::cargo(STABLE)
        .args(["build", "-p", "ferry-tests", "--bin", "ferry-demo"])
        .args(["-p", "agent", "--bin", "ferry"])
        .run()?;
    let demo = target_dir().join("debug/ferry-demo");
    let mut cmd = Cmd::new(&demo);
    if keep {
        cmd.arg("--keep");
    }
    if down {
        cmd.arg("--down");
    }
    cmd.args(extra).run()
}
