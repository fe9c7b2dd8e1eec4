//! The static source: Services, EndpointSlices and Nodes from YAML or JSON
//! files (a file, or a directory's `*.yaml`, `*.yml` and `*.json`, not
//! recursive), sent as per-object events like the API source's.
//!
//! [`watch`] reads everything once, then follows the directory with
//! inotify: a file written (closed after writing), renamed in or out,
//! deleted, or a ConfigMap volume's symlink swap, is re-read alone, and only
//! the objects that changed in it are sent. A poll of the files' metadata
//! backs inotify up (missed events, filesystems without it); a change it
//! finds is read once it has held still for one interval. A file that
//! cannot be read or parsed keeps the objects it had, with a diagnostic;
//! files and the total read are size-capped ([`Limits`]).
//!
//! When two files define one object, the file last in name order wins, as
//! a second `kubectl apply` would.

pub mod parse;
mod registry;
mod scan;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

pub use self::registry::Registry;
use self::scan::{Stamp, scan};
use super::event::{Delta, Event};
use crate::model::{Diagnostic, translate::Objects};

/// How often the metadata poll runs beside inotify, and without it.
pub const POLL_WITH_INOTIFY: Duration = Duration::from_secs(2);
pub const POLL_WITHOUT_INOTIFY: Duration = Duration::from_millis(200);

/// Size caps: a file larger than `file_bytes`, or the files past
/// `total_bytes` in name order, are not read (their objects stay as they
/// were, with a diagnostic), so a stray dump cannot take the agent's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub file_bytes: u64,
    pub total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: 64 << 20,
            total_bytes: 1 << 30,
        }
    }
}

/// The manifests cannot be read at all (as opposed to a bad document in
/// them, which is a [`Diagnostic`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything read from `path` once (tools, tests).
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Objects,
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads `path` (a manifest file or a directory of them) once.
pub fn load(path: &Path, node_name: &str) -> Result<Loaded, SourceError> {
    let stamps = scan(path, Limits::default())?;
    let mut reg = Registry::default();
    let mut events = Vec::new();
    for (file, read) in read_files(&stamps, &Known::new(), node_name, Limits::default()) {
        events.extend(reg.file_read(&file, read));
    }
    events.extend(reg.listed());
    let mut loaded = Loaded::default();
    let mut problems: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
    for ev in events {
        match ev {
            Event::Service(Delta::Applied(s)) => {
                loaded.objects.services.insert(s.name.clone(), s);
            }
            Event::Slice(Delta::Applied(s)) => {
                loaded.objects.slices.insert(s.key.clone(), s);
            }
            Event::Node(Delta::Applied(n)) => {
                loaded.objects.nodes.insert(n.name.clone(), n);
            }
            Event::FileProblems { file, diags } => {
                problems.insert(file, diags);
            }
            _ => {}
        }
    }
    loaded.diagnostics = problems.into_values().flatten().collect();
    Ok(loaded)
}

/// The outcome of reading one file: its documents, in order.
pub type Read = Result<Vec<parse::DocRead>, Diagnostic>;

/// The keys of the documents the registry holds, by file: not parsed again.
pub type Known = HashMap<PathBuf, HashSet<u64>>;

/// Reads and parses files, several at a time on as many threads as there
/// are CPUs, results in the files' order.
fn read_files(
    stamps: &BTreeMap<PathBuf, Stamp>,
    known: &Known,
    node_name: &str,
    limits: Limits,
) -> Vec<(PathBuf, Read)> {
    let none = HashSet::new();
    let known_of = |p: &Path| known.get(p).unwrap_or(&none);
    let files: Vec<(&PathBuf, &Stamp)> = stamps.iter().collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    if workers == 1 {
        // One file changed (the usual event): no thread to start.
        return files
            .into_iter()
            .map(|(path, stamp)| {
                let read = read_file(path, stamp, known_of(path), node_name, limits);
                (path.clone(), read)
            })
            .collect();
    }
    let mut out: Vec<Option<(PathBuf, Read)>> = (0..files.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<&mut Option<(PathBuf, Read)>>> =
        out.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((path, stamp)) = files.get(i) else {
                        return;
                    };
                    let read = read_file(path, stamp, known_of(path), node_name, limits);
                    **slots[i].lock().expect("slot") = Some(((*path).clone(), read));
                }
            });
        }
    });
    drop(slots);
    out.into_iter().flatten().collect()
}

