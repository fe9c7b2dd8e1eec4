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
//! backend's node in an IP option (IPv6: a destination options header),
//! and that node answers the client directly: see dsr.rs and dsr6.rs,
//! which also handle the receiving side (packets carrying the option for a
//! backend on this node).
//!
//! TCP packets other than a SYN that match no flow start one all the same
//! (as Cilium does), counted `NsCtLostFlow`: after the conntrack entries
//! were lost (LRU eviction), the flow hash sends the flow back to the
//! backend that has it (select.rs) while the backends are unchanged; else
//! the wrong backend answers with a RST, which ends the connection as
//! cleanly as anything could. New flows made while the conntrack map is
//! nearly full are counted too (`NsNewFlowCtFull`).
//!
//! Written once for IPv4 and IPv6 (ns.rs: the family's maps, packet,
//! FIB forwarding, port unreachable and DSR). The keys and values
//! a new flow is made of are kept in its family's [`Room`] (the stack for
//! IPv4, a per-CPU scratch map for IPv6), and IPv6's paths are functions of
//! their own (`Ns::OUTLINE`): the verifier's 512 bytes of stack would not
//! hold them otherwise.

use core::mem::MaybeUninit;

use agent_common::{
    CT_PRESSURE_PERMILLE, NodeConfig, SvcValue, backend_flags, ct_dir, ct_flags, node_flags, proto,
    scope, stats::Counter, svc_flags,
};
use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};

use crate::{
    ct::{self, CtKey, CtValue},
    drop::{DropReason, Outcome, Raw},
    event,
    family::Addr,
    maps::count,
    ns::{CtVal, Ns, Room},
    parse::{self, L4, Packet as _, Tuple},
    select::{self, EXPOSED, Frontend},
    verdict,
};

/// What [`tracked_call`] returns for a packet that no flow knows: not a
/// verdict.
const NEW_FLOW: i32 = i32::MIN;

/// What [`new_flow_call`] returns for a packet to no frontend (IPv6): its
/// caller goes on with [`not_a_frontend_call`], so that the DSR receive
/// path's frame is not added to the new flow's.
const NOT_A_FRONTEND: i32 = i32::MIN + 1;

/// What [`new_flow_call`] returns for a packet to a frontend without
/// endpoints (IPv6): its caller answers it with [`reject_call`], whose
/// frame is not added to the new flow's either.
const NO_ENDPOINTS: i32 = i32::MIN + 2;

/// What [`new_flow_call`] returns for a new DSR flow (IPv6), its FORWARD
/// entry made and left in the room: its caller sends the first packet with
/// [`dsr_first_call`] (`DSR_FIRST_FITS`: with the header).
const DSR_FIRST: i32 = i32::MIN + 3;
const DSR_FIRST_FITS: i32 = i32::MIN + 4;

/// A TCP/UDP packet arriving on a device.
#[inline(always)]
pub fn ingress<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    if F::OUTLINE {
        // Two functions of their own (`Ns::OUTLINE`): the tracked paths and
        // a new flow each have their frame.
        return match tracked_call::<F>(ctx, ip).get() {
            Ok(NEW_FLOW) => match new_flow_call::<F>(ctx, ip).get() {
                Ok(NOT_A_FRONTEND) => not_a_frontend_call::<F>(ctx, ip).get(),
                Ok(NO_ENDPOINTS) => reject_call::<F>(ctx, ip).get(),
                Ok(DSR_FIRST) => dsr_first_call::<F>(ctx, false).get(),
                Ok(DSR_FIRST_FITS) => dsr_first_call::<F>(ctx, true).get(),
                v => v,
            },
            v => v,
        };
    }
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    if let Some(v) = client_packet::<F>(ctx, ip, &l4, &t) {
        return v;
    }
    // A remote backend's reply to a SNAT port of ours.
    let cfg = ct::node_config();
    if let Some(v) = snat_reply::<F>(ctx, ip, &l4, &t, &cfg, false) {
        return v;
    }
    F::with_room(|room| new_flow::<F>(ctx, ip, &l4, &t, &cfg, room))
}

