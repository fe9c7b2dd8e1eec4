//! The packet fuzzer: random and mutated IPv4 and IPv6 frames, mixed in one run, through
//! ferry's real TC programs (`ferry_tc_in`, `ferry_tc_out`, `ferry_tc_pod`,
//! `ferry_tc_pod_out`) with BPF_PROG_TEST_RUN, the invariants of [`check`] checked after every
//! run. Cases are seeded (the same seed makes the same cases) and every failing
//! case is shrunk and written out as a regression row ([`case`]), which every later run
//! replays first.
//!
//! [`run`] must be called inside `progtest::isolated` (a network namespace of its own) as
//! root; tests/tests/packet_fuzz.rs does, with a budget of a few seconds, and `cargo xtask
//! fuzz` runs it longer.

mod case;
mod check;
mod fixture;
mod frame;
mod r#gen;
mod rng;
mod v6;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub use case::Case;
use check::{Checked, Violation};
use fixture::Fixture;

pub struct Options {
    pub seed: u64,
    /// How long to generate cases (after the regression rows).
    pub budget: Duration,
    /// Regression rows, replayed first; failing cases are appended.
    pub regressions: PathBuf,
}

/// A case that broke an invariant.
#[derive(Debug)]
pub struct Failure {
    /// Where it came from: the seed and case number, or the regression file's line.
    pub origin: String,
    pub row: String,
    /// The step (0-based) whose run broke it.
    pub step: usize,
    pub violation: Violation,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub regressions: usize,
    pub cases: u64,
    pub runs: u64,
    /// Frames BPF_PROG_TEST_RUN cannot take (IPv4 shorter than its fixed header): not run.
    pub refused: u64,
    pub elapsed: Duration,
    pub verdicts: BTreeMap<i32, u64>,
    pub checked: BTreeMap<Checked, u64>,
    /// Of the runs and checks above, those of IPv6 frames.
    pub runs6: u64,
    pub checked6: BTreeMap<Checked, u64>,
    /// The kernel's event counters after the run (the paths the frames took).
    pub counters: Vec<(&'static str, u64)>,
    pub failures: Vec<Failure>,
}

/// Stop generating after this many failures (each is shrunk and recorded).
const MAX_FAILURES: usize = 5;

pub fn run(opts: &Options) -> Result<Report> {
    let mut fx = Fixture::new().context("packet fuzz fixture")?;
    let mut r = Report {
        seed: opts.seed,
        ..Report::default()
    };
    let mut state = fx.state()?;

    let rows = std::fs::read_to_string(&opts.regressions)
        .with_context(|| format!("reading {}", opts.regressions.display()))?;
    for (i, line) in rows.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", opts.regressions.display(), i + 1);
        let case: Case = line
            .parse()
            .with_context(|| format!("regression row {at}"))?;
        r.regressions += 1;
        if let Some((step, violation)) = run_case(&mut fx, &case, &mut state, &mut r)? {
            r.failures.push(Failure {
                origin: at,
                row: line.to_owned(),
                step,
                violation,
            });
        }
    }

    let start = Instant::now();
    let mut generator = r#gen::Gen::new(opts.seed, &fx);
    while start.elapsed() < opts.budget && r.failures.len() < MAX_FAILURES {
        let case = generator.case();
        r.cases += 1;
        if let Some((step, violation)) = run_case(&mut fx, &case, &mut state, &mut r)? {
            let origin = format!("seed {:#x}, case {}", opts.seed, r.cases);
            let (case, step, violation) = shrink(&mut fx, &case, step, violation, &mut state)?;
            let row = case.to_string();
            record(&opts.regressions, &origin, &row, &violation)?;
            r.failures.push(Failure {
                origin,
                row,
                step,
                violation,
            });
        }
    }
    r.elapsed = start.elapsed();
    r.counters = fx.counters()?;
    Ok(r)
}

