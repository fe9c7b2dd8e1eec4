//! The frontends of every Service, programmed per Service with a status for
//! each: the part of the datapath's owner that decides what is in the
//! service maps. Generic over the maps, so the control loop's tests run it
//! against the in-memory model.
//!
//! A Service is synced as a whole (its wanted frontends replace what it had)
//! and a batch of Services at once: first every wanted frontend is written,
//! then what the batch's Services no longer want is removed, so an address
//! that moves from one Service to another (a conflict settled) is rewritten
//! in place and never missing. A frontend that fails keeps its old kernel
//! state and is retried with exponential backoff; its error is its status.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{
    lbmaps::LbMaps,
    programmer::{Outcome, Programmer},
    snapshot::KernelState,
};
use crate::{
    error::Error,
    model::{BackendAddr, Frontend, FrontendKey, ServiceName},
};

/// First retry of a failed frontend; doubled on each failure up to the cap.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// A frontend that could not be programmed.
#[derive(Clone, Debug)]
pub struct Failure {
    pub service: ServiceName,
    pub frontend: Frontend,
    pub error: String,
    /// `Error::reason`, the metric label.
    pub reason: &'static str,
    pub attempts: u32,
    pub next_retry: Instant,
}

/// A Service's wanted frontends, after conflicts were settled.
pub type ServiceFrontends = BTreeMap<FrontendKey, Frontend>;

/// A full sync in progress (see [`ServiceTable::full_begin`]).
#[derive(Debug, Default)]
pub struct FullSync {
    wanted: HashSet<FrontendKey>,
    out: SyncOutcome,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Frontends that failed in this sync: (frontend, service, error).
    pub failed: Vec<(FrontendKey, ServiceName, Error)>,
    /// UDP backends no frontend uses any more.
    pub gone_udp: Vec<BackendAddr>,
}

impl SyncOutcome {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }

    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Added => self.added += 1,
            Outcome::Updated => self.updated += 1,
            Outcome::Unchanged => self.unchanged += 1,
        }
    }
}

/// The status of one frontend, for `ferry services`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendStatus {
    pub frontend: String,
    pub service: String,
    /// The Service port's name (None when unnamed).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port_name: Option<String>,
    /// "programmed" or "error".
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempts: Option<u32>,
    /// Seconds until the next attempt.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_in_secs: Option<u64>,
}

pub struct ServiceTable<M: LbMaps> {
    prog: Programmer<M>,
    /// The frontends each Service is responsible for (programmed or failed).
    /// (A Vec: a Service has a few frontends.)
    of_service: HashMap<ServiceName, Vec<FrontendKey>>,
    owner: HashMap<FrontendKey, ServiceName>,
    /// The Service port name of each named frontend (status only).
    port_names: HashMap<FrontendKey, String>,
    failed: BTreeMap<FrontendKey, Failure>,
}

impl<M: LbMaps> ServiceTable<M> {
    pub fn new(prog: Programmer<M>) -> Self {
        ServiceTable {
            prog,
            of_service: HashMap::new(),
            owner: HashMap::new(),
            port_names: HashMap::new(),
            failed: BTreeMap::new(),
        }
    }

    pub fn programmer(&self) -> &Programmer<M> {
        &self.prog
    }

    pub fn programmer_mut(&mut self) -> &mut Programmer<M> {
        &mut self.prog
    }

    pub fn failures(&self) -> impl Iterator<Item = (&FrontendKey, &Failure)> {
        self.failed.iter()
    }

    /// Syncs a batch of Services: each one's wanted frontends replace what
    /// it had. A Service with no frontends (deleted, not proxied, every
    /// address lost to a conflict) gives them all up.
    pub fn sync(
        &mut self,
        batch: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) -> SyncOutcome {
        let mut out = SyncOutcome::default();
        let wanted: HashMap<FrontendKey, ServiceName> = batch
            .iter()
            .flat_map(|(svc, fes)| fes.keys().map(move |k| (*k, svc.clone())))
            .collect();
        for (svc, fes) in &batch {
            for (key, f) in fes {
                self.owner.insert(*key, svc.clone());
                self.name_port(key, f);
                self.upsert(key, svc, f, now, &mut out);
            }
        }
        for (svc, fes) in batch {
            let old = self.of_service.remove(&svc).unwrap_or_default();
            for key in old.iter().filter(|k| !fes.contains_key(k)) {
                if wanted.contains_key(key) || self.owner.get(key) != Some(&svc) {
                    continue; // another Service of the batch took it over
                }
                self.remove(key, &svc, &mut out);
            }
            if !fes.is_empty() {
                self.of_service.insert(svc, fes.into_keys().collect());
            }
        }
        out.gone_udp = self.prog.take_gone_udp();
        out
    }

    /// Remembers `key`'s Service port name (a named port only: most are
    /// unnamed or share few names, and the map is for the status).
    fn name_port(&mut self, key: &FrontendKey, f: &Frontend) {
        if f.port_name.is_empty() {
            self.port_names.remove(key);
        } else if self.port_names.get(key) != Some(&f.port_name) {
            self.port_names.insert(*key, f.port_name.clone());
        }
    }

    fn upsert(
        &mut self,
        key: &FrontendKey,
        svc: &ServiceName,
        f: &Frontend,
        now: Instant,
        out: &mut SyncOutcome,
    ) {
        match self.prog.upsert(key, f) {
            Ok(o) => {
                self.failed.remove(key);
                out.count(o);
            }
            Err(e) => {
                let attempts = self
                    .failed
                    .get(key)
                    .filter(|old| old.service == *svc)
                    .map_or(1, |old| old.attempts + 1);
                self.failed.insert(
                    *key,
                    Failure {
                        service: svc.clone(),
                        frontend: f.clone(),
                        error: e.to_string(),
                        reason: e.reason(),
                        attempts,
                        next_retry: now + backoff(attempts),
                    },
                );
                out.failed.push((*key, svc.clone(), e));
            }
        }
    }

