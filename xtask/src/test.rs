//! `cargo xtask test`: setup, fmt, clippy, build, every test (kernel tests as root).

use std::time::Instant;

use anyhow::{Result, bail};

use crate::toolchain::STABLE;
use crate::util::{Cmd, is_root, secs, which};
use crate::{bench, fuzz, setup};

/// Runs the whole gate. `extra` goes to `cargo test`; after a `--` in it, to the test binaries.
pub fn run(no_root_tests: bool, extra: &[String]) -> Result<()> {
    let start = Instant::now();
    if !no_root_tests && !is_root() {
        bail!(
            "test: the kernel tests load eBPF programs and create network namespaces and \
             cgroups, so they need root. Run `sudo -E env PATH=\"$PATH\" cargo xtask test`, or \
             `cargo xtask test --no-root-tests` for the unprivileged unit tests only"
        );
    }
    setup::run(false)?;
    print_environment();

    let mut gate = Gate::default();
    let fmt_hint = format!("run `cargo +{STABLE} fmt --all` to fix the formatting");
    gate.step("fmt", &fmt_hint, || {
        Cmd::cargo(STABLE)
            .args(["fmt", "--all", "--", "--check"])
            .run()
    })?;
    gate.step(
        "clippy",
        "fix the warnings above (denied with -D warnings)",
        || {
            Cmd::cargo(STABLE)
                .args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
                .run()
        },
    )?;
    gate.step("build", "fix the build errors above", || {
        Cmd::cargo(STABLE)
            .args(["build", "--workspace", "--all-targets"])
            .run()
    })?;
    let tests = if no_root_tests { "unit tests" } else { "tests" };
    let mut totals = Totals::default();
    let result = gate.step(tests, "see the failing tests above", || {
        Cmd::cargo(STABLE)
            .args(test_args(extra, no_root_tests))
            .run_tee(|line| totals.add(line))
    });
    // One plain closing line over every test binary, whatever happened.
    println!(
        "test: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    result?;
    gate.step(
        "fuzz smoke",
        "a fuzz target crashed: its input and the command to reproduce it are above",
        fuzz::smoke,
    )?;
    if no_root_tests {
        eprintln!("test: bench smoke: skipped (the bench's labs need root)");
    } else {
        gate.step("bench smoke", "see the bench output above", bench_smoke)?;
    }

    eprintln!("test: ok in {}: {}", secs(start), gate.done.join(", "));
    if no_root_tests {
        eprintln!("test: note: --no-root-tests ran library unit tests only, no kernel tests");
    }
    // Last, so the run closes on its count.
    println!(
        "test: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

/// Sums of the libtest summaries (`test result: ok. 3 passed; 0 failed; 1 ignored; ...`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// `cargo test` arguments: `--workspace` unless a package is named, `--lib` for
/// unprivileged runs, `--test-threads=2` unless the caller chose.
fn test_args(extra: &[String], lib_only: bool) -> Vec<String> {
    let split = extra.iter().position(|a| a == "--").unwrap_or(extra.len());
    let (cargo_args, harness_args) = (&extra[..split], extra.get(split + 1..).unwrap_or(&[]));
    let names_package = cargo_args
        .iter()
        .any(|a| a.starts_with("-p") || a == "--package" || a.starts_with("--package="));
    let mut args = vec!["test".to_owned()];
    if !names_package {
        args.push("--workspace".into());
    }
    if lib_only {
        args.push("--lib".into());
    }
    args.extend(cargo_args.iter().cloned());
    args.push("--".into());
    if !harness_args.iter().any(|a| a.starts_with("--test-threads")) {
        args.push("--test-threads=2".into());
    }
    // Kernel tests are #[ignore]d so that a plain `cargo test` reports them
    // as not run; as root, the gate runs them (but not the lab's helper,
    // which a_signal_removes_live_labs runs in a child process).
    let chooses = harness_args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    if !lib_only && !chooses {
        args.push("--include-ignored".into());
        args.push("--skip".into());
        args.push("hold_a_lab_until_signalled".into());
    }
    args.extend(harness_args.iter().cloned());
    args
}

/// `cargo xtask bench --quick`, as a smoke test of the bench: it runs and writes its tables
/// (no timing is asserted).
fn bench_smoke() -> Result<()> {
    bench::smoke()
}

/// Kernel and tools the tests will use, first, so a failure report shows them.
fn print_environment() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    eprintln!("test: kernel   {kernel}");
    for (name, args) in [
        ("bpftool", &["--version"][..]),
        ("ip", &["-V"][..]),
        ("ethtool", &["--version"][..]),
        ("bpf-linker", &["--version"][..]),
    ] {
        let found = which(name).map_or_else(
            || "NOT FOUND".to_owned(),
            |path| {
                let version = Cmd::new(&path)
                    .args(args)
                    .try_output()
                    .and_then(|o| o.lines().next().map(|l| l.trim().to_owned()))
                    .unwrap_or_else(|| "version unknown".into());
                format!("{version} ({})", path.display())
            },
        );
        eprintln!("test: {name:<10} {found}");
    }
    let cgroup2 = crate::clean::cgroup2_mount()
        .map_or_else(|| "NOT MOUNTED".to_owned(), |p| p.display().to_string());
    eprintln!("test: cgroup2  {cgroup2}");
}

/// Steps run in order; the first failure stops the gate with a summary.
#[derive(Default)]
struct Gate {
    done: Vec<String>,
}

impl Gate {
    fn step(&mut self, name: &str, hint: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        eprintln!("test: == {name} ==");
        match f() {
            Ok(()) => {
                self.done.push(format!("{name} {}", secs(start)));
                Ok(())
            }
            Err(e) => {
                let passed = if self.done.is_empty() {
                    "nothing".to_owned()
                } else {
                    self.done.join(", ")
                };
                eprintln!("test: FAILED at {name} (passed: {passed})");
                Err(e.context(format!("test: {name} failed: {hint}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Totals, test_args};

    #[test]
    fn totals_sum_libtest_summaries() {
        let mut t = Totals::default();
        t.add("test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 2.24s");
        t.add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 4 tests");
        assert_eq!(
            t,
            Totals {
                passed: 12,
                failed: 2,
                ignored: 1
            }
        );
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_args() {
        assert_eq!(
            test_args(&[], false),
            s(&[
                "test",
                "--workspace",
                "--",
                "--test-threads=2",
                "--include-ignored",
                "--skip",
                "hold_a_lab_until_signalled"
            ])
        );
        assert_eq!(
            test_args(&[], true),
            s(&["test", "--workspace", "--lib", "--", "--test-threads=2"])
        );
    }

    #[test]
    fn extra_args_pass_through() {
        assert_eq!(
            test_args(
                &s(&["-p", "ferry-tests", "--", "--nocapture", "sock"]),
                false
            ),
            s(&[
                "test",
                "-p",
                "ferry-tests",
                "--",
                "--test-threads=2",
                "--include-ignored",
                "--skip",
                "hold_a_lab_until_signalled",
                "--nocapture",
                "sock"
            ])
        );
        assert_eq!(
            test_args(&s(&["--", "--test-threads=1", "--ignored"]), false),
            s(&["test", "--workspace", "--", "--test-threads=1", "--ignored"])
        );
    }
}
