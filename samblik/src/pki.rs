//! The demo's throw-away PKI: a CA and the certificates of the gateway, the sources and a sample
//! fagsystem, written into the demo directory at every start.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use samblik_adapters::tls::{ClientAuth, ReloadingServerConfig, TlsError};
use samblik_gateway::config::{SourceTlsConfig, TlsConfig};
use samblik_gateway::tls::server_tls;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the demo's certificates are, relative to the demo directory.
#[derive(Debug, Clone)]
pub struct DemoPki {
    pub dir: PathBuf,
    /// The throw-away CA every demo certificate chains to.
    pub ca: PathBuf,
    /// The gateway's server certificate (127.0.0.1, localhost).
    pub gateway: CertPair,
    /// The gateway's client certificate for mutual TLS to the sources.
    pub gateway_client: CertPair,
    /// A sample fagsystem's client certificate, for mutual TLS to the gateway.
    pub fagsystem: CertPair,
}

#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate a demo certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The demo's sample fagsystem, as its client certificate names it.
pub const DEMO_FAGSYSTEM: &str = "demo-fagsystem";
/// The name the demo's source certificates carry (their endpoints are 127.0.0.1).
pub const DEMO_SOURCE_HOST: &str = "127.0.0.1";

impl DemoPki {
    /// The certificate and key of source `id`.
    pub fn source(&self, id: &str) -> CertPair {
        pair(&self.dir, &format!("source-{id}"))
    }

    /// Generates a fresh CA and every certificate into `dir/tls/` (each demo run gets new ones:
    /// they are throw-away by design).
    pub fn create(dir: &Path, source_ids: &[&str]) -> Result<Self, PkiError> {
        let dir = dir.join("tls");
        let mut ca_params = CertificateParams::new(Vec::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Samblik demo CA (throw-away)");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let ca_path = dir.join("ca.pem");
        write(&ca_path, ca.pem().as_bytes(), false)?;

        let local = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let gateway = issue(&dir, &ca, "gateway", "samblik-gateway", &local, &[server])?;
        let gateway_client = issue(
            &dir,
            &ca,
            "gateway-client",
            "samblik-gateway",
            &["samblik-gateway".to_owned()],
            std::slice::from_ref(&client),
        )?;
        let fagsystem = issue(
            &dir,
            &ca,
            "fagsystem",
            DEMO_FAGSYSTEM,
            &[DEMO_FAGSYSTEM.to_owned()],
            &[client],
        )?;
        for id in source_ids {
            issue(
                &dir,
                &ca,
                &format!("source-{id}"),
                &format!("samblik-source-{id}"),
                &local,
                &[ExtendedKeyUsagePurpose::ServerAuth],
            )?;
        }
        Ok(DemoPki {
            dir,
            ca: ca_path,
            gateway,
            gateway_client,
            fagsystem,
        })
    }
}

fn pair(dir: &Path, name: &str) -> CertPair {
    CertPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key.pem")),
    }
}

fn issue(
    dir: &Path,
    ca: &CertifiedIssuer<'_, KeyPair>,
    name: &str,
    common_name: &str,
    names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<CertPair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = usages.to_vec();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, ca)?;
    let paths = pair(dir, name);
    write(&paths.cert, cert.pem().as_bytes(), false)?;
    write(&paths.key, key.serialize_pem().as_bytes(), true)?;
    Ok(paths)
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, bytes).map_err(io)
}

/// The demo's listener TLS: the demo server certificate, client certificates optional (a plain
/// TLS client such as grpcurl with the CA works, and so does the sample fagsystem's mTLS).
pub fn demo_server_tls(pki: &DemoPki) -> TlsConfig {
    TlsConfig {
        client_certs: ClientAuth::Optional,
        client_ca_file: Some(pki.ca.clone()),
        ..TlsConfig::new(pki.gateway.cert.clone(), pki.gateway.key.clone())
    }
}

/// The demo gateway's mutual TLS to every source.
pub fn demo_source_tls(pki: &DemoPki) -> SourceTlsConfig {
    SourceTlsConfig {
        ca_file: pki.ca.clone(),
        cert_file: pki.gateway_client.cert.clone(),
        key_file: pki.gateway_client.key.clone(),
        server_name: Some(DEMO_SOURCE_HOST.to_owned()),
        reload_ms: 10_000,
    }
}

/// A source server's TLS in the demo: its own certificate, the gateway's client certificate
/// required.
pub fn demo_source_server_tls(
    pki: &DemoPki,
    id: &str,
) -> Result<Arc<ReloadingServerConfig>, TlsError> {
    let pair = pki.source(id);
    server_tls(&TlsConfig {
        client_certs: ClientAuth::Required,
        client_ca_file: Some(pki.ca.clone()),
        ..TlsConfig::new(pair.cert, pair.key)
    })
}
