//! Everything that touches the kernel. [`owner::Datapath`] is the one owner:
//! it loads and attaches the programs ([`loader`], [`tc`]), holds the maps
//! ([`maps`]) and programs every Service's frontends ([`service_table`],
//! [`programmer`]); [`codec`] is the only code that builds or reads map keys
//! and values.

pub mod backend_live;
pub mod codec;
pub mod ct_gc;
pub mod events;
pub mod ids;
pub mod ifaces;
pub mod lbmaps;
pub mod links;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod mem_maps;
pub mod netns_cookie;
pub mod owner;
pub mod pin_dir;
pub mod pod_devices;
pub mod programmer;
pub mod routes;
pub mod service_table;
pub mod sizes;
pub mod snapshot;
pub mod sock_gc;
pub mod sock_ports;
pub mod sys;
pub mod tc;
pub mod trace;
pub mod xdp;

pub use links::{CHECK_PERIOD as LINK_CHECK_PERIOD, LinkReport};
pub use loader::LoadOptions;
pub use maps::Maps;
pub use owner::{Datapath, NorthSouth};
pub use programmer::{Capacities, Programmer};
pub use sizes::MapSizes;
