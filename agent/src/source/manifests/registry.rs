//! Which file defines which object: turns "this file now holds these
//! objects" into per-object events, with the rule that the file last in
//! name order wins an object several define. Holds names only, never the
//! objects (the control loop's tracker holds those, once), each name once
//! (shared), and files by number.

use std::{
    cmp::Ordering,
    collections::{BTreeSet, HashMap},
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

#[derive(Default)]
pub struct Registry {
    /// File number -> path (numbers are never reused).
    paths: Vec<PathBuf>,
    numbers: HashMap<PathBuf, u32>,
    /// The objects each file defines.
    files: HashMap<u32, Vec<Arc<ObjRef>>>,
    defined: HashMap<Arc<ObjRef>, Files>,
    /// Files whose definitions became the winning ones again: to re-read.
    rereads: BTreeSet<PathBuf>,
}

impl Registry {
    /// A file was read: the events that bring the objects to its content.
    /// A failed read keeps what the file had.
    pub fn file_read(&mut self, path: &Path, read: Read) -> Vec<Event> {
        let origin = path.display().to_string();
        let parsed = match read {
            Ok(p) => p,
            Err(problem) => {
                return vec![Event::FileProblems {
                    file: origin,
                    diags: vec![problem],
                }];
            }
        };
        let Parsed {
            services,
            slices,
            nodes,
            mut problems,
        } = parsed;
        // In document order; a later definition in the same file wins.
        let mut objects: Vec<(ObjRef, Event)> = Vec::new();
        objects.extend(services.into_iter().map(|s| {
            (
                ObjRef::Service(s.name.clone()),
                Event::Service(Delta::Applied(s)),
            )
        }));
        objects.extend(slices.into_iter().map(|s| {
            (
                ObjRef::Slice(s.key.clone()),
                Event::Slice(Delta::Applied(s)),
            )
        }));
        objects.extend(
            nodes
                .into_iter()
                .map(|n| (ObjRef::Node(n.name.clone()), Event::Node(Delta::Applied(n)))),
        );
        let mut seen: HashMap<ObjRef, usize> = HashMap::new();
        for (i, (r, _)) in objects.iter().enumerate() {
            if seen.insert(r.clone(), i).is_some() {
                problems.push(r.duplicate());
            }
        }
        let n = self.number(path);
        let old = self.files.remove(&n).unwrap_or_default();
        let mut events = Vec::new();
        for r in old.iter().filter(|r| !seen.contains_key(&***r)) {
            self.undefine(r, n, &mut events);
        }
        let mut refs = Vec::with_capacity(seen.len());
        for (i, (r, ev)) in objects.into_iter().enumerate() {
            if seen.get(&r) != Some(&i) {
                continue; // an earlier duplicate in this file
            }
            let (r, winner, shared) = self.define(r, n);
            if shared && !problems.contains(&r.duplicate()) {
                problems.push(r.duplicate());
            }
            if winner {
                events.push(ev);
            }
            refs.push(r);
        }
        self.files.insert(n, refs);
        events.push(Event::FileProblems {
            file: origin,
            diags: problems,
        });
        events
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

    /// Adds file `n` to the definitions of `r`; returns the shared name,
    /// whether `n` now wins it, and whether other files define it too.
    fn define(&mut self, r: ObjRef, n: u32) -> (Arc<ObjRef>, bool, bool) {
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
        let (winner, shared) = match &files {
            Files::One(_) => (true, false),
            Files::Many(v) => (v.last() == Some(&n), true),
        };
        self.defined.insert(key.clone(), files);
        (key, winner, shared)
    }

    /// A file is gone: its objects go, unless another file defines them.
    pub fn file_gone(&mut self, path: &Path) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(&n) = self.numbers.get(path) {
            for r in self.files.remove(&n).unwrap_or_default() {
                self.undefine(&r, n, &mut events);
            }
        }
        events.push(Event::FileProblems {
            file: path.display().to_string(),
            diags: Vec::new(),
        });
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
