//! What ferry programmed: every frontend the Services call for (ClusterIPs, load-balancer IPs,
//! node ports) with their pods as backends, read back with `ferry services`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ferry::{cmd::services::ServicesView, model::Protocol};

use super::{
    checks::{Ctx, Line},
    cluster::Cluster,
    objects, topology,
};
use crate::{lab::Pod, services};

/// Every frontend the Services call for, with the backends their pods make:
/// (address, port, protocol, sorted "ip:port" backends).
pub fn expected_frontends(
    cluster: &Cluster,
    pods: &BTreeMap<String, Pod>,
) -> Vec<(Ipv4Addr, u16, Protocol, Vec<String>)> {
    let mut out = Vec::new();
    for svc in &cluster.services {
        for p in &svc.ports {
            // ferry programs TCP and UDP only (it skips other ports with a diagnostic).
            let protocol = match p.protocol.as_str() {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => continue,
            };
            let mut backends: Vec<String> = cluster
                .backends_of(svc)
                .iter()
                .flat_map(|d| {
                    let port = objects::target_port(p, d).unwrap_or_default();
                    d.pod_names()
                        .into_iter()
                        .filter_map(move |n| Some(format!("{}:{port}", pods.get(&n)?.ip)))
                })
                .collect();
            backends.sort();
            out.push((svc.cluster_ip, p.port, protocol, backends.clone()));
            if let Some(lb) = svc.lb_ip {
                out.push((lb, p.port, protocol, backends.clone()));
            }
            if let Some(np) = p.node_port {
                out.push((topology::NODE_IP, np, protocol, backends));
            }
        }
    }
    out
}

/// True when `ferry services` holds every expected frontend with exactly its backends.
pub fn all_programmed(v: &ServicesView, want: &[(Ipv4Addr, u16, Protocol, Vec<String>)]) -> bool {
    want.iter().all(|(ip, port, proto, backends)| {
        let b: Vec<&str> = backends.iter().map(String::as_str).collect();
        services::active_is(v, *ip, *port, *proto, &b)
    })
}

/// What `ferry services` holds, checked against the Services.
pub fn ferry_services(cx: &Ctx) -> Line {
    let want = expected_frontends(cx.cluster, cx.pods);
    let what = "ferry      services";
    match cx.lab.try_services() {
        Ok(v) => {
            let missing: Vec<String> = want
                .iter()
                .filter(|(ip, port, proto, backends)| {
                    let b: Vec<&str> = backends.iter().map(String::as_str).collect();
                    !services::active_is(&v, *ip, *port, *proto, &b)
                })
                .map(|(ip, port, proto, _)| format!("{ip}:{port}/{proto}"))
                .collect();
            let lbs = cx
                .cluster
                .services
                .iter()
                .filter(|s| s.lb_ip.is_some())
                .count();
            if missing.is_empty() {
                Line::ok(format!(
                    "{what}: all {} frontends of the {} Services ({lbs} LoadBalancer) hold \
                     their pods as backends",
                    want.len(),
                    cx.cluster.services.len()
                ))
            } else {
                Line::fail(format!("{what}: missing or wrong: {}", missing.join(", ")))
            }
        }
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}
