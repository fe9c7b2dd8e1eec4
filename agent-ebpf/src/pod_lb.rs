//! The per-packet ClusterIP path: pods' traffic to a ClusterIP that the
//! socket layer did not translate (a process in a pod's network namespace
//! outside the hooked cgroup, a service mesh's redirected traffic, a
//! KubeVirt/Kata guest whose packets come from a tap, or every pod with
//! `--socket-lb-host-netns-only`). Cilium's per-packet fallback, IPv4.
//!
//! `ferry_tc_pod` (ingress of the pods' host-end devices, tc.rs) hands a
//! TCP/UDP packet nothing else took to [`from_pod4`]: a packet of a tracked
//! pod flow is DNATed to its backend; one to a ClusterIP frontend (the
//! internal scope, as the socket layer looks it up) that no flow knows gets
//! a backend (select.rs: the flow hash places it; session affinity keyed by
//! the client pod's IPv4 address — the per-packet path has no netns cookie,
//! a VM on a tap has no netns of its own — so a pod served by both paths
//! may see two affinity entries), FORWARD and REPLY entries flagged
//! `ct_flags::POD`, and goes on to the stack (TC_ACT_OK), which routes it
//! to the backend. The pod's source address is kept, as kube-proxy keeps
//! it. A ClusterIP without endpoints, or on a port no Service defines, is
//! answered with an ICMP port unreachable (icmp.rs's builder for TC, sent
//! back out of the device), as the socket layer refuses at once and
//! kube-proxy's REJECT does: the client fails fast rather than timing out;
//! a Local internal policy without a local endpoint is dropped
//! (`NoLocalEndpoint`), as kube-proxy drops it.
//!
//! Replies: `ferry_tc_pod_out` (egress of the same devices) gives the
//! backend's packets to the client pod the ClusterIP:port back as their
//! source (a REPLY lookup, POD entries only). A remote backend's reply
//! arrives on any node device from any port, a local one's from another
//! pod device: the one place every packet to the client pod passes is the
//! egress of its host-end device. The cgroup skb hooks are no alternative:
//! cgroup_skb programs cannot rewrite packets, and they see only the
//! packets of sockets in the cgroup (a VM on a tap has no socket there).
//!
//! Which devices: those `ferry_tc_pod` is on (pod_devices.rs: the devices
//! the node reaches its local endpoints through); a client pod behind a
//! device with no local endpoint gets no per-packet path yet.
//!
//! Left out: hairpin (a pod reaching itself through its ClusterIP needs
//! kube-proxy's masquerade; such a packet is dropped as `NatFailed`), and
//! IPv6 (passes untouched). On a bridge, a backend on the same bridge
//! answers its client over L2 without passing a host-end device of the
//! bridge itself: only devices per pod (routed veths, the bridge's ports)
//! see those replies.

use core::ptr::NonNull;

use agent_common::{
    Ct4Key, Ct4Value, Svc4Key, backend_flags, ct_dir, ct_flags, node_flags, proto, scope,
    stats::Counter, svc_flags,
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    macros::classifier,
    programs::TcContext,
};

use crate::{
    csum,
    ct::{self, CtKey, CtValue},
    drop::{self, DropReason, Outcome, Raw},
    event,
    family::V4,
    icmp,
    maps::count,
    ns::Ns,
    parse::{self, ETH_P_IP, Ipv4, L4, Packet as _, Tuple},
    select::{self, Frontend},
    side::Side,
    tc, verdict,
};

/// Whether the socket layer translates for the socket of `sock_addr` (a
/// cgroup sock_addr context): always, unless `--socket-lb-host-netns-only`
/// leaves every namespace but the host's (the agent's) to this path.
#[inline(always)]
pub fn socket_lb_applies(sock_addr: *mut core::ffi::c_void) -> bool {
    let cfg = ct::node_config();
    cfg.flags & node_flags::SOCK_HOSTNS_ONLY == 0
        // SAFETY: a sock_addr program's context.
        || unsafe { aya_ebpf::helpers::generated::bpf_get_netns_cookie(sock_addr) }
            == cfg.netns_cookie
}

/// What [`flow_call`] returns for a packet to a ClusterIP without
/// endpoints: its caller answers it with [`reject_call`], whose frame
/// (the ICMP answer's) is then not added to the new flow's.
const NO_ENDPOINTS: i32 = i32::MIN + 2;

