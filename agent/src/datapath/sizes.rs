//! The map sizes the agent chooses at load time (`--conntrack-max`,
//! `--maglev-max-services`), and what becomes of a pinned map of another
//! shape: another size, or other flags than this agent's object declares
//! (the conntrack maps' common or per-CPU LRU lists,
//! `agent_common::maps::CT_FLAGS`, when another version left the other).
//!
//! aya refuses to reuse a pinned map whose size or flags differ from the
//! ones asked for, so an agent never runs silently with a map it did not
//! ask for. When they differ, the map is recreated without losing what it
//! holds, and the log says which map and why:
//! 1. before loading, the old map's pin is renamed `<name>_resizing`;
//! 2. the object loads with a new map of the new shape under the old name;
//! 3. every entry of the old map is copied into the new one (conntrack
//!    entries oldest first, so that when the map shrinks the most recent
//!    flows are the ones kept; into per-CPU LRU lists spread over the
//!    CPUs, each of which holds only its share), and the old pin is removed.
//!
//! The programs still attached use the old map until the new ones replace
//! them a moment later; a flow they create meanwhile is made again by its
//! next packet (on the same backend: see select.rs in agent-ebpf). Maglev
//! tables are state the agent programmed: shrinking that map below what it
//! holds is refused before anything changes, naming the size it needs. A
//! recreation cut short (a `_resizing` pin left behind) is finished by the
//! next start.
//!
//! The kernel rounds a per-CPU LRU's max_entries up to a multiple of the
//! possible CPUs; the comparison rounds the size asked for the same way,
//! so a restart with the same flags recreates nothing.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use agent_common::{Ct4Key, Ct4Value, Ct6Key, Ct6Value, MAGLEV_TABLE_SIZE, maps as names};
use aya::maps::{HashMap, Map, MapData};
use tracing::{info, warn};

use super::sys;
use crate::{
    error::{Error, Result},
    paths::PinDir,
};

/// Entries per BPF_MAP_LOOKUP_BATCH call while copying.
const BATCH: u32 = 4096;
/// bpffs refuses names with a dot.
const RESIZING: &str = "_resizing";

/// The sizes of the maps whose size is the operator's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `ferry_ct4_v1` and `ferry_ct6_v1` entries (each).
    pub conntrack: u32,
    /// Services with a Maglev table (`ferry_maglev_v1` holds this many tables).
    pub maglev_services: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            conntrack: names::CT_V4_MAX,
            maglev_services: names::MAGLEV_SERVICES,
        }
    }
}

