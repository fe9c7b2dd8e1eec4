//! `ferry trace`: what the kernel programs would do with one flow, decided
//! from their maps without sending a packet. Each step mirrors the kernel's:
//!
//! - the socket layer (a pod or a host process dialling): sock_lb.rs
//!   `xlate_fwd` (frontend, ClusterIP port check, the internal scope of a
//!   two-scope frontend, reject / let through to the guard, the choice of
//!   select.rs with the client's network namespace and a random place) and
//!   guard.rs (Local policy without local endpoint, source ranges on the
//!   packet's source address);
//! - a packet arriving on a node device: nodeport.rs `ingress` (a tracked
//!   flow, else `new_flow`: exposed kinds, source ranges, reject or drop
//!   without endpoints, the choice of select.rs with the client's address
//!   and the flow hash of agent-common, the translation mode).
//!
//! The maps are read through [`Tables`] (the pinned maps, or an in-memory
//! model in the tests); every key is built by the codec.

use std::net::{IpAddr, SocketAddr};

use agent_common::{
    AffinityValue, MAGLEV_TABLE_SIZE, SvcValue, affinity_client, backend_flags, ct_dir, ct_flags,
    drop::DropReason, node_flags, svc_flags,
};
use serde::{Deserialize, Serialize};

use super::{
    codec::{self, BackendValue, CtLookupKey, CtLookupValue, SvcKey},
    routes::Route,
};
use crate::model::{Family, FrontendKey, Protocol, Scope, SockAddr};

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
}

