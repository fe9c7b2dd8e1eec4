//! Typed handles on ferry's maps, taken from a freshly loaded object or
//! opened read-only from their pins (for `ferry services`, `stats`,
//! `conntrack` and the metrics scrape).

use agent_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Ct4Key, Ct4Value, Ct6Key, Ct6Value, Ip6,
    Member4Key, Member6Key, NodeConfig, RevNat4, RevNat6, SockRev4, SockRev4Key, SrcRange4,
    SrcRange6, Svc4Key, Svc6Key, SvcValue, maps as names,
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, lpm_trie::LpmTrie},
};

use super::sys;
use crate::{
    error::{Error, Result},
    paths::PinDir,
};

pub struct Maps {
    pub services: HashMap<MapData, Svc4Key, SvcValue>,
    pub backends: HashMap<MapData, u32, Backend4>,
    /// `backends` as an array by id, for the conntrack hit path's check
    /// (agent_common::maps::BACKEND_LIVE_V4); written with it. None when
    /// opened read-only (readers do not need it; an older agent's pins
    /// lack it).
    pub backend_live: Option<Array<MapData, Backend4>>,
    /// `backends6` as an array by id (agent_common::maps::BACKEND_LIVE_V6),
    /// as `backend_live`.
    pub backend_live6: Option<Array<MapData, Backend6>>,
    pub rev_nat: HashMap<MapData, u16, RevNat4>,
    pub sock_rev: HashMap<MapData, SockRev4Key, SockRev4>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub stats: PerCpuArray<MapData, u64>,
    pub ct: HashMap<MapData, Ct4Key, Ct4Value>,
    pub src_ranges: LpmTrie<MapData, SrcRange4, u8>,
    pub maglev: HashMap<MapData, u32, u32>,
    pub node_addr: HashMap<MapData, u32, u32>,
    pub node_config: Array<MapData, NodeConfig>,
    /// The cluster's node addresses (northsouth::sync_cluster_nodes).
    pub nodes: HashMap<MapData, u32, u8>,
    /// Backends of the exposed frontends (written by the programmer).
    pub members: HashMap<MapData, Member4Key, u32>,
    /// The IPv6 maps (agent_common::lb6), same roles.
    pub services6: HashMap<MapData, Svc6Key, SvcValue>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub rev_nat6: HashMap<MapData, u16, RevNat6>,
    pub src_ranges6: LpmTrie<MapData, SrcRange6, u8>,
    pub ct6: HashMap<MapData, Ct6Key, Ct6Value>,
    pub node_addr6: HashMap<MapData, u32, Ip6>,
    pub nodes6: HashMap<MapData, Ip6, u8>,
    pub members6: HashMap<MapData, Member6Key, u32>,
}