impl MapSizes {
    /// (map name, max_entries) of each sized map.
    pub fn entries(&self) -> [(&'static str, u32); 3] {
        [
            (names::CT_V4, self.conntrack),
            (names::CT_V6, self.conntrack),
            (names::MAGLEV, self.maglev_services * MAGLEV_TABLE_SIZE),
        ]
    }

    /// The shape of each sized map: its max_entries, and the flags the
    /// object declares where they ever changed (None: not compared).
    fn shapes(&self) -> [(&'static str, u32, Option<u32>); 3] {
        self.entries().map(|(name, entries)| {
            let flags = (name == names::CT_V4 || name == names::CT_V6).then_some(names::CT_FLAGS);
            (name, entries, flags)
        })
    }
}

/// What the kernel makes of max_entries `want` with `flags`: a per-CPU LRU
/// has the same number on each possible CPU, rounded up (down on u32
/// overflow), as kernel/bpf/hashtab.c (and aya's reuse check) do.
pub fn kernel_max_entries(want: u32, flags: u32, possible_cpus: u32) -> u32 {
    if flags & names::BPF_F_NO_COMMON_LRU == 0 || possible_cpus <= 1 {
        return want;
    }
    let up = want.div_ceil(possible_cpus).checked_mul(possible_cpus);
    up.unwrap_or(want - want % possible_cpus)
}

fn possible_cpus() -> Result<u32> {
    aya::util::nr_cpus()
        .map(|n| n.get())
        .map_err(|(path, source)| Error::Io {
            context: format!("reading {path}"),
            source,
        })
}

/// BPF_F_RDONLY and BPF_F_WRONLY describe a descriptor, not the map.
const FD_FLAGS: u32 = (1 << 3) | (1 << 4);

/// How a pinned map (`have`: max_entries, flags) differs from what is
/// asked (`want`), for the log; None when it does not.
fn difference(have: (u32, u32), want: (u32, Option<u32>)) -> Option<String> {
    let mut cause = Vec::new();
    if have.0 != want.0 {
        cause.push(format!("max_entries {} -> {}", have.0, want.0));
    }
    if let Some(flags) = want.1
        && have.1 & !FD_FLAGS != flags
    {
        let lists = |f: u32| {
            if f & names::BPF_F_NO_COMMON_LRU != 0 {
                "per-CPU LRU lists"
            } else {
                "common LRU list"
            }
        };
        cause.push(format!(
            "flags {:#x} ({}) -> {flags:#x} ({})",
            have.1 & !FD_FLAGS,
            lists(have.1),
            lists(flags)
        ));
    }
    (!cause.is_empty()).then(|| cause.join(", "))
}

/// A map set aside to be copied into its successor.
#[derive(Debug)]
pub struct Resize {
    name: &'static str,
    old: PathBuf,
    /// What differed (for the log).
    cause: String,
}

/// Before loading: sets aside each pinned map whose shape differs from
/// `sizes` (and the object's flags), and finds the ones an interrupted
/// recreation left. Nothing is changed when a Maglev map would shrink
/// below its content.
pub fn prepare(pins: &PinDir, sizes: &MapSizes) -> Result<Vec<Resize>> {
    let mut resizes = Vec::new();
    let mut cpus = None;
    for (name, asked, flags) in sizes.shapes() {
        let pin = pins.map(name);
        let old = aside(&pin);
        let current = if pin.exists() {
            Some(shape(name, &pin)?)
        } else {
            None
        };
        let want = match flags {
            Some(f) if f & names::BPF_F_NO_COMMON_LRU != 0 => {
                let n = match cpus {
                    Some(n) => n,
                    None => *cpus.insert(possible_cpus()?),
                };
                kernel_max_entries(asked, f, n)
            }
            _ => asked,
        };
        let differs = current.and_then(|c| difference(c, (want, flags)));
        if old.exists() {
            if let Some(cause) = differs {
                return Err(Error::Resize {
                    map: name,
                    detail: format!(
                        "an earlier recreation did not finish ({} is still there) and the map changed again ({cause}): start once with the size of {} ({} entries) to finish it",
                        old.display(),
                        pin.display(),
                        current.map(|c| c.0).unwrap_or_default()
                    ),
                });
            }
            info!(map = name, aside = %old.display(), "finishing an interrupted recreation");
            resizes.push(Resize {
                name,
                old,
                cause: "an interrupted recreation".into(),
            });
            continue;
        }
        let Some(cause) = differs else {
            continue;
        };
        if name == names::MAGLEV {
            let held = entries_in(name, &pin)?;
            if held > want as usize {
                let services = held.div_ceil(MAGLEV_TABLE_SIZE as usize);
                return Err(Error::Resize {
                    map: name,
                    detail: format!(
                        "it holds {held} entries (the tables of {services} services), more than the {want} of --maglev-max-services {}: start with --maglev-max-services {services} or more",
                        want / MAGLEV_TABLE_SIZE
                    ),
                });
            }
        }
        warn!(
            map = name,
            %cause,
            "a pinned map differs from what this agent asks for ({cause}): recreating it, its entries will be copied"
        );
        fs::rename(&pin, &old).map_err(|source| Error::Io {
            context: format!("setting {} aside as {}", pin.display(), old.display()),
            source,
        })?;
        resizes.push(Resize { name, old, cause });
    }
    Ok(resizes)
}

/// After loading (the new maps are pinned under their names): copies each
/// set-aside map into its successor, then removes the old pin.
pub fn finish(pins: &PinDir, resizes: Vec<Resize>) -> Result<()> {
    for r in resizes {
        let old = MapData::from_pin(&r.old).map_err(|e| Error::map(r.name, e))?;
        let new = MapData::from_pin(pins.map(r.name)).map_err(|e| Error::map(r.name, e))?;
        let (copied, kept, capacity) = if r.name == names::CT_V4 {
            copy_conntrack::<Ct4Key, Ct4Value>(r.name, &old, new, |v| v.last_seen)?
        } else if r.name == names::CT_V6 {
            copy_conntrack::<Ct6Key, Ct6Value>(r.name, &old, new, |v| v.last_seen)?
        } else {
            copy_all::<u32, u32>(r.name, &old, new)?
        };
        fs::remove_file(&r.old).map_err(|source| Error::Io {
            context: format!("removing {}", r.old.display()),
            source,
        })?;
        warn!(
            map = r.name,
            cause = %r.cause,
            capacity,
            copied,
            lost = copied - kept,
            "recreated ({}): entries copied into the new map",
            r.cause
        );
    }
    Ok(())
}

fn aside(pin: &Path) -> PathBuf {
    let mut name = pin.as_os_str().to_owned();
    name.push(RESIZING);
    PathBuf::from(name)
}

/// A pinned map's (max_entries, flags).
fn shape(name: &'static str, pin: &Path) -> Result<(u32, u32)> {
    let map = MapData::from_pin(pin).map_err(|e| Error::map(name, e))?;
    let info = map.info().map_err(|e| Error::map(name, e))?;
    Ok((info.max_entries(), info.map_flags()))
}

fn entries_in(name: &'static str, pin: &Path) -> Result<usize> {
    let map = MapData::from_pin(pin).map_err(|e| Error::map(name, e))?;
    Ok(read::<u32, u32>(name, &map)?.len())
}

fn read<K: aya::Pod, V: aya::Pod>(name: &'static str, map: &MapData) -> Result<Vec<(K, V)>> {
    sys::read_hash(map, BATCH).map_err(|source| Error::Io {
        context: format!("reading {name}"),
        source,
    })
}

/// Conntrack: oldest first, so that a smaller LRU keeps the newest flows.
/// Returns (copied, held afterwards, capacity).
fn copy_conntrack<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    old: &MapData,
    new: MapData,
    last_seen: impl Fn(&V) -> u32,
) -> Result<(usize, usize, u32)> {
    let mut all: Vec<(K, V)> = read(name, old)?;
    all.sort_by_key(|(_, v)| last_seen(v));
    let info = new.info().map_err(|e| Error::map(name, e))?;
    let (capacity, per_cpu) = (
        info.max_entries(),
        info.map_flags() & names::BPF_F_NO_COMMON_LRU != 0,
    );
    let mut map: HashMap<MapData, K, V> = Map::from_map_data(new)
        .and_then(HashMap::try_from)
        .map_err(|e| Error::map(name, e))?;
    let mut insert = |(k, v): &(K, V)| map.insert(k, v, 0).map_err(|e| Error::map(name, e));
    if per_cpu {
        cpus::spread(&all, insert)?;
    } else {
        all.iter().try_for_each(&mut insert)?;
    }
    let kept = map.keys().filter_map(Result::ok).count();
    Ok((all.len(), kept, capacity))
}

fn copy_all<K: aya::Pod + Ord, V: aya::Pod>(
    name: &'static str,
    old: &MapData,
    new: MapData,
) -> Result<(usize, usize, u32)> {
    let all: BTreeMap<K, V> = read(name, old)?.into_iter().collect();
    let capacity = new.info().map_err(|e| Error::map(name, e))?.max_entries();
    let mut map: HashMap<MapData, K, V> = Map::from_map_data(new)
        .and_then(HashMap::try_from)
        .map_err(|e| Error::map(name, e))?;
    for (k, v) in &all {
        map.insert(k, v, 0).map_err(|e| Error::map(name, e))?;
    }
    Ok((all.len(), all.len(), capacity))
}

/// Inserting into a per-CPU LRU: an insert takes a free node of the CPU it
/// runs on, and evicts from that CPU's list once its share is used, so a
/// copy made from one CPU would keep only that share of the entries.
mod cpus {
    use std::{io, mem};