fn read_file(
    path: &Path,
    stamp: &Stamp,
    known: &HashSet<u64>,
    node_name: &str,
    limits: Limits,
) -> Read {
    let origin = path.display().to_string();
    if let Some(why) = &stamp.refused {
        return Err(parse::file_problem(&origin, why.clone()));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| parse::file_problem(&origin, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limits.file_bytes {
        return Err(parse::file_problem(
            &origin,
            format!(
                "{} bytes, over the {} byte limit: not read (its objects stay as they were)",
                bytes.len(),
                limits.file_bytes
            ),
        ));
    }
    parse::parse_docs(&bytes, &origin, node_name, &|key| known.contains(&key))
}

/// Reads `path` and sends its objects, then follows its changes until the
/// receiver is gone. If the very first read fails the path is wrong: the
/// error is logged and `watch` returns, closing the channel.
pub async fn watch(path: PathBuf, node_name: String, tx: mpsc::Sender<Event>) {
    watch_with(path, node_name, Limits::default(), tx).await
}

pub async fn watch_with(path: PathBuf, node_name: String, limits: Limits, tx: mpsc::Sender<Event>) {
    let mut w = Watcher {
        node_name,
        limits,
        reg: None,
        stamps: BTreeMap::new(),
        settling: BTreeMap::new(),
        failing: false,
    };
    // Unreadable at start (not there yet, say): said once, tried again until it can be read.
    let stamps = loop {
        match scan(&path, limits) {
            Ok(s) => break s,
            Err(e) => {
                if !w.failing {
                    error!(error = %e, "cannot load the manifests: trying again every 200 ms");
                    w.failing = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(POLL_WITHOUT_INOTIFY) => {}
                    () = tx.closed() => return,
                }
            }
        }
    };
    if w.failing {
        info!(path = %path.display(), "manifests readable");
        w.failing = false;
    }
    let (dir, only) = scan::watched(&path);
    // inotify first, so that nothing written during the first read is lost.
    let inotify = match inotify_stream(&dir) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "inotify unavailable: polling the manifests every 200 ms");
            None
        }
    };
    if !w.read(stamps, BTreeSet::new(), &tx).await {
        return;
    }
    let period = if inotify.is_some() {
        POLL_WITH_INOTIFY
    } else {
        POLL_WITHOUT_INOTIFY
    };
    let mut poll = tokio::time::interval(period);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut inotify = inotify;
    loop {
        let named = tokio::select! {
            batch = next_batch(&mut inotify) => match batch {
                Some(names) => Some(names),
                None => { inotify = None; continue }
            },
            _ = poll.tick() => None,
            () = tx.closed() => return,
        };
        let stamps = match scan(&path, limits) {
            Ok(s) => {
                if w.failing {
                    info!(path = %path.display(), "manifests readable again");
                    w.failing = false;
                }
                s
            }
            Err(e) => {
                if !w.failing {
                    warn!(error = %e, "cannot re-read the manifests: keeping the previous state");
                    w.failing = true;
                }
                continue;
            }
        };
        let ok = match named {
            // Files an event named are read now; a full rescan on overflow.
            Some(Batch::Names(names)) => {
                let names: BTreeSet<PathBuf> = names
                    .into_iter()
                    .map(|n| dir.join(n))
                    .filter(|p| only.as_ref().is_none_or(|o| o == p))
                    .collect();
                w.read(stamps, names, &tx).await
            }
            Some(Batch::Overflow) => {
                let all = stamps.keys().cloned().collect();
                w.read(stamps, all, &tx).await
            }
            None => w.poll(stamps, &tx).await,
        };
        if !ok {
            return;
        }
    }
}

/// What one wake-up of inotify says.
enum Batch {
    /// Names of entries that were written, renamed, created or deleted.
    Names(Vec<OsString>),
    /// The kernel's queue overflowed: anything may have changed.
    Overflow,
}

type InotifyStream = inotify::EventStream<Vec<u8>>;

