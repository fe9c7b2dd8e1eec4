//! A pod's packet that the socket layer did not translate, on the ingress of
//! its device (`ferry_tc_pod`, pod_lb.rs): only ClusterIPs (their marker
//! first), a tracked pod flow (conntrack flagged POD), else a new flow: a
//! port no Service defines or no endpoints rejected (ICMP port
//! unreachable), Local without local endpoint dropped, session affinity
//! keyed by the pod's address, the choice of select.rs with the flow hash,
//! the pod's address kept (DNAT) unless the pod is its own backend
//! (hairpin: masqueraded to the node's address towards it) or the backend
//! is a pod the node reaches through the client's own device (a bridge:
//! masqueraded likewise, else its replies would cross the bridge alone).

use std::net::SocketAddr;

use agent_common::{backend_flags, drop::DropReason, svc_flags};

use super::{Action, Placement, Tables, Tracer, Verdict, codec, dropped, verdict};
use crate::model::{Family, FrontendKey, Scope};

/// How a pod flow reaches its backend: the pod's address kept, or
/// masqueraded (hairpin, or a backend on the client's bridge).
fn mode(hairpin: bool) -> &'static str {
    if hairpin { "masquerade" } else { "dnat" }
}

impl<T: Tables> Tracer<'_, T> {
    /// pod_lb.rs `from_pod`.
    pub(super) fn pod(&mut self) -> Verdict {
        let f = self.flow;
        let family = Family::of(&f.dst);
        if Family::of(&f.src) != family {
            return verdict(
                Action::Pass,
                "source and destination are of different families: no such packet",
            );
        }
        if self.t.service(&codec::cluster_ip_key(f.dst)).is_none() {
            return verdict(
                Action::Pass,
                "not a ClusterIP: ferry_tc_pod lets the pod's packet through untouched",
            );
        }
        if let Some(sport) = f.sport {
            if let Some(v) = self.pod_tracked(
                SocketAddr::new(f.src, sport),
                SocketAddr::new(f.dst, f.dport),
                family,
            ) {
                return v;
            }
        } else {
            self.note("no source port given: an existing flow of this pod is not looked up");
        }
        let key = FrontendKey {
            ip: f.dst,
            port: f.dport,
            proto: f.proto,
            scope: Scope::External,
        };
        let Some(ext) = self.t.service(&codec::svc_key(&key, 0)) else {
            return verdict(
                Action::Reject,
                "a ClusterIP on a port or protocol no Service defines: answered with an ICMP \
                 port unreachable (kube-proxy's cluster-ips-check)",
            );
        };
        if ext.flags & svc_flags::CLUSTER_IP == 0 {
            return verdict(
                Action::Pass,
                "not a ClusterIP frontend: ferry_tc_pod lets the packet through untouched",
            );
        }
        let (used, svc) = self.in_cluster_entry(&key, ext);
        self.out.frontend = Some(self.frontend_info(&key, &ext, used.scope));
        self.list_backends(&used, &svc);
        if svc.count == 0 {
            if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
                return dropped(
                    DropReason::NoLocalEndpoint,
                    "internalTrafficPolicy Local with no endpoint on this node",
                );
            }
            return verdict(
                Action::Reject,
                "no endpoints: answered with an ICMP port unreachable (within the node's \
                 rate limit)",
            );
        }
        if svc.flags & svc_flags::AFFINITY != 0
            && let Some(id) = self.affinity(codec::affinity_client_ip(f.src), &svc, family)
        {
            let v = self.translated(
                id,
                family,
                "affinity",
                "the pod's session affinity entry (keyed by its address) names the backend".into(),
            );
            return self.with_pod_mode(v, family);
        }
        match self.place_flow(&used, &svc, &f, family) {
            Placement::Placed(v) => self.with_pod_mode(v, family),
            Placement::Final(v) => v,
        }
    }

    /// pod_lb.rs `tracked_call`: a pod flow's FORWARD entry decides while
    /// its backend is still there; an entry of another path's flow leaves
    /// the packet alone.
    fn pod_tracked(&mut self, src: SocketAddr, dst: SocketAddr, family: Family) -> Option<Verdict> {
        let v = self.tracked(src, dst, family);
        let ct = self.out.conntrack.as_ref()?;
        if !ct.pod {
            return Some(verdict(
                Action::Pass,
                "a flow of the north-south path holds this tuple: ferry_tc_pod leaves it",
            ));
        }
        let snat = ct.snat;
        v.map(|v| Verdict {
            mode: Some(mode(snat).into()),
            ..v
        })
    }

    /// The pod path's translation mode of the chosen backend.
    fn with_pod_mode(&self, mut v: Verdict, family: Family) -> Verdict {
        let backend = v.backend_id.and_then(|id| self.t.backend(id, family));
        let addr = backend.as_ref().and_then(codec::backend_addr);
        let hairpin = addr.is_some_and(|a| a.ip == self.flow.src);
        // pod_lb.rs: a local backend routed through the device the client's packet came in on.
        let same_device = !hairpin
            && backend.is_some_and(|b| b.flags() & backend_flags::LOCAL != 0)
            && addr.is_some_and(|a| {
                let dev = self.t.route_device(a.ip);
                dev.is_some() && dev == self.t.route_device(self.flow.src)
            });
        if hairpin {
            v.detail.push_str(
                "; the pod is its own backend (hairpin): masqueraded to the node's address \
                 towards it, as kube-proxy does",
            );
        } else if same_device {
            v.detail.push_str(
                "; the backend is reached through the client's own device (a bridge), where its \
                 replies would pass no program: masqueraded to the node's address towards it",
            );
        }
        v.mode = Some(mode(hairpin || same_device).into());
        v
    }
}
