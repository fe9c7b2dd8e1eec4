//! North-south TCP/UDP: NodePorts, externalIPs and LoadBalancer IPs on the
//! node's devices.
//!
//! A packet from outside is tracked or starts a flow. A new flow gets a
//! backend (affinity, Maglev or random), DNAT to it, and two conntrack
//! entries. With externalTrafficPolicy Local the backend (on this node) is
//! reached with the client's address kept: the pod sees who called. With
//! Cluster it is reached with SNAT to this node's address on the ingress
//! device, so its replies come back here to be translated (kube-proxy's
//! masquerade): a remote backend's arrive on a node device (`ferry_tc_in`),
//! a local backend's on the device the node reaches it through
//! (`ferry_tc_pod`).
//!
//! With `node_flags::DSR` (`--lb-mode dsr`) a remote backend is reached
//! with the client's address kept instead, the frontend carried to the
//! backend's node in an IP option, and that node answers the client
//! directly: see dsr.rs, which also handles the receiving side (packets
//! carrying the option for a backend on this node).
//!
//! TCP packets other than a SYN that match no flow start one all the same
//! (as Cilium does), counted `NsCtLostFlow`: after the conntrack entries
//! were lost (LRU eviction), the flow hash sends the flow back to the
//! backend that has it (select.rs) while the backends are unchanged; else
//! the wrong backend answers with a RST, which ends the connection as
//! cleanly as anything could. New flows made while the conntrack map is
//! nearly full are counted too (`NsNewFlowCtFull`).

use agent_common::{
    CT_PRESSURE_PERMILLE, Ct4Value, SrcRange4, Svc4Key, SvcValue, affinity_client, backend_flags,
    ct_dir, ct_flags, flow_hash_v4, node_flags, proto, scope, stats::Counter, svc_flags,
};
use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key, programs::TcContext};

use crate::{
    csum, ct, dsr, fib, icmp,
    maps::{CT_V4, NODE_ADDR_V4, NODES_V4, SRC_RANGE_V4, count},
    parse::{self, Ipv4, L4, Tuple},
    select::{self, Client},
    tc::verdict,
};

/// Frontend kinds that are exposed on the node's devices. ClusterIPs are
/// served at the socket layer, and here only with
/// `node_flags::EXTERNAL_CLUSTER_IP`.
const EXPOSED: u16 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;

/// A TCP/UDP packet arriving on a device.
#[inline(always)]
pub fn ingress(ctx: &TcContext, ip: &Ipv4) -> i32 {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ctx, ip)) else {
        return verdict::PASS;
    };

    // The client's direction of a tracked flow: the hot path, one lookup
    // (and one for the backend, below).
    let fwd_key = ct::key(&t, ct_dir::FORWARD);
    if let Some(entry) = ct::lookup(&fwd_key) {
        // SAFETY: a live map value, copied out.
        let v = unsafe { *entry };
        if backend_still_there(&v) {
            ct::touch(entry, select::now_seconds(), parse::tcp_flags(ctx, ip));
            count(Counter::NsTracked);
            return translate_forward(ctx, &l4, &t, &v);
        }
        // The backend is gone (or its id now names another endpoint):
        // forget the flow and choose again, so that UDP "flows" (DNS, say)
        // move to a live backend instead of going nowhere until idle.
        ct::remove_flow(&fwd_key, &v);
    }

    // A remote backend's reply to a SNAT port of ours.
    let cfg = ct::node_config();
    if let Some(v) = snat_reply(ctx, ip, &l4, &t, &cfg, false) {
        return v;
    }

    new_flow(ctx, ip, &l4, &t, &cfg)
}

/// A TCP/UDP packet arriving from a pod (`ferry_tc_pod`, on the devices
/// the node reaches its local endpoints through): a local backend's reply
/// to the node address a masqueraded flow gave it. Anything else goes on
/// untouched (a local backend's other replies are translated as they leave
/// through a node device).
#[inline(always)]
pub fn from_pod(ctx: &TcContext, ip: &Ipv4) -> i32 {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ctx, ip)) else {
        return verdict::PASS;
    };
    snat_reply(ctx, ip, &l4, &t, &ct::node_config(), true).unwrap_or(verdict::PASS)
}

