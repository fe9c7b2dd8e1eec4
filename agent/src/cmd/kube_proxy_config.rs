//! `ferry agent --config FILE`: kube-proxy's own configuration file (a
//! `KubeProxyConfiguration`, kubeproxy.config.k8s.io/v1alpha1, as kubeadm keeps it in the
//! `kube-proxy` ConfigMap's `config.conf`), so that a migration keeps the operator's settings.
//!
//! The fields ferry honours set the matching flags; a flag given on the command line or in
//! the environment wins (kube-proxy ignores its flags once --config is given; ferry keeps
//! them, which is what a DaemonSet patch expects). Every other field that holds a value is
//! named in a warning at start, so nothing the operator set is silently dropped.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde_yaml::Value;

/// The fields ferry honours, by their path in the file (each sets the agent flag of the same
/// meaning: `--healthz-bind-address`, `--metrics-bind-address`, `--node-name`,
/// `--sync-period`, `--kubeconfig`, `--log-format`; see `cli::apply_config_file`).
pub const HONOURED: &[&str] = &[
    "healthzBindAddress",
    "metricsBindAddress",
    "hostnameOverride",
    "syncPeriod",
    "clientConnection.kubeconfig",
    "logging.format",
];

/// Fields that name what the file is, never reported.
const IDENTITY: &[&str] = &["apiVersion", "kind"];

/// What the file sets.
#[derive(Debug, Default, PartialEq)]
pub struct FileSettings {
    pub healthz_bind_address: Option<SocketAddr>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub hostname_override: Option<String>,
    pub sync_period: Option<Duration>,
    pub kubeconfig: Option<String>,
    pub log_json: Option<bool>,
    /// Fields with a value that ferry does not use (dotted paths, sorted).
    pub ignored: Vec<String>,
}

/// The file could not be used: which, and why (the field, when one is at fault).
#[derive(Debug, thiserror::Error)]
#[error("--config {path}: {detail}")]
pub struct ConfigError {
    pub path: String,
    pub detail: String,
}

pub fn read(path: &Path) -> Result<FileSettings, ConfigError> {
    let error = |detail: String| ConfigError {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    parse(&text).map_err(error)
}

/// Reads a KubeProxyConfiguration document; an error says what is wrong (`field: why` when
/// a field is).
pub fn parse(text: &str) -> Result<FileSettings, String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if !doc.is_mapping() {
        return Err("not a KubeProxyConfiguration mapping".into());
    }
    let kind = doc["kind"].as_str().unwrap_or_default();
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    if kind != "KubeProxyConfiguration" || api != "kubeproxy.config.k8s.io/v1alpha1" {
        return Err(format!(
            "{api:?} {kind:?} is not a kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration"
        ));
    }
    let field = |f: &str, detail: String| format!("{f}: {detail}");
    let text_of = |path: &'static str| -> Result<Option<String>, String> {
        match lookup(&doc, path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(field(path, format!("a string, not {other:?}"))),
        }
    };
    let address = |path: &'static str, default_port: u16| -> Result<_, String> {
        text_of(path)?
            .map(|s| bind_address(&s, default_port).map_err(|d| field(path, d)))
            .transpose()
    };
    let mut out = FileSettings {
        healthz_bind_address: address("healthzBindAddress", 10256)?,
        metrics_bind_address: address("metricsBindAddress", 10249)?,
        hostname_override: text_of("hostnameOverride")?,
        sync_period: text_of("syncPeriod")?
            .map(|s| go_duration(&s).map_err(|d| field("syncPeriod", d)))
            .transpose()?,
        kubeconfig: text_of("clientConnection.kubeconfig")?,
        log_json: match text_of("logging.format")?.as_deref() {
            None => None,
            Some("json") => Some(true),
            Some("text") => Some(false),
            Some(other) => return Err(field("logging.format", format!("{other:?}: text or json"))),
        },
        ignored: Vec::new(),
    };
    let mut leaves = Vec::new();
    walk(&doc, String::new(), &mut leaves);
    out.ignored = leaves
        .into_iter()
        .filter(|p| !IDENTITY.contains(&p.as_str()) && !HONOURED.contains(&p.as_str()))
        .collect();
    out.ignored.sort();
    Ok(out)
}

/// `doc` at a dotted path.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

/// The dotted paths of every leaf that holds a value (not null, "", {}, [], 0 or false:
/// kube-proxy's defaults as kubeadm writes them).
fn walk(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(child, p, out);
            }
        }
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        Value::Sequence(s) if s.is_empty() => {}
        Value::Bool(false) => {}
        Value::Number(n) if n.as_f64() == Some(0.0) => {}
        Value::Tagged(t) => walk(&t.value, path, out),
        _ => out.push(path),
    }
}

/// kube-proxy's bind addresses: "IP:port", or an IP alone (its default port).
fn bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| format!("{s:?} is no IP:port"))
}

/// A Go duration as kubeadm writes them ("30s", "1h0m0s", "1m30.5s").
fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is no duration (like 30s or 1h0m0s)");
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubeadm init` writes into the kube-proxy ConfigMap's config.conf (1.31), with an
    /// operator's metrics address and an IPVS scheduler.
    const KUBEADM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: "rr"
  strictARP: false
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 0.0.0.0:10249
mode: ""
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
syncPeriod: 1h0m0s
winkernel:
  enableDSR: false
"#;

    #[test]
    fn kubeadms_file_sets_what_ferry_honours_and_names_the_rest() {
        let s = parse(KUBEADM).unwrap();
        assert_eq!(
            s.metrics_bind_address,
            Some("0.0.0.0:10249".parse().unwrap())
        );
        assert_eq!(s.healthz_bind_address, None, "empty: the default");
        assert_eq!(s.sync_period, Some(Duration::from_secs(3600)));
        assert_eq!(
            s.kubeconfig.as_deref(),
            Some("/var/lib/kube-proxy/kubeconfig.conf")
        );
        assert_eq!(s.hostname_override, None);
        assert_eq!(
            s.ignored,
            [
                "bindAddress",
                "clusterCIDR",
                "configSyncPeriod",
                "iptables.minSyncPeriod",
                "iptables.syncPeriod",
                "ipvs.minSyncPeriod",
                "ipvs.scheduler",
                "logging.options.json.infoBufferSize",
            ]
        );
    }

    #[test]
    fn durations_are_read_as_go_writes_them() {
        assert_eq!(go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(go_duration("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(go_duration("1m30.5s"), Ok(Duration::from_millis(90_500)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "soon", "10", "5d", "1h-2m"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_file_or_field_is_named() {
        let e = parse("kind: Deployment\napiVersion: apps/v1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("KubeProxyConfiguration"), "{e}");
        let e = parse("{not yaml").unwrap_err().to_string();
        assert!(!e.is_empty());
        let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        let e = parse(&format!("{head}metricsBindAddress: nowhere\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metricsBindAddress") && e.contains("nowhere"),
            "{e}"
        );
        let e = parse(&format!("{head}syncPeriod: [1]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("syncPeriod"), "{e}");
        let s = parse(&format!(
            "{head}healthzBindAddress: 10.0.0.1\nlogging:\n  format: json\n"
        ))
        .unwrap();
        assert_eq!(
            s.healthz_bind_address,
            Some("10.0.0.1:10256".parse().unwrap())
        );
        assert_eq!(s.log_json, Some(true));
    }
}