fn inotify_stream(dir: &Path) -> std::io::Result<InotifyStream> {
    use inotify::{Inotify, WatchMask};
    let ino = Inotify::init()?;
    ino.watches().add(
        dir,
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    ino.into_event_stream(vec![0u8; 64 * 1024])
}

/// Waits for inotify's next events and takes every one already queued.
/// None: the stream ended (polling carries on alone).
async fn next_batch(stream: &mut Option<InotifyStream>) -> Option<Batch> {
    let Some(s) = stream.as_mut() else {
        return std::future::pending().await;
    };
    let mut names = Vec::new();
    let mut overflow = false;
    let mut take = |ev: inotify::Event<OsString>| {
        use inotify::EventMask as M;
        if ev.mask.contains(M::Q_OVERFLOW)
            || ev
                .mask
                .intersects(M::DELETE_SELF | M::MOVE_SELF | M::IGNORED)
        {
            overflow = true;
        } else if let Some(name) = ev.name {
            names.push(name);
        }
    };
    match s.next().await {
        Some(Ok(ev)) => take(ev),
        Some(Err(e)) => {
            warn!(error = %e, "inotify failed: polling the manifests");
            return None;
        }
        None => return None,
    }
    // Whatever else is already there joins this batch.
    while let Some(Some(Ok(ev))) = futures::FutureExt::now_or_never(s.next()) {
        take(ev);
    }
    Some(if overflow {
        Batch::Overflow
    } else {
        Batch::Names(names)
    })
}

struct Watcher {
    node_name: String,
    limits: Limits,
    reg: Option<Registry>,
    /// The files' metadata when last read.
    stamps: BTreeMap<PathBuf, Stamp>,
    /// Changes the poll saw, read once they hold still for one interval.
    settling: BTreeMap<PathBuf, Stamp>,
    failing: bool,
}

impl Watcher {
    /// Reads the files that are new, changed, or named in `force`, and
    /// drops the ones that are gone; sends what changed. False when the
    /// receiver is gone.
    async fn read(
        &mut self,
        stamps: BTreeMap<PathBuf, Stamp>,
        force: BTreeSet<PathBuf>,
        tx: &mpsc::Sender<Event>,
    ) -> bool {
        let first = self.reg.is_none();
        let changed: BTreeMap<PathBuf, Stamp> = stamps
            .iter()
            .filter(|(p, s)| first || force.contains(*p) || self.stamps.get(*p) != Some(s))
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        let gone: Vec<PathBuf> = self
            .stamps
            .keys()
            .filter(|p| !stamps.contains_key(*p))
            .cloned()
            .collect();
        self.stamps = stamps;
        for p in changed.keys().chain(&gone) {
            self.settling.remove(p);
        }
        // An empty directory at start is still a complete listing: the
        // agent becomes ready with nothing to serve.
        if changed.is_empty() && gone.is_empty() && !first {
            return true;
        }
        debug!(
            changed = changed.len(),
            gone = gone.len(),
            "manifests: reading"
        );
        let (node_name, limits) = (self.node_name.clone(), self.limits);
        let reg = self.reg.get_or_insert_with(Registry::default);
        let mut events = Vec::new();
        for p in &gone {
            events.extend(reg.file_gone(p));
        }
        // Parsing blocks: off the runtime's worker threads, in chunks so
        // that only a few files' objects are held at once.
        let files: Vec<(PathBuf, Stamp)> = changed.into_iter().collect();
        for chunk in files.chunks(8) {
            let chunk: BTreeMap<PathBuf, Stamp> = chunk.iter().cloned().collect();
            let nn = node_name.clone();
            let reg = self.reg.as_ref().expect("created above");
            let known: Known = chunk
                .keys()
                .map(|p| (p.clone(), reg.known_docs(p)))
                .collect();
            let reads =
                tokio::task::spawn_blocking(move || read_files(&chunk, &known, &nn, limits))
                    .await
                    .unwrap_or_default();
            let reg = self.reg.as_mut().expect("created above");
            for (path, read) in reads {
                events.extend(reg.file_read(&path, read));
            }
            // Definitions another file now provides, or files whose known
            // documents did not hold what is needed: read those again, whole.
            // A whole read may hand a definition on again; each file is read
            // whole at most once per round, so this ends.
            let mut whole = HashSet::new();
            loop {
                let paths: Vec<PathBuf> = reg
                    .take_rereads()
                    .into_iter()
                    .filter(|p| whole.insert(p.clone()))
                    .collect();
                if paths.is_empty() {
                    break;
                }
                for path in paths {
                    let stamp = self.stamps.get(&path).cloned();
                    if let Some(stamp) = stamp {
                        let read = read_file(&path, &stamp, &HashSet::new(), &node_name, limits);
                        events.extend(reg.file_read(&path, read));
                    }
                }
            }
            for ev in events.drain(..) {
                if tx.send(ev).await.is_err() {
                    return false;
                }
            }
        }
        if first {
            for ev in self.reg.as_ref().expect("created above").listed() {
                if tx.send(ev).await.is_err() {
                    return false;
                }
            }
        }
        for ev in events {
            if tx.send(ev).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The metadata poll: a change is read once it held still for one
    /// interval (a file caught mid-write is not applied).
    async fn poll(&mut self, stamps: BTreeMap<PathBuf, Stamp>, tx: &mpsc::Sender<Event>) -> bool {
        let mut ready = BTreeSet::new();
        for (p, s) in &stamps {
            if self.stamps.get(p) == Some(s) {
                self.settling.remove(p);
                continue;
            }
            if self.settling.get(p) == Some(s) {
                ready.insert(p.clone());
            } else {
                self.settling.insert(p.clone(), s.clone());
            }
        }
        let gone = self.stamps.keys().any(|p| !stamps.contains_key(p));
        if ready.is_empty() && !gone {
            return true;
        }
        // Only the settled changes (and removals) are taken.
        let mut next = self.stamps.clone();
        next.retain(|p, _| stamps.contains_key(p));
        for p in &ready {
            next.insert(p.clone(), stamps[p].clone());
        }
        self.read(next, ready, tx).await
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

#[cfg(test)]
#[path = "cache_tests.rs"]
mod cache_tests;
