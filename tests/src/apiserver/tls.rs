//! The double's certificates and the kubeconfig pointing to it.
//!
//! A CA plus a leaf certificate with the IP SAN 127.0.0.1, as a cluster's API server has:
//! rustls (the agent's TLS) rejects a self-signed certificate used directly as a server's.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use serde_json::json;

/// The CA (kept for the kubeconfig) and the server's TLS configuration. Generated once per
/// double, so a restart serves the same certificate.
pub struct Pki {
    pub ca_pem: String,
    pub server: Arc<ServerConfig>,
}

impl Pki {
    pub fn generate() -> Result<Pki> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ferry lab kubernetes CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let names = ["127.0.0.1", "localhost", "kubernetes.default.svc"];
        let mut leaf = CertificateParams::new(names.map(String::from).to_vec())?;
        leaf.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf.signed_by(&leaf_key, &ca)?;

        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        // An explicit provider: the process may link more than one rustls backend.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the server certificate")?;
        Ok(Pki {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        })
    }
}

/// Writes a kubeconfig for `server` (https://127.0.0.1:PORT) with the CA embedded and, if
/// given, a bearer token.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: Option<&str>,
) -> Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let user = match token {
        Some(t) => json!({"token": t}),
        None => json!({}),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "ferry", "user": user}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "ferry"}}],
        "current-context": "lab",
    });
    let text = serde_yaml::to_string(&config)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