    fn remove(&mut self, key: &FrontendKey, svc: &ServiceName, out: &mut SyncOutcome) {
        self.failed.remove(key);
        match self.prog.remove(key) {
            Ok(removed) => {
                self.owner.remove(key);
                self.port_names.remove(key);
                if removed {
                    out.removed += 1;
                }
            }
            Err(e) => {
                // Still in the kernel: kept as the Service's, so the next
                // sync of it (or the full sweep) tries again.
                let list = self.of_service.entry(svc.clone()).or_default();
                if !list.contains(key) {
                    list.push(*key);
                }
                out.failed.push((*key, svc.clone(), e));
            }
        }
    }

    /// Starts the backoff of `keys` (failed in the sync that just ended) at
    /// `now`: a failure's retry waits its full backoff after the sync that
    /// reported it, however long that sync took after the attempt.
    pub fn retry_from<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a FrontendKey>,
        now: Instant,
    ) {
        for key in keys {
            if let Some(f) = self.failed.get_mut(key) {
                f.next_retry = f.next_retry.max(now + backoff(f.attempts));
            }
        }
    }

    /// When the next failed frontend is due for a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failed.values().map(|f| f.next_retry).min()
    }

    /// Retries the failed frontends that are due.
    pub fn retry_due(&mut self, now: Instant) -> SyncOutcome {
        let mut out = SyncOutcome::default();
        let due: Vec<(FrontendKey, ServiceName, Frontend)> = self
            .failed
            .iter()
            .filter(|(_, f)| f.next_retry <= now)
            .map(|(k, f)| (*k, f.service.clone(), f.frontend.clone()))
            .collect();
        for (key, svc, f) in due {
            self.upsert(&key, &svc, &f, now, &mut out);
        }
        out.gone_udp = self.prog.take_gone_udp();
        out
    }

    /// Starts making the kernel exactly the frontends the next
    /// [`Self::full_chunk`]s bring: at start-up over what a previous agent
    /// left, and as the periodic safety sweep, which also rewrites any
    /// frontend whose kernel content drifted from what was programmed
    /// (kube-proxy's full sync). In chunks, so that the whole cluster's
    /// frontends are never held at once.
    pub fn full_begin(&mut self) -> FullSync {
        let repaired = self.prog.verify();
        if repaired > 0 {
            tracing::warn!(
                frontends = repaired,
                "full sync: kernel state drifted; rewriting"
            );
        }
        self.of_service.clear();
        self.owner.clear();
        self.port_names.clear();
        FullSync::default()
    }

    /// Programs one chunk of Services of a full sync.
    pub fn full_chunk(
        &mut self,
        full: &mut FullSync,
        services: Vec<(ServiceName, ServiceFrontends)>,
        now: Instant,
    ) {
        for (svc, fes) in services {
            for (key, f) in &fes {
                full.wanted.insert(*key);
                self.owner.insert(*key, svc.clone());
                self.name_port(key, f);
                self.upsert(key, &svc, f, now, &mut full.out);
            }
            if !fes.is_empty() {
                self.of_service.insert(svc, fes.into_keys().collect());
            }
        }
    }

    /// Ends a full sync: what no Service wanted leaves the kernel.
    pub fn full_end(&mut self, mut full: FullSync) -> SyncOutcome {
        let gone: Vec<FrontendKey> = self
            .prog
            .programmed()
            .filter(|k| !full.wanted.contains(k))
            .copied()
            .collect();
        let adopted = ServiceName {
            namespace: String::new(),
            name: String::from("(adopted)"),
        };
        for key in gone {
            self.remove(&key, &adopted, &mut full.out);
        }
        self.failed.retain(|k, _| full.wanted.contains(k));
        full.out.gone_udp = self.prog.take_gone_udp();
        full.out
    }

    /// Every frontend the table is responsible for, with its status.
    pub fn status(&self, now: Instant) -> Vec<FrontendStatus> {
        let mut out: Vec<FrontendStatus> = self
            .owner
            .iter()
            .map(|(key, svc)| match self.failed.get(key) {
                Some(f) => FrontendStatus {
                    frontend: key.to_string(),
                    service: svc.to_string(),
                    port_name: self.port_names.get(key).cloned(),
                    status: "error".into(),
                    error: Some(f.error.clone()),
                    reason: Some(f.reason.into()),
                    attempts: Some(f.attempts),
                    retry_in_secs: Some(f.next_retry.saturating_duration_since(now).as_secs()),
                },
                None => FrontendStatus {
                    frontend: key.to_string(),
                    service: svc.to_string(),
                    port_name: self.port_names.get(key).cloned(),
                    status: "programmed".into(),
                    error: None,
                    reason: None,
                    attempts: None,
                    retry_in_secs: None,
                },
            })
            .collect();
        out.sort_by(|a, b| a.frontend.cmp(&b.frontend));
        out
    }

    /// A read of the kernel, for tools and tests.
    pub fn kernel_state(&self) -> KernelState {
        KernelState::read(self.prog.maps())
    }
}

/// Exponential backoff after `attempts` failures.
pub fn backoff(attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    (RETRY_FIRST * factor).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), RETRY_MAX);
    }
}
