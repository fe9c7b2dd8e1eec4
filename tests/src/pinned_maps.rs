//! What ferry's pinned maps hold, read as `ferry services` reads them (the pins opened
//! read-only with `Maps::open_pinned`, keys and values decoded by the agent's codec) and
//! checked against a walk of each map key by key, in two forms for comparing two agents'
//! work:
//!
//! - [`PinnedMaps::entries`]: every entry exactly, ids included. Each field of the ABI structs
//!   is shown, their explicit padding too, and they have no implicit padding (agent-common
//!   asserts their sizes), so equal entries are equal bytes.
//! - [`PinnedMaps::id_free`]: what each frontend serves, with ids resolved to the addresses
//!   they stand for, plus every map's entry count, so that two agents that numbered things
//!   differently compare equal and a leaked entry still shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{Debug, Write as _},
    path::Path,
};

use agent_common::{backend_flags, maps as names};
use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use ferry::{
    cmd::services::ServicesView,
    datapath::{
        Maps,
        codec::{self, BackendValue, MemberKey, RevNatValue, SvcKey},
        lbmaps::LbMaps,
        snapshot::KernelState,
    },
    model::FrontendKey,
    paths::PinDir,
};

/// What an entry belongs to, for telling which Service a change touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A service-map entry (slot 0 or a backend slot) of this frontend.
    Frontend(FrontendKey),
    /// The backend-map entry of this id.
    Backend(u32),
    /// Everything keyed by a rev-NAT id: its own entry, source ranges, the Maglev table,
    /// DSR memberships, affinity.
    RevNat(u16),
    /// The node's settings, SNAT addresses and the cluster's node addresses.
    Node,
    /// A key no agent writes (undecodable).
    Stray,
}

/// One map entry, shown whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub map: &'static str,
    pub key: String,
    pub value: String,
    pub owner: Owner,
}

impl Entry {
    pub fn line(&self) -> String {
        format!("{} {} => {}", self.map, self.key, self.value)
    }
}

/// The maps ferry programs (the load-balancing maps and the node's), read at one moment.
/// Traffic-driven maps (conntrack, socket reverse translation, counters) are left out.
pub struct PinnedMaps {
    pub state: KernelState,
    pub entries: Vec<Entry>,
    members: Vec<(MemberKey, u32)>,
    maglev: BTreeMap<u16, BTreeMap<u32, u32>>,
    nodes: Vec<u32>,
    node_addr: Vec<(u32, u32)>,
    nodes6: Vec<[u32; 4]>,
    node_addr6: Vec<(u32, [u32; 4])>,
}

