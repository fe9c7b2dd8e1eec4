//! The change tracker: every object once, in compact form, and which
//! Services must be translated again. Keyed by Service: an EndpointSlice
//! change dirties the Service it names (and the one it named before), a
//! Node change dirties exactly the Services that read what changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    time::SystemTime,
};

use crate::{
    model::{
        Diagnostic, ServiceName,
        objects::{NodeObj, ObjKey, ServiceObj, SliceObj},
        translate::{self, Config, NodeUse, NodeView, Objects, Translated},
    },
    source::event::{Delta, Event},
};

#[derive(Default)]
pub struct Tracker {
    services: HashMap<ServiceName, Box<ServiceObj>>,
    slices: HashMap<ObjKey, Box<SliceObj>>,
    /// The slices naming each Service.
    /// (A Vec: a Service has one slice or a few.)
    slices_of: HashMap<ServiceName, Vec<ObjKey>>,
    nodes: HashMap<String, NodeObj>,
    /// Every node's addresses.
    node_ips: HashSet<IpAddr>,
    file_problems: BTreeMap<String, Vec<Diagnostic>>,
    dirty: BTreeSet<ServiceName>,
    /// Oldest trigger time of each dirty Service's slice changes.
    triggers: HashMap<ServiceName, SystemTime>,
    /// Services whose last translation read this node's addresses, its
    /// zone, or every node's addresses.
    uses_addresses: HashSet<ServiceName>,
    uses_zone: HashSet<ServiceName>,
    uses_cluster: HashSet<ServiceName>,
    /// This node's Node object changed (addresses, eligibility).
    pub this_node_changed: bool,
    /// Some node's addresses changed.
    pub cluster_nodes_changed: bool,
    /// kube-proxy's change counters.
    pub service_changes: u64,
    pub slice_changes: u64,
    node_name: String,
    /// Trigger times before this are the agent's own start-up, not a
    /// change it programs (kube-proxy ignores them likewise).
    not_before: Option<SystemTime>,
}

impl Tracker {
    pub fn new(node_name: &str, not_before: Option<SystemTime>) -> Self {
        Tracker {
            node_name: node_name.to_owned(),
            not_before,
            ..Tracker::default()
        }
    }

    /// Applies one source event; returns the problems it brought that were
    /// not known before (a Service's are reported when it is translated).
    pub fn apply(&mut self, ev: Event) -> Vec<Diagnostic> {
        let new = |old: Option<&Vec<Diagnostic>>, now: &[Diagnostic]| -> Vec<Diagnostic> {
            now.iter()
                .filter(|d| !old.is_some_and(|o| o.contains(d)))
                .cloned()
                .collect()
        };
        match ev {
            Event::Service(d) => self.service_delta(d),
            Event::Slice(d) => {
                if let Delta::Applied(s) = &d {
                    let fresh = new(self.slices.get(&s.key).map(|o| &o.diags), &s.diags);
                    self.slice(d);
                    return fresh;
                }
                self.slice(d)
            }
            Event::Node(d) => {
                if let Delta::Applied(n) = &d {
                    let fresh = new(self.nodes.get(&n.name).map(|o| &o.diags), &n.diags);
                    self.node(d);
                    return fresh;
                }
                self.node(d)
            }
            Event::FileProblems { file, diags } => {
                let fresh = new(self.file_problems.get(&file), &diags);
                if diags.is_empty() {
                    self.file_problems.remove(&file);
                } else {
                    self.file_problems.insert(file, diags);
                }
                return fresh;
            }
            Event::Synced => {}
        }
        Vec::new()
    }

    fn service_delta(&mut self, d: Delta<ServiceObj, ServiceName>) {
        match d {
            Delta::Applied(s) => {
                if self.services.get(&s.name).map(|b| &**b) == Some(&s) {
                    return;
                }
                self.service_changes += 1;
                self.dirty.insert(s.name.clone());
                self.services.insert(s.name.clone(), Box::new(s));
            }
            Delta::Deleted(name) => self.delete_service(&name),
            Delta::Listed(names) => {
                let keep: HashSet<ServiceName> = names.into_iter().collect();
                let gone: Vec<ServiceName> = self
                    .services
                    .keys()
                    .filter(|k| !keep.contains(k))
                    .cloned()
                    .collect();
                for name in gone {
                    self.delete_service(&name);
                }
            }
        }
    }

