//! `ferry services`: what the kernel holds, decoded from the pinned maps,
//! joined with what the running agent knows that the maps cannot show:
//! frontends it could not program (with why, and when it retries) and the
//! problems of the objects it read.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use agent_common::svc_flags;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    cli::{Output, ServicesArgs},
    datapath::{Maps, codec, snapshot::KernelState},
    model::{FrontendKey, Protocol, Scope, SockAddr},
    paths::PinDir,
    server::status::{self, Status},
};

/// `ferry services -o json`: the contract tools and tests read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesView {
    pub frontends: Vec<FrontendView>,
    /// The agent's current problems with the objects it read (empty when
    /// the agent was not reached).
    #[serde(default)]
    pub diagnostics: Vec<String>,
    /// Whether the running agent answered (its status joined in).
    #[serde(default)]
    pub agent_reached: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendView {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
    pub flags: Vec<String>,
    pub rev_nat_id: u16,
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges in force (external scope).
    #[serde(default)]
    pub source_ranges: Vec<String>,
    /// "programmed", or "error": the agent could not write what the
    /// Service asks for (the kernel keeps the entry shown, or none).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub id: u32,
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub state: String,
}

/// The kernel's frontends, in key order.
pub fn view(st: &KernelState) -> Vec<FrontendView> {
    st.frontends
        .iter()
        .map(|(k, f)| FrontendView {
            address: k.ip,
            port: k.port,
            protocol: k.proto,
            scope: k.scope,
            flags: codec::flag_names(f.value.flags)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            rev_nat_id: f.value.rev_nat_id,
            affinity_timeout: (f.value.flags & svc_flags::AFFINITY != 0)
                .then_some(f.value.affinity_timeout),
            source_ranges: if k.scope == Scope::External
                && f.value.flags & svc_flags::SOURCE_RANGES != 0
            {
                st.src_ranges
                    .get(&f.value.rev_nat_id)
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect()
            } else {
                Vec::new()
            },
            status: "programmed".into(),
            error: None,
            service: None,
            backends: f
                .backend_ids
                .iter()
                .map(|&id| {
                    let b = st.backends.get(&id);
                    let addr = b.and_then(codec::backend_addr);
                    BackendView {
                        id,
                        address: addr.map(|a| a.ip),
                        port: addr.map(|a| a.port),
                        protocol: addr.map(|a| a.proto),
                        state: b
                            .map_or("missing", |b| codec::backend_state_name(b.state()))
                            .into(),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Joins the agent's status into the kernel's view: a frontend that failed
/// is marked (or added, when the kernel has none of it).
pub fn join(mut frontends: Vec<FrontendView>, status: Option<&Status>) -> ServicesView {
    let Some(status) = status else {
        return ServicesView {
            frontends,
            ..ServicesView::default()
        };
    };
    let mut index: BTreeMap<String, usize> = frontends
        .iter()
        .enumerate()
        .map(|(i, f)| (key_text(f), i))
        .collect();
    for p in &status.frontends {
        let i = match index.get(&p.frontend) {
            Some(&i) => i,
            // Programmed per the agent but not in the maps (a read racing
            // a write): the maps are the truth shown.
            None if p.status == "programmed" => continue,
            None => {
                let Some(f) = parse_key(&p.frontend) else {
                    continue;
                };
                frontends.push(f);
                index.insert(p.frontend.clone(), frontends.len() - 1);
                frontends.len() - 1
            }
        };
        let f = &mut frontends[i];
        f.status = p.status.clone();
        f.error = p.error.clone();
        f.service = Some(p.service.clone());
    }
    frontends.sort_by_key(|f| (f.address, f.port, f.protocol, f.scope));
    ServicesView {
        frontends,
        diagnostics: status.diagnostics.clone(),
        agent_reached: true,
    }
}

/// A frontend as the agent's status names it (`FrontendKey`'s Display).
fn key_text(f: &FrontendView) -> String {
    FrontendKey {
        ip: f.address,
        port: f.port,
        proto: f.protocol,
        scope: f.scope,
    }
    .to_string()
}

/// A frontend the kernel does not hold, from its key text.
fn parse_key(text: &str) -> Option<FrontendView> {
    let (main, scope) = match text.strip_suffix(" (internal)") {
        Some(m) => (m, Scope::Internal),
        None => (text, Scope::External),
    };
    let (addr, proto) = main.rsplit_once('/')?;
    let addr: SocketAddr = addr.parse().ok()?;
    Some(FrontendView {
        address: addr.ip(),
        port: addr.port(),
        protocol: match proto {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => return None,
        },
        scope,
        flags: Vec::new(),
        rev_nat_id: 0,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        status: String::new(),
        error: None,
        service: None,
        backends: Vec::new(),
    })
}

/// The running agent's status, if it answers on `addr`.
pub(crate) fn agent_status(addr: SocketAddr) -> Option<Status> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(s, "GET {} HTTP/1.0\r\nHost: {addr}\r\n\r\n", status::PATH).ok()?;
    let mut reply = Vec::new();
    s.take(64 << 20).read_to_end(&mut reply).ok()?;
    let text = String::from_utf8(reply).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|()| head.split_whitespace().nth(1) == Some("200"))?;
    serde_json::from_str(body).ok()
}

pub fn run(args: &ServicesArgs) -> anyhow::Result<()> {
    let bpffs = &args.show.bpffs;
    let maps = Maps::open_pinned(&PinDir::new(bpffs))
        .with_context(|| format!("reading ferry's maps under {}", bpffs.display()))?;
    let st = KernelState::read(&maps);
    let status = if args.no_agent {
        None
    } else {
        agent_status(args.agent)
    };
    let v = join(view(&st), status.as_ref());
    match args.show.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Table => print!("{}", table(&v)),
    }
    Ok(())
}

fn table(v: &ServicesView) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<33} {:<9} {:<11} {:<24} {:<30} {}\n",
        "FRONTEND", "SCOPE", "STATUS", "SERVICE", "FLAGS", "BACKENDS"
    );
    for f in &v.frontends {
        let fe = format!("{}/{}", SockAddr(f.address, f.port), f.protocol);
        let scope = format!("{:?}", f.scope).to_lowercase();
        let mut flags = f.flags.join(",");
        if let Some(t) = f.affinity_timeout {
            let _ = write!(flags, "({t}s)");
        }
        if !f.source_ranges.is_empty() {
            let _ = write!(flags, " from {}", f.source_ranges.join(","));
        }
        let backends = if f.backends.is_empty() {
            if f.status == "programmed" {
                "(none: connections are refused)".to_string()
            } else {
                String::new()
            }
        } else {
            f.backends
                .iter()
                .map(|b| match (b.address, b.port) {
                    (Some(a), Some(p)) if b.state == "active" => SockAddr(a, p).to_string(),
                    (Some(a), Some(p)) => format!("{} ({})", SockAddr(a, p), b.state),
                    _ => format!("#{} (missing)", b.id),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        // The agent names the Service; the kernel alone does not.
        let service = f.service.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "{fe:<33} {scope:<9} {:<11} {service:<24} {flags:<30} {backends}",
            f.status
        );
        if let Some(e) = &f.error {
            let _ = writeln!(out, "  {}: {e}", f.service.as_deref().unwrap_or("?"));
        }
    }
    if !v.diagnostics.is_empty() {
        let _ = writeln!(out, "\nproblems with the objects read:");
        for d in &v.diagnostics {
            let _ = writeln!(out, "  {d}");
        }
    }
    if !v.agent_reached {
        let _ = writeln!(out, "\n(the agent was not reached: kernel state only)");
    }
    out
}
