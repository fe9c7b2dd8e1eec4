//! A running agent as its operator sees it, asked from inside its node's network namespace:
//! `ferry services` joined with the agent's status (frontend errors, diagnostics; read as the
//! typed `ServicesView`, the JSON contract), and its health and metrics endpoints. The agent
//! listens on 127.0.0.1 of that namespace, so `ferry services` run from the root namespace (as
//! `Lab::services` does) shows the kernel's state without the agent's status.
#![allow(dead_code)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use ferry::{cmd::services::ServicesView, model::Protocol};
use ferry_tests::{
    Cluster, Lab,
    flood::http_get_in,
    lab::HEALTHZ_PORT,
    proc::{self, Placement},
    services::{active_is, frontend},
};

/// How often a condition is polled (each `ferry services` is a process).
const EVERY: Duration = Duration::from_millis(50);

/// Where the lab starts the agent's metrics server (in the node's namespace).
const METRICS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249));

/// One node's agent: its network namespace and pin directory.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub name: String,
    netns: PathBuf,
    pin_dir: PathBuf,
}

impl AgentView {
    pub fn of_lab(lab: &Lab) -> AgentView {
        AgentView {
            name: lab.node_netns().to_owned(),
            netns: lab.node_netns_path(),
            pin_dir: lab.pin_dir(),
        }
    }

    pub fn of_node(c: &Cluster, node: &str) -> AgentView {
        let n = c.node(node);
        AgentView {
            name: node.to_owned(),
            netns: n.netns_path.clone(),
            pin_dir: n.pin_dir.clone(),
        }
    }

    /// `ferry services --bpffs PIN ARGS` run in the node's namespace, so that it reaches the
    /// agent's status at 127.0.0.1:10249 there: (success, stdout, stderr).
    fn ferry_services(&self, args: &[&str]) -> (bool, String, String) {
        let out = proc::output_placed(
            Command::new(Lab::ferry_bin())
                .arg("services")
                .arg("--bpffs")
                .arg(&self.pin_dir)
                .args(args)
                .env("NO_COLOR", "1"),
            &Placement {
                netns: Some(self.netns.clone()),
                cgroup: None,
            },
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("running ferry services for {}: {e}", self.name));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ferry services -o json`, typed; Err says why it could not be read.
    pub fn try_services(&self) -> Result<ServicesView, String> {
        let (ok, stdout, stderr) = self.ferry_services(&["-o", "json"]);
        if !ok {
            return Err(format!("ferry services failed: {}", stderr.trim()));
        }
        let v: serde_json::Value =
            serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))?;
        let view: ServicesView =
            serde_json::from_value(v).map_err(|e| format!("not a ServicesView ({e}): {stdout}"))?;
        if !view.agent_reached {
            return Err(format!("the agent's status was not joined: {stdout}"));
        }
        Ok(view)
    }

    pub fn services(&self) -> ServicesView {
        self.try_services()
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// `ferry services` as a table (stdout and stderr).
    pub fn services_table(&self) -> String {
        let (_, stdout, stderr) = self.ferry_services(&[]);
        format!("{stdout}{stderr}")
    }

    /// Polls `ferry services -o json` until `pred` holds: the view and how long it took.
    /// Past `deadline` it panics with `what`, the last view and `log()`.
    pub fn wait_services(
        &self,
        what: &str,
        pred: impl Fn(&ServicesView) -> bool,
        deadline: Duration,
        log: impl Fn() -> String,
    ) -> (ServicesView, Duration) {
        let t0 = Instant::now();
        loop {
            let last = self.try_services();
            if let Ok(v) = &last
                && pred(v)
            {
                let took = t0.elapsed();
                println!("latency: {}: {what}: {} ms", self.name, took.as_millis());
                return (last.unwrap_or_default(), took);
            }
            if t0.elapsed() >= deadline {
                let shown = match last {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(e) => e,
                };
                panic!(
                    "{}: not within {deadline:?}: {what}; last ferry services:\n{shown}\nagent log:\n{}",
                    self.name,
                    log()
                );
            }
            thread::sleep(EVERY);
        }
    }

    /// The HTTP status of GET `path` on the agent's health server (None: no answer).
    pub fn health(&self, path: &str) -> Option<u16> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTHZ_PORT));
        http_get_in(&self.netns, addr, path, Duration::from_secs(2))
            .ok()
            .map(|a| a.status)
    }

    /// GET /metrics (empty when the agent does not answer).
    pub fn metrics(&self) -> String {
        http_get_in(&self.netns, METRICS, "/metrics", Duration::from_secs(2))
            .map(|a| a.body)
            .unwrap_or_default()
    }
}

/// The frontend's status ("programmed", "error"; empty when the view has no such frontend).
pub fn status(v: &ServicesView, address: &str, port: u16, protocol: Protocol) -> String {
    frontend(v, address, port, protocol).map_or_else(String::new, |f| f.status.clone())
}

/// True when the frontend is programmed with exactly these active backends ("ip:port").
pub fn serves(
    v: &ServicesView,
    address: &str,
    port: u16,
    protocol: Protocol,
    want: &[String],
) -> bool {
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    status(v, address, port, protocol) == "programmed"
        && active_is(v, address, port, protocol, &want)
}

/// True when one of the agent's diagnostics contains every one of `parts`.
pub fn has_diagnostic(v: &ServicesView, parts: &[&str]) -> bool {
    v.diagnostics
        .iter()
        .any(|d| parts.iter().all(|p| d.contains(p)))
}

/// Polls `check` until it returns Some, for at most `deadline`; panics with `what` and
/// `log()` then.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
    log: impl Fn() -> String,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            t0.elapsed() < deadline,
            "not within {deadline:?}: {what}\n{}",
            log()
        );
        thread::sleep(EVERY);
    }
}