/// Where the flow comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A pod on this node: its sockets go through the socket layer.
    Pod,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Translated to a backend (one of `candidates` when not decided).
    Translate,
    Drop,
    /// Refused: ECONNREFUSED at the socket layer, an ICMP port unreachable
    /// on a device.
    Reject,
    /// Not for ferry: the flow goes on untouched.
    Pass,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub action: Action,
    /// A drop's `DropReason` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backend the flow goes to, when decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<u32>,
    /// What decided it: conntrack, affinity, maglev, slot, or random (the
    /// socket layer: one of `candidates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The backends it may go to when the choice is not known in advance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
    /// The choice depends on the client's source port (not given).
    #[serde(default)]
    pub depends_on_source_port: bool,
    /// The flow hash it was placed with (north-south).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_hash: Option<u32>,
    /// North-south: how the backend is reached (snat, keep-client, dsr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Why, in words.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendInfo {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// The entry whose backends are used (internal for in-cluster clients
    /// of a two-scope frontend).
    pub scope: Scope,
    /// ClusterIP, NodePort, LoadBalancer or ExternalIP.
    pub kind: String,
    pub flags: Vec<String>,
    pub rev_nat_id: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// namespace/name, from the running agent (the maps do not name it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendInfo {
    pub id: u32,
    /// ip:port, None when the id names no backend (the agent mid-update).
    pub address: Option<String>,
    pub local: bool,
    /// active or terminating.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityInfo {
    /// The client as the map keys it (an address, or a network namespace cookie).
    pub client: String,
    pub backend_id: u32,
    pub backend: Option<String>,
    pub age_seconds: u32,
    pub timeout_seconds: u32,
    /// Younger than the timeout and its backend exists: it decides.
    pub live: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackInfo {
    pub backend_id: u32,
    pub nat_src: String,
    pub nat_dst: String,
    pub snat: bool,
    pub dsr: bool,
    pub local_backend: bool,
    pub idle_seconds: u32,
    /// The backend still exists with that address: the entry decides.
    pub backend_still_there: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRangeInfo {
    /// The rev-NAT id whose ranges were checked.
    pub rev_nat_id: u16,
    /// The address looked up.
    pub source: IpAddr,
    pub allowed: bool,
}

/// `ferry trace -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    pub src: String,
    pub dst: String,
    pub protocol: Protocol,
    pub from: Origin,
    pub from_inferred: bool,
    /// "socket" (connect/sendmsg hooks and the egress guard) or "device"
    /// (the TC program on a node device).
    pub layer: String,
    /// Which family's maps the kernel reads.
    pub maps: String,
    pub frontend: Option<FrontendInfo>,
    pub backends: Vec<BackendInfo>,
    pub source_range: Option<SourceRangeInfo>,
    pub affinity: Option<AffinityInfo>,
    pub conntrack: Option<ConntrackInfo>,
    pub verdict: Verdict,
    pub notes: Vec<String>,
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
    let socket = client.from != Origin::External;
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
            layer: if socket { "socket" } else { "device" }.into(),
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
    tr.out.verdict = if socket {
        tr.socket(client.netns_cookie)
    } else {
        tr.device()
    };
    tr.out
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

    /// sock_lb.rs `xlate_fwd` and guard.rs.
    fn socket(&mut self, netns_cookie: Option<u64>) -> Verdict {
        let f = self.flow;
        let dst = unmapped(f.dst);
        let family = Family::of(&dst);
        let key = FrontendKey {
            ip: dst,
            port: f.dport,
            proto: f.proto,
            scope: Scope::External,
        };
        let Some(ext) = self.t.service(&codec::svc_key(&key, 0)) else {
            if self.t.service(&codec::cluster_ip_key(dst)).is_some() {
                return verdict(
                    Action::Reject,
                    "a ClusterIP on a port or protocol no Service defines: connect()/sendmsg() \
                     fail with ECONNREFUSED (kube-proxy's cluster-ips-check)",
                );
            }
            return verdict(
                Action::Pass,
                "not a frontend: the socket layer leaves the destination untouched",
            );
        };
        let (used, svc) = if ext.flags & svc_flags::TWO_SCOPES != 0 {
            let internal = FrontendKey {
                scope: Scope::Internal,
                ..key
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
        } else {
            (key, ext)
        };
        self.out.frontend = Some(self.frontend_info(&key, &ext, used.scope));
        self.list_backends(&used, &svc);
        if svc.count == 0 {
            if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
                if self.t.service(&codec::cluster_ip_key(dst)).is_some() {
                    return dropped(
                        DropReason::GuardNoLocal,
                        "a Local traffic policy with no endpoint on this node: the socket \
                         keeps the ClusterIP and the egress guard drops its packets",
                    );
                }
                return verdict(
                    Action::Pass,
                    "a Local traffic policy with no endpoint on this node: the destination is \
                     left untranslated",
                );
            }
            return verdict(
                Action::Reject,
                "no endpoints: connect()/sendmsg() fail with ECONNREFUSED",
            );
        }
        let mut chosen = None;
        if svc.flags & svc_flags::AFFINITY != 0 {
            match netns_cookie {
                Some(cookie) => {
                    chosen = self.affinity((cookie, affinity_client::NETNS_COOKIE), &svc, family);
                }
                None => {
                    let n = self
                        .t
                        .affinity_of(svc.rev_nat_id, affinity_client::NETNS_COOKIE)
                        .len();
                    self.note(format!(
                        "session affinity keys on the client's network namespace: give --netns \
                         to look its entry up ({n} entries for this frontend)"
                    ));
                }
            }
        }
        let verdict = match chosen {
            Some(id) => self.translated(
                id,
                family,
                "affinity",
                "the client's session affinity entry names the backend".into(),
            ),
            None => {
                let candidates = self.candidates();
                if candidates.is_empty() {
                    return verdict(
                        Action::Reject,
                        "no backend slot resolves (the agent is mid-update): refused",
                    );
                }
                Verdict {
                    by: Some("random".into()),
                    detail: format!(
                        "a socket has no flow to hash yet: one of {} at random",
                        candidates.len()
                    ),
                    candidates,
                    ..verdict(Action::Translate, "")
                }
            }
        };
        if ext.flags & svc_flags::SOURCE_RANGES != 0 {
            let src = unmapped(f.src);
            let allowed =
                Family::of(&src) == family && self.t.in_source_ranges(ext.rev_nat_id, src);
            self.out.source_range = Some(SourceRangeInfo {
                rev_nat_id: ext.rev_nat_id,
                source: src,
                allowed,
            });
            if !allowed {
                return Verdict {
                    reason: Some(DropReason::GuardSourceRange.name().into()),
                    action: Action::Drop,
                    detail: "the source is outside the LoadBalancer's source ranges: the \
                             socket reaches the backend but the egress guard drops its packets"
                        .into(),
                    ..verdict
                };
            }
        }
        verdict
    }

    /// nodeport.rs `ingress` (a tracked flow, else `new_flow`).
    fn device(&mut self) -> Verdict {
        let f = self.flow;
        let family = Family::of(&f.dst);
        if Family::of(&f.src) != family {
            return verdict(
                Action::Pass,
                "source and destination are of different families: no such packet",
            );
        }
        if let Some(sport) = f.sport {
            let (src, dst) = (
                SocketAddr::new(f.src, sport),
                SocketAddr::new(f.dst, f.dport),
            );
            if let Some(v) = self.tracked(src, dst, family) {
                return v;
            }
        } else {
            self.note("no source port given: an existing flow of this client is not looked up");
        }
        let key = FrontendKey {
            ip: f.dst,
            port: f.dport,
            proto: f.proto,
            scope: Scope::External,
        };
        let Some(svc) = self.t.service(&codec::svc_key(&key, 0)) else {
            return self.not_a_frontend();
        };
        self.out.frontend = Some(self.frontend_info(&key, &svc, Scope::External));
        self.list_backends(&key, &svc);
        let external_cluster_ip = svc.flags & svc_flags::CLUSTER_IP != 0
            && self.t.node_flags() & node_flags::EXTERNAL_CLUSTER_IP != 0;
        if svc.flags & EXPOSED == 0 && !external_cluster_ip {
            return verdict(
                Action::Pass,
                "a ClusterIP arriving on a node device is not served (the agent runs without \
                 --external-cluster-ip): the packet goes on untouched",
            );
        }
        if svc.flags & svc_flags::SOURCE_RANGES != 0 {
            let allowed = self.t.in_source_ranges(svc.rev_nat_id, f.src);
            self.out.source_range = Some(SourceRangeInfo {
                rev_nat_id: svc.rev_nat_id,
                source: f.src,
                allowed,
            });
            if !allowed {
                return dropped(
                    DropReason::SourceRange,
                    "the source is outside the LoadBalancer's source ranges",
                );
            }
        }
        if svc.count == 0 {
            if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
                return dropped(
                    DropReason::NoLocalEndpoint,
                    "externalTrafficPolicy Local with no endpoint on this node",
                );
            }
            return verdict(
                Action::Reject,
                "no endpoints: answered with an ICMP port unreachable (within the node's \
                 rate limit)",
            );
        }
        let client = codec::affinity_client_ip(f.src);
        if svc.flags & svc_flags::AFFINITY != 0
            && let Some(id) = self.affinity(client, &svc, family)
        {
            let v = self.translated(
                id,
                family,
                "affinity",
                "the client's session affinity entry names the backend".into(),
            );
            return self.with_mode(v, &svc, family);
        }
        let Some(sport) = f.sport else {
            let candidates = self.candidates();
            let by = if svc.flags & svc_flags::MAGLEV != 0 {
                "maglev"
            } else {
                "slot"
            };
            let depends = candidates.len() > 1;
            return Verdict {
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
            };
        };
        let hash = codec::flow_hash(
            SocketAddr::new(f.src, sport),
            SocketAddr::new(f.dst, f.dport),
            f.proto,
        )
        .unwrap_or_default();
        let (id, by) = match self.place(&key, &svc, hash) {
            Some(c) => c,
            None => {
                return dropped(
                    DropReason::NoBackend,
                    "no backend slot resolves (the agent is mid-update)",
                );
            }
        };
        if self.t.backend(id, family).is_none() {
            return dropped(
                DropReason::NoBackend,
                format!("backend id {id} is not in the backend map (the agent is mid-update)"),
            );
        }
        let v = Verdict {
            flow_hash: Some(hash),
            ..self.translated(
                id,
                family,
                by,
                format!("placed by the flow hash {hash} ({by})"),
            )
        };
        self.with_mode(v, &svc, family)
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

    /// nodeport.rs: how the chosen backend is reached.
    fn with_mode(&self, mut v: Verdict, svc: &SvcValue, family: Family) -> Verdict {
        let Some(b) = v.backend_id.and_then(|id| self.t.backend(id, family)) else {
            return v;
        };
        let local = b.flags() & backend_flags::LOCAL != 0;
        let dsr_mode = self.t.node_flags() & node_flags::DSR != 0;
        let host_backend = codec::backend_addr(&b).is_some_and(|a| self.t.is_node(a.ip));
        let keep = local && (svc.flags & svc_flags::ETP_LOCAL != 0 || dsr_mode || host_backend);
        v.mode = Some(
            if keep {
                "keep-client"
            } else if !local && svc.flags & svc_flags::CLUSTER_IP == 0 && dsr_mode {
                "dsr"
            } else {
                "snat"
            }
            .into(),
        );
        v
    }

    /// nodeport.rs `client_packet`: the flow's FORWARD entry decides while
    /// its backend is still there.
    fn tracked(&mut self, src: SocketAddr, dst: SocketAddr, family: Family) -> Option<Verdict> {
        let key = codec::ct_key(src, dst, self.flow.proto, ct_dir::FORWARD)?;
        let v = self.t.conntrack(&key)?;
        let (nat_src, nat_dst, id, _rev, flags, last_seen) = codec::ct_value_parts(&v);
        let there = self
            .t
            .backend(id, family)
            .and_then(|b| codec::backend_addr(&b))
            .is_some_and(|a| a.ip == nat_dst.ip() && a.port == nat_dst.port());
        self.out.conntrack = Some(ConntrackInfo {
            backend_id: id,
            nat_src: nat_src.to_string(),
            nat_dst: nat_dst.to_string(),
            snat: flags & ct_flags::SNAT != 0,
            dsr: flags & ct_flags::DSR != 0,
            local_backend: flags & ct_flags::LOCAL != 0,
            idle_seconds: self.now.saturating_sub(last_seen),
            backend_still_there: there,
        });
        if !there {
            self.note("the flow's backend is gone: its entries are removed and it starts anew");
            return None;
        }
        let mode = if flags & ct_flags::DSR != 0 {
            "dsr"
        } else if flags & ct_flags::SNAT != 0 {
            "snat"
        } else {
            "keep-client"
        };
        Some(Verdict {
            backend: Some(nat_dst.to_string()),
            backend_id: Some(id),
            by: Some("conntrack".into()),
            mode: Some(mode.into()),
            ..verdict(
                Action::Translate,
                "a tracked flow: its conntrack entry names the backend",
            )
        })
    }

    /// nodeport.rs `not_a_frontend`: passes, unless a TCP SYN clashes with
    /// a live translated flow's reply entry (`direct_syn`).
    fn not_a_frontend(&mut self) -> Verdict {
        let f = self.flow;
        if f.proto == Protocol::Tcp
            && let Some(sport) = f.sport
            && let Some(key) = codec::ct_key(
                SocketAddr::new(f.dst, f.dport),
                SocketAddr::new(f.src, sport),
                f.proto,
                ct_dir::REPLY,
            )
            && let Some(v) = self.t.conntrack(&key)
        {
            let (.., last_seen) = codec::ct_value_parts(&v);
            let tcp_flags = match v {
                CtLookupValue::V4(v) => v.tcp_flags,
                CtLookupValue::V6(v) => v.tcp_flags,
            };
            let idle = self.now.saturating_sub(last_seen);
            if !agent_common::ct_over(f.proto.number(), tcp_flags, idle) {
                return dropped(
                    DropReason::CtClash,
                    "a SYN straight to a pod from a (client, port) whose reply a live \
                     translated flow holds",
                );
            }
        }
        verdict(
            Action::Pass,
            "not a frontend: the TC program lets the packet through untouched",
        )
    }
}

