//! Which file defines which object: turns "this file now holds these
//! objects" into per-object events, with the rule that the file last in
//! name order wins an object several define. Holds names only, never the
//! objects (the control loop's tracker holds those, once), each name once
//! (shared), and files by number.

use std::{
    cmp::Ordering,
    collections::{BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Read, parse::Parsed};
use crate::{
    model::{Diagnostic, ServiceName, Severity, objects::ObjKey},
    source::event::{Delta, Event},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ObjRef {
    Service(ServiceName),
    Slice(ObjKey),
    Node(String),
}

impl ObjRef {
    fn deleted(&self) -> Event {
        match self {
            ObjRef::Service(n) => Event::Service(Delta::Deleted(n.clone())),
            ObjRef::Slice(k) => Event::Slice(Delta::Deleted(k.clone())),
            ObjRef::Node(n) => Event::Node(Delta::Deleted(n.clone())),
        }
    }

    fn duplicate(&self) -> Diagnostic {
        let (kind, namespace, name) = match self {
            ObjRef::Service(n) => ("Service", n.namespace.clone(), n.name.clone()),
            ObjRef::Slice(k) => ("EndpointSlice", k.namespace.clone(), k.name.clone()),
            ObjRef::Node(n) => ("Node", String::new(), n.clone()),
        };
        Diagnostic {
            kind,
            namespace,
            name,
            reason: "defined more than once: the last definition wins".to_owned(),
            severity: Severity::Warning,
        }
    }
}

/// The files defining one object: almost always one.
#[derive(Clone, Debug)]
enum Files {
    One(u32),
    /// Sorted by path, the winner last.
    Many(Vec<u32>),
}

/// What one document of a file defined, kept so that an unchanged
/// document is not parsed again.
#[derive(Debug)]
struct DocDefs {
    key: u64,
    /// Every object it defines, in order (a later one in the file may win).
    refs: Vec<Arc<ObjRef>>,
    problems: Vec<Diagnostic>,
}

#[derive(Default)]
pub struct Registry {
    /// File number -> path (numbers are never reused).
    paths: Vec<PathBuf>,
    numbers: HashMap<PathBuf, u32>,
    /// The documents of each file.
    files: HashMap<u32, Vec<DocDefs>>,
    defined: HashMap<Arc<ObjRef>, Files>,
    /// Files to read again, whole: their definitions became the winning ones
    /// again, or a known document did not hold what was needed.
    rereads: BTreeSet<PathBuf>,
    /// Files whose objects another file started or stopped defining during
    /// the current call: their "defined more than once" diagnostics change.
    touched: BTreeSet<u32>,
    /// Files whose last read failed (they keep what they had): why.
    failed: HashMap<u32, Diagnostic>,
}

/// One object of a file as read: its name, the event that applies it (None
/// when its document was known and not parsed) and its document's position.
struct Def {
    r: ObjRef,
    event: Option<Event>,
    doc: usize,
}

impl Registry {
    /// The keys of the documents `path` held at its last read, without
    /// problems (those name their position, which may have changed): the
    /// reader does not parse those again.
    pub fn known_docs(&self, path: &Path) -> HashSet<u64> {
        self.numbers
            .get(path)
            .and_then(|n| self.files.get(n))
            .map(|docs| {
                docs.iter()
                    .filter(|d| d.problems.is_empty())
                    .map(|d| d.key)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A file was read: the events that bring the objects to its content.
    /// A failed read keeps what the file had. When a document that was not
    /// parsed turns out to be needed (its object becomes the file's winning
    /// definition now), nothing changes and the file is queued to be read
    /// again whole ([`Registry::take_rereads`]).
    pub fn file_read(&mut self, path: &Path, read: Read) -> Vec<Event> {
        let n = self.number(path);
        let docs = match read {
            Ok(d) => d,
            Err(problem) => {
                self.failed.insert(n, problem);
                self.touched.insert(n);
                let mut events = Vec::new();
                self.problems_of_touched(&mut events);
                return events;
            }
        };
        let empty = Vec::new();
        let old = self.files.get(&n).unwrap_or(&empty);
        // In document order; a later definition in the same file wins.
        let mut defs: Vec<Def> = Vec::new();
        let mut doc_problems: Vec<Vec<Diagnostic>> = Vec::with_capacity(docs.len());
        let mut keys = Vec::with_capacity(docs.len());
        for (i, d) in docs.into_iter().enumerate() {
            keys.push(d.key);
            let Some(parsed) = d.parsed else {
                let Some(known) = old.iter().find(|o| o.key == d.key) else {
                    return self.read_whole(path);
                };
                defs.extend(known.refs.iter().map(|r| Def {
                    r: (**r).clone(),
                    event: None,
                    doc: i,
                }));
                doc_problems.push(known.problems.clone());
                continue;
            };
            let Parsed {
                services,
                slices,
                nodes,
                problems,
            } = parsed;
            let def = |r, ev| Def {
                r,
                event: Some(ev),
                doc: i,
            };
            defs.extend(services.into_iter().map(|s| {
                def(
                    ObjRef::Service(s.name.clone()),
                    Event::Service(Delta::Applied(s)),
                )
            }));
            defs.extend(slices.into_iter().map(|s| {
                def(
                    ObjRef::Slice(s.key.clone()),
                    Event::Slice(Delta::Applied(s)),
                )
            }));
            defs.extend(
                nodes
                    .into_iter()
                    .map(|n| def(ObjRef::Node(n.name.clone()), Event::Node(Delta::Applied(n)))),
            );
            doc_problems.push(problems);
        }
        let mut last: HashMap<&ObjRef, usize> = HashMap::new();
        for (i, d) in defs.iter().enumerate() {
            last.insert(&d.r, i);
        }
        // A winning definition from a document that was not parsed is only
        // right if the same document won before: its object is applied.
        let old_winner: HashMap<&ObjRef, u64> = old
            .iter()
            .flat_map(|o| o.refs.iter().map(move |r| (&**r, o.key)))
            .collect();
        let stale = last.iter().any(|(r, &i)| {
            defs[i].event.is_none() && old_winner.get(r) != Some(&keys[defs[i].doc])
        });
        if stale {
            return self.read_whole(path);
        }
        let seen: HashSet<ObjRef> = last.keys().map(|r| (*r).clone()).collect();
        let last: HashMap<ObjRef, usize> = last.into_iter().map(|(r, i)| (r.clone(), i)).collect();
        let old = self.files.remove(&n).unwrap_or_default();
        let mut events = Vec::new();
        for r in unique(&old).filter(|r| !seen.contains(&***r)) {
            self.undefine(r, n, &mut events);
        }
        let mut shared_refs: HashMap<ObjRef, Arc<ObjRef>> = HashMap::new();
        for (i, d) in defs.iter_mut().enumerate() {
            if last.get(&d.r) != Some(&i) {
                continue; // an earlier duplicate in this file
            }
            let (r, winner) = self.define(d.r.clone(), n);
            if winner && let Some(ev) = d.event.take() {
                events.push(ev);
            }
            shared_refs.insert(d.r.clone(), r);
        }
        let mut docs: Vec<DocDefs> = keys
            .into_iter()
            .zip(doc_problems)
            .map(|(key, problems)| DocDefs {
                key,
                refs: Vec::new(),
                problems,
            })
            .collect();
        for d in defs {
            let r = shared_refs[&d.r].clone();
            crate::model::push_short(&mut docs[d.doc].refs, r);
        }
        self.files.insert(n, docs);
        self.failed.remove(&n);
        self.touched.insert(n);
        self.problems_of_touched(&mut events);
        events
    }

    /// The diagnostics of every file touched by the current call: why its
    /// last read failed, its documents' own, then one "defined more than
    /// once" per object it defines twice, or wins over another file.
    fn problems_of_touched(&mut self, events: &mut Vec<Event>) {
        for n in std::mem::take(&mut self.touched) {
            let docs = self.files.get(&n).map(Vec::as_slice).unwrap_or_default();
            let mut diags: Vec<Diagnostic> = self.failed.get(&n).cloned().into_iter().collect();
            diags.extend(docs.iter().flat_map(|d| d.problems.clone()));
            let mut count: HashMap<*const ObjRef, usize> = HashMap::new();
            for r in docs.iter().flat_map(|d| &d.refs) {
                *count.entry(Arc::as_ptr(r)).or_default() += 1;
            }
            for r in unique(docs) {
                // Said once, by the file whose definition wins.
                let shared = matches!(self.defined.get(&**r),
                    Some(Files::Many(v)) if v.last() == Some(&n));
                if shared || count[&Arc::as_ptr(r)] > 1 {
                    diags.push(r.duplicate());
                }
            }
            events.push(Event::FileProblems {
                file: self.paths[n as usize].display().to_string(),
                diags,
            });
        }
    }

    /// Queues `path` to be read again whole; nothing else changes.
    fn read_whole(&mut self, path: &Path) -> Vec<Event> {
        self.rereads.insert(path.to_owned());
        Vec::new()
    }

    fn number(&mut self, path: &Path) -> u32 {
        if let Some(&n) = self.numbers.get(path) {
            return n;
        }
        let n = self.paths.len() as u32;
        self.paths.push(path.to_owned());
        self.numbers.insert(path.to_owned(), n);
        n
    }

    fn by_path(&self, a: u32, b: u32) -> Ordering {
        self.paths[a as usize].cmp(&self.paths[b as usize])
    }

    /// Adds file `n` to the definitions of `r`; returns the shared name and
    /// whether `n` now wins it.
    fn define(&mut self, r: ObjRef, n: u32) -> (Arc<ObjRef>, bool) {
        let (key, files) = match self.defined.get_key_value(&r) {
            Some((k, f)) => (k.clone(), Some(f.clone())),
            None => (Arc::new(r), None),
        };
        let files = match files {
            None => Files::One(n),
            Some(Files::One(m)) if m == n => Files::One(n),
            Some(Files::One(m)) => {
                let mut v = vec![m, n];
                v.sort_by(|a, b| self.by_path(*a, *b));
                Files::Many(v)
            }
            Some(Files::Many(mut v)) => {
                if !v.contains(&n) {
                    v.push(n);
                    v.sort_by(|a, b| self.by_path(*a, *b));
                }
                Files::Many(v)
            }
        };
        let winner = match &files {
            Files::One(_) => true,
            Files::Many(v) => {
                self.touched.extend(v.iter().copied());
                v.last() == Some(&n)
            }
        };
        self.defined.insert(key.clone(), files);
        (key, winner)
    }

    /// A file is gone: its objects go, unless another file defines them.
    pub fn file_gone(&mut self, path: &Path) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(&n) = self.numbers.get(path) {
            let old = self.files.remove(&n).unwrap_or_default();
            for r in unique(&old) {
                self.undefine(r, n, &mut events);
            }
            self.failed.remove(&n);
            self.touched.insert(n);
        } else {
            events.push(Event::FileProblems {
                file: path.display().to_string(),
                diags: Vec::new(),
            });
        }
        self.problems_of_touched(&mut events);
        events
    }

    fn undefine(&mut self, r: &Arc<ObjRef>, n: u32, events: &mut Vec<Event>) {
        let Some(files) = self.defined.get_mut(&**r) else {
            return;
        };
        let next = match files {
            Files::One(m) if *m == n => None,
            Files::One(_) => return,
            Files::Many(v) => {
                let was_winner = v.last() == Some(&n);
                v.retain(|m| *m != n);
                self.touched.extend(v.iter().copied());
                let next = *v.last().expect("two or more files");
                if v.len() == 1 {
                    *files = Files::One(next);
                }
                was_winner.then_some(next)
            }
        };
        match next {
            None if matches!(self.defined.get(&**r), Some(Files::One(m)) if *m == n) => {
                self.defined.remove(&**r);
                events.push(r.deleted());
            }
            Some(next) => {
                self.rereads.insert(self.paths[next as usize].clone());
            }
            None => {}
        }
    }

    /// Files to read again because their definitions now win.
    pub fn take_rereads(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.rereads).into_iter().collect()
    }

    /// The complete lists, sent once the first read is done.
    pub fn listed(&self) -> Vec<Event> {
        let (mut services, mut slices, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
        for r in self.defined.keys() {
            match &**r {
                ObjRef::Service(n) => services.push(n.clone()),
                ObjRef::Slice(k) => slices.push(k.clone()),
                ObjRef::Node(n) => nodes.push(n.clone()),
            }
        }
        vec![
            Event::Service(Delta::Listed(services)),
            Event::Slice(Delta::Listed(slices)),
            Event::Node(Delta::Listed(nodes)),
        ]
    }
}

/// Each object the documents define, once.
fn unique(docs: &[DocDefs]) -> impl Iterator<Item = &Arc<ObjRef>> {
    let mut seen = HashSet::new();
    docs.iter()
        .flat_map(|d| &d.refs)
        .filter(move |r| seen.insert(Arc::as_ptr(r)))
}
