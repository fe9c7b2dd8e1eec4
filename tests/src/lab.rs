//! One test's lab: a node namespace with a bridge, pods, a cgroup, a bpffs, an agent.
//!
//! Every lab is dual-stack. Each IPv4 address of a lab has an IPv6 twin ([`ipv6_twin`]): the
//! ULA `fd00:A:B:C::D` for `A.B.C.D`, each group written with the decimal digits of its octet
//! (10.244.0.7 -> `fd00:10:244::7`, 10.244.2.12 -> `fd00:10:244:2::12`, 172.18.0.11 ->
//! `fd00:172:18::11`), so a test can tell them apart at a glance and predict them. A /24 of
//! IPv4 is a /64 of IPv6: the node's pod network 10.244.0.0/24 is `fd00:10:244::/64`, its
//! bridge `br0` has both gateways ([`GATEWAY`] 10.244.0.1/24 and [`GATEWAY6`]
//! `fd00:10:244::1/64`), and each pod has its twin beside its IPv4 address ([`Pod::ip6`]) with
//! an IPv6 default route via [`GATEWAY6`]. IPv6 is turned on in every namespace the lab makes
//! whatever the machine's defaults, without duplicate address detection (addresses `nodad`,
//! link-local ones too: see [`netns::enable_ipv6`]; usable at once, never `tentative`, which
//! [`netns::wait_ipv6_usable`] checks), and the node namespace has no route beyond its pods,
//! in either family. Services' IPv6 ClusterIPs in the tests come
//! from `fd00:96::/112` (the IPv4 ones from 10.96.0.0/12); nothing in the lab routes them.

use std::{
    fs::{self, File},
    io::Read,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cgroup,
    cleanup::{self, LAB_PREFIX, Record},
    manifests::Manifests,
    netns,
    proc::{self, Placement, Proc, ProcInner, lock},
};

/// The node's bridge address: the pods' default gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's bridge IPv6 address (`fd00:10:244::1`, the twin of [`GATEWAY`]): the pods'
/// IPv6 default gateway.
pub const GATEWAY6: Ipv6Addr = ipv6_twin(GATEWAY);
/// The prefix length of a node's IPv4 pod network (10.244.0.0/24).
pub const POD_PREFIX_LEN: u8 = 24;
/// The prefix length of a node's IPv6 pod network (`fd00:10:244::/64`).
pub const POD_PREFIX6_LEN: u8 = 64;
/// How long a new IPv6 address may stay `tentative` (never, with `nodad`: a bound, not a wait).
pub const IPV6_USABLE_DEADLINE: Duration = Duration::from_secs(5);
/// The node name the agent is started with.
pub const NODE_NAME: &str = "node-1";
/// The agent's health server port (in the node namespace).
pub const HEALTHZ_PORT: u16 = 10256;

/// The IPv6 twin of a lab's IPv4 address: `fd00:A:B:C::D` for `A.B.C.D`, each group the
/// decimal digits of its octet read as hex (10.244.0.7 -> `fd00:10:244::7`). One-to-one, and
/// a /24 of IPv4 maps into one /64 (`fd00:A:B:C::/64`).
pub const fn ipv6_twin(v4: Ipv4Addr) -> Ipv6Addr {
    const fn digits(octet: u8) -> u16 {
        let n = octet as u16;
        (n / 100) * 0x100 + (n / 10 % 10) * 0x10 + n % 10
    }
    let [a, b, c, d] = v4.octets();
    Ipv6Addr::new(0xfd00, digits(a), digits(b), digits(c), 0, 0, 0, digits(d))
}

/// The IPv6 twin of an IPv4 network `A.B.C.0/24`: `fd00:A:B:C::/64`.
pub fn ipv6_twin_net(v4_net: Ipv4Addr) -> String {
    let [a, b, c, _] = v4_net.octets();
    format!("{}/64", ipv6_twin(Ipv4Addr::new(a, b, c, 0)))
}

/// A pod: a network namespace with `eth0` on the node's bridge.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address beside `ip`: the twin of `ip` ([`ipv6_twin`]), e.g. `fd00:10:244::2`
    /// for 10.244.0.2 (a node's: its address on the node's network).
    pub ip6: Ipv6Addr,
    /// The namespace name (`fy<id>-<name>`).
    pub netns: String,
    pub netns_path: PathBuf,
    /// The cgroup its programs run in; `None`: the lab cgroup. (In a [`Cluster`](crate::Cluster)
    /// each node's pods are in that node's cgroup, where that node's agent hooks sockets.)
    pub cgroup: Option<PathBuf>,
}

/// A test's lab. Dropping it removes everything it created.
pub struct Lab {
    pub(crate) id: String,
    pub(crate) test: String,
    pub(crate) cgroup: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) bpffs: PathBuf,
    pub(crate) manifests: Manifests,
    pub(crate) node: String,
    pub(crate) pods: Mutex<Vec<Pod>>,
    pub(crate) procs: Mutex<Vec<Arc<ProcInner>>>,
    pub(crate) agent: Mutex<Option<Proc>>,
    pub(crate) agent_logs: Mutex<Vec<PathBuf>>,
    pub(crate) spawned: Mutex<u32>,
    pub(crate) kept: AtomicBool,
    pub(crate) torn_down: AtomicBool,
}

impl Lab {
    /// Creates the lab (panics with the reason if it cannot).
    pub fn new(test: &str) -> Lab {
        Lab::try_new(test).unwrap_or_else(|e| panic!("setting up the lab for {test}: {e:#}"))
    }

    pub fn try_new(test: &str) -> Result<Lab> {
        Lab::create(test, true)
    }

