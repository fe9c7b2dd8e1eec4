//! Programs a [`Desired`] state into the maps as a diff against what the
//! kernel holds.
//!
//! Write order keeps every frontend usable while it changes (as Cilium's
//! does): new backends first, then the backend slots, then slot 0 with the
//! new count, and only then the slots and backends that fell away. Removing
//! a frontend deletes slot 0 first, so no new connection picks a slot that
//! is about to vanish. Frontends whose kernel content would not change are
//! not written at all: their connections and affinity stay as they are.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use agent_common::{
    AffinityKey, Backend4, Member4Key, RevNat4, Svc4Key, SvcValue, backend_flags, backend_state,
    maps as names,
    net::{ip4_to_raw, port_to_raw},
    svc_flags,
};
use tracing::{debug, warn};

use super::{Maps, ids::IdAllocator, lbmaps::LbMaps, maglev, snapshot::KernelState};
use crate::{
    error::{Error, Result},
    model::{BackendAddr, Cidr4, Desired, Frontend, FrontendKey, FrontendKind, Protocol, Scope},
};

/// What one frontend looks like in the kernel, minus its ids.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Programmed {
    /// Backends in slot order.
    backends: Vec<BackendAddr>,
    /// `backend_flags` of each backend, in slot order.
    backend_flags: Vec<u8>,
    state: u8,
    flags: u16,
    affinity_timeout: u32,
    rev_nat_id: u16,
    /// loadBalancerSourceRanges (external scope only).
    source_ranges: BTreeSet<Cidr4>,
}

impl Programmed {
    fn same_content(&self, other: &Programmed) -> bool {
        self.backends == other.backends
            && self.backend_flags == other.backend_flags
            && self.state == other.state
            && self.flags == other.flags
            && self.affinity_timeout == other.affinity_timeout
            && self.source_ranges == other.source_ranges
    }
}

#[derive(Debug)]
struct BackendEntry {
    id: u32,
    refs: u32,
    state: u8,
    flags: u8,
}

/// (address, port, protocol) of a service: one rev-NAT id, shared by the
/// frontend's scopes.
type RevNatKey = (Ipv4Addr, u16, Protocol);

#[derive(Debug)]
struct RevNatEntry {
    id: u16,
    refs: u32,
    /// Source ranges in the LPM map for this service address.
    ranges: BTreeSet<Cidr4>,
    /// The Maglev table in the kernel (backend ids), when the service uses it.
    maglev: Option<Vec<u32>>,
}

/// Counts of one sync, for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub errors: Vec<String>,
    pub error_reasons: Vec<&'static str>,
    /// UDP backends no frontend uses any more: connected sockets still
    /// pointing at them are destroyed (see `sock_gc`).
    pub gone_udp: Vec<BackendAddr>,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

pub struct Programmer<M: LbMaps = Maps> {
    maps: M,
    frontends: BTreeMap<FrontendKey, Programmed>,
    /// The model each programmed frontend was last written from: an equal
    /// model skips the kernel-content comparison (which allocates and sorts),
    /// so a change to one of 10,000 services costs little more than that one.
    applied: BTreeMap<FrontendKey, Frontend>,
    /// Frontends whose last write failed or that were adopted incomplete:
    /// rewritten on the next sync even if they look unchanged.
    dirty: BTreeSet<FrontendKey>,
    backends: HashMap<BackendAddr, BackendEntry>,
    backend_ids: IdAllocator,
    rev_nats: HashMap<RevNatKey, RevNatEntry>,
    /// rev-NAT id -> its key in `rev_nats`, so per-id lookups (source
    /// ranges, Maglev) stay O(1) at 10,000 services.
    rev_keys: HashMap<u16, RevNatKey>,
    rev_ids: IdAllocator,
    /// Entries in the service map (frontends + slots).
    svc_entries: u32,
    /// UDP backends released during the current sync.
    released_udp: Vec<BackendAddr>,
}

