//! `ferry stats`: the kernel programs' event counters.

use anyhow::Context as _;

use crate::{
    cli::{Output, ShowArgs},
    datapath::Maps,
    paths::PinDir,
};

pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let maps = Maps::open_pinned(&PinDir::new(&args.bpffs))
        .with_context(|| format!("reading ferry's maps under {}", args.bpffs.display()))?;
    let counters = maps.counters();
    match args.output {
        Output::Json => {
            let m: serde_json::Map<String, serde_json::Value> = counters
                .iter()
                .map(|(c, n)| (c.name().to_string(), (*n).into()))
                .collect();
            println!("{}", serde_json::json!({ "counters": m }));
        }
        Output::Table => {
            for (c, n) in counters {
                println!("{:<24} {n}", c.name());
            }
        }
    }
    Ok(())
}
