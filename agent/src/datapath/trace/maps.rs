//! The pinned maps, read-only, as `ferry trace` reads them.

use std::net::IpAddr;

use agent_common::{AffinityValue, SvcValue, backend_flags};

use super::{
    Tables,
    codec::{self, BackendValue, CtLookupKey, CtLookupValue, SvcKey},
};
use crate::{datapath::Maps, model::Family};

/// The pinned maps, read-only (`ferry trace`).
impl Tables for Maps {
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

    fn route_device(&self, ip: IpAddr) -> Option<u32> {
        match crate::datapath::routes::Resolver::new()
            .ok()?
            .get(ip)
            .ok()?
        {
            crate::datapath::routes::Route::Device(index) => Some(index),
            _ => None,
        }
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