/// The pinned maps, read-only (`ferry trace`).
impl Tables for super::Maps {
    fn service(&self, key: &SvcKey) -> Option<SvcValue> {
        match key {
            SvcKey::V4(k) => self.services.get(k, 0).ok(),
            SvcKey::V6(k) => self.services6.get(k, 0).ok(),
        }
    }

    fn backend(&self, id: u32, family: Family) -> Option<BackendValue> {
        match family {
            Family::V4 => self.backends.get(&id, 0).ok().map(BackendValue::V4),
            Family::V6 => self.backends6.get(&id, 0).ok().map(BackendValue::V6),
        }
    }

    fn maglev(&self, key: u32) -> Option<u32> {
        self.maglev.get(&key, 0).ok()
    }

    fn affinity(&self, key: &agent_common::AffinityKey) -> Option<AffinityValue> {
        self.affinity.get(key, 0).ok()
    }

    fn affinity_of(&self, rev_nat_id: u16, kind: u8) -> Vec<(u64, AffinityValue)> {
        self.affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.rev_nat_id == rev_nat_id && k.kind == kind)
            .map(|(k, v)| (k.client, v))
            .collect()
    }

    fn in_source_ranges(&self, rev_nat_id: u16, ip: IpAddr) -> bool {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        match codec::src_range_key(rev_nat_id, crate::model::Cidr::new(ip, bits)) {
            codec::SrcRangeKey::V4(k) => self.src_ranges.get(&k, 0).is_ok(),
            codec::SrcRangeKey::V6(k) => self.src_ranges6.get(&k, 0).is_ok(),
        }
    }

    fn conntrack(&self, key: &CtLookupKey) -> Option<CtLookupValue> {
        match key {
            CtLookupKey::V4(k) => self.ct.get(k, 0).ok().map(CtLookupValue::V4),
            CtLookupKey::V6(k) => self.ct6.get(k, 0).ok().map(CtLookupValue::V6),
        }
    }

    fn node_flags(&self) -> u32 {
        self.node_config.get(&0, 0).map_or(0, |c| c.flags)
    }

    fn is_node(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.nodes.get(&codec::ip_raw(a), 0).is_ok(),
            IpAddr::V6(a) => self.nodes6.get(&codec::ip6_raw(a), 0).is_ok(),
        }
    }

    fn node_addrs(&self) -> Vec<IpAddr> {
        let v4 = self.node_addr.iter().filter_map(Result::ok);
        let v6 = self.node_addr6.iter().filter_map(Result::ok);
        v4.map(|(_, a)| IpAddr::from(codec::ip_of(a)))
            .chain(v6.map(|(_, a)| IpAddr::from(codec::ip6_of(a))))
            .collect()
    }

    fn ns_devices(&self) -> Vec<u32> {
        let v4 = self.node_addr.keys().filter_map(Result::ok);
        let v6 = self.node_addr6.keys().filter_map(Result::ok);
        let mut all: Vec<u32> = v4.chain(v6).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn local_backend_ips(&self) -> Vec<IpAddr> {
        let v4 = self.backends.iter().filter_map(Result::ok);
        let v6 = self.backends6.iter().filter_map(Result::ok);
        v4.map(|(_, b)| BackendValue::V4(b))
            .chain(v6.map(|(_, b)| BackendValue::V6(b)))
            .filter(|b| b.flags() & backend_flags::LOCAL != 0)
            .filter_map(|b| codec::backend_addr(&b).map(|a| a.ip))
            .collect()
    }
}

