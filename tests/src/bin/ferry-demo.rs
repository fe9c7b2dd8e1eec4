//! ferry-demo [--keep] [--down]
//!
//! A small lab showing ferry at work: Service demo/web (ClusterIP 10.96.0.10, port 80) in front
//! of two pods running lab-echo on 8080, a client pod, and the ferry agent. Ten requests are sent
//! with curl from the client to http://10.96.0.10/ and each step is reported as ok or FAIL.
//!
//! Without `--keep` everything is removed at the end (also on failure and on Ctrl-C). With
//! `--keep` the lab stays up, the way to poke at it is printed, and its id is written to
//! /tmp/ferry-demo.state so that `ferry-demo --down` can remove it.

use std::{
    collections::BTreeMap,
    fs,
    panic::{self, AssertUnwindSafe},
    process::ExitCode,
    time::Duration,
};

use ferry_tests::{
    AgentOpts, EchoReply, Endpoint, EndpointSlice, Lab, Service, cleanup, is_root, proc, services,
};

const STATE: &str = "/tmp/ferry-demo.state";
const VIP: &str = "10.96.0.10";

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&mut self, msg: impl AsRef<str>) {
        println!("ok    {}", msg.as_ref());
    }

    fn fail(&mut self, msg: impl AsRef<str>) {
        println!("FAIL  {}", msg.as_ref());
        self.failed = true;
    }

    fn check(&mut self, cond: bool, ok: impl AsRef<str>, fail: impl AsRef<str>) {
        if cond { self.ok(ok) } else { self.fail(fail) }
    }
}

fn main() -> ExitCode {
    let mut keep = false;
    let mut down = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep" => keep = true,
            "--down" => down = true,
            "-h" | "--help" => {
                println!("usage: ferry-demo [--keep] [--down]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!(
                    "ferry-demo: unknown argument {other}\nusage: ferry-demo [--keep] [--down]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if !is_root() {
        eprintln!("ferry-demo needs root (network namespaces, cgroups, bpffs)");
        return ExitCode::from(2);
    }
    if down {
        return tear_down_kept();
    }
    if keep && fs::metadata(STATE).is_ok() {
        let id = fs::read_to_string(STATE).unwrap_or_default();
        println!(
            "FAIL  a kept demo lab exists already (id {}): run ferry-demo --down first",
            id.trim()
        );
        return ExitCode::FAILURE;
    }
    let ferry = std::env::var_os("FERRY_BIN")
        .map(Into::into)
        .or_else(|| proc::sibling_binary("ferry"));
    if ferry
        .as_ref()
        .is_none_or(|p: &std::path::PathBuf| !p.is_file())
    {
        println!(
            "FAIL  the ferry binary was not found (FERRY_BIN or next to ferry-demo): build it: cargo build -p agent"
        );
        return ExitCode::FAILURE;
    }
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        println!("FAIL  {msg}");
    }));
    match panic::catch_unwind(AssertUnwindSafe(|| run(keep))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) | Err(_) => ExitCode::FAILURE,
    }
}

