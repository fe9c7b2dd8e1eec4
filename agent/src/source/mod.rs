//! Where ferry's view of the cluster comes from. Every source sends the same
//! [`Update`]: a complete snapshot of the objects (not a delta), so the
//! consumer just translates the latest one and the datapath diffs.
//!
//! - [`manifests`]: static YAML/JSON files, polled for changes.
//! - [`kube`]: the Kubernetes API (reflectors: list+watch or streaming lists).
//!
//! [`changes`] compares two snapshots for the change counters and the network programming
//! latency metric, whatever the source.

pub mod changes;
pub mod kube;
pub mod manifests;

pub use manifests::{Loaded, SourceError, load};

use crate::model::{Diagnostic, Inputs};

/// A new snapshot of the inputs, with what was wrong reading them (the
/// translation's own diagnostics come on top).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    pub inputs: Inputs,
    pub diagnostics: Vec<Diagnostic>,
}
