//! `--keep` and `--down`: leaving the lab up with a way in, and removing it later.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::{
    checks::Line,
    cluster::Cluster,
    http_checks::ingress_host,
    servers::{DB_NAME, DB_PASSWORD, DB_USER},
    topology,
};
use crate::{
    cleanup::{self, Record},
    lab::{Lab, Pod},
};

/// Where the id of a kept demo lab is written.
pub const STATE: &str = "/tmp/ferry-demo.state";

/// The id of a kept lab, if one is recorded.
pub fn kept_id() -> Option<String> {
    fs::read_to_string(STATE).ok().map(|s| s.trim().to_owned())
}

/// Writes `<lab>/enter`: `enter POD [COMMAND...]` runs COMMAND (default: a shell) in a pod's
/// network namespace, the lab cgroup and a mount namespace with the pod's resolv.conf; for
/// the external client, in its network namespace only.
pub fn write_enter_script(lab: &Lab, resolv_conf: &Path, pods: &[String]) -> Result<PathBuf> {
    let path = lab.tmp_dir().join("enter");
    let prefix = Record::netns_prefix(lab.id());
    let cgroup = lab.cgroup().display();
    let resolv = resolv_conf.display();
    let list = pods.join(" ");
    let external = topology::EXTERNAL;
    let script = format!(
        r#"#!/bin/sh
# enter POD [COMMAND...]: run COMMAND (default: a shell) in a pod of ferry's demo lab {id}.
# A pod: its network namespace, the lab cgroup (ferry's socket hooks translate Service
# addresses only for processes in it) and a private mount namespace whose /etc/resolv.conf
# is the pod's (cluster DNS {dns}). The external client: its network namespace only.
# Pods: {list}
pod=${{1:?usage: enter POD [COMMAND...]; pods: {list}}}
shift
ns=/run/netns/{prefix}$pod
[ -e "$ns" ] || {{ echo "enter: no pod $pod; pods: {list}" >&2; exit 1; }}
[ $# -gt 0 ] || set -- env PS1="[$pod] \w# " bash --norc
if [ "$pod" = {external} ]; then
    exec nsenter --net="$ns" -- "$@"
fi
exec nsenter --net="$ns" -- unshare --mount --propagation private -- \
    sh -c 'echo $$ > "$1/cgroup.procs" && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"' \
    sh {cgroup} {resolv} "$@"
"#,
        id = lab.id(),
        dns = topology::KUBE_DNS_IP,
    );
    fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Leaves the lab running, records its id and prints how to poke at it.
pub fn keep(
    lab: &Lab,
    cluster: &Cluster,
    pods: &BTreeMap<String, Pod>,
    enter: &Path,
    resolv_conf: &Path,
) -> Line {
    let id = lab.keep();
    if let Err(e) = fs::write(STATE, format!("{id}\n")) {
        return Line::fail(format!("writing {STATE}: {e}"));
    }
    let e = enter.display();
    let web = cluster.service("default", "web-server");
    let web_lb = web
        .and_then(|s| s.lb_ip)
        .unwrap_or(topology::WEB_SERVER_LB_IP);
    let web_np = web
        .and_then(|s| s.ports.first()?.node_port)
        .unwrap_or_default();
    let host = ingress_host(cluster);
    let ing_lb = topology::INGRESS_LB_IP;
    let pod_list: Vec<String> = pods
        .values()
        .map(|p| format!("{} {}", p.name, p.ip))
        .collect();
    let prefix = Record::netns_prefix(&id);
    let ferry = Lab::ferry_bin();
    println!(
        "
The lab is kept (id {id}). `{e} POD [COMMAND]` runs COMMAND (default: a shell) in
a pod: in its network namespace, in the lab cgroup (ferry's socket hooks translate Service
addresses only for processes in it) and in a private mount namespace whose /etc/resolv.conf
points at the cluster DNS {dns}. POD `external` is the client outside the cluster: only its
network namespace, so its traffic to the load balancer IPs crosses the node's eth0, where
ferry's TC programs are.

  {e} client dig mysql.default.svc.cluster.local
  {e} client mariadb -h mysql -u {DB_USER} -p{DB_PASSWORD} {DB_NAME} -e 'SELECT 1'
  {e} client redis-cli -h redis GET ferry-demo
  {e} client curl -s http://gin:8888/anything http://gin:8888/again
  {e} external curl -s http://{web_lb}:8888/
  {e} external curl -s http://{node}:{web_np}/          # web-server's NodePort
  {e} external curl -s --resolve {host}:80:{ing_lb} http://{host}/v1/x
  {e} client                     # a shell in the client pod

What `enter client` does, spelled out:
  nsenter --net=/run/netns/{prefix}client unshare --mount --propagation private sh -c \\
    'echo $$ > {cg}/cgroup.procs && mount --bind {resolv} /etc/resolv.conf && exec bash'

Pods (namespaces {prefix}POD; the node is {prefix}node):
{pods}
ferry:   {ferry} services --bpffs {pin}
         {ferry} conntrack --bpffs {pin}
Logs:    {tmp}/logs/ (servers), {tmp}/agent-1.log (agent),
         {tmp}/pods/ingress-nginx-controller-1/access.log (nginx: client, request, upstream)
Remove:  cargo xtask demo --down",
        dns = topology::KUBE_DNS_IP,
        node = topology::NODE_IP,
        cg = lab.cgroup().display(),
        resolv = resolv_conf.display(),
        pods = wrap(&pod_list, 4),
        ferry = ferry.display(),
        pin = lab.pin_dir().display(),
        tmp = lab.tmp_dir().display(),
    );
    Line::ok(format!("lab {id} kept ({STATE})"))
}

/// `items` as indented lines of `per_line` each.
fn wrap(items: &[String], per_line: usize) -> String {
    items
        .chunks(per_line)
        .map(|c| format!("  {}", c.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes a kept lab (`--down`).
pub fn down() -> Vec<Line> {
    let Some(id) = kept_id() else {
        return vec![Line::ok(format!(
            "no kept demo lab ({STATE} does not exist)"
        ))];
    };
    if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return vec![Line::fail(format!(
            "{STATE} does not hold a lab id: {id:?}"
        ))];
    }
    let mut lines: Vec<Line> = cleanup::down(&id).into_iter().map(Line::fail).collect();
    let left = cleanup::leftovers(&id);
    if left.is_empty() {
        let _ = fs::remove_file(STATE);
        lines.push(Line::ok(format!("demo lab {id} removed")));
    } else {
        lines.push(Line::fail(format!("still there: {}", left.join(", "))));
    }
    lines
}
