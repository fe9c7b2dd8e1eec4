//! The report as text, for people.

use super::Trace;
use crate::model::SockAddr;

/// The report as text, for people.
pub fn render(t: &Trace) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let inferred = if t.from_inferred { " (inferred)" } else { "" };
    let layer = match t.layer.as_str() {
        "socket" => "the socket layer (connect/sendmsg hooks, egress guard)",
        "pod" => "a pod's device (TC ingress, per packet)",
        _ => "a node device (TC ingress)",
    };
    let _ = writeln!(
        out,
        "flow      {} -> {}/{} from {:?}{inferred}: {layer}, {} maps",
        t.src, t.dst, t.protocol, t.from, t.maps
    );
    match &t.frontend {
        Some(fe) => {
            let svc = match (&fe.service, &fe.port_name) {
                (Some(s), Some(p)) => format!("{s} port {p}"),
                (Some(s), None) => s.clone(),
                (None, _) => "(service unknown: agent not reached)".into(),
            };
            let _ = writeln!(
                out,
                "frontend  {}/{} {} {svc} [{}] rev-NAT {} scope {:?}",
                SockAddr(fe.address, fe.port),
                fe.protocol,
                fe.kind,
                fe.flags.join(","),
                fe.rev_nat_id,
                fe.scope
            );
        }
        None => {
            let _ = writeln!(out, "frontend  none");
        }
    }
    for b in &t.backends {
        let _ = writeln!(
            out,
            "backend   #{} {} {}{}",
            b.id,
            b.address.as_deref().unwrap_or("(missing)"),
            b.state,
            if b.local { " local" } else { "" }
        );
    }
    if let Some(r) = &t.source_range {
        let _ = writeln!(
            out,
            "ranges    {} {} the source ranges",
            r.source,
            if r.allowed { "is in" } else { "is outside" }
        );
    }
    if let Some(a) = &t.affinity {
        let _ = writeln!(
            out,
            "affinity  {} -> #{} {} age {}s of {}s: {}",
            a.client,
            a.backend_id,
            a.backend.as_deref().unwrap_or("(missing)"),
            a.age_seconds,
            a.timeout_seconds,
            if a.live { "live" } else { "expired" }
        );
    }
    if let Some(c) = &t.conntrack {
        let _ = writeln!(
            out,
            "conntrack #{} {} -> {} idle {}s{}",
            c.backend_id,
            c.nat_src,
            c.nat_dst,
            c.idle_seconds,
            if c.backend_still_there {
                ""
            } else {
                " (backend gone)"
            }
        );
    }
    for n in &t.notes {
        let _ = writeln!(out, "note      {n}");
    }
    let v = &t.verdict;
    let mut line = format!("{:?}", v.action).to_uppercase();
    if let Some(r) = &v.reason {
        let _ = write!(line, " {r}");
    }
    if let Some(b) = &v.backend {
        let _ = write!(line, " -> {b}");
    }
    if !v.candidates.is_empty() {
        let _ = write!(
            line,
            " -> one of {}: {}",
            v.candidates.len(),
            v.candidates.join(", ")
        );
    }
    if let Some(m) = &v.mode {
        let _ = write!(line, " ({m})");
    }
    let _ = writeln!(out, "verdict   {line}: {}", v.detail);
    out
}
