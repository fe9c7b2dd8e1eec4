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

use agent_common::{CT_PRESSURE_PERMILLE, Ct4Key, Ct6Key, ct_dir, ct_expired, maps as names};
use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError},
    sys::SyscallError,
};
use tracing::{debug, info, warn};

use super::sys;
use crate::{
    datapath::codec::CtKey,
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

type Conntrack<K> = HashMap<MapData, K, <K as CtKey>::Value>;

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

/// Each conntrack map's fill now, from its pin (for `/metrics`): the IPv4
/// map's, then the IPv6 one's.
pub fn fill(pins: &PinDir) -> Result<[(&'static str, Fill); 2]> {
    Ok([measure::<Ct4Key>(pins)?, measure::<Ct6Key>(pins)?])
}

fn measure<K: CtKey>(pins: &PinDir) -> Result<(&'static str, Fill)> {
    let ct = open_conntrack::<K>(pins)?;
    let fill = Fill {
        entries: entries(&ct)?.len(),
        capacity: capacity(&ct)?,
    };
    Ok((K::MAP, fill))
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
        let mut tables = (Table::<Ct4Key>::open(pins)?, Table::<Ct6Key>::open(pins)?);
        let fill_map = open(pins, names::CT_FILL)?;
        let fill: Array<MapData, u32> = Map::from_map_data(fill_map)
            .and_then(Array::try_from)
            .map_err(|e| Error::map(names::CT_FILL, e))?;
        let (stop, stopped) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("ferry-ct-gc".into())
            .spawn(move || run(&mut tables, fill, &stopped))
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

/// One family's conntrack map and what the upkeep remembers of it.
struct Table<K: CtKey> {
    ct: Conntrack<K>,
    capacity: u32,
    pressured: bool,
    last_error: String,
}

impl<K: CtKey> Table<K> {
    fn open(pins: &PinDir) -> Result<Self> {
        let ct = open_conntrack::<K>(pins)?;
        let capacity = capacity(&ct)?;
        Ok(Table {
            ct,
            capacity,
            pressured: false,
            last_error: String::new(),
        })
    }

    /// One pass (see [`pass`]), logged; the fill per mille, if measured.
    fn pass(&mut self, gc: bool) -> Option<u32> {
        match pass(&mut self.ct, self.capacity, gc) {
            Ok((now, removed)) => {
                self.last_error.clear();
                if gc && removed > 0 {
                    debug!(
                        map = K::MAP,
                        flows = removed,
                        left = now.entries,
                        "conntrack: idle entries removed"
                    );
                }
                let high = now.permille() >= CT_PRESSURE_PERMILLE;
                if high && !self.pressured {
                    warn!(
                        map = K::MAP,
                        entries = now.entries,
                        capacity = self.capacity,
                        "conntrack map nearly full: new flows evict live ones (raise --conntrack-max)"
                    );
                } else if !high && self.pressured {
                    info!(
                        map = K::MAP,
                        entries = now.entries,
                        capacity = self.capacity,
                        "conntrack map below the pressure mark again"
                    );
                }
                self.pressured = high;
                Some(now.permille())
            }
            Err(e) => {
                let text = e.to_string();
                if text != self.last_error {
                    warn!(map = K::MAP, error = %text, "conntrack upkeep (retrying every {FILL_PERIOD:?})");
                    self.last_error = text;
                }
                None
            }
        }
    }
}

fn run(
    tables: &mut (Table<Ct4Key>, Table<Ct6Key>),
    mut fill: Array<MapData, u32>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut last_gc: Option<Instant> = None;
    loop {
        let gc = last_gc.is_none_or(|t| t.elapsed() >= GC_PERIOD);
        let v4 = tables.0.pass(gc);
        let v6 = tables.1.pass(gc);
        if gc {
            last_gc = Some(Instant::now());
        }
        // The datapath counts new flows made under pressure: the fuller map
        // (each family's has the same capacity) says whether there is.
        if let Some(permille) = v4.max(v6)
            && let Err(e) = fill.set(0, &permille, 0)
        {
            warn!(map = names::CT_FILL, error = %e, "writing the conntrack fill");
        }
        match stopped.recv_timeout(FILL_PERIOD) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// One look at a map: its fill (after the collection, with `gc`) and the
/// entries removed.
fn pass<K: CtKey>(ct: &mut Conntrack<K>, capacity: u32, gc: bool) -> Result<(Fill, usize)> {
    let all = entries(ct)?;
    let mut removed = 0;
    if gc {
        let all: BTreeMap<K, K::Value> = all.iter().copied().collect();
        for k in stale_flows(&all, monotonic_seconds()) {
            match ct.remove(&k) {
                Ok(()) => {}
                // Evicted by the LRU meanwhile: gone all the same.
                Err(MapError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(Error::map(K::MAP, e)),
            }
            removed += 1;
        }
    }
    let now = Fill {
        entries: all.len() - removed,
        capacity,
    };
    Ok((now, removed))
}

fn open(pins: &PinDir, name: &'static str) -> Result<MapData> {
    MapData::from_pin(pins.map(name)).map_err(|e| Error::map(name, e))
}

fn open_conntrack<K: CtKey>(pins: &PinDir) -> Result<Conntrack<K>> {
    Map::from_map_data(open(pins, K::MAP)?)
        .and_then(HashMap::try_from)
        .map_err(|e| Error::map(K::MAP, e))
}

fn capacity<K: CtKey>(ct: &Conntrack<K>) -> Result<u32> {
    Ok(ct
        .map()
        .info()
        .map_err(|e| Error::map(K::MAP, e))?
        .max_entries())
}

fn entries<K: CtKey>(ct: &Conntrack<K>) -> Result<Vec<(K, K::Value)>> {
    sys::read_hash(ct.map(), BATCH).map_err(|source| Error::Io {
        context: format!("reading {}", K::MAP),
        source,
    })
}

/// The entries of flows idle past their timeout at `now`. A flow's two
/// entries are judged and deleted together: freeing one alone could hand
/// its SNAT port to a second flow while the first still uses it.
pub fn stale_flows<K: CtKey>(entries: &BTreeMap<K, K::Value>, now: u32) -> Vec<K> {
    let idle_past_timeout = |proto_nr: u8, last_seen: u32, tcp_flags: u8| {
        ct_expired(proto_nr, tcp_flags, now.saturating_sub(last_seen))
    };
    let mut stale = Vec::new();
    let mut paired = BTreeSet::new();
    for (k, v) in entries.iter().filter(|(k, _)| k.dir() == ct_dir::FORWARD) {
        let reply_key = k.reply_key(v);
        paired.insert(reply_key);
        let reply = entries.get(&reply_key);
        let last_seen = reply.map_or(K::last_seen(v), |r| K::last_seen(r).max(K::last_seen(v)));
        let flags = reply.map_or(K::tcp_flags(v), |r| K::tcp_flags(r) | K::tcp_flags(v));
        if idle_past_timeout(k.proto(), last_seen, flags) {
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
        .filter(|(k, _)| k.dir() == ct_dir::REPLY && !paired.contains(k))
    {
        if idle_past_timeout(k.proto(), K::last_seen(v), K::tcp_flags(v)) {
            stale.push(*k);
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use agent_common::{Ct4Value, ct_timeout, proto, tcp_flags};

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
        let rk = fk.reply_key(&fv);
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