/// Runs a case from the baseline; the first broken invariant (and its step), if any.
/// `state` is the maps' content on entry and is kept up to date.
fn run_case(
    fx: &mut Fixture,
    case: &Case,
    state: &mut fixture::State,
    r: &mut Report,
) -> Result<Option<(usize, Violation)>> {
    fx.reset(state, case.dsr)?;
    *state = fx.state()?;
    let mut prev: Option<(Vec<u8>, Vec<u8>)> = None;
    for (i, step) in case.steps.iter().enumerate() {
        let input = step.frame(prev.as_ref().map(|(i, o)| (i.as_slice(), o.as_slice())));
        if frame::refused_by_test_run(&input) {
            // Not a frame the programs can be shown (see the function): the case ends here.
            r.refused += 1;
            return Ok(None);
        }
        r.runs += 1;
        let ipv6 = v6::is_v6(&input);
        r.runs6 += u64::from(ipv6);
        let out = match run_step(fx, step, &input, state)? {
            Ok(out) => out,
            Err(v) => return Ok(Some((i, v))),
        };
        let after = fx.state()?;
        *r.verdicts.entry(out.verdict()).or_default() += 1;
        let result = check::run(
            &fx.frontends,
            &fx.frontends6,
            state,
            &after,
            &input,
            out.verdict(),
            &out.data,
        );
        *state = after;
        match result {
            Ok(checked) => {
                *r.checked.entry(checked).or_default() += 1;
                if ipv6 {
                    *r.checked6.entry(checked).or_default() += 1;
                }
            }
            Err(v) => return Ok(Some((i, v))),
        }
        prev = Some((input, out.data));
    }
    Ok(None)
}

/// Runs one step's frame. With CHECKSUM_COMPLETE the kernel fails a run (EBADMSG) whose
/// `skb->csum` does not match the bytes after it, even when the program legitimately turned
/// the skb into CHECKSUM_NONE: `bpf_skb_change_tail` does (`__skb_grow_rcsum`,
/// `__skb_trim_rcsum`), and the reject path builds its ICMP error with it. Such a run is
/// repeated without CHECKSUM_COMPLETE and judged by that one when it is exactly that: a port
/// unreachable of another length than the frame (or, the budget spent by the first run, a
/// counted rate-limit drop), no state touched. Any other failure breaks (d).
fn run_step(
    fx: &mut Fixture,
    step: &case::Step,
    input: &[u8],
    before: &fixture::State,
) -> Result<Result<crate::progtest::TestRun, Violation>> {
    let err = match fx.run(step.prog, input, step.csum_complete) {
        Ok(out) => return Ok(Ok(out)),
        Err(e) => e,
    };
    let violation = |detail: String| Violation {
        rule: "(d) the run succeeds",
        detail,
    };
    let ebadmsg = err
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.raw_os_error() == Some(libc::EBADMSG));
    if !step.csum_complete || !ebadmsg || fx.state()? != *before {
        return Ok(Err(violation(format!("{err:#} on {}", hex(input)))));
    }
    let limited_before = fx.reject_limited()?;
    let out = match fx.run(step.prog, input, false) {
        Ok(out) => out,
        Err(e) => {
            return Ok(Err(violation(format!(
                "{e:#} (without CHECKSUM_COMPLETE) on {}",
                hex(input)
            ))));
        }
    };
    let reject4 = frame::Ip::parse(&out.data)
        .is_some_and(|ip| ip.proto == crate::progtest::IPPROTO_ICMP)
        && out.data.get(34..36) == Some(&[3, 3][..]);
    let reject6 = v6::Ip6::parse(&out.data).is_some_and(|ip| {
        ip.proto == crate::progtest::IPPROTO_ICMPV6
            && out.data.get(ip.l4..ip.l4 + 2) == Some(&[1, 4][..])
    });
    let reject =
        out.verdict() == fixture::REDIRECT && out.data.len() != input.len() && (reject4 || reject6);
    // The first run spent a token of the port unreachable budget: the repeat may find it empty
    // (the per-source budget allows 6 a millisecond here) and drop the frame, counted, which
    // is the same path's other outcome.
    let limited = out.verdict() == fixture::SHOT
        && fx.reject_limited()? == limited_before + 1
        && fx.state()? == *before;
    if reject || limited {
        Ok(Ok(out))
    } else {
        let detail = format!(
            "{err:#} (without CHECKSUM_COMPLETE: verdict {}) on {}",
            out.verdict(),
            hex(input)
        );
        Ok(Err(violation(detail)))
    }
}

