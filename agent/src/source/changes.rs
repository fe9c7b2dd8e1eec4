//! What changed between two snapshots, for kube-proxy's change counters
//! (`kubeproxy_sync_proxy_rules_{service,endpoint}_changes_total`) and its network
//! programming latency (`kubeproxy_network_programming_duration_seconds`), which runs from
//! an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` to the kernel.
//!
//! Computed by comparing snapshots rather than counting watch events, so every source
//! (manifests or the API) is measured the same way and a re-list counts only real changes.

use std::{collections::BTreeMap, time::SystemTime};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::Inputs;

/// Set by the EndpointSlice controller: when the change that produced this slice happened
/// (a pod became ready, a service changed...).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The difference between two snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services added, removed or modified.
    pub services: u64,
    /// EndpointSlices added, removed or modified.
    pub endpoint_slices: u64,
    /// Trigger times of the added or modified slices, not before the agent started: older
    /// ones would measure the agent's own start-up, not the network programming (kube-proxy
    /// ignores them likewise).
    pub trigger_times: Vec<SystemTime>,
}

impl Changes {
    /// From `old` (None: nothing yet, so everything is new) to `new`.
    pub fn between(old: Option<&Inputs>, new: &Inputs, not_before: SystemTime) -> Changes {
        let empty = Inputs::default();
        let old = old.unwrap_or(&empty);
        let mut trigger_times = Vec::new();
        let endpoint_slices = count(&old.slices, &new.slices, |slice| {
            if let Some(t) = trigger_time(slice).filter(|&t| t >= not_before) {
                trigger_times.push(t);
            }
        });
        Changes {
            services: count(&old.services, &new.services, |_| {}),
            endpoint_slices,
            trigger_times,
        }
    }
}

/// Objects added, removed or modified; `changed` sees the added and modified ones.
fn count<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    mut changed: impl FnMut(&V),
) -> u64 {
    let mut n = 0;
    for (key, obj) in new {
        if old.get(key) != Some(obj) {
            changed(obj);
            n += 1;
        }
    }
    n + old.keys().filter(|k| !new.contains_key(k)).count() as u64
}

/// The slice's trigger time, if it has a valid one (RFC 3339, as the controller writes it).
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let raw = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    raw.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;

    fn key(name: &str) -> (String, String) {
        ("default".into(), name.into())
    }

    fn slice(name: &str, trigger: Option<&str>) -> EndpointSlice {
        let annotations =
            trigger.map(|t| [(TRIGGER_TIME_ANNOTATION.to_owned(), t.to_owned())].into());
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn service(name: &str, rv: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const T0: &str = "2026-11-25T23:40:00Z";
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_650_000)
    }

    #[test]
    fn parses_the_controllers_format_with_and_without_fractions() {
        assert_eq!(trigger_time(&slice("a", Some(T0))), Some(t0()));
        let nanos = slice("a", Some("2026-11-25T23:40:00.25Z"));
        assert_eq!(
            trigger_time(&nanos),
            Some(t0() + Duration::from_millis(250))
        );
        assert_eq!(trigger_time(&slice("a", Some("yesterday"))), None);
        assert_eq!(trigger_time(&slice("a", None)), None);
    }

    #[test]
    fn counts_added_removed_and_modified_objects_only() {
        let mut old = Inputs::default();
        old.services.insert(key("kept"), service("kept", "1"));
        old.services.insert(key("gone"), service("gone", "1"));
        old.services.insert(key("edited"), service("edited", "1"));
        old.slices.insert(key("s1"), slice("s1", None));
        let mut new = old.clone();
        new.services.remove(&key("gone"));
        new.services.insert(key("edited"), service("edited", "2"));
        new.services.insert(key("new"), service("new", "1"));
        new.slices.insert(key("s2"), slice("s2", Some(T0)));

        let c = Changes::between(Some(&old), &new, t0());
        assert_eq!((c.services, c.endpoint_slices), (3, 1));
        assert_eq!(c.trigger_times, [t0()]);
        assert_eq!(Changes::between(Some(&new), &new, t0()), Changes::default());

        let first = Changes::between(None, &new, t0());
        assert_eq!(
            (first.services, first.endpoint_slices),
            (3, 2),
            "all new at first"
        );
    }

    #[test]
    fn ignores_trigger_times_before_the_start() {
        let mut new = Inputs::default();
        new.slices.insert(key("s"), slice("s", Some(T0)));
        let c = Changes::between(None, &new, t0() + Duration::from_secs(1));
        assert_eq!(c.endpoint_slices, 1);
        assert!(c.trigger_times.is_empty());
    }
}
