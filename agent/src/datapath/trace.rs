//! `ferry trace`: what the kernel programs would do with one flow, decided
//! from their maps without sending a packet. Each layer's step mirrors the
//! kernel's, in a file of its own:
//!
//! - trace/socket.rs: the socket layer (a pod or a host process dialling;
//!   sock_lb.rs and guard.rs);
//! - trace/device.rs: a packet arriving on a node device (nodeport.rs);
//! - trace/pod.rs: a pod's packet the socket layer did not translate, on its
//!   device (pod_lb.rs): `--from pod-packet`, or any pod's under
//!   `--socket-lb-host-netns-only`.
//!
//! This file holds what they share (the flow, the client, the choice of a
//! backend); the report is trace/report.rs, its text trace/render.rs. The
//! maps are read through [`Tables`] (the pinned maps, trace/maps.rs, or an
//! in-memory model in the tests); every key is built by the codec.

use std::net::IpAddr;

use agent_common::{
    AffinityValue, MAGLEV_TABLE_SIZE, SvcValue, affinity_client, backend_flags, drop::DropReason,
    node_flags, svc_flags,
};
use serde::{Deserialize, Serialize};

use super::{
    codec::{self, BackendValue, CtLookupKey, CtLookupValue, SvcKey},
    routes::Route,
};
use crate::model::{Family, FrontendKey, Protocol, Scope, SockAddr};

mod device;
mod maps;
mod pod;
mod render;
mod report;
mod socket;

pub use render::render;
pub use report::*;

/// Point lookups in the maps the kernel programs read.
pub trait Tables {
    fn service(&self, key: &SvcKey) -> Option<SvcValue>;
    /// The backend `id` of `family`'s backend map.
    fn backend(&self, id: u32, family: Family) -> Option<BackendValue>;
    fn maglev(&self, key: u32) -> Option<u32>;
    fn affinity(&self, key: &agent_common::AffinityKey) -> Option<AffinityValue>;
    /// Every affinity entry of frontend `rev_nat_id` for clients of `kind`.
    fn affinity_of(&self, rev_nat_id: u16, kind: u8) -> Vec<(u64, AffinityValue)>;
    /// The source-range LPM trie has a prefix of frontend `rev_nat_id`
    /// holding `ip` (the kernel's lookup).
    fn in_source_ranges(&self, rev_nat_id: u16, ip: IpAddr) -> bool;
    fn conntrack(&self, key: &CtLookupKey) -> Option<CtLookupValue>;
    /// `NodeConfig::flags`.
    fn node_flags(&self) -> u32;
    /// `ip` is a cluster node's address (the nodes maps).
    fn is_node(&self, ip: IpAddr) -> bool;
    /// This node's addresses on its devices.
    fn node_addrs(&self) -> Vec<IpAddr>;
    /// The devices the north-south programs are on (ifindexes).
    fn ns_devices(&self) -> Vec<u32>;
    /// Addresses of backends on this node.
    fn local_backend_ips(&self) -> Vec<IpAddr>;
    /// The device this node routes `ip` through (None: its own address, no route, or the
    /// lookup failed).
    fn route_device(&self, ip: IpAddr) -> Option<u32>;
}

/// Where the flow comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A pod on this node: its sockets go through the socket layer (under
    /// `--socket-lb-host-netns-only`, its packets through the pod path).
    Pod,
    /// A pod's packet the socket layer did not translate (a process outside
    /// the hooked cgroup, a service mesh's redirect, a VM's tap): the
    /// per-packet path on the pod's device.
    #[serde(rename = "pod-packet")]
    PodPacket,
    /// A process of the host: the socket layer too.
    Host,
    /// A packet arriving on a node device.
    External,
}

/// The flow to trace. `sport`: None when the user did not give one.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: Protocol,
}

/// Who the client is beyond its address.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub from: Origin,
    /// Whether `from` was inferred rather than given.
    pub inferred: bool,
    /// The client's network namespace cookie (the socket layer's affinity
    /// identity), when known.
    pub netns_cookie: Option<u64>,
}

/// Exposed frontend kinds on the node's devices (nodeport.rs `EXPOSED`).
const EXPOSED: u16 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;

