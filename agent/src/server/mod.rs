//! The agent's HTTP endpoints, on kube-proxy's ports and paths.

pub mod conns;
pub mod fd_limit;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod metrics;
