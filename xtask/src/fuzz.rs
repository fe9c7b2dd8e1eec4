//! `cargo xtask fuzz [--time SECS] [TARGET]`: the cargo-fuzz targets of fuzz/ (manifest reader,
//! translation) and the packet fuzzer (tests/tests/packet_fuzz.rs, root), each for a budget,
//! with one line per target: executions, and crashes with where their input is.
//!
//! libFuzzer's own output goes to `target/fuzz/<target>.log` (its progress lines would drown a
//! CI log); a crash prints the log's tail. Each target keeps a working corpus in
//! `target/fuzz/corpus/<target>` that grows from the seeds checked in under
//! `fuzz/corpus/<target>` (never written to), and crash inputs in `target/fuzz/artifacts/`.
//! `cargo xtask test` runs [`smoke`]: every cargo-fuzz target for a few seconds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::setup;
use crate::toolchain::{NIGHTLY, STABLE};
use crate::util::{Cmd, is_root, root, target_dir};

/// The cargo-fuzz targets (fuzz/fuzz_targets/), and the dictionary each uses.
pub const CARGO_FUZZ_TARGETS: &[(&str, Option<&str>)] = &[
    ("manifest_yaml", Some("fuzz/dict/manifest.dict")),
    ("manifest_doc", None),
    ("translate", None),
];
/// The packet fuzzer's name as a target.
pub const PACKET: &str = "packet";
/// Seconds per cargo-fuzz target in `cargo xtask test` (the packet fuzzer runs there as a
/// test, with its own few seconds).
const SMOKE_SECS: u64 = 8;
/// A single input running longer than this is reported as a hang.
const TIMEOUT_SECS: u64 = 10;

/// What one target's run gave.
struct Outcome {
    target: String,
    execs: Option<u64>,
    secs: f64,
    /// The input that crashed (or hung), when one did.
    crash: Option<String>,
    log: PathBuf,
}

pub fn run(secs: u64, target: Option<&str>) -> Result<()> {
    let names: Vec<&str> = CARGO_FUZZ_TARGETS
        .iter()
        .map(|(n, _)| *n)
        .chain([PACKET])
        .collect();
    if let Some(t) = target
        && !names.contains(&t)
    {
        bail!(
            "fuzz: no target {t:?}; the targets are {}",
            names.join(", ")
        );
    }
    setup::run(false)?;
    let wanted = |name: &str| target.is_none_or(|t| t == name);
    let mut outcomes = Vec::new();
    if CARGO_FUZZ_TARGETS.iter().any(|(n, _)| wanted(n)) {
        build()?;
        for &(name, dict) in CARGO_FUZZ_TARGETS.iter().filter(|(n, _)| wanted(n)) {
            outcomes.push(cargo_fuzz(name, dict, secs)?);
        }
    }
    if wanted(PACKET) {
        if is_root() {
            outcomes.push(packet(secs)?);
        } else if target.is_some() {
            bail!(
                "fuzz: the packet fuzzer loads eBPF programs and creates a network namespace: run as root"
            );
        } else {
            eprintln!("fuzz: packet: skipped (needs root: eBPF programs, a network namespace)");
        }
    }
    report(&outcomes)
}

/// The CI run: formatting of fuzz/ checked, every cargo-fuzz target for [`SMOKE_SECS`].
pub fn smoke() -> Result<()> {
    Cmd::cargo(STABLE)
        .args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])
        .run()
        .context("fuzz/ is not formatted: run `cargo fmt --manifest-path fuzz/Cargo.toml`")?;
    build()?;
    let mut outcomes = Vec::new();
    for &(name, dict) in CARGO_FUZZ_TARGETS {
        outcomes.push(cargo_fuzz(name, dict, SMOKE_SECS)?);
    }
    report(&outcomes)
}

fn fuzz_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// `cargo fuzz` with the pinned nightly, from the workspace root (it finds fuzz/). The agent's
/// build.rs skips the eBPF object: the targets never load it.
fn cargo_fuzz_cmd() -> Cmd {
    let mut cmd = Cmd::cargo(NIGHTLY);
    cmd.arg("fuzz").env("AYA_BUILD_SKIP", "1");
    cmd
}

