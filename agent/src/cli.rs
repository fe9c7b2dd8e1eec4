//! Command-line interface. The agent's flags follow kube-proxy's names.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    model::Cidr, paths::DEFAULT_BPFFS, server::proxy_health::DEFAULT_SYNC_PERIOD,
    source::kube::InitialList,
};

#[derive(Debug, Parser)]
#[command(name = "ferry", version = crate::VERSION, about = "An eBPF replacement for kube-proxy")]
pub struct Cli {
    /// Log level (off, error, warn, info, debug, trace), or tracing directives
    /// such as `info,ferry::control=debug`; RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "FERRY_LOG_LEVEL",
          value_parser = parse_log_level)]
    pub log_level: String,
    /// Log lines as text, or as one JSON object each.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text,
          env = "FERRY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: watch Services and EndpointSlices, program the kernel.
    Agent(Box<AgentArgs>),
    /// Show what the kernel holds: every frontend and its backends, with
    /// the running agent's status of each.
    Services(ServicesArgs),
    /// Show the kernel programs' event counters.
    Stats(ShowArgs),
    /// List the north-south flows the kernel tracks, with their translations.
    Conntrack(ShowArgs),
    /// What the kernel would do with a flow, read from the pinned maps (no
    /// packet is sent): the frontend, its backends, source ranges, session
    /// affinity, conntrack, and the backend chosen or the drop and its reason.
    Trace(TraceArgs),
    /// Print the datapath's events as they happen: drops with their reason,
    /// new flows with their backend, ICMP errors translated, port
    /// unreachables sent (events are on only while a monitor runs).
    Monitor(MonitorArgs),
    /// Detach and unpin everything ferry put in the kernel.
    Cleanup(CleanupArgs),
    /// Check every requirement of the agent on this node (privileges,
    /// kernel features, BTF, bpffs, cgroup2, ports, kube-proxy) and print one
    /// line each, with the fix; fails when one is not met.
    Preflight(PreflightArgs),
    /// Mount a bpf filesystem (mode 0700) where none is: an init container's
    /// job on nodes without one (kind); nothing to do when one is there.
    MountBpffs(MountBpffsArgs),
    /// Print a shell completion script: `ferry completion bash > /etc/bash_completion.d/ferry`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct MountBpffsArgs {
    #[arg(long, value_name = "PATH", default_value = crate::paths::BPFFS_MOUNT)]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Static source: a YAML file or a directory of them (v1 Service,
    /// discovery.k8s.io/v1 EndpointSlice, v1 Node); re-read on change.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// Kubernetes API source (without --manifests: KUBECONFIG, then in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// kube-proxy's configuration file (KubeProxyConfiguration v1alpha1, as in
    /// the kube-proxy ConfigMap): the fields ferry honours set their flags
    /// unless given on the command line; the others are named at start.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Fields of --config that ferry does not use (filled from the file).
    #[arg(skip)]
    pub config_ignored: Vec<String>,
    /// The API server's address (kube-proxy's flag): overrides the server of
    /// any kubeconfig; in a pod, used with the service account's credentials.
    #[arg(long, value_name = "URL", env = "FERRY_APISERVER")]
    pub master: Option<String>,
    /// The pod's service account (tests point it elsewhere).
    #[arg(long, value_name = "DIR", hide = true,
          default_value = crate::source::kube::apiserver::SERVICE_ACCOUNT_DIR)]
    pub service_account_dir: PathBuf,
    /// Kubeconfigs to take the API server's address from, in order (default:
    /// kube-proxy's, then the kubelet's under /host).
    #[arg(long, value_name = "PATH", hide = true)]
    pub apiserver_kubeconfig: Vec<PathBuf>,
    /// How API watches fetch their initial state: streaming lists (falling back to
    /// list+watch when the server refuses them), always streaming, or list+watch.
    #[arg(long, value_enum, default_value_t = InitialList::Auto)]
    pub initial_list: InitialList,
    /// This node's name (default: $NODE_NAME, else the hostname).
    #[arg(
        long,
        alias = "hostname-override",
        value_name = "NAME",
        env = "NODE_NAME"
    )]
    pub node_name: Option<String>,
    /// cgroup v2 directory the socket hooks attach to (default: the cgroup2 mount root).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Pin directory for maps and links (must be on a bpf filesystem).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Devices for the north-south programs.
    #[arg(long, value_name = "IF[,IF..]", value_delimiter = ',')]
    pub interfaces: Vec<String>,
    /// externalTrafficPolicy Cluster: SNAT to the receiving node's address
    /// (default, kube-proxy's masquerade, local backends included) or DSR
    /// (the client's address kept; a remote backend's node answers it
    /// directly).
    #[arg(long, value_enum, default_value_t = LbMode::Snat)]
    pub lb_mode: LbMode,
    /// The north-south fast path in XDP on the same devices, IPv4 and IPv6
    /// (Cilium's `--bpf-lb-acceleration`): tracked flows and new flows to
    /// NodePorts, externalIPs and LoadBalancer IPs are translated and
    /// forwarded before the kernel builds an skb; the rest (IPv6 extension
    /// headers among it) goes on to the TC programs.
    /// `native` needs driver support: a device without it keeps TC only
    /// (warned); on a veth the peer device must have GRO on or an XDP
    /// program, else what XDP forwards is dropped (warned). `generic` is
    /// for testing.
    #[arg(long, value_enum, default_value_t = Acceleration::Disabled)]
    pub acceleration: Acceleration,
    /// Load-balance packets from outside the cluster addressed to a
    /// ClusterIP, as kube-proxy does when something routes the service range
    /// to a node (Cilium's `bpf-lb-external-clusterip`). Off by default, as
    /// in Cilium: a ClusterIP is cluster-internal by contract, and serving it
    /// exposes every internal Service to whoever can route to the node.
    #[arg(long)]
    pub external_cluster_ip: bool,
    /// The socket hooks translate only for sockets of the host's network
    /// namespace; pods' traffic to ClusterIPs is translated per packet on
    /// their devices (Cilium's `bpf-lb-sock-hostns-only`: for service
    /// meshes that redirect pods' traffic, and sandboxes whose guests have
    /// no socket on the node).
    #[arg(long)]
    pub socket_lb_host_netns_only: bool,
    /// Default north-south backend choice; the Service annotation
    /// `ferry.io/lb-algorithm: maglev|random` overrides it.
    #[arg(long, value_enum, default_value_t = LbAlgorithm::Random)]
    pub lb_algorithm: LbAlgorithm,
    /// Entries of the north-south conntrack map (a flow takes two; a DSR
    /// flow one on each node). About 100 bytes each, allocated at load.
    #[arg(long, value_name = "N", default_value_t = agent_common::maps::CT_V4_MAX,
          value_parser = clap::value_parser!(u32).range(1024..=(1 << 24)))]
    pub conntrack_max: u32,
    /// Services that may use Maglev at once (a table of 16,381 entries
    /// each, allocated on use).
    #[arg(long, value_name = "N", default_value_t = agent_common::maps::MAGLEV_SERVICES,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub maglev_max_services: u32,
    /// Health server: GET /healthz, /readyz, /livez.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Metrics server: GET /metrics (Prometheus text), and the agent's
    /// status for `ferry services`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Serve only externalIPs inside these ranges (the
    /// DenyServiceExternalIPs admission plugin's job, for clusters without
    /// it); empty = any that is not a node's address nor in the service CIDR.
    #[arg(long, value_name = "CIDR[,CIDR..]", value_delimiter = ',')]
    pub external_ip_ranges: Vec<Cidr>,
    /// The cluster's Service CIDR(s): externalIPs inside are refused.
    #[arg(long, value_name = "CIDR[,CIDR..]", value_delimiter = ',')]
    pub service_cluster_ip_range: Vec<Cidr>,
    /// How often the kernel is compared with what was programmed and
    /// repaired (kube-proxy's full sync); changes are programmed at once
    /// whatever this says.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub full_sync_period: humantime::Duration,
    /// kube-proxy's --sync-period: the control loop turns at least this
    /// often, and /healthz and /livez fail when an update has waited, or
    /// the loop has not turned, for 2 × this (kube-proxy's healthz timeout).
    /// A Service that cannot be programmed never counts.
    #[arg(long, value_name = "DURATION",
          default_value_t = humantime::Duration::from(DEFAULT_SYNC_PERIOD),
          value_parser = sync_period)]
    pub sync_period: humantime::Duration,
}

