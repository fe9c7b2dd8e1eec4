//! Conntrack upkeep on a thread of its own, with its own handles on the
//! pinned maps, so that neither a sync nor a scrape waits for it (and it
//! waits for neither).
//!
//! Every [`FILL_PERIOD`] it reads the map (in batches: a full map of 262,144
//! entries in a few ms) and writes its fill to `ferry_ctfill_v1`, where the
//! datapath reads it to count new flows made in a nearly full map
//! (`ns_new_flow_ct_full`); crossing [`CT_PRESSURE_PERMILLE`] is logged as a
//! warning, and back below it as a notice. Every [`GC_PERIOD`] it also
//! removes flows idle past their timeout (the LRU only evicts under
//! pressure). `/metrics` reads the fill itself at scrape time ([`fill`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use agent_common::{CT_PRESSURE_PERMILLE, Ct4Key, Ct4Value, ct_dir, ct_expired, maps as names};
use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError},
    sys::SyscallError,
};
use tracing::{debug, info, warn};

use super::sys;
use crate::{
    datapath::codec::reply_key_of,
    error::{Error, Result},
    northsouth::monotonic_seconds,
    paths::PinDir,
};

/// How often the fill is measured (a map can fill up in under 2 s).
pub const FILL_PERIOD: Duration = Duration::from_secs(2);
/// How often idle flows are removed.
pub const GC_PERIOD: Duration = Duration::from_secs(30);
/// Entries per BPF_MAP_LOOKUP_BATCH call.
const BATCH: u32 = 4096;

type Conntrack = HashMap<MapData, Ct4Key, Ct4Value>;

/// The conntrack map's size and content at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    pub entries: usize,
    pub capacity: u32,
}

impl Fill {
    pub fn permille(&self) -> u32 {
        let cap = u64::from(self.capacity.max(1));
        ((self.entries as u64 * 1000) / cap).min(1000) as u32
    }
}

/// The conntrack map's fill now, from its pin (for `/metrics`).
pub fn fill(pins: &PinDir) -> Result<Fill> {
    let ct = open_conntrack(pins)?;
    Ok(Fill {
        entries: entries(&ct)?.len(),
        capacity: capacity(&ct)?,
    })
}

