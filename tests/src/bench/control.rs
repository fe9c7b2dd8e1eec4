//! Section 4, control plane: how long ferry takes from start to everything in the kernel for
//! N services, how long one endpoint change takes to reach the kernel (from the write, and
//! from the event's arrival in the agent), at every size so the cost of one change can be
//! seen against the size of the cluster, and the agent's peak memory; kube-proxy's
//! `iptables-restore` and `nft -f` of the same set timed beside. Through both of ferry's
//! sources: the manifests directory, and the Kubernetes API (the lab's API server test
//! double, [`crate::apiserver`]).

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    eastwest::{scratch_ns, wait_frontends},
    env::{self, Synced, in_lab_ns_ok, synced_lines},
    kubeproxy,
    synth::{self, PER_FILE, Svc},
};
use crate::{
    AgentOpts, Lab,
    apiserver::{self, ApiServer},
    cleanup,
};

/// One size of the set: services, and endpoints of each.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Size {
    pub services: usize,
    pub endpoints_per_service: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub sizes: Vec<Size>,
    /// Endpoint changes timed at every size.
    pub changes: usize,
    /// kube-proxy's restores are timed up to this many services (nft -f of 10,000
    /// already takes minutes).
    pub kube_proxy_up_to: usize,
}

/// One source of ferry at one size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FerryRun {
    /// Agent start to the first sync that holds every frontend (its log line), seconds.
    pub full_secs: Option<f64>,
    /// The programming part of that sync (diff and map writes), seconds.
    pub full_program_secs: Option<f64>,
    /// Endpoint change (file rename / API write) to the map written, milliseconds.
    pub change_ms: Vec<f64>,
    /// The agent's own part of each change: its first event received to the map written,
    /// milliseconds (the sync line's `event_us`).
    #[serde(default)]
    pub event_ms: Vec<f64>,
    /// The programming part of each change's sync, milliseconds.
    pub change_program_ms: Vec<f64>,
    /// Peak RSS (VmHWM), bytes.
    pub rss: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SizeResult {
    pub services: usize,
    pub endpoints: usize,
    pub manifests: FerryRun,
    pub api: FerryRun,
    pub iptables_restore_secs: Option<f64>,
    pub nft_secs: Option<f64>,
    pub notes: Vec<String>,
}

pub fn run(config: &Config) -> Result<Vec<SizeResult>> {
    let mut out = Vec::new();
    for size in &config.sizes {
        let n = size.services;
        let set = synth::control_set(n, size.endpoints_per_service);
        let endpoints = synth::endpoint_count(&set);
        let changes = config.changes;
        eprintln!("bench: control plane: {n} services, {endpoints} endpoints…");
        let mut r = SizeResult {
            services: n,
            endpoints,
            manifests: FerryRun::default(),
            api: FerryRun::default(),
            iptables_restore_secs: None,
            nft_secs: None,
            notes: Vec::new(),
        };
        r.manifests = ferry_manifests(&set, changes).unwrap_or_else(|e| FerryRun {
            error: Some(format!("{e:#}")),
            ..FerryRun::default()
        });
        r.api = ferry_api(&set, changes).unwrap_or_else(|e| FerryRun {
            error: Some(format!("{e:#}")),
            ..FerryRun::default()
        });
        if n <= config.kube_proxy_up_to {
            match kube_proxy_restores(&set) {
                Ok((ipt, nft)) => {
                    r.iptables_restore_secs = Some(ipt);
                    r.nft_secs = Some(nft);
                }
                Err(e) => r.notes.push(format!("kube-proxy rules not timed: {e:#}")),
            }
        }
        eprintln!(
            "bench: control plane N={n}: ferry manifests {:?} s, ferry API {:?} s, iptables-restore {:?} s, nft -f {:?} s",
            r.manifests.full_secs, r.api.full_secs, r.iptables_restore_secs, r.nft_secs
        );
        out.push(r);
    }
    Ok(out)
}

/// `FERRY_BENCH_AGENT_WRAPPER`: a program (and its arguments, split on spaces) that execs the
/// agent, for experiments (`env MALLOC_ARENA_MAX=2`). One that does not exec (heaptrack) makes
/// the peak RSS its own and leaves the agent running at the end: stop it by its PID.
fn wrapper() -> Vec<String> {
    std::env::var("FERRY_BENCH_AGENT_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn agent_pid(lab: &Lab) -> Option<u32> {
    cleanup::get(lab.id()).and_then(|r| r.agent_pid)
}

/// The first sync after which `n` frontends had been added in all.
fn full_sync(lines: &[Synced], n: usize) -> Option<&Synced> {
    let mut added = 0;
    lines.iter().find(|s| {
        added += s.added;
        added >= n as u64
    })
}

fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).map_or(0.0, |d| d.as_secs_f64())
}

/// Waits for a `synced` line after the first `seen` ones; returns it.
fn next_sync(lab: &Lab, seen: usize, timeout: Duration) -> Result<Synced> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = synced_lines(&lab.agent_log());
        if let Some(s) = lines.get(seen) {
            return Ok(s.clone());
        }
        if Instant::now() >= deadline {
            bail!("no sync within {timeout:?} after a change");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The i-th changed endpoint address (outside every other range the bench uses).
fn changed_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + k as u32)
}

