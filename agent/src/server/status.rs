//! What the control loop knows that the kernel does not show: frontends it
//! could not program (with the error and the next retry) and the problems
//! of the objects it read. Served as JSON at [`PATH`] on the metrics
//! address; `ferry services` joins it with what the maps hold.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::{datapath::service_table::FrontendStatus, model::Diagnostic};

/// Where the agent serves its status.
pub const PATH: &str = "/ferry/v1/status";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Frontends in the kernel as programmed.
    pub programmed: usize,
    /// Frontends that are not (their Service's wish is not in the kernel).
    pub problems: Vec<FrontendStatus>,
    /// Current problems of the objects read, one line each.
    pub diagnostics: Vec<String>,
}

impl Status {
    pub fn new(all: Vec<FrontendStatus>, diagnostics: &[Diagnostic]) -> Status {
        let programmed = all.iter().filter(|f| f.status == "programmed").count();
        Status {
            programmed,
            problems: all
                .into_iter()
                .filter(|f| f.status != "programmed")
                .collect(),
            diagnostics: diagnostics.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The latest status, shared between the loop (writer) and the server.
#[derive(Clone, Default)]
pub struct SharedStatus(Arc<Mutex<Status>>);

impl SharedStatus {
    pub fn set(&self, s: Status) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn json(&self) -> String {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::to_string(&*s).unwrap_or_else(|_| "{}".to_owned())
    }
}
