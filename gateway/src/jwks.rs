//! The identity provider's signing keys from its JWKS endpoint: fetched over HTTPS, cached (moka)
//! until their TTL, refreshed in the background when old, and on demand when a token names an
//! unknown `kid` — at most once per `min_refresh_secs`, however many such tokens arrive.
//!
//! Fail closed: a key set that could not be refreshed is used until its TTL runs out, and then
//! there are no keys and every token is refused. Nothing a token says (`jku`, `x5u`, `jwk`,
//! `kid`) ever becomes a URL or a path: the one URL fetched is the configured one.

use crate::config::{JwksConfig, KeyAlgorithm};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// No honest key set is bigger than this.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Nor has more keys than this.
const MAX_JWKS_KEYS: usize = 64;
/// Key ids longer than this are refused without a lookup (and never trigger a fetch).
pub const MAX_KID_BYTES: usize = 256;

/// A public key and the one algorithm it verifies.
#[derive(Clone)]
pub struct PublicKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// One successfully fetched key set.
#[derive(Debug)]
struct KeySet {
    keys: HashMap<String, PublicKey>,
    fetched_at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksSetupError {
    #[error("auth.jwks.url {url:?} is not a valid URL")]
    Url { url: String },
    #[error("cannot read auth.jwks.ca_file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth.jwks.ca_file {path} holds no usable CA certificate")]
    BadCa { path: PathBuf },
    #[error("cannot set up TLS for the JWKS client: {0}")]
    Tls(String),
}

/// Why a fetch failed. Only for the log.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("body unreadable or larger than {MAX_JWKS_BYTES} bytes: {0}")]
    Body(String),
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out")]
    Timeout,
}

/// The JWKS key source. Cheap to clone.
#[derive(Clone)]
pub struct JwksKeys {
    inner: Arc<Inner>,
}

