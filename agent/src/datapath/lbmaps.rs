//! The map operations the [`super::Programmer`] needs, as a trait: the
//! kernel maps implement it, and an in-memory model ([`super::mem_maps`])
//! does for tests of the diff and the control loop (which writes happen, in
//! which order, and what the maps end up holding).

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Member4Key, RevNat4, Svc4Key, SvcValue, maps as names,
};
use aya::maps::{HashMap, IterableMap as _, MapData, MapError};

use super::{Maps, codec, sys};
use crate::{
    error::{Error, Result},
    model::Cidr4,
};

pub trait LbMaps {
    fn services(&self) -> Vec<(Svc4Key, SvcValue)>;
    fn backends(&self) -> Vec<(u32, Backend4)>;
    fn rev_nats(&self) -> Vec<(u16, RevNat4)>;
    fn affinity(&self) -> Vec<(AffinityKey, AffinityValue)>;
    fn put_service(&mut self, k: Svc4Key, v: SvcValue) -> Result<()>;
    fn del_service(&mut self, k: &Svc4Key) -> Result<()>;
    fn put_backend(&mut self, id: u32, v: Backend4) -> Result<()>;
    fn del_backend(&mut self, id: u32) -> Result<()>;
    fn put_rev_nat(&mut self, id: u16, v: RevNat4) -> Result<()>;
    fn del_rev_nat(&mut self, id: u16) -> Result<()>;
    fn del_affinity(&mut self, k: &AffinityKey) -> Result<()>;
    fn put_src_range(&mut self, rev_nat_id: u16, cidr: Cidr4) -> Result<()>;
    fn del_src_range(&mut self, rev_nat_id: u16, cidr: Cidr4) -> Result<()>;
    /// Source ranges held in the kernel, for adoption.
    fn src_ranges(&self) -> Vec<(u16, Cidr4)>;
    fn put_maglev(&mut self, key: u32, backend_id: u32) -> Result<()>;
    fn del_maglev(&mut self, key: u32) -> Result<()>;
    /// Maglev entries held in the kernel, for adoption.
    fn maglev_entries(&self) -> Vec<(u32, u32)>;
    /// A backend (its id) of an exposed frontend: what a DSR option's
    /// packet may be addressed to.
    fn put_member(&mut self, k: Member4Key, backend_id: u32) -> Result<()>;
    fn del_member(&mut self, k: &Member4Key) -> Result<()>;
    /// Memberships held in the kernel, for adoption.
    fn members(&self) -> Vec<(Member4Key, u32)>;
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

impl LbMaps for Maps {
    fn services(&self) -> Vec<(Svc4Key, SvcValue)> {
        all(&self.services)
    }
    fn backends(&self) -> Vec<(u32, Backend4)> {
        all(&self.backends)
    }
    fn rev_nats(&self) -> Vec<(u16, RevNat4)> {
        all(&self.rev_nat)
    }
    fn affinity(&self) -> Vec<(AffinityKey, AffinityValue)> {
        all(&self.affinity)
    }
    fn put_service(&mut self, k: Svc4Key, v: SvcValue) -> Result<()> {
        self.services
            .insert(&k, &v, 0)
            .map_err(|e| Error::map(names::SERVICES_V4, e))
    }
    fn del_service(&mut self, k: &Svc4Key) -> Result<()> {
        deleted(names::SERVICES_V4, self.services.remove(k))
    }
    fn put_backend(&mut self, id: u32, v: Backend4) -> Result<()> {
        self.backends
            .insert(&id, &v, 0)
            .map_err(|e| Error::map(names::BACKENDS_V4, e))
    }
    fn del_backend(&mut self, id: u32) -> Result<()> {
        deleted(names::BACKENDS_V4, self.backends.remove(&id))
    }
    fn put_rev_nat(&mut self, id: u16, v: RevNat4) -> Result<()> {
        self.rev_nat
            .insert(&id, &v, 0)
            .map_err(|e| Error::map(names::REV_NAT_V4, e))
    }
    fn del_rev_nat(&mut self, id: u16) -> Result<()> {
        deleted(names::REV_NAT_V4, self.rev_nat.remove(&id))
    }
    fn del_affinity(&mut self, k: &AffinityKey) -> Result<()> {
        deleted(names::AFFINITY, self.affinity.remove(k))
    }
    fn put_src_range(&mut self, rev_nat_id: u16, cidr: Cidr4) -> Result<()> {
        let key = codec::src_range_key(rev_nat_id, cidr);
        self.src_ranges
            .insert(&key, &1u8, 0)
            .map_err(|e| Error::map(names::SRC_RANGE_V4, e))
    }
    fn del_src_range(&mut self, rev_nat_id: u16, cidr: Cidr4) -> Result<()> {
        deleted(
            names::SRC_RANGE_V4,
            self.src_ranges
                .remove(&codec::src_range_key(rev_nat_id, cidr)),
        )
    }
    fn src_ranges(&self) -> Vec<(u16, Cidr4)> {
        self.src_ranges
            .keys()
            .filter_map(Result::ok)
            .map(|k| codec::src_range_of(&k))
            .collect()
    }
    fn put_maglev(&mut self, key: u32, backend_id: u32) -> Result<()> {
        self.maglev
            .insert(&key, &backend_id, 0)
            .map_err(|e| Error::map(names::MAGLEV, e))
    }
    fn del_maglev(&mut self, key: u32) -> Result<()> {
        deleted(names::MAGLEV, self.maglev.remove(&key))
    }
    fn maglev_entries(&self) -> Vec<(u32, u32)> {
        all(&self.maglev)
    }
    fn put_member(&mut self, k: Member4Key, backend_id: u32) -> Result<()> {
        self.members
            .insert(&k, &backend_id, 0)
            .map_err(|e| Error::map(names::MEMBERS_V4, e))
    }
    fn del_member(&mut self, k: &Member4Key) -> Result<()> {
        deleted(names::MEMBERS_V4, self.members.remove(k))
    }
    fn members(&self) -> Vec<(Member4Key, u32)> {
        all(&self.members)
    }
}