/// A reply to one of our SNAT ports, translated back to the frontend and
/// the client and forwarded; None when the packet is none. SNAT ports are
/// only ever taken from the configured range: anything else cannot be one,
/// which spares the lookup for most traffic. `masqueraded_only`: only
/// flows ferry gave a node address (the pod side, where a local backend's
/// unmasqueraded replies to clients also pass).
#[inline(always)]
fn snat_reply(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &L4,
    t: &Tuple,
    cfg: &agent_common::NodeConfig,
    masqueraded_only: bool,
) -> Option<i32> {
    if !ct::snat_ports(cfg).contains(t.dport) {
        return None;
    }
    let rkey = ct::key(t, ct_dir::REPLY);
    let entry = ct::lookup(&rkey)?;
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    if masqueraded_only && v.flags & ct_flags::SNAT == 0 {
        return None;
    }
    ct::touch(entry, select::now_seconds(), parse::tcp_flags(ctx, ip));
    count(Counter::NsTracked);
    if let Err(e) = rewrite_as(ctx, l4, t, &v) {
        return Some(e);
    }
    // From the frontend now: possibly a node address (NodePort).
    Some(fib::forward(ctx))
}

/// A TCP/UDP packet leaving through a device: a local backend's reply gets
/// the frontend back as its source. Nothing else is touched.
#[inline(always)]
pub fn egress(ctx: &TcContext, ip: &Ipv4) -> i32 {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ctx, ip)) else {
        return verdict::PASS;
    };
    let Some(entry) = ct::lookup(&ct::key(&t, ct_dir::REPLY)) else {
        return verdict::PASS;
    };
    let v = unsafe { *entry };
    ct::touch(entry, select::now_seconds(), parse::tcp_flags(ctx, ip));
    count(Counter::NsTracked);
    match rewrite_as(ctx, &l4, &t, &v) {
        Ok(()) => verdict::OK,
        Err(e) => e,
    }
}

/// A SYN straight to a pod from a (client, port) whose REPLY entry a
/// translated flow holds (the pod's answers would be rewritten to that
/// flow's frontend). A flow that is over is forgotten, both entries, so the
/// new connection goes untouched; a live one keeps its entries and the SYN
/// is dropped (`NsCtClashDrop`), as netfilter drops a SYN that clashes with
/// a live connection: a forged SYN cannot tear a flow down. Costs one
/// lookup per SYN that reaches no frontend.
#[inline(always)]
fn direct_syn(t: &Tuple) -> i32 {
    let rkey = agent_common::Ct4Key {
        saddr: t.daddr,
        daddr: t.saddr,
        sport: t.dport,
        dport: t.sport,
        proto: t.proto,
        dir: ct_dir::REPLY,
        _pad: [0; 2],
    };
    let Some(entry) = ct::lookup(&rkey) else {
        return verdict::PASS;
    };
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    if ct::reply_flow_over(&rkey, &v, select::now_seconds()) {
        ct::forget_reply_flow(&rkey, &v);
        verdict::PASS
    } else {
        count(Counter::NsCtClashDrop);
        verdict::SHOT
    }
}

/// Rewrites the packet's addresses and ports to the ones a conntrack entry names.
#[inline(always)]
fn rewrite_as(ctx: &TcContext, l4: &L4, t: &Tuple, v: &Ct4Value) -> Result<(), i32> {
    csum::rewrite(
        ctx,
        l4,
        t,
        v.nat_saddr,
        v.nat_sport,
        v.nat_daddr,
        v.nat_dport,
    )
}

/// The flow's backend still exists with the address it was given.
#[inline(always)]
fn backend_still_there(v: &Ct4Value) -> bool {
    matches!(select::lookup_backend(v.backend_id),
        Some(b) if b.addr == v.nat_daddr && b.port == v.nat_dport)
}

#[inline(always)]
fn translate_forward(ctx: &TcContext, l4: &L4, t: &Tuple, v: &Ct4Value) -> i32 {
    if v.flags & ct_flags::DSR != 0 {
        return dsr::forward(dsr::skb(ctx), v, false);
    }
    if let Err(e) = rewrite_as(ctx, l4, t, v) {
        return e;
    }
    if v.flags & ct_flags::SNAT != 0 {
        // From a node address now: see fib.rs.
        fib::forward(ctx)
    } else {
        verdict::OK
    }
}

/// A packet for no frontend: a DSR packet from another node, a connection
/// straight to a pod, or anything else the node receives.
#[inline(always)]
fn not_a_frontend(ctx: &TcContext, ip: &Ipv4, t: &Tuple, cfg: &agent_common::NodeConfig) -> i32 {
    // Only packets with IP options can carry a DSR option: the node's
    // ordinary traffic pays nothing more than this test.
    if ip.hdr.header_len() > parse::IPV4_MIN_HLEN {
        let v = dsr::receive(dsr::skb(ctx), cfg.flags & node_flags::DSR != 0);
        if v != verdict::PASS {
            return v;
        }
    }
    if t.proto == proto::TCP && parse::tcp_flags(ctx, ip) & parse::TCP_SYN != 0 {
        return direct_syn(t);
    }
    verdict::PASS
}

