//! The per-packet ClusterIP path: pods' traffic to a ClusterIP that the
//! socket layer did not translate (a process in a pod's network namespace
//! outside the hooked cgroup, a service mesh's redirected traffic, a
//! KubeVirt/Kata guest whose packets come from a tap, or every pod with
//! `--socket-lb-host-netns-only`). Cilium's per-packet fallback, IPv4 and IPv6 (written once, over ns.rs's
//! [`Ns`]: IPv6's keys and values live in its per-CPU room).
//!
//! `ferry_tc_pod` (ingress of the pods' host-end devices, tc.rs) hands a
//! TCP/UDP packet nothing else took to [`from_pod`]: a packet of a tracked
//! pod flow is DNATed to its backend; one to a ClusterIP frontend (the
//! internal scope, as the socket layer looks it up) that no flow knows gets
//! a backend (select.rs: the flow hash places it; session affinity keyed by
//! the client pod's address — the per-packet path has no netns cookie,
//! a VM on a tap has no netns of its own — so a pod served by both paths
//! may see two affinity entries), FORWARD and REPLY entries flagged
//! `ct_flags::POD`, and goes on to the stack (TC_ACT_OK), which routes it
//! to the backend. The pod's source address is kept, as kube-proxy keeps
//! it. A ClusterIP without endpoints, or on a port no Service defines, is
//! answered with an ICMP port unreachable (icmp.rs's or icmp6.rs's builder
//! for TC, sent back out of the device), as the socket layer refuses at once and
//! kube-proxy's REJECT does: the client fails fast rather than timing out;
//! a Local internal policy without a local endpoint is dropped
//! (`NoLocalEndpoint`), as kube-proxy drops it.
//!
//! Replies: `ferry_tc_pod_out` (egress of the same devices) gives the
//! backend's packets to the client pod the ClusterIP:port back as their
//! source (a REPLY lookup, POD entries only). A remote backend's reply
//! arrives on any node device from any port, a local one's from another
//! pod device: the one place every packet to the client pod passes is the
//! egress of its host-end device. It stays off (no parse, no lookup) until
//! the node's first per-packet flow sets `POD_FLOWS` (maps.rs), since most
//! nodes hook every pod's connect and never need it. The cgroup skb hooks are no alternative:
//! cgroup_skb programs cannot rewrite packets, and they see only the
//! packets of sockets in the cgroup (a VM on a tap has no socket there).
//!
//! ICMP errors about a per-packet flow (icmp.rs, icmp6.rs: `Side::PodOut`
//! and `Side::Pod`), as kube-proxy's conntrack translates its RELATED
//! packets: a backend's error about the client's packet (port unreachable
//! of a UDP backend without a listener, fragmentation needed / Packet Too
//! Big, time exceeded), on its way to the client pod through
//! `ferry_tc_pod_out`, quotes the ClusterIP:port again and comes from the
//! ClusterIP when the backend sent it (a router's address stays), so the
//! client's socket recognises it (a connected UDP socket gets ECONNREFUSED,
//! TCP its path MTU). The client pod's error about a reply (quoting the
//! ClusterIP as the source) goes in through `ferry_tc_pod` to the backend,
//! quoting the backend. A remote backend's errors are already translated
//! on the node device they arrive on (`ferry_tc_in`).
//!
//! Which devices: those `ferry_tc_pod` is on (pod_devices.rs: the devices
//! the node reaches its local endpoints through); a client pod behind a
//! device with no local endpoint gets no per-packet path yet.
//!
//! Hairpin (a pod reaching itself through its ClusterIP) is masqueraded as
//! kube-proxy does (its KUBE-MARK-MASQ on a backend that is the source):
//! the flow's source becomes the address the node would answer the pod
//! from (the FIB's preferred source for the route to the pod: a bridge's
//! address, or the node's) and a SNAT port of the configured range, flagged
//! `ct_flags::SNAT`. Otherwise the pod would get its own packet from itself
//! and answer itself, past the node. The packet, now from a node address,
//! is routed by fib.rs (the stack would drop it as a martian); the pod's
//! replies to that address come back through `ferry_tc_pod`, whose
//! masqueraded-reply path (nodeport.rs's `from_pod`, which runs before
//! this one) gives them the ClusterIP and the pod back.
//!
//! On a bridge, a backend on the same bridge would answer its client over
//! L2, past the bridge's own device and so past every program here (only
//! devices per pod, the bridge's ports, would see those replies; kube-proxy
//! sees them through br_netfilter). So a flow whose backend the node
//! reaches through the very device the packet came in on (a bridge; on a
//! routed veth that is the client itself, hairpin) is masqueraded as
//! hairpin is: the backend answers the node, whose `ferry_tc_pod` gives the
//! replies the ClusterIP back. Such a backend sees the bridge's address, not
//! the client's. The one FIB lookup that finds this is paid by new flows to
//! local backends only.

