//! Kubernetes Events for the objects ferry cannot program as written (a
//! frontend conflict, a refused externalIP, a malformed port), so that
//! `kubectl describe service` tells the Service's owner, who cannot read
//! the agent's logs. Each distinct problem is published once per agent,
//! rate-limited so a broken rollout cannot flood the API server.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{debug, warn};

use crate::model::{Diagnostic, Severity, objects::ServiceObj};

/// Publishing budget: a burst, then this many per second.
const BURST: f64 = 50.0;
const PER_SECOND: f64 = 10.0;

pub struct EventSink {
    recorder: Recorder,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl EventSink {
    /// `instance`: this agent (its node), as the Event's reporting instance.
    pub fn new(client: kube::Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: "ferry".into(),
            instance: Some(instance.to_owned()),
        };
        EventSink {
            recorder: Recorder::new(client, reporter),
            tokens: BURST,
            refilled: Instant::now(),
            dropped: 0,
        }
    }

    /// Publishes a Warning about a Service's problem, in the background.
    pub fn publish(&mut self, d: &Diagnostic, svc: Option<&ServiceObj>) {
        if d.severity != Severity::Warning || d.kind != "Service" {
            return;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * PER_SECOND).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(dropped = self.dropped, "Kubernetes Events rate-limited");
            }
            return;
        }
        self.tokens -= 1.0;
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(d.namespace.clone()),
            name: Some(d.name.clone()),
            uid: svc.and_then(|s| s.uid.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "FailedToProgram".into(),
            note: Some(truncate(&d.reason, 1000)),
            action: "Program".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let publish = recorder.publish(&event, &reference);
            match tokio::time::timeout(Duration::from_secs(10), publish).await {
                Ok(Ok(())) => debug!(service = ?reference.name, "event published"),
                Ok(Err(e)) => debug!(error = %e, "event not published"),
                Err(_) => debug!("event not published: timeout"),
            }
        });
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