/// The service the k-th change touches, spread over the set.
fn changed_service(k: usize, n: usize) -> usize {
    (k * 7919 + 13) % n
}

fn ferry_manifests(set: &[Svc], changes: usize) -> Result<FerryRun> {
    let lab = Lab::try_new("bench-control-manifests")?;
    let dir = lab.manifests().dir().to_owned();
    synth::write_manifests(&dir, set)?;
    let mut run = FerryRun::default();
    let started = SystemTime::now();
    lab.start_agent(&AgentOpts {
        ready_timeout: Duration::from_secs(300),
        wrapper: wrapper(),
        ..AgentOpts::default()
    });
    wait_frontends(&lab, set.len(), Duration::from_secs(300))?;
    let lines = synced_lines(&lab.agent_log());
    let full = full_sync(&lines, set.len()).context("no full sync in the agent log")?;
    run.full_secs = Some(secs_between(started, full.at));
    run.full_program_secs = Some(full.took_us as f64 / 1e6);
    let mut set = set.to_vec();
    let n = set.len();
    for k in 0..changes {
        let i = changed_service(k, n);
        set[i].endpoints[0] = changed_ip(k);
        let chunk = i / PER_FILE * PER_FILE;
        let seen = synced_lines(&lab.agent_log()).len();
        let at = SystemTime::now();
        synth::write_chunk(
            &dir,
            &synth::chunk_name(i),
            &set[chunk..(chunk + PER_FILE).min(n)],
        )?;
        let s = next_sync(&lab, seen, Duration::from_secs(60))?;
        run.change_ms.push(secs_between(at, s.at) * 1e3);
        run.change_program_ms.push(s.took_us as f64 / 1e3);
        run.event_ms.push(s.event_us as f64 / 1e3);
    }
    run.rss = agent_pid(&lab).and_then(env::vm_hwm);
    lab.stop_agent();
    Ok(run)
}

fn ferry_api(set: &[Svc], changes: usize) -> Result<FerryRun> {
    let lab = Lab::try_new("bench-control-api")?;
    let api = ApiServer::start_in(
        Some(&lab.node_netns_path()),
        apiserver::Options {
            bookmark_interval: Duration::from_secs(60),
            ..apiserver::Options::default()
        },
    )?;
    for s in set {
        api.apply(&s.service());
        api.apply(&s.slice());
    }
    let kubeconfig = lab.tmp_dir().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let mut run = FerryRun::default();
    let started = SystemTime::now();
    lab.start_agent(&AgentOpts {
        kubeconfig: Some(kubeconfig),
        ready_timeout: Duration::from_secs(300),
        wrapper: wrapper(),
        ..AgentOpts::default()
    });
    wait_frontends(&lab, set.len(), Duration::from_secs(300))?;
    let lines = synced_lines(&lab.agent_log());
    let full = full_sync(&lines, set.len()).context("no full sync in the agent log")?;
    run.full_secs = Some(secs_between(started, full.at));
    run.full_program_secs = Some(full.took_us as f64 / 1e6);
    let mut set = set.to_vec();
    let n = set.len();
    for k in 0..changes {
        let i = changed_service(k, n);
        set[i].endpoints[0] = changed_ip(k);
        let slice = set[i].slice();
        let seen = synced_lines(&lab.agent_log()).len();
        let at = SystemTime::now();
        api.apply(&slice);
        let s = next_sync(&lab, seen, Duration::from_secs(60))?;
        run.change_ms.push(secs_between(at, s.at) * 1e3);
        run.change_program_ms.push(s.took_us as f64 / 1e3);
        run.event_ms.push(s.event_us as f64 / 1e3);
    }
    run.rss = agent_pid(&lab).and_then(env::vm_hwm);
    lab.stop_agent();
    drop(api);
    Ok(run)
}

/// Times kube-proxy's full `iptables-restore` and `nft -f` of the set, each into a fresh lab
/// namespace.
fn kube_proxy_restores(set: &[Svc]) -> Result<(f64, f64)> {
    let lab = Lab::try_new("bench-control-kube-proxy")?;
    let ipt_ns = scratch_ns(&lab, "ipt")?;
    let nft_ns = scratch_ns(&lab, "nft")?;
    let rules = lab.tmp_dir().join("iptables.rules");
    std::fs::write(&rules, kubeproxy::iptables_restore(set))?;
    let ipt = in_lab_ns_ok(
        &ipt_ns,
        "iptables-restore",
        &[&rules.to_string_lossy()],
        Duration::from_secs(900),
    )?;
    let script = lab.tmp_dir().join("kube-proxy.nft");
    std::fs::write(&script, kubeproxy::nft_script(set, "10.250.9.2"))?;
    let nft = in_lab_ns_ok(
        &nft_ns,
        "nft",
        &["-f", &script.to_string_lossy()],
        Duration::from_secs(900),
    )?;
    Ok((ipt.as_secs_f64(), nft.as_secs_f64()))
}
