//! Prometheus text exposition: kube-proxy's metric names where they apply,
//! then ferry's own (`ferry_*`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agent_common::maps as names;

use crate::datapath::{LinkReport, ct_gc::Fill};

/// kube-proxy's buckets for sync durations: exponential from 1 ms.
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

/// kube-proxy's buckets for network programming latency: 0.25 s and 0.5 s, then every
/// second up to a minute, every 5 s up to 2 min, every 30 s up to 5 min.
fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| f64::from(60 + 5 * i)));
    b.extend((0..7).map(|i| f64::from(120 + 30 * i)));
    b
}

#[derive(Clone, Debug)]
struct Histogram {
    bounds: Vec<f64>,
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        Histogram {
            buckets: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, le) in self.buckets.iter_mut().zip(&self.bounds) {
            if v <= *le {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(&self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {b}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Sizes of what is programmed, set after every sync.
#[derive(Clone, Copy, Debug, Default)]
pub struct Programmed {
    pub frontends: usize,
    pub backends: usize,
    /// Per family ([`crate::model::Family::index`]): each has its maps.
    pub service_entries: [u32; 2],
    pub backends_of: [usize; 2],
    pub rev_nat: [usize; 2],
    /// Map updates and deletes the programmer issued since the agent
    /// started (a restart over an unchanged cluster issues none).
    pub map_writes: u64,
}

struct Inner {
    sync: Histogram,
    network_programming: Histogram,
    last_sync: Option<SystemTime>,
    service_changes: u64,
    endpoint_changes: u64,
    errors: BTreeMap<&'static str, u64>,
    programmed: Programmed,
    /// The conntrack maps as last measured (at each scrape), by name.
    conntrack: Vec<(&'static str, Fill)>,
    /// Links found changed by someone else and repaired, by (link, fault).
    link_repairs: BTreeMap<(String, &'static str), u64>,
    /// Links the last check could not repair.
    links_broken: usize,
    /// Service ports whose Local policy drops (internal, external).
    no_local_endpoints: (usize, usize),
    /// What the datapath can do on this node (`ferry_feature_enabled`).
    features: Vec<(&'static str, bool)>,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Arc::new(Mutex::new(Inner {
                sync: Histogram::new(SYNC_BUCKETS.to_vec()),
                network_programming: Histogram::new(network_programming_buckets()),
                last_sync: None,
                service_changes: 0,
                endpoint_changes: 0,
                errors: BTreeMap::new(),
                programmed: Programmed::default(),
                conntrack: Vec::new(),
                link_repairs: BTreeMap::new(),
                links_broken: 0,
                no_local_endpoints: (0, 0),
                features: Vec::new(),
            })),
        }
    }
}

impl Metrics {
    /// The conntrack maps' fill, measured just before a scrape is rendered
    /// (`datapath::ct_gc::fill`): a map can fill up between two collections.
    pub fn conntrack(&self, fills: &[(&'static str, Fill)]) {
        self.inner.lock().expect("metrics lock").conntrack = fills.to_vec();
    }

    pub fn sync_done(&self, took: Duration, programmed: Programmed, errors: &[&'static str]) {
        let mut m = self.inner.lock().expect("metrics lock");
        m.sync.observe(took.as_secs_f64());
        m.last_sync = Some(SystemTime::now());
        m.programmed = programmed;
        for r in errors {
            *m.errors.entry(r).or_default() += 1;
        }
    }

    /// A check of the links finished.
    pub fn links_verified(&self, report: &LinkReport) {
        let mut m = self.inner.lock().expect("metrics lock");
        for f in report.repaired() {
            *m.link_repairs
                .entry((f.link.clone(), f.fault.as_str()))
                .or_default() += 1;
        }
        m.links_broken = report.broken().count();
    }

    /// Service ports with a Local traffic policy, endpoints elsewhere and none on this node.
    pub fn no_local_endpoints(&self, internal: usize, external: usize) {
        self.inner.lock().expect("metrics lock").no_local_endpoints = (internal, external);
    }

    /// What the datapath can do here (set once it is loaded): a feature off is a warning in
    /// the log at start and a 0 here, for alerts.
    pub fn features(&self, features: &[(&'static str, bool)]) {
        self.inner.lock().expect("metrics lock").features = features.to_vec();
    }

    pub fn changes(&self, services: u64, endpoint_slices: u64) {
        let mut m = self.inner.lock().expect("metrics lock");
        m.service_changes += services;
        m.endpoint_changes += endpoint_slices;
    }

    /// Time from an endpoint change (its trigger time) to the kernel.
    pub fn network_programming(&self, took: Duration) {
        self.inner
            .lock()
            .expect("metrics lock")
            .network_programming
            .observe(took.as_secs_f64());
    }

    /// The changes triggered at these times are in the kernel now. A trigger time in the
    /// future (clock skew between the control plane and this node) counts as zero.
    pub fn network_programmed(&self, trigger_times: &[SystemTime]) {
        let now = SystemTime::now();
        for t in trigger_times {
            self.network_programming(now.duration_since(*t).unwrap_or_default());
        }
    }

    /// The exposition; `datapath` holds the kernel's event counters.
    pub fn render(&self, datapath: &[(&'static str, u64)]) -> String {
        let m = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        m.sync.render(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        m.network_programming.render(
            &mut out,
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
        );
        let last = m
            .last_sync
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        gauge(
            &mut out,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last,
        );
        counter(
            &mut out,
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Cumulative proxy rules Service changes",
            m.service_changes,
        );
        counter(
            &mut out,
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes,
        );
        let name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
        let _ = writeln!(
            out,
            "# HELP {name} Number of services with a Local traffic policy and no endpoints\n# TYPE {name} gauge"
        );
        let (internal, external) = m.no_local_endpoints;
        for (policy, n) in [("internal", internal), ("external", external)] {
            let _ = writeln!(out, "{name}{{traffic_policy=\"{policy}\"}} {n}");
        }

        let p = m.programmed;
        counter(
            &mut out,
            "ferry_map_writes_total",
            "Service, backend and reverse-NAT map updates and deletes since the agent started",
            p.map_writes,
        );
        gauge(
            &mut out,
            "ferry_frontends_programmed",
            "Service frontends (address, port, protocol, scope) in the kernel",
            p.frontends as f64,
        );
        gauge(
            &mut out,
            "ferry_backends_programmed",
            "Distinct backends in the kernel",
            p.backends as f64,
        );
        let _ = writeln!(
            out,
            "# HELP ferry_map_entries Entries ferry keeps in each map\n# TYPE ferry_map_entries gauge"
        );
        let mut maps = vec![
            (
                names::SERVICES_V4,
                f64::from(p.service_entries[0]),
                names::SERVICES_V4_MAX,
            ),
            (
                names::BACKENDS_V4,
                p.backends_of[0] as f64,
                names::BACKENDS_V4_MAX,
            ),
            (
                names::REV_NAT_V4,
                p.rev_nat[0] as f64,
                names::REV_NAT_V4_MAX,
            ),
            (
                names::SERVICES_V6,
                f64::from(p.service_entries[1]),
                names::SERVICES_V6_MAX,
            ),
            (
                names::BACKENDS_V6,
                p.backends_of[1] as f64,
                names::BACKENDS_V6_MAX,
            ),
            (
                names::REV_NAT_V6,
                p.rev_nat[1] as f64,
                names::REV_NAT_V6_MAX,
            ),
        ];
        for &(map, ct) in &m.conntrack {
            maps.push((map, ct.entries as f64, ct.capacity));
        }
        for &(map, n, _) in &maps {
            let _ = writeln!(out, "ferry_map_entries{{map=\"{map}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ferry_map_fill_ratio Entries over capacity\n# TYPE ferry_map_fill_ratio gauge"
        );
        for &(map, n, cap) in &maps {
            let _ = writeln!(
                out,
                "ferry_map_fill_ratio{{map=\"{map}\"}} {}",
                n / f64::from(cap)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_programming_errors_total Failures to program the kernel, by reason\n# TYPE ferry_programming_errors_total counter"
        );
        for (reason, n) in &m.errors {
            let _ = writeln!(
                out,
                "ferry_programming_errors_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_link_repairs_total Links of ferry's that another process detached, unpinned or put another program in, repaired\n# TYPE ferry_link_repairs_total counter"
        );
        for ((link, fault), n) in &m.link_repairs {
            let _ = writeln!(
                out,
                "ferry_link_repairs_total{{link=\"{link}\",fault=\"{fault}\"}} {n}"
            );
        }
        gauge(
            &mut out,
            "ferry_links_broken",
            "Links of ferry's found changed and not repaired at the last check",
            m.links_broken as f64,
        );
        let _ = writeln!(
            out,
            "# HELP ferry_datapath_events_total Events counted by the kernel programs\n# TYPE ferry_datapath_events_total counter"
        );
        for (event, n) in datapath {
            let _ = writeln!(out, "ferry_datapath_events_total{{event=\"{event}\"}} {n}");
        }
        // The same counters by drop reason (agent_common::drop): one family
        // answers "why were packets dropped" without knowing counter names.
        let _ = writeln!(
            out,
            "# HELP ferry_drops_total Packets the kernel programs dropped, by reason\n# TYPE ferry_drops_total counter"
        );
        for reason in agent_common::drop::DropReason::ALL {
            let counter = reason.counter().name();
            let n = datapath
                .iter()
                .find(|(event, _)| *event == counter)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "ferry_drops_total{{reason=\"{}\"}} {n}", reason.name());
        }
        let _ = writeln!(
            out,
            "# HELP ferry_feature_enabled Datapath features this node's kernel, object and privileges allow (1) or not (0)\n# TYPE ferry_feature_enabled gauge"
        );
        for (feature, on) in &m.features {
            let _ = writeln!(
                out,
                "ferry_feature_enabled{{feature=\"{feature}\"}} {}",
                u8::from(*on)
            );
        }
        super::process_metrics::render(&mut out);
        out
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kube_proxy_names_and_buckets() {
        let m = Metrics::default();
        m.sync_done(
            Duration::from_millis(3),
            Programmed {
                frontends: 2,
                ..Default::default()
            },
            &["map_full"],
        );
        let text = m.render(&[("connect_translated", 7), ("ns_source_range_drop", 3)]);
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1")
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 0")
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 1"));
        assert!(text.contains("ferry_frontends_programmed 2"));
        assert!(text.contains("ferry_programming_errors_total{reason=\"map_full\"} 1"));
        assert!(text.contains("ferry_datapath_events_total{event=\"connect_translated\"} 7"));
        assert!(text.contains("ferry_drops_total{reason=\"source_range\"} 3"));
        assert!(text.contains("ferry_drops_total{reason=\"no_local_endpoint\"} 0"));
    }

    #[test]
    fn network_programming_uses_kube_proxys_buckets_and_trigger_times() {
        let b = network_programming_buckets();
        assert_eq!(b.len(), 2 + 59 + 12 + 7);
        assert_eq!(&b[..4], [0.25, 0.5, 1.0, 2.0]);
        assert_eq!(b[60], 59.0);
        assert_eq!(&b[61..63], [60.0, 65.0]);
        assert_eq!(&b[b.len() - 2..], [270.0, 300.0]);
        assert!(b.windows(2).all(|w| w[0] < w[1]));

        let m = Metrics::default();
        let now = SystemTime::now();
        m.network_programmed(&[
            now - Duration::from_millis(1_500),
            now + Duration::from_secs(5), // skewed clock: zero, not negative
        ]);
        let text = m.render(&[]);
        let name = "kubeproxy_network_programming_duration_seconds";
        assert!(
            text.contains(&format!("{name}_bucket{{le=\"0.25\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{name}_bucket{{le=\"1\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{name}_bucket{{le=\"2\"}} 2")),
            "{text}"
        );
        assert!(text.contains(&format!("{name}_count 2")), "{text}");
    }

    #[test]
    fn counts_link_repairs_by_link_and_fault_and_shows_broken_links() {
        use crate::datapath::links::{Fault, Finding};
        let m = Metrics::default();
        let report = LinkReport {
            checked: 6,
            findings: vec![
                Finding {
                    link: "ferry_link_conn4".into(),
                    fault: Fault::Detached,
                    repair: Ok(()),
                },
                Finding {
                    link: "ferry_link_tcin_eth0".into(),
                    fault: Fault::Unpinned,
                    repair: Err("EPERM".into()),
                },
            ],
        };
        m.links_verified(&report);
        m.links_verified(&report);
        let text = m.render(&[]);
        assert!(
            text.contains(
                "ferry_link_repairs_total{link=\"ferry_link_conn4\",fault=\"detached\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("ferry_link_tcin_eth0"), "{text}");
        assert!(text.contains("ferry_links_broken 1"), "{text}");
    }

    #[test]
    fn conntrack_fill_is_rendered_with_the_maps_own_capacity() {
        let m = Metrics::default();
        assert!(!m.render(&[]).contains("ferry_ct4_v1"), "not measured yet");
        m.conntrack(&[
            (
                names::CT_V4,
                Fill {
                    entries: 3_000,
                    capacity: 4_000,
                },
            ),
            (
                names::CT_V6,
                Fill {
                    entries: 1_000,
                    capacity: 4_000,
                },
            ),
        ]);
        let text = m.render(&[]);
        assert!(
            text.contains("ferry_map_entries{map=\"ferry_ct4_v1\"} 3000"),
            "{text}"
        );
        assert!(
            text.contains("ferry_map_fill_ratio{map=\"ferry_ct4_v1\"} 0.75"),
            "{text}"
        );
        assert!(
            text.contains("ferry_map_fill_ratio{map=\"ferry_ct6_v1\"} 0.25"),
            "{text}"
        );
    }

    #[test]
    fn features_are_rendered_one_gauge_each() {
        let m = Metrics::default();
        m.features(&[("north_south", true), ("udp_socket_destroy_pods", false)]);
        let text = m.render(&[]);
        assert!(
            text.contains("ferry_feature_enabled{feature=\"north_south\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_feature_enabled{feature=\"udp_socket_destroy_pods\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn no_local_endpoints_by_traffic_policy_as_kube_proxy_names_them() {
        let m = Metrics::default();
        m.no_local_endpoints(2, 1);
        let text = m.render(&[]);
        let name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
        assert!(text.contains(&format!("# TYPE {name} gauge")), "{text}");
        assert!(
            text.contains(&format!("{name}{{traffic_policy=\"internal\"}} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{name}{{traffic_policy=\"external\"}} 1")),
            "{text}"
        );
    }

    #[test]
    fn counts_service_and_endpoint_changes() {
        let m = Metrics::default();
        m.changes(3, 1);
        m.changes(0, 2);
        let text = m.render(&[]);
        assert!(text.contains("kubeproxy_sync_proxy_rules_service_changes_total 3"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 3"));
        assert!(text.contains("# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter"));
    }
}