/// At least a second: /healthz and /livez would flap on a loaded node below.
fn sync_period(s: &str) -> Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if *d < Duration::from_secs(1) {
        return Err(format!(
            "{s} is too short: at least 1s (/healthz and /livez fail after 2 × the sync period)"
        ));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub show: ShowArgs,
    /// The agent's metrics address, where it serves its status.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10249")]
    pub agent: SocketAddr,
    /// Kernel state only: do not ask the agent.
    #[arg(long)]
    pub no_agent: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The client: IP or IP:PORT ([IPv6]:PORT); the source port places a
    /// north-south flow (its hash) and finds its conntrack entry.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// The destination: IP:PORT/PROTO, PROTO tcp or udp.
    #[arg(value_name = "DST:PORT/PROTO")]
    pub dst: String,
    /// Where the flow starts: a pod or a host process (the socket layer),
    /// or a packet arriving on a node device. Default: inferred from SRC
    /// (this node's address: host; a local endpoint's: pod; else external).
    #[arg(long, value_enum)]
    pub from: Option<crate::datapath::trace::Origin>,
    /// The client's network namespace (e.g. /run/netns/NAME,
    /// /proc/PID/ns/net): the socket layer keys session affinity on it.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t = TraceOutput::Text)]
    pub output: TraceOutput,
    /// The agent's metrics address, where it serves its status (the
    /// frontend's Service name).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10249")]
    pub agent: SocketAddr,
    /// Kernel state only: do not ask the agent.
    #[arg(long)]
    pub no_agent: bool,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Only events of these kinds (repeat or separate with commas).
    #[arg(long = "type", value_enum, value_delimiter = ',')]
    pub types: Vec<EventType>,
    /// Only events of this Service (NAMESPACE/NAME, as `ferry services` names it).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub service: Option<String>,
    /// Only events with this address (client, frontend, backend or SNAT source).
    #[arg(long, value_name = "IP")]
    pub address: Option<std::net::IpAddr>,
    /// Only events with this port (any of the tuple's).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    #[arg(short = 'o', long, value_enum, default_value_t = MonitorOutput::Text)]
    pub output: MonitorOutput,
    /// The agent's metrics address, where it names the Services.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10249")]
    pub agent: SocketAddr,
    /// Do not ask the agent: frontends only, no Service names.
    #[arg(long)]
    pub no_agent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceOutput {
    Text,
    Json,
}

/// `ferry monitor --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Packets dropped, with the reason.
    Drop,
    /// New north-south flows, with their backend.
    Flow,
    /// ICMP errors translated and port unreachables sent.
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MonitorOutput {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The cgroup the agent would attach to (default: the cgroup2 mount).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Check the API server the agent would use, found as the agent finds it
    /// (this kubeconfig, KUBECONFIG, or the pod's service account).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, value_name = "URL", env = "FERRY_APISERVER")]
    pub master: Option<String>,
    /// Leave the API server out (nodes fed from --manifests).
    #[arg(long)]
    pub no_api: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Also detach ferry's programs from this cgroup, even links a running
    /// agent still holds.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Remove kube-proxy's rules instead of ferry's datapath, as
    /// `kube-proxy --cleanup` does (iptables chains, nftables tables), once
    /// kube-proxy no longer runs on the node.
    #[arg(long, conflicts_with = "cgroup")]
    pub kube_proxy: bool,
    /// With --kube-proxy: run the host's iptables and nft from this root
    /// (`/host` in a `kubectl debug node/...` pod).
    #[arg(long, value_name = "PATH", requires = "kube_proxy")]
    pub host_root: Option<PathBuf>,
}

/// How north-south traffic reaches a backend on another node
/// (externalTrafficPolicy Cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LbMode {
    /// Source NAT to the node's address, as kube-proxy does: works with any
    /// backend node, the backend sees the node's address.
    Snat,
    /// Direct server return: the backend sees the client's address and its
    /// node answers the client directly (needs ferry on every node).
    Dsr,
}

