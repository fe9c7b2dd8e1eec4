//! What ferry programmed: every frontend the Services call for (ClusterIPs, load-balancer IPs,
//! node ports) with their pods as backends, read back with `ferry services`.

use std::{collections::BTreeMap, net::IpAddr};

use ferry::{cmd::services::ServicesView, model::Protocol};

use super::{
    checks::{Ctx, Line},
    cluster::Cluster,
    objects, topology,
};
use crate::{
    lab::{Pod, ipv6_twin},
    services,
};

/// A frontend and its backends: (address, port, protocol, sorted backends as `ferry services`
/// writes them).
pub type Expected = (IpAddr, u16, Protocol, Vec<String>);

/// Every frontend the Services call for, each family's, with the backends their pods make.
pub fn expected_frontends(cluster: &Cluster, pods: &BTreeMap<String, Pod>) -> Vec<Expected> {
    let mut out = Vec::new();
    for svc in &cluster.services {
        for p in &svc.ports {
            // ferry programs TCP and UDP only (it skips other ports with a diagnostic).
            let protocol = match p.protocol.as_str() {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => continue,
            };
            for v6 in [false, true] {
                let mut backends: Vec<String> = cluster
                    .backends_of(svc)
                    .iter()
                    .flat_map(|d| {
                        let port = objects::target_port(p, d).unwrap_or_default();
                        d.pod_names().into_iter().filter_map(move |n| {
                            let pod = pods.get(&n)?;
                            Some(if v6 {
                                format!("[{}]:{port}", pod.ip6)
                            } else {
                                format!("{}:{port}", pod.ip)
                            })
                        })
                    })
                    .collect();
                backends.sort();
                let (cluster_ip, lb, node): (IpAddr, Option<IpAddr>, IpAddr) = if v6 {
                    (
                        svc.cluster_ip6.into(),
                        svc.lb_ip6.map(Into::into),
                        ipv6_twin(topology::NODE_IP).into(),
                    )
                } else {
                    (
                        svc.cluster_ip.into(),
                        svc.lb_ip.map(Into::into),
                        topology::NODE_IP.into(),
                    )
                };
                out.push((cluster_ip, p.port, protocol, backends.clone()));
                if let Some(lb) = lb {
                    out.push((lb, p.port, protocol, backends.clone()));
                }
                if let Some(np) = p.node_port {
                    out.push((node, np, protocol, backends));
                }
            }
        }
    }
    out
}

/// True when `ferry services` holds every expected frontend with exactly its backends.
pub fn all_programmed(v: &ServicesView, want: &[Expected]) -> bool {
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
                .map(|(ip, port, proto, _)| {
                    format!("{}/{proto}", std::net::SocketAddr::new(*ip, *port))
                })
                .collect();
            let lbs = cx
                .cluster
                .services
                .iter()
                .filter(|s| s.lb_ip.is_some())
                .count();
            if missing.is_empty() {
                let v6 = want.iter().filter(|w| w.0.is_ipv6()).count();
                Line::ok(format!(
                    "{what}: all {} frontends ({} IPv4, {v6} IPv6) of the {} dual-stack \
                     Services ({lbs} LoadBalancer) hold their pods as backends",
                    want.len(),
                    want.len() - v6,
                    cx.cluster.services.len()
                ))
            } else {
                Line::fail(format!("{what}: missing or wrong: {}", missing.join(", ")))
            }
        }
        Err(e) => Line::fail(format!("{what}: {e}")),
    }
}