use core::ptr::NonNull;

use agent_common::{
    Ip6, backend_flags, ct_dir, ct_flags, node_flags, proto, scope, stats::Counter, svc_flags,
};
use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup,
    },
    helpers::generated as h,
    macros::classifier,
    programs::TcContext,
};

use crate::{
    ct::{self, CtKey, CtValue},
    drop::{self, DropReason, Outcome, Raw},
    event,
    family::{Addr, V4, V6},
    fib::{self, AF_INET, AF_INET6},
    icmp, icmp6,
    maps::{POD_FLOWS, count},
    nodeport,
    ns::{self, CtVal, Ns, Room},
    parse::{self, ETH_P_IP, ETH_P_IPV6, IP_OFF, Ipv4Hdr, L4, Packet as _, Tuple},
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

/// A family of the per-packet path: ns.rs's [`Ns`] and the address a
/// hairpin flow is masqueraded to.
pub trait Pod: Ns {
    /// No address (all zeros): no source is.
    const NO_ADDR: Addr<Self>;
    /// The FIB's preferred source for the route to `dst` from the device
    /// the packet arrived on (BPF_FIB_LOOKUP_SRC, Linux 6.7): the address
    /// the node would answer `dst` from, as netfilter's MASQUERADE picks it.
    /// None on an older kernel (the flag is refused): hairpin is then
    /// dropped (`NatFailed`).
    fn route_source(ctx: &TcContext, dst: &Addr<Self>) -> Option<Addr<Self>>;
    /// [`Pod::route_source`] when the route to `dst` leaves through the
    /// device the packet arrived on (a backend on the client's bridge),
    /// else None.
    fn same_device_source(ctx: &TcContext, dst: &Addr<Self>) -> Option<Addr<Self>>;
    /// Routes the packet as it now is (fib.rs), reading its addresses
    /// from it.
    fn forward_rewritten(ctx: &TcContext) -> Outcome;
}

/// `BPF_FIB_LOOKUP_SRC`: the lookup also fills in the route's source.
const FIB_LOOKUP_SRC: u32 = 1 << 4;

impl Pod for V4 {
    const NO_ADDR: u32 = 0;
    #[inline(always)]
    fn route_source(ctx: &TcContext, dst: &u32) -> Option<u32> {
        let mut words = [*dst, 0, 0, 0];
        (route_source(tc::skb(ctx), AF_INET, &mut words) != 0).then_some(words[0])
    }

    #[inline(always)]
    fn same_device_source(ctx: &TcContext, dst: &u32) -> Option<u32> {
        let mut words = [*dst, 0, 0, 0];
        (route_source(tc::skb(ctx), AF_INET, &mut words) == parse::ifindex(ctx)).then_some(words[0])
    }

    #[inline(always)]
    fn forward_rewritten(ctx: &TcContext) -> Outcome {
        let hdr = ctx
            .load::<Ipv4Hdr>(IP_OFF)
            .map_err(|_| DropReason::ForwardFailed)?;
        fib::forward(ctx, hdr.saddr, hdr.daddr, fib::meta(&hdr)).get()
    }
}

impl Pod for V6 {
    const NO_ADDR: Ip6 = [0; 4];
    #[inline(always)]
    fn route_source(ctx: &TcContext, dst: &Ip6) -> Option<Ip6> {
        let mut words = *dst;
        (route_source(tc::skb(ctx), AF_INET6, &mut words) != 0).then_some(words)
    }

    #[inline(always)]
    fn same_device_source(ctx: &TcContext, dst: &Ip6) -> Option<Ip6> {
        let mut words = *dst;
        (route_source(tc::skb(ctx), AF_INET6, &mut words) == parse::ifindex(ctx)).then_some(words)
    }

    #[inline(always)]
    fn forward_rewritten(ctx: &TcContext) -> Outcome {
        fib::forward6(ctx).get()
    }
}

/// The FIB's source towards `addr` (IPv4: its first word), written back
/// into `addr`, and the route's device: its ifindex, 0 when there is no
/// such route or source. A function of its own: the lookup's 64 bytes of
/// parameters are in its frame only.
#[inline(never)]
fn route_source(skb: *mut __sk_buff, family: u8, addr: &mut Ip6) -> u32 {
    let Some(ctx) = NonNull::new(skb).map(TcContext::new) else {
        return 0;
    };
    // SAFETY: a plain C struct of integers; all zeros is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = family;
    p.ifindex = parse::ifindex(&ctx);
    if family == AF_INET {
        p.__bindgen_anon_4.ipv4_dst = addr[0];
    } else {
        p.__bindgen_anon_4.ipv6_dst = *addr;
    }
    // SAFETY: the program's own skb and parameters of the helper's size.
    let rc = unsafe {
        h::bpf_fib_lookup(
            skb.cast(),
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            FIB_LOOKUP_SRC,
        )
    } as u32;
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return 0;
    }
    // SAFETY: the union's field the family names.
    unsafe {
        if family == AF_INET {
            addr[0] = p.__bindgen_anon_3.ipv4_src;
        } else {
            *addr = p.__bindgen_anon_3.ipv6_src;
        }
    }
    if addr.iter().all(|w| *w == 0) {
        return 0;
    }
    p.ifindex
}