fn build() -> Result<()> {
    let start = Instant::now();
    cargo_fuzz_cmd().arg("build").run()?;
    eprintln!(
        "fuzz: targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cargo_fuzz(name: &str, dict: Option<&str>, secs: u64) -> Result<Outcome> {
    let corpus = fuzz_dir().join("corpus").join(name);
    let artifacts = fuzz_dir().join("artifacts").join(name);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = fuzz_dir().join(format!("{name}.log"));
    let mut cmd = cargo_fuzz_cmd();
    cmd.args(["run", name])
        .arg(&corpus)
        .arg(root().join("fuzz/corpus").join(name))
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    if let Some(dict) = dict {
        cmd.arg(format!("-dict={}", root().join(dict).display()));
    }
    let start = Instant::now();
    let ok = cmd.run_logged(&log)?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let crash = (!ok).then(|| {
        text.lines()
            .find_map(|l| {
                l.split_once("Test unit written to ")
                    .map(|(_, p)| p.trim().to_owned())
            })
            .unwrap_or_else(|| format!("no input saved: see {}", log.display()))
    });
    if crash.is_some() {
        print_tail(&text, 60);
    }
    Ok(Outcome {
        target: name.to_owned(),
        execs: stat(&text, "stat::number_of_executed_units:"),
        secs: start.elapsed().as_secs_f64(),
        crash,
        log,
    })
}

/// The packet fuzzer's test, for `secs`.
fn packet(secs: u64) -> Result<Outcome> {
    std::fs::create_dir_all(fuzz_dir())?;
    let log = fuzz_dir().join("packet.log");
    let start = Instant::now();
    let ok = Cmd::cargo(STABLE)
        .env("FERRY_PACKET_FUZZ_SECS", secs.to_string())
        .args([
            "test",
            "-p",
            "ferry-tests",
            "--test",
            "packet_fuzz",
            "--",
            "--nocapture",
        ])
        .run_logged(&log)?;
    let text =
        std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    for line in text
        .lines()
        .filter(|l| l.starts_with("packet fuzz") || l.starts_with("  ") || l.starts_with("FAILED"))
    {
        eprintln!("{line}");
    }
    let summary = text.lines().find(|l| l.contains(" runs in "));
    let failures = summary.and_then(|l| number_before(l, " failures"));
    let crash = match (ok, failures) {
        (true, _) => None,
        (false, Some(n)) if n > 0 => Some(format!(
            "{n} failing cases, appended to tests/packet-fuzz-regressions.txt"
        )),
        (false, _) => {
            print_tail(&text, 60);
            Some(format!("the test failed: see {}", log.display()))
        }
    };
    Ok(Outcome {
        target: PACKET.to_owned(),
        execs: summary.and_then(|l| number_before(l, " runs in ")),
        secs: start.elapsed().as_secs_f64(),
        crash,
        log,
    })
}

/// One line per target; fails when any target crashed.
fn report(outcomes: &[Outcome]) -> Result<()> {
    let mut crashed = Vec::new();
    for o in outcomes {
        let execs = o
            .execs
            .map_or_else(|| "? executions".to_owned(), |n| format!("{n} executions"));
        let rate = o.execs.map_or(0.0, |n| n as f64 / o.secs.max(0.001));
        match &o.crash {
            None => eprintln!(
                "fuzz: {:<14} {execs} in {:.0} s ({rate:.0}/s), 0 crashes",
                o.target, o.secs
            ),
            Some(what) => {
                eprintln!(
                    "fuzz: {:<14} {execs} in {:.0} s, 1 crash: {what} (log {})",
                    o.target,
                    o.secs,
                    o.log.display()
                );
                crashed.push(o.target.as_str());
            }
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz: crashes in {}. Reproduce one with `cargo +{NIGHTLY} fuzz run TARGET INPUT` \
             (AYA_BUILD_SKIP=1), show it with `cargo +{NIGHTLY} fuzz fmt TARGET INPUT`",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// The number right before `suffix` in `line` ("123 runs in" -> 123).
fn number_before(line: &str, suffix: &str) -> Option<u64> {
    let head = &line[..line.find(suffix)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn print_tail(text: &str, n: usize) {
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("  | {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::{number_before, stat};

    #[test]
    fn reads_libfuzzer_stats_and_the_packet_summary() {
        let log = "#123\tDONE cov: 1\nstat::number_of_executed_units: 4567\nstat::peak_rss_mb: 9\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(4567));
        assert_eq!(stat("nothing", "stat::x:"), None);
        let line = "packet fuzz: seed 0x1: 5 regression rows, then 62536 cases, 117450 runs in \
                    10.0 s (11745 runs/s; 40 frames too short), 0 failures";
        assert_eq!(number_before(line, " runs in "), Some(117450));
        assert_eq!(number_before(line, " failures"), Some(0));
    }
}
