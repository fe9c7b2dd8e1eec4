//! Programs frontends into the maps, one at a time, each all-or-nothing.
//!
//! Write order keeps every frontend usable while it changes (as Cilium's
//! does): new backends first, then what the TC path reads beside the
//! frontend (source ranges, the Maglev table), then the backend slots, then
//! slot 0 with the new count (the commit point), and only then the slots,
//! ranges and backends that fell away. Removing a frontend deletes slot 0
//! first, so no new connection picks a slot that is about to vanish.
//!
//! Before any write, every map the frontend needs room in is checked against
//! its capacity, and a `map full` error names the map and its size. A write
//! that fails anyway (the kernel said no) is undone in reverse order, so a
//! frontend is either programmed whole or left exactly as it was: nothing
//! it acquired (backend and rev-NAT ids, source ranges, Maglev entries)
//! stays behind to block others.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use agent_common::{AffinityKey, SvcValue, backend_flags, backend_state, maps as names, svc_flags};
use tracing::{debug, warn};

use super::{
    Maps,
    codec::{self, BackendValue, MemberKey, RevNatValue, SvcKey},
    ids::IdAllocator,
    lbmaps::LbMaps,
    maglev,
    snapshot::KernelState,
};
use crate::{
    error::{Error, Result},
    model::{
        AddrKey, BackendAddr, Cidr, Desired, Family, Frontend, FrontendKey, FrontendKind, Protocol,
        Scope,
    },
};

/// How many entries each map holds (the sizes the maps were created with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub services: u32,
    pub backends: u32,
    pub rev_nat: u32,
    pub src_ranges: u32,
    /// Maglev tables (each `MAGLEV_TABLE_SIZE` entries).
    pub maglev_tables: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            services: names::SERVICES_V4_MAX,
            backends: names::BACKENDS_V4_MAX,
            rev_nat: names::REV_NAT_V4_MAX.min(u32::from(u16::MAX)),
            src_ranges: names::SRC_RANGE_V4_MAX,
            maglev_tables: names::MAGLEV_MAX / agent_common::MAGLEV_TABLE_SIZE,
        }
    }
}

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
    source_ranges: BTreeSet<Cidr>,
}

impl Programmed {
    /// The backend entries of the slots, in slot order.
    fn backend_keys(&self) -> impl Iterator<Item = BackendKey> + '_ {
        self.backends
            .iter()
            .zip(&self.backend_flags)
            .map(|(&addr, &flags)| BackendKey {
                addr,
                state: self.state,
                flags,
            })
    }

    fn same_content(&self, other: &Programmed) -> bool {
        self.backends == other.backends
            && self.backend_flags == other.backend_flags
            && self.state == other.state
            && self.flags == other.flags
            && self.affinity_timeout == other.affinity_timeout
            && self.source_ranges == other.source_ranges
    }
}

/// A backend as the kernel holds it: an address with the state and flags
/// its frontends see it with. Two frontends that disagree (a pod listed as
/// local in one slice and remote in another, say) get two entries, so no
/// frontend's view ever changes another's, whatever order they come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BackendKey {
    addr: BackendAddr,
    state: u8,
    flags: u8,
}

#[derive(Debug)]
struct BackendEntry {
    id: u32,
    refs: u32,
}

#[derive(Debug)]
struct RevNatEntry {
    id: u16,
    refs: u32,
    /// Source ranges in the LPM map for this service address.
    ranges: BTreeSet<Cidr>,
    /// The Maglev table in the kernel (backend ids), when the service uses it.
    maglev: Option<Vec<u32>>,
}

/// What [`Programmer::upsert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Added,
    Updated,
    Unchanged,
}

/// Counts of a full sync, for logs and metrics.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// The frontends that failed, with their errors.
    pub failed: Vec<(FrontendKey, Error)>,
    /// UDP backends no frontend uses any more: connected sockets still
    /// pointing at them are destroyed (see `sock_gc`).
    pub gone_udp: Vec<BackendAddr>,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

/// The service, backend and rev-NAT maps of a family (what a `map full`
/// error names).
fn map_names(family: Family) -> (&'static str, &'static str, &'static str) {
    match family {
        Family::V4 => (names::SERVICES_V4, names::BACKENDS_V4, names::REV_NAT_V4),
        Family::V6 => (names::SERVICES_V6, names::BACKENDS_V6, names::REV_NAT_V6),
    }
}

/// One step of a frontend's programming, and how to take it back.
enum Undo {
    /// A backend reference taken (released again; never reported gone).
    Backend(BackendKey),
    /// A new rev-NAT id.
    RevNat(AddrKey),
    /// A source range added for the rev-NAT id.
    SrcRange(u16, Cidr),
    /// The Maglev table before (None: there was none).
    Maglev(u16, Option<Vec<u32>>),
    /// A service-map entry written: its previous value (None: absent).
    Slot(SvcKey, Option<SvcValue>),
    /// A DSR membership written: its previous backend id (None: absent).
    Member(MemberKey, Option<u32>),
}

