//! The proxy's own health, with kube-proxy's endpoints and meaning:
//! `/healthz` says whether this node forwards (the datapath is in place, the
//! loop keeps up with updates, and the node is eligible: not being deleted,
//! not tainted ToBeDeletedByClusterAutoscaler, KEP-3836), so load balancers
//! drain a node that does not; `/livez` says whether the control loop makes
//! progress, so kubelet restarts an agent that is stuck; `/readyz` says the
//! first full sync is in the kernel. "Keeps up" and "makes progress" are
//! measured against kube-proxy's healthz timeout, 2 × `--sync-period`. A
//! Service ferry cannot program is that Service's problem (a diagnostic, a
//! metric, an Event), never the node's.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hyper::StatusCode;

use super::http::Reply;
use crate::datapath::LinkReport;

/// kube-proxy's default `--sync-period`.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);

struct State {
    /// Oldest update received and not yet processed.
    pending_since: Option<Instant>,
    /// Wall-clock time of the last sync.
    last_synced: Option<SystemTime>,
    /// The loop's last turn (it turns at least every few seconds).
    heartbeat: Instant,
    /// Why the datapath does not forward, if it does not.
    datapath_problem: Option<String>,
    node_eligible: bool,
    ready: bool,
    /// Links the last check found changed and could not repair.
    links_broken: Vec<String>,
    /// Links found changed by someone else and repaired, since the start.
    link_repairs: u64,
    last_link_repair: Option<SystemTime>,
}

impl Default for State {
    fn default() -> Self {
        State {
            pending_since: None,
            last_synced: None,
            heartbeat: Instant::now(),
            datapath_problem: None,
            node_eligible: true,
            ready: false,
            links_broken: Vec::new(),
            link_repairs: 0,
            last_link_repair: None,
        }
    }
}

#[derive(Clone)]
pub struct ProxyHealth {
    state: Arc<Mutex<State>>,
    /// kube-proxy's healthz timeout: 2 × the sync period.
    stale_after: Duration,
}