impl<M: LbMaps> Programmer<M> {
    /// Takes over whatever a previous agent left in the (pinned) maps, so the
    /// first sync is a diff and unchanged services are not touched.
    pub fn adopt(maps: M) -> Self {
        let st = KernelState::read(&maps);
        let mut p = Programmer {
            maps,
            frontends: BTreeMap::new(),
            applied: BTreeMap::new(),
            dirty: BTreeSet::new(),
            released_udp: Vec::new(),
            backends: HashMap::new(),
            backend_ids: IdAllocator::new(names::BACKENDS_V4_MAX),
            rev_nats: HashMap::new(),
            rev_keys: HashMap::new(),
            rev_ids: IdAllocator::new(u32::from(u16::MAX)),
            svc_entries: 0,
        };
        for k in &st.stray {
            if let Err(e) = p.maps.del_service(k) {
                warn!(error = %e, "removing a stray service-map entry");
            }
        }
        let mut used_backends = BTreeSet::new();
        for (key, f) in &st.frontends {
            let addrs: Option<Vec<BackendAddr>> = f
                .backend_ids
                .iter()
                .map(|&id| st.backend_addr(id))
                .collect();
            let complete = addrs.is_some();
            let addrs = addrs.unwrap_or_default();
            let state = f
                .backend_ids
                .first()
                .and_then(|id| st.backends.get(id))
                .map_or(backend_state::ACTIVE, |b| b.state);
            let backend_flags: Vec<u8> = f
                .backend_ids
                .iter()
                .map(|id| st.backends.get(id).map_or(0, |b| b.flags))
                .collect();
            for ((addr, &id), &flags) in addrs.iter().zip(&f.backend_ids).zip(&backend_flags) {
                let e = p.backends.entry(*addr).or_insert(BackendEntry {
                    id,
                    refs: 0,
                    state,
                    flags,
                });
                e.refs += 1;
                used_backends.insert(id);
                p.backend_ids.reserve(id);
            }
            let rkey = (key.ip, key.port, key.proto);
            let rid = f.value.rev_nat_id;
            p.rev_keys.entry(rid).or_insert(rkey);
            p.rev_nats
                .entry(rkey)
                .or_insert(RevNatEntry {
                    id: rid,
                    refs: 0,
                    ranges: BTreeSet::new(),
                    maglev: None,
                })
                .refs += 1;
            p.rev_ids.reserve(u32::from(rid));
            p.svc_entries += 1 + u32::from(f.value.count);
            p.frontends.insert(
                *key,
                Programmed {
                    backends: addrs,
                    backend_flags,
                    state,
                    flags: f.value.flags,
                    affinity_timeout: f.value.affinity_timeout,
                    rev_nat_id: rid,
                    source_ranges: BTreeSet::new(),
                },
            );
            if !complete {
                // A slot or backend is missing: the previous agent stopped
                // mid-update. Rewrite it whatever the source says.
                p.dirty.insert(*key);
            }
        }
        for id in st.backends.keys().filter(|id| !used_backends.contains(id)) {
            let _ = p.maps.del_backend(*id);
        }
        let used_rev: BTreeSet<u16> = p.rev_nats.values().map(|r| r.id).collect();
        for id in st.rev_nat.keys().filter(|id| !used_rev.contains(id)) {
            let _ = p.maps.del_rev_nat(*id);
        }
        p.adopt_north_south(&used_rev);
        p.adopt_members();
        debug!(
            frontends = p.frontends.len(),
            backends = p.backends.len(),
            stray = st.stray.len(),
            "adopted kernel state"
        );
        p
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// For the maps the programmer does not own the content of (node
    /// settings, conntrack).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub fn service_entries(&self) -> u32 {
        self.svc_entries
    }

    pub fn rev_nat_count(&self) -> usize {
        self.rev_nats.len()
    }

