//! The demo's servers, each a child process inside its pod (network namespace and lab
//! cgroup) with its data, configuration, socket and pid files under the lab's directory:
//!
//! | Deployment | program |
//! |---|---|
//! | mysql | MariaDB (`mariadb-install-db`, then `mariadbd --no-defaults`) |
//! | redis | `redis-server` (no config file, nothing saved) |
//! | coredns | dnsmasq answering `<svc>.<ns>.svc.cluster.local` from a hosts file |
//! | ingress-nginx-controller | nginx configured from the Ingress ([`super::ingress`]) |
//! | gin, vue, web-server | `ferry-demo http-server` ([`super::http_server`]) |
//!
//! They start in parallel; each is ready when a TCP connection to its port succeeds from
//! inside its pod (polled, no fixed sleeps).

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    cluster::{Cluster, Deployment},
    ingress::{self, Ingress},
    pod_exec, topology,
};
use crate::{
    lab::{Lab, Pod},
    proc::Proc,
};

/// The demo database's account (the gin-vue-admin database is called `gva`).
pub const DB_NAME: &str = "gva";
pub const DB_USER: &str = "gva";
pub const DB_PASSWORD: &str = "gva-demo";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A started server.
pub struct Server {
    pub pod: String,
    pub program: &'static str,
    /// From its start to its port answering.
    pub ready_in: Duration,
    pub proc: Proc,
}

/// Files the servers and clients share: the pods' resolv.conf and the DNS records.
pub struct DnsFiles {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

/// Writes the pods' resolv.conf (the kubelet's ClusterFirst policy for namespace default)
/// and the DNS server's records: one A record per Service.
pub fn write_dns_files(dir: &Path, cluster: &Cluster) -> Result<DnsFiles> {
    let d = topology::CLUSTER_DOMAIN;
    let resolv_conf = dir.join("resolv.conf");
    fs::write(
        &resolv_conf,
        format!(
            "# ferry demo: a pod's resolv.conf (dnsPolicy ClusterFirst, namespace default)\n\
             search default.svc.{d} svc.{d} {d}\nnameserver {}\noptions ndots:5\n",
            topology::KUBE_DNS_IP
        ),
    )?;
    let hosts = dir.join("cluster-dns.hosts");
    let records: String = cluster
        .services
        .iter()
        .map(|s| {
            format!(
                "{} {}\n{} {}\n",
                s.cluster_ip,
                s.fqdn(),
                s.cluster_ip6,
                s.fqdn()
            )
        })
        .collect();
    fs::write(&hosts, records)?;
    Ok(DnsFiles { resolv_conf, hosts })
}

/// Starts the server of every pod of every Deployment, in parallel, and waits until each
/// one's port answers.
pub fn start_all(
    lab: &Lab,
    cluster: &Cluster,
    pods: &BTreeMap<String, Pod>,
    dns: &DnsFiles,
) -> Result<Vec<Server>> {
    let jobs: Vec<(&Deployment, &Pod)> = cluster
        .deployments
        .iter()
        .flat_map(|d| d.pod_names().into_iter().map(move |n| (d, n)))
        .map(|(d, n)| Ok((d, pods.get(&n).with_context(|| format!("no pod {n}"))?)))
        .collect::<Result<_>>()?;
    let results: Vec<Result<Server>> = thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(d, pod)| s.spawn(move || start(lab, cluster, d, pod, dns)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a server start panicked"))
            })
            .collect()
    });
    let mut servers = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => servers.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(servers)
}

