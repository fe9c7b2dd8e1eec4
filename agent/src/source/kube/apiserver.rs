//! Where the API server is, without hand edits.
//!
//! ferry serves the `kubernetes` Service's ClusterIP, so in a pod it cannot reach the API
//! server through the in-cluster address kubelet gives it (`KUBERNETES_SERVICE_HOST`): that
//! address works only once some proxy translates it. kube-proxy solves this with a kubeconfig
//! naming the real address; ferry looks for one, in this order:
//!
//! 1. `--kubeconfig` or `KUBECONFIG`: used whole (its own credentials);
//! 2. in a pod (a service account token is mounted), its credentials with the server from:
//!    `--master` (kube-proxy's flag, also `FERRY_APISERVER`), else the first readable
//!    kubeconfig among kube-proxy's (`/var/lib/kube-proxy/kubeconfig.conf`, the `kube-proxy`
//!    ConfigMap kubeadm and kind create, mounted optionally) and the node's kubelet's (under
//!    `/host`, read only, for its `server:` alone: kubelet reaches the API server from the host
//!    network, as ferry's pod does), else the in-cluster address, with a warning;
//! 3. outside a pod: `~/.kube/config`.
//!
//! `--master` overrides the server of whichever is used, as in kube-proxy.

use std::path::{Path, PathBuf};

use kube::{
    Config,
    config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    },
};

use super::KubeError;

/// The service account a pod's containers get.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Kubeconfigs whose server is the API server's real address, in the order they are tried.
pub const DISCOVERY_KUBECONFIGS: &[&str] = &[
    // kube-proxy's own (the kube-proxy ConfigMap of kubeadm and kind).
    "/var/lib/kube-proxy/kubeconfig.conf",
    // The node's kubelet: kubeadm and kind, k3s, RKE2, EKS and GKE.
    "/host/etc/kubernetes/kubelet.conf",
    "/host/var/lib/rancher/k3s/agent/kubelet.kubeconfig",
    "/host/var/lib/rancher/rke2/agent/kubelet.kubeconfig",
    "/host/var/lib/kubelet/kubeconfig",
];

/// What to look at.
#[derive(Clone, Debug)]
pub struct Sources {
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    pub service_account: PathBuf,
    pub discover: Vec<PathBuf>,
}

impl Sources {
    /// The agent's flags, with the standard paths.
    pub fn new(kubeconfig: Option<&Path>, master: Option<&str>) -> Sources {
        Sources {
            kubeconfig: kubeconfig
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty()),
            master: master.map(str::to_owned),
            service_account: PathBuf::from(SERVICE_ACCOUNT_DIR),
            discover: DISCOVERY_KUBECONFIGS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// Where the configuration came from (logged at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Kubeconfig(PathBuf),
    /// The service account, with the server of this kubeconfig.
    Discovered(PathBuf),
    /// The service account, with `--master`.
    Master,
    /// The service account and KUBERNETES_SERVICE_HOST: the `kubernetes` ClusterIP, which
    /// only works once something serves it.
    InCluster,
    /// ~/.kube/config.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Kubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
            Origin::Discovered(p) => write!(f, "the server of {}", p.display()),
            Origin::Master => f.write_str("--master"),
            Origin::InCluster => f.write_str("KUBERNETES_SERVICE_HOST"),
            Origin::Default => f.write_str("~/.kube/config"),
        }
    }
}

/// The client configuration, and where it came from. Reads local files only.
pub async fn config(s: &Sources) -> Result<(Config, Origin), KubeError> {
    let (mut config, origin) = if let Some(path) = &s.kubeconfig {
        (from_file(path).await?, Origin::Kubeconfig(path.clone()))
    } else if s.service_account.join("token").exists() {
        let (server, origin) = match &s.master {
            Some(m) => (m.clone(), Origin::Master),
            None => match s
                .discover
                .iter()
                .find_map(|p| server_of(p).map(|srv| (srv, p)))
            {
                Some((srv, p)) => (srv, Origin::Discovered(p.clone())),
                None => (in_cluster_server()?, Origin::InCluster),
            },
        };
        (service_account(&server, &s.service_account).await?, origin)
    } else {
        (
            Config::infer().await.map_err(KubeError::Infer)?,
            Origin::Default,
        )
    };
    if let Some(m) = &s.master {
        config.cluster_url = m.parse().map_err(|e| KubeError::Master {
            url: m.clone(),
            detail: format!("{e}"),
        })?;
    }
    Ok((config, origin))
}

async fn from_file(path: &Path) -> Result<Config, KubeError> {
    let kc_error = |source| KubeError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kc = Kubeconfig::read_from(path).map_err(kc_error)?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(kc_error)
}