/// A client's packet of a tracked flow, translated and sent on; None when
/// the packet is none.
#[inline(always)]
fn client_packet<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
) -> Option<Outcome> {
    // The client's direction of a tracked flow: the hot path, one lookup
    // (and one for the backend, below).
    let fwd_key: F::Ct = ct::key(t, ct_dir::FORWARD);
    let entry = ct::lookup(&fwd_key)?;
    // Read in place, not copied out (48 bytes over IPv6 on every packet):
    // the fields the translation reads are written only when the flow is
    // made; `touch` writes the stamps alone.
    // SAFETY: a live map value.
    if backend_still_there::<F>(unsafe { &*entry }) {
        ct::touch(entry, select::now_seconds(), parse::tcp_flags(ip));
        count(Counter::NsTracked);
        return Some(translate_forward::<F>(ctx, ip, l4, t, unsafe { &*entry }));
    }
    // The backend is gone (or its id now names another endpoint): forget
    // the flow and choose again, so that UDP "flows" (DNS, say) move to a
    // live backend instead of going nowhere until idle.
    // SAFETY: as above; copied out before its entry is removed.
    let v = unsafe { *entry };
    ct::remove_flow(&fwd_key, &v);
    None
}

/// The tracked paths of [`ingress`] (a client's packet, a reply to a SNAT
/// port) as a function of its own (`Ns::OUTLINE`): [`NEW_FLOW`] when the
/// packet is neither.
#[inline(never)]
fn tracked_call<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    Raw::of(tracked_call_body::<F>(ctx, ip))
}

#[inline(always)]
fn tracked_call_body<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    if let Some(v) = client_packet::<F>(ctx, ip, &l4, &t) {
        return v;
    }
    snat_reply::<F>(ctx, ip, &l4, &t, &ct::node_config(), false).unwrap_or(Ok(NEW_FLOW))
}

/// [`new_flow`] as a function of its own (`Ns::OUTLINE`).
#[inline(never)]
fn new_flow_call<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    Raw::of(new_flow_call_body::<F>(ctx, ip))
}

#[inline(always)]
fn new_flow_call_body<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    let cfg = ct::node_config();
    F::with_room(|room| new_flow::<F>(ctx, ip, &l4, &t, &cfg, room))
}

/// A TCP/UDP packet arriving from a pod (`ferry_tc_pod`, on the devices
/// the node reaches its local endpoints through): a local backend's reply
/// to the node address a masqueraded flow gave it. Anything else goes on
/// untouched (a local backend's other replies are translated as they leave
/// through a node device).
#[inline(always)]
pub fn from_pod<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    if F::OUTLINE {
        from_pod_call::<F>(ctx, ip).get()
    } else {
        from_pod_body::<F>(ctx, ip)
    }
}

#[inline(always)]
fn from_pod_body<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    snat_reply::<F>(ctx, ip, &l4, &t, &ct::node_config(), true).unwrap_or(Ok(verdict::PASS))
}

/// [`from_pod`] as a function of its own (`Ns::OUTLINE`).
#[inline(never)]
fn from_pod_call<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    Raw::of(from_pod_call_body::<F>(ctx, ip))
}

#[inline(always)]
fn from_pod_call_body<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    from_pod_body::<F>(ctx, ip)
}

/// A reply to one of our SNAT ports, translated back to the frontend and
/// the client and forwarded; None when the packet is none. SNAT ports are
/// only ever taken from the configured range: anything else cannot be one,
/// which spares the lookup for most traffic. `masqueraded_only`: only
/// flows ferry gave a node address (the pod side, where a local backend's
/// unmasqueraded replies to clients also pass).
#[inline(always)]
fn snat_reply<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    cfg: &NodeConfig,
    masqueraded_only: bool,
) -> Option<Outcome> {
    if !ct::snat_ports(cfg).contains(t.dport) {
        return None;
    }
    let rkey: F::Ct = ct::key(t, ct_dir::REPLY);
    let entry = ct::lookup(&rkey)?;
    // SAFETY: a live map value, copied out.
    let v = unsafe { *entry };
    if masqueraded_only && v.flags() & ct_flags::SNAT == 0 {
        return None;
    }
    ct::touch(entry, select::now_seconds(), parse::tcp_flags(ip));
    count(Counter::NsTracked);
    if let Err(e) = rewrite_as::<F>(ctx, ip, l4, t, &v) {
        return Some(Err(e));
    }
    // From the frontend now: possibly a node address (NodePort).
    Some(F::forward(ctx, ip, v.nat_saddr(), v.nat_daddr()))
}