impl PinnedMaps {
    /// Opens the pins under `pin_dir` read-only and reads them (panics if it cannot: the
    /// test expects an agent's state there).
    pub fn read(pin_dir: &Path) -> PinnedMaps {
        let maps = Maps::open_pinned(&PinDir::new(pin_dir))
            .unwrap_or_else(|e| panic!("opening the pinned maps in {}: {e}", pin_dir.display()));
        let state = KernelState::read(&maps);
        let mut entries = Vec::new();
        let mut push = |map, key: String, value: String, owner| {
            entries.push(Entry {
                map,
                key,
                value,
                owner,
            })
        };
        // The agent's reader returns both families; each family's map is walked on its own.
        let (mut svc4, mut svc6) = (Vec::new(), Vec::new());
        for (k, v) in maps.services() {
            match k {
                SvcKey::V4(k) => svc4.push((k, v)),
                SvcKey::V6(k) => svc6.push((k, v)),
            }
        }
        for (k, v) in walk(names::SERVICES_V4, &maps.services, svc4) {
            let owner = codec::frontend_key(&SvcKey::V4(k)).map_or(Owner::Stray, Owner::Frontend);
            push(
                names::SERVICES_V4,
                format!("{k:?}"),
                format!("{v:?}"),
                owner,
            );
        }
        for (k, v) in walk(names::SERVICES_V6, &maps.services6, svc6) {
            let owner = codec::frontend_key(&SvcKey::V6(k)).map_or(Owner::Stray, Owner::Frontend);
            push(
                names::SERVICES_V6,
                format!("{k:?}"),
                format!("{v:?}"),
                owner,
            );
        }
        let (mut be4, mut be6) = (Vec::new(), Vec::new());
        for (id, v) in maps.backends() {
            match v {
                BackendValue::V4(v) => be4.push((id, v)),
                BackendValue::V6(v) => be6.push((id, v)),
            }
        }
        for (id, v) in walk(names::BACKENDS_V4, &maps.backends, be4) {
            push(
                names::BACKENDS_V4,
                id.to_string(),
                format!("{v:?}"),
                Owner::Backend(id),
            );
        }
        for (id, v) in walk(names::BACKENDS_V6, &maps.backends6, be6) {
            push(
                names::BACKENDS_V6,
                id.to_string(),
                format!("{v:?}"),
                Owner::Backend(id),
            );
        }
        let (mut rev4, mut rev6) = (Vec::new(), Vec::new());
        for (id, v) in maps.rev_nats() {
            match v {
                RevNatValue::V4(v) => rev4.push((id, v)),
                RevNatValue::V6(v) => rev6.push((id, v)),
            }
        }
        for (id, v) in walk(names::REV_NAT_V4, &maps.rev_nat, rev4) {
            push(
                names::REV_NAT_V4,
                id.to_string(),
                format!("{v:?}"),
                Owner::RevNat(id),
            );
        }
        for (id, v) in walk(names::REV_NAT_V6, &maps.rev_nat6, rev6) {
            push(
                names::REV_NAT_V6,
                id.to_string(),
                format!("{v:?}"),
                Owner::RevNat(id),
            );
        }
        for k in maps.src_ranges.keys().filter_map(Result::ok) {
            let value = maps
                .src_ranges
                .get(&k, 0)
                .map_or_else(|e| e.to_string(), |v| v.to_string());
            let (rev, _) = codec::src_range_of(&k);
            push(
                names::SRC_RANGE_V4,
                format!("prefix_len {} {:?}", k.prefix_len(), k.data()),
                value,
                Owner::RevNat(rev),
            );
        }
        for k in maps.src_ranges6.keys().filter_map(Result::ok) {
            let value = maps
                .src_ranges6
                .get(&k, 0)
                .map_or_else(|e| e.to_string(), |v| v.to_string());
            let (rev, _) = codec::src_range6_of(&k);
            push(
                names::SRC_RANGE_V6,
                format!("prefix_len {} {:?}", k.prefix_len(), k.data()),
                value,
                Owner::RevNat(rev),
            );
        }
        let (mut mem4, mut mem6) = (Vec::new(), Vec::new());
        for (k, id) in maps.members() {
            match k {
                MemberKey::V4(k) => mem4.push((k, id)),
                MemberKey::V6(k) => mem6.push((k, id)),
            }
        }
        let mut members: Vec<(MemberKey, u32)> = Vec::new();
        for (k, id) in walk(names::MEMBERS_V4, &maps.members, mem4) {
            members.push((MemberKey::V4(k), id));
        }
        for (k, id) in walk(names::MEMBERS_V6, &maps.members6, mem6) {
            members.push((MemberKey::V6(k), id));
        }
        for (k, id) in &members {
            let map = match k {
                MemberKey::V4(_) => names::MEMBERS_V4,
                MemberKey::V6(_) => names::MEMBERS_V6,
            };
            push(
                map,
                format!("{k:?}"),
                id.to_string(),
                codec::member_of(k).map_or(Owner::Stray, |(rev, _)| Owner::RevNat(rev)),
            );
        }
        let mut maglev: BTreeMap<u16, BTreeMap<u32, u32>> = BTreeMap::new();
        for (key, id) in walk(names::MAGLEV, &maps.maglev, maps.maglev_entries()) {
            let (rev, index) = codec::maglev_index(key);
            maglev.entry(rev).or_default().insert(index as u32, id);
            push(
                names::MAGLEV,
                key.to_string(),
                id.to_string(),
                Owner::RevNat(rev),
            );
        }
        for (k, v) in walk(names::AFFINITY, &maps.affinity, maps.affinity()) {
            push(
                names::AFFINITY,
                format!("{k:?}"),
                format!("{v:?}"),
                // A host-order field, read as the programmer reads it.
                Owner::RevNat(k.rev_nat_id),
            );
        }
        let nodes: Vec<u32> = maps.nodes.keys().filter_map(Result::ok).collect();
        for ip in &nodes {
            let v = maps
                .nodes
                .get(ip, 0)
                .map_or_else(|e| e.to_string(), |v| v.to_string());
            push(names::NODES_V4, ip.to_string(), v, Owner::Node);
        }
        let node_addr: Vec<(u32, u32)> = maps.node_addr.iter().filter_map(Result::ok).collect();
        for (ifindex, ip) in &node_addr {
            push(
                names::NODE_ADDR_V4,
                ifindex.to_string(),
                ip.to_string(),
                Owner::Node,
            );
        }
        let nodes6: Vec<[u32; 4]> = maps.nodes6.keys().filter_map(Result::ok).collect();
        for ip in &nodes6 {
            let v = maps
                .nodes6
                .get(ip, 0)
                .map_or_else(|e| e.to_string(), |v| v.to_string());
            push(names::NODES_V6, format!("{ip:?}"), v, Owner::Node);
        }
        let node_addr6: Vec<(u32, [u32; 4])> =
            maps.node_addr6.iter().filter_map(Result::ok).collect();
        for (ifindex, ip) in &node_addr6 {
            push(
                names::NODE_ADDR_V6,
                ifindex.to_string(),
                format!("{ip:?}"),
                Owner::Node,
            );
        }
        let config = maps
            .node_config
            .get(&0, 0)
            .map_or_else(|e| e.to_string(), |c| format!("{c:?}"));
        push(names::NODE_CONFIG, "0".into(), config, Owner::Node);
        entries.sort_by(|a, b| (a.map, &a.key).cmp(&(b.map, &b.key)));
        PinnedMaps {
            state,
            entries,
            members,
            maglev,
            nodes,
            node_addr,
            nodes6,
            node_addr6,
        }
    }

