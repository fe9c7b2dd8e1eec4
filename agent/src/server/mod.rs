//! The agent's HTTP endpoints, on kube-proxy's ports and paths: the proxy's
//! own health (10256), the per-Service health check node ports of
//! externalTrafficPolicy Local load balancers, and metrics (10249).

pub mod conns;
pub mod fd_limit;
pub mod http;
pub mod metrics;
pub mod process_metrics;
pub mod proxy_health;
pub mod service_health;
pub mod status;