    /// Brings the kernel to `desired`. Each frontend is programmed on its
    /// own: one that fails (a full map, say) is reported and keeps its old
    /// state; the others are programmed.
    pub fn apply(&mut self, desired: &Desired) -> SyncReport {
        let mut report = SyncReport::default();
        let gone: Vec<FrontendKey> = self
            .frontends
            .keys()
            .filter(|k| !desired.frontends.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match self.remove_frontend(&key) {
                Ok(()) => report.removed += 1,
                Err(e) => {
                    warn!(frontend = %key, error = %e, "removing frontend failed");
                    report.error_reasons.push(e.reason());
                    report.errors.push(format!("{key}: {e}"));
                    self.dirty.insert(key);
                }
            }
        }
        for (key, f) in &desired.frontends {
            let clean = !self.dirty.contains(key);
            if clean && self.applied.get(key) == Some(f) {
                report.unchanged += 1;
                continue;
            }
            let old = self.frontends.get(key);
            let want = want_of(key, f, old.map_or(0, |o| o.rev_nat_id));
            if let Some(old) = old
                && old.same_content(&want)
                && clean
            {
                // Adopted from a previous agent, or a model change that does
                // not reach the kernel (a renamed port, say).
                self.applied.insert(*key, f.clone());
                report.unchanged += 1;
                continue;
            }
            let is_new = old.is_none();
            match self.program_frontend(key, f, want) {
                Ok(()) => {
                    self.dirty.remove(key);
                    self.applied.insert(*key, f.clone());
                    if is_new {
                        report.added += 1
                    } else {
                        report.updated += 1
                    }
                }
                Err(e) => {
                    warn!(service = %f.service, frontend = %key, error = %e, "programming failed");
                    report.error_reasons.push(e.reason());
                    report.errors.push(format!("{} {key}: {e}", f.service));
                    self.dirty.insert(*key);
                }
            }
        }
        let mut gone = std::mem::take(&mut self.released_udp);
        gone.retain(|b| !self.backends.contains_key(b));
        gone.sort_by_key(|b| (b.ip, b.port));
        gone.dedup();
        report.gone_udp = gone;
        report
    }

