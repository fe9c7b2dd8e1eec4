//! /healthz, /readyz and /livez with kube-proxy's rules: healthy unless an
//! update has waited longer than the timeout without being programmed (or
//! programming keeps failing); ready once the first full sync is in the kernel.
//! ferry adds one rule: unhealthy while one of its links is broken (changed by
//! another process and not repaired, see [`crate::datapath::links`]).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hyper::StatusCode;

use super::http::Reply;
use crate::datapath::LinkReport;

/// kube-proxy's default healthz timeout is 2 × its 30 s sync period.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    /// Oldest update received and not yet programmed.
    pending_since: Option<Instant>,
    /// Wall-clock time of the last successful sync.
    last_synced: Option<SystemTime>,
    /// First failure of the current run of failed syncs.
    failing_since: Option<Instant>,
    ready: bool,
    /// Links the last check found changed and could not repair.
    links_broken: Vec<String>,
    /// Links found changed by someone else and repaired, since the start.
    link_repairs: u64,
    last_link_repair: Option<SystemTime>,
}

#[derive(Clone, Default)]
pub struct Health {
    state: Arc<Mutex<State>>,
}

impl Health {
    /// An update arrived from the source.
    pub fn queued(&self) {
        let mut s = self.state.lock().expect("health lock");
        s.pending_since.get_or_insert_with(Instant::now);
    }

    /// A sync finished; `ok` if every frontend was programmed.
    pub fn synced(&self, ok: bool) {
        let mut s = self.state.lock().expect("health lock");
        s.pending_since = None;
        s.last_synced = Some(SystemTime::now());
        s.ready = true;
        if ok {
            s.failing_since = None;
        } else {
            s.failing_since.get_or_insert_with(Instant::now);
        }
    }

    /// A check of the links finished.
    pub fn links_verified(&self, report: &LinkReport) {
        let mut s = self.state.lock().expect("health lock");
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

    pub fn is_ready(&self) -> bool {
        self.state.lock().expect("health lock").ready
    }

    pub fn is_healthy(&self) -> bool {
        let s = self.state.lock().expect("health lock");
        let stale = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() > STALE_AFTER);
        !stale(s.pending_since) && !stale(s.failing_since) && s.links_broken.is_empty()
    }

    pub fn reply(&self, path: &str) -> Reply {
        match path {
            "/healthz" => {
                let links = {
                    let s = self.state.lock().expect("health lock");
                    serde_json::json!({
                        "broken": s.links_broken,
                        "repairs": s.link_repairs,
                        "lastRepair": s.last_link_repair.map(rfc3339),
                    })
                };
                let last = self.state.lock().expect("health lock").last_synced;
                let body = serde_json::json!({
                    "lastUpdated": last.map(rfc3339),
                    "currentTime": rfc3339(SystemTime::now()),
                    "nodeEligible": true,
                    "links": links,
                })
                .to_string();
                let code = if self.is_healthy() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Reply::json(code, body)
            }
            "/readyz" => {
                if self.is_ready() {
                    Reply::text(StatusCode::OK, "ok\n")
                } else {
                    Reply::text(StatusCode::SERVICE_UNAVAILABLE, "first sync not done\n")
                }
            }
            // kube-proxy's /livez is /healthz without the node's eligibility: a stuck
            // agent (an update unprogrammed for too long) gets restarted.
            "/livez" => {
                if self.is_healthy() {
                    Reply::text(StatusCode::OK, "ok\n")
                } else {
                    Reply::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "updates not programmed, or a link is broken\n",
                    )
                }
            }
            _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// UTC RFC 3339 without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_650_000);
        assert_eq!(rfc3339(t), "2026-11-25T23:40:00Z");
    }

    #[test]
    fn ready_after_first_sync_and_healthy_while_fresh() {
        let h = Health::default();
        assert!(!h.is_ready());
        assert_eq!(h.reply("/readyz").status, StatusCode::SERVICE_UNAVAILABLE);
        h.queued();
        assert!(h.is_healthy());
        h.synced(true);
        assert!(h.is_ready());
        assert_eq!(h.reply("/readyz").status, StatusCode::OK);
        assert_eq!(h.reply("/healthz").status, StatusCode::OK);
    }

    #[test]
    fn a_repaired_link_is_counted_and_a_broken_one_makes_the_agent_unhealthy() {
        use crate::datapath::links::{Fault, Finding};
        let h = Health::default();
        h.synced(true);
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
        assert_eq!(h.reply("/livez").status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.reply("/readyz").status, StatusCode::OK);

        h.links_verified(&LinkReport {
            checked: 4,
            findings: Vec::new(),
        });
        assert_eq!(h.reply("/healthz").status, StatusCode::OK);
    }

    #[test]
    fn unhealthy_and_not_live_when_an_update_waits_too_long_or_syncs_keep_failing() {
        let long_ago = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1));
        let Some(long_ago) = long_ago else { return }; // a machine up for less than a minute
        let h = Health::default();
        h.synced(true);
        h.state.lock().unwrap().pending_since = Some(long_ago);
        assert_eq!(h.reply("/healthz").status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.reply("/livez").status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            h.reply("/readyz").status,
            StatusCode::OK,
            "ready stays ready"
        );
        h.synced(true);
        assert_eq!(h.reply("/livez").status, StatusCode::OK);

        h.synced(false);
        assert_eq!(
            h.reply("/healthz").status,
            StatusCode::OK,
            "one failure is not stale"
        );
        h.state.lock().unwrap().failing_since = Some(long_ago);
        h.synced(false);
        assert_eq!(h.reply("/healthz").status, StatusCode::SERVICE_UNAVAILABLE);
        h.synced(true);
        assert_eq!(h.reply("/healthz").status, StatusCode::OK);
    }
}
