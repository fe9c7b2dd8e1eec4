//! Everything that touches the kernel: loading and attaching the programs
//! ([`loader`]), the typed map handles ([`maps`]), and turning a
//! [`crate::model::Desired`] state into map writes as a diff ([`programmer`]).

pub mod ct_gc;
pub mod ids;
pub mod ifaces;
pub mod lbmaps;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod programmer;
pub mod sizes;
pub mod snapshot;
pub mod sock_gc;
pub mod sys;
pub mod tc;

pub use loader::{Datapath, LoadOptions};
pub use maps::Maps;
pub use programmer::{Programmer, SyncReport};
pub use sizes::MapSizes;