pub struct Programmer<M: LbMaps = Maps> {
    maps: M,
    caps: Capacities,
    frontends: BTreeMap<FrontendKey, Programmed>,
    /// Frontends adopted incomplete (a previous agent stopped mid-update):
    /// rewritten on their next sync even if they look unchanged.
    dirty: BTreeSet<FrontendKey>,
    backends: HashMap<BackendKey, BackendEntry>,
    /// How many backend entries each address has (UDP sockets on an
    /// address are destroyed when it has none left).
    backend_addrs: HashMap<BackendAddr, u32>,
    /// How many backend entries flagged local each address has: the
    /// node's local endpoints, whose devices carry `ferry_tc_pod`.
    local_ips: HashMap<IpAddr, u32>,
    /// Addresses that joined or left `local_ips` since the last
    /// `take_local_ip_changes` (one that did both is in neither).
    local_added: BTreeSet<IpAddr>,
    local_removed: BTreeSet<IpAddr>,
    backend_ids: IdAllocator,
    rev_nats: HashMap<AddrKey, RevNatEntry>,
    /// rev-NAT id -> its address, so per-id lookups stay O(1).
    rev_keys: HashMap<u16, AddrKey>,
    rev_ids: IdAllocator,
    /// Programmed frontends flagged ClusterIP, per address: the address is
    /// marked in the service map while any is ([`codec::cluster_ip_key`]).
    cluster_ips: HashMap<IpAddr, u32>,
    /// Entries in the service map (frontends and slots; the ClusterIP marks
    /// are `cluster_ips.len()` more).
    /// Per family ([`Family::index`]): each family has its own map.
    svc_entries: [u32; 2],
    /// Per family, kept as entries come and go (a sync reads them; counting
    /// the maps' keys would cost every sync the size of the cluster):
    /// ClusterIP marks (`cluster_ips` keys), backends (`backends` keys),
    /// service addresses (`rev_nats` keys).
    marks_of: [u32; 2],
    backends_of: [u32; 2],
    rev_nats_of: [u32; 2],
    /// Entries in the source-range map.
    src_range_entries: u32,
    /// Maglev tables in the Maglev map.
    maglev_tables: u32,
    /// UDP backends released since the last `take_gone_udp`.
    released_udp: Vec<BackendAddr>,
    /// Map writes (updates and deletes) issued so far.
    writes: u64,
}

impl<M: LbMaps> Programmer<M> {
    /// Takes over whatever a previous agent left in the (pinned) maps, so the
    /// first sync is a diff and unchanged services are not touched.
    pub fn adopt(maps: M) -> Self {
        Self::adopt_with(maps, Capacities::default())
    }

