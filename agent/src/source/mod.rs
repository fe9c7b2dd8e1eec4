//! Where ferry's view of the cluster comes from. Every source sends the same
//! [`Update`]: a complete snapshot of the objects (not a delta), so the
//! consumer just translates the latest one and the datapath diffs.
//!
//! - [`manifests`]: static YAML/JSON files, polled for changes.
//! - later: the Kubernetes API (list+watch), sending the same type.

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