struct Inner {
    url: http::Uri,
    algorithms: Vec<KeyAlgorithm>,
    refresh: Duration,
    min_refresh: Duration,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// The current key set; the entry's time-to-live is the keys' TTL, so an outage longer
    /// than that leaves no keys at all.
    current: moka::sync::Cache<(), Arc<KeySet>>,
    /// When the last fetch was started, successful or not (the rate limit).
    last_attempt: Mutex<Option<Instant>>,
    /// One fetch at a time; callers that wait on it then see its result.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwksKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksKeys")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl JwksKeys {
    /// Sets up the client; nothing is fetched until the first token arrives.
    pub fn new(config: &JwksConfig, algorithms: &[KeyAlgorithm]) -> Result<Self, JwksSetupError> {
        let url: http::Uri = config.url.parse().map_err(|_| JwksSetupError::Url {
            url: config.url.clone(),
        })?;
        let client = https_client(config.ca_file.as_ref())?;
        let ttl = Duration::from_secs(config.ttl_secs);
        Ok(JwksKeys {
            inner: Arc::new(Inner {
                url,
                algorithms: algorithms.to_vec(),
                refresh: Duration::from_secs(config.refresh_secs),
                min_refresh: Duration::from_secs(config.min_refresh_secs),
                timeout: Duration::from_millis(config.timeout_ms),
                client,
                current: moka::sync::Cache::builder()
                    .max_capacity(1)
                    .time_to_live(ttl)
                    .build(),
                last_attempt: Mutex::new(None),
                fetching: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The current key for `kid`, if the key set is within its TTL and holds it.
    pub fn get(&self, kid: &str) -> Option<PublicKey> {
        self.inner.current.get(&())?.keys.get(kid).cloned()
    }

    /// Makes sure the key set is fresh enough to judge a token naming `kid`: fetches (and waits)
    /// when there are no keys or `kid` is unknown, refreshes in the background when the keys are
    /// merely old. Every fetch obeys the rate limit.
    pub async fn prepare(&self, kid: &str) {
        if kid.is_empty() || kid.len() > MAX_KID_BYTES {
            return;
        }
        match self.inner.current.get(&()) {
            Some(set) if set.keys.contains_key(kid) => {
                if set.fetched_at.elapsed() >= self.inner.refresh {
                    let this = self.clone();
                    tokio::spawn(async move { this.refresh().await });
                }
            }
            _ => self.refresh().await,
        }
    }

    /// Fetches the key set unless a fetch was started within `min_refresh_secs`.
    pub async fn refresh(&self) {
        let _one_at_a_time = self.inner.fetching.lock().await;
        {
            let mut last = match self.inner.last_attempt.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if last.is_some_and(|t| t.elapsed() < self.inner.min_refresh) {
                return;
            }
            *last = Some(Instant::now());
        }
        match tokio::time::timeout(self.inner.timeout, self.fetch()).await {
            Ok(Ok(keys)) => {
                tracing::info!(keys = keys.len(), "fetched the identity provider's keys");
                self.inner.current.insert(
                    (),
                    Arc::new(KeySet {
                        keys,
                        fetched_at: Instant::now(),
                    }),
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %self.inner.url, error = %e, "cannot fetch the identity provider's keys; keeping the cached ones until their TTL");
            }
            Err(_) => {
                tracing::warn!(url = %self.inner.url, error = %FetchError::Timeout, "cannot fetch the identity provider's keys; keeping the cached ones until their TTL");
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, PublicKey>, FetchError> {
        let request = http::Request::get(self.inner.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new());
        let request = match request {
            Ok(r) => r,
            // The URL was parsed at start-up; a request of it cannot fail to build.
            Err(e) => return Err(FetchError::Body(e.to_string())),
        };
        let response = self.inner.client.request(request).await?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        parse_key_set(&body, &self.inner.algorithms)
    }
}

#[derive(serde::Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

/// The usable signing keys of a JWKS document. A key that is not for signatures, names no
/// `kid`, is symmetric, or whose algorithm is not allowed is skipped, not fatal: identity
/// providers publish encryption keys and other algorithms in the same set.
fn parse_key_set(
    body: &[u8],
    allowed: &[KeyAlgorithm],
) -> Result<HashMap<String, PublicKey>, FetchError> {
    let raw: RawKeySet = serde_json::from_slice(body)?;
    let mut keys = HashMap::new();
    for value in raw.keys.into_iter().take(MAX_JWKS_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if kid.is_empty() || kid.len() > MAX_KID_BYTES {
            continue;
        }
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        let Some(algorithm) = jwk_algorithm(&jwk) else {
            continue;
        };
        if !allowed.iter().any(|a| a.to_jwt() == algorithm) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, PublicKey { algorithm, key });
    }
    Ok(keys)
}

/// The one algorithm a JWK verifies: its `alg`, or else the usual one for its key type.
/// Symmetric keys have none: the gateway never verifies with a shared secret.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::KeyAlgorithm as J;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let Some(alg) = jwk.common.key_algorithm else {
        return Some(by_type);
    };
    let named = match alg {
        J::ES256 => Algorithm::ES256,
        J::ES384 => Algorithm::ES384,
        J::RS256 => Algorithm::RS256,
        J::PS256 => Algorithm::PS256,
        J::EdDSA => Algorithm::EdDSA,
        _ => return None,
    };
    // An `alg` that does not fit the key's type (e.g. RS256 on an EC key) is a broken key.
    let fits = match named {
        Algorithm::PS256 => by_type == Algorithm::RS256,
        other => other == by_type,
    };
    fits.then_some(named)
}

/// An HTTPS-only client (HTTP/1.1, ring, TLS 1.2+) trusting `ca_file`'s CAs, or the system's
/// roots without one: for the identity provider's key set and its token endpoint.
pub fn https_client<B>(
    ca_file: Option<&PathBuf>,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, JwksSetupError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JwksSetupError::Tls(e.to_string()))?;
    let tls = match ca_file {
        Some(path) => builder
            .with_root_certificates(read_roots(path)?)
            .with_no_client_auth(),
        None => builder
            .with_native_roots()
            .map_err(|e| JwksSetupError::Tls(e.to_string()))?
            .with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

fn read_roots(path: &PathBuf) -> Result<rustls::RootCertStore, JwksSetupError> {
    let pem = std::fs::read(path).map_err(|source| JwksSetupError::ReadCa {
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|_| JwksSetupError::BadCa { path: path.clone() })?;
        roots
            .add(cert)
            .map_err(|_| JwksSetupError::BadCa { path: path.clone() })?;
    }
    if roots.is_empty() {
        return Err(JwksSetupError::BadCa { path: path.clone() });
    }
    Ok(roots)
}

impl KeyAlgorithm {
    /// The `jsonwebtoken` algorithm of the same name.
    pub fn to_jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: [KeyAlgorithm; 2] = [KeyAlgorithm::ES256, KeyAlgorithm::RS256];

    #[test]
    fn symmetric_foreign_and_unusable_keys_are_skipped() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "sig", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "wrong-alg", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-384", "kid": "not-allowed",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "weird"}
        ]});
        let keys = parse_key_set(body.to_string().as_bytes(), &ALLOWED).unwrap();
        let kids: Vec<&String> = keys.keys().collect();
        assert_eq!(kids, ["sig"]);
        assert_eq!(keys["sig"].algorithm, Algorithm::ES256);
    }

    #[test]
    fn a_document_that_is_not_a_key_set_is_an_error() {
        assert!(parse_key_set(b"<html>", &ALLOWED).is_err());
        assert!(parse_key_set(b"{\"nokeys\": []}", &ALLOWED).is_err());
    }
}
