//! The socket layer's step: sock_lb.rs `xlate_fwd` (frontend, ClusterIP port
//! check, the internal scope of a two-scope frontend, reject / let through to
//! the guard, the choice of select.rs with the client's network namespace and a
//! random place) and guard.rs (Local policy without local endpoint, source
//! ranges on the packet's source address).

use agent_common::{affinity_client, drop::DropReason, svc_flags};

use super::{Action, SourceRangeInfo, Tables, Tracer, Verdict, codec, dropped, unmapped, verdict};
use crate::model::{Family, FrontendKey, Scope};

impl<T: Tables> Tracer<'_, T> {
    /// sock_lb.rs `xlate_fwd` and guard.rs.
    pub(super) fn socket(&mut self, netns_cookie: Option<u64>) -> Verdict {
        let f = self.flow;
        let dst = unmapped(f.dst);
        let family = Family::of(&dst);
        let key = FrontendKey {
            ip: dst,
            port: f.dport,
            proto: f.proto,
            scope: Scope::External,
        };
        let Some(ext) = self.t.service(&codec::svc_key(&key, 0)) else {
            if self.t.service(&codec::cluster_ip_key(dst)).is_some() {
                return verdict(
                    Action::Reject,
                    "a ClusterIP on a port or protocol no Service defines: connect()/sendmsg() \
                     fail with ECONNREFUSED (kube-proxy's cluster-ips-check)",
                );
            }
            return verdict(
                Action::Pass,
                "not a frontend: the socket layer leaves the destination untouched",
            );
        };
        let (used, svc) = self.in_cluster_entry(&key, ext);
        self.out.frontend = Some(self.frontend_info(&key, &ext, used.scope));
        self.list_backends(&used, &svc);
        if svc.count == 0 {
            if svc.flags & svc_flags::DROP_NO_LOCAL != 0 {
                if self.t.service(&codec::cluster_ip_key(dst)).is_some() {
                    return dropped(
                        DropReason::GuardNoLocal,
                        "a Local traffic policy with no endpoint on this node: the socket \
                         keeps the ClusterIP and the egress guard drops its packets",
                    );
                }
                return verdict(
                    Action::Pass,
                    "a Local traffic policy with no endpoint on this node: the destination is \
                     left untranslated",
                );
            }
            return verdict(
                Action::Reject,
                "no endpoints: connect()/sendmsg() fail with ECONNREFUSED",
            );
        }
        let mut chosen = None;
        if svc.flags & svc_flags::AFFINITY != 0 {
            match netns_cookie {
                Some(cookie) => {
                    chosen = self.affinity((cookie, affinity_client::NETNS_COOKIE), &svc, family);
                }
                None => {
                    let n = self
                        .t
                        .affinity_of(svc.rev_nat_id, affinity_client::NETNS_COOKIE)
                        .len();
                    self.note(format!(
                        "session affinity keys on the client's network namespace: give --netns \
                         to look its entry up ({n} entries for this frontend)"
                    ));
                }
            }
        }
        let verdict = match chosen {
            Some(id) => self.translated(
                id,
                family,
                "affinity",
                "the client's session affinity entry names the backend".into(),
            ),
            None => {
                let candidates = self.candidates();
                if candidates.is_empty() {
                    return verdict(
                        Action::Reject,
                        "no backend slot resolves (the agent is mid-update): refused",
                    );
                }
                Verdict {
                    by: Some("random".into()),
                    detail: format!(
                        "a socket has no flow to hash yet: one of {} at random",
                        candidates.len()
                    ),
                    candidates,
                    ..verdict(Action::Translate, "")
                }
            }
        };
        if ext.flags & svc_flags::SOURCE_RANGES != 0 {
            let src = unmapped(f.src);
            let allowed =
                Family::of(&src) == family && self.t.in_source_ranges(ext.rev_nat_id, src);
            self.out.source_range = Some(SourceRangeInfo {
                rev_nat_id: ext.rev_nat_id,
                source: src,
                allowed,
            });
            if !allowed {
                return Verdict {
                    reason: Some(DropReason::GuardSourceRange.name().into()),
                    action: Action::Drop,
                    detail: "the source is outside the LoadBalancer's source ranges: the \
                             socket reaches the backend but the egress guard drops its packets"
                        .into(),
                    ..verdict
                };
            }
        }
        verdict
    }
}
