//! The packet fuzzer (tests/src/packet_fuzz/) as a test: the regression rows, then random and
//! mutated IPv4 and IPv6 frames (one budget for both) through ferry's real TC programs for a few seconds, every invariant checked
//! after every run. `cargo xtask fuzz` runs it longer.
//!
//! FERRY_PACKET_FUZZ_SECS sets the budget (default 4 s); FERRY_PACKET_FUZZ_SEED replays a
//! run (the seed is printed; by default a new one each time). A failing case is shrunk and
//! appended to tests/packet-fuzz-regressions.txt.

use std::{io::Read as _, path::PathBuf, time::Duration};

use ferry_tests::{packet_fuzz, progtest, require_root};

const DEFAULT_SECS: f64 = 4.0;

fn seed() -> u64 {
    if let Ok(s) = std::env::var("FERRY_PACKET_FUZZ_SEED") {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        return parsed.unwrap_or_else(|e| panic!("FERRY_PACKET_FUZZ_SEED={s:?}: {e}"));
    }
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    u64::from_le_bytes(b)
}

fn budget() -> Duration {
    let secs = match std::env::var("FERRY_PACKET_FUZZ_SECS") {
        Ok(s) => s
            .trim()
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("FERRY_PACKET_FUZZ_SECS={s:?}: {e}")),
        Err(_) => DEFAULT_SECS,
    };
    Duration::from_secs_f64(secs)
}

#[test]
fn random_and_mutated_frames_keep_the_invariants() {
    require_root!();
    let opts = packet_fuzz::Options {
        seed: seed(),
        budget: budget(),
        regressions: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packet-fuzz-regressions.txt"),
    };
    // Printed first, so that a run that dies still names its seed.
    eprintln!(
        "packet fuzz: seed {:#x} (FERRY_PACKET_FUZZ_SEED replays it)",
        opts.seed
    );
    progtest::isolated(move || {
        let report = packet_fuzz::run(&opts).unwrap_or_else(|e| panic!("{e:#}"));
        eprint!("{}", report.summary());
        assert!(report.runs > 0, "no frame ran");
        assert!(
            report.failures.is_empty(),
            "{} failing cases (appended to {})",
            report.failures.len(),
            opts.regressions.display()
        );
    });
}
