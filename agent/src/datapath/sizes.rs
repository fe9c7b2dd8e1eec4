//! The map sizes the agent chooses at load time (`--conntrack-max`,
//! `--maglev-max-services`), and what becomes of a pinned map of another
//! size.
//!
//! aya refuses to reuse a pinned map whose size differs from the one asked
//! for, so an agent never runs silently with a size it did not ask for.
//! When the flags ask for another size than the pin has, the map is resized
//! without losing what it holds, and the log says so:
//! 1. before loading, the old map's pin is renamed `<name>_resizing`;
//! 2. the object loads with a new map of the new size under the old name;
//! 3. every entry of the old map is copied into the new one (conntrack
//!    entries oldest first, so that when the map shrinks the most recent
//!    flows are the ones kept), and the old pin is removed.
//!
//! The programs still attached use the old map until the new ones replace
//! them a moment later; a flow they create meanwhile is made again by its
//! next packet (on the same backend: see select.rs in agent-ebpf). Maglev
//! tables are state the agent programmed: shrinking that map below what it
//! holds is refused before anything changes, naming the size it needs. A
//! resize cut short (a `_resizing` pin left behind) is finished by the next
//! start.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use agent_common::{Ct4Key, Ct4Value, Ct6Key, Ct6Value, MAGLEV_TABLE_SIZE, maps as names};
use aya::maps::{HashMap, Map, MapData};
use tracing::warn;

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
}

/// A map set aside to be copied into its resized successor.
#[derive(Debug)]
pub struct Resize {
    name: &'static str,
    old: PathBuf,
}

/// Before loading: sets aside each pinned map whose size differs from
/// `sizes`, and finds the ones an interrupted resize left. Nothing is
/// changed when a Maglev map would shrink below its content.
pub fn prepare(pins: &PinDir, sizes: &MapSizes) -> Result<Vec<Resize>> {
    let mut resizes = Vec::new();
    for (name, want) in sizes.entries() {
        let pin = pins.map(name);
        let old = aside(&pin);
        let current = if pin.exists() {
            Some(max_entries(name, &pin)?)
        } else {
            None
        };
        if old.exists() {
            if current.is_some_and(|c| c != want) {
                return Err(Error::Resize {
                    map: name,
                    detail: format!(
                        "an earlier resize did not finish ({} is still there) and the size changed again: start once with the size of {} ({} entries) to finish it",
                        old.display(),
                        pin.display(),
                        current.unwrap_or_default()
                    ),
                });
            }
            resizes.push(Resize { name, old });
            continue;
        }
        let Some(have) = current.filter(|&c| c != want) else {
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
            from = have,
            to = want,
            "resizing a pinned map: its entries will be copied"
        );
        fs::rename(&pin, &old).map_err(|source| Error::Io {
            context: format!("setting {} aside as {}", pin.display(), old.display()),
            source,
        })?;
        resizes.push(Resize { name, old });
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
            capacity,
            copied,
            lost = copied - kept,
            "resized: entries copied into the new map"
        );
    }
    Ok(())
}

fn aside(pin: &Path) -> PathBuf {
    let mut name = pin.as_os_str().to_owned();
    name.push(RESIZING);
    PathBuf::from(name)
}

fn max_entries(name: &'static str, pin: &Path) -> Result<u32> {
    let map = MapData::from_pin(pin).map_err(|e| Error::map(name, e))?;
    Ok(map.info().map_err(|e| Error::map(name, e))?.max_entries())
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
    let capacity = new.info().map_err(|e| Error::map(name, e))?.max_entries();
    let mut map: HashMap<MapData, K, V> = Map::from_map_data(new)
        .and_then(HashMap::try_from)
        .map_err(|e| Error::map(name, e))?;
    for (k, v) in &all {
        map.insert(k, v, 0).map_err(|e| Error::map(name, e))?;
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
