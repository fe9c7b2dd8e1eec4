//! A read of what the kernel holds, decoded from the maps: the base for
//! adopting a previous agent's state and for `ferry services`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use agent_common::{
    Backend4, RevNat4, Svc4Key, SvcValue,
    net::{ip4_from_raw, port_from_raw},
    svc_flags,
};

use crate::{
    datapath::lbmaps::LbMaps,
    model::{BackendAddr, FrontendKey, Protocol, Scope},
};

#[derive(Debug, Default)]
pub struct KernelState {
    pub frontends: BTreeMap<FrontendKey, KernelFrontend>,
    pub backends: BTreeMap<u32, Backend4>,
    pub rev_nat: BTreeMap<u16, RevNat4>,
    /// Service-map keys that belong to no frontend (slots past a count, or
    /// left by an agent that stopped mid-update): deleted on adoption.
    pub stray: Vec<Svc4Key>,
}

#[derive(Debug, Clone)]
pub struct KernelFrontend {
    pub value: SvcValue,
    /// Backend id of slots 1..=count; 0 where a slot is missing.
    pub backend_ids: Vec<u32>,
}

impl KernelState {
    pub fn read(maps: &impl LbMaps) -> Self {
        let mut st = KernelState::default();
        let mut slots: BTreeMap<(FrontendKey, u16), (Svc4Key, u32)> = BTreeMap::new();
        for (k, v) in maps.services() {
            let Some(key) = frontend_key(&k) else {
                st.stray.push(k);
                continue;
            };
            if k.slot == 0 {
                st.frontends.insert(
                    key,
                    KernelFrontend {
                        value: v,
                        backend_ids: Vec::new(),
                    },
                );
            } else {
                slots.insert((key, k.slot), (k, v.backend_id));
            }
        }
        for (key, f) in st.frontends.iter_mut() {
            f.backend_ids = (1..=f.value.count)
                .map(|s| slots.remove(&(*key, s)).map_or(0, |(_, id)| id))
                .collect();
        }
        st.stray.extend(slots.into_values().map(|(k, _)| k));
        st.backends = maps.backends().into_iter().collect();
        st.rev_nat = maps.rev_nats().into_iter().collect();
        st
    }

    pub fn backend_addr(&self, id: u32) -> Option<BackendAddr> {
        let b = self.backends.get(&id)?;
        Some(BackendAddr {
            ip: Ipv4Addr::from(ip4_from_raw(b.addr)),
            port: port_from_raw(b.port),
            proto: Protocol::from_number(b.proto)?,
        })
    }
}

pub fn frontend_key(k: &Svc4Key) -> Option<FrontendKey> {
    Some(FrontendKey {
        ip: Ipv4Addr::from(ip4_from_raw(k.addr)),
        port: port_from_raw(k.port),
        proto: Protocol::from_number(k.proto)?,
        scope: match k.scope {
            agent_common::scope::EXTERNAL => Scope::External,
            agent_common::scope::INTERNAL => Scope::Internal,
            _ => return None,
        },
    })
}

/// Human names of a frontend's flag bits (for `ferry services`).
pub fn flag_names(flags: u16) -> Vec<&'static str> {
    const NAMES: &[(u16, &str)] = &[
        (svc_flags::CLUSTER_IP, "ClusterIP"),
        (svc_flags::NODE_PORT, "NodePort"),
        (svc_flags::EXTERNAL_IP, "ExternalIP"),
        (svc_flags::LOAD_BALANCER, "LoadBalancer"),
        (svc_flags::AFFINITY, "SessionAffinity"),
        (svc_flags::ETP_LOCAL, "ExternalTrafficPolicyLocal"),
        (svc_flags::ITP_LOCAL, "InternalTrafficPolicyLocal"),
        (svc_flags::TWO_SCOPES, "TwoScopes"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, n)| n)
        .collect()
}