/// A ClusterIP this node serves to outside clients (`--external-cluster-ip`).
#[inline(always)]
fn external_cluster_ip(svc: &SvcValue, cfg: &agent_common::NodeConfig) -> bool {
    svc.flags & svc_flags::CLUSTER_IP != 0 && cfg.flags & node_flags::EXTERNAL_CLUSTER_IP != 0
}

/// A packet no flow knows: a new flow if it is for an exposed frontend.
#[inline(always)]
fn new_flow(ctx: &TcContext, ip: &Ipv4, l4: &L4, t: &Tuple, cfg: &agent_common::NodeConfig) -> i32 {
    let key = Svc4Key {
        addr: t.daddr,
        port: t.dport,
        slot: 0,
        proto: t.proto,
        scope: scope::EXTERNAL,
        _pad: [0; 2],
    };
    let Some(svc) = select::lookup_svc(&key) else {
        return not_a_frontend(ctx, ip, t, cfg);
    };
    if svc.flags & EXPOSED == 0 && !external_cluster_ip(&svc, cfg) {
        return verdict::PASS;
    }
    // Before anything else, so that a denied client creates no state.
    if svc.flags & svc_flags::SOURCE_RANGES != 0 {
        let range_key = Key::new(
            agent_common::SRC_RANGE_PREFIX_BITS + 32,
            SrcRange4 {
                rev_nat_id: svc.rev_nat_id,
                _pad: 0,
                addr: t.saddr,
            },
        );
        if SRC_RANGE_V4.get(&range_key).is_none() {
            count(Counter::NsSourceRangeDrop);
            return verdict::SHOT;
        }
    }
    if svc.count == 0 {
        if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
            // externalTrafficPolicy Local, endpoints only elsewhere:
            // dropped, so the load balancer's health check decides.
            count(Counter::NsNoLocalDrop);
            return verdict::SHOT;
        }
        return icmp::reject(ctx, ip, cfg);
    }

    // A segment too short to hold its L4 checksum cannot be rewritten: dropped before any
    // conntrack or affinity state is made for it (found by the packet fuzzer).
    if ctx.load::<u16>(l4.csum_off).is_err() {
        count(Counter::NsNatFailed);
        return verdict::SHOT;
    }
    let client = Client {
        id: t.saddr as u64,
        kind: affinity_client::IPV4,
    };
    let hash = flow_hash_v4(t.saddr, t.daddr, t.sport, t.dport, t.proto);
    let Some(chosen) = select::choose(&key, &svc, client, Some(hash)) else {
        // The agent is mid-update; the client retransmits.
        count(Counter::BackendMiss);
        return verdict::SHOT;
    };
    let local = chosen.backend.flags & backend_flags::LOCAL != 0;
    // externalTrafficPolicy Cluster masquerades even to a backend on this
    // node, as kube-proxy does: only eTP Local and `--lb-mode dsr` keep the
    // client's address. A host-network backend (a node address) keeps it
    // too: kube-proxy's masquerade never sees locally delivered packets.
    let keep_client = local
        && (svc.flags & svc_flags::ETP_LOCAL != 0
            || cfg.flags & node_flags::DSR != 0
            || NODES_V4.get_ptr(&chosen.backend.addr).is_some());
    let tcp_flags = parse::tcp_flags(ctx, ip);
    if t.proto == proto::TCP && tcp_flags & parse::TCP_SYN == 0 {
        count(Counter::NsCtLostFlow);
    }
    // DSR to a remote backend when the option fits the first packet; else
    // SNAT, except for a TCP segment other than a SYN (a flow this node
    // lost, which the backend's node may still know): see dsr.rs.
    let mut fits = false;
    let mut dsr = false;
    // Not for a ClusterIP: a DSR option may only name an exposed frontend
    // (the backend's node checks it against ferry_memb4_v1).
    if !local && svc.flags & svc_flags::CLUSTER_IP == 0 && cfg.flags & node_flags::DSR != 0 {
        fits = dsr::option_fits(dsr::skb(ctx), chosen.backend.addr);
        dsr = fits;
        if !fits {
            count(Counter::NsDsrFallback);
            dsr = t.proto == proto::TCP && tcp_flags & parse::TCP_SYN == 0;
        }
    }
    let mut fwd = Ct4Value {
        nat_saddr: t.saddr,
        nat_daddr: chosen.backend.addr,
        nat_sport: t.sport,
        nat_dport: chosen.backend.port,
        backend_id: chosen.id,
        rev_nat_id: svc.rev_nat_id,
        flags: if keep_client {
            ct_flags::LOCAL
        } else if dsr {
            ct_flags::DSR
        } else if local {
            // Masqueraded: the reply comes back through ferry_tc_pod.
            ct_flags::SNAT | ct_flags::LOCAL
        } else {
            ct_flags::SNAT
        },
        tcp_flags,
        last_seen: select::now_seconds(),
    };
    let rev = Ct4Value {
        nat_saddr: t.daddr,
        nat_daddr: t.saddr,
        nat_sport: t.dport,
        nat_dport: t.sport,
        ..fwd
    };
    let fwd_key = ct::key(t, ct_dir::FORWARD);

    if keep_client {
        // No SNAT: the backend answers the client itself. FORWARD first,
        // so that of two CPUs racing on the flow's first packets one wins
        // and the other follows it.
        if CT_V4.insert(&fwd_key, &fwd, BPF_NOEXIST as u64).is_err() {
            return follow_winner(ctx, l4, t, &fwd_key);
        }
        let rkey = ct::reply_key(&fwd, t.proto);
        if let Err(e) = claim_reply(&rkey, &rev) {
            let _ = CT_V4.remove(&fwd_key);
            count(e);
            return verdict::SHOT;
        }
    } else if dsr {
        // FORWARD only: the replies do not come back through this node.
        if CT_V4.insert(&fwd_key, &fwd, BPF_NOEXIST as u64).is_err() {
            return follow_winner(ctx, l4, t, &fwd_key);
        }
        count_new_flow();
        return dsr::forward(dsr::skb(ctx), &fwd, fits);
    } else {
        let Some(node_addr) = NODE_ADDR_V4
            .get_ptr(&parse::ifindex(ctx))
            .map(|p| unsafe { *p })
        else {
            count(Counter::NsNatFailed);
            return verdict::SHOT;
        };
        fwd.nat_saddr = node_addr;
        // The REPLY entry claims the SNAT port, then FORWARD is written.
        let mut rkey = ct::reply_key(&fwd, t.proto);
        let Some(port) = ct::claim_snat_port(&mut rkey, &rev, t.sport, ct::snat_ports(cfg)) else {
            count(Counter::NsNatFailed);
            return verdict::SHOT;
        };
        fwd.nat_sport = port;
        if CT_V4.insert(&fwd_key, &fwd, BPF_NOEXIST as u64).is_err() {
            let _ = CT_V4.remove(&rkey);
            return follow_winner(ctx, l4, t, &fwd_key);
        }
    }
    count_new_flow();
    translate_forward(ctx, l4, t, &fwd)
}