/// What [`new_flow_call`] returns for a packet to a ClusterIP without
/// endpoints: its caller answers it with [`reject_call`], whose frame
/// (the ICMP answer's) is then not added to the new flow's.
const NO_ENDPOINTS: i32 = i32::MIN + 2;

/// What [`new_flow_call`] returns for a new hairpin flow when it was given no
/// masquerade source: its caller looks the source up ([`Pod::route_source`]
/// towards the pod itself) and calls it again with it. Each lookup's frame
/// is then the handler's callee, not added to the flow's.
const HAIRPIN: i32 = i32::MIN + 5;

/// What [`tracked_call`] and [`new_flow_call`] return for a packet rewritten to come from a node
/// address (a hairpin flow's): its caller routes it ([`forward_call`]).
const FORWARD: i32 = i32::MIN + 6;

/// What [`tracked_call`] returns for a packet that no pod flow knows.
const NEW_FLOW: i32 = i32::MIN;

/// What [`new_flow_call`] returns once the flow's entries are written (by
/// it, or by another CPU first): the packet is then translated by
/// [`tracked_call`], whose frame is not added to the new flow's.
const TRACKED: i32 = i32::MIN + 7;

/// A TCP/UDP packet from a pod that nothing else took (tc.rs).
#[inline(always)]
pub fn from_pod<F: Pod>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    let mut r = tracked_call::<F>(ctx, ip, false).get();
    if r == Ok(NEW_FLOW) {
        r = new_flow_call::<F>(ctx, ip, F::NO_ADDR).get();
        if r == Ok(HAIRPIN) {
            let Some(src) = F::route_source(ctx, &ip.saddr()) else {
                return Err(DropReason::NatFailed);
            };
            r = new_flow_call::<F>(ctx, ip, src).get();
        }
        if r == Ok(TRACKED) {
            // Translated as its (new) FORWARD entry says.
            r = tracked_call::<F>(ctx, ip, true).get();
        }
    }
    match r {
        Ok(NO_ENDPOINTS) => reject_call::<F>(ctx, ip).get(),
        Ok(FORWARD) => forward_call::<F>(ctx).get(),
        Ok(HAIRPIN) => Err(DropReason::NatFailed),
        v => v,
    }
}

/// The tracked flows as a function of its own, and the new ones as
/// another ([`new_flow_call`]): neither's frame is added to the other's,
/// nor to the masqueraded replies' path (nodeport.rs) in the handler's.
/// [`NEW_FLOW`] when no pod flow knows the packet. `new`: the packet's
/// flow was just made (or found made by another CPU): not counted as
/// tracked.
#[inline(never)]
fn tracked_call<F: Pod>(ctx: &TcContext, ip: &F::Ip, new: bool) -> Raw {
    Raw::of(tracked_body::<F>(ctx, ip, new))
}

