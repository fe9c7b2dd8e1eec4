//! The map operations the [`super::Programmer`] needs, as a trait: the
//! kernel maps implement it, and an in-memory model ([`super::mem_maps`])
//! does for tests of the diff and the control loop (which writes happen, in
//! which order, and what the maps end up holding).

use agent_common::{AffinityKey, AffinityValue, Backend4, Backend6, SvcValue, maps as names};
use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapError};

use super::{
    Maps,
    codec::{self, BackendValue, MemberKey, RevNatValue, SrcRangeKey, SvcKey},
    sys,
};
use crate::{
    error::{Error, Result},
    model::{Cidr, Family},
};

pub trait LbMaps {
    /// Both families' entries: each map is chosen by the key's or value's
    /// family ([`codec`]), one id space for both.
    fn services(&self) -> Vec<(SvcKey, SvcValue)>;
    fn backends(&self) -> Vec<(u32, BackendValue)>;
    fn rev_nats(&self) -> Vec<(u16, RevNatValue)>;
    fn affinity(&self) -> Vec<(AffinityKey, AffinityValue)>;
    fn put_service(&mut self, k: SvcKey, v: SvcValue) -> Result<()>;
    fn del_service(&mut self, k: &SvcKey) -> Result<()>;
    fn put_backend(&mut self, id: u32, v: BackendValue) -> Result<()>;
    /// `family`: the backend's (which map holds the id).
    fn del_backend(&mut self, id: u32, family: Family) -> Result<()>;
    fn put_rev_nat(&mut self, id: u16, v: RevNatValue) -> Result<()>;
    fn del_rev_nat(&mut self, id: u16, family: Family) -> Result<()>;
    fn del_affinity(&mut self, k: &AffinityKey) -> Result<()>;
    fn put_src_range(&mut self, rev_nat_id: u16, cidr: Cidr) -> Result<()>;
    fn del_src_range(&mut self, rev_nat_id: u16, cidr: Cidr) -> Result<()>;
    /// Source ranges held in the kernel, for adoption.
    fn src_ranges(&self) -> Vec<(u16, Cidr)>;
    fn put_maglev(&mut self, key: u32, backend_id: u32) -> Result<()>;
    fn del_maglev(&mut self, key: u32) -> Result<()>;
    /// Maglev entries held in the kernel, for adoption.
    fn maglev_entries(&self) -> Vec<(u32, u32)>;
    /// A backend (its id) of an exposed frontend: what a DSR option's
    /// packet may be addressed to.
    fn put_member(&mut self, k: MemberKey, backend_id: u32) -> Result<()>;
    fn del_member(&mut self, k: &MemberKey) -> Result<()>;
    /// Memberships held in the kernel, for adoption.
    fn members(&self) -> Vec<(MemberKey, u32)>;
}

/// Every entry of a hash map: in batches of a few thousand (one syscall
/// each, where walking key by key takes two per entry: 1 s of adoption at
/// 10,000 Services), key by key where the kernel has no batch lookup.
fn all<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    sys::read_hash(map.map(), 4096).unwrap_or_else(|_| map.iter().filter_map(Result::ok).collect())
}

/// Deleting what is already gone is success: the goal state is reached.
fn deleted(name: &str, r: Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::map(name, e)),
    }
}

fn put<K: aya::Pod, V: aya::Pod>(
    name: &str,
    map: &mut HashMap<MapData, K, V>,
    k: &K,
    v: &V,
) -> Result<()> {
    map.insert(k, v, 0).map_err(|e| Error::map(name, e))
}

/// Writes backend `id` of a family's backend array (`name`; all zeroes: none).
fn set_live<B: aya::Pod>(
    name: &str,
    live: &mut Option<Array<MapData, B>>,
    id: u32,
    v: &B,
) -> Result<()> {
    match live {
        Some(a) => a.set(id, v, 0).map_err(|e| Error::map(name, e)),
        None => Ok(()),
    }
}