/// Where the XDP fast path runs (`--acceleration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acceleration {
    /// In the driver, before the skb: the fast path.
    Native,
    /// After the skb is built (any device): the same translation, without
    /// the gain; for testing and for devices without native XDP.
    Generic,
    /// TC only.
    Disabled,
}

/// Backend choice for north-south traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LbAlgorithm {
    Random,
    /// Maglev consistent hashing: every node picks the same backend for a flow.
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// A level, or directives each naming one (`target=level`). A bare word that
/// is not a level would be read by tracing as a target to log at every
/// level, silencing everything else: `--log-level inf` must be an error.
fn parse_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |w: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(w.trim()));
    for d in s.split(',').filter(|d| !d.trim().is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !is_level(level) {
            return Err(format!(
                "`{d}` names no level: use one of {} or target=level",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_level_that_names_no_level_is_refused() {
        for good in [
            "info",
            "DEBUG",
            "info,ferry::control::run=debug",
            "warn,aya=off",
        ] {
            let c = Cli::try_parse_from(["ferry", "--log-level", good, "stats"]);
            assert!(c.is_ok(), "{good}: {:?}", c.err());
        }
        for bad in ["inf", "verbose", "info,ferry=loud", "ferry::control"] {
            let e = Cli::try_parse_from(["ferry", "--log-level", bad, "stats"])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--log-level") && e.contains("names no level"),
                "{bad}: {e}"
            );
        }
    }

    fn agent(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        let argv = ["ferry", "agent"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Agent(a) => *a,
            _ => unreachable!("parsed as the agent"),
        })
    }

    #[test]
    fn sync_period_defaults_to_kube_proxys_and_refuses_under_a_second() {
        assert_eq!(*agent(&[]).unwrap().sync_period, DEFAULT_SYNC_PERIOD);
        let a = agent(&["--sync-period", "1s"]).unwrap();
        assert_eq!(*a.sync_period, Duration::from_secs(1));
        for bad in ["0s", "500ms", "soon"] {
            let e = agent(&["--sync-period", bad]).unwrap_err().to_string();
            assert!(e.contains("--sync-period"), "{bad}: {e}");
        }
    }

    #[test]
    fn acceleration_defaults_to_disabled_and_takes_the_three_modes() {
        assert_eq!(agent(&[]).unwrap().acceleration, Acceleration::Disabled);
        for (arg, want) in [
            ("native", Acceleration::Native),
            ("generic", Acceleration::Generic),
            ("disabled", Acceleration::Disabled),
        ] {
            assert_eq!(agent(&["--acceleration", arg]).unwrap().acceleration, want);
        }
        let e = agent(&["--acceleration", "fast"]).unwrap_err().to_string();
        assert!(e.contains("--acceleration"), "{e}");
    }

    /// A dual-stack cluster has a Service CIDR per family (kube-proxy's
    /// `--cluster-cidr`/`--service-cluster-ip-range` take both, comma separated).
    #[test]
    fn service_ranges_take_both_families() {
        let a = agent(&[
            "--service-cluster-ip-range",
            "10.96.0.0/12,fd00:96::/108",
            "--external-ip-ranges",
            "2001:db8::/32",
        ])
        .unwrap();
        let shown: Vec<String> = a
            .service_cluster_ip_range
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.96.0.0/12", "fd00:96::/108"]);
        assert!(
            a.external_ip_ranges[0].contains("2001:db8::1".parse().unwrap()),
            "{:?}",
            a.external_ip_ranges
        );
        let e = agent(&["--service-cluster-ip-range", "fd00::/129"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--service-cluster-ip-range"), "{e}");
    }
}

/// The completion script of `shell` for the whole command line.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut out);
    out
}

#[cfg(test)]
mod config_file_tests {
    use super::*;

    #[test]
    fn the_file_fills_what_the_command_line_left_unset() {
        let dir = std::env::temp_dir().join(format!("ferry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.conf");
        std::fs::write(
            &path,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             metricsBindAddress: 0.0.0.0:10249\nsyncPeriod: 1m0s\nhostnameOverride: node-7\n\
             logging:\n  format: json\nmode: ipvs\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let cli = parse_from([
            "ferry",
            "agent",
            "--manifests",
            "/m",
            "--config",
            p,
            "--sync-period",
            "5s",
        ])
        .unwrap();
        let Command::Agent(a) = &cli.command else {
            panic!("an agent")
        };
        assert_eq!(a.metrics_bind_address, "0.0.0.0:10249".parse().unwrap());
        assert_eq!(*a.sync_period, Duration::from_secs(5), "the flag wins");
        assert_eq!(a.node_name.as_deref(), Some("node-7"));
        assert_eq!(a.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(a.config_ignored, ["mode"]);
        // A global flag before the subcommand wins too.
        let cli = parse_from([
            "ferry",
            "--log-format",
            "text",
            "agent",
            "--manifests",
            "/m",
            "--config",
            p,
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        let e = parse_from(["ferry", "agent", "--config", "/nonexistent/config.conf"]).unwrap_err();
        assert!(matches!(e, ParseError::Config(_)), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod completion_tests {
    use super::*;

    #[test]
    fn completions_know_every_command_and_the_agents_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let text = String::from_utf8(completion(shell)).unwrap();
            for word in ["preflight", "conntrack", "cleanup", "lb-mode", "kube-proxy"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
        }
    }
}

/// Why the command line was refused.
#[derive(Debug)]
pub enum ParseError {
    Clap(clap::Error),
    Config(crate::cmd::kube_proxy_config::ConfigError),
}

/// The command line, with `ferry agent --config` applied.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(ParseError::Clap)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    if let Some(agent) = matches.subcommand_matches("agent") {
        let explicit = |id: &str| {
            matches!(
                agent.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        apply_config_file(&mut cli, explicit).map_err(ParseError::Config)?;
    }
    Ok(cli)
}

/// Applies `--config` to `cli` (an agent's): each honoured field sets its flag unless
/// `explicit(flag id)` says the command line or the environment gave it.
pub fn apply_config_file(
    cli: &mut Cli,
    explicit: impl Fn(&str) -> bool,
) -> Result<(), crate::cmd::kube_proxy_config::ConfigError> {
    let Command::Agent(args) = &mut cli.command else {
        return Ok(());
    };
    let Some(path) = args.config.clone() else {
        return Ok(());
    };
    let f = crate::cmd::kube_proxy_config::read(&path)?;
    if let Some(a) = f
        .healthz_bind_address
        .filter(|_| !explicit("healthz_bind_address"))
    {
        args.healthz_bind_address = a;
    }
    if let Some(a) = f
        .metrics_bind_address
        .filter(|_| !explicit("metrics_bind_address"))
    {
        args.metrics_bind_address = a;
    }
    if let Some(n) = f.hostname_override.filter(|_| !explicit("node_name")) {
        args.node_name = Some(n);
    }
    if let Some(d) = f.sync_period.filter(|_| !explicit("sync_period")) {
        args.sync_period = d.into();
    }
    if let Some(k) = f
        .kubeconfig
        .filter(|_| !explicit("kubeconfig") && args.manifests.is_none())
    {
        args.kubeconfig = Some(k.into());
    }
    args.config_ignored = f.ignored;
    if let Some(json) = f.log_json.filter(|_| !explicit("log_format")) {
        cli.log_format = if json {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    Ok(())
}
