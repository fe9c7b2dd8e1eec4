use std::io::IsTerminal as _;

use ferry::cli::{Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    // --config: kube-proxy's file fills the agent's flags the command line left unset.
    let cli = match ferry::cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ferry::cli::ParseError::Clap(e)) => e.exit(),
        Err(ferry::cli::ParseError::Config(e)) => {
            eprintln!("Error: {e}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.log_level.as_str()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // One JSON object a line, for log pipelines (Loki, Elasticsearch).
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colours only for a person at a terminal: a pod's log or a file
        // gets no escape codes (and NO_COLOR is honoured).
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }

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
            Command::Trace(args) => ferry::cmd::trace::run(&args),
            Command::Monitor(args) => ferry::cmd::monitor::run(&args).await,
            Command::Cleanup(args) => ferry::cmd::cleanup::run(&args),
            Command::Preflight(args) => ferry::cmd::preflight::run(&args).await,
            Command::MountBpffs(args) => ferry::cmd::mount_bpffs::run(&args),
            Command::Completion { shell } => {
                use std::io::Write as _;
                std::io::stdout().write_all(&ferry::cli::completion(shell))?;
                Ok(())
            }
        }
    })
}

/// glibc gives each thread that allocates its own arena (up to 8 per CPU),
/// and an arena keeps what was freed in it: the threads that parse
/// manifests and load the programs left about 10 MiB of such pages behind
/// at 10,000 Services. One arena (every thread in the main heap, so the
/// parsers' freed pages are reused by the loop's objects) measured 12-14 MiB
/// below two on the control bench's peak (VmHWM) at 10,000 Services, with
/// either source. It is not free: the manifests' two parse threads then
/// share one lock, and the manifests full sync took 0.15-0.3 s longer
/// (1.36-1.48 s against 1.18-1.22 s, paired runs on a loaded 2-core VM);
/// the API source's did not move. MALLOC_ARENA_MAX in the environment still
/// decides.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
