//! ferry's north-south TC programs (`ferry_tc_in`, `ferry_tc_out`, `ferry_tc_pod`) and `ferry_xdp` run with
//! BPF_PROG_TEST_RUN on hand-built IPv4 and IPv6 frames, as tables of rows
//! (`ferry_tests::progtest::table`): each row is one frame through one program with its
//! verdict, the frame it must become (byte for byte, every checksum computed from scratch,
//! RFC 1071) or "unchanged", the counters it moves and the conntrack entries after it.
//!
//! Each scenario loads the whole object into the real kernel (so the verifier accepts every
//! program) with its maps pinned in a private bpffs, fills the maps as the agent would, and runs
//! the programs without attaching them anywhere, in a network namespace of its own. The skb of a
//! test run sits on that namespace's loopback device: ifindex 1 is "the device" the node
//! address maps are keyed by. One test per table and family runs the table's scenarios
//! (`nat_v4`, `nat_v6`, ...; filter `_v6` for the IPv6 ones).
//!
//! Adding a case is adding a row to the table of its topic: `nat` (DNAT, SNAT, conntrack,
//! backend choice, checksum states), `passthrough` (what is not ferry's), `fib` (routed
//! translations), `icmp` (errors about flows), `reject` (no endpoints, budgets), `dsr` (direct
//! server return on both nodes), `hostile` (forged options, clashing SYNs, lost flows), `xdp`
//! (the XDP fast path beside TC). A
//! behaviour both families share is one scenario with `families: BOTH`, its frames built by the
//! same builders from each family's address plan; scenarios for one family are those whose
//! frames or expectations only exist there (IPv4 options, IPv6 extension headers, ND).

mod dsr;
mod fib;
mod hostile;
mod icmp;
mod nat;
mod passthrough;
mod pod;
mod reject;
mod xdp;

use std::net::{IpAddr, SocketAddr};

use agent_common::{
    MAGLEV_TABLE_SIZE, NodeConfig, affinity_client, affinity_id_v6, ct_dir, ct_flags, flow_hash_v4,
    flow_hash_v6, net::port_to_raw, node_flags, scope, stats::Counter, svc_flags,
};
use ferry_tests::{
    progtest::{
        ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, Ip6Opts,
        NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_ROUTING, ProgTest, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, ethernet,
        fixture::*,
        fold, fragment_header,
        frames::*,
        icmp, icmp6, ipv6, isolated,
        net::*,
        next_hop, options_header, parse_ipv4, parse_ipv6, pseudo_sum, pseudo_sum_v6,
        routing_header, sum,
        table::{Hook::*, Verdict::*, *},
    },
    require_root,
};

/// Runs `ip` commands in the scenario's namespace.
fn ip_cmds(cmds: &[&[&str]]) {
    next_hop::ip_cmds(cmds).unwrap();
}

/// Forwarding on in the scenario's namespace.
fn forwarding(family: Family) {
    next_hop::forwarding(family).unwrap();
}

/// The FIB's next hop (ferry_tests::progtest::next_hop): `d0` (`mtu` if given), the node's
/// address on it, a resolved gateway, `routes` via the gateway, and forwarding on.
fn next_hop(n: &Net, mtu: Option<&str>, routes: &[&str]) {
    next_hop::device(mtu).unwrap();
    next_hop::routes(n.family, routes).unwrap();
}

/// Node B's pods: a device `p0` holding the first address of the remote pods' subnet, so
/// REMOTE_POD is reached directly through another device than the packets' (a pod of this
/// node); forwarding on.
fn pods_behind_p0(n: &Net) {
    ip_cmds(&[
        &["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
        &["link", "set", "p1", "up"],
        &["link", "set", "p0", "up"],
    ]);
    if is_v6(n) {
        ip_cmds(&[&[
            "-6",
            "addr",
            "add",
            "fd00:244:1::1/64",
            "dev",
            "p0",
            "nodad",
        ]]);
    } else {
        ip_cmds(&[&["addr", "add", "10.244.1.1/24", "dev", "p0"]]);
    }
    forwarding(n.family);
}

/// DSR mode on this node (the rest of the node config at its defaults).
fn dsr_mode(f: &mut Fixture) {
    f.node_config(NodeConfig {
        flags: node_flags::DSR,
        ..NodeConfig::default()
    });
}

/// An IPv6 scenario.
fn is_v6(n: &Net) -> bool {
    n.family == Family::V6
}

/// The one test that is no packet: the whole object passes the verifier.
#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn whole_object_passes_the_verifier() {
    require_root!();
    isolated(|| {
        let mut t = ProgTest::load(
            ferry::datapath::loader::ebpf_object(),
            &[TC_IN, TC_OUT, TC_POD, XDP],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        // The socket-layer programs too: one object, one verifier verdict for all of it.
        for (name, prog) in t.ebpf.programs_mut() {
            if let aya::programs::Program::CgroupSockAddr(p) = prog {
                p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
            }
        }
    });
}

/// One `#[test]` per family of a table.
macro_rules! table_tests {
    ($table:expr, $($name:ident: $family:ident),+) => {
        $(
            #[test]
            #[ignore = "kernel test: needs root (cargo xtask test runs it)"]
            fn $name() {
                ferry_tests::require_root!();
                ferry_tests::progtest::table::run_table(
                    $table,
                    ferry_tests::progtest::net::Family::$family,
                );
            }
        )+
    };
}
pub(crate) use table_tests;