/// The server of a kubeconfig's current context (else its only cluster); None when the file
/// is absent or names none.
pub fn server_of(path: &Path) -> Option<String> {
    let kc = Kubeconfig::read_from(path).ok()?;
    let cluster_name = kc
        .current_context
        .as_deref()
        .and_then(|cur| kc.contexts.iter().find(|c| c.name == cur))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = match cluster_name {
        Some(name) => kc.clusters.iter().find(|c| c.name == name),
        None if kc.clusters.len() == 1 => kc.clusters.first(),
        None => None,
    }?;
    cluster.cluster.as_ref()?.server.clone()
}

fn in_cluster_server() -> Result<String, KubeError> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    match (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    ) {
        (Some(host), Some(port)) => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            Ok(format!("https://{host}:{port}"))
        }
        _ => Err(KubeError::NoServer),
    }
}

/// The pod's service account (its CA, its token, re-read as kubelet rotates it) for `server`.
async fn service_account(server: &str, dir: &Path) -> Result<Config, KubeError> {
    let path = |f: &str| Some(dir.join(f).to_string_lossy().into_owned());
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "ferry".into(),
            other: Default::default(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority: path("ca.crt"),
                ..Cluster::default()
            }),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "ferry".into(),
            other: Default::default(),
            auth_info: Some(AuthInfo {
                token_file: path("token"),
                ..AuthInfo::default()
            }),
        }],
        contexts: vec![NamedContext {
            name: "ferry".into(),
            other: Default::default(),
            context: Some(Context {
                cluster: "ferry".into(),
                user: Some("ferry".into()),
                namespace: std::fs::read_to_string(dir.join("namespace")).ok(),
                ..Context::default()
            }),
        }],
        current_context: Some("ferry".into()),
        ..Kubeconfig::default()
    };
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| KubeError::Kubeconfig {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (any valid PEM certificate will do: it is only parsed).
    const CA: &str = include_str!("testdata/ca.pem");

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("ferry-apiserver-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn kubeconfig(server: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://wrong.invalid:1\n- name: k\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n"
        )
    }

    fn pod(d: &Dir) -> PathBuf {
        let sa = d.0.join("sa");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), "t0ken").unwrap();
        std::fs::write(sa.join("ca.crt"), CA).unwrap();
        std::fs::write(sa.join("namespace"), "kube-system").unwrap();
        sa
    }

    #[test]
    fn the_current_contexts_server_is_read() {
        let d = Dir::new("server");
        let p = d.write("kc", &kubeconfig("https://10.0.0.1:6443"));
        assert_eq!(server_of(&p).as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(server_of(&d.0.join("absent")), None);
        let garbage = d.write("garbage", "{not: [yaml");
        assert_eq!(server_of(&garbage), None);
    }

    #[tokio::test]
    async fn in_a_pod_the_first_discovered_server_is_used_with_the_service_account() {
        let d = Dir::new("discover");
        let sa = pod(&d);
        let kubelet = d.write("kubelet.conf", &kubeconfig("https://192.0.2.7:6443"));
        let s = Sources {
            kubeconfig: None,
            master: None,
            service_account: sa.clone(),
            discover: vec![d.0.join("kube-proxy-absent.conf"), kubelet.clone()],
        };
        let (c, origin) = config(&s).await.unwrap();
        assert_eq!(origin, Origin::Discovered(kubelet));
        assert_eq!(c.cluster_url.to_string(), "https://192.0.2.7:6443/");
        assert_eq!(c.default_namespace, "kube-system");
        assert_eq!(c.root_cert.as_ref().map(Vec::len), Some(1), "the pod's CA");

        // --master wins over discovery, as over a kubeconfig in kube-proxy.
        let s = Sources {
            master: Some("https://203.0.113.5:443".into()),
            ..s
        };
        let (c, origin) = config(&s).await.unwrap();
        assert_eq!(origin, Origin::Master);
        assert_eq!(c.cluster_url.to_string(), "https://203.0.113.5:443/");
    }

    #[tokio::test]
    async fn a_kubeconfig_is_used_whole_and_master_overrides_its_server() {
        let d = Dir::new("kubeconfig");
        let kc = d.write(
            "kc",
            &kubeconfig("https://10.0.0.1:6443").replace(
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                "token: abc",
            ),
        );
        let s = Sources {
            kubeconfig: Some(kc.clone()),
            master: None,
            service_account: d.0.join("no-sa"),
            discover: vec![],
        };
        let (c, origin) = config(&s).await.unwrap();
        assert_eq!(origin, Origin::Kubeconfig(kc.clone()));
        assert_eq!(c.cluster_url.to_string(), "https://10.0.0.1:6443/");
        let s = Sources {
            master: Some("https://10.0.0.2:6443".into()),
            ..s
        };
        let (c, _) = config(&s).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://10.0.0.2:6443/");
        let s = Sources {
            master: Some("not a url".into()),
            ..s
        };
        let e = config(&s).await.unwrap_err().to_string();
        assert!(e.contains("--master") && e.contains("not a url"), "{e}");
    }
}