#[inline(always)]
fn count_new_flow() {
    count(Counter::NsNewFlow);
    if ct::fill_permille() >= CT_PRESSURE_PERMILLE {
        count(Counter::NsNewFlowCtFull);
    }
}

/// Writes the REPLY entry (`rkey`, `rev`) of a new flow to a local backend.
/// An entry already there is taken over only when it is this flow's own (its
/// FORWARD half was lost) or its flow is over; a live flow through another
/// frontend keeps it: `NsCtClashDrop`.
#[inline(always)]
fn claim_reply(rkey: &agent_common::Ct4Key, rev: &Ct4Value) -> Result<(), Counter> {
    if CT_V4.insert(rkey, rev, BPF_NOEXIST as u64).is_ok() {
        return Ok(());
    }
    let Some(entry) = ct::lookup(rkey) else {
        // Gone in between: ours to write.
        return CT_V4.insert(rkey, rev, 0).map_err(|_| Counter::NsNatFailed);
    };
    // SAFETY: a live map value, copied out.
    let old = unsafe { *entry };
    let own = old.nat_saddr == rev.nat_saddr && old.nat_sport == rev.nat_sport;
    if !own {
        if !ct::reply_flow_over(rkey, &old, rev.last_seen) {
            return Err(Counter::NsCtClashDrop);
        }
        ct::forget_reply_flow(rkey, &old);
    }
    CT_V4.insert(rkey, rev, 0).map_err(|_| Counter::NsNatFailed)
}

/// Another CPU created the flow first: translate as it decided.
#[inline(always)]
fn follow_winner(ctx: &TcContext, l4: &L4, t: &Tuple, fwd_key: &agent_common::Ct4Key) -> i32 {
    match ct::lookup(fwd_key) {
        Some(entry) => {
            let v = unsafe { *entry };
            count(Counter::NsTracked);
            translate_forward(ctx, l4, t, &v)
        }
        None => {
            count(Counter::NsNatFailed);
            verdict::SHOT
        }
    }
}