    /// Every entry as one line, sorted.
    pub fn lines(&self) -> Vec<String> {
        self.entries.iter().map(Entry::line).collect()
    }

    /// How many entries `map` holds.
    pub fn count(&self, map: &str) -> usize {
        self.entries.iter().filter(|e| e.map == map).count()
    }

    /// A backend as the frontends see it: address, state, locality (or why it cannot be
    /// resolved).
    fn backend(&self, id: u32) -> String {
        match self.state.backends.get(&id) {
            Some(b) => resolved(b),
            None => format!("missing backend #{id}"),
        }
    }

    /// The service address a rev-NAT id restores (or why it cannot be resolved).
    fn rev_nat(&self, id: u16) -> String {
        match self.state.rev_nat.get(&id) {
            Some(v) => {
                let (ip, port) = codec::rev_nat_target(v);
                format!("{ip}:{port}")
            }
            None => format!("missing rev-NAT #{id}"),
        }
    }

    /// The state without ids, as sorted lines: each frontend of `view` (the kernel's,
    /// joined with the agent's status) with its backends resolved, the agent's diagnostics,
    /// every map's entry count, and each id-keyed entry under the address it stands for.
    pub fn id_free(&self, view: &ServicesView) -> Vec<String> {
        let mut out = Vec::new();
        for f in &view.frontends {
            let mut backends: Vec<String> = f.backends.iter().map(|b| self.backend(b.id)).collect();
            backends.sort();
            let mut line = format!(
                "frontend {}:{}/{} {:?} flags {:?} affinity {:?} ranges {:?} status {}",
                f.address,
                f.port,
                f.protocol,
                f.scope,
                f.flags,
                f.affinity_timeout,
                f.source_ranges,
                f.status
            );
            if let Some(e) = &f.error {
                let _ = write!(line, " error {e:?}");
            }
            let _ = write!(
                line,
                " service {} backends {backends:?}",
                f.service.as_deref().unwrap_or("-")
            );
            out.push(line);
        }
        out.extend(view.diagnostics.iter().map(|d| format!("diagnostic {d}")));
        for map in [
            names::SERVICES_V4,
            names::BACKENDS_V4,
            names::REV_NAT_V4,
            names::MEMBERS_V4,
            names::SRC_RANGE_V4,
            names::MAGLEV,
            names::AFFINITY,
            names::NODES_V4,
            names::NODE_ADDR_V4,
            names::SERVICES_V6,
            names::BACKENDS_V6,
            names::REV_NAT_V6,
            names::SRC_RANGE_V6,
            names::NODES_V6,
            names::NODE_ADDR_V6,
        ] {
            out.push(format!("count {map} {}", self.count(map)));
        }
        out.extend(
            self.state
                .backends
                .values()
                .map(|b| format!("backend {}", resolved(b))),
        );
        out.extend(
            self.state
                .rev_nat
                .keys()
                .map(|&id| format!("rev-nat {}", self.rev_nat(id))),
        );
        for (rev, cidrs) in &self.state.src_ranges {
            for c in cidrs {
                out.push(format!("source-range {} {c}", self.rev_nat(*rev)));
            }
        }
        for (k, id) in &self.members {
            let line = match codec::member_of(k) {
                Some((rev, b)) => {
                    format!("member {} {b} -> {}", self.rev_nat(rev), self.backend(*id))
                }
                None => format!("member undecodable {k:?} -> {}", self.backend(*id)),
            };
            out.push(line);
        }
        for (rev, table) in &self.maglev {
            // The sequence of backends, as a fingerprint (16,381 entries), and who is in it.
            let seq: Vec<String> = table.values().map(|&id| self.backend(id)).collect();
            let who: BTreeSet<&String> = seq.iter().collect();
            let contiguous = table.keys().copied().eq(0..table.len() as u32);
            out.push(format!(
                "maglev {} entries {} contiguous {contiguous} fnv {:016x} backends {who:?}",
                self.rev_nat(*rev),
                table.len(),
                fnv1a(seq.join(",").as_bytes())
            ));
        }
        out.extend(
            self.nodes
                .iter()
                .map(|&ip| format!("cluster-node {}", codec::ip_of(ip))),
        );
        out.extend(
            self.node_addr
                .iter()
                .map(|&(ifindex, ip)| format!("snat ifindex {ifindex} {}", codec::ip_of(ip))),
        );
        out.extend(
            self.nodes6
                .iter()
                .map(|&ip| format!("cluster-node {}", codec::ip6_of(ip))),
        );
        out.extend(
            self.node_addr6
                .iter()
                .map(|&(ifindex, ip)| format!("snat ifindex {ifindex} {}", codec::ip6_of(ip))),
        );
        out.extend(
            self.entries
                .iter()
                .filter(|e| e.map == names::NODE_CONFIG)
                .map(Entry::line),
        );
        out.sort();
        out
    }
}

