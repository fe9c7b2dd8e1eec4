//! Where ferry's view of the cluster comes from. Every source sends the same
//! per-object [`event::Event`]s as changes happen, never snapshots, so the
//! control loop pays for what changed, not for the cluster.
//!
//! - [`manifests`]: static YAML/JSON files, followed with inotify.
//! - [`kube`]: the Kubernetes API (watchers: list+watch or streaming lists).

pub mod event;
pub mod kube;
pub mod manifests;

pub use manifests::{Loaded, SourceError, load};