/// A TCP/UDP packet leaving through a device: a local backend's reply gets
/// the frontend back as its source. Nothing else is touched.
#[inline(always)]
pub fn egress<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    if F::OUTLINE {
        egress_call::<F>(ctx, ip).get()
    } else {
        egress_body::<F>(ctx, ip)
    }
}

#[inline(always)]
fn egress_body<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    let (Some(l4), Some(t)) = (parse::l4(ip), parse::tuple(ip)) else {
        return Ok(verdict::PASS);
    };
    let Some(entry) = ct::lookup(&ct::key::<F::Ct>(&t, ct_dir::REPLY)) else {
        return Ok(verdict::PASS);
    };
    let v = unsafe { *entry };
    ct::touch(entry, select::now_seconds(), parse::tcp_flags(ip));
    count(Counter::NsTracked);
    rewrite_as::<F>(ctx, ip, &l4, &t, &v)?;
    Ok(verdict::OK)
}

/// [`egress`] as a function of its own (`Ns::OUTLINE`).
#[inline(never)]
fn egress_call<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    Raw::of(egress_call_body::<F>(ctx, ip))
}

#[inline(always)]
fn egress_call_body<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Outcome {
    egress_body::<F>(ctx, ip)
}

/// A SYN straight to a pod from a (client, port) whose REPLY entry a
/// translated flow holds (the pod's answers would be rewritten to that
/// flow's frontend). A flow that is over is forgotten, both entries, so the
/// new connection goes untouched; a live one keeps its entries and the SYN
/// is dropped (`NsCtClashDrop`), as netfilter drops a SYN that clashes with
/// a live connection: a forged SYN cannot tear a flow down. Costs one
/// lookup per SYN that reaches no frontend. The key and the entry are kept
/// in `rkey` and `val` (of the new flow's [`Room`]).
#[inline(always)]
fn direct_syn<F: Ns>(
    t: &Tuple<Addr<F>>,
    rkey: &mut MaybeUninit<F::Ct>,
    val: &mut MaybeUninit<CtVal<F>>,
) -> Outcome {
    let rkey = &*rkey.write(F::Ct::new(
        t.daddr,
        t.saddr,
        t.dport,
        t.sport,
        t.proto,
        ct_dir::REPLY,
    ));
    let Some(entry) = ct::lookup(rkey) else {
        return Ok(verdict::PASS);
    };
    let v = &*ct::copy_into(entry, val);
    if ct::reply_flow_over(rkey, v, select::now_seconds()) {
        ct::forget_reply_flow(rkey, v);
        Ok(verdict::PASS)
    } else {
        Err(DropReason::CtClash)
    }
}

/// Rewrites the packet's addresses and ports to the ones a conntrack entry names.
#[inline(always)]
fn rewrite_as<F: Ns>(
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

/// The flow's backend still exists with the address it was given (IPv4:
/// an array lookup the verifier inlines, see [`Frontend::backend_is`]).
#[inline(always)]
pub(crate) fn backend_still_there<F: Ns>(v: &CtVal<F>) -> bool {
    <F::Key as Frontend>::backend_is(v.backend_id(), (v.nat_daddr(), v.nat_dport()))
}

#[inline(always)]
fn translate_forward<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    v: &CtVal<F>,
) -> Outcome {
    if F::DSR && v.flags() & ct_flags::DSR != 0 {
        return F::dsr_forward(ctx, v, false);
    }
    translate_nat::<F>(ctx, ip, l4, t, v)
}

/// [`translate_forward`] of a flow that is not DSR (a new flow's: the
/// DSR call is then not part of IPv6's new flow frame).
#[inline(always)]
fn translate_nat<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    v: &CtVal<F>,
) -> Outcome {
    rewrite_as::<F>(ctx, ip, l4, t, v)?;
    if v.flags() & ct_flags::SNAT != 0 {
        // From a node address now: see fib.rs.
        F::forward(ctx, ip, v.nat_saddr(), v.nat_daddr())
    } else {
        Ok(verdict::OK)
    }
}