fn start(
    lab: &Lab,
    cluster: &Cluster,
    d: &Deployment,
    pod: &Pod,
    dns: &DnsFiles,
) -> Result<Server> {
    let started = Instant::now();
    let dir = lab.tmp_dir().join("pods").join(&pod.name);
    fs::create_dir_all(&dir)?;
    let port = d
        .ports
        .iter()
        .find(|p| p.protocol == "TCP")
        .map(|p| p.port)
        .with_context(|| format!("deployment {} has no TCP container port", d.name))?;
    let (program, proc) = match d.name.as_str() {
        "mysql" => ("mariadbd", mariadb(lab, pod, &dir, port)?),
        "redis" => ("redis-server", redis(lab, pod, &dir, port)),
        "coredns" => ("dnsmasq", dnsmasq(lab, pod, dns, port)),
        "ingress-nginx-controller" => ("nginx", nginx(lab, cluster, pod, &dir)?),
        _ => ("ferry-demo http-server", http_server(lab, pod, port)?),
    };
    let addr = SocketAddrV4::new(pod.ip, port);
    if let Err(e) = pod_exec::wait_tcp(&pod.netns_path, addr, READY_TIMEOUT) {
        let exited = proc
            .wait_exit(Duration::ZERO)
            .map(|s| format!(" (it exited: {s})"))
            .unwrap_or_default();
        bail!(
            "{program} in pod {}: {e:#}{exited}; its log:\n{}",
            pod.name,
            tail(&lab.logs_of(&pod.name), 15)
        );
    }
    Ok(Server {
        pod: pod.name.clone(),
        program,
        ready_in: started.elapsed(),
        proc,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn path_arg(flag: &str, path: &Path) -> String {
    format!("{flag}={}", path.display())
}

fn mariadb(lab: &Lab, pod: &Pod, dir: &Path, port: u16) -> Result<Proc> {
    let data = dir.join("data");
    // A small redo log: a faster install and start.
    let log_size = "--innodb-log-file-size=8M";
    let install = lab.output_timeout(
        pod,
        "mariadb-install-db",
        &[
            "--no-defaults",
            &path_arg("--datadir", &data),
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            log_size,
        ],
        Duration::from_secs(60),
    );
    if !install.status.success() {
        bail!(
            "mariadb-install-db failed ({}): {}",
            install.status,
            String::from_utf8_lossy(&install.stderr).trim()
        );
    }
    let init = dir.join("init.sql");
    fs::write(
        &init,
        format!(
            "CREATE DATABASE IF NOT EXISTS {DB_NAME};\n\
             CREATE USER IF NOT EXISTS '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}';\n\
             GRANT ALL PRIVILEGES ON {DB_NAME}.* TO '{DB_USER}'@'%';\n"
        ),
    )?;
    Ok(lab.spawn(
        pod,
        "mariadbd",
        &[
            "--no-defaults",
            &path_arg("--datadir", &data),
            &path_arg("--socket", &dir.join("mysqld.sock")),
            &path_arg("--pid-file", &dir.join("mysqld.pid")),
            &path_arg("--init-file", &init),
            &format!("--bind-address={}", pod.ip),
            &format!("--port={port}"),
            "--user=root",
            // Client addresses stay addresses (and no lookups through the machine's DNS).
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
            log_size,
            "--innodb-buffer-pool-dump-at-shutdown=OFF",
            "--innodb-buffer-pool-load-at-startup=OFF",
        ],
    ))
}

fn redis(lab: &Lab, pod: &Pod, dir: &Path, port: u16) -> Proc {
    lab.spawn(
        pod,
        "redis-server",
        &[
            "--port",
            &port.to_string(),
            "--bind",
            &pod.ip.to_string(),
            &pod.ip6.to_string(),
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ],
    )
}

fn dnsmasq(lab: &Lab, pod: &Pod, dns: &DnsFiles, port: u16) -> Proc {
    let local = format!("--local=/{}/", topology::CLUSTER_DOMAIN);
    lab.spawn(
        pod,
        "dnsmasq",
        &[
            // Foreground, no pid file, no change of user, logs on stderr (the lab's log file).
            "--no-daemon",
            "--log-facility=-",
            "--log-queries",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            &path_arg("--addn-hosts", &dns.hosts),
            // Names under cluster.local that are not Services: NXDOMAIN, never forwarded.
            &local,
            &format!("--listen-address={}", pod.ip),
            &format!("--listen-address={}", pod.ip6),
            "--bind-interfaces",
            &format!("--port={port}"),
        ],
    )
}

fn nginx(lab: &Lab, cluster: &Cluster, pod: &Pod, dir: &Path) -> Result<Proc> {
    let obj = cluster
        .ingresses
        .first()
        .context("no Ingress in the examples")?;
    let ing = Ingress::parse(obj)?;
    fs::create_dir_all(dir.join("tmp"))?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        ingress::nginx_conf(&ing, pod.ip, topology::KUBE_DNS_IP, dir),
    )?;
    let test = lab.output(
        pod,
        "nginx",
        &[
            "-t",
            "-q",
            "-p",
            &dir.display().to_string(),
            "-c",
            &conf.display().to_string(),
            "-e",
            &dir.join("error.log").display().to_string(),
        ],
    );
    if !test.status.success() {
        bail!(
            "nginx -t rejects {}: {}",
            conf.display(),
            String::from_utf8_lossy(&test.stderr).trim()
        );
    }
    Ok(lab.spawn(
        pod,
        "nginx",
        &[
            "-p",
            &dir.display().to_string(),
            "-c",
            &conf.display().to_string(),
            "-e",
            &dir.join("error.log").display().to_string(),
            "-g",
            "daemon off;",
        ],
    ))
}

fn http_server(lab: &Lab, pod: &Pod, port: u16) -> Result<Proc> {
    let me = std::env::current_exe().context("the path of ferry-demo")?;
    Ok(lab.spawn(
        pod,
        me,
        &[
            "http-server",
            "--pod",
            &pod.name,
            "--port",
            &port.to_string(),
        ],
    ))
}