    fn program_frontend(
        &mut self,
        key: &FrontendKey,
        f: &Frontend,
        mut want: Programmed,
    ) -> Result<()> {
        let old = self.frontends.get(key).cloned();
        let old_count = old.as_ref().map_or(0, |o| o.backends.len() as u32);
        let new_count = want.backends.len() as u32;
        if new_count > u32::from(names::MAX_BACKENDS_PER_SERVICE) {
            return Err(Error::MapFull {
                map: names::SERVICES_V4,
                capacity: u32::from(names::MAX_BACKENDS_PER_SERVICE),
                object: format!("{} {key}: {new_count} backends", f.service),
            });
        }
        // Capacity checks before any write, so a full map never leaves a
        // half-programmed frontend behind.
        let extra = u32::from(old.is_none()) + new_count.saturating_sub(old_count);
        if self.svc_entries + extra > names::SERVICES_V4_MAX {
            return Err(Error::MapFull {
                map: names::SERVICES_V4,
                capacity: names::SERVICES_V4_MAX,
                object: format!("{} {key}", f.service),
            });
        }
        let fresh = want
            .backends
            .iter()
            .filter(|b| !self.backends.contains_key(b))
            .count();
        if self.backend_ids.len() + fresh > names::BACKENDS_V4_MAX as usize {
            return Err(Error::MapFull {
                map: names::BACKENDS_V4,
                capacity: names::BACKENDS_V4_MAX,
                object: format!("{} {key}", f.service),
            });
        }

        let rev_nat_id = match &old {
            Some(o) => o.rev_nat_id,
            None => self.acquire_rev_nat(key, f)?,
        };
        want.rev_nat_id = rev_nat_id;

        let mut ids = Vec::with_capacity(want.backends.len());
        for (b, &flags) in want.backends.iter().zip(&want.backend_flags) {
            match self.acquire_backend(b, want.state, flags) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for b in &want.backends[..ids.len()] {
                        self.release_backend(b);
                    }
                    if old.is_none() {
                        self.release_rev_nat(key);
                    }
                    return Err(e);
                }
            }
        }

        // What the TC path reads beside the frontend (external scope only):
        // added before the frontend points at it, removed after.
        let external = key.scope == Scope::External;
        if external {
            self.add_source_ranges(rev_nat_id, &want.source_ranges)?;
            if want.flags & svc_flags::MAGLEV != 0 {
                self.write_maglev(rev_nat_id, &want.backends, &ids)?;
            }
        }
        if exposed(key, want.flags) {
            for (b, &id) in want.backends.iter().zip(&ids) {
                self.maps.put_member(member_key(rev_nat_id, b), id)?;
            }
        }

        let svc_key = |slot: u16| Svc4Key {
            addr: ip4_to_raw(key.ip.octets()),
            port: port_to_raw(key.port),
            slot,
            proto: key.proto.number(),
            scope: key.scope.number(),
            _pad: [0; 2],
        };
        for (i, id) in ids.iter().enumerate() {
            let v = SvcValue {
                backend_id: *id,
                ..Default::default()
            };
            self.maps.put_service(svc_key(i as u16 + 1), v)?;
        }
        let frontend = SvcValue {
            backend_id: 0,
            count: new_count as u16,
            rev_nat_id,
            flags: want.flags,
            _pad: 0,
            affinity_timeout: want.affinity_timeout,
        };
        self.maps.put_service(svc_key(0), frontend)?;
        for slot in new_count + 1..=old_count {
            self.maps.del_service(&svc_key(slot as u16))?;
        }
        self.svc_entries = self.svc_entries + extra - old_count.saturating_sub(new_count);
        if external {
            self.remove_source_ranges(rev_nat_id, &want.source_ranges);
            if want.flags & svc_flags::MAGLEV == 0 {
                self.clear_maglev(rev_nat_id);
            }
        }

        if let Some(old) = &old {
            let kept: BTreeSet<u32> = ids.iter().copied().collect();
            if exposed(key, old.flags) {
                let still = exposed(key, want.flags);
                for b in &old.backends {
                    if !(still && want.backends.contains(b)) {
                        self.remove_member(key, rev_nat_id, b);
                    }
                }
            }
            if (old.flags | want.flags) & svc_flags::AFFINITY != 0 {
                self.purge_affinity(rev_nat_id, &kept);
            }
            for b in &old.backends {
                self.release_backend(b);
            }
        }
        debug!(service = %f.service, frontend = %key, backends = new_count, "programmed");
        self.frontends.insert(*key, want);
        Ok(())
    }

    fn remove_frontend(&mut self, key: &FrontendKey) -> Result<()> {
        let Some(old) = self.frontends.get(key).cloned() else {
            return Ok(());
        };
        let mut k = Svc4Key {
            addr: ip4_to_raw(key.ip.octets()),
            port: port_to_raw(key.port),
            slot: 0,
            proto: key.proto.number(),
            scope: key.scope.number(),
            _pad: [0; 2],
        };
        // Slot 0 first: from here on no connection picks this frontend.
        self.maps.del_service(&k)?;
        for slot in 1..=old.backends.len() as u16 {
            k.slot = slot;
            if let Err(e) = self.maps.del_service(&k) {
                warn!(frontend = %key, slot, error = %e, "removing a backend slot");
            }
        }
        self.svc_entries -= 1 + old.backends.len() as u32;
        if exposed(key, old.flags) {
            for b in &old.backends {
                self.remove_member(key, old.rev_nat_id, b);
            }
        }
        for b in &old.backends {
            self.release_backend(b);
        }
        if old.flags & svc_flags::AFFINITY != 0 {
            self.purge_affinity(old.rev_nat_id, &BTreeSet::new());
        }
        self.release_rev_nat(key);
        self.frontends.remove(key);
        self.applied.remove(key);
        self.dirty.remove(key);
        debug!(frontend = %key, "removed");
        Ok(())
    }

    fn acquire_backend(&mut self, b: &BackendAddr, state: u8, flags: u8) -> Result<u32> {
        let value = Backend4 {
            addr: ip4_to_raw(b.ip.octets()),
            port: port_to_raw(b.port),
            proto: b.proto.number(),
            state,
            flags,
            _pad: [0; 3],
        };
        if let Some(e) = self.backends.get_mut(b) {
            if (e.state, e.flags) != (state, flags) {
                self.maps.put_backend(e.id, value)?;
                e.state = state;
                e.flags = flags;
            }
            e.refs += 1;
            return Ok(e.id);
        }
        let id = self.backend_ids.alloc().ok_or(Error::MapFull {
            map: names::BACKENDS_V4,
            capacity: names::BACKENDS_V4_MAX,
            object: format!("backend {b}"),
        })?;
        if let Err(e) = self.maps.put_backend(id, value) {
            self.backend_ids.release(id);
            return Err(e);
        }
        self.backends.insert(
            *b,
            BackendEntry {
                id,
                refs: 1,
                state,
                flags,
            },
        );
        Ok(id)
    }

    fn release_backend(&mut self, b: &BackendAddr) {
        let Some(e) = self.backends.get_mut(b) else {
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            let id = e.id;
            self.backends.remove(b);
            if let Err(e) = self.maps.del_backend(id) {
                warn!(backend = %b, error = %e, "removing a backend");
            }
            self.backend_ids.release(id);
            if b.proto == Protocol::Udp {
                self.released_udp.push(*b);
            }
        }
    }

    fn acquire_rev_nat(&mut self, key: &FrontendKey, f: &Frontend) -> Result<u16> {
        let rkey = (key.ip, key.port, key.proto);
        if let Some(e) = self.rev_nats.get_mut(&rkey) {
            e.refs += 1;
            return Ok(e.id);
        }
        let id = self.rev_ids.alloc().ok_or(Error::MapFull {
            map: names::REV_NAT_V4,
            capacity: u32::from(u16::MAX),
            object: format!("{} {key}", f.service),
        })? as u16;
        let v = RevNat4 {
            addr: ip4_to_raw(key.ip.octets()),
            port: port_to_raw(key.port),
            _pad: 0,
        };
        if let Err(e) = self.maps.put_rev_nat(id, v) {
            self.rev_ids.release(u32::from(id));
            return Err(e);
        }
        self.rev_keys.insert(id, rkey);
        self.rev_nats.insert(
            rkey,
            RevNatEntry {
                id,
                refs: 1,
                ranges: BTreeSet::new(),
                maglev: None,
            },
        );
        Ok(id)
    }

    fn release_rev_nat(&mut self, key: &FrontendKey) {
        let rkey = (key.ip, key.port, key.proto);
        let Some(e) = self.rev_nats.get_mut(&rkey) else {
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            let id = e.id;
            self.remove_source_ranges(id, &BTreeSet::new());
            self.clear_maglev(id);
            self.rev_nats.remove(&rkey);
            self.rev_keys.remove(&id);
            if let Err(e) = self.maps.del_rev_nat(id) {
                warn!(frontend = %key, error = %e, "removing a rev-NAT entry");
            }
            self.rev_ids.release(u32::from(id));
        }
    }

    fn rev_nat_mut(&mut self, id: u16) -> Option<&mut RevNatEntry> {
        let key = self.rev_keys.get(&id)?;
        self.rev_nats.get_mut(key)
    }

    fn add_source_ranges(&mut self, rev_nat_id: u16, want: &BTreeSet<Cidr4>) -> Result<()> {
        let have = self
            .rev_nat_mut(rev_nat_id)
            .map(|r| r.ranges.clone())
            .unwrap_or_default();
        for &cidr in want.difference(&have) {
            self.maps.put_src_range(rev_nat_id, cidr)?;
            if let Some(r) = self.rev_nat_mut(rev_nat_id) {
                r.ranges.insert(cidr);
            }
        }
        Ok(())
    }

    fn remove_source_ranges(&mut self, rev_nat_id: u16, keep: &BTreeSet<Cidr4>) {
        let have = self
            .rev_nat_mut(rev_nat_id)
            .map(|r| r.ranges.clone())
            .unwrap_or_default();
        for &cidr in have.difference(keep) {
            if let Err(e) = self.maps.del_src_range(rev_nat_id, cidr) {
                warn!(rev_nat_id, %cidr, error = %e, "removing a source range");
                continue;
            }
            if let Some(r) = self.rev_nat_mut(rev_nat_id) {
                r.ranges.remove(&cidr);
            }
        }
    }

    /// Writes the Maglev table of `backends` (sorted and deduplicated, as
    /// `maglev::table` indexes them; `ids[i]` is the id of `backends[i]`):
    /// only the entries that change.
    fn write_maglev(
        &mut self,
        rev_nat_id: u16,
        backends: &[BackendAddr],
        ids: &[u32],
    ) -> Result<()> {
        let want: Vec<u32> = maglev::table(backends, maglev::MAGLEV_TABLE_SIZE)
            .into_iter()
            .map(|pos| ids[pos as usize])
            .collect();
        let have = self
            .rev_nat_mut(rev_nat_id)
            .and_then(|r| r.maglev.clone())
            .unwrap_or_default();
        for (i, &id) in want.iter().enumerate() {
            if have.get(i) != Some(&id) {
                self.maps
                    .put_maglev(agent_common::maglev_key(rev_nat_id, i as u32), id)?;
            }
        }
        for i in want.len()..have.len() {
            let _ = self
                .maps
                .del_maglev(agent_common::maglev_key(rev_nat_id, i as u32));
        }
        if let Some(r) = self.rev_nat_mut(rev_nat_id) {
            r.maglev = Some(want);
        }
        Ok(())
    }

    fn clear_maglev(&mut self, rev_nat_id: u16) {
        let Some(table) = self.rev_nat_mut(rev_nat_id).and_then(|r| r.maglev.take()) else {
            return;
        };
        for i in 0..table.len() as u32 {
            let _ = self
                .maps
                .del_maglev(agent_common::maglev_key(rev_nat_id, i));
        }
    }

    /// Takes the source ranges and Maglev tables of adopted services; drops
    /// those of services that no longer exist.
    fn adopt_north_south(&mut self, used_rev: &BTreeSet<u16>) {
        for (rev, cidr) in self.maps.src_ranges() {
            match self.rev_nat_mut(rev) {
                Some(r) if used_rev.contains(&rev) => {
                    r.ranges.insert(cidr);
                }
                _ => {
                    let _ = self.maps.del_src_range(rev, cidr);
                }
            }
        }
        let mut tables: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for (key, id) in self.maps.maglev_entries() {
            let (rev, i) = ((key >> 16) as u16, (key & 0xffff) as usize);
            if !used_rev.contains(&rev) {
                let _ = self.maps.del_maglev(key);
                continue;
            }
            let t = tables.entry(rev).or_default();
            if t.len() <= i {
                t.resize(i + 1, 0);
            }
            t[i] = id;
        }
        for (rev, table) in tables {
            if let Some(r) = self.rev_nat_mut(rev) {
                r.maglev = Some(table);
            }
        }
        // Programmed source ranges of the external entries, for the diff.
        let ranges: BTreeMap<u16, BTreeSet<Cidr4>> = self
            .rev_nats
            .values()
            .map(|r| (r.id, r.ranges.clone()))
            .collect();
        for (key, f) in self.frontends.iter_mut() {
            if key.scope == Scope::External && f.flags & svc_flags::SOURCE_RANGES != 0 {
                f.source_ranges = ranges.get(&f.rev_nat_id).cloned().unwrap_or_default();
            }
        }
    }

    fn remove_member(&mut self, key: &FrontendKey, rev_nat_id: u16, b: &BackendAddr) {
        if let Err(e) = self.maps.del_member(&member_key(rev_nat_id, b)) {
            warn!(frontend = %key, backend = %b, error = %e, "removing a DSR membership");
        }
    }

    /// Makes the membership map hold exactly the backends of the adopted
    /// exposed frontends (an agent of an older version left none; a
    /// removed service's may linger).
    fn adopt_members(&mut self) {
        let mut want: BTreeMap<Member4Key, u32> = BTreeMap::new();
        for (key, f) in &self.frontends {
            if exposed(key, f.flags) {
                for b in &f.backends {
                    if let Some(e) = self.backends.get(b) {
                        want.insert(member_key(f.rev_nat_id, b), e.id);
                    }
                }
            }
        }
        let have: BTreeMap<Member4Key, u32> = self.maps.members().into_iter().collect();
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            let _ = self.maps.del_member(k);
        }
        for (k, id) in want.iter().filter(|(k, id)| have.get(k) != Some(id)) {
            if let Err(e) = self.maps.put_member(*k, *id) {
                warn!(error = %e, "writing a DSR membership");
            }
        }
    }

    /// Drops affinity entries of `rev_nat_id` that point at a backend the
    /// frontend no longer has, so a removed backend is never chosen again.
    fn purge_affinity(&mut self, rev_nat_id: u16, kept: &BTreeSet<u32>) {
        let stale: Vec<AffinityKey> = self
            .maps
            .affinity()
            .into_iter()
            .filter(|(k, v)| k.rev_nat_id == rev_nat_id && !kept.contains(&v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = self.maps.del_affinity(&k);
        }
    }
}

