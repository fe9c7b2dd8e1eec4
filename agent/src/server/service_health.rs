//! healthCheckNodePort servers for externalTrafficPolicy Local load
//! balancers, as kube-proxy runs them: 200 while this node has a ready
//! endpoint of the service, 503 otherwise (also while only terminating
//! endpoints remain, so the load balancer drains the node while they finish).
//!
//! One server per service, started and stopped as services come and go;
//! they live in the agent's process, so none outlives it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use hyper::StatusCode;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::http::{self, Reply};
use crate::model::{HealthCheck, ServiceName};

struct Server {
    port: u16,
    counts: Arc<Mutex<HealthCheck>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
pub struct ServiceHealthServers {
    servers: BTreeMap<ServiceName, Server>,
}

impl ServiceHealthServers {
    /// Brings the servers in line with `wanted`.
    pub async fn sync(&mut self, wanted: &BTreeMap<ServiceName, HealthCheck>) {
        self.servers.retain(|name, s| {
            let keep = wanted.get(name).is_some_and(|w| w.node_port == s.port);
            if !keep {
                s.task.abort();
                info!(service = %name, port = s.port, "health check server stopped");
            }
            keep
        });
        for (name, hc) in wanted {
            if let Some(s) = self.servers.get(name) {
                *s.counts.lock().expect("health check lock") = hc.clone();
                continue;
            }
            match start(name.clone(), hc.clone()).await {
                Ok(server) => {
                    info!(service = %name, port = hc.node_port, "health check server started");
                    self.servers.insert(name.clone(), server);
                }
                Err(e) => warn!(service = %name, port = hc.node_port, error = %e,
                    "health check node port: cannot listen"),
            }
        }
    }
}

async fn start(name: ServiceName, hc: HealthCheck) -> std::io::Result<Server> {
    let port = hc.node_port;
    let counts = Arc::new(Mutex::new(hc));
    let c = counts.clone();
    let handler = move |_path: String| {
        let reply = reply(&name, &c.lock().expect("health check lock"));
        async move { reply }
    };
    // Load balancers probe a dual-stack node over either family: one socket on [::] takes
    // both (IPv4 arrives IPv4-mapped, as Go's listener on ":port" does for kube-proxy). A
    // node without IPv6 gets the IPv4 socket.
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let (_, task) = match http::serve("health check", v6, handler.clone()).await {
        Ok(served) => served,
        Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            http::serve("health check", v4, handler).await?
        }
        Err(e) => return Err(e),
    };
    Ok(Server { port, counts, task })
}

/// kube-proxy's body and status for one service.
pub fn reply(name: &ServiceName, hc: &HealthCheck) -> Reply {
    let body = serde_json::json!({
        "service": { "namespace": name.namespace, "name": name.name },
        "localEndpoints": hc.local_ready,
        "serviceProxyHealthy": true,
    });
    let status = if hc.local_ready > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::json(status, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn ready_local_endpoints_answer_200_terminating_only_503() {
        let ok = reply(
            &name(),
            &HealthCheck {
                node_port: 1,
                local_ready: 2,
                local_terminating: 0,
            },
        );
        assert_eq!(ok.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["serviceProxyHealthy"], true);
        let draining = reply(
            &name(),
            &HealthCheck {
                node_port: 1,
                local_ready: 0,
                local_terminating: 1,
            },
        );
        assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