fn run(keep: bool) -> bool {
    let mut r = Report::default();
    let lab = Lab::new("ferry-demo");
    r.ok(format!(
        "lab {} created (cgroup {})",
        lab.id(),
        lab.cgroup().display()
    ));
    let a = lab.add_pod("backend-a");
    let b = lab.add_pod("backend-b");
    let client = lab.add_pod("client");
    r.ok(format!(
        "pods on bridge br0 of {}: backend-a {}, backend-b {}, client {}",
        lab.node_netns(),
        a.ip,
        b.ip,
        client.ip
    ));
    let _echo_a = lab.start_echo(&a, &[8080], &[]);
    let _echo_b = lab.start_echo(&b, &[8080], &[]);
    r.ok("lab-echo serving on :8080 in backend-a and backend-b");

    let svc = Service::cluster_ip("web", VIP)
        .namespace("demo")
        .port_to("http", 80, "TCP", 8080u16);
    let slice = EndpointSlice::new("web-abc12", "web")
        .namespace("demo")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready(a.ip))
        .endpoint(Endpoint::ready(b.ip));
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    r.ok(format!(
        "Service demo/web {VIP}:80 -> :8080 and its EndpointSlice written to {}",
        lab.manifests().dir().display()
    ));

    let ready = lab.start_agent(&AgentOpts::default());
    r.ok(format!("ferry agent ready in {} ms", ready.as_millis()));
    let want = [format!("{}:8080", a.ip), format!("{}:8080", b.ip)];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let took = lab.wait_services(
        |v| services::active_is(v, VIP, 80, "TCP", &want),
        Duration::from_secs(5),
    );
    r.ok(format!(
        "{VIP}:80/TCP programmed with 2 backends ({} ms after the agent was ready)",
        took.as_millis()
    ));

    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut saw_client_ip = 0;
    for i in 1..=10 {
        match lab.curl(&client, &format!("http://{VIP}/")) {
            Ok(body) => match EchoReply::parse(&body) {
                Some(e) => {
                    *counts.entry(e.pod.clone()).or_default() += 1;
                    if *e.peer.ip() == client.ip {
                        saw_client_ip += 1;
                    }
                    r.ok(format!(
                        "request {i:2}: {} answered on port {}, it saw the client as {}",
                        e.pod, e.port, e.peer
                    ));
                }
                None => r.fail(format!("request {i:2}: unexpected answer {body:?}")),
            },
            Err(e) => r.fail(format!("request {i:2}: {e}")),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(pod, n)| format!("{pod}={n}")).collect();
    r.check(
        counts.len() == 2,
        format!("both backends answered: {}", summary.join(" ")),
        format!(
            "not load balanced over both backends: {}",
            summary.join(" ")
        ),
    );
    r.check(
        saw_client_ip == 10,
        format!("every backend saw the client's own pod IP {}", client.ip),
        format!(
            "only {saw_client_ip}/10 requests arrived from the client's pod IP {}",
            client.ip
        ),
    );

    println!(
        "\n$ ferry services --bpffs {}\n{}",
        lab.pin_dir().display(),
        lab.services_table()
    );

    if keep {
        let id = lab.keep();
        if let Err(e) = fs::write(STATE, format!("{id}\n")) {
            r.fail(format!("writing {STATE}: {e}"));
        }
        let client_ns = client.netns_path.display();
        let cg = lab.cgroup().display();
        println!(
            "The lab is kept (id {id}). Only processes in the lab cgroup are load balanced by ferry, so
join it before connecting. One request:

  nsenter --net={client_ns} sh -c 'echo $$ > {cg}/cgroup.procs && exec curl -s http://{VIP}/'

or a shell in the client pod:

  nsenter --net={client_ns} bash
  echo $$ > {cg}/cgroup.procs
  curl http://{VIP}/

State:   {} services --bpffs {}
Agent:   log in {}/agent-1.log
Remove:  ferry-demo --down   (kills every process left in the lab cgroup, such a shell too)",
            Lab::ferry_bin().display(),
            lab.pin_dir().display(),
            lab.tmp_dir().display(),
        );
    } else {
        let errors = lab.teardown();
        r.check(
            errors.is_empty() && cleanup::leftovers(lab.id()).is_empty(),
            "lab removed",
            format!("lab removal: {errors:?} {:?}", cleanup::leftovers(lab.id())),
        );
    }
    !r.failed
}

fn tear_down_kept() -> ExitCode {
    let Ok(id) = fs::read_to_string(STATE) else {
        println!("ok    no kept demo lab ({STATE} does not exist)");
        return ExitCode::SUCCESS;
    };
    let id = id.trim();
    if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        println!("FAIL  {STATE} does not hold a lab id: {id:?}");
        return ExitCode::FAILURE;
    }
    let errors = cleanup::down(id);
    let left = cleanup::leftovers(id);
    for e in &errors {
        println!("FAIL  {e}");
    }
    if left.is_empty() {
        let _ = fs::remove_file(STATE);
        println!("ok    demo lab {id} removed");
    } else {
        println!("FAIL  still there: {}", left.join(", "));
    }
    if errors.is_empty() && left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
