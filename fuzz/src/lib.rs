//! ferry's cargo-fuzz targets: what they call ([`entry`]), what they generate ([`objects`],
//! [`doc`], [`yaml_emit`]) and what they check besides "no panic" ([`invariants`]).

pub mod doc;
pub mod entry;
pub mod invariants;
pub mod objects;
pub mod yaml_emit;
