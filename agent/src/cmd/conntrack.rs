//! `ferry conntrack`: the north-south flows the kernel tracks.

use anyhow::Context as _;

use crate::{
    cli::{Output, ShowArgs},
    datapath::{
        Maps,
        codec::{CtKey as _, FlowView},
    },
    northsouth::{flows, monotonic_seconds},
    paths::PinDir,
};

pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let maps = Maps::open_pinned(&PinDir::new(&args.bpffs))
        .with_context(|| format!("reading ferry's maps under {}", args.bpffs.display()))?;
    let now = monotonic_seconds();
    let (v4, v6) = flows(&maps);
    let views: Vec<FlowView> = v4
        .iter()
        .map(|(k, v)| k.view(v, now))
        .chain(v6.iter().map(|(k, v)| k.view(v, now)))
        .collect();
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