/// A packet for no frontend: a DSR packet from another node, a connection
/// straight to a pod, or anything else the node receives.
#[inline(always)]
fn not_a_frontend<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    t: &Tuple<Addr<F>>,
    cfg: &NodeConfig,
    room: &mut Room<F>,
) -> Outcome {
    if F::DSR {
        let v = F::dsr_receive(ctx, ip, cfg)?;
        if v != verdict::PASS {
            return Ok(v);
        }
    }
    if t.proto == proto::TCP && parse::tcp_flags(ip) & parse::TCP_SYN != 0 {
        return direct_syn::<F>(t, &mut room.rkey, &mut room.val);
    }
    Ok(verdict::PASS)
}

/// [`not_a_frontend`] as a function of its own (`Ns::OUTLINE`).
#[inline(never)]
fn not_a_frontend_call<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    let Some(t) = parse::tuple(ip) else {
        return Raw::of(Ok(verdict::PASS));
    };
    let cfg = ct::node_config();
    Raw::of(F::with_room(|room| {
        not_a_frontend::<F>(ctx, ip, &t, &cfg, room)
    }))
}

/// The port unreachable of a frontend without endpoints as a function of
/// its own (`Ns::OUTLINE`).
#[inline(never)]
fn reject_call<F: Ns>(ctx: &TcContext, ip: &F::Ip) -> Raw {
    Raw::of(F::reject(ctx, ip, &ct::node_config()))
}

/// The first packet of a new DSR flow whose FORWARD entry [`new_flow`] left
/// in the room, as a function of its own (`Ns::OUTLINE`).
#[inline(never)]
fn dsr_first_call<F: Ns>(ctx: &TcContext, fits: bool) -> Raw {
    // SAFETY: `new_flow` wrote the value before it returned DSR_FIRST*.
    Raw::of(F::with_room(|room| {
        F::dsr_forward(ctx, unsafe { room.val.assume_init_ref() }, fits)
    }))
}

/// A ClusterIP this node serves to outside clients (`--external-cluster-ip`).
#[inline(always)]
pub(crate) fn external_cluster_ip(svc: &SvcValue, cfg: &NodeConfig) -> bool {
    svc.flags & svc_flags::CLUSTER_IP != 0 && cfg.flags & node_flags::EXTERNAL_CLUSTER_IP != 0
}

