//! gin-vue-admin's network on one machine (`cargo xtask demo`, the `ferry-demo` binary).
//!
//! From the example manifests in `deploy/examples/gin-vue-admin/` ([`cluster`]) the demo builds
//! a one-node lab: a pod namespace per replica running a real server ([`servers`]: MariaDB,
//! redis-server, dnsmasq as the cluster DNS, nginx as the ingress controller, small HTTP
//! servers for gin, vue and web-server), a client pod, and an external client behind the
//! node's device ([`topology`]). It writes the Services, EndpointSlices and the Node where the
//! agent reads them ([`objects`]), starts `ferry agent --interfaces eth0` in the node
//! namespace, runs real clients ([`checks`]) and prints one line per result.

pub mod checks;
pub mod cluster;
pub mod http_checks;
pub mod http_server;
pub mod ingress;
pub mod keep;
pub mod objects;
pub mod pod_exec;
pub mod programmed;
pub mod servers;
pub mod topology;

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use self::{
    checks::{Ctx, Line},
    cluster::Cluster,
};
use crate::{
    agent::AgentOpts,
    cleanup,
    lab::{Lab, Pod},
    proc::POLL,
};

/// The report: lines printed as they come, `ok` or `FAIL`.
#[derive(Default)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
}

impl Report {
    pub fn line(&mut self, line: Line) {
        if line.ok {
            self.ok += 1;
            println!("ok    {}", line.text);
        } else {
            self.failed += 1;
            println!("FAIL  {}", line.text);
        }
    }
}

/// Runs the demo. `keep` leaves the lab up. Returns the report (failed == 0: all ok).
pub fn run(keep: bool) -> Report {
    let start = Instant::now();
    let mut r = Report::default();
    println!("ferry demo: gin-vue-admin's network on one machine\n");
    if let Err(e) = run_lab(keep, &mut r) {
        r.line(Line::fail(format!("{e:#}")));
    }
    println!(
        "\n{} ok, {} failed, in {:.1} s",
        r.ok,
        r.failed,
        start.elapsed().as_secs_f64()
    );
    r
}

fn run_lab(keep: bool, r: &mut Report) -> Result<()> {
    let cluster = Cluster::load()?;
    let t = Instant::now();
    let lab = Lab::try_new("ferry-demo")?;
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for d in &cluster.deployments {
        for name in d.pod_names() {
            pods.insert(name.clone(), lab.add_pod(&name));
        }
    }
    let client = lab.add_pod(topology::CLIENT);
    let external = topology::add_external(&lab)?;
    r.line(Line::ok(format!(
        "lab        {} in {} ms, dual-stack: node {} (eth0 {} and {}, pod bridge 10.244.0.1/24 \
         and fd00:10:244::1/64), {} pods and a client pod, an external client {} / {} behind \
         eth0",
        lab.id(),
        t.elapsed().as_millis(),
        lab.node_netns(),
        topology::NODE_IP,
        external.ip6.to_string().replace("::100", "::2"),
        pods.len(),
        topology::EXTERNAL_IP,
        external.ip6,
    )));

    let dns = servers::write_dns_files(lab.tmp_dir(), &cluster)?;
    let written = objects::write_all(&lab, &cluster, &pods)?;
    let t = Instant::now();
    let agent_opts = AgentOpts {
        extra_args: vec!["--interfaces".into(), topology::NODE_DEVICE.into()],
        ..AgentOpts::default()
    };
    let (started, agent_ready) = thread::scope(|s| {
        let agent = s.spawn(|| lab.start_agent(&agent_opts));
        let started = servers::start_all(&lab, &cluster, &pods, &dns);
        let agent = agent
            .join()
            .map_err(|_| anyhow!("the agent did not start:\n{}", lab.agent_log()));
        (started, agent)
    });
    let servers = started?;
    let agent_ready = agent_ready?;
    let slowest = servers.iter().max_by_key(|s| s.ready_in);
    r.line(Line::ok(format!(
        "servers    {} ready in {} ms (slowest: {} in {}, {} ms)",
        servers.len(),
        t.elapsed().as_millis(),
        slowest.map_or("-", |s| s.program),
        slowest.map_or("-", |s| s.pod.as_str()),
        slowest.map_or(0, |s| s.ready_in.as_millis()),
    )));
    let want = programmed::expected_frontends(&cluster, &pods);
    let programmed = wait_programmed(&lab, &want, Duration::from_secs(10));
    r.line(match programmed {
        Some(took) => Line::ok(format!(
            "agent      ferry agent --interfaces {} ready in {} ms; {} Services ({} \
             EndpointSlices, 1 Node) programmed as {} frontends {} ms later",
            topology::NODE_DEVICE,
            agent_ready.as_millis(),
            written.services,
            written.slices,
            want.len(),
            took.as_millis()
        )),
        None => Line::fail(format!(
            "agent      the Services were not all programmed within 10 s:\n{}",
            lab.services_table()
        )),
    });

    let cx = Ctx {
        lab: &lab,
        cluster: &cluster,
        pods: &pods,
        client: &client,
        external: &external,
        resolv_conf: &dns.resolv_conf,
    };
    r.line(checks::dns(&cx, "default", "mysql", false));
    r.line(checks::dns(&cx, "default", "redis", true));
    r.line(checks::dns_search(&cx, "gin"));
    r.line(checks::mysql(&cx));
    r.line(checks::redis(&cx));
    for v6 in [false, true] {
        r.line(http_checks::balance(&cx, "gin", 20, v6));
        r.line(http_checks::balance(&cx, "vue", 20, v6));
    }
    r.line(http_checks::load_balancer(&cx, false));
    r.line(http_checks::load_balancer(&cx, true));
    r.line(http_checks::health_check(&cx));
    r.line(http_checks::ingress(&cx, "/v1/x", "gin", "/x"));
    r.line(http_checks::ingress(&cx, "/", "vue", "/"));
    r.line(programmed::ferry_services(&cx));
    println!(
        "\n$ ferry services --bpffs {}\n{}",
        lab.pin_dir().display(),
        indent(&lab.services_table())
    );

    if keep {
        let mut names: Vec<String> = pods.keys().cloned().collect();
        names.extend([topology::CLIENT.to_owned(), topology::EXTERNAL.to_owned()]);
        let enter = keep::write_enter_script(&lab, &dns.resolv_conf, &names)?;
        let mut all = pods.clone();
        all.insert(client.name.clone(), client.clone());
        all.insert(external.name.clone(), external.clone());
        r.line(keep::keep(&lab, &cluster, &all, &enter, &dns.resolv_conf));
        drop(servers);
    } else {
        let t = Instant::now();
        // The lab ends every process at once; the servers' guards then find them gone.
        let errors = lab.teardown();
        drop(servers);
        let left = cleanup::leftovers(lab.id());
        r.line(if errors.is_empty() && left.is_empty() {
            Line::ok(format!(
                "cleanup    lab {} removed in {} ms",
                lab.id(),
                t.elapsed().as_millis()
            ))
        } else {
            Line::fail(format!("cleanup    {errors:?} {left:?}"))
        });
    }
    Ok(())
}

/// Polls `ferry services` until every expected frontend holds its backends.
fn wait_programmed(
    lab: &Lab,
    want: &[programmed::Expected],
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(v) = lab.try_services()
            && programmed::all_programmed(&v, want)
        {
            return Some(start.elapsed());
        }
        thread::sleep(POLL * 5);
    }
    None
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect::<String>()
}