impl ProxyHealth {
    /// Updates that wait, or a loop that does not turn, for 2 × `sync_period`
    /// fail /healthz and /livez (the loop turns at least every sync period).
    pub fn new(sync_period: Duration) -> Self {
        ProxyHealth {
            state: Arc::default(),
            stale_after: sync_period.saturating_mul(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An update arrived from the source.
    pub fn queued(&self) {
        self.lock().pending_since.get_or_insert_with(Instant::now);
    }

    /// The updates received so far are processed (programmed, or their
    /// failures recorded for retry).
    pub fn synced(&self) {
        let mut s = self.lock();
        s.pending_since = None;
        s.last_synced = Some(SystemTime::now());
        s.heartbeat = Instant::now();
    }

    /// The first full sync is in the kernel.
    pub fn set_ready(&self) {
        self.lock().ready = true;
    }

    /// The loop turned (called at least every few seconds).
    pub fn beat(&self) {
        self.lock().heartbeat = Instant::now();
    }

    /// None when the datapath forwards; else why not.
    pub fn set_datapath_problem(&self, problem: Option<String>) {
        self.lock().datapath_problem = problem;
    }

    /// A check of the links finished (see `datapath::links`): a link that
    /// another process changed and ferry could not repair means this node
    /// does not forward.
    pub fn links_verified(&self, report: &LinkReport) {
        let mut s = self.lock();
        s.links_broken = report
            .broken()
            .map(|f| {
                let why = f.repair.as_ref().err().map_or("", String::as_str);
                format!("{} {}: {why}", f.link, f.fault.as_str())
            })
            .collect();
        let repaired = report.repaired().count() as u64;
        if repaired > 0 {
            s.link_repairs += repaired;
            s.last_link_repair = Some(SystemTime::now());
        }
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// An update has waited too long, or the loop has not turned for too long.
    fn stuck(&self, s: &State) -> bool {
        s.pending_since
            .is_some_and(|t| t.elapsed() > self.stale_after)
            || s.heartbeat.elapsed() > self.stale_after
    }

    /// The loop makes progress.
    pub fn is_live(&self) -> bool {
        !self.stuck(&self.lock())
    }

    /// This node forwards (kube-proxy's /healthz).
    pub fn is_healthy(&self) -> bool {
        let s = self.lock();
        !self.stuck(&s)
            && s.datapath_problem.is_none()
            && s.links_broken.is_empty()
            && s.node_eligible
    }

    pub fn reply(&self, path: &str) -> Reply {
        match path {
            "/healthz" => {
                let (last, eligible, problem, links) = {
                    let s = self.lock();
                    let links = serde_json::json!({
                        "broken": s.links_broken,
                        "repairs": s.link_repairs,
                        "lastRepair": s.last_link_repair.map(rfc3339),
                    });
                    (
                        s.last_synced,
                        s.node_eligible,
                        s.datapath_problem.clone(),
                        links,
                    )
                };
                let mut body = serde_json::json!({
                    "lastUpdated": last.map(rfc3339),
                    "currentTime": rfc3339(SystemTime::now()),
                    "nodeEligible": eligible,
                    "links": links,
                });
                if let Some(p) = problem {
                    body["datapathProblem"] = p.into();
                }
                let code = if self.is_healthy() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Reply::json(code, body.to_string())
            }
            "/readyz" => {
                if self.is_ready() {
                    Reply::text(StatusCode::OK, "ok\n")
                } else {
                    Reply::text(StatusCode::SERVICE_UNAVAILABLE, "first sync not done\n")
                }
            }
            "/livez" => {
                if self.is_live() {
                    Reply::text(StatusCode::OK, "ok\n")
                } else {
                    Reply::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the control loop is stuck\n",
                    )
                }
            }
            _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// UTC RFC 3339 (kube-proxy's format: seconds, "Z").
pub fn rfc3339(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.0}"),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_650_000);
        assert_eq!(rfc3339(t), "2026-11-25T23:40:00Z");
        let t = t + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "2026-11-25T23:40:01Z");
    }

    #[test]
    fn ready_after_first_sync_and_healthy_while_fresh() {
        let h = ProxyHealth::new(DEFAULT_SYNC_PERIOD);
        assert!(!h.is_ready());
        assert_eq!(h.reply("/readyz").status, StatusCode::SERVICE_UNAVAILABLE);
        h.queued();
        assert!(h.is_healthy());
        h.synced();
        h.set_ready();
        assert_eq!(h.reply("/readyz").status, StatusCode::OK);
        assert_eq!(h.reply("/healthz").status, StatusCode::OK);
        assert_eq!(h.reply("/livez").status, StatusCode::OK);
    }

    #[test]
    fn a_stuck_loop_is_neither_healthy_nor_live() {
        let sync_period = Duration::from_secs(1);
        let now = Instant::now();
        let (Some(within), Some(long_ago)) = (
            now.checked_sub(sync_period + sync_period / 2),
            now.checked_sub(sync_period * 2 + Duration::from_millis(100)),
        ) else {
            return; // a machine up for less than 3 s
        };
        let h = ProxyHealth::new(sync_period);
        h.synced();
        // Waiting for less than 2 × the sync period is keeping up.
        h.lock().pending_since = Some(within);
        h.lock().heartbeat = within;
        assert_eq!(h.reply("/healthz").status, StatusCode::OK);
        assert_eq!(h.reply("/livez").status, StatusCode::OK);
        h.beat();
        h.lock().pending_since = Some(long_ago);
        assert_eq!(h.reply("/healthz").status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.reply("/livez").status, StatusCode::SERVICE_UNAVAILABLE);
        h.synced();
        assert_eq!(h.reply("/livez").status, StatusCode::OK);
        h.lock().heartbeat = long_ago;
        assert_eq!(h.reply("/livez").status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_repaired_link_is_counted_and_a_broken_one_drains_the_node() {
        use crate::datapath::links::{Fault, Finding};
        let h = ProxyHealth::new(DEFAULT_SYNC_PERIOD);
        h.synced();
        let finding = |repair| Finding {
            link: "ferry_link_conn4".into(),
            fault: Fault::Detached,
            repair,
        };
        h.links_verified(&LinkReport {
            checked: 4,
            findings: vec![finding(Ok(()))],
        });
        let r = h.reply("/healthz");
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["links"]["repairs"], 1);
        assert!(v["links"]["lastRepair"].is_string(), "{v}");
        assert_eq!(v["links"]["broken"], serde_json::json!([]));

        h.links_verified(&LinkReport {
            checked: 4,
            findings: vec![finding(Err("cgroup gone".into()))],
        });
        let r = h.reply("/healthz");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v["links"]["broken"],
            serde_json::json!(["ferry_link_conn4 detached: cgroup gone"])
        );
        // The loop itself still turns: not a reason to restart the agent.
        assert_eq!(h.reply("/livez").status, StatusCode::OK);

        h.links_verified(&LinkReport {
            checked: 4,
            findings: Vec::new(),
        });
        assert_eq!(h.reply("/healthz").status, StatusCode::OK);
    }

    #[test]
    fn a_broken_datapath_or_an_ineligible_node_drains_but_stays_live() {
        let h = ProxyHealth::new(DEFAULT_SYNC_PERIOD);
        h.synced();
        h.set_datapath_problem(Some("link ferry_link_conn4 detached".into()));
        assert_eq!(h.reply("/healthz").status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.reply("/livez").status, StatusCode::OK);
        h.set_datapath_problem(None);
        h.set_node_eligible(false);
        let r = h.reply("/healthz");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["nodeEligible"], false);
        assert_eq!(h.reply("/livez").status, StatusCode::OK);
    }
}
