//! `ferry conntrack`: the north-south flows the kernel tracks.

use std::net::Ipv4Addr;

use agent_common::{Ct4Key, Ct4Value, ct_dir, ct_flags, net::ip4_from_raw, net::port_from_raw};
use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::{Output, ShowArgs},
    datapath::Maps,
    model::Protocol,
    northsouth::{flows, monotonic_seconds},
    paths::PinDir,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowView {
    pub direction: &'static str,
    pub protocol: Option<Protocol>,
    /// The packet as it arrives.
    pub src: String,
    pub dst: String,
    /// What it is rewritten to.
    pub nat_src: String,
    pub nat_dst: String,
    pub snat: bool,
    /// Direct server return: node A forwards with the frontend in an IP
    /// option; node B's reply entry answers the client from the frontend.
    pub dsr: bool,
    pub local_backend: bool,
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub idle_seconds: u32,
}

fn ep(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(ip4_from_raw(addr)),
        port_from_raw(port)
    )
}

pub fn view(k: &Ct4Key, v: &Ct4Value, now: u32) -> FlowView {
    let forward = k.dir == ct_dir::FORWARD;
    // Unchanged fields of the packet keep their values in the view.
    let (nat_src, nat_dst) = if forward {
        let src = if v.flags & ct_flags::SNAT != 0 {
            ep(v.nat_saddr, v.nat_sport)
        } else {
            ep(k.saddr, k.sport)
        };
        (src, ep(v.nat_daddr, v.nat_dport))
    } else {
        (ep(v.nat_saddr, v.nat_sport), ep(v.nat_daddr, v.nat_dport))
    };
    FlowView {
        direction: if forward { "forward" } else { "reply" },
        protocol: Protocol::from_number(k.proto),
        src: ep(k.saddr, k.sport),
        dst: ep(k.daddr, k.dport),
        nat_src,
        nat_dst,
        snat: v.flags & ct_flags::SNAT != 0,
        dsr: v.flags & ct_flags::DSR != 0,
        local_backend: v.flags & ct_flags::LOCAL != 0,
        backend_id: v.backend_id,
        rev_nat_id: v.rev_nat_id,
        idle_seconds: now.saturating_sub(v.last_seen),
    }
}

pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let maps = Maps::open_pinned(&PinDir::new(&args.bpffs))
        .with_context(|| format!("reading ferry's maps under {}", args.bpffs.display()))?;
    let now = monotonic_seconds();
    let views: Vec<FlowView> = flows(&maps).iter().map(|(k, v)| view(k, v, now)).collect();
    match args.output {
        Output::Json => println!("{}", serde_json::json!({ "flows": views })),
        Output::Table => {
            println!(
                "{:<8} {:<5} {:<22} {:<22} {:<22} {:<22} {:<5} {:>6}",
                "DIR", "PROTO", "SRC", "DST", "NAT-SRC", "NAT-DST", "MODE", "IDLE"
            );
            for f in views {
                let proto = f.protocol.map_or("?".to_string(), |p| p.to_string());
                let mode = match (f.snat, f.dsr, f.local_backend) {
                    (true, _, _) => "snat",
                    (_, true, _) => "dsr",
                    (_, _, true) => "local",
                    _ => "-",
                };
                println!(
                    "{:<8} {:<5} {:<22} {:<22} {:<22} {:<22} {:<5} {:>5}s",
                    f.direction, proto, f.src, f.dst, f.nat_src, f.nat_dst, mode, f.idle_seconds
                );
            }
        }
    }
    Ok(())
}