/// The frontend is served on the node's devices (the external scope of a
/// NodePort, externalIP or LoadBalancer): its backends are the destinations
/// a DSR option naming it may reach (`ferry_memb4_v1`).
fn exposed(key: &FrontendKey, flags: u16) -> bool {
    key.scope == Scope::External
        && flags & (svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER) != 0
}

fn member_key(rev_nat_id: u16, b: &BackendAddr) -> Member4Key {
    Member4Key {
        rev_nat_id,
        proto: b.proto.number(),
        _pad: 0,
        addr: ip4_to_raw(b.ip.octets()),
        port: port_to_raw(b.port),
        _pad2: 0,
    }
}

/// The kernel content a frontend should have.
fn want_of(key: &FrontendKey, f: &Frontend, rev_nat_id: u16) -> Programmed {
    let mut flags = match f.kind {
        FrontendKind::ClusterIP => svc_flags::CLUSTER_IP,
        FrontendKind::NodePort => svc_flags::NODE_PORT,
        FrontendKind::ExternalIP => svc_flags::EXTERNAL_IP,
        FrontendKind::LoadBalancer => svc_flags::LOAD_BALANCER,
    };
    if f.affinity_timeout.is_some() {
        flags |= svc_flags::AFFINITY;
    }
    if f.etp_local {
        flags |= svc_flags::ETP_LOCAL;
        if f.kind != FrontendKind::ClusterIP && key.scope == Scope::External {
            flags |= svc_flags::TWO_SCOPES;
        }
    }
    if f.itp_local {
        flags |= svc_flags::ITP_LOCAL;
    }
    let external = key.scope == Scope::External && f.kind != FrontendKind::ClusterIP;
    let source_ranges: BTreeSet<Cidr4> = if external {
        f.source_ranges.iter().copied().collect()
    } else {
        BTreeSet::new()
    };
    if !source_ranges.is_empty() {
        flags |= svc_flags::SOURCE_RANGES;
    }
    if external && f.maglev {
        flags |= svc_flags::MAGLEV;
    }
    let mut backends = f.backends.clone();
    backends.sort();
    backends.dedup();
    let backend_flags = backends
        .iter()
        .map(|b| {
            if f.local_backends.contains(b) {
                backend_flags::LOCAL
            } else {
                0
            }
        })
        .collect();
    Programmed {
        backends,
        backend_flags,
        state: if f.terminating {
            backend_state::TERMINATING
        } else {
            backend_state::ACTIVE
        },
        flags,
        affinity_timeout: f.affinity_timeout.unwrap_or(0),
        rev_nat_id,
        source_ranges,
    }
}

#[cfg(test)]
#[path = "programmer_tests.rs"]
mod tests;