/// A packet no flow knows: a new flow if it is for an exposed frontend.
/// Its keys and values are built in `room`.
#[inline(always)]
fn new_flow<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    cfg: &NodeConfig,
    room: &mut Room<F>,
) -> Outcome {
    let Some(svc) = select::lookup_svc(room.svc.write(F::Key::frontend(
        t.daddr,
        t.dport,
        t.proto,
        scope::EXTERNAL,
    ))) else {
        if F::OUTLINE {
            return Ok(NOT_A_FRONTEND);
        }
        return not_a_frontend::<F>(ctx, ip, t, cfg, room);
    };
    // SAFETY: written just above.
    let svc_key = unsafe { room.svc.assume_init_ref() };
    let mut slot = MaybeUninit::uninit();
    match admit::<F>(
        svc_key,
        &svc,
        t,
        cfg,
        ip.l4_facts().csum_in_packet,
        &mut slot,
    )? {
        Admission::NotExposed => return Ok(verdict::PASS),
        Admission::NoEndpoints if F::OUTLINE => return Ok(NO_ENDPOINTS),
        Admission::NoEndpoints => return F::reject(ctx, ip, cfg),
        Admission::Flow => {}
    }
    // SAFETY: admit wrote it (Admission::Flow).
    let flow = unsafe { slot.assume_init_ref() };
    let NewFlow {
        addr: backend_addr,
        port: backend_port,
        keep_client,
        dsr_candidate,
        ..
    } = *flow;
    let tcp_flags = parse::tcp_flags(ip);
    if t.proto == proto::TCP && tcp_flags & parse::TCP_SYN == 0 {
        count(Counter::NsCtLostFlow);
    }
    // DSR to a remote backend when the option fits the first packet; else
    // SNAT, except for a TCP segment other than a SYN (a flow this node
    // lost, which the backend's node may still know): see dsr.rs.
    let mut fits = false;
    let mut dsr = false;
    if dsr_candidate {
        fits = F::dsr_option_fits(ctx, backend_addr);
        dsr = fits;
        if !fits {
            count(Counter::NsDsrFallback);
            dsr = t.proto == proto::TCP && tcp_flags & parse::TCP_SYN == 0;
        }
    }
    let flags = flow.ct_flags(dsr);
    let (fwd, rev, fwd_key) = flow_entries::<F>(
        (&mut room.val, &mut room.rev, &mut room.key),
        t,
        (backend_addr, backend_port),
        flow.id,
        svc.rev_nat_id,
        flags,
        tcp_flags,
    );

    if dsr {
        // FORWARD only: the replies do not come back through this node.
        if F::Ct::map()
            .insert(fwd_key, fwd, BPF_NOEXIST as u64)
            .is_err()
        {
            return follow_winner::<F>(ctx, ip, l4, t, fwd_key, fwd);
        }
        count_new_flow();
        event::new_flow(ctx, ip, &*fwd);
        if F::OUTLINE {
            return Ok(if fits { DSR_FIRST_FITS } else { DSR_FIRST });
        }
        return F::dsr_forward(ctx, fwd, fits);
    }
    let snat = if keep_client {
        None
    } else {
        Some(F::node_addr(parse::ifindex(ctx)).ok_or(DropReason::NatFailed)?)
    };
    if let Entries::Lost = insert_entries::<F>(fwd_key, fwd, rev, &mut room.rkey, t, snat, cfg)? {
        return follow_winner::<F>(ctx, ip, l4, t, fwd_key, fwd);
    }
    count_new_flow();
    event::new_flow(ctx, ip, &*fwd);
    // Not DSR: that flow returned above.
    translate_nat::<F>(ctx, ip, l4, t, fwd)
}

/// What a packet no flow knows, to a frontend (`svc` found under `svc_key`),
/// becomes: TC's and XDP's one decision ([`admit`]).
pub(crate) enum Admission {
    /// Not served to clients from outside here: the stack's.
    NotExposed,
    /// No endpoint to send it to: TC rejects it (XDP leaves that to TC).
    NoEndpoints,
    /// A new flow, to the backend written in the caller's [`NewFlow`] slot
    /// (a slot, not a payload: XDP's frame has no 16 bytes to spare for a
    /// copy).
    Flow,
}

/// A new flow's backend and how it is reached.
#[derive(Clone, Copy)]
pub(crate) struct NewFlow<A> {
    pub addr: A,
    pub port: u16,
    pub id: u32,
    /// The backend is on this node.
    pub local: bool,
    /// No SNAT: the backend answers the client itself.
    pub keep_client: bool,
    /// `--lb-mode dsr` to a remote backend of an exposed frontend (not a
    /// ClusterIP: a DSR option may only name an exposed frontend, which the
    /// backend's node checks against ferry_memb4_v1): DSR if the option fits.
    pub dsr_candidate: bool,
}

impl<A> NewFlow<A> {
    /// The conntrack flags of the flow (`dsr`: it goes DSR).
    #[inline(always)]
    pub(crate) fn ct_flags(&self, dsr: bool) -> u8 {
        if self.keep_client {
            ct_flags::LOCAL
        } else if dsr {
            ct_flags::DSR
        } else if self.local {
            // Masqueraded: the reply comes back through ferry_tc_pod.
            ct_flags::SNAT | ct_flags::LOCAL
        } else {
            ct_flags::SNAT
        }
    }
}

