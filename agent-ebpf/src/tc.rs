//! The TC programs on the node's devices (north-south load balancing).
//!
//! `ferry_tc_in` (ingress): packets for NodePorts, externalIPs and
//! LoadBalancer IPs start or continue a translated flow; replies of remote
//! backends to our SNAT ports are translated back; ICMP errors about
//! translated flows are translated; with `--lb-mode dsr`, flows to remote
//! backends keep the client's address and carry their frontend to the
//! backend's node in an IP option, and packets arriving with that option for
//! a backend on this node are recorded and stripped (dsr.rs). `ferry_tc_out`
//! (egress): replies of local backends (and of DSR flows received) get their
//! frontend back as the source, and ICMP errors they send about a flow are
//! translated likewise. `ferry_tc_pod` (ingress of the devices the node
//! reaches its local endpoints through): a local backend's replies to the
//! node address a masqueraded flow gave it (externalTrafficPolicy Cluster)
//! are translated back and forwarded to the client.
//!
//! IPv4 only for now; fragments after the first pass untouched.

use agent_common::proto;
use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{
    icmp::{self, Side},
    nodeport, parse,
};

/// Program verdicts (TCX names them TCX_NEXT/PASS/DROP/REDIRECT; the values
/// are the classic TC_ACT_* ones). Redirects return what `bpf_redirect`
/// returns (TC_ACT_REDIRECT).
#[allow(
    clippy::unnecessary_cast,
    reason = "the bindings type these u32 for some targets, i32 for others"
)]
pub mod verdict {
    use aya_ebpf::bindings as b;

    /// Not ours: the next program on the device (or the stack) decides.
    pub const PASS: i32 = b::TC_ACT_UNSPEC as i32;
    /// Translated: on to the stack, done with (later programs are skipped).
    pub const OK: i32 = b::TC_ACT_OK as i32;
    pub const SHOT: i32 = b::TC_ACT_SHOT as i32;
}

#[classifier]
pub fn ferry_tc_in(ctx: TcContext) -> i32 {
    dispatch(&ctx, Side::Ingress)
}

#[classifier]
pub fn ferry_tc_out(ctx: TcContext) -> i32 {
    dispatch(&ctx, Side::Egress)
}

#[classifier]
pub fn ferry_tc_pod(ctx: TcContext) -> i32 {
    dispatch(&ctx, Side::Pod)
}

/// One packet met on `side` (a constant in each program, folded away): TCP
/// and UDP to the north-south flows, ICMP errors to their translation.
#[inline(always)]
fn dispatch(ctx: &TcContext, side: Side) -> i32 {
    let Some(ip) = parse::ipv4(ctx) else {
        return verdict::PASS;
    };
    if ip.hdr.is_later_fragment() {
        return verdict::PASS;
    }
    match ip.hdr.proto {
        proto::TCP | proto::UDP => match side {
            Side::Ingress => nodeport::ingress(ctx, &ip),
            Side::Egress => nodeport::egress(ctx, &ip),
            Side::Pod => nodeport::from_pod(ctx, &ip),
        },
        parse::IPPROTO_ICMP => icmp::translate_error(ctx, &ip, side),
        _ => verdict::PASS,
    }
}