    /// A lab without its node namespace (no `add_pod`, no `start_agent`): the shared part
    /// (id, cgroup, bpffs, manifests, processes, cleanup) of a [`Cluster`](crate::Cluster).
    pub(crate) fn try_new_bare(test: &str) -> Result<Lab> {
        Lab::create(test, false)
    }

    fn create(test: &str, single_node: bool) -> Result<Lab> {
        if !crate::is_root() {
            bail!("the lab needs root");
        }
        cleanup::sweep_stale();
        let cg2 = cgroup::cgroup2_mount()?;
        let (id, tmp) = claim_id(&cg2)?;
        let cgroup = cg2.join(format!("{LAB_PREFIX}{id}"));
        let node = if single_node {
            format!("{}node", Record::netns_prefix(&id))
        } else {
            String::new()
        };
        let bpffs = tmp.join("bpffs");
        cleanup::register(Record {
            id: id.clone(),
            owner_pid: std::process::id(),
            kept: false,
            tmp: tmp.clone(),
            bpffs_mount: bpffs.clone(),
            cgroup: Some(cgroup.clone()),
            netns: if single_node {
                vec![node.clone()]
            } else {
                Vec::new()
            },
            agent_pid: None,
            ferry_cleanup: None,
            ..Record::default()
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
        if self.node.is_empty() {
            return Ok(());
        }
        netns::add(&self.node)?;
        netns::enable_ipv6(&self.node)?;
        netns::ip(&self.node, &["link", "set", "lo", "up"])?;
        netns::ip(&self.node, &["link", "add", "br0", "type", "bridge"])?;
        netns::ip(
            &self.node,
            &[
                "addr",
                "add",
                &format!("{GATEWAY}/{POD_PREFIX_LEN}"),
                "dev",
                "br0",
            ],
        )?;
        netns::add_ipv6(&self.node, "br0", &format!("{GATEWAY6}/{POD_PREFIX6_LEN}"))?;
        netns::ip(&self.node, &["link", "set", "br0", "up"])?;
        netns::wait_ipv6_usable(&self.node, "br0", IPV6_USABLE_DEADLINE)?;
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

    /// The node itself as a place to run programs (a hostNetwork process):
    /// its namespace, in the lab cgroup where the agent hooks sockets.
    pub fn host(&self) -> Pod {
        Pod {
            name: "node".to_owned(),
            ip: GATEWAY,
            ip6: GATEWAY6,
            netns: self.node.clone(),
            netns_path: self.node_netns_path(),
            cgroup: None,
        }
    }

    /// Adds a pod `fy<id>-<name>` with the next address 10.244.0.N (N from 2) and its IPv6
    /// twin `fd00:10:244::N`.
    pub fn add_pod(&self, name: &str) -> Pod {
        self.try_add_pod(name)
            .unwrap_or_else(|e| panic!("adding pod {name}: {e:#}"))
    }

    fn try_add_pod(&self, name: &str) -> Result<Pod> {
        if self.node.is_empty() {
            bail!("this lab has several nodes: add pods to one of them");
        }
        let mut pods = lock(&self.pods);
        if pods.iter().any(|p| p.name == name) {
            bail!("pod {name} exists already");
        }
        let n = pods.len() + 2;
        if n > 254 {
            bail!("no address left");
        }
        let ip = Ipv4Addr::new(10, 244, 0, n as u8);
        let ip6 = ipv6_twin(ip);
        let ns = format!("{}{name}", Record::netns_prefix(&self.id));
        let peer = format!("veth{n}");
        cleanup::update(&self.id, |r| r.netns.push(ns.clone()));
        netns::add(&ns)?;
        netns::enable_ipv6(&ns)?;
        // The pair is born inside the lab: eth0 in the pod, its peer in the node namespace.
        netns::ip(
            &ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &self.node,
            ],
        )?;
        netns::ip(&self.node, &["link", "set", &peer, "master", "br0"])?;
        netns::ip(&self.node, &["link", "set", &peer, "up"])?;
        netns::ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{ip}/{POD_PREFIX_LEN}"),
                "dev",
                "eth0",
            ],
        )?;
        netns::add_ipv6(&ns, "eth0", &format!("{ip6}/{POD_PREFIX6_LEN}"))?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        netns::ip(
            &ns,
            &["route", "add", "default", "via", &GATEWAY.to_string()],
        )?;
        netns::ip(
            &ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &GATEWAY6.to_string(),
                "dev",
                "eth0",
            ],
        )?;
        // veths offload TX checksums: without this a broken checksum rewrite goes unnoticed.
        netns::checksum_offload_off(&ns, "eth0")?;
        netns::checksum_offload_off(&self.node, &peer)?;
        netns::wait_ipv6_usable(&ns, "eth0", IPV6_USABLE_DEADLINE)?;
        let pod = Pod {
            name: name.to_owned(),
            ip,
            ip6,
            netns_path: netns::path(&ns),
            netns: ns,
            cgroup: None,
        };
        pods.push(pod.clone());
        Ok(pod)
    }

    /// Adds a pod made elsewhere (a cluster's) so that `pod()` finds it; false if the name
    /// is taken.
    pub(crate) fn register_pod(&self, pod: Pod) -> bool {
        let mut pods = lock(&self.pods);
        if pods.iter().any(|p| p.name == pod.name) {
            return false;
        }
        pods.push(pod);
        true
    }

    /// Adds a log file to those printed when a test fails (a cluster's agents').
    pub(crate) fn add_agent_log(&self, path: PathBuf) {
        lock(&self.agent_logs).push(path);
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
            cgroup: Some(pod.cgroup.clone().unwrap_or_else(|| self.cgroup.clone())),
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

/// Mounts a new bpffs instance of our own at `at`.
pub(crate) fn mount_bpffs(at: &Path) -> Result<()> {
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
