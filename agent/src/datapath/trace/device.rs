//! A packet arriving on a node device: nodeport.rs `ingress` (a tracked flow,
//! else `new_flow`: exposed kinds, source ranges, reject or drop without
//! endpoints, the choice of select.rs with the client's address and the flow
//! hash of agent-common, the translation mode).

use std::net::SocketAddr;

use agent_common::{
    SvcValue, backend_flags, ct_dir, ct_flags, drop::DropReason, node_flags, svc_flags,
};

use super::codec::CtLookupValue;
use super::{
    Action, ConntrackInfo, EXPOSED, Placement, SourceRangeInfo, Tables, Tracer, Verdict, codec,
    dropped, verdict,
};
use crate::model::{Family, FrontendKey, Protocol, Scope};

impl<T: Tables> Tracer<'_, T> {
    /// nodeport.rs `ingress` (a tracked flow, else `new_flow`).
    pub(super) fn device(&mut self) -> Verdict {
        let f = self.flow;
        let family = Family::of(&f.dst);
        if Family::of(&f.src) != family {
            return verdict(
                Action::Pass,
                "source and destination are of different families: no such packet",
            );
        }
        if let Some(sport) = f.sport {
            let (src, dst) = (
                SocketAddr::new(f.src, sport),
                SocketAddr::new(f.dst, f.dport),
            );
            if let Some(v) = self.tracked(src, dst, family) {
                return v;
            }
        } else {
            self.note("no source port given: an existing flow of this client is not looked up");
        }
        let key = FrontendKey {
            ip: f.dst,
            port: f.dport,
            proto: f.proto,
            scope: Scope::External,
        };
        let Some(svc) = self.t.service(&codec::svc_key(&key, 0)) else {
            return self.not_a_frontend();
        };
        self.out.frontend = Some(self.frontend_info(&key, &svc, Scope::External));
        self.list_backends(&key, &svc);
        let external_cluster_ip = svc.flags & svc_flags::CLUSTER_IP != 0
            && self.t.node_flags() & node_flags::EXTERNAL_CLUSTER_IP != 0;
        if svc.flags & EXPOSED == 0 && !external_cluster_ip {
            return verdict(
                Action::Pass,
                "a ClusterIP arriving on a node device is not served (the agent runs without \
                 --external-cluster-ip): the packet goes on untouched",
            );
        }
        if svc.flags & svc_flags::SOURCE_RANGES != 0 {
            let allowed = self.t.in_source_ranges(svc.rev_nat_id, f.src);
            self.out.source_range = Some(SourceRangeInfo {
                rev_nat_id: svc.rev_nat_id,
                source: f.src,
                allowed,
            });
            if !allowed {
                return dropped(
                    DropReason::SourceRange,
                    "the source is outside the LoadBalancer's source ranges",
                );
            }
        }
        if svc.count == 0 {
            if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
                return dropped(
                    DropReason::NoLocalEndpoint,
                    "externalTrafficPolicy Local with no endpoint on this node",
                );
            }
            return verdict(
                Action::Reject,
                "no endpoints: answered with an ICMP port unreachable (within the node's \
                 rate limit)",
            );
        }
        let client = codec::affinity_client_ip(f.src);
        if svc.flags & svc_flags::AFFINITY != 0
            && let Some(id) = self.affinity(client, &svc, family)
        {
            let v = self.translated(
                id,
                family,
                "affinity",
                "the client's session affinity entry names the backend".into(),
            );
            return self.with_mode(v, &svc, family);
        }
        match self.place_flow(&key, &svc, &f, family) {
            Placement::Placed(v) => self.with_mode(v, &svc, family),
            Placement::Final(v) => v,
        }
    }

    /// nodeport.rs: how the chosen backend is reached.
    fn with_mode(&self, mut v: Verdict, svc: &SvcValue, family: Family) -> Verdict {
        let Some(b) = v.backend_id.and_then(|id| self.t.backend(id, family)) else {
            return v;
        };
        let local = b.flags() & backend_flags::LOCAL != 0;
        let dsr_mode = self.t.node_flags() & node_flags::DSR != 0;
        let host_backend = codec::backend_addr(&b).is_some_and(|a| self.t.is_node(a.ip));
        let keep = local && (svc.flags & svc_flags::ETP_LOCAL != 0 || dsr_mode || host_backend);
        v.mode = Some(
            if keep {
                "keep-client"
            } else if !local && svc.flags & svc_flags::CLUSTER_IP == 0 && dsr_mode {
                "dsr"
            } else {
                "snat"
            }
            .into(),
        );
        v
    }

    /// nodeport.rs `client_packet`: the flow's FORWARD entry decides while
    /// its backend is still there.
    pub(super) fn tracked(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        family: Family,
    ) -> Option<Verdict> {
        let key = codec::ct_key(src, dst, self.flow.proto, ct_dir::FORWARD)?;
        let v = self.t.conntrack(&key)?;
        let (nat_src, nat_dst, id, _rev, flags, last_seen) = codec::ct_value_parts(&v);
        let there = self
            .t
            .backend(id, family)
            .and_then(|b| codec::backend_addr(&b))
            .is_some_and(|a| a.ip == nat_dst.ip() && a.port == nat_dst.port());
        self.out.conntrack = Some(ConntrackInfo {
            backend_id: id,
            nat_src: nat_src.to_string(),
            nat_dst: nat_dst.to_string(),
            snat: flags & ct_flags::SNAT != 0,
            dsr: flags & ct_flags::DSR != 0,
            pod: flags & ct_flags::POD != 0,
            local_backend: flags & ct_flags::LOCAL != 0,
            idle_seconds: self.now.saturating_sub(last_seen),
            backend_still_there: there,
        });
        if !there {
            self.note("the flow's backend is gone: its entries are removed and it starts anew");
            return None;
        }
        let mode = if flags & ct_flags::DSR != 0 {
            "dsr"
        } else if flags & ct_flags::SNAT != 0 {
            "snat"
        } else {
            "keep-client"
        };
        Some(Verdict {
            backend: Some(nat_dst.to_string()),
            backend_id: Some(id),
            by: Some("conntrack".into()),
            mode: Some(mode.into()),
            ..verdict(
                Action::Translate,
                "a tracked flow: its conntrack entry names the backend",
            )
        })
    }

    /// nodeport.rs `not_a_frontend`: passes, unless a TCP SYN clashes with
    /// a live translated flow's reply entry (`direct_syn`).
    fn not_a_frontend(&mut self) -> Verdict {
        let f = self.flow;
        if f.proto == Protocol::Tcp
            && let Some(sport) = f.sport
            && let Some(key) = codec::ct_key(
                SocketAddr::new(f.dst, f.dport),
                SocketAddr::new(f.src, sport),
                f.proto,
                ct_dir::REPLY,
            )
            && let Some(v) = self.t.conntrack(&key)
        {
            let (.., last_seen) = codec::ct_value_parts(&v);
            let tcp_flags = match v {
                CtLookupValue::V4(v) => v.tcp_flags,
                CtLookupValue::V6(v) => v.tcp_flags,
            };
            let idle = self.now.saturating_sub(last_seen);
            if !agent_common::ct_over(f.proto.number(), tcp_flags, idle) {
                return dropped(
                    DropReason::CtClash,
                    "a SYN straight to a pod from a (client, port) whose reply a live \
                     translated flow holds",
                );
            }
        }
        verdict(
            Action::Pass,
            "not a frontend: the TC program lets the packet through untouched",
        )
    }
}
