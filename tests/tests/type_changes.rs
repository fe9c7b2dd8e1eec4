//! A Service changing type (ClusterIP -> NodePort -> LoadBalancer ->
//! ExternalName -> ClusterIP) leaves exactly the frontends of its current type
//! in the kernel, and each one serves through the socket layer.

mod common;

use common::*;
use ferry::cmd::services::ServicesView;
use ferry_tests::{Endpoint, EndpointSlice, Lab, Node, Service, lab::GATEWAY, require_root};

const VIP: &str = "10.96.5.10";
const LB_IP: &str = "192.0.2.50";
const NODE_PORT: u16 = 30080;

/// The addresses:ports the kernel holds for this test's service.
fn frontends(lab: &Lab) -> Vec<String> {
    addresses(&lab.services())
}

/// The frontends' "address:port", sorted.
fn addresses(v: &ServicesView) -> Vec<String> {
    let mut out: Vec<String> = v
        .frontends
        .iter()
        .map(|f| format!("{}:{}", f.address, f.port))
        .collect();
    out.sort();
    out
}

fn wait_frontends(lab: &Lab, what: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let took = lab.wait_services(|v| addresses(v) == want, DEADLINE);
    report(what, took);
}

#[test]
#[ignore = "kernel test: needs root (cargo xtask test runs it)"]
fn type_changes_leave_no_stale_frontends() {
    require_root!();
    let lab = Lab::new("type_changes");
    let b1 = lab.add_pod("b1");
    let client = lab.add_pod("client");
    let _e = lab.start_echo(&b1, &[8080], &[]);
    // NodePorts listen on the node's addresses: the node's pod-network gateway here.
    lab.manifests()
        .apply(&Node::new(ferry_tests::lab::NODE_NAME, GATEWAY));
    let slice = EndpointSlice::new("web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint(Endpoint::ready(b1.ip));
    lab.manifests().apply(&slice);
    let cluster_ip = Service::cluster_ip("web", VIP).port_to("http", 80, "TCP", 8080u16);
    lab.manifests().apply(&cluster_ip);
    start_agent(&lab);

    let vip = format!("{VIP}:80");
    let node_port = format!("{GATEWAY}:{NODE_PORT}");
    let lb = format!("{LB_IP}:80");
    wait_frontends(&lab, "ClusterIP", std::slice::from_ref(&vip));
    assert_all_ok(&lab.tcp(&client, &vip, 2), "ClusterIP");

    let as_node_port = Service::node_port_service("web", VIP)
        .port_to("http", 80, "TCP", 8080u16)
        .node_port(i64::from(NODE_PORT));
    lab.manifests().apply(&as_node_port);
    wait_frontends(
        &lab,
        "ClusterIP -> NodePort",
        &[vip.clone(), node_port.clone()],
    );
    assert_all_ok(&lab.tcp(&client, &node_port, 2), "NodePort from a pod");

    let as_lb = Service::load_balancer("web", VIP)
        .port_to("http", 80, "TCP", 8080u16)
        .node_port(i64::from(NODE_PORT))
        .lb_ingress(LB_IP);
    lab.manifests().apply(&as_lb);
    wait_frontends(
        &lab,
        "NodePort -> LoadBalancer",
        &[vip.clone(), node_port.clone(), lb.clone()],
    );
    assert_all_ok(&lab.tcp(&client, &lb, 2), "LoadBalancer IP from a pod");

    lab.manifests()
        .apply(&Service::external_name("web", "example.invalid"));
    wait_frontends(&lab, "LoadBalancer -> ExternalName", &[]);
    let a = lab.client(&client, &["tcp", &vip, "--timeout-ms", "1000"]);
    assert_untranslated(&a[0], "ExternalName: the old ClusterIP");

    lab.manifests().apply(&cluster_ip);
    wait_frontends(
        &lab,
        "ExternalName -> ClusterIP",
        std::slice::from_ref(&vip),
    );
    assert_all_ok(&lab.tcp(&client, &vip, 2), "ClusterIP again");
    assert_eq!(
        frontends(&lab),
        vec![vip],
        "no NodePort or LB frontend left behind"
    );
}
