//! ferry's developer and CI driver: `cargo xtask <command>`.
//!
//! Builds with the machine's default stable (1.95) and only needs anyhow and
//! clap, because its first job is to install the pinned toolchains the rest of
//! the workspace needs (see toolchain.rs).

mod bench;
mod build;
mod clean;
mod demo;
mod fuzz;
mod image;
// Shared with the agent by path: xtask builds before the agent's toolchain exists.
#[path = "../../agent/src/mountinfo.rs"]
mod mountinfo;
mod setup;
mod test;
mod toolchain;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "ferry's setup, build, test, demo and bench driver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: pinned toolchains, rustup override, apt packages, bpf-linker.
    Setup,
    /// Build only the eBPF object (release profile) into target/ebpf and print its path.
    BuildEbpf {
        /// Accepted for symmetry: the eBPF object is always built in release, as the agent embeds.
        #[arg(long)]
        release: bool,
    },
    /// Setup (the build's part: toolchains, LLVM, bpf-linker), then build the workspace (the
    /// agent's build.rs builds and embeds the eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, fmt, clippy, build, then every test (kernel tests need root). CI runs this.
    Test {
        /// Not root: run the library unit tests only (no kernel tests).
        #[arg(long)]
        no_root_tests: bool,
        /// Passed to `cargo test` (after another `--`: to the test binaries).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run the demo lab as root.
    Demo {
        /// Leave the lab running after the demo.
        #[arg(long)]
        keep: bool,
        /// Tear down a lab left by `--keep`.
        #[arg(long)]
        down: bool,
        /// Passed to ferry-demo.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks: ferry vs. direct pod IPs and kube-proxy's iptables/nftables rules (root).
    ///
    /// Writes docs/benchmarks.md and its plots (release build); `--quick` writes to a
    /// temporary directory instead.
    Bench {
        /// A smoke run (tiny sizes, one short round, debug build), not a measurement.
        #[arg(long)]
        quick: bool,
    },
    /// Fuzzing: the cargo-fuzz targets (manifest reader, translation) and the packet fuzzer.
    ///
    /// Each target runs for the budget; one line per target gives its executions and crashes.
    /// Fails when any target crashed.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// One of manifest_yaml, manifest_doc, translate, packet (default: all).
        target: Option<String>,
    },
    /// ferry's OCI image with buildah, from scratch: the binary and the libraries it links.
    Image {
        /// The ferry binary to put in (default: a release build made now).
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// The image's name (default localhost/ferry:VERSION).
        #[arg(long)]
        tag: Option<String>,
        /// A buildah storage directory of its own (vfs driver) instead of the system's.
        #[arg(long)]
        storage: Option<std::path::PathBuf>,
    },
    /// Remove what crashed lab runs left: `fy*` netns, `ferry-lab-*` cgroups and mounts.
    ///
    /// Do not run it while tests or a demo run: their labs match too.
    CleanLab {
        /// Also kill processes still running in those namespaces and cgroups.
        #[arg(long)]
        kill: bool,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(true),
        Command::BuildEbpf { release: _ } => setup::run(false).and_then(|()| {
            let object = build::ebpf()?;
            println!("{}", object.display());
            Ok(())
        }),
        Command::Build { release } => {
            setup::run_for(false, setup::Scope::Build).and_then(|()| build::workspace(release))
        }
        Command::Test {
            no_root_tests,
            args,
        } => test::run(no_root_tests, &args),
        Command::Demo { keep, down, args } => demo::run(keep, down, &args),
        Command::Bench { quick } => bench::run(&bench::Options { quick }),
        Command::Fuzz { time, target } => fuzz::run(time, target.as_deref()),
        Command::CleanLab { kill, dry_run } => clean::run(kill, dry_run),
        Command::Image {
            binary,
            tag,
            storage,
        } => setup::run(false).and_then(|()| {
            image::run(&image::Options {
                binary,
                tag,
                storage,
            })
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