/// The report as text, for people.
pub fn render(t: &Trace) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let inferred = if t.from_inferred { " (inferred)" } else { "" };
    let layer = match t.layer.as_str() {
        "socket" => "the socket layer (connect/sendmsg hooks, egress guard)",
        _ => "a node device (TC ingress)",
    };
    let _ = writeln!(
        out,
        "flow      {} -> {}/{} from {:?}{inferred}: {layer}, {} maps",
        t.src, t.dst, t.protocol, t.from, t.maps
    );
    match &t.frontend {
        Some(fe) => {
            let svc = fe
                .service
                .as_deref()
                .unwrap_or("(service unknown: agent not reached)");
            let _ = writeln!(
                out,
                "frontend  {}/{} {} {svc} [{}] rev-NAT {} scope {:?}",
                SockAddr(fe.address, fe.port),
                fe.protocol,
                fe.kind,
                fe.flags.join(","),
                fe.rev_nat_id,
                fe.scope
            );
        }
        None => {
            let _ = writeln!(out, "frontend  none");
        }
    }
    for b in &t.backends {
        let _ = writeln!(
            out,
            "backend   #{} {} {}{}",
            b.id,
            b.address.as_deref().unwrap_or("(missing)"),
            b.state,
            if b.local { " local" } else { "" }
        );
    }
    if let Some(r) = &t.source_range {
        let _ = writeln!(
            out,
            "ranges    {} {} the source ranges",
            r.source,
            if r.allowed { "is in" } else { "is outside" }
        );
    }
    if let Some(a) = &t.affinity {
        let _ = writeln!(
            out,
            "affinity  {} -> #{} {} age {}s of {}s: {}",
            a.client,
            a.backend_id,
            a.backend.as_deref().unwrap_or("(missing)"),
            a.age_seconds,
            a.timeout_seconds,
            if a.live { "live" } else { "expired" }
        );
    }
    if let Some(c) = &t.conntrack {
        let _ = writeln!(
            out,
            "conntrack #{} {} -> {} idle {}s{}",
            c.backend_id,
            c.nat_src,
            c.nat_dst,
            c.idle_seconds,
            if c.backend_still_there {
                ""
            } else {
                " (backend gone)"
            }
        );
    }
    for n in &t.notes {
        let _ = writeln!(out, "note      {n}");
    }
    let v = &t.verdict;
    let mut line = format!("{:?}", v.action).to_uppercase();
    if let Some(r) = &v.reason {
        let _ = write!(line, " {r}");
    }
    if let Some(b) = &v.backend {
        let _ = write!(line, " -> {b}");
    }
    if !v.candidates.is_empty() {
        let _ = write!(
            line,
            " -> one of {}: {}",
            v.candidates.len(),
            v.candidates.join(", ")
        );
    }
    if let Some(m) = &v.mode {
        let _ = write!(line, " ({m})");
    }
    let _ = writeln!(out, "verdict   {line}: {}", v.detail);
    out
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
