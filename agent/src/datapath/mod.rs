//! Everything that touches the kernel: loading and attaching the programs
//! ([`loader`]), the typed map handles ([`maps`]), and turning a
//! [`crate::model::Desired`] state into map writes as a diff ([`programmer`]).

pub mod ids;
pub mod ifaces;
pub mod lbmaps;
pub mod links;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod pin_dir;
pub mod programmer;
pub mod snapshot;
pub mod sock_gc;
pub mod sys;
pub mod tc;

pub use links::{CHECK_PERIOD as LINK_CHECK_PERIOD, LinkReport};
pub use loader::{Datapath, LoadOptions};
pub use maps::Maps;
pub use programmer::{Programmer, SyncReport};
