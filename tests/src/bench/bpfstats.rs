//! Per-program run counts and run time of the programs a lab's ferry has attached, through
//! BPF_ENABLE_STATS: the kernel counts while the descriptor it returns is open and stops when
//! it closes (the `kernel.bpf_stats_enabled` sysctl, machine-wide, is never touched).
//!
//! Only the programs behind the lab's pinned links are read (other labs on the machine run
//! their own ferry programs), each program once however many links run it, by name.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    path::Path,
};

use anyhow::{Context, Result};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use ferry::datapath::sys;
use serde::{Deserialize, Serialize};

/// Run-time statistics on while this lives.
pub struct RunStats {
    _fd: OwnedFd,
}

impl RunStats {
    pub fn enable() -> Result<RunStats> {
        let fd = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
        Ok(RunStats { _fd: fd })
    }
}

/// One program's runs and their time over an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgCost {
    /// The program's ELF name (the kernel's, 15 characters at most, completed by
    /// `ferry::paths::program_named`).
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// The counters of the lab's programs now, by name.
pub type Snapshot = BTreeMap<String, (u64, u64)>;

/// The ids of the programs behind the links pinned in `pin_dir`.
fn lab_programs(pin_dir: &Path) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(std::result::Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("ferry_link"))
        .filter_map(|e| sys::obj_get(&e.path(), 0).ok())
        .filter_map(|fd| sys::link_info(&fd).ok())
        .map(|info| info.prog_id)
        .collect()
}

/// Reads the counters of the lab's programs.
pub fn snapshot(pin_dir: &Path) -> Snapshot {
    let ids = lab_programs(pin_dir);
    let mut out = Snapshot::new();
    for info in loaded_programs().filter_map(std::result::Result::ok) {
        if !ids.contains(&info.id()) {
            continue;
        }
        let kernel = info.name_as_str().unwrap_or("?");
        let name = ferry::paths::program_named(kernel)
            .unwrap_or(kernel)
            .to_string();
        let e = out.entry(name).or_default();
        e.0 += info.run_count();
        e.1 += info.run_time().as_nanos() as u64;
    }
    out
}

/// What ran between `before` and `after` (programs that did not run are left out).
pub fn delta(before: &Snapshot, after: &Snapshot) -> Vec<ProgCost> {
    after
        .iter()
        .filter_map(|(name, &(runs, ns))| {
            let (r0, n0) = before.get(name).copied().unwrap_or_default();
            let runs = runs.saturating_sub(r0);
            (runs > 0).then(|| ProgCost {
                name: name.clone(),
                runs,
                ns: ns.saturating_sub(n0),
            })
        })
        .collect()
}

/// Adds `more` into `sum`, program by program.
pub fn add(sum: &mut Vec<ProgCost>, more: &[ProgCost]) {
    for m in more {
        match sum.iter_mut().find(|s| s.name == m.name) {
            Some(s) => {
                s.runs += m.runs;
                s.ns += m.ns;
            }
            None => sum.push(m.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_keeps_programs_that_ran() {
        let before: Snapshot = [("a".into(), (10, 1000)), ("b".into(), (5, 50))].into();
        let after: Snapshot = [
            ("a".into(), (15, 1600)),
            ("b".into(), (5, 50)),
            ("c".into(), (2, 30)),
        ]
        .into();
        let d = delta(&before, &after);
        assert_eq!(
            d,
            vec![
                ProgCost {
                    name: "a".into(),
                    runs: 5,
                    ns: 600
                },
                ProgCost {
                    name: "c".into(),
                    runs: 2,
                    ns: 30
                },
            ]
        );
        let mut sum = d.clone();
        add(&mut sum, &d);
        assert_eq!(sum[0].runs, 10);
        assert_eq!(sum[1].ns, 60);
    }
}
