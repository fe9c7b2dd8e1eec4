//! Issue 9, item 11: `ferry services` shows every flag of a frontend, source ranges included,
//! in its table and in its JSON, and the ranges it shows are the ones the kernel enforces.
//!
//! The lab: two nodes (only node1's agent runs), one LoadBalancer Service with every option
//! that makes a flag (externalTrafficPolicy Local, session affinity, Maglev,
//! loadBalancerSourceRanges), and the two external clients: ext1 inside the ranges, ext2
//! outside.

mod agent_view;

use std::{collections::BTreeSet, time::Duration};

use agent_view::{AgentView, serves, wait_for};
use ferry::model::Protocol;
use ferry_tests::{
    AgentOpts, Cluster, Endpoint, EndpointSlice, Service,
    cluster::{EXT1_IP, LB_RANGE},
    require_root,
    services::frontend,
};

const DEADLINE: Duration = Duration::from_secs(10);
const CLUSTER_IP: &str = "10.96.0.10";
const LB_IP: &str = "192.0.2.10";

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn services_shows_every_flag_and_the_source_ranges_in_force() {
    require_root!();
    let c = Cluster::new("services_shows_every_flag_and_the_source_ranges_in_force");
    let (ext1, ext2) = (c.ext("ext1"), c.ext("ext2"));
    let b1 = c.add_pod_on("node1", "b1");
    let _echo = c.start_echo(&b1, &[8080], &[]);
    let ranges = [format!("{EXT1_IP}/32"), "10.0.0.0/8".to_owned()];
    c.manifests().apply(
        &Service::load_balancer("web", CLUSTER_IP)
            .port_to("http", 80, "TCP", 8080u16)
            .lb_ingress(LB_IP)
            .source_range(&ranges[0])
            .source_range(&ranges[1])
            .annotation("ferry.io/lb-algorithm", "maglev")
            .affinity(60)
            .external_traffic_policy("Local"),
    );
    c.manifests().apply(
        &EndpointSlice::new("web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::ready(b1.ip).node("node1")),
    );
    c.start_agent("node1", &AgentOpts::default());
    wait_for(
        "node1's TC programs attached",
        DEADLINE,
        || c.tc_attached("node1").then_some(()),
        || c.agent_log("node1"),
    );
    for ext in [&ext1, &ext2] {
        c.route(ext, LB_RANGE, "node1");
    }
    let node1 = AgentView::of_node(&c, "node1");
    let b1_ep = vec![format!("{}:8080", b1.ip)];
    let (v, _) = node1.wait_services(
        "the load balancer frontend programmed",
        |v| serves(v, LB_IP, 80, Protocol::Tcp, &b1_ep),
        DEADLINE,
        || c.agent_log("node1"),
    );

    // JSON: every flag, the ranges themselves, the affinity timeout.
    let lb = frontend(&v, LB_IP, 80, Protocol::Tcp).expect("the load balancer frontend");
    println!(
        "{LB_IP}:80/TCP external: flags {:?}, sourceRanges {:?}",
        lb.flags, lb.source_ranges
    );
    for flag in [
        "LoadBalancer",
        "ExternalTrafficPolicyLocal",
        "TwoScopes",
        "SessionAffinity",
        "SourceRanges",
        "Maglev",
    ] {
        assert!(
            lb.flags.iter().any(|f| f == flag),
            "{flag} in {:?}",
            lb.flags
        );
    }
    let shown: BTreeSet<&str> = lb.source_ranges.iter().map(String::as_str).collect();
    let want: BTreeSet<&str> = ranges.iter().map(String::as_str).collect();
    assert_eq!(shown, want, "the source ranges");
    assert_eq!(lb.affinity_timeout, Some(60));
    // Source ranges and Maglev are the load balancer's, not the ClusterIP's.
    let cip = frontend(&v, CLUSTER_IP, 80, Protocol::Tcp).expect("the ClusterIP frontend");
    assert!(
        cip.flags.iter().any(|f| f == "ClusterIP"),
        "{:?}",
        cip.flags
    );
    assert!(
        !cip.flags
            .iter()
            .any(|f| f == "SourceRanges" || f == "Maglev")
            && cip.source_ranges.is_empty(),
        "{cip:?}"
    );

    // The table: the load balancer's external row names the same flags and ranges.
    let table = node1.services_table();
    println!("{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{LB_IP}:80/TCP")) && l.contains(" external "))
        .unwrap_or_else(|| panic!("no external row for {LB_IP}:80/TCP:\n{table}"));
    for part in [
        "SourceRanges",
        "Maglev",
        "SessionAffinity",
        "(60s)",
        &ranges[0],
        &ranges[1],
    ] {
        assert!(row.contains(part), "{part} in the row: {row}");
    }

    // What is shown is what is enforced: ext1 (inside) is served, ext2 (outside) is dropped.
    let target = format!("{LB_IP}:80");
    let a = wait_for(
        "ext1 reaches the load balancer IP",
        DEADLINE,
        || {
            let a = c
                .client(&ext1, &["tcp", &target, "--timeout-ms", "1000"])
                .remove(0);
            a.ok.then_some(a)
        },
        || c.dump(),
    );
    println!("ext1 ({EXT1_IP}, inside the ranges) -> {target}: {}", a.raw);
    assert_eq!(a.pod().as_deref(), Some("b1"));
    let a = c
        .client(&ext2, &["tcp", &target, "--timeout-ms", "1000"])
        .remove(0);
    println!("ext2 (outside the ranges) -> {target}: {}", a.raw);
    assert!(!a.ok, "ext2 is outside the source ranges: {}", a.raw);
}