/// A new flow; `masq`: the source of a new hairpin flow (see
/// [`HAIRPIN`]), or [`Pod::NO_ADDR`].
#[inline(never)]
fn new_flow_call<F: Pod>(ctx: &TcContext, ip: &F::Ip, masq: Addr<F>) -> Raw {
    let Some(t) = parse::tuple(ip) else {
        return Raw::of(Ok(verdict::PASS));
    };
    Raw::of(F::with_room(|room| {
        new_flow::<F>(ctx, ip, &t, masq, room).get()
    }))
}

/// The port unreachable of a ClusterIP without endpoints.
#[inline(never)]
fn reject_call<F: Pod>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    Raw::of(F::reject(ctx, ip, &ct::node_config()))
}

/// Routes a packet that was rewritten to come from a node address.
#[inline(never)]
fn forward_call<F: Pod>(ctx: &TcContext) -> Raw {
    Raw::of(F::forward_rewritten(ctx))
}

#[inline(always)]
fn tracked_body<F: Pod>(ctx: &TcContext, ip: &F::Ip, new: bool) -> Outcome {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    // Every ClusterIP has its marker (port 0, protocol 0; codec.rs's
    // cluster_ip_key): a pod's traffic to anything else costs this one
    // lookup.
    if F::Key::frontend(t.daddr, 0, 0, scope::EXTERNAL)
        .lookup()
        .is_none()
    {
        return Ok(verdict::PASS);
    }
    let fwd_key: F::Ct = ct::key(&t, ct_dir::FORWARD);
    let Some(entry) = ct::lookup(&fwd_key) else {
        return Ok(NEW_FLOW);
    };
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    if v.flags() & ct_flags::POD == 0 {
        return Ok(verdict::PASS);
    }
    if nodeport::backend_still_there::<F>(&v) {
        if !new {
            ct::touch(entry, select::now_seconds(), parse::tcp_flags(ip));
            count(Counter::PodTracked);
        }
        return translate::<F>(ctx, ip, &l4, &t, &v);
    }
    // The backend is gone: choose again (as nodeport.rs does).
    ct::remove_flow(&fwd_key, &v);
    Ok(NEW_FLOW)
}

/// A packet no pod flow knows: a new flow if it is for a ClusterIP. Its
/// keys and values are built in `room` (ns.rs).
#[inline(always)]
fn new_flow<F: Pod>(
    ctx: &TcContext,
    ip: &F::Ip,
    t: &Tuple<Addr<F>>,
    masq: Addr<F>,
    room: &mut Room<F>,
) -> Raw {
    let ok = |v| Raw::of(Ok(v));
    let drop = |r| Raw::of(Err(r));
    let key = room
        .svc
        .write(F::Key::frontend(t.daddr, t.dport, t.proto, scope::EXTERNAL));
    let Some(mut svc) = key.lookup() else {
        // A ClusterIP on a port (or protocol) no Service defines: rejected,
        // as the socket layer refuses it (kube-proxy's cluster-ips-check).
        return ok(NO_ENDPOINTS);
    };
    if svc.flags & svc_flags::CLUSTER_IP == 0 {
        return ok(verdict::PASS);
    }
    if svc.flags & svc_flags::TWO_SCOPES != 0 {
        // In-cluster clients use every endpoint (sock_lb.rs).
        *key = F::Key::frontend(t.daddr, t.dport, t.proto, scope::INTERNAL);
        svc = key.lookup().unwrap_or_default();
    }
    if svc.count == 0 {
        if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
            return drop(DropReason::NoLocalEndpoint);
        }
        return ok(NO_ENDPOINTS);
    }
    if !ip.l4_facts().csum_in_packet {
        return drop(DropReason::Malformed);
    }
    let Some(chosen) = select::choose(&*key, &svc, F::client(&t.saddr), Some(F::flow_hash(t)))
    else {
        return drop(DropReason::NoBackend);
    };
    let (backend_addr, backend_port) = F::Key::backend_dest(&chosen.backend);
    let local = F::Key::backend_flags(&chosen.backend) & backend_flags::LOCAL != 0;
    // Hairpin, and a backend on the client's bridge: masqueraded (see the
    // module comment).
    let hairpin = backend_addr == t.saddr;
    if hairpin && masq == F::NO_ADDR {
        return ok(HAIRPIN);
    }
    let masq = if local && !hairpin {
        F::same_device_source(ctx, &backend_addr).unwrap_or(masq)
    } else {
        masq
    };
    let masqueraded = masq != F::NO_ADDR;
    let mut flags = ct_flags::POD;
    if local {
        flags |= ct_flags::LOCAL;
    }
    if masqueraded {
        flags |= ct_flags::SNAT;
    }
    let (fwd, rev, fwd_key) = nodeport::flow_entries::<F>(
        (&mut room.val, &mut room.rev, &mut room.key),
        t,
        (backend_addr, backend_port),
        chosen.id,
        svc.rev_nat_id,
        flags,
        parse::tcp_flags(ip),
    );
    // Before the entries exist: the reply must find the egress program looking.
    mark_pod_flows();
    let map = F::Ct::map();
    if masqueraded {
        // A function of its own: its temporaries are not in this frame.
        let r = masquerade_call::<F>(room, t.proto, t.sport, masq);
        match r.get() {
            Ok(verdict::OK) => {}
            Ok(_) => return ok(TRACKED),
            Err(_) => return r,
        }
    } else {
        if map.insert(fwd_key, fwd, BPF_NOEXIST as u64).is_err() {
            // Another CPU made the flow first: follow it.
            return ok(TRACKED);
        }
        let rkey = &*room.rkey.write(ct::reply_key(fwd, t.proto));
        if let Err(e) = nodeport::claim_reply(rkey, rev) {
            let _ = map.remove(fwd_key);
            return drop(e);
        }
    }
    count(Counter::PodNewFlow);
    // SAFETY: written by flow_entries (and masquerade_call).
    event::new_flow(ctx, ip, unsafe { room.val.assume_init_ref() });
    ok(TRACKED)
}