/// A TCP/UDP IPv4 packet from a pod that nothing else took (tc.rs).
#[inline(always)]
pub fn from_pod4(ctx: &TcContext, ip: &Ipv4) -> Outcome {
    match flow_call(ctx, ip).get() {
        Ok(NO_ENDPOINTS) => reject_call(ctx, ip).get(),
        v => v,
    }
}

/// The tracked and new flows as a function of its own: its frame is not
/// added to the masqueraded replies' path (nodeport.rs) in the handler's.
#[inline(never)]
fn flow_call(ctx: &TcContext, ip: &Ipv4) -> Raw {
    Raw::of(from_pod4_body(ctx, ip))
}

/// The port unreachable of a ClusterIP without endpoints.
#[inline(never)]
fn reject_call(ctx: &TcContext, ip: &Ipv4) -> Raw {
    Raw::of(icmp::reject(ctx, ip, &ct::node_config()))
}

#[inline(always)]
fn from_pod4_body(ctx: &TcContext, ip: &Ipv4) -> Outcome {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    // Every ClusterIP has its marker (port 0, protocol 0; codec.rs's
    // cluster_ip_key): a pod's traffic to anything else costs this one
    // lookup.
    if <Svc4Key as Frontend>::frontend(t.daddr, 0, 0, scope::EXTERNAL)
        .lookup()
        .is_none()
    {
        return Ok(verdict::PASS);
    }
    let fwd_key: Ct4Key = ct::key(&t, ct_dir::FORWARD);
    if let Some(entry) = ct::lookup(&fwd_key) {
        // SAFETY: a live map value, copied out.
        let v = unsafe { *entry };
        if v.flags() & ct_flags::POD == 0 {
            return Ok(verdict::PASS);
        }
        if backend_still_there(&v) {
            ct::touch(entry, select::now_seconds(), parse::tcp_flags(ip));
            count(Counter::PodTracked);
            rewrite(ctx, ip, &l4, &v)?;
            return Ok(verdict::OK);
        }
        // The backend is gone: choose again (as nodeport.rs does).
        ct::remove_flow(&fwd_key, &v);
    }
    new_flow(ctx, ip, &l4, &t, &fwd_key)
}

/// A packet no pod flow knows: a new flow if it is for a ClusterIP.
#[inline(always)]
fn new_flow(ctx: &TcContext, ip: &Ipv4, l4: &L4, t: &Tuple, fwd_key: &Ct4Key) -> Outcome {
    let mut key = <Svc4Key as Frontend>::frontend(t.daddr, t.dport, t.proto, scope::EXTERNAL);
    let Some(mut svc) = key.lookup() else {
        // A ClusterIP on a port (or protocol) no Service defines: rejected,
        // as the socket layer refuses it (kube-proxy's cluster-ips-check).
        return Ok(NO_ENDPOINTS);
    };
    if svc.flags & svc_flags::CLUSTER_IP == 0 {
        return Ok(verdict::PASS);
    }
    if svc.flags & svc_flags::TWO_SCOPES != 0 {
        // In-cluster clients use every endpoint (sock_lb.rs).
        key = <Svc4Key as Frontend>::frontend(t.daddr, t.dport, t.proto, scope::INTERNAL);
        svc = key.lookup().unwrap_or_default();
    }
    if svc.count == 0 {
        if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
            return Err(DropReason::NoLocalEndpoint);
        }
        return Ok(NO_ENDPOINTS);
    }
    if !ip.l4_facts().csum_in_packet {
        return Err(DropReason::Malformed);
    }
    let chosen = select::choose(&key, &svc, V4::client(&t.saddr), Some(V4::flow_hash(t)))
        .ok_or(DropReason::NoBackend)?;
    let (backend_addr, backend_port) = <Svc4Key as Frontend>::backend_dest(&chosen.backend);
    if backend_addr == t.saddr {
        // Hairpin: would need masquerade (see the module comment).
        return Err(DropReason::NatFailed);
    }
    let local = <Svc4Key as Frontend>::backend_flags(&chosen.backend) & backend_flags::LOCAL != 0;
    let flags = ct_flags::POD | if local { ct_flags::LOCAL } else { 0 };
    let tcp_flags = parse::tcp_flags(ip);
    let now = select::now_seconds();
    let entry = |saddr, daddr, sport, dport| {
        Ct4Value::new(
            saddr,
            daddr,
            sport,
            dport,
            chosen.id,
            svc.rev_nat_id,
            flags,
            tcp_flags,
            now,
        )
    };
    let fwd = entry(t.saddr, backend_addr, t.sport, backend_port);
    let rev = entry(t.daddr, t.saddr, t.dport, t.sport);
    let map = Ct4Key::map();
    if map.insert(fwd_key, &fwd, BPF_NOEXIST as u64).is_err() {
        // Another CPU made the flow first: follow it.
        let entry = ct::lookup(fwd_key).ok_or(DropReason::NatFailed)?;
        // SAFETY: a live map value, copied out.
        let won = unsafe { *entry };
        count(Counter::PodTracked);
        rewrite(ctx, ip, l4, &won)?;
        return Ok(verdict::OK);
    }
    let rkey: Ct4Key = ct::reply_key(&fwd, t.proto);
    if let Err(e) = claim_reply(&rkey, &rev) {
        let _ = map.remove(fwd_key);
        return Err(e);
    }
    count(Counter::PodNewFlow);
    event::new_flow(ctx, ip, &fwd);
    rewrite(ctx, ip, l4, &fwd)?;
    Ok(verdict::OK)
}

