//! Who owns an address: two Services may claim the same address:port/proto
//! (an externalIP equal to another's ClusterIP, a LoadBalancer IP shared by
//! mistake). One claim wins and is programmed; the others are reported and
//! wait: when the owner lets go, the next claimant takes over, and the
//! control loop translates it again.
//!
//! A ClusterIP always wins: the API server allocates those, so no tenant can
//! take the cluster DNS address with an externalIP. Otherwise the older
//! Service wins (its creationTimestamp), so a new Service cannot capture an
//! address another already serves; names break ties, so the outcome never
//! depends on the order events arrived in.

use std::{cmp::Ordering, collections::HashMap};

use super::{
    AddrKey, Diagnostic, FrontendKind, ServiceName, Severity, objects::ServiceObj, translate::Group,
};

/// One Service's claim on one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub kind: FrontendKind,
    pub created: Option<i64>,
    pub service: ServiceName,
}

impl Claim {
    pub fn of(svc: &ServiceObj, kind: FrontendKind) -> Claim {
        Claim {
            kind,
            created: svc.created,
            service: svc.name.clone(),
        }
    }

    fn rank(&self) -> (bool, bool, i64) {
        (
            self.kind != FrontendKind::ClusterIP,
            self.created.is_none(),
            self.created.unwrap_or(0),
        )
    }
}

impl Ord for Claim {
    /// The winner sorts first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| self.service.cmp(&other.service))
            .then_with(|| self.kind.cmp(&other.kind))
    }
}

impl PartialOrd for Claim {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An owner change of one address, for the loop to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerChange {
    pub addr: AddrKey,
    pub old: Option<ServiceName>,
    pub new: Option<ServiceName>,
}

/// The claims on every address, and each Service's claims.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Sorted, the owner first (a Vec: an address has one claim, rarely more).
    by_addr: HashMap<AddrKey, Vec<Claim>>,
    of_service: HashMap<ServiceName, Vec<(AddrKey, FrontendKind)>>,
}

impl Claims {
    /// Adds one claim (a full translation builds the index this way).
    pub fn claim(&mut self, addr: AddrKey, claim: Claim) {
        super::push_short(
            self.of_service.entry(claim.service.clone()).or_default(),
            (addr, claim.kind),
        );
        let list = self.by_addr.entry(addr).or_default();
        if let Err(at) = list.binary_search(&claim) {
            super::insert_short(list, at, claim);
        }
    }

    /// Replaces every claim of `svc` by those of `groups` (none when the
    /// Service is gone or not proxied); returns the addresses whose owner
    /// changed.
    pub fn set_service(
        &mut self,
        name: &ServiceName,
        created: Option<i64>,
        groups: &[Group],
    ) -> Vec<OwnerChange> {
        let mut touched: Vec<(AddrKey, Option<ServiceName>)> = Vec::new();
        let note = |this: &Self, addr: AddrKey, touched: &mut Vec<_>| {
            if !touched.iter().any(|(a, _)| *a == addr) {
                touched.push((addr, this.owner(&addr).map(|c| c.service.clone())));
            }
        };
        for (addr, kind) in self.of_service.remove(name).unwrap_or_default() {
            note(self, addr, &mut touched);
            if let Some(set) = self.by_addr.get_mut(&addr) {
                set.retain(|c| !(c.service == *name && c.kind == kind));
                if set.is_empty() {
                    self.by_addr.remove(&addr);
                }
            }
        }
        for g in groups {
            note(self, g.addr, &mut touched);
            self.claim(
                g.addr,
                Claim {
                    kind: g.kind(),
                    created,
                    service: name.clone(),
                },
            );
        }
        touched
            .into_iter()
            .filter_map(|(addr, old)| {
                let new = self.owner(&addr).map(|c| c.service.clone());
                (old != new).then_some(OwnerChange { addr, old, new })
            })
            .collect()
    }

    /// Every Service claiming `addr`, the owner first: when the owner
    /// changes, each one's conflict report names another owner.
    pub fn claimants(&self, addr: &AddrKey) -> impl Iterator<Item = &ServiceName> {
        self.by_addr
            .get(addr)
            .into_iter()
            .flatten()
            .map(|c| &c.service)
    }

    pub fn owner(&self, addr: &AddrKey) -> Option<&Claim> {
        self.by_addr.get(addr).and_then(|s| s.first())
    }

    /// True when `group` of `service` is the one programmed at its address.
    pub fn owns(&self, service: &ServiceName, group: &Group) -> bool {
        self.owner(&group.addr)
            .is_some_and(|c| &c.service == service && c.kind == group.kind())
    }

    /// One warning per group of `service` that lost its address.
    pub fn conflicts_of(&self, service: &ServiceName, groups: &[Group]) -> Vec<Diagnostic> {
        groups
            .iter()
            .filter(|g| !self.owns(service, g))
            .filter_map(|g| {
                let owner = self.owner(&g.addr)?;
                let whom = if &owner.service == service {
                    format!("its own {:?} frontend", owner.kind)
                } else {
                    format!("the {:?} frontend of service {}", owner.kind, owner.service)
                };
                Some(Diagnostic {
                    kind: "Service",
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                    reason: format!(
                        "{:?} frontend {} conflicts with {whom}: skipped",
                        g.kind(),
                        g.addr
                    ),
                    severity: Severity::Warning,
                })
            })
            .collect()
    }

    /// Addresses claimed (owned or not).
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;

    fn name(n: &str) -> ServiceName {
        ServiceName {
            namespace: "ns".into(),
            name: n.into(),
        }
    }

    fn addr() -> AddrKey {
        AddrKey {
            ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 53,
            proto: Protocol::Udp,
        }
    }

    fn claim(kind: FrontendKind, created: Option<i64>, n: &str) -> Claim {
        Claim {
            kind,
            created,
            service: name(n),
        }
    }

    #[test]
    fn cluster_ip_beats_an_older_external_ip_and_age_beats_names() {
        let mut c = Claims::default();
        c.claim(addr(), claim(FrontendKind::ExternalIP, Some(1), "aaa"));
        c.claim(
            addr(),
            claim(FrontendKind::ClusterIP, Some(100), "kube-dns"),
        );
        assert_eq!(c.owner(&addr()).unwrap().service, name("kube-dns"));

        let mut c = Claims::default();
        c.claim(addr(), claim(FrontendKind::ExternalIP, Some(50), "aaa"));
        c.claim(addr(), claim(FrontendKind::LoadBalancer, Some(10), "zzz"));
        c.claim(addr(), claim(FrontendKind::LoadBalancer, None, "a"));
        assert_eq!(c.owner(&addr()).unwrap().service, name("zzz"));
    }
}
