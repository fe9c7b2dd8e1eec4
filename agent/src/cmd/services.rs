//! `ferry services`: what the kernel holds, decoded from the pinned maps.

use std::net::Ipv4Addr;

use agent_common::{backend_state, net::ip4_from_raw, net::port_from_raw};
use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::{Output, ShowArgs},
    datapath::{
        Maps,
        snapshot::{KernelState, flag_names},
    },
    model::Protocol,
    paths::PinDir,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendView {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: crate::model::Scope,
    pub flags: Vec<&'static str>,
    pub rev_nat_id: u16,
    pub affinity_timeout: Option<u32>,
    pub backends: Vec<BackendView>,
}

#[derive(Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub state: &'static str,
}

pub fn view(st: &KernelState) -> Vec<FrontendView> {
    st.frontends
        .iter()
        .map(|(k, f)| FrontendView {
            address: k.ip,
            port: k.port,
            protocol: k.proto,
            scope: k.scope,
            flags: flag_names(f.value.flags),
            rev_nat_id: f.value.rev_nat_id,
            affinity_timeout: (f.value.flags & agent_common::svc_flags::AFFINITY != 0)
                .then_some(f.value.affinity_timeout),
            backends: f
                .backend_ids
                .iter()
                .map(|&id| {
                    let b = st.backends.get(&id);
                    BackendView {
                        id,
                        address: b.map(|b| Ipv4Addr::from(ip4_from_raw(b.addr))),
                        port: b.map(|b| port_from_raw(b.port)),
                        protocol: b.and_then(|b| Protocol::from_number(b.proto)),
                        state: match b.map(|b| b.state) {
                            None => "missing",
                            Some(backend_state::ACTIVE) => "active",
                            Some(backend_state::TERMINATING) => "terminating",
                            Some(_) => "unknown",
                        },
                    }
                })
                .collect(),
        })
        .collect()
}

pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let maps = Maps::open_pinned(&PinDir::new(&args.bpffs))
        .with_context(|| format!("reading ferry's maps under {}", args.bpffs.display()))?;
    let frontends = view(&KernelState::read(&maps));
    match args.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "frontends": frontends }))?
            )
        }
        Output::Table => print!("{}", table(&frontends)),
    }
    Ok(())
}

fn table(frontends: &[FrontendView]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<28} {:<9} {:<30} {}\n",
        "FRONTEND", "SCOPE", "FLAGS", "BACKENDS"
    );
    for f in frontends {
        let fe = format!("{}:{}/{}", f.address, f.port, f.protocol);
        let scope = format!("{:?}", f.scope).to_lowercase();
        let mut flags = f.flags.join(",");
        if let Some(t) = f.affinity_timeout {
            let _ = write!(flags, "({t}s)");
        }
        let backends = if f.backends.is_empty() {
            "(none: connections are refused)".to_string()
        } else {
            f.backends
                .iter()
                .map(|b| match (b.address, b.port) {
                    (Some(a), Some(p)) if b.state == "active" => format!("{a}:{p}"),
                    (Some(a), Some(p)) => format!("{a}:{p} ({})", b.state),
                    _ => format!("#{} (missing)", b.id),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "{fe:<28} {scope:<9} {flags:<30} {backends}");
    }
    out
}
