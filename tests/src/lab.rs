//! One test's lab: a node namespace with a bridge, pods, a cgroup, a bpffs, an agent.

use std::{
    fs::{self, File},
    io::Read,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    cgroup,
    cleanup::{self, LAB_PREFIX, Record},
    client::{Attempt, parse_lines},
    manifests::Manifests,
    netns,
    proc::{self, POLL, Placement, Proc, ProcInner, lock},
};

/// The node's bridge address: the pods' default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node name the agent is started with.
pub const NODE_NAME: &str = "node-1";
/// The agent's health server port (in the node namespace).
pub const HEALTHZ_PORT: u16 = 10256;

/// A pod: a network namespace with `eth0` on the node's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The namespace name (`fy<id>-<name>`).
    pub netns: String,
    pub netns_path: PathBuf,
}

/// How to start the agent.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    /// Appended to the standard arguments.
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ready_timeout: Duration,
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
        }
    }
}

/// A test's lab. Dropping it removes everything it created.
pub struct Lab {
    id: String,
    test: String,
    cgroup: PathBuf,
    tmp: PathBuf,
    bpffs: PathBuf,
    manifests: Manifests,
    node: String,
    pods: Mutex<Vec<Pod>>,
    procs: Mutex<Vec<Arc<ProcInner>>>,
    agent: Mutex<Option<Proc>>,
    agent_logs: Mutex<Vec<PathBuf>>,
    spawned: Mutex<u32>,
    kept: AtomicBool,
    torn_down: AtomicBool,
}

impl Lab {
    /// Creates the lab (panics with the reason if it cannot).
    pub fn new(test: &str) -> Lab {
        Lab::try_new(test).unwrap_or_else(|e| panic!("setting up the lab for {test}: {e:#}"))
    }

    pub fn try_new(test: &str) -> Result<Lab> {
        if !crate::is_root() {
            bail!("the lab needs root");
        }
        cleanup::sweep_stale();
        let cg2 = cgroup::cgroup2_mount()?;
        let (id, tmp) = claim_id(&cg2)?;
        let cgroup = cg2.join(format!("{LAB_PREFIX}{id}"));
        let node = format!("{}node", Record::netns_prefix(&id));
        let bpffs = tmp.join("bpffs");
        cleanup::register(Record {
            id: id.clone(),
            owner_pid: std::process::id(),
            kept: false,
            tmp: tmp.clone(),
            bpffs_mount: bpffs.clone(),
            cgroup: Some(cgroup.clone()),
            netns: vec![node.clone()],
            agent_pid: None,
            ferry_cleanup: None,
        });
        let lab = Lab {
            manifests: Manifests::new(tmp.join("manifests")),
            id,
            test: test.to_owned(),
            cgroup,
            tmp,
            bpffs,
            node,
            pods: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            agent: Mutex::new(None),
            agent_logs: Mutex::new(Vec::new()),
            spawned: Mutex::new(0),
            kept: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
        };
        // From here on, a failure drops `lab`, which removes what was made so far.
        lab.setup()?;
        Ok(lab)
    }

    fn setup(&self) -> Result<()> {
        fs::create_dir(&self.cgroup)
            .with_context(|| format!("creating cgroup {}", self.cgroup.display()))?;
        fs::create_dir(&self.bpffs)?;
        mount_bpffs(&self.bpffs)?;
        fs::create_dir(self.manifests.dir())?;
        fs::create_dir(self.tmp.join("logs"))?;
        netns::add(&self.node)?;
        netns::ip(&self.node, &["link", "set", "lo", "up"])?;
        netns::ip(&self.node, &["link", "add", "br0", "type", "bridge"])?;
        netns::ip(
            &self.node,
            &["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"],
        )?;
        netns::ip(&self.node, &["link", "set", "br0", "up"])?;
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn test_name(&self) -> &str {
        &self.test
    }

    /// The lab's cgroup (child of the cgroup2 mount); processes started with
    /// [`spawn`](Lab::spawn) are in it, so ferry's socket hooks apply to them.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The private bpffs mount.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The agent's pin directory (`<bpffs>/ferry`).
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("ferry")
    }

    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    pub fn node_netns(&self) -> &str {
        &self.node
    }

    pub fn node_netns_path(&self) -> PathBuf {
        netns::path(&self.node)
    }

    /// Adds a pod `fy<id>-<name>` with the next address 10.244.0.N (N from 2).
    pub fn add_pod(&self, name: &str) -> Pod {
        self.try_add_pod(name)
            .unwrap_or_else(|e| panic!("adding pod {name}: {e:#}"))
    }

