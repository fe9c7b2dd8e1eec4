//! The report of `ferry trace` (`-o json`), as the steps fill it in.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Origin;
use crate::model::{Protocol, Scope};

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
    /// The Service port's name, from the running agent when its status
    /// carries it (None for an unnamed port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
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
    /// A flow of the per-packet ClusterIP path (pod_lb.rs).
    #[serde(default)]
    pub pod: bool,
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
    /// "socket" (connect/sendmsg hooks and the egress guard), "device"
    /// (the TC program on a node device) or "pod" (the per-packet ClusterIP
    /// path on a pod's device).
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