/// The running upkeep thread; dropping it stops the thread.
pub struct ConntrackGc {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ConntrackGc {
    /// Opens the pinned conntrack and fill maps under `pins` and starts the
    /// thread; its first pass runs at once. Fails only if a map cannot be
    /// opened; later failures are logged and retried every period.
    pub fn spawn(pins: &PinDir) -> Result<ConntrackGc> {
        let mut ct = open_conntrack(pins)?;
        let fill_map = open(pins, names::CT_FILL)?;
        let fill: Array<MapData, u32> = Map::from_map_data(fill_map)
            .and_then(Array::try_from)
            .map_err(|e| Error::map(names::CT_FILL, e))?;
        let capacity = capacity(&ct)?;
        let (stop, stopped) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("ferry-ct-gc".into())
            .spawn(move || run(&mut ct, fill, capacity, &stopped))
            .map_err(|source| Error::Io {
                context: "starting the conntrack thread".into(),
                source,
            })?;
        Ok(ConntrackGc {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ConntrackGc {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    ct: &mut Conntrack,
    mut fill: Array<MapData, u32>,
    capacity: u32,
    stopped: &mpsc::Receiver<()>,
) {
    let mut last_gc: Option<Instant> = None;
    let mut pressured = false;
    let mut last_error = String::new();
    loop {
        let gc = last_gc.is_none_or(|t| t.elapsed() >= GC_PERIOD);
        match pass(ct, &mut fill, capacity, gc) {
            Ok((now, removed)) => {
                last_error.clear();
                if gc {
                    last_gc = Some(Instant::now());
                    if removed > 0 {
                        debug!(
                            flows = removed,
                            left = now.entries,
                            "conntrack: idle entries removed"
                        );
                    }
                }
                let high = now.permille() >= CT_PRESSURE_PERMILLE;
                if high && !pressured {
                    warn!(
                        map = names::CT_V4,
                        entries = now.entries,
                        capacity,
                        "conntrack map nearly full: new flows evict live ones (raise --conntrack-max)"
                    );
                } else if !high && pressured {
                    info!(
                        map = names::CT_V4,
                        entries = now.entries,
                        capacity,
                        "conntrack map below the pressure mark again"
                    );
                }
                pressured = high;
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    warn!(error = %text, "conntrack upkeep (retrying every {FILL_PERIOD:?})");
                    last_error = text;
                }
            }
        }
        match stopped.recv_timeout(FILL_PERIOD) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// One look at the map: its fill (after the collection, with `gc`), written
/// for the datapath, and the entries removed.
fn pass(
    ct: &mut Conntrack,
    fill: &mut Array<MapData, u32>,
    capacity: u32,
    gc: bool,
) -> Result<(Fill, usize)> {
    let all = entries(ct)?;
    let mut removed = 0;
    if gc {
        let all: BTreeMap<Ct4Key, Ct4Value> = all.iter().copied().collect();
        for k in stale_flows(&all, monotonic_seconds()) {
            match ct.remove(&k) {
                Ok(()) => {}
                // Evicted by the LRU meanwhile: gone all the same.
                Err(MapError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(Error::map(names::CT_V4, e)),
            }
            removed += 1;
        }
    }
    let now = Fill {
        entries: all.len() - removed,
        capacity,
    };
    fill.set(0, &now.permille(), 0)
        .map_err(|e| Error::map(names::CT_FILL, e))?;
    Ok((now, removed))
}

fn open(pins: &PinDir, name: &'static str) -> Result<MapData> {
    MapData::from_pin(pins.map(name)).map_err(|e| Error::map(name, e))
}

fn open_conntrack(pins: &PinDir) -> Result<Conntrack> {
    Map::from_map_data(open(pins, names::CT_V4)?)
        .and_then(HashMap::try_from)
        .map_err(|e| Error::map(names::CT_V4, e))
}

fn capacity(ct: &Conntrack) -> Result<u32> {
    Ok(ct
        .map()
        .info()
        .map_err(|e| Error::map(names::CT_V4, e))?
        .max_entries())
}

fn entries(ct: &Conntrack) -> Result<Vec<(Ct4Key, Ct4Value)>> {
    sys::read_hash(ct.map(), BATCH).map_err(|source| Error::Io {
        context: format!("reading {}", names::CT_V4),
        source,
    })
}

/// The entries of flows idle past their timeout at `now`. A flow's two
/// entries are judged and deleted together: freeing one alone could hand
/// its SNAT port to a second flow while the first still uses it.
pub fn stale_flows(entries: &BTreeMap<Ct4Key, Ct4Value>, now: u32) -> Vec<Ct4Key> {
    let idle_past_timeout = |proto_nr: u8, last_seen: u32, tcp_flags: u8| {
        ct_expired(proto_nr, tcp_flags, now.saturating_sub(last_seen))
    };
    let mut stale = Vec::new();
    let mut paired = BTreeSet::new();
    for (k, v) in entries.iter().filter(|(k, _)| k.dir == ct_dir::FORWARD) {
        let reply_key = reply_key_of(k, v);
        paired.insert(reply_key);
        let reply = entries.get(&reply_key);
        let last_seen = reply.map_or(v.last_seen, |r| r.last_seen.max(v.last_seen));
        let flags = reply.map_or(v.tcp_flags, |r| r.tcp_flags | v.tcp_flags);
        if idle_past_timeout(k.proto, last_seen, flags) {
            stale.push(*k);
            if reply.is_some() {
                stale.push(reply_key);
            }
        }
    }
    // A reply entry whose forward entry the LRU evicted (or a DSR flow's,
    // which has none on this node): alone, by its own age.
    for (k, v) in entries
        .iter()
        .filter(|(k, _)| k.dir == ct_dir::REPLY && !paired.contains(k))
    {
        if idle_past_timeout(k.proto, v.last_seen, v.tcp_flags) {
            stale.push(*k);
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use agent_common::{ct_timeout, proto, tcp_flags};

    use super::*;

    fn flow(sport: u16, proto_nr: u8) -> (Ct4Key, Ct4Value) {
        let k = Ct4Key {
            saddr: 1,
            daddr: 2,
            sport,
            dport: 80,
            proto: proto_nr,
            ..Default::default()
        };
        let v = Ct4Value {
            nat_saddr: 3,
            nat_daddr: 4,
            nat_sport: 61_000,
            nat_dport: 8080,
            ..Default::default()
        };
        (k, v)
    }

    #[test]
    fn a_flow_is_kept_while_either_direction_is_alive_and_goes_as_a_unit() {
        let now = 10_000;
        let (fk, mut fv) = flow(1234, proto::UDP);
        let rk = reply_key_of(&fk, &fv);
        // Forward idle for long, reply recent: the flow lives (its SNAT port too).
        fv.last_seen = now - 1_000;
        let rv = Ct4Value {
            last_seen: now - 5,
            ..Default::default()
        };
        let mut entries = BTreeMap::from([(fk, fv), (rk, rv)]);
        assert!(stale_flows(&entries, now).is_empty());
        // Both idle past the UDP timeout: both go together.
        entries.get_mut(&rk).unwrap().last_seen = now - 1_000;
        assert_eq!(stale_flows(&entries, now), vec![fk, rk]);
    }

    #[test]
    fn closing_tcp_flows_expire_fast_established_ones_do_not() {
        let now = 100_000;
        let (fk, mut fv) = flow(1, proto::TCP);
        fv.last_seen = now - 600;
        let entries = BTreeMap::from([(fk, fv)]);
        assert!(stale_flows(&entries, now).is_empty(), "established: 6 h");
        fv.tcp_flags = tcp_flags::FIN;
        let entries = BTreeMap::from([(fk, fv)]);
        assert_eq!(stale_flows(&entries, now), vec![fk]);
        fv.last_seen = now - ct_timeout::TCP_CLOSING;
        let entries = BTreeMap::from([(fk, fv)]);
        assert!(stale_flows(&entries, now).is_empty(), "closing: 10 s");
    }

    #[test]
    fn fill_is_per_mille_of_the_capacity() {
        let f = |entries, capacity| Fill { entries, capacity }.permille();
        assert_eq!(f(0, 1024), 0);
        assert_eq!(f(922, 1024), 900);
        assert_eq!(f(1024, 1024), 1000);
        assert_eq!(f(5, 0), 1000, "a zero capacity reads as full");
    }
}