    pub fn adopt_with(maps: M, caps: Capacities) -> Self {
        let st = KernelState::read(&maps);
        let mut p = Programmer {
            maps,
            caps,
            frontends: BTreeMap::new(),
            dirty: BTreeSet::new(),
            released_udp: Vec::new(),
            backends: HashMap::new(),
            backend_addrs: HashMap::new(),
            local_ips: HashMap::new(),
            local_added: BTreeSet::new(),
            local_removed: BTreeSet::new(),
            backend_ids: IdAllocator::new(caps.backends),
            rev_nats: HashMap::new(),
            rev_keys: HashMap::new(),
            rev_ids: IdAllocator::new(caps.rev_nat),
            cluster_ips: HashMap::new(),
            svc_entries: [0; 2],
            marks_of: [0; 2],
            backends_of: [0; 2],
            rev_nats_of: [0; 2],
            src_range_entries: 0,
            maglev_tables: 0,
            writes: 0,
        };
        for k in &st.stray {
            if let Err(e) = p.del_service(k) {
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
                .map_or(backend_state::ACTIVE, |b| b.state());
            let backend_flags: Vec<u8> = f
                .backend_ids
                .iter()
                .map(|id| st.backends.get(id).map_or(0, |b| b.flags()))
                .collect();
            for ((addr, &id), &flags) in addrs.iter().zip(&f.backend_ids).zip(&backend_flags) {
                let key = BackendKey {
                    addr: *addr,
                    state,
                    flags,
                };
                let new = !p.backends.contains_key(&key);
                p.backends
                    .entry(key)
                    .or_insert(BackendEntry { id, refs: 0 })
                    .refs += 1;
                if new {
                    p.backends_of[Family::of(&addr.ip).index()] += 1;
                    *p.backend_addrs.entry(*addr).or_default() += 1;
                    if flags & backend_flags::LOCAL != 0 {
                        p.local_ip_joined(addr.ip);
                    }
                }
                used_backends.insert(id);
                p.backend_ids.reserve(id);
            }
            let rkey = key.addr();
            let rid = f.value.rev_nat_id;
            p.rev_keys.entry(rid).or_insert(rkey);
            if !p.rev_nats.contains_key(&rkey) {
                p.rev_nats_of[Family::of(&rkey.ip).index()] += 1;
            }
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
            p.svc_entries[Family::of(&key.ip).index()] += 1 + u32::from(f.value.count);
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
                p.dirty.insert(*key);
            }
        }
        for (id, b) in st
            .backends
            .iter()
            .filter(|(id, _)| !used_backends.contains(id))
        {
            let _ = p.del_backend(*id, b.family());
        }
        let used_rev: BTreeSet<u16> = p.rev_nats.values().map(|r| r.id).collect();
        for (id, r) in st.rev_nat.iter().filter(|(id, _)| !used_rev.contains(id)) {
            let _ = p.del_rev_nat(*id, r.family());
        }
        p.adopt_north_south(&used_rev);
        p.reconcile_members();
        for (key, f) in &p.frontends {
            if f.flags & svc_flags::CLUSTER_IP != 0 {
                let n = p.cluster_ips.entry(key.ip).or_default();
                if *n == 0 {
                    p.marks_of[Family::of(&key.ip).index()] += 1;
                }
                *n += 1;
            }
        }
        p.reconcile_cluster_ips(&st.cluster_ips);
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

    pub fn capacities(&self) -> Capacities {
        self.caps
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    /// Whether any frontend in the kernel has one of the `svc_flags` in
    /// `mask` (a walk of the frontends: for periodic checks, not per sync).
    pub fn any_flagged(&self, mask: u16) -> bool {
        self.frontends.values().any(|p| p.flags & mask != 0)
    }

    pub fn is_programmed(&self, key: &FrontendKey) -> bool {
        self.frontends.contains_key(key)
    }

    /// The frontends in the kernel, in key order.
    pub fn programmed(&self) -> impl Iterator<Item = &FrontendKey> {
        self.frontends.keys()
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Entries in both families' service maps.
    pub fn service_entries(&self) -> u32 {
        Family::ALL
            .iter()
            .map(|&f| self.service_entries_of(f))
            .sum()
    }

    /// Entries in one family's service map (frontends, slots, marks).
    pub fn service_entries_of(&self, family: Family) -> u32 {
        self.svc_entries[family.index()] + self.marks_of[family.index()]
    }

    /// Backends of one family (one id space, a map per family).
    pub fn backend_count_of(&self, family: Family) -> usize {
        self.backends_of[family.index()] as usize
    }

    /// Service addresses (rev-NAT entries) of one family.
    pub fn rev_nat_count_of(&self, family: Family) -> usize {
        self.rev_nats_of[family.index()] as usize
    }

    pub fn rev_nat_count(&self) -> usize {
        self.rev_nats.len()
    }

    /// Map writes issued since the programmer was created.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The local endpoint addresses that appeared and went since the last call (the first
    /// call: every one adopted): what a change costs is what changed.
    pub fn take_local_ip_changes(&mut self) -> (Vec<IpAddr>, Vec<IpAddr>) {
        (
            std::mem::take(&mut self.local_added).into_iter().collect(),
            std::mem::take(&mut self.local_removed)
                .into_iter()
                .collect(),
        )
    }

    fn local_ip_joined(&mut self, ip: IpAddr) {
        let n = self.local_ips.entry(ip).or_default();
        *n += 1;
        if *n == 1 && !self.local_removed.remove(&ip) {
            self.local_added.insert(ip);
        }
    }

    fn local_ip_left(&mut self, ip: IpAddr) {
        let n = self.local_ips.get_mut(&ip).expect("counted");
        *n -= 1;
        if *n == 0 {
            self.local_ips.remove(&ip);
            if !self.local_added.remove(&ip) {
                self.local_removed.insert(ip);
            }
        }
    }

    /// UDP backends that no frontend uses any more, released since the last
    /// call: connected sockets on them are to be destroyed.
    pub fn take_gone_udp(&mut self) -> Vec<BackendAddr> {
        let mut gone = std::mem::take(&mut self.released_udp);
        gone.retain(|b| !self.backend_addrs.contains_key(b));
        gone.sort_by_key(|b| (b.ip, b.port));
        gone.dedup();
        gone
    }

    /// Brings the kernel to `desired` as a whole: every frontend not in it
    /// is removed, every other one programmed when it differs. Each
    /// frontend on its own: one that fails keeps its old state and is
    /// reported; the others are programmed.
    pub fn apply(&mut self, desired: &Desired) -> SyncReport {
        let mut report = SyncReport::default();
        let gone: Vec<FrontendKey> = self
            .frontends
            .keys()
            .filter(|k| !desired.frontends.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match self.remove(&key) {
                Ok(_) => report.removed += 1,
                Err(e) => report.failed.push((key, e)),
            }
        }
        for (key, f) in &desired.frontends {
            match self.upsert(key, f) {
                Ok(Outcome::Added) => report.added += 1,
                Ok(Outcome::Updated) => report.updated += 1,
                Ok(Outcome::Unchanged) => report.unchanged += 1,
                Err(e) => report.failed.push((*key, e)),
            }
        }
        report.gone_udp = self.take_gone_udp();
        report
    }

    /// Programs one frontend if its kernel content differs; all or nothing.
    pub fn upsert(&mut self, key: &FrontendKey, f: &Frontend) -> Result<Outcome> {
        let old = self.frontends.get(key);
        let want = want_of(key, f, old.map_or(0, |o| o.rev_nat_id));
        let is_new = old.is_none();
        if let Some(old) = old
            && old.same_content(&want)
            && !self.dirty.contains(key)
        {
            return Ok(Outcome::Unchanged);
        }
        let force = self.dirty.contains(key);
        self.program_frontend(key, f, want, force)?;
        self.dirty.remove(key);
        Ok(if is_new {
            Outcome::Added
        } else {
            Outcome::Updated
        })
    }

    /// Removes one frontend; false when it was not programmed.
    pub fn remove(&mut self, key: &FrontendKey) -> Result<bool> {
        let Some(old) = self.frontends.get(key).cloned() else {
            return Ok(false);
        };
        // Slot 0 first: from here on no connection picks this frontend.
        self.del_service(&codec::svc_key(key, 0))?;
        for slot in 1..=old.backends.len() as u16 {
            if let Err(e) = self.del_service(&codec::svc_key(key, slot)) {
                warn!(frontend = %key, slot, error = %e, "removing a backend slot");
            }
        }
        self.svc_entries[Family::of(&key.ip).index()] -= 1 + old.backends.len() as u32;
        if exposed(key, old.flags) {
            for b in &old.backends {
                if let Err(e) = self.del_member(&codec::member_key(old.rev_nat_id, b)) {
                    warn!(frontend = %key, backend = %b, error = %e, "removing a DSR membership");
                }
            }
        }
        for b in old.backend_keys() {
            self.release_backend(&b, true);
        }
        if old.flags & svc_flags::AFFINITY != 0 {
            self.purge_affinity(old.rev_nat_id, &BTreeSet::new());
        }
        self.release_rev_nat(&key.addr());
        self.frontends.remove(key);
        self.dirty.remove(key);
        self.cluster_ip_refs(key.ip, old.flags & svc_flags::CLUSTER_IP != 0, false);
        debug!(frontend = %key, "removed");
        Ok(true)
    }

    /// Compares the kernel with what was programmed (the full sync's safety
    /// sweep): frontends whose entries drifted are marked for a rewrite,
    /// backends and rev-NAT entries are restored, and entries nobody
    /// programmed are deleted. Returns how many frontends drifted.
    pub fn verify(&mut self) -> usize {
        let st = KernelState::read(&self.maps);
        for k in &st.stray {
            let _ = self.del_service(k);
        }
        self.reconcile_cluster_ips(&st.cluster_ips);
        let mut drifted = Vec::new();
        for (key, p) in &self.frontends {
            let ids: Vec<u32> = p
                .backend_keys()
                .map(|k| self.backends.get(&k).map_or(0, |e| e.id))
                .collect();
            let same = st.frontends.get(key).is_some_and(|kf| {
                kf.value
                    == codec::frontend_value(
                        p.backends.len() as u16,
                        p.rev_nat_id,
                        p.flags,
                        p.affinity_timeout,
                    )
                    && kf.backend_ids == ids
            });
            if !same {
                drifted.push(*key);
            }
        }
        let unknown: Vec<(FrontendKey, u16)> = st
            .frontends
            .iter()
            .filter(|(k, _)| !self.frontends.contains_key(k))
            .map(|(k, f)| (*k, f.value.count))
            .collect();
        for (key, count) in &unknown {
            for slot in 0..=*count {
                let _ = self.del_service(&codec::svc_key(key, slot));
            }
        }
        let backends: Vec<(BackendKey, u32)> =
            self.backends.iter().map(|(k, e)| (*k, e.id)).collect();
        for (k, id) in backends {
            let want = codec::backend_value(&k.addr, k.state, k.flags);
            if st.backends.get(&id) != Some(&want) {
                let _ = self.put_backend(id, want);
            }
        }
        let orphans: Vec<(u32, Family)> = st
            .backends
            .iter()
            .filter(|(id, _)| !self.backend_ids.contains(**id))
            .map(|(id, b)| (*id, b.family()))
            .collect();
        for (id, family) in orphans {
            let _ = self.del_backend(id, family);
        }
        let revs: Vec<(u16, AddrKey)> = self.rev_keys.iter().map(|(id, a)| (*id, *a)).collect();
        for (id, addr) in revs {
            let want = codec::rev_nat_value(&addr);
            if st.rev_nat.get(&id) != Some(&want) {
                let _ = self.put_rev_nat(id, want);
            }
        }
        let orphans: Vec<(u16, Family)> = st
            .rev_nat
            .iter()
            .filter(|(id, _)| !self.rev_keys.contains_key(id))
            .map(|(id, r)| (*id, r.family()))
            .collect();
        for (id, family) in orphans {
            let _ = self.del_rev_nat(id, family);
        }
        self.reconcile_members();
        let n = drifted.len() + unknown.len();
        self.dirty.extend(drifted);
        n
    }

    /// Refuses before any write what cannot fit.
    fn check_room(&self, key: &FrontendKey, f: &Frontend, want: &Programmed) -> Result<()> {
        let old = self.frontends.get(key);
        let old_count = old.map_or(0, |o| o.backends.len() as u32);
        let new_count = want.backends.len() as u32;
        let full = |map: &'static str, capacity: u32, unit: &'static str| Error::MapFull {
            map,
            capacity,
            unit,
            object: format!("{} {key}", f.service),
        };
        let family = Family::of(&key.ip);
        let (svc_map, backend_map, rev_map) = map_names(family);
        if new_count > u32::from(names::MAX_BACKENDS_PER_SERVICE) {
            return Err(full(
                svc_map,
                u32::from(names::MAX_BACKENDS_PER_SERVICE),
                "backends per frontend",
            ));
        }
        let extra = u32::from(old.is_none()) + new_count.saturating_sub(old_count);
        // A new ClusterIP address takes one more (its mark).
        let mark = u32::from(
            want.flags & svc_flags::CLUSTER_IP != 0 && !self.cluster_ips.contains_key(&key.ip),
        );
        if self.service_entries_of(family) + extra + mark > self.caps.services {
            return Err(full(svc_map, self.caps.services, "entries"));
        }
        let fresh = want
            .backend_keys()
            .filter(|k| !self.backends.contains_key(k))
            .count() as u32;
        if self.backend_ids.len() as u32 + fresh > self.caps.backends {
            return Err(full(backend_map, self.caps.backends, "backends"));
        }
        let rev = self.rev_nats.get(&key.addr());
        if rev.is_none() && self.rev_ids.len() as u32 >= self.caps.rev_nat {
            return Err(full(rev_map, self.caps.rev_nat, "service addresses"));
        }
        if key.scope == Scope::External {
            let have = rev.map(|r| &r.ranges);
            let new_ranges = want
                .source_ranges
                .iter()
                .filter(|c| !have.is_some_and(|h| h.contains(c)))
                .count() as u32;
            if self.src_range_entries + new_ranges > self.caps.src_ranges {
                return Err(full(names::SRC_RANGE_V4, self.caps.src_ranges, "ranges"));
            }
            let needs_table =
                want.flags & svc_flags::MAGLEV != 0 && !rev.is_some_and(|r| r.maglev.is_some());
            if needs_table && self.maglev_tables >= self.caps.maglev_tables {
                return Err(full(
                    names::MAGLEV,
                    self.caps.maglev_tables,
                    "Maglev tables",
                ));
            }
        }
        Ok(())
    }

    /// `force`: write every slot, even those the programmer believes hold
    /// the right value already (the kernel content drifted).
    fn program_frontend(
        &mut self,
        key: &FrontendKey,
        f: &Frontend,
        want: Programmed,
        force: bool,
    ) -> Result<()> {
        self.check_room(key, f, &want)?;
        let mut undo = Vec::new();
        match self.write_frontend(key, f, want, force, &mut undo) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.roll_back(undo);
                Err(e)
            }
        }
    }

    /// The writes of one frontend up to its commit (slot 0), then the
    /// cleanup of what it no longer uses. `undo` records each step before
    /// the commit.
    fn write_frontend(
        &mut self,
        key: &FrontendKey,
        f: &Frontend,
        mut want: Programmed,
        force: bool,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let old = self.frontends.get(key).cloned();
        let old_count = old.as_ref().map_or(0, |o| o.backends.len());
        let new_count = want.backends.len();
        let addr = key.addr();
        let old_ids: Vec<u32> = old
            .iter()
            .flat_map(Programmed::backend_keys)
            .map(|k| self.backends.get(&k).map_or(0, |e| e.id))
            .collect();

        let rev_nat_id = match &old {
            Some(o) => o.rev_nat_id,
            None => {
                // A new id, or a reference on the one another scope of the
                // address holds: either way ours to give back on failure.
                let id = self.acquire_rev_nat(&addr, f)?;
                undo.push(Undo::RevNat(addr));
                id
            }
        };
        want.rev_nat_id = rev_nat_id;

        let mut ids = Vec::with_capacity(new_count);
        for k in want.backend_keys() {
            ids.push(self.acquire_backend(k, undo)?);
        }

        // What the TC path reads beside the frontend (external scope only):
        // added before the frontend points at it, removed after.
        let external = key.scope == Scope::External;
        if external {
            self.add_source_ranges(rev_nat_id, &want.source_ranges, undo)?;
            if want.flags & svc_flags::MAGLEV != 0 {
                self.write_maglev(rev_nat_id, &want.backends, &ids, undo)?;
            }
        }

        // The backends a DSR option naming this frontend may reach.
        let old_members: HashMap<MemberKey, u32> = match &old {
            Some(o) if exposed(key, o.flags) => o
                .backends
                .iter()
                .zip(&old_ids)
                .map(|(b, id)| (codec::member_key(rev_nat_id, b), *id))
                .collect(),
            _ => HashMap::new(),
        };
        let new_members: HashMap<MemberKey, u32> = if exposed(key, want.flags) {
            want.backends
                .iter()
                .zip(&ids)
                .map(|(b, id)| (codec::member_key(rev_nat_id, b), *id))
                .collect()
        } else {
            HashMap::new()
        };
        for (k, id) in &new_members {
            let prev = old_members.get(k).copied();
            if force || prev != Some(*id) {
                undo.push(Undo::Member(*k, prev));
                self.put_member(*k, *id)?;
            }
        }

        for (i, id) in ids.iter().enumerate() {
            let slot = i as u16 + 1;
            let k = codec::svc_key(key, slot);
            let prev = old_ids.get(i).map(|&old| codec::slot_value(old));
            if !force && prev == Some(codec::slot_value(*id)) {
                continue;
            }
            undo.push(Undo::Slot(k, prev));
            self.put_service(k, codec::slot_value(*id))?;
        }
        let k0 = codec::svc_key(key, 0);
        let prev0 = old.as_ref().map(|o| {
            codec::frontend_value(
                o.backends.len() as u16,
                o.rev_nat_id,
                o.flags,
                o.affinity_timeout,
            )
        });
        undo.push(Undo::Slot(k0, prev0));
        self.put_service(
            k0,
            codec::frontend_value(
                new_count as u16,
                rev_nat_id,
                want.flags,
                want.affinity_timeout,
            ),
        )?;

        // Committed: from here on, failures only leave entries no lookup
        // reaches (slots past the count), which adoption sweeps up.
        undo.clear();
        for slot in new_count + 1..=old_count {
            if let Err(e) = self.del_service(&codec::svc_key(key, slot as u16)) {
                warn!(frontend = %key, slot, error = %e, "removing a backend slot");
            }
        }
        let entries = &mut self.svc_entries[Family::of(&key.ip).index()];
        *entries = *entries + u32::from(old.is_none()) + new_count as u32 - old_count as u32;
        if external {
            self.remove_source_ranges(rev_nat_id, &want.source_ranges);
            if want.flags & svc_flags::MAGLEV == 0 {
                self.clear_maglev(rev_nat_id);
            }
        }
        for k in old_members.keys().filter(|k| !new_members.contains_key(k)) {
            if let Err(e) = self.del_member(k) {
                warn!(frontend = %key, error = %e, "removing a DSR membership");
            }
        }
        if let Some(old) = &old {
            let kept: BTreeSet<u32> = ids.iter().copied().collect();
            if (old.flags | want.flags) & svc_flags::AFFINITY != 0 {
                self.purge_affinity(rev_nat_id, &kept);
            }
            for k in old.backend_keys() {
                self.release_backend(&k, true);
            }
        }
        debug!(service = %f.service, frontend = %key, backends = new_count, "programmed");
        let was = old.is_some_and(|o| o.flags & svc_flags::CLUSTER_IP != 0);
        self.cluster_ip_refs(key.ip, was, want.flags & svc_flags::CLUSTER_IP != 0);
        self.frontends.insert(*key, want);
        Ok(())
    }

    /// Takes back the steps of a failed frontend, newest first. A failure
    /// here is logged: the entry is one no lookup reaches or the old value.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let r = match step {
                Undo::Slot(k, Some(v)) => self.put_service(k, v),
                Undo::Slot(k, None) => self.del_service(&k),
                Undo::Member(k, Some(id)) => self.put_member(k, id),
                Undo::Member(k, None) => self.del_member(&k),
                Undo::Maglev(rev, old) => {
                    self.restore_maglev(rev, old);
                    Ok(())
                }
                Undo::SrcRange(rev, cidr) => {
                    let r = self.del_src_range(rev, cidr);
                    if r.is_ok() {
                        self.src_range_entries -= 1;
                        if let Some(e) = self.rev_nat_mut(rev) {
                            e.ranges.remove(&cidr);
                        }
                    }
                    r
                }
                Undo::Backend(k) => {
                    self.release_backend(&k, false);
                    Ok(())
                }
                Undo::RevNat(addr) => {
                    self.release_rev_nat(&addr);
                    Ok(())
                }
            };
            if let Err(e) = r {
                warn!(error = %e, "undoing a failed frontend write");
            }
        }
    }

    fn acquire_backend(&mut self, k: BackendKey, undo: &mut Vec<Undo>) -> Result<u32> {
        if let Some(e) = self.backends.get_mut(&k) {
            e.refs += 1;
            undo.push(Undo::Backend(k));
            return Ok(e.id);
        }
        let id = self.backend_ids.alloc().ok_or(Error::MapFull {
            map: map_names(Family::of(&k.addr.ip)).1,
            capacity: self.caps.backends,
            unit: "backends",
            object: format!("backend {}", k.addr),
        })?;
        if let Err(e) = self.put_backend(id, codec::backend_value(&k.addr, k.state, k.flags)) {
            self.backend_ids.release(id);
            return Err(e);
        }
        self.backends.insert(k, BackendEntry { id, refs: 1 });
        self.backends_of[Family::of(&k.addr.ip).index()] += 1;
        *self.backend_addrs.entry(k.addr).or_default() += 1;
        if k.flags & backend_flags::LOCAL != 0 {
            self.local_ip_joined(k.addr.ip);
        }
        undo.push(Undo::Backend(k));
        Ok(id)
    }

    /// Drops one reference; the last one deletes the backend. `report`:
    /// a UDP address left with no entry has connected sockets to destroy.
    fn release_backend(&mut self, k: &BackendKey, report: bool) {
        let Some(e) = self.backends.get_mut(k) else {
            return;
        };
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        let id = e.id;
        self.backends.remove(k);
        self.backends_of[Family::of(&k.addr.ip).index()] -= 1;
        if let Err(e) = self.del_backend(id, Family::of(&k.addr.ip)) {
            warn!(backend = %k.addr, error = %e, "removing a backend");
        }
        self.backend_ids.release(id);
        if k.flags & backend_flags::LOCAL != 0 {
            self.local_ip_left(k.addr.ip);
        }
        let n = self.backend_addrs.get_mut(&k.addr).expect("counted");
        *n -= 1;
        if *n == 0 {
            self.backend_addrs.remove(&k.addr);
            if report && k.addr.proto == Protocol::Udp {
                self.released_udp.push(k.addr);
            }
        }
    }

    /// The address's rev-NAT id, taking a reference.
    fn acquire_rev_nat(&mut self, addr: &AddrKey, f: &Frontend) -> Result<u16> {
        if let Some(e) = self.rev_nats.get_mut(addr) {
            e.refs += 1;
            return Ok(e.id);
        }
        let id = self.rev_ids.alloc().ok_or(Error::MapFull {
            map: map_names(Family::of(&addr.ip)).2,
            capacity: self.caps.rev_nat,
            unit: "service addresses",
            object: format!("{} {addr}", f.service),
        })? as u16;
        if let Err(e) = self.put_rev_nat(id, codec::rev_nat_value(addr)) {
            self.rev_ids.release(u32::from(id));
            return Err(e);
        }
        self.rev_keys.insert(id, *addr);
        self.rev_nats_of[Family::of(&addr.ip).index()] += 1;
        self.rev_nats.insert(
            *addr,
            RevNatEntry {
                id,
                refs: 1,
                ranges: BTreeSet::new(),
                maglev: None,
            },
        );
        Ok(id)
    }

    fn release_rev_nat(&mut self, addr: &AddrKey) {
        let Some(e) = self.rev_nats.get_mut(addr) else {
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            let id = e.id;
            self.remove_source_ranges(id, &BTreeSet::new());
            self.clear_maglev(id);
            self.rev_nats.remove(addr);
            self.rev_nats_of[Family::of(&addr.ip).index()] -= 1;
            self.rev_keys.remove(&id);
            if let Err(e) = self.del_rev_nat(id, Family::of(&addr.ip)) {
                warn!(address = %addr, error = %e, "removing a rev-NAT entry");
            }
            self.rev_ids.release(u32::from(id));
        }
    }

    fn rev_nat_mut(&mut self, id: u16) -> Option<&mut RevNatEntry> {
        let key = self.rev_keys.get(&id)?;
        self.rev_nats.get_mut(key)
    }

    fn add_source_ranges(
        &mut self,
        rev_nat_id: u16,
        want: &BTreeSet<Cidr>,
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let have = self
            .rev_nat_mut(rev_nat_id)
            .map(|r| r.ranges.clone())
            .unwrap_or_default();
        for &cidr in want.difference(&have) {
            self.put_src_range(rev_nat_id, cidr)?;
            self.src_range_entries += 1;
            undo.push(Undo::SrcRange(rev_nat_id, cidr));
            if let Some(r) = self.rev_nat_mut(rev_nat_id) {
                r.ranges.insert(cidr);
            }
        }
        Ok(())
    }

    fn remove_source_ranges(&mut self, rev_nat_id: u16, keep: &BTreeSet<Cidr>) {
        let have = self
            .rev_nat_mut(rev_nat_id)
            .map(|r| r.ranges.clone())
            .unwrap_or_default();
        for &cidr in have.difference(keep) {
            if let Err(e) = self.del_src_range(rev_nat_id, cidr) {
                warn!(rev_nat_id, %cidr, error = %e, "removing a source range");
                continue;
            }
            self.src_range_entries -= 1;
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
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let want: Vec<u32> = maglev::table(backends, maglev::MAGLEV_TABLE_SIZE)
            .into_iter()
            .map(|pos| ids[pos as usize])
            .collect();
        let old = self.rev_nat_mut(rev_nat_id).and_then(|r| r.maglev.clone());
        undo.push(Undo::Maglev(rev_nat_id, old.clone()));
        if old.is_none() {
            self.maglev_tables += 1;
        }
        // Recorded before the writes, so that an undo knows what to rewrite.
        if let Some(r) = self.rev_nat_mut(rev_nat_id) {
            r.maglev = Some(want.clone());
        }
        self.write_table_diff(rev_nat_id, old.as_deref().unwrap_or_default(), &want)
    }

    fn write_table_diff(&mut self, rev_nat_id: u16, have: &[u32], want: &[u32]) -> Result<()> {
        for (i, &id) in want.iter().enumerate() {
            if have.get(i) != Some(&id) {
                self.put_maglev(codec::maglev_key(rev_nat_id, i as u32), id)?;
            }
        }
        for i in want.len()..have.len() {
            let _ = self.del_maglev(codec::maglev_key(rev_nat_id, i as u32));
        }
        Ok(())
    }

    fn restore_maglev(&mut self, rev_nat_id: u16, old: Option<Vec<u32>>) {
        let now = self.rev_nat_mut(rev_nat_id).and_then(|r| r.maglev.take());
        let now = now.unwrap_or_default();
        match old {
            Some(table) => {
                if let Err(e) = self.write_table_diff(rev_nat_id, &now, &table) {
                    warn!(rev_nat_id, error = %e, "restoring a Maglev table");
                }
                if let Some(r) = self.rev_nat_mut(rev_nat_id) {
                    r.maglev = Some(table);
                }
            }
            None => {
                for i in 0..now.len() as u32 {
                    let _ = self.del_maglev(codec::maglev_key(rev_nat_id, i));
                }
                self.maglev_tables -= 1;
            }
        }
    }

    fn clear_maglev(&mut self, rev_nat_id: u16) {
        let Some(table) = self.rev_nat_mut(rev_nat_id).and_then(|r| r.maglev.take()) else {
            return;
        };
        for i in 0..table.len() as u32 {
            let _ = self.del_maglev(codec::maglev_key(rev_nat_id, i));
        }
        self.maglev_tables -= 1;
    }

    /// Takes the source ranges and Maglev tables of adopted services; drops
    /// those of services that no longer exist.
    fn adopt_north_south(&mut self, used_rev: &BTreeSet<u16>) {
        for (rev, cidr) in self.maps.src_ranges() {
            match self.rev_nat_mut(rev) {
                Some(r) if used_rev.contains(&rev) => {
                    r.ranges.insert(cidr);
                    self.src_range_entries += 1;
                }
                _ => {
                    let _ = self.del_src_range(rev, cidr);
                }
            }
        }
        let mut tables: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for (key, id) in self.maps.maglev_entries() {
            let (rev, i) = codec::maglev_index(key);
            if !used_rev.contains(&rev) {
                let _ = self.del_maglev(key);
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
                self.maglev_tables += 1;
            }
        }
        // Programmed source ranges of the external entries, for the diff.
        let ranges: BTreeMap<u16, BTreeSet<Cidr>> = self
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

    /// Makes the membership map hold exactly the backends of the exposed
    /// frontends (an agent of an older version left none; a removed
    /// service's may linger).
    fn reconcile_members(&mut self) {
        let mut want: BTreeMap<MemberKey, u32> = BTreeMap::new();
        for (key, f) in &self.frontends {
            if exposed(key, f.flags) {
                for k in f.backend_keys() {
                    if let Some(e) = self.backends.get(&k) {
                        want.insert(codec::member_key(f.rev_nat_id, &k.addr), e.id);
                    }
                }
            }
        }
        let have: BTreeMap<MemberKey, u32> = self.maps.members().into_iter().collect();
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            let _ = self.del_member(k);
        }
        for (k, id) in want.iter().filter(|(k, id)| have.get(k) != Some(id)) {
            if let Err(e) = self.put_member(*k, *id) {
                warn!(error = %e, "writing a DSR membership");
            }
        }
    }

    /// A frontend at `ip` stopped (`was`) or started (`is`) being a
    /// ClusterIP: the address's mark follows the first and the last one. A
    /// failed write is logged; the safety sweep writes it again.
    fn cluster_ip_refs(&mut self, ip: IpAddr, was: bool, is: bool) {
        match (was, is) {
            (false, true) => {
                let n = self.cluster_ips.entry(ip).or_default();
                *n += 1;
                if *n == 1 {
                    self.marks_of[Family::of(&ip).index()] += 1;
                    self.mark_cluster_ip(ip);
                }
            }
            (true, false) => {
                let Some(n) = self.cluster_ips.get_mut(&ip) else {
                    return;
                };
                *n -= 1;
                if *n == 0 {
                    self.cluster_ips.remove(&ip);
                    self.marks_of[Family::of(&ip).index()] -= 1;
                    self.unmark_cluster_ip(ip);
                }
            }
            _ => {}
        }
    }

    fn mark_cluster_ip(&mut self, ip: IpAddr) {
        if let Err(e) = self.put_service(codec::cluster_ip_key(ip), codec::cluster_ip_value()) {
            warn!(cluster_ip = %ip, error = %e, "marking a ClusterIP");
        }
    }

    fn unmark_cluster_ip(&mut self, ip: IpAddr) {
        if let Err(e) = self.del_service(&codec::cluster_ip_key(ip)) {
            warn!(cluster_ip = %ip, error = %e, "removing a ClusterIP mark");
        }
    }

    /// Makes the kernel's ClusterIP marks (`have`) those of the programmed
    /// frontends.
    fn reconcile_cluster_ips(&mut self, have: &BTreeSet<IpAddr>) {
        let want: BTreeSet<IpAddr> = self.cluster_ips.keys().copied().collect();
        for &ip in have.difference(&want) {
            if let Err(e) = self.del_service(&codec::cluster_ip_key(ip)) {
                warn!(cluster_ip = %ip, error = %e, "removing a stale ClusterIP mark");
            }
        }
        for &ip in want.difference(have) {
            self.mark_cluster_ip(ip);
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
            self.writes += 1;
            let _ = self.maps.del_affinity(&k);
        }
    }

    // Every write goes through these, so `writes` counts them all.

    fn put_service(&mut self, k: SvcKey, v: SvcValue) -> Result<()> {
        self.writes += 1;
        self.maps.put_service(k, v)
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<()> {
        self.writes += 1;
        self.maps.del_service(k)
    }
    fn put_backend(&mut self, id: u32, v: BackendValue) -> Result<()> {
        self.writes += 1;
        self.maps.put_backend(id, v)
    }
    fn del_backend(&mut self, id: u32, family: Family) -> Result<()> {
        self.writes += 1;
        self.maps.del_backend(id, family)
    }
    fn put_rev_nat(&mut self, id: u16, v: RevNatValue) -> Result<()> {
        self.writes += 1;
        self.maps.put_rev_nat(id, v)
    }
    fn del_rev_nat(&mut self, id: u16, family: Family) -> Result<()> {
        self.writes += 1;
        self.maps.del_rev_nat(id, family)
    }
    fn put_src_range(&mut self, rev: u16, cidr: Cidr) -> Result<()> {
        self.writes += 1;
        self.maps.put_src_range(rev, cidr)
    }
    fn del_src_range(&mut self, rev: u16, cidr: Cidr) -> Result<()> {
        self.writes += 1;
        self.maps.del_src_range(rev, cidr)
    }
    fn put_member(&mut self, k: MemberKey, id: u32) -> Result<()> {
        self.writes += 1;
        self.maps.put_member(k, id)
    }
    fn del_member(&mut self, k: &MemberKey) -> Result<()> {
        self.writes += 1;
        self.maps.del_member(k)
    }
    fn put_maglev(&mut self, key: u32, id: u32) -> Result<()> {
        self.writes += 1;
        self.maps.put_maglev(key, id)
    }
    fn del_maglev(&mut self, key: u32) -> Result<()> {
        self.writes += 1;
        self.maps.del_maglev(key)
    }
}

/// The frontend is served on the node's devices (the external scope of a
/// NodePort, externalIP or LoadBalancer): its backends are the destinations
/// a DSR option naming it may reach (`ferry_memb4_v1`, `ferry_memb6_v1`).
fn exposed(key: &FrontendKey, flags: u16) -> bool {
    key.scope == Scope::External
        && flags & (svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER) != 0
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
    if f.drop_no_local {
        flags |= svc_flags::DROP_NO_LOCAL;
    }
    let external = key.scope == Scope::External && f.kind != FrontendKind::ClusterIP;
    let source_ranges: BTreeSet<Cidr> = if external {
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
