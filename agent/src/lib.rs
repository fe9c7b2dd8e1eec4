//! ferry: an eBPF replacement for kube-proxy. The library behind the `ferry`
//! binary; see README.md for the design.

pub mod cli;
pub mod cmd;
pub mod control;
pub mod datapath;
pub mod error;
pub mod model;
pub mod mountinfo;
pub mod northsouth;
pub mod paths;
pub mod server;
pub mod source;