/// The new-flow decision of TC and XDP alike, for a packet `t` to the
/// frontend `svc` (found under `svc_key`): exposed here? the client in the
/// source ranges? endpoints? which backend, and SNAT or the client kept?
/// `csum_in_packet`: the segment holds its L4 checksum (else it cannot be
/// rewritten). A new flow's backend is written into `flow`. Drops come
/// before any state is made.
#[inline(always)]
pub(crate) fn admit<F: Ns>(
    svc_key: &F::Key,
    svc: &SvcValue,
    t: &Tuple<Addr<F>>,
    cfg: &NodeConfig,
    csum_in_packet: bool,
    flow: &mut MaybeUninit<NewFlow<Addr<F>>>,
) -> Result<Admission, DropReason> {
    if svc.flags & EXPOSED == 0 && !external_cluster_ip(svc, cfg) {
        return Ok(Admission::NotExposed);
    }
    // Before anything else, so that a denied client creates no state.
    if svc.flags & svc_flags::SOURCE_RANGES != 0 && !F::in_source_ranges(svc.rev_nat_id, t.saddr) {
        return Err(DropReason::SourceRange);
    }
    if svc.count == 0 {
        if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
            // externalTrafficPolicy Local, endpoints only elsewhere:
            // dropped, so the load balancer's health check decides.
            return Err(DropReason::NoLocalEndpoint);
        }
        return Ok(Admission::NoEndpoints);
    }
    // A segment too short to hold its L4 checksum cannot be rewritten: dropped before any
    // conntrack or affinity state is made for it (found by the packet fuzzer).
    if !csum_in_packet {
        return Err(DropReason::Malformed);
    }
    // None: the agent is mid-update; the client retransmits.
    let chosen = select::choose(svc_key, svc, F::client(&t.saddr), Some(F::flow_hash(t)))
        .ok_or(DropReason::NoBackend)?;
    let (addr, port) = F::Key::backend_dest(&chosen.backend);
    let local = F::Key::backend_flags(&chosen.backend) & backend_flags::LOCAL != 0;
    // DSR mode: both families (ns.rs).
    let dsr_mode = F::DSR && cfg.flags & node_flags::DSR != 0;
    // externalTrafficPolicy Cluster masquerades even to a backend on this
    // node, as kube-proxy does: only eTP Local and `--lb-mode dsr` keep the
    // client's address. A host-network backend (a node address) keeps it
    // too: kube-proxy's masquerade never sees locally delivered packets.
    let keep_client =
        local && (svc.flags & svc_flags::ETP_LOCAL != 0 || dsr_mode || F::is_node(&addr));
    flow.write(NewFlow {
        addr,
        port,
        id: chosen.id,
        local,
        keep_client,
        dsr_candidate: !local && svc.flags & svc_flags::CLUSTER_IP == 0 && dsr_mode,
    });
    Ok(Admission::Flow)
}

/// A new flow's entries written into its room's slots (`val`, `rev`, `key`
/// of [`Room`]): FORWARD (to `backend`), REPLY (the backend's packets get
/// the frontend back as their source and the client as their destination)
/// and the FORWARD key.
/// TC's and XDP's new flows alike.
#[inline(always)]
pub(crate) fn flow_entries<'r, F: Ns>(
    (val, rev, key): (
        &'r mut MaybeUninit<CtVal<F>>,
        &'r mut MaybeUninit<CtVal<F>>,
        &'r mut MaybeUninit<F::Ct>,
    ),
    t: &Tuple<Addr<F>>,
    (backend_addr, backend_port): (Addr<F>, u16),
    backend_id: u32,
    rev_nat_id: u16,
    flags: u8,
    tcp_flags: u8,
) -> (&'r mut CtVal<F>, &'r CtVal<F>, &'r F::Ct) {
    let now = select::now_seconds();
    let entry = |saddr, daddr, sport, dport| {
        CtVal::<F>::new(
            saddr, daddr, sport, dport, backend_id, rev_nat_id, flags, tcp_flags, now,
        )
    };
    let fwd = val.write(entry(t.saddr, backend_addr, t.sport, backend_port));
    let rev = &*rev.write(entry(t.daddr, t.saddr, t.dport, t.sport));
    let fwd_key = &*key.write(ct::key(t, ct_dir::FORWARD));
    (fwd, rev, fwd_key)
}

/// How [`insert_entries`] went.
pub(crate) enum Entries {
    /// Both entries are in.
    Made,
    /// Another CPU made the flow first: its FORWARD entry is in the map
    /// (TC follows it; XDP leaves the packet to TC).
    Lost,
}