/// A smaller case breaking the same rule: later steps cut, then earlier steps and mutations
/// dropped one at a time while it still fails. (Kernel choices made at random, such as a SNAT
/// port, may differ between runs: a candidate that does not fail is simply not taken.)
fn shrink(
    fx: &mut Fixture,
    case: &Case,
    step: usize,
    violation: Violation,
    state: &mut fixture::State,
) -> Result<(Case, usize, Violation)> {
    let mut best = (
        Case {
            dsr: case.dsr,
            steps: case.steps[..=step].to_vec(),
        },
        step,
        violation,
    );
    let mut scratch = Report::default();
    let mut i = 0;
    while i < best.0.steps.len() {
        let mut candidates = Vec::new();
        if best.0.steps.len() > 1 && i < best.1 {
            let mut c = best.0.clone();
            c.steps.remove(i);
            candidates.push(c);
        }
        for m in 0..best.0.steps[i].mutations.len() {
            let mut c = best.0.clone();
            c.steps[i].mutations.remove(m);
            candidates.push(c);
        }
        let mut taken = false;
        for c in candidates {
            if !matches!(c.steps[0].source, case::Source::Lit(_)) {
                continue;
            }
            if let Some((s, v)) = run_case(fx, &c, state, &mut scratch)?
                && v.rule == best.2.rule
            {
                best = (c, s, v);
                taken = true;
                break;
            }
        }
        if !taken {
            i += 1;
        }
    }
    Ok(best)
}

/// Appends a failing case to the regression rows, with a comment saying what it broke.
fn record(path: &PathBuf, origin: &str, row: &str, v: &Violation) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let first = v.detail.lines().next().unwrap_or_default();
    writeln!(f, "# {} ({origin}): {first}\n{row}", v.rule)
        .with_context(|| format!("writing {}", path.display()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl Report {
    /// What ran and what it found, for the test's output.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let rate = self.runs as f64 / self.elapsed.as_secs_f64().max(1e-3);
        let _ = writeln!(
            s,
            "packet fuzz: seed {:#x}: {} regression rows, then {} cases, {} runs in {:.1} s \
             ({rate:.0} runs/s; {} frames too short for a test run), {} failures",
            self.seed,
            self.regressions,
            self.cases,
            self.runs,
            self.elapsed.as_secs_f64(),
            self.refused,
            self.failures.len()
        );
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(v, n)| {
                let name = match *v {
                    fixture::PASS => "PASS",
                    fixture::OK => "OK",
                    fixture::SHOT => "SHOT",
                    fixture::REDIRECT => "REDIRECT",
                    _ => "other",
                };
                format!("{name} {n}")
            })
            .collect();
        let checked: Vec<String> = self
            .checked
            .iter()
            .map(|(c, n)| format!("{c:?} {n}"))
            .collect();
        let checked6: Vec<String> = self
            .checked6
            .iter()
            .map(|(c, n)| format!("{c:?} {n}"))
            .collect();
        let counters: Vec<String> = self
            .counters
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let _ = writeln!(s, "  verdicts: {}", verdicts.join(", "));
        let _ = writeln!(s, "  checked:  {}", checked.join(", "));
        let _ = writeln!(
            s,
            "  IPv6:     {} runs; checked {}",
            self.runs6,
            checked6.join(", ")
        );
        let _ = writeln!(s, "  kernel:   {}", counters.join(", "));
        for f in &self.failures {
            let _ = writeln!(
                s,
                "FAILED {} at step {} ({}):\n  {}\n  row: {}",
                f.violation.rule, f.step, f.origin, f.violation.detail, f.row
            );
        }
        s
    }
}
