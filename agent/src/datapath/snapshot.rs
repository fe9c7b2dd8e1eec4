//! A read of what the kernel holds, decoded from the maps: the base for
//! adopting a previous agent's state and for `ferry services`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use agent_common::SvcValue;

use super::{
    codec::{self, BackendValue, RevNatValue, SvcKey},
    lbmaps::LbMaps,
};
use crate::model::{BackendAddr, Cidr, FrontendKey};

#[derive(Debug, Default)]
pub struct KernelState {
    pub frontends: BTreeMap<FrontendKey, KernelFrontend>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub rev_nat: BTreeMap<u16, RevNatValue>,
    /// Source ranges by rev-NAT id.
    pub src_ranges: BTreeMap<u16, Vec<Cidr>>,
    /// Addresses marked as ClusterIPs ([`codec::cluster_ip_key`]).
    pub cluster_ips: BTreeSet<IpAddr>,
    /// Service-map keys that belong to no frontend (slots past a count, or
    /// left by an agent that stopped mid-update): deleted on adoption.
    pub stray: Vec<SvcKey>,
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
        let mut slots: BTreeMap<(FrontendKey, u16), (SvcKey, u32)> = BTreeMap::new();
        for (k, v) in maps.services() {
            if let Some(ip) = codec::cluster_ip_of(&k) {
                st.cluster_ips.insert(ip);
                continue;
            }
            let Some(key) = codec::frontend_key(&k) else {
                st.stray.push(k);
                continue;
            };
            let slot = codec::slot_of(&k);
            if slot == 0 {
                st.frontends.insert(
                    key,
                    KernelFrontend {
                        value: v,
                        backend_ids: Vec::new(),
                    },
                );
            } else {
                slots.insert((key, slot), (k, v.backend_id));
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
        for (rev, cidr) in maps.src_ranges() {
            st.src_ranges.entry(rev).or_default().push(cidr);
        }
        for ranges in st.src_ranges.values_mut() {
            ranges.sort();
        }
        st
    }

    pub fn backend_addr(&self, id: u32) -> Option<BackendAddr> {
        codec::backend_addr(self.backends.get(&id)?)
    }
}
