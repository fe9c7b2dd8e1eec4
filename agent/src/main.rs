use clap::Parser as _;
use ferry::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.log_level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Agent(args) => ferry::cmd::agent::run(*args).await,
            Command::Services(args) => ferry::cmd::services::run(&args),
            Command::Stats(args) => ferry::cmd::stats::run(&args),
            Command::Conntrack(args) => ferry::cmd::conntrack::run(&args),
            Command::Cleanup(args) => ferry::cmd::cleanup::run(&args),
        }
    })
}