/// Writes a new flow's conntrack entries (from [`flow_entries`]; the flow
/// `t` as it arrived), TC's and XDP's alike. With the client's address kept
/// (`snat` None) FORWARD goes in first, so that of two CPUs racing on the
/// flow's first packets one wins and the other follows it, then REPLY
/// ([`claim_reply`]). With SNAT to the node address `snat`, the REPLY entry
/// claims the SNAT port first (its key built in `rkey`), then FORWARD is
/// written with that port.
#[inline(always)]
pub(crate) fn insert_entries<F: Ns>(
    fwd_key: &F::Ct,
    fwd: &mut CtVal<F>,
    rev: &CtVal<F>,
    rkey: &mut MaybeUninit<F::Ct>,
    t: &Tuple<Addr<F>>,
    snat: Option<Addr<F>>,
    cfg: &NodeConfig,
) -> Result<Entries, DropReason> {
    let map = F::Ct::map();
    match snat {
        None => {
            if map.insert(fwd_key, fwd, BPF_NOEXIST as u64).is_err() {
                return Ok(Entries::Lost);
            }
            let rkey = &*rkey.write(ct::reply_key(fwd, t.proto));
            if let Err(e) = claim_reply(rkey, rev) {
                let _ = map.remove(fwd_key);
                return Err(e);
            }
        }
        Some(node_addr) => {
            fwd.set_source(node_addr, t.sport);
            let rkey = rkey.write(ct::reply_key(fwd, t.proto));
            let port = ct::claim_snat_port(rkey, rev, t.sport, ct::snat_ports(cfg))
                .ok_or(DropReason::NatFailed)?;
            fwd.set_source(node_addr, port);
            if map.insert(fwd_key, fwd, BPF_NOEXIST as u64).is_err() {
                let _ = map.remove(rkey);
                return Ok(Entries::Lost);
            }
        }
    }
    Ok(Entries::Made)
}

#[inline(always)]
pub(crate) fn count_new_flow() {
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
pub(crate) fn claim_reply<K: CtKey>(rkey: &K, rev: &K::Value) -> Result<(), DropReason> {
    let map = K::map();
    if map.insert(rkey, rev, BPF_NOEXIST as u64).is_ok() {
        return Ok(());
    }
    let Some(entry) = ct::lookup(rkey) else {
        // Gone in between: ours to write.
        return map.insert(rkey, rev, 0).map_err(|_| DropReason::NatFailed);
    };
    // SAFETY: a live map value, read in place (no copy on IPv6's stack).
    let old = unsafe { &*entry };
    let own = old.nat_saddr() == rev.nat_saddr() && old.nat_sport() == rev.nat_sport();
    if !own {
        if !ct::reply_flow_over(rkey, old, rev.last_seen()) {
            return Err(DropReason::CtClash);
        }
        ct::forget_reply_flow(rkey, old);
    }
    map.insert(rkey, rev, 0).map_err(|_| DropReason::NatFailed)
}

/// Another CPU created the flow (FORWARD key `fwd_key`) first: translate
/// as it decided (its entry copied into `slot`).
#[inline(always)]
fn follow_winner<F: Ns>(
    ctx: &TcContext,
    ip: &F::Ip,
    l4: &L4,
    t: &Tuple<Addr<F>>,
    fwd_key: &F::Ct,
    slot: &mut CtVal<F>,
) -> Outcome {
    match ct::lookup(fwd_key) {
        Some(entry) => {
            // SAFETY: a live map value and the caller's slot of its type.
            unsafe { core::ptr::copy_nonoverlapping(entry, slot, 1) };
            count(Counter::NsTracked);
            if F::OUTLINE && F::DSR && slot.flags() & ct_flags::DSR != 0 {
                // The slot is the room's FORWARD value: see DSR_FIRST.
                return Ok(DSR_FIRST);
            }
            if F::OUTLINE {
                return translate_nat::<F>(ctx, ip, l4, t, slot);
            }
            translate_forward::<F>(ctx, ip, l4, t, slot)
        }
        None => Err(DropReason::NatFailed),
    }
}