impl Maps {
    /// Takes the maps out of a loaded object (they stay pinned).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(Error::MissingObject {
                what: "map",
                name: name.to_string(),
            })
        };
        Ok(Self {
            services: typed(names::SERVICES_V4, take(names::SERVICES_V4)?)?,
            backends: typed(names::BACKENDS_V4, take(names::BACKENDS_V4)?)?,
            backend_live: Some(typed(
                names::BACKEND_LIVE_V4,
                take(names::BACKEND_LIVE_V4)?,
            )?),
            backend_live6: Some(typed(
                names::BACKEND_LIVE_V6,
                take(names::BACKEND_LIVE_V6)?,
            )?),
            rev_nat: typed(names::REV_NAT_V4, take(names::REV_NAT_V4)?)?,
            sock_rev: typed(names::SOCK_REV_V4, take(names::SOCK_REV_V4)?)?,
            affinity: typed(names::AFFINITY, take(names::AFFINITY)?)?,
            stats: typed(names::STATS, take(names::STATS)?)?,
            ct: typed(names::CT_V4, take(names::CT_V4)?)?,
            src_ranges: typed(names::SRC_RANGE_V4, take(names::SRC_RANGE_V4)?)?,
            maglev: typed(names::MAGLEV, take(names::MAGLEV)?)?,
            node_addr: typed(names::NODE_ADDR_V4, take(names::NODE_ADDR_V4)?)?,
            node_config: typed(names::NODE_CONFIG, take(names::NODE_CONFIG)?)?,
            nodes: typed(names::NODES_V4, take(names::NODES_V4)?)?,
            members: typed(names::MEMBERS_V4, take(names::MEMBERS_V4)?)?,
            services6: typed(names::SERVICES_V6, take(names::SERVICES_V6)?)?,
            backends6: typed(names::BACKENDS_V6, take(names::BACKENDS_V6)?)?,
            rev_nat6: typed(names::REV_NAT_V6, take(names::REV_NAT_V6)?)?,
            src_ranges6: typed(names::SRC_RANGE_V6, take(names::SRC_RANGE_V6)?)?,
            ct6: typed(names::CT_V6, take(names::CT_V6)?)?,
            node_addr6: typed(names::NODE_ADDR_V6, take(names::NODE_ADDR_V6)?)?,
            nodes6: typed(names::NODES_V6, take(names::NODES_V6)?)?,
            members6: typed(names::MEMBERS_V6, take(names::MEMBERS_V6)?)?,
        })
    }

    /// Fills the backend arrays from the backend maps ([`super::backend_live`]).
    pub fn fill_backend_live(&mut self) -> Result<()> {
        if let Some(live) = &mut self.backend_live {
            super::backend_live::fill(
                live,
                &self.backends,
                (names::BACKENDS_V4, names::BACKEND_LIVE_V4),
            )?;
        }
        if let Some(live) = &mut self.backend_live6 {
            super::backend_live::fill(
                live,
                &self.backends6,
                (names::BACKENDS_V6, names::BACKEND_LIVE_V6),
            )?;
        }
        Ok(())
    }

    /// Opens the pinned maps of a running (or stopped) agent, read-only: the
    /// descriptors come from BPF_OBJ_GET with BPF_F_RDONLY, so the kernel
    /// refuses every update through them (EPERM), and read access to the pins
    /// is all a reader needs.
    pub fn open_pinned(dir: &PinDir) -> Result<Self> {
        let open = |name: &'static str| -> Result<Map> {
            let path = dir.map(name);
            let fd = sys::obj_get(&path, sys::READ_ONLY).map_err(|source| Error::Io {
                context: format!("opening map {name} read-only at {}", path.display()),
                source,
            })?;
            let data = MapData::from_fd(fd).map_err(|e| Error::map(name, e))?;
            Map::from_map_data(data).map_err(|e| Error::map(name, e))
        };
        Ok(Self {
            services: typed(names::SERVICES_V4, open(names::SERVICES_V4)?)?,
            backends: typed(names::BACKENDS_V4, open(names::BACKENDS_V4)?)?,
            backend_live: None,
            backend_live6: None,
            rev_nat: typed(names::REV_NAT_V4, open(names::REV_NAT_V4)?)?,
            sock_rev: typed(names::SOCK_REV_V4, open(names::SOCK_REV_V4)?)?,
            affinity: typed(names::AFFINITY, open(names::AFFINITY)?)?,
            stats: typed(names::STATS, open(names::STATS)?)?,
            ct: typed(names::CT_V4, open(names::CT_V4)?)?,
            src_ranges: typed(names::SRC_RANGE_V4, open(names::SRC_RANGE_V4)?)?,
            maglev: typed(names::MAGLEV, open(names::MAGLEV)?)?,
            node_addr: typed(names::NODE_ADDR_V4, open(names::NODE_ADDR_V4)?)?,
            node_config: typed(names::NODE_CONFIG, open(names::NODE_CONFIG)?)?,
            nodes: typed(names::NODES_V4, open(names::NODES_V4)?)?,
            members: typed(names::MEMBERS_V4, open(names::MEMBERS_V4)?)?,
            services6: typed(names::SERVICES_V6, open(names::SERVICES_V6)?)?,
            backends6: typed(names::BACKENDS_V6, open(names::BACKENDS_V6)?)?,
            rev_nat6: typed(names::REV_NAT_V6, open(names::REV_NAT_V6)?)?,
            src_ranges6: typed(names::SRC_RANGE_V6, open(names::SRC_RANGE_V6)?)?,
            ct6: typed(names::CT_V6, open(names::CT_V6)?)?,
            node_addr6: typed(names::NODE_ADDR_V6, open(names::NODE_ADDR_V6)?)?,
            nodes6: typed(names::NODES_V6, open(names::NODES_V6)?)?,
            members6: typed(names::MEMBERS_V6, open(names::MEMBERS_V6)?)?,
        })
    }

    /// Sum of each datapath counter over all CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Vec<(agent_common::stats::Counter, u64)> {
        agent_common::stats::Counter::ALL
            .iter()
            .map(|&c| {
                let total = self
                    .stats
                    .get(&(c as u32), 0)
                    .map(|v| v.iter().copied().sum::<u64>())
                    .unwrap_or(0);
                (c, total)
            })
            .collect()
    }
}

fn typed<T>(name: &'static str, map: Map) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|e| Error::map(name, e))
}
