//! What the control loop knows that the kernel does not show: which
//! Service each frontend is for, frontends it could not program (with the
//! error and the next retry), and the problems of the objects it read.
//! Served as JSON at [`PATH`] on the metrics address; `ferry services`
//! joins it with what the maps hold. Computed when asked, by the loop, so a
//! change costs nothing for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{datapath::service_table::FrontendStatus, model::Diagnostic};

/// Where the agent serves its status.
pub const PATH: &str = "/ferry/v1/status";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Every frontend the agent is responsible for, with its Service and
    /// status ("programmed", or "error" with why).
    pub frontends: Vec<FrontendStatus>,
    /// Current problems of the objects read, one line each.
    pub diagnostics: Vec<String>,
}

impl Status {
    pub fn new(frontends: Vec<FrontendStatus>, diagnostics: &[Diagnostic]) -> Status {
        Status {
            frontends,
            diagnostics: diagnostics.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A request for the status, answered by the loop.
pub type Request = oneshot::Sender<Status>;

/// The server's side: asks the loop.
#[derive(Clone)]
pub struct Asker(mpsc::Sender<Request>);

/// A channel between the server (asker) and the loop (answerer).
pub fn channel() -> (Asker, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(8);
    (Asker(tx), rx)
}

impl Asker {
    /// The status as JSON, or None when the loop does not answer in time.
    pub async fn json(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        let status = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()?;
        serde_json::to_string(&status).ok()
    }
}