    fn try_add_pod(&self, name: &str) -> Result<Pod> {
        let mut pods = lock(&self.pods);
        if pods.iter().any(|p| p.name == name) {
            bail!("pod {name} exists already");
        }
        let n = pods.len() + 2;
        if n > 254 {
            bail!("no address left");
        }
        let ip = Ipv4Addr::new(10, 244, 0, n as u8);
        let ns = format!("{}{name}", Record::netns_prefix(&self.id));
        let peer = format!("veth{n}");
        cleanup::update(&self.id, |r| r.netns.push(ns.clone()));
        netns::add(&ns)?;
        // The pair is born inside the lab: eth0 in the pod, its peer in the node namespace.
        netns::ip(
            &ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &self.node,
            ],
        )?;
        netns::ip(&self.node, &["link", "set", &peer, "master", "br0"])?;
        netns::ip(&self.node, &["link", "set", &peer, "up"])?;
        netns::ip(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        netns::ip(
            &ns,
            &["route", "add", "default", "via", &GATEWAY.to_string()],
        )?;
        // veths offload TX checksums: without this a broken checksum rewrite goes unnoticed.
        netns::run(&ns, "ethtool", &["-K", "eth0", "tx", "off"])?;
        netns::run(&self.node, "ethtool", &["-K", &peer, "tx", "off"])?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            netns_path: netns::path(&ns),
            netns: ns,
        };
        pods.push(pod.clone());
        Ok(pod)
    }

    /// A pod added before.
    pub fn pod(&self, name: &str) -> Pod {
        lock(&self.pods)
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.pods).clone()
    }

    fn pod_placement(&self, pod: &Pod) -> Placement {
        Placement {
            netns: Some(pod.netns_path.clone()),
            cgroup: Some(self.cgroup.clone()),
        }
    }

    fn next_log(&self, pod: &str, program: &str) -> PathBuf {
        let mut n = lock(&self.spawned);
        *n += 1;
        let base = Path::new(program)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned());
        self.tmp
            .join("logs")
            .join(format!("{pod}-{}-{n}.log", base.unwrap_or_default()))
    }

    /// Starts a program in the pod's network namespace and in the lab cgroup. Its stdout is
    /// read line by line (see [`Proc::next_line`]); its stderr goes to a log file.
    pub fn spawn(&self, pod: &Pod, program: impl AsRef<Path>, args: &[&str]) -> Proc {
        self.spawn_with(pod, program, args, false)
    }

    /// Like [`spawn`](Lab::spawn), with a piped stdin ([`Proc::send_line`]).
    pub fn spawn_interactive(&self, pod: &Pod, program: impl AsRef<Path>, args: &[&str]) -> Proc {
        self.spawn_with(pod, program, args, true)
    }

    fn spawn_with(&self, pod: &Pod, program: impl AsRef<Path>, args: &[&str], stdin: bool) -> Proc {
        let program = program.as_ref();
        let log = self.next_log(&pod.name, &program.to_string_lossy());
        let stderr = File::create(&log).expect("creating a log file in the lab dir");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(stderr);
        let child = proc::spawn_placed(&mut cmd, &self.pod_placement(pod))
            .unwrap_or_else(|e| panic!("starting {} in {}: {e}", program.display(), pod.name));
        let label = format!("{} in {}", program.display(), pod.name);
        let p = Proc::new(label, child);
        lock(&self.procs).push(p.share());
        p
    }

    /// Runs a program to completion in the pod (namespace + lab cgroup), killed after 20 s.
    pub fn output(&self, pod: &Pod, program: impl AsRef<Path>, args: &[&str]) -> Output {
        self.output_timeout(pod, program, args, Duration::from_secs(20))
    }

    pub fn output_timeout(
        &self,
        pod: &Pod,
        program: impl AsRef<Path>,
        args: &[&str],
        timeout: Duration,
    ) -> Output {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        cmd.args(args);
        proc::output_placed(&mut cmd, &self.pod_placement(pod), timeout)
            .unwrap_or_else(|e| panic!("running {} in {}: {e}", program.display(), pod.name))
    }

    /// `curl -sS --max-time 5 URL` from the pod: Ok(body) or Err(curl's complaint).
    pub fn curl(&self, pod: &Pod, url: &str) -> std::result::Result<String, String> {
        let out = self.output(pod, "curl", &["-sS", "--max-time", "5", url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "curl {url} from {}: {} {}",
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts `lab-echo --name <pod>` serving the given ports, once it printed `ready`.
    pub fn start_echo(&self, pod: &Pod, tcp: &[u16], udp: &[u16]) -> Proc {
        let mut args = vec!["--name".to_owned(), pod.name.clone()];
        for p in tcp {
            args.extend(["--tcp".to_owned(), p.to_string()]);
        }
        for p in udp {
            args.extend(["--udp".to_owned(), p.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let echo = self.spawn(pod, proc::lab_binary("lab-echo"), &args);
        if echo
            .wait_line(Duration::from_secs(10), |l| l == "ready")
            .is_none()
        {
            panic!(
                "lab-echo in {} did not get ready: {}",
                pod.name,
                self.logs_of(&pod.name)
            );
        }
        echo
    }

    /// The stderr logs of the pod's programs.
    pub fn logs_of(&self, pod: &str) -> String {
        let mut text = String::new();
        if let Ok(dir) = fs::read_dir(self.tmp.join("logs")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{pod}-")) {
                    let body = fs::read_to_string(e.path()).unwrap_or_default();
                    text.push_str(&format!("--- {name}\n{body}"));
                }
            }
        }
        text
    }

    /// Runs `lab-client ARGS...` in the pod and returns its attempts.
    pub fn client(&self, pod: &Pod, args: &[&str]) -> Vec<Attempt> {
        let out = self.output_timeout(
            pod,
            proc::lab_binary("lab-client"),
            args,
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let attempts = parse_lines(text.lines());
        if attempts.is_empty() {
            panic!(
                "lab-client {args:?} in {} printed nothing ({}): {}",
                pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        attempts
    }

    /// `count` TCP connections from the pod to `target` (ip:port), each sending one line.
    pub fn tcp(&self, pod: &Pod, target: &str, count: u32) -> Vec<Attempt> {
        self.client(pod, &["tcp", target, "--count", &count.to_string()])
    }

    /// `count` unconnected UDP datagrams from one socket of the pod to `target`.
    pub fn udp(&self, pod: &Pod, target: &str, count: u32) -> Vec<Attempt> {
        self.client(pod, &["udp", target, "--count", &count.to_string()])
    }

    /// Starts `lab-client ARGS... --count 0` (endless) in the pod; collect with
    /// [`ClientLoop`].
    pub fn client_loop(&self, pod: &Pod, args: &[&str]) -> ClientLoop {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--count", "0"]);
        let proc = self.spawn(pod, proc::lab_binary("lab-client"), &all);
        ClientLoop {
            proc,
            seen: Vec::new(),
        }
    }

    /// The ferry binary: `$FERRY_BIN`, else next to the test binaries (target/debug/ferry).
    pub fn ferry_bin() -> PathBuf {
        if let Some(bin) = std::env::var_os("FERRY_BIN") {
            return PathBuf::from(bin);
        }
        proc::sibling_binary("ferry").unwrap_or_else(|| {
            panic!("the ferry binary is missing (no FERRY_BIN, nothing next to the test binary): build it: cargo build -p agent")
        })
    }

    /// Starts `ferry agent` in the node namespace (network namespace only: it is in no lab
    /// cgroup) and waits until `/readyz` answers 200. Returns the time it took.
    pub fn start_agent(&self, opts: &AgentOpts) -> Duration {
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
        let mut cmd = Command::new(&bin);
        cmd.arg("agent")
            .arg("--manifests")
            .arg(self.manifests.dir())
            .args(["--node-name", NODE_NAME])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(self.pin_dir())
            .args(["--healthz-bind-address", &format!("0.0.0.0:{HEALTHZ_PORT}")])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
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

    /// The HTTP status of the agent's /readyz (None if nothing answered).
    pub fn readyz(&self) -> Option<u16> {
        self.healthz_status("/readyz")
    }

    /// The HTTP status of a path on the agent's health server, asked from the node namespace.
    pub fn healthz_status(&self, path: &str) -> Option<u16> {
        let url = format!("http://127.0.0.1:{HEALTHZ_PORT}{path}");
        let ns = format!("--net={}", self.node_netns_path().display());
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

    /// Sends SIGTERM to the agent and waits for it (SIGKILL after 10 s).
    pub fn stop_agent(&self) -> Option<ExitStatus> {
        let proc = lock(&self.agent).take()?;
        let status = proc.terminate_with(Duration::from_secs(10));
        cleanup::update(&self.id, |r| r.agent_pid = None);
        status
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
    pub fn try_services(&self) -> std::result::Result<Value, String> {
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

    pub fn services(&self) -> Value {
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
    pub fn wait_services(&self, pred: impl Fn(&Value) -> bool, deadline: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let last = self.try_services();
            if let Ok(v) = &last
                && pred(v)
            {
                return start.elapsed();
            }
            if start.elapsed() >= deadline {
                let last = match last {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(e) => e,
                };
                panic!(
                    "ferry services did not reach the expected state within {deadline:?}; last:\n{last}\nagent log:\n{}",
                    self.agent_log()
                );
            }
            thread::sleep(POLL);
        }
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

    /// Leaves the lab running when dropped (for `ferry-demo --keep`): its processes keep
    /// running and only [`cleanup::down`] removes it. Returns the id.
    pub fn keep(&self) -> String {
        self.kept.store(true, Ordering::SeqCst);
        for p in lock(&self.procs).iter() {
            p.detach_inner();
        }
        if let Some(agent) = lock(&self.agent).as_ref() {
            agent.detach();
        }
        cleanup::update(&self.id, |r| r.kept = true);
        cleanup::unregister(&self.id);
        self.id.clone()
    }

    /// Removes the lab now (what Drop does); errors are returned, not panicked.
    pub fn teardown(&self) -> Vec<String> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        let procs: Vec<Arc<ProcInner>> = lock(&self.procs).clone();
        for p in procs.iter().filter(|p| !p.is_detached()) {
            p.signal_term();
        }
        for p in procs.iter().filter(|p| !p.is_detached()) {
            p.terminate(proc::TERM_GRACE);
        }
        if let Some(agent) = lock(&self.agent).take() {
            agent.terminate_with(Duration::from_secs(10));
        }
        cleanup::update(&self.id, |r| r.agent_pid = None);
        let errors = match cleanup::get(&self.id) {
            Some(rec) => cleanup::teardown(&rec),
            None => Vec::new(),
        };
        cleanup::unregister(&self.id);
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // After a signal the lab is being removed under the test's feet: its failures are noise.
        if thread::panicking() && !cleanup::signalled() {
            eprintln!(
                "==== lab {} ({}) failed; agent logs:\n{}",
                self.id,
                self.test,
                self.agent_logs()
            );
        }
        if self.kept.load(Ordering::SeqCst) {
            return;
        }
        for e in self.teardown() {
            eprintln!("lab {}: cleanup: {e}", self.id);
        }
    }
}

/// An endless `lab-client` run whose attempts are collected as they come.
pub struct ClientLoop {
    proc: Proc,
    seen: Vec<Attempt>,
}

impl ClientLoop {
    fn pull(&mut self) {
        let lines = self.proc.drain_lines();
        self.seen
            .extend(parse_lines(lines.iter().map(String::as_str)));
    }

    /// Every attempt so far.
    pub fn attempts(&mut self) -> &[Attempt] {
        self.pull();
        &self.seen
    }

    /// Waits until at least `n` more attempts than now were made (panics after `timeout`).
    pub fn wait_more(&mut self, n: usize, timeout: Duration) {
        self.pull();
        let want = self.seen.len() + n;
        let deadline = Instant::now() + timeout;
        while self.seen.len() < want {
            assert!(
                Instant::now() < deadline && self.proc.is_running(),
                "the client loop made {} of {want} attempts within {timeout:?}",
                self.seen.len()
            );
            if let Some(line) = self.proc.next_line(POLL)
                && let Some(a) = Attempt::parse(&line)
            {
                self.seen.push(a);
            }
        }
    }

    /// Waits until an attempt satisfies `pred` (looking only at attempts made from now on).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Attempt) -> bool) -> Attempt {
        self.pull();
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                Instant::now() < deadline && self.proc.is_running(),
                "the client loop saw no matching attempt within {timeout:?}"
            );
            if let Some(line) = self.proc.next_line(POLL)
                && let Some(a) = Attempt::parse(&line)
            {
                self.seen.push(a.clone());
                if pred(&a) {
                    return a;
                }
            }
        }
    }

    /// Ends the client and returns every attempt it made.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.proc.terminate();
        while let Some(line) = self.proc.next_line(Duration::from_secs(1)) {
            self.seen.extend(Attempt::parse(&line));
        }
        std::mem::take(&mut self.seen)
    }
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Picks a random 6-hex id nobody uses and claims it by creating its tmp dir.
fn claim_id(cg2: &Path) -> Result<(String, PathBuf)> {
    for _ in 0..32 {
        let mut bytes = [0u8; 3];
        File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = Record::tmp_dir(&id);
        if cg2.join(format!("{LAB_PREFIX}{id}")).exists()
            || !netns::list_with_prefix(&Record::netns_prefix(&id)).is_empty()
        {
            continue;
        }
        match fs::create_dir(&tmp) {
            Ok(()) => return Ok((id, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("creating the lab dir"),
        }
    }
    bail!("no free lab id")
}

fn mount_bpffs(at: &Path) -> Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: mount(2) with valid NUL-terminated strings; a new bpffs instance of our own.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs on {}", at.display()));
    }
    Ok(())
}
