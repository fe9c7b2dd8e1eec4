//! What ferry's socket layer costs a kept-alive connection to a ClusterIP (issue 14): its
//! programs run when the connection is made (connect4 in the client, getpeername4 when the
//! server accepts), never per request, so a kept-alive request's latency owes nothing to
//! them whatever the number of Services. Counted with BPF_ENABLE_STATS (fd-scoped: the
//! machine-wide sysctl is never touched), for the lab's own programs only.

mod common;

use common::*;
use ferry::model::Protocol;
use ferry_tests::{
    Lab,
    bench::bpfstats::{self, ProgCost, RunStats},
    require_root,
};

const VIP: &str = "10.96.0.10";

/// The runs of the socket-layer programs (cgroup sock_addr: `ferry_conn*`, `ferry_send*`,
/// `ferry_recv*`, `ferry_peer*`) while curl makes `requests` requests over one connection.
fn socket_runs(lab: &Lab, client: &ferry_tests::Pod, requests: usize) -> Vec<ProgCost> {
    let url = format!("http://{VIP}:80/");
    let mut args = vec!["-sS", "--max-time", "10", "-o", "/dev/null"];
    args.extend(std::iter::repeat_n(url.as_str(), requests));
    let before = bpfstats::snapshot(&lab.pin_dir());
    let out = lab.output(client, "curl", &args);
    let after = bpfstats::snapshot(&lab.pin_dir());
    assert!(
        out.status.success(),
        "curl {requests} requests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = bpfstats::delta(&before, &after);
    println!("{requests} requests over one connection: {all:?}");
    all.into_iter()
        .filter(|p| {
            ["ferry_conn", "ferry_send", "ferry_recv", "ferry_peer"]
                .iter()
                .any(|s| p.name.starts_with(s))
        })
        .collect()
}

fn runs_of(list: &[ProgCost], name: &str) -> u64 {
    list.iter().find(|p| p.name == name).map_or(0, |p| p.runs)
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn socket_programs_run_per_connection_not_per_request() {
    require_root!();
    let lab = Lab::new("socket_programs_run_per_connection_not_per_request");
    let b1 = lab.add_pod("b1");
    let bench = env!("CARGO_BIN_EXE_ferry-bench");
    let server = lab.spawn(
        &b1,
        bench,
        &["serve", "--port", "8080", "--lifetime", "120"],
    );
    assert!(
        server
            .wait_line(std::time::Duration::from_secs(10), |l| l == "ready")
            .is_some(),
        "the keep-alive server did not start: {}",
        lab.logs_of("b1")
    );
    let (svc, slice) = simple("web", VIP, 80, 8080, &[&b1]);
    lab.manifests().apply(&svc);
    lab.manifests().apply(&slice);
    start_agent(&lab);
    wait_active(&lab, "web", VIP, 80, Protocol::Tcp, &[ep(&b1, 8080)]);
    let client = lab.add_pod("client");
    let _stats = RunStats::enable().expect("BPF_ENABLE_STATS");

    let few = socket_runs(&lab, &client, 2);
    let many = socket_runs(&lab, &client, 200);
    for runs in [&few, &many] {
        assert_eq!(
            runs_of(runs, "ferry_conn4"),
            1,
            "one connect per connection: {runs:?}"
        );
        assert!(
            runs_of(runs, "ferry_peer4") >= 1,
            "the server's accept asks for its peer: {runs:?}"
        );
    }
    let total = |runs: &[ProgCost]| runs.iter().map(|p| p.runs).sum::<u64>();
    assert_eq!(
        total(&many),
        total(&few),
        "the socket programs ran more often for 200 requests than for 2 over one connection: \
         2: {few:?}, 200: {many:?}"
    );
}