/// Where a flow from `src` comes from when the user did not say, from the
/// node's route to `src` (`ip route get SRC`): a local address is the host,
/// one reached through a north-south device (where ferry's TC program
/// runs) sends packets that arrive there, one reached through any other
/// device is a pod behind it (its sockets go through the socket layer).
/// Without a route: this node's addresses are the host, a local endpoint's
/// a pod, anything else arrives on a device.
pub fn infer_from(t: &impl Tables, src: IpAddr, route: Option<Route>) -> Origin {
    let src = unmapped(src);
    match route {
        Some(Route::Local) => return Origin::Host,
        Some(Route::Device(i)) if t.ns_devices().contains(&i) => return Origin::External,
        Some(Route::Device(_)) => return Origin::Pod,
        Some(Route::None) | None => {}
    }
    if t.node_addrs().contains(&src) {
        Origin::Host
    } else if t.local_backend_ips().contains(&src) {
        Origin::Pod
    } else {
        Origin::External
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 one; others unchanged.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn kind_of(flags: u16) -> &'static str {
    if flags & svc_flags::LOAD_BALANCER != 0 {
        "LoadBalancer"
    } else if flags & svc_flags::NODE_PORT != 0 {
        "NodePort"
    } else if flags & svc_flags::EXTERNAL_IP != 0 {
        "ExternalIP"
    } else if flags & svc_flags::CLUSTER_IP != 0 {
        "ClusterIP"
    } else {
        "unknown"
    }
}

fn verdict(action: Action, detail: impl Into<String>) -> Verdict {
    Verdict {
        action,
        reason: None,
        backend: None,
        backend_id: None,
        by: None,
        candidates: Vec::new(),
        depends_on_source_port: false,
        flow_hash: None,
        mode: None,
        detail: detail.into(),
    }
}

fn dropped(reason: DropReason, detail: impl Into<String>) -> Verdict {
    Verdict {
        reason: Some(reason.name().to_owned()),
        ..verdict(Action::Drop, detail)
    }
}

fn endpoint(b: &BackendValue) -> Option<String> {
    codec::backend_addr(b).map(|a| SockAddr(a.ip, a.port).to_string())
}

/// One trace in the making: the report's fields filled step by step.
struct Tracer<'a, T: Tables> {
    t: &'a T,
    flow: Flow,
    now: u32,
    out: Trace,
}