/// Every entry of `map`, walked key by key through aya rather than by the agent's batch
/// reader (`LbMaps`, which adoption and `ferry services` use, under test here too); panics
/// if the two disagree.
fn walk<K: Pod + Debug, V: Pod + Debug>(
    name: &str,
    map: &HashMap<MapData, K, V>,
    agents: Vec<(K, V)>,
) -> Vec<(K, V)> {
    let walked: Vec<(K, V)> = map
        .iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("walking {name}: {e}"));
    let text = |xs: &[(K, V)]| {
        let mut lines: Vec<String> = xs.iter().map(|e| format!("{e:?}")).collect();
        lines.sort();
        lines
    };
    let (a, b) = (text(&walked), text(&agents));
    assert!(
        a == b,
        "{name}: a key-by-key walk (-) and the agent's reader (+) differ:\n{}",
        diff(&a, &b, 20)
    );
    walked
}

/// A backend entry without its id.
fn resolved(b: &BackendValue) -> String {
    let addr = codec::backend_addr(b).map_or_else(|| format!("{b:?}"), |a| a.to_string());
    let local = if b.flags() & backend_flags::LOCAL != 0 {
        " local"
    } else {
        ""
    };
    format!("{addr} {}{local}", codec::backend_state_name(b.state()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The lines only one side has, as a readable diff (`-` only in `a`, `+` only in `b`),
/// counting repeated lines; at most `limit` lines, then how many more.
pub fn diff(a: &[String], b: &[String], limit: usize) -> String {
    fn count(xs: &[String]) -> BTreeMap<&str, i64> {
        let mut m: BTreeMap<&str, i64> = BTreeMap::new();
        for x in xs {
            *m.entry(x.as_str()).or_default() += 1;
        }
        m
    }
    let (ca, cb) = (count(a), count(b));
    let keys: BTreeSet<&str> = ca.keys().chain(cb.keys()).copied().collect();
    let mut out = Vec::new();
    for k in keys {
        let n = ca.get(k).copied().unwrap_or(0) - cb.get(k).copied().unwrap_or(0);
        let sign = if n > 0 { '-' } else { '+' };
        for _ in 0..n.abs() {
            out.push(format!("{sign} {k}"));
        }
    }
    let more = out.len().saturating_sub(limit);
    out.truncate(limit);
    if more > 0 {
        out.push(format!("... and {more} more"));
    }
    out.join("\n")
}
