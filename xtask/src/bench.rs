//! `cargo xtask bench`: not implemented yet (issue 6).
//!
//! Shape for issue 6: `run` does setup and a release build, then runs the
//! benchmark labs (ferry vs. the alternatives), `--quick` being a short run
//! that `cargo xtask test` uses as a smoke test through [`smoke`].

use anyhow::Result;

use crate::{build, setup};

pub struct Options {
    /// A short run (smoke test), not a measurement.
    pub quick: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::run(false)?;
    build::workspace(true)?;
    // TODO(issue 6): run the benchmarks; `opts.quick` shortens them.
    let _ = opts.quick;
    eprintln!("bench: not implemented yet (issue 6)");
    Ok(())
}

/// The bench smoke test `cargo xtask test` runs last. Does nothing yet.
// TODO(issue 6): run `run(&Options { quick: true })` (or `cargo xtask bench --quick`).
pub fn smoke() -> Result<()> {
    eprintln!("test: bench smoke: skipped, bench not implemented yet (issue 6)");
    Ok(())
}