/// Writes a new pod flow's REPLY entry: one already there is taken over
/// only when it is this flow's own or its flow is over; a live flow keeps
/// it (`CtClash`), as nodeport.rs's claim does.
#[inline(always)]
fn claim_reply(rkey: &Ct4Key, rev: &Ct4Value) -> Result<(), DropReason> {
    let map = Ct4Key::map();
    if map.insert(rkey, rev, BPF_NOEXIST as u64).is_ok() {
        return Ok(());
    }
    if let Some(entry) = ct::lookup(rkey) {
        // SAFETY: a live map value, copied out.
        let old = unsafe { *entry };
        let own = old.nat_saddr() == rev.nat_saddr() && old.nat_sport() == rev.nat_sport();
        if !own {
            if !ct::reply_flow_over(rkey, &old, rev.last_seen()) {
                return Err(DropReason::CtClash);
            }
            ct::forget_reply_flow(rkey, &old);
        }
    }
    map.insert(rkey, rev, 0).map_err(|_| DropReason::NatFailed)
}

/// The flow's backend still exists with the address it was given.
#[inline(always)]
fn backend_still_there(v: &Ct4Value) -> bool {
    matches!(<Svc4Key as Frontend>::backend(v.backend_id()),
        Some(b) if <Svc4Key as Frontend>::backend_dest(&b) == (v.nat_daddr(), v.nat_dport()))
}

#[inline(always)]
fn rewrite(ctx: &TcContext, ip: &Ipv4, l4: &L4, v: &Ct4Value) -> Result<(), DropReason> {
    csum::rewrite4(
        ctx,
        ip,
        l4,
        v.nat_saddr(),
        v.nat_sport(),
        v.nat_daddr(),
        v.nat_dport(),
    )
}

/// Egress of the pods' host-end devices: a backend's reply to a client pod
/// of a per-packet flow gets the ClusterIP:port back as its source.
#[classifier]
pub fn ferry_tc_pod_out(ctx: TcContext) -> i32 {
    match tc::ethertype(&ctx) {
        ETH_P_IP => reply4(tc::skb(&ctx)),
        _ => verdict::PASS,
    }
}

#[inline(never)]
fn reply4(skb: *mut __sk_buff) -> i32 {
    match NonNull::new(skb) {
        Some(p) => {
            let ctx = TcContext::new(p);
            drop::verdict(reply4_body(&ctx), &ctx, Side::Pod)
        }
        None => verdict::PASS,
    }
}

#[inline(always)]
fn reply4_body(ctx: &TcContext) -> Outcome {
    let mut ip = Ipv4::empty();
    if !parse::ipv4(ctx, &mut ip) || ip.hdr.is_later_fragment() {
        return Ok(verdict::PASS);
    }
    if ip.hdr.proto != proto::TCP && ip.hdr.proto != proto::UDP {
        return Ok(verdict::PASS);
    }
    let (Some(l4), Some(t)) = (parse::l4(&ip), parse::tuple(&ip)) else {
        return Ok(verdict::PASS);
    };
    let Some(entry) = ct::lookup(&ct::key::<Ct4Key>(&t, ct_dir::REPLY)) else {
        return Ok(verdict::PASS);
    };
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    if v.flags() & ct_flags::POD == 0 {
        return Ok(verdict::PASS);
    }
    ct::touch(entry, select::now_seconds(), parse::tcp_flags(&ip));
    count(Counter::PodRevNat);
    rewrite(ctx, &ip, &l4, &v)?;
    Ok(verdict::OK)
}