/// A hairpin flow's entries (in `room`, written by flow_entries) given the
/// masquerade source `src` and a SNAT port: the REPLY entry claims the
/// port, then FORWARD is written (as nodeport.rs's masquerade).
/// [`NEW_FLOW`] when another CPU wrote the FORWARD entry first.
#[inline(never)]
fn masquerade_call<F: Pod>(room: &mut Room<F>, proto: u8, sport: u16, src: Addr<F>) -> Raw {
    // SAFETY: written by flow_entries before this call.
    let (fwd, rev, fwd_key) = unsafe {
        (
            room.val.assume_init_mut(),
            room.rev.assume_init_ref(),
            room.key.assume_init_ref(),
        )
    };
    fwd.set_source(src, sport);
    let rkey = room.rkey.write(ct::reply_key(fwd, proto));
    let Some(port) = ct::claim_snat_port(rkey, rev, sport, ct::snat_ports(&ct::node_config()))
    else {
        return Raw::of(Err(DropReason::NatFailed));
    };
    fwd.set_source(src, port);
    let map = F::Ct::map();
    if map.insert(fwd_key, fwd, BPF_NOEXIST as u64).is_err() {
        let _ = map.remove(rkey);
        return Raw::of(Ok(NEW_FLOW));
    }
    Raw::of(Ok(verdict::OK))
}

/// Rewrites a pod's packet as its flow's FORWARD entry says; a hairpin
/// flow's, now from a node address, is routed by fib.rs.
#[inline(always)]
fn translate<F: Pod>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    v: &CtVal<F>,
) -> Outcome {
    rewrite::<F>(ctx, ip, l4, t, v)?;
    if v.flags() & ct_flags::SNAT != 0 {
        return Ok(FORWARD);
    }
    Ok(verdict::OK)
}

#[inline(always)]
fn rewrite<F: Pod>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    v: &CtVal<F>,
) -> Result<(), DropReason> {
    F::rewrite(
        ctx,
        ip,
        l4,
        t,
        v.nat_saddr(),
        v.nat_sport(),
        v.nat_daddr(),
        v.nat_dport(),
    )
}

/// Egress of the pods' host-end devices: a backend's reply to a client pod
/// of a per-packet flow gets the ClusterIP:port back as its source; an ICMP
/// error about the flow, the ClusterIP:port back in its quote.
#[classifier]
pub fn ferry_tc_pod_out(ctx: TcContext) -> i32 {
    // Most nodes never make a per-packet flow (every pod's connect is
    // hooked): their pods' packets then pass without a parse or a lookup.
    if !pod_flows_made() {
        return verdict::PASS;
    }
    match tc::ethertype(&ctx) {
        ETH_P_IP => reply4(tc::skb(&ctx)),
        ETH_P_IPV6 => match reply6(tc::skb(&ctx)) {
            ERROR6 => error6(tc::skb(&ctx)),
            v => v,
        },
        _ => verdict::PASS,
    }
}