    use tracing::warn;

    use crate::error::Result;

    /// Inserts `items` from each CPU this thread may run on in turn, item
    /// `i` from the `i % n`-th (in order: oldest first stays oldest first
    /// on each CPU), then gives the thread back its CPUs. Where the thread
    /// cannot be moved, it inserts from wherever it runs (the caller counts
    /// what the map holds afterwards).
    pub fn spread<T>(items: &[T], mut insert: impl FnMut(&T) -> Result<()>) -> Result<()> {
        let Ok(saved) = affinity() else {
            return items.iter().try_for_each(insert);
        };
        let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: within the set's size.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &saved) })
            .collect();
        let n = allowed.len().max(1);
        let mut result = Ok(());
        for (i, &cpu) in allowed.iter().enumerate() {
            if let Err(e) = run_on(cpu) {
                warn!(cpu, error = %e, "could not move to a CPU to copy its share of a per-CPU LRU map");
            }
            result = items.iter().skip(i).step_by(n).try_for_each(&mut insert);
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = set_affinity(&saved) {
            warn!(error = %e, "could not restore this thread's CPUs after a copy");
        }
        result
    }

    fn affinity() -> io::Result<libc::cpu_set_t> {
        // SAFETY: a zeroed cpu_set_t is an empty set; the kernel fills it.
        let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
        // SAFETY: pid 0 is this thread; the size is the set's.
        let rc = unsafe { libc::sched_getaffinity(0, mem::size_of_val(&set), &mut set) };
        if rc == 0 {
            Ok(set)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn run_on(cpu: usize) -> io::Result<()> {
        // SAFETY: as in `affinity`; CPU_SET on an index below CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // The kernel moves this thread before the call returns.
        set_affinity(&set)
    }

    fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
        // SAFETY: pid 0 is this thread; the size is the set's.
        let rc = unsafe { libc::sched_setaffinity(0, mem::size_of_val(set), set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERCPU: u32 = names::BPF_F_NO_COMMON_LRU;

    #[test]
    fn per_cpu_lru_capacity_is_rounded_as_the_kernel_does() {
        assert_eq!(kernel_max_entries(4096, PERCPU, 2), 4096);
        assert_eq!(kernel_max_entries(4097, PERCPU, 2), 4098);
        assert_eq!(kernel_max_entries(5, PERCPU, 3), 6);
        assert_eq!(kernel_max_entries(1, PERCPU, 64), 64);
        // Rounded down where rounding up overflows.
        assert_eq!(kernel_max_entries(u32::MAX, PERCPU, 4), u32::MAX - 3);
        // Common LRU and one CPU: as asked.
        assert_eq!(kernel_max_entries(4097, 0, 2), 4097);
        assert_eq!(kernel_max_entries(4097, PERCPU, 1), 4097);
    }

    #[test]
    fn the_difference_names_size_and_flags() {
        assert_eq!(difference((4096, PERCPU), (4096, Some(PERCPU))), None);
        // A read-only descriptor's flags are not the map's.
        assert_eq!(
            difference((4096, PERCPU | FD_FLAGS), (4096, Some(PERCPU))),
            None
        );
        // Flags not compared (Maglev).
        assert_eq!(difference((10, 1), (10, None)), None);
        assert_eq!(
            difference((4096, 0), (4096, Some(PERCPU))).as_deref(),
            Some("flags 0x0 (common LRU list) -> 0x2 (per-CPU LRU lists)")
        );
        assert_eq!(
            difference((4096, 0), (8192, Some(PERCPU))).as_deref(),
            Some(
                "max_entries 4096 -> 8192, flags 0x0 (common LRU list) -> 0x2 (per-CPU LRU lists)"
            )
        );
    }
}
