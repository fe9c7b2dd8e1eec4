//! Which file defines which object: turns "this file now holds these
//! objects" into per-object events, with the rule that the file last in
//! name order wins an object several define. Holds names only, never the
//! objects (the control loop's tracker holds those, once).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
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

#[derive(Default)]
pub struct Registry {
    files: BTreeMap<PathBuf, Vec<ObjRef>>,
    defined: HashMap<ObjRef, BTreeSet<PathBuf>>,
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
        let new_refs: BTreeSet<&ObjRef> = seen.keys().collect();
        let old = self.files.remove(path).unwrap_or_default();
        let mut events = Vec::new();
        for r in old.iter().filter(|r| !new_refs.contains(r)) {
            self.undefine(r, path, &mut events);
        }
        let mut refs = Vec::with_capacity(seen.len());
        for (i, (r, ev)) in objects.into_iter().enumerate() {
            if seen.get(&r) != Some(&i) {
                continue; // an earlier duplicate in this file
            }
            let files = self.defined.entry(r.clone()).or_default();
            files.insert(path.to_owned());
            if files.len() > 1 && !problems.contains(&r.duplicate()) {
                problems.push(r.duplicate());
            }
            if files.last().map(PathBuf::as_path) == Some(path) {
                events.push(ev);
            }
            refs.push(r);
        }
        self.files.insert(path.to_owned(), refs);
        events.push(Event::FileProblems {
            file: origin,
            diags: problems,
        });
        events
    }

    /// A file is gone: its objects go, unless another file defines them.
    pub fn file_gone(&mut self, path: &Path) -> Vec<Event> {
        let mut events = Vec::new();
        for r in self.files.remove(path).unwrap_or_default() {
            self.undefine(&r, path, &mut events);
        }
        events.push(Event::FileProblems {
            file: path.display().to_string(),
            diags: Vec::new(),
        });
        events
    }

    fn undefine(&mut self, r: &ObjRef, path: &Path, events: &mut Vec<Event>) {
        let Some(files) = self.defined.get_mut(r) else {
            return;
        };
        let was_winner = files.last().map(PathBuf::as_path) == Some(path);
        files.remove(path);
        match files.last() {
            None => {
                self.defined.remove(r);
                events.push(r.deleted());
            }
            Some(next) if was_winner => {
                self.rereads.insert(next.clone());
            }
            Some(_) => {}
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
            match r {
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