/// What [`reply6`] returns for an ICMPv6 packet (parsed, in the per-CPU
/// scratch): not a verdict. The program then calls [`error6`], so that
/// icmp6.rs's frame is not added to the replies'.
const ERROR6: i32 = i32::MIN + 8;

/// Whether this node ever made a per-packet flow (maps.rs's `POD_FLOWS`,
/// pinned: a restarted agent's programs still reverse its predecessor's).
#[inline(always)]
fn pod_flows_made() -> bool {
    // SAFETY: a live array slot, read.
    POD_FLOWS.get_ptr(0).is_some_and(|p| unsafe { *p } != 0)
}

/// Sets `POD_FLOWS` once; never cleared (a flow's reply must not find the
/// egress program skipping it), and never rewritten, so that the cache line
/// stays shared between CPUs.
#[inline(always)]
fn mark_pod_flows() {
    if let Some(p) = POD_FLOWS.get_ptr_mut(0) {
        // SAFETY: a live array slot; a racing CPU stores the same value.
        unsafe {
            if *p == 0 {
                *p = 1;
            }
        }
    }
}

#[inline(never)]
fn reply4(skb: *mut __sk_buff) -> i32 {
    match NonNull::new(skb) {
        Some(p) => {
            let ctx = TcContext::new(p);
            drop::verdict(reply4_body(&ctx), &ctx, Side::PodOut)
        }
        None => verdict::PASS,
    }
}

#[inline(always)]
fn reply4_body(ctx: &TcContext) -> Outcome {
    let mut slot = core::mem::MaybeUninit::uninit();
    let ip = parse::Ipv4::empty_in(&mut slot);
    if !parse::ipv4(ctx, ip) || ip.hdr.is_later_fragment() {
        return Ok(verdict::PASS);
    }
    if ip.hdr.proto == parse::IPPROTO_ICMP {
        return icmp::translate_error(ctx, ip, Side::PodOut);
    }
    reply::<V4>(ctx, ip)
}

#[inline(never)]
fn reply6(skb: *mut __sk_buff) -> i32 {
    match NonNull::new(skb) {
        Some(p) => {
            let ctx = TcContext::new(p);
            drop::verdict(reply6_body(&ctx), &ctx, Side::PodOut)
        }
        None => verdict::PASS,
    }
}

/// IPv6 as [`reply4_body`], parsed into the per-CPU scratch (ns.rs).
#[inline(always)]
fn reply6_body(ctx: &TcContext) -> Outcome {
    let ip = ns::packet6().ok_or(DropReason::Internal)?;
    if !parse::ipv6(ctx, ip) {
        return Ok(verdict::PASS);
    }
    if ip.proto == parse::IPPROTO_ICMPV6 {
        return Ok(ERROR6);
    }
    reply::<V6>(ctx, ip)
}

/// An ICMPv6 packet to a pod, as [`reply6`] left it parsed in the per-CPU
/// scratch: an error about a per-packet flow is translated (icmp6.rs).
#[inline(never)]
fn error6(skb: *mut __sk_buff) -> i32 {
    let (Some(p), Some(ip)) = (NonNull::new(skb), ns::packet6()) else {
        return verdict::PASS;
    };
    let ctx = TcContext::new(p);
    drop::verdict(
        icmp6::translate_error(&ctx, ip, Side::PodOut).get(),
        &ctx,
        Side::PodOut,
    )
}

/// A backend's packet to a client pod: the ClusterIP:port back as its
/// source when it belongs to a per-packet flow (a REPLY entry flagged POD).
#[inline(always)]
fn reply<F: Pod>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    if ip.proto() != proto::TCP && ip.proto() != proto::UDP {
        return Ok(verdict::PASS);
    }
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    let Some(entry) = ct::lookup(&ct::key::<F::Ct>(&t, ct_dir::REPLY)) else {
        return Ok(verdict::PASS);
    };
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    // A masqueraded (hairpin) flow's replies come in through ferry_tc_pod.
    if v.flags() & ct_flags::POD == 0 || v.flags() & ct_flags::SNAT != 0 {
        return Ok(verdict::PASS);
    }
    ct::touch(entry, select::now_seconds(), parse::tcp_flags(ip));
    count(Counter::PodRevNat);
    rewrite::<F>(ctx, ip, &l4, &t, &v)?;
    Ok(verdict::OK)
}
