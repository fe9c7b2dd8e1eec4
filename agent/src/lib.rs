//! ferry: an eBPF replacement for kube-proxy. The library behind the `ferry`
//! binary; see README.md for the design.

/// The source revision the binary was built from (`git rev-parse`, or the
/// build's FERRY_GIT_REVISION; "unknown" outside a checkout).
pub const REVISION: &str = env!("FERRY_GIT_REVISION");
/// `ferry --version`: the release and the revision.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FERRY_GIT_REVISION"),
    ")"
);

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