/// What the kernel would do with `flow` from `client`, at CLOCK_MONOTONIC
/// second `now` (the clock of affinity and conntrack times).
pub fn trace(t: &impl Tables, flow: Flow, client: Client, now: u32) -> Trace {
    let host_netns_only = t.node_flags() & node_flags::SOCK_HOSTNS_ONLY != 0;
    let pod_path = match client.from {
        Origin::PodPacket => true,
        Origin::Pod => host_netns_only,
        Origin::Host | Origin::External => false,
    };
    let socket = !pod_path && client.from != Origin::External;
    // The socket layer reads the IPv4 maps for an IPv4-mapped destination.
    let mapped = socket && matches!(flow.dst, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
    let maps = match (Family::of(&flow.dst), mapped) {
        (_, true) => "IPv4 (an IPv4-mapped destination)",
        (Family::V4, _) => "IPv4",
        (Family::V6, _) => "IPv6",
    };
    let src = match flow.sport {
        Some(p) => SockAddr(flow.src, p).to_string(),
        None => flow.src.to_string(),
    };
    let mut tr = Tracer {
        t,
        flow,
        now,
        out: Trace {
            src,
            dst: SockAddr(flow.dst, flow.dport).to_string(),
            protocol: flow.proto,
            from: client.from,
            from_inferred: client.inferred,
            layer: if pod_path {
                "pod"
            } else if socket {
                "socket"
            } else {
                "device"
            }
            .into(),
            maps: maps.into(),
            frontend: None,
            backends: Vec::new(),
            source_range: None,
            affinity: None,
            conntrack: None,
            verdict: verdict(Action::Pass, ""),
            notes: Vec::new(),
        },
    };
    tr.out.verdict = if pod_path {
        if client.from == Origin::Pod {
            tr.note(
                "--socket-lb-host-netns-only: the socket layer leaves pods' sockets alone, \
                 their packets take the per-packet path",
            );
        }
        tr.pod()
    } else if socket {
        tr.socket(client.netns_cookie)
    } else {
        tr.device()
    };
    tr.out
}

/// What [`Tracer::place_flow`] found.
enum Placement {
    /// The backend's verdict, before the mode (DSR/SNAT) is applied.
    Placed(Verdict),
    /// The verdict as it stands.
    Final(Verdict),
}

impl<T: Tables> Tracer<'_, T> {
    fn note(&mut self, s: impl Into<String>) {
        self.out.notes.push(s.into());
    }

    fn frontend_info(&self, key: &FrontendKey, ext: &SvcValue, scope: Scope) -> FrontendInfo {
        FrontendInfo {
            address: key.ip,
            port: key.port,
            protocol: key.proto,
            scope,
            kind: kind_of(ext.flags).into(),
            flags: codec::flag_names(ext.flags)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            rev_nat_id: ext.rev_nat_id,
            affinity_timeout: (ext.flags & svc_flags::AFFINITY != 0)
                .then_some(ext.affinity_timeout),
            service: None,
            port_name: None,
        }
    }

    /// The backend slots 1..=count of `key`'s entry, as the report lists
    /// them.
    fn list_backends(&mut self, key: &FrontendKey, svc: &SvcValue) {
        let family = Family::of(&key.ip);
        self.out.backends = (1..=svc.count)
            .filter_map(|slot| self.t.service(&codec::svc_key(key, slot)))
            .map(|s| {
                let b = self.t.backend(s.backend_id, family);
                BackendInfo {
                    id: s.backend_id,
                    address: b.as_ref().and_then(endpoint),
                    local: b.is_some_and(|b| b.flags() & backend_flags::LOCAL != 0),
                    state: b
                        .map_or("missing", |b| codec::backend_state_name(b.state()))
                        .into(),
                }
            })
            .collect();
    }

    fn candidates(&self) -> Vec<String> {
        self.out
            .backends
            .iter()
            .filter_map(|b| b.address.clone())
            .collect()
    }

    /// The client's live affinity entry (select.rs `from_affinity`): its
    /// backend id when it decides. Reports the entry either way.
    fn affinity(&mut self, client: (u64, u8), svc: &SvcValue, family: Family) -> Option<u32> {
        let key = codec::affinity_key(client.0, client.1, svc.rev_nat_id);
        let v = self.t.affinity(&key)?;
        let age = self.now.wrapping_sub(v.last_used);
        let backend = self.t.backend(v.backend_id, family);
        let live = age <= svc.affinity_timeout && backend.is_some();
        self.out.affinity = Some(AffinityInfo {
            client: match client.1 {
                affinity_client::NETNS_COOKIE => format!("netns cookie {}", client.0),
                _ => self.flow.src.to_string(),
            },
            backend_id: v.backend_id,
            backend: backend.as_ref().and_then(endpoint),
            age_seconds: age,
            timeout_seconds: svc.affinity_timeout,
            live,
        });
        live.then_some(v.backend_id)
    }

    fn translated(&self, id: u32, family: Family, by: &str, detail: String) -> Verdict {
        Verdict {
            backend: self.t.backend(id, family).as_ref().and_then(endpoint),
            backend_id: Some(id),
            by: Some(by.into()),
            ..verdict(Action::Translate, detail)
        }
    }

    /// The backend a new flow `f` gets by its flow hash (Maglev or slot),
    /// before the mode is applied; else the final verdict (source port
    /// unknown: the candidates; nothing resolves: dropped).
    fn place_flow(&self, key: &FrontendKey, svc: &SvcValue, f: &Flow, family: Family) -> Placement {
        let Some(sport) = f.sport else {
            return Placement::Final(self.unplaced(svc));
        };
        let hash = codec::flow_hash(
            std::net::SocketAddr::new(f.src, sport),
            std::net::SocketAddr::new(f.dst, f.dport),
            f.proto,
        )
        .unwrap_or_default();
        let Some((id, by)) = self.place(key, svc, hash) else {
            return Placement::Final(dropped(
                DropReason::NoBackend,
                "no backend slot resolves (the agent is mid-update)",
            ));
        };
        if self.t.backend(id, family).is_none() {
            return Placement::Final(dropped(
                DropReason::NoBackend,
                format!("backend id {id} is not in the backend map (the agent is mid-update)"),
            ));
        }
        Placement::Placed(Verdict {
            flow_hash: Some(hash),
            ..self.translated(
                id,
                family,
                by,
                format!("placed by the flow hash {hash} ({by})"),
            )
        })
    }

    /// select.rs: the Maglev table entry, else the slot, of `hash`.
    fn place(&self, key: &FrontendKey, svc: &SvcValue, hash: u32) -> Option<(u32, &'static str)> {
        if svc.flags & svc_flags::MAGLEV != 0
            && let Some(id) = self
                .t
                .maglev(codec::maglev_key(svc.rev_nat_id, hash % MAGLEV_TABLE_SIZE))
        {
            return Some((id, "maglev"));
        }
        let slot = (hash % u32::from(svc.count)) as u16 + 1;
        let s = self
            .t
            .service(&codec::svc_key(key, slot))
            .or_else(|| self.t.service(&codec::svc_key(key, 1)))?;
        Some((s.backend_id, "slot"))
    }

    /// The entry whose backends in-cluster clients use: the internal one of
    /// a two-scope frontend (externalTrafficPolicy Local), else `key`'s.
    fn in_cluster_entry(&mut self, key: &FrontendKey, ext: SvcValue) -> (FrontendKey, SvcValue) {
        if ext.flags & svc_flags::TWO_SCOPES == 0 {
            return (*key, ext);
        }
        let internal = FrontendKey {
            scope: Scope::Internal,
            ..*key
        };
        self.note(
            "externalTrafficPolicy Local: clients in the cluster use the internal entry \
             (every endpoint)",
        );
        let v = self
            .t
            .service(&codec::svc_key(&internal, 0))
            .unwrap_or_default();
        (internal, v)
    }

    /// A flow placed by its hash whose source port is not known: the
    /// candidates.
    fn unplaced(&self, svc: &SvcValue) -> Verdict {
        let candidates = self.candidates();
        let by = if svc.flags & svc_flags::MAGLEV != 0 {
            "maglev"
        } else {
            "slot"
        };
        let depends = candidates.len() > 1;
        Verdict {
            by: Some(by.into()),
            depends_on_source_port: depends,
            detail: if depends {
                format!(
                    "placed by the flow hash ({by}): which of the {} backends depends on \
                     the source port (give SRC as IP:PORT)",
                    candidates.len()
                )
            } else {
                "the only backend".into()
            },
            candidates,
            ..verdict(Action::Translate, "")
        }
    }
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
