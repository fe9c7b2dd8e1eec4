//! The agent in a lab: starting and stopping `ferry agent` in the node namespace, its logs,
//! and the ferry commands that read what it pinned (`services`, `stats`, `cleanup`).

use std::{
    fs::{self, File},
    io::Read,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use ferry::cmd::services::ServicesView;
use serde_json::Value;

use crate::{
    cleanup,
    lab::{HEALTHZ_PORT, Lab, NODE_NAME},
    proc::{self, POLL, Placement, Proc, lock},
};

/// How to start the agent.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    /// Appended to the standard arguments.
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ready_timeout: Duration,
    /// Watch the Kubernetes API through this kubeconfig instead of reading the lab's
    /// manifests directory.
    pub kubeconfig: Option<PathBuf>,
    /// Neither `--kubeconfig` nor `--manifests`: the agent finds the API server itself (its
    /// flags in `extra_args` say where to look).
    pub discover_api: bool,
    /// A program (and its arguments) that execs the agent: `prlimit --nofile=..`,
    /// `setpriv --bounding-set=..`; the process keeps its PID.
    pub wrapper: Vec<String>,
}

impl Default for AgentOpts {
    fn default() -> Self {
        AgentOpts {
            extra_args: Vec::new(),
            // Plain logs: they are files, printed when a test fails.
            env: vec![
                ("RUST_BACKTRACE".into(), "1".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            ready_timeout: Duration::from_secs(10),
            kubeconfig: None,
            discover_api: false,
            wrapper: Vec::new(),
        }
    }
}

impl Lab {
    /// The ferry binary: `$FERRY_BIN`, else next to the test binaries (target/debug/ferry).
    pub fn ferry_bin() -> PathBuf {
        if let Some(bin) = std::env::var_os("FERRY_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "FERRY_BIN={} does not exist: build it: cargo build -p agent",
                bin.display()
            );
            return bin;
        }
        proc::sibling_binary("ferry").unwrap_or_else(|| {
            panic!("the ferry binary is missing (no FERRY_BIN, nothing next to the test binary): build it: cargo build -p agent")
        })
    }

    /// Starts `ferry agent` in the node namespace (network namespace only: it is in no lab
    /// cgroup) and waits until `/readyz` answers 200. Returns the time it took.
    pub fn start_agent(&self, opts: &AgentOpts) -> Duration {
        assert!(
            !self.node.is_empty(),
            "this lab has several nodes: start their agents through the cluster"
        );
        let bin = Lab::ferry_bin();
        let mut agent = lock(&self.agent);
        if let Some(running) = agent.as_ref()
            && running.is_running()
        {
            panic!("the agent is already running");
        }
        let n = {
            let mut logs = lock(&self.agent_logs);
            let path = self.tmp.join(format!("agent-{}.log", logs.len() + 1));
            logs.push(path);
            logs.len()
        };
        let log_path = self.tmp.join(format!("agent-{n}.log"));
        let log = File::create(&log_path).expect("creating the agent log");
        let mut cmd = self.agent_command(&bin, opts, &self.pin_dir());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup of the log fd"))
            .stderr(log);
        let placement = Placement {
            netns: Some(self.node_netns_path()),
            cgroup: None,
        };
        let started = Instant::now();
        let child = proc::spawn_placed(&mut cmd, &placement)
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let pid = child.id();
        let pin = self.pin_dir();
        cleanup::update(&self.id, |r| {
            r.agent_pid = Some(pid);
            r.ferry_cleanup = Some((bin.clone(), pin, self.cgroup.clone()));
        });
        let proc = Proc::new(format!("ferry agent #{n}"), child);
        let deadline = started + opts.ready_timeout;
        loop {
            if !proc.is_running() {
                let status = proc.wait_exit(Duration::ZERO);
                drop(proc);
                panic!(
                    "the agent exited before it was ready ({status:?}); log:\n{}",
                    self.agent_log()
                );
            }
            if self.readyz() == Some(200) {
                break;
            }
            if Instant::now() >= deadline {
                drop(proc);
                panic!(
                    "the agent was not ready after {:?}; log:\n{}",
                    opts.ready_timeout,
                    self.agent_log()
                );
            }
            thread::sleep(POLL);
        }
        *agent = Some(proc);
        started.elapsed()
    }

    /// `ferry agent` as the lab starts it, pinning under `pin_dir`.
    fn agent_command(&self, bin: &Path, opts: &AgentOpts, pin_dir: &Path) -> Command {
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("agent");
        // Lab agents never use the machine's kubeconfig.
        cmd.env_remove("KUBECONFIG");
        match &opts.kubeconfig {
            _ if opts.discover_api => &mut cmd,
            Some(kubeconfig) => cmd.arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("--manifests").arg(self.manifests.dir()),
        };
        cmd.args(["--node-name", NODE_NAME])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(pin_dir)
            .args(["--healthz-bind-address", &format!("0.0.0.0:{HEALTHZ_PORT}")])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `ferry agent` (pinning under `pin_dir`) in the node namespace for an agent that
    /// must refuse to start: its output once it exited, or after `timeout` (killed then).
    pub fn agent_until_exit(&self, opts: &AgentOpts, pin_dir: &Path, timeout: Duration) -> Output {
        let bin = Lab::ferry_bin();
        let mut cmd = self.agent_command(&bin, opts, pin_dir);
        let placement = Placement {
            netns: Some(self.node_netns_path()),
            cgroup: None,
        };
        proc::output_placed(&mut cmd, &placement, timeout)
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }

    /// The HTTP status of the agent's /readyz (None if nothing answered).
    pub fn readyz(&self) -> Option<u16> {
        self.healthz_status("/readyz")
    }

    /// The HTTP status of a path on the agent's health server, asked from the node namespace.
    pub fn healthz_status(&self, path: &str) -> Option<u16> {
        http_status_in(&self.node_netns_path(), HEALTHZ_PORT, path)
    }

    /// Sends SIGTERM to the agent and waits for it (SIGKILL after 10 s).
    pub fn stop_agent(&self) -> Option<ExitStatus> {
        let proc = lock(&self.agent).take()?;
        let status = proc.terminate_with(Duration::from_secs(10));
        cleanup::update(&self.id, |r| r.agent_pid = None);
        status
    }

    /// The running agent's PID.
    pub fn agent_pid(&self) -> Option<u32> {
        lock(&self.agent)
            .as_ref()
            .filter(|p| p.is_running())
            .map(Proc::pid)
    }

    pub fn agent_running(&self) -> bool {
        lock(&self.agent).as_ref().is_some_and(Proc::is_running)
    }

    /// The log of the latest agent run.
    pub fn agent_log(&self) -> String {
        lock(&self.agent_logs)
            .last()
            .map(|p| read_lossy(p))
            .unwrap_or_default()
    }

    /// The logs of every agent run, with headers.
    pub fn agent_logs(&self) -> String {
        lock(&self.agent_logs)
            .iter()
            .map(|p| format!("--- {}\n{}", p.display(), read_lossy(p)))
            .collect()
    }

    /// Runs the ferry binary in the root namespaces (for the commands that only read pins).
    pub fn ferry(&self, args: &[&str]) -> Output {
        let bin = Lab::ferry_bin();
        proc::output_placed(
            Command::new(&bin).args(args).env("NO_COLOR", "1"),
            &Placement::default(),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }

    /// `ferry services --bpffs <pin> -o json`, or why it failed.
    pub fn try_services(&self) -> std::result::Result<ServicesView, String> {
        let pin = self.pin_dir();
        let out = self.ferry(&["services", "--bpffs", &pin.to_string_lossy(), "-o", "json"]);
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn services(&self) -> ServicesView {
        self.try_services()
            .unwrap_or_else(|e| panic!("ferry services: {e}"))
    }

    /// `ferry services` in its default (table) format.
    pub fn services_table(&self) -> String {
        let pin = self.pin_dir();
        let out = self.ferry(&["services", "--bpffs", &pin.to_string_lossy()]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Polls `ferry services` until `pred` holds; returns how long it took.
    pub fn wait_services(
        &self,
        pred: impl Fn(&ServicesView) -> bool,
        deadline: Duration,
    ) -> Duration {
        crate::services::wait_until(
            "ferry services",
            || self.try_services(),
            pred,
            deadline,
            || self.agent_log(),
        )
    }

    /// `ferry stats --bpffs <pin> -o json`.
    pub fn stats(&self) -> Value {
        let pin = self.pin_dir();
        let out = self.ferry(&["stats", "--bpffs", &pin.to_string_lossy(), "-o", "json"]);
        assert!(
            out.status.success(),
            "ferry stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ferry stats -o json is JSON")
    }

    /// `ferry cleanup --bpffs <pin> --cgroup <cg>`.
    pub fn ferry_cleanup(&self) -> Output {
        let pin = self.pin_dir();
        let cg = self.cgroup.to_string_lossy().into_owned();
        self.ferry(&[
            "cleanup",
            "--bpffs",
            &pin.to_string_lossy(),
            "--cgroup",
            &cg,
        ])
    }

    /// `bpftool cgroup show <lab cgroup>` (programs attached to the lab cgroup).
    pub fn bpftool_cgroup_show(&self) -> String {
        let cg = self.cgroup.to_string_lossy().into_owned();
        proc::run("bpftool", &["cgroup", "show", &cg]).unwrap_or_else(|e| format!("{e:#}"))
    }

    /// Every pin under the lab's bpffs, except the two entries the kernel's bpf_preload puts
    /// into every new bpffs mount (`maps.debug`, `progs.debug`).
    pub fn pins(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.bpffs, &mut out);
        let preload = [
            self.bpffs.join("maps.debug"),
            self.bpffs.join("progs.debug"),
        ];
        out.retain(|p| !preload.contains(p));
        out
    }
}

/// The HTTP status of `http://127.0.0.1:PORT/PATH` asked from inside a network namespace
/// (None if nothing answered within 2 s).
pub fn http_status_in(netns: &Path, port: u16, path: &str) -> Option<u16> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let ns = format!("--net={}", netns.display());
    let out = proc::output_placed(
        Command::new("nsenter").args([
            ns.as_str(),
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            "-w",
            "%{http_code}",
            &url,
        ]),
        &Placement::default(),
        Duration::from_secs(5),
    )
    .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|&c| c != 0)
}

pub(crate) fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