    fn delete_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.service_changes += 1;
            self.dirty.insert(name.clone());
        }
    }

    fn slice(&mut self, d: Delta<SliceObj, ObjKey>) {
        match d {
            Delta::Applied(s) => {
                let old = self.slices.get(&s.key);
                if old.map(|b| &**b) == Some(&s) {
                    return;
                }
                let old_svc = old.and_then(|o| o.service_name());
                self.slice_changes += 1;
                if let Some(svc) = old_svc {
                    self.unlink(&svc, &s.key);
                }
                if let Some(svc) = s.service_name() {
                    if let (Some(t), Some(nb)) = (s.trigger_time, self.not_before)
                        && t >= nb
                    {
                        let e = self.triggers.entry(svc.clone()).or_insert(t);
                        *e = (*e).min(t);
                    }
                    let list = self.slices_of.entry(svc.clone()).or_default();
                    if !list.contains(&s.key) {
                        crate::model::push_short(list, s.key.clone());
                    }
                    self.dirty.insert(svc);
                }
                self.slices.insert(s.key.clone(), Box::new(s));
            }
            Delta::Deleted(key) => self.delete_slice(&key),
            Delta::Listed(keys) => {
                let keep: HashSet<ObjKey> = keys.into_iter().collect();
                let gone: Vec<ObjKey> = self
                    .slices
                    .keys()
                    .filter(|k| !keep.contains(k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.delete_slice(&key);
                }
            }
        }
    }

    fn delete_slice(&mut self, key: &ObjKey) {
        if let Some(old) = self.slices.remove(key) {
            self.slice_changes += 1;
            if let Some(svc) = old.service_name() {
                self.unlink(&svc, key);
            }
        }
    }

    fn unlink(&mut self, svc: &ServiceName, key: &ObjKey) {
        if let Some(set) = self.slices_of.get_mut(svc) {
            set.retain(|k| k != key);
            if set.is_empty() {
                self.slices_of.remove(svc);
            }
        }
        self.dirty.insert(svc.clone());
    }

    fn node(&mut self, d: Delta<NodeObj, String>) {
        match d {
            Delta::Applied(n) => {
                let old = self.nodes.insert(n.name.clone(), n.clone());
                self.node_changed(old.as_ref(), Some(&n));
            }
            Delta::Deleted(name) => {
                if let Some(old) = self.nodes.remove(&name) {
                    self.node_changed(Some(&old), None);
                }
            }
            Delta::Listed(names) => {
                let keep: HashSet<String> = names.into_iter().collect();
                let gone: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    if let Some(old) = self.nodes.remove(&name) {
                        self.node_changed(Some(&old), None);
                    }
                }
            }
        }
    }

    /// Dirties the Services that read what changed between `old` and `new`
    /// (the same node's object; None = absent).
    fn node_changed(&mut self, old: Option<&NodeObj>, new: Option<&NodeObj>) {
        let ips = |n: Option<&NodeObj>| n.map(|n| n.ips.clone()).unwrap_or_default();
        let ips_changed = ips(old) != ips(new);
        if ips_changed {
            self.node_ips = self
                .nodes
                .values()
                .flat_map(|n| n.ips.iter().copied())
                .collect();
            self.cluster_nodes_changed = true;
            self.dirty.extend(self.uses_cluster.iter().cloned());
        }
        let name = new.or(old).map(|n| n.name.as_str());
        if name != Some(self.node_name.as_str()) {
            return;
        }
        if old != new {
            self.this_node_changed = true;
        }
        // A missing Node object is "no addresses" for NodePorts.
        if ips_changed || old.is_none() != new.is_none() {
            self.dirty.extend(self.uses_addresses.iter().cloned());
        }
        if old.and_then(|n| n.zone.as_ref()) != new.and_then(|n| n.zone.as_ref()) {
            self.dirty.extend(self.uses_zone.iter().cloned());
        }
    }

    /// Takes the Services to translate again.
    pub fn take_dirty(&mut self) -> BTreeSet<ServiceName> {
        std::mem::take(&mut self.dirty)
    }

    pub fn mark_dirty(&mut self, name: ServiceName) {
        self.dirty.insert(name);
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The oldest trigger time of `name`'s changes since it was last taken.
    pub fn take_trigger(&mut self, name: &ServiceName) -> Option<SystemTime> {
        self.triggers.remove(name)
    }

    pub fn service(&self, name: &ServiceName) -> Option<&ServiceObj> {
        self.services.get(name).map(|b| &**b)
    }

    pub fn service_names(&self) -> impl Iterator<Item = &ServiceName> {
        self.services.keys()
    }

    /// Translates one Service as the objects stand (no groups when it is
    /// gone), and remembers what of the Nodes it read.
    pub fn translate(&mut self, name: &ServiceName, cfg: &Config) -> Translated {
        let Some(svc) = self.services.get(name) else {
            self.record_use(name, NodeUse::default());
            return Translated::default();
        };
        // In name order: where slices list one endpoint differently, the
        // outcome must not depend on which arrived first.
        let mut slices: Vec<&SliceObj> = self
            .slices_of
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|b| &**b))
            .collect();
        slices.sort_by(|a, b| a.key.cmp(&b.key));
        let node = NodeView {
            this: self.nodes.get(&self.node_name),
            all_ips: Some(&self.node_ips),
        };
        let t = translate::translate_service(svc, slices, node, cfg);
        self.record_use(name, t.node_use);
        t
    }

    fn record_use(&mut self, name: &ServiceName, u: NodeUse) {
        for (set, on) in [
            (&mut self.uses_addresses, u.addresses),
            (&mut self.uses_zone, u.zone),
            (&mut self.uses_cluster, u.cluster_addresses),
        ] {
            if on {
                if !set.contains(name) {
                    set.insert(name.clone());
                }
            } else {
                set.remove(name);
            }
        }
    }

    pub fn this_node(&self) -> Option<&NodeObj> {
        self.nodes.get(&self.node_name)
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Every node's addresses.
    pub fn cluster_node_ips(&self) -> &HashSet<IpAddr> {
        &self.node_ips
    }

    /// Problems of objects that are not a Service's (slices, nodes, files),
    /// in a fixed order.
    pub fn other_diagnostics(&self) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self.file_problems.values().flatten().cloned().collect();
        let mut nodes: Vec<&NodeObj> = self.nodes.values().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(nodes.into_iter().flat_map(|n| n.diags.iter().cloned()));
        let mut slices: Vec<&SliceObj> = self.slices.values().map(|b| &**b).collect();
        slices.sort_by(|a, b| a.key.cmp(&b.key));
        out.extend(slices.into_iter().flat_map(|s| s.diags.iter().cloned()));
        out
    }

    /// A copy of every object (tests, the equivalence check).
    pub fn objects(&self) -> Objects {
        Objects {
            services: self
                .services
                .iter()
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect(),
            slices: self
                .slices
                .iter()
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect(),
            nodes: self
                .nodes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.len(), self.nodes.len())
    }
}