impl LbMaps for Maps {
    fn services(&self) -> Vec<(SvcKey, SvcValue)> {
        let v4 = all(&self.services)
            .into_iter()
            .map(|(k, v)| (SvcKey::V4(k), v));
        let v6 = all(&self.services6)
            .into_iter()
            .map(|(k, v)| (SvcKey::V6(k), v));
        v4.chain(v6).collect()
    }
    fn backends(&self) -> Vec<(u32, BackendValue)> {
        let v4 = all(&self.backends)
            .into_iter()
            .map(|(k, v)| (k, BackendValue::V4(v)));
        let v6 = all(&self.backends6)
            .into_iter()
            .map(|(k, v)| (k, BackendValue::V6(v)));
        v4.chain(v6).collect()
    }
    fn rev_nats(&self) -> Vec<(u16, RevNatValue)> {
        let v4 = all(&self.rev_nat)
            .into_iter()
            .map(|(k, v)| (k, RevNatValue::V4(v)));
        let v6 = all(&self.rev_nat6)
            .into_iter()
            .map(|(k, v)| (k, RevNatValue::V6(v)));
        v4.chain(v6).collect()
    }
    fn affinity(&self) -> Vec<(AffinityKey, AffinityValue)> {
        all(&self.affinity)
    }
    fn put_service(&mut self, k: SvcKey, v: SvcValue) -> Result<()> {
        match k {
            SvcKey::V4(k) => put(names::SERVICES_V4, &mut self.services, &k, &v),
            SvcKey::V6(k) => put(names::SERVICES_V6, &mut self.services6, &k, &v),
        }
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<()> {
        match k {
            SvcKey::V4(k) => deleted(names::SERVICES_V4, self.services.remove(k)),
            SvcKey::V6(k) => deleted(names::SERVICES_V6, self.services6.remove(k)),
        }
    }
    fn put_backend(&mut self, id: u32, v: BackendValue) -> Result<()> {
        match v {
            BackendValue::V4(v) => {
                put(names::BACKENDS_V4, &mut self.backends, &id, &v)?;
                set_live(names::BACKEND_LIVE_V4, &mut self.backend_live, id, &v)
            }
            BackendValue::V6(v) => {
                put(names::BACKENDS_V6, &mut self.backends6, &id, &v)?;
                set_live(names::BACKEND_LIVE_V6, &mut self.backend_live6, id, &v)
            }
        }
    }
    fn del_backend(&mut self, id: u32, family: Family) -> Result<()> {
        // The array first: a tracked flow stops going to the backend at
        // once.
        if family == Family::V6 {
            set_live(
                names::BACKEND_LIVE_V6,
                &mut self.backend_live6,
                id,
                &Backend6::default(),
            )?;
            deleted(names::BACKENDS_V6, self.backends6.remove(&id))
        } else {
            set_live(
                names::BACKEND_LIVE_V4,
                &mut self.backend_live,
                id,
                &Backend4::default(),
            )?;
            deleted(names::BACKENDS_V4, self.backends.remove(&id))
        }
    }
    fn put_rev_nat(&mut self, id: u16, v: RevNatValue) -> Result<()> {
        match v {
            RevNatValue::V4(v) => put(names::REV_NAT_V4, &mut self.rev_nat, &id, &v),
            RevNatValue::V6(v) => put(names::REV_NAT_V6, &mut self.rev_nat6, &id, &v),
        }
    }
    fn del_rev_nat(&mut self, id: u16, family: Family) -> Result<()> {
        if family == Family::V6 {
            deleted(names::REV_NAT_V6, self.rev_nat6.remove(&id))
        } else {
            deleted(names::REV_NAT_V4, self.rev_nat.remove(&id))
        }
    }
    fn del_affinity(&mut self, k: &AffinityKey) -> Result<()> {
        deleted(names::AFFINITY, self.affinity.remove(k))
    }
    fn put_src_range(&mut self, rev_nat_id: u16, cidr: Cidr) -> Result<()> {
        match codec::src_range_key(rev_nat_id, cidr) {
            SrcRangeKey::V4(k) => self
                .src_ranges
                .insert(&k, &1u8, 0)
                .map_err(|e| Error::map(names::SRC_RANGE_V4, e)),
            SrcRangeKey::V6(k) => self
                .src_ranges6
                .insert(&k, &1u8, 0)
                .map_err(|e| Error::map(names::SRC_RANGE_V6, e)),
        }
    }
    fn del_src_range(&mut self, rev_nat_id: u16, cidr: Cidr) -> Result<()> {
        match codec::src_range_key(rev_nat_id, cidr) {
            SrcRangeKey::V4(k) => deleted(names::SRC_RANGE_V4, self.src_ranges.remove(&k)),
            SrcRangeKey::V6(k) => deleted(names::SRC_RANGE_V6, self.src_ranges6.remove(&k)),
        }
    }
    fn src_ranges(&self) -> Vec<(u16, Cidr)> {
        let v4 = self.src_ranges.keys().filter_map(Result::ok);
        let v6 = self.src_ranges6.keys().filter_map(Result::ok);
        v4.map(|k| codec::src_range_of(&k))
            .chain(v6.map(|k| codec::src_range6_of(&k)))
            .collect()
    }
    fn put_maglev(&mut self, key: u32, backend_id: u32) -> Result<()> {
        put(names::MAGLEV, &mut self.maglev, &key, &backend_id)
    }
    fn del_maglev(&mut self, key: u32) -> Result<()> {
        deleted(names::MAGLEV, self.maglev.remove(&key))
    }
    fn maglev_entries(&self) -> Vec<(u32, u32)> {
        all(&self.maglev)
    }
    fn put_member(&mut self, k: MemberKey, backend_id: u32) -> Result<()> {
        match k {
            MemberKey::V4(k) => put(names::MEMBERS_V4, &mut self.members, &k, &backend_id),
            MemberKey::V6(k) => put(names::MEMBERS_V6, &mut self.members6, &k, &backend_id),
        }
    }
    fn del_member(&mut self, k: &MemberKey) -> Result<()> {
        match k {
            MemberKey::V4(k) => deleted(names::MEMBERS_V4, self.members.remove(k)),
            MemberKey::V6(k) => deleted(names::MEMBERS_V6, self.members6.remove(k)),
        }
    }
    fn members(&self) -> Vec<(MemberKey, u32)> {
        all(&self.members)
            .into_iter()
            .map(|(k, v)| (MemberKey::V4(k), v))
            .chain(
                all(&self.members6)
                    .into_iter()
                    .map(|(k, v)| (MemberKey::V6(k), v)),
            )
            .collect()
    }
}
