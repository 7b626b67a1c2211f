//! A stand-in identity provider for the token tests: signing keys (ES256 generated per run, RS256
//! from a test-only fixture), and a real HTTPS JWKS endpoint on a loopback port with a
//! throw-away CA, whose key set a test can change, take down, and count fetches of.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use samblik::pki::CertPair;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The RSA test key (never used anywhere but tests).
pub const RSA_PRIVATE_PEM: &str = include_str!("../fixtures/test-rsa.key.pem");
/// Its public half.
pub const RSA_PUBLIC_PEM: &str = include_str!("../fixtures/test-rsa.pub.pem");

/// One signing key of the test identity provider.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    /// The public key as published in the JWKS.
    pub jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl SigningKey {
    /// A fresh ES256 key.
    pub fn es256(kid: &str) -> Self {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(kid, Algorithm::ES256, encoding)
    }

    /// The RS256 fixture key.
    pub fn rs256(kid: &str) -> Self {
        let encoding = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        Self::new(kid, Algorithm::RS256, encoding)
    }

    fn new(kid: &str, algorithm: Algorithm, encoding: EncodingKey) -> Self {
        // The gateway's verifier, before anything else fixes jsonwebtoken's provider.
        samblik_gateway::jwt_crypto::install();
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        SigningKey {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            jwk,
        }
    }

    /// An access token header for this key: its algorithm, its kid, `typ` `at+jwt`.
    pub fn header(&self) -> Header {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".to_owned());
        header
    }

    pub fn sign(&self, header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

/// A throw-away CA and a server certificate for `127.0.0.1` / `localhost` signed by it; the CA
/// also issues client certificates (fagsystemer) on demand: valid ones, expired ones, ones with a
/// chosen serial number or without a name.
#[derive(Debug)]
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub server_cert: Vec<CertificateDer<'static>>,
    pub server_key: Vec<u8>,
    issuer: rcgen::CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Samblik test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        TestPki {
            dir,
            ca_file,
            server_cert: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            issuer: ca,
        }
    }

    /// A client certificate whose subject common name is `name` (none if empty), written as
    /// `<file>.pem` and `<file>.key.pem`; `edit` may change validity, serial number and so on.
    pub fn client_cert(
        &self,
        file: &str,
        name: &str,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (CertPair, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        // Not rcgen's default name.
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !name.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = CertPair {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        (pair, cert.der().clone())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// One request to a test HTTPS endpoint: its path and body.
#[derive(Debug)]
pub struct HttpsRequest {
    pub path: String,
    pub body: Bytes,
}

/// Answers one request: status and body.
pub type HttpsHandler = Arc<dyn Fn(HttpsRequest) -> (hyper::StatusCode, Vec<u8>) + Send + Sync>;

/// Serves `handler` over HTTPS (HTTP/1.1, `pki`'s server certificate) on a loopback port until
/// the returned token is cancelled.
pub async fn serve_https(pki: &TestPki, handler: HttpsHandler) -> (SocketAddr, CancellationToken) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pki.server_cert.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = s.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let (acceptor, handler) = (acceptor.clone(), Arc::clone(&handler));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let handler = Arc::clone(&handler);
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(http_body_util::Collected::to_bytes)
                            .unwrap_or_default();
                        let (status, body) = handler(HttpsRequest { path, body });
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, stop)
}

/// The JWKS endpoint, serving whatever key set the test last published; stopped on drop.
#[derive(Debug)]
pub struct JwksServer {
    pub addr: SocketAddr,
    pub url: String,
    pub pki: TestPki,
    /// Requests that reached the endpoint.
    pub fetches: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Jwk>>>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl JwksServer {
    /// Starts the endpoint on a loopback port, publishing `keys`.
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let pki = TestPki::new();
        let fetches = Arc::new(AtomicUsize::new(0));
        let published = Arc::new(Mutex::new(
            keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>(),
        ));
        let up = Arc::new(AtomicBool::new(true));
        let (f, p, u) = (
            Arc::clone(&fetches),
            Arc::clone(&published),
            Arc::clone(&up),
        );
        let (addr, stop) = serve_https(
            &pki,
            Arc::new(move |_request: HttpsRequest| {
                f.fetch_add(1, Ordering::SeqCst);
                if u.load(Ordering::SeqCst) {
                    let set = JwkSet {
                        keys: p.lock().unwrap().clone(),
                    };
                    (hyper::StatusCode::OK, serde_json::to_vec(&set).unwrap())
                } else {
                    (
                        hyper::StatusCode::SERVICE_UNAVAILABLE,
                        b"down for maintenance".to_vec(),
                    )
                }
            }),
        )
        .await;
        JwksServer {
            url: format!("https://127.0.0.1:{}/jwks.json", addr.port()),
            addr,
            pki,
            fetches,
            keys: published,
            up,
            stop,
        }
    }

    /// Replaces the published key set.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Makes the endpoint answer 503 (false) or the key set (true).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}
