//! Who is calling: the caseworker's JWT access token, verified against the identity provider's
//! keys from config (issuer, audience, expiry, not-before, signature, algorithm pinned per key).

use crate::config::{AuthConfig, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::metadata::MetadataMap;

/// Tokens longer than this are refused before any parsing: no honest access token is this big.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub id: String,
    pub name: String,
    /// The caller's department, e.g. `jobcenter`.
    pub department: String,
    /// Municipality code.
    pub municipality: String,
    pub roles: Vec<String>,
}

/// Why a request is not authenticated. Only for the log: callers get one generic message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the authorization header")]
    Missing,
    #[error("authorization header is not a bearer token")]
    NotBearer,
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token header is malformed: {0}")]
    MalformedHeader(String),
    #[error("token names no key id")]
    NoKeyId,
    #[error("token names an unknown key id")]
    UnknownKey,
    #[error("token is not valid: {0}")]
    Invalid(String),
    #[error("token lacks the claim {0}")]
    MissingClaim(&'static str),
}

/// The auth configuration could not be turned into verifying keys.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read public key file {path} (auth.keys kid {kid:?}): {source}")]
    ReadKey {
        kid: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "public key file {path} (auth.keys kid {kid:?}) is not a valid {algorithm:?} public key in PEM: {message}"
    )]
    BadKey {
        kid: String,
        path: PathBuf,
        algorithm: KeyAlgorithm,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    municipality: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

/// A verified token's caller, valid until the token's `exp`.
#[derive(Debug, Clone)]
struct Verified {
    caller: Arc<Caller>,
    expires_at: SystemTime,
}

/// Cache entries live until their token expires, and never longer than this.
const MAX_CACHE_TTL: Duration = Duration::from_secs(300);

struct UntilExpiry;

impl moka::Expiry<String, Verified> for UntilExpiry {
    fn expire_after_create(
        &self,
        _token: &String,
        verified: &Verified,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = verified
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some(left.min(MAX_CACHE_TTL))
    }
}

/// Verifies bearer tokens. Cheap to share behind an `Arc`.
///
/// A fagsystem sends the same access token with every call for the token's lifetime, so the
/// outcome of a successful verification is cached by the exact token string until its `exp`
/// (at most five minutes). Only successes are cached: a token that failed is checked afresh.
pub struct Authenticator {
    keys: HashMap<String, VerifyingKey>,
    verified: Option<moka::sync::Cache<String, Verified>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Authenticator")
            .field("kids", &kids)
            .finish()
    }
}

impl Authenticator {
    /// Reads every configured public key. Fails on the first unreadable or invalid one.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let mut keys = HashMap::new();
        for k in &config.keys {
            let pem =
                std::fs::read(&k.public_key_file).map_err(|source| AuthSetupError::ReadKey {
                    kid: k.kid.clone(),
                    path: k.public_key_file.clone(),
                    source,
                })?;
            let (algorithm, key) =
                decoding_key(k.algorithm, &pem).map_err(|e| AuthSetupError::BadKey {
                    kid: k.kid.clone(),
                    path: k.public_key_file.clone(),
                    algorithm: k.algorithm,
                    message: e.to_string(),
                })?;
            let mut validation = Validation::new(algorithm);
            validation.set_issuer(&[&config.issuer]);
            validation.set_audience(&[&config.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = config.leeway_secs;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            keys.insert(k.kid.clone(), VerifyingKey { key, validation });
        }
        let verified = (config.verified_token_cache > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.verified_token_cache)
                .expire_after(UntilExpiry)
                .build()
        });
        Ok(Authenticator { keys, verified })
    }

    /// Authenticates the caller of a request from its `authorization: Bearer …` header.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, AuthError> {
        let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?
            .trim();
        self.verify(token)
    }

    /// Verifies one token.
    pub fn verify(&self, token: &str) -> Result<Arc<Caller>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let Some(cache) = &self.verified else {
            return self.verify_uncached(token).map(|v| v.caller);
        };
        if let Some(hit) = cache.get(token) {
            // The cache's own expiry is coarse; the token's is not.
            if hit.expires_at > SystemTime::now() {
                return Ok(hit.caller);
            }
            cache.invalidate(token);
        }
        let verified = self.verify_uncached(token)?;
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified.caller)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::MalformedHeader(e.to_string()))?;
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        let key = self.keys.get(&kid).ok_or(AuthError::UnknownKey)?;
        // The key's validation pins its one algorithm; a token whose header claims another is
        // rejected by `decode`, whatever the header says.
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::MissingClaim("sub"));
        }
        let department = claims
            .department
            .filter(|d| !d.is_empty())
            .ok_or(AuthError::MissingClaim("department"))?;
        let caller = Caller {
            name: claims.name.unwrap_or_else(|| claims.sub.clone()),
            id: claims.sub,
            department,
            municipality: claims.municipality.unwrap_or_default(),
            roles: claims.roles,
        };
        Ok(Verified {
            caller: Arc::new(caller),
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }
}

fn decoding_key(
    algorithm: KeyAlgorithm,
    pem: &[u8],
) -> Result<(Algorithm, DecodingKey), jsonwebtoken::errors::Error> {
    Ok(match algorithm {
        KeyAlgorithm::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)?),
        KeyAlgorithm::ES384 => (Algorithm::ES384, DecodingKey::from_ec_pem(pem)?),
        KeyAlgorithm::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)?),
        KeyAlgorithm::PS256 => (Algorithm::PS256, DecodingKey::from_rsa_pem(pem)?),
        KeyAlgorithm::EdDSA => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;
    use crate::tokens::{DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID, DemoIssuer};

    fn setup(cache: u64) -> (tempfile::TempDir, DemoIssuer, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DemoIssuer::load_or_create(dir.path()).unwrap();
        let config = AuthConfig {
            issuer: DEMO_ISSUER.into(),
            audience: DEMO_AUDIENCE.into(),
            leeway_secs: 0,
            keys: vec![KeyConfig {
                kid: DEMO_KID.into(),
                algorithm: KeyAlgorithm::ES256,
                public_key_file: issuer.public_key_path().to_owned(),
            }],
            verified_token_cache: cache,
        };
        let auth = Authenticator::from_config(&config).unwrap();
        (dir, issuer, auth)
    }

    fn token_expiring_in(issuer: &DemoIssuer, secs: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        issuer
            .sign(&serde_json::json!({
                "sub": "cw-1", "department": "jobcenter", "iss": DEMO_ISSUER,
                "aud": DEMO_AUDIENCE, "iat": now, "exp": now + secs,
            }))
            .unwrap()
    }

    #[test]
    fn a_cached_token_is_refused_once_it_expires() {
        for cache in [0, 100] {
            let (_dir, issuer, auth) = setup(cache);
            let token = token_expiring_in(&issuer, 1);
            assert_eq!(auth.verify(&token).unwrap().id, "cw-1");
            assert_eq!(auth.verify(&token).unwrap().id, "cw-1");
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut refused = false;
            while std::time::Instant::now() < deadline && !refused {
                refused = auth.verify(&token).is_err();
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(refused, "cache {cache}: token accepted after its expiry");
        }
    }

    #[test]
    fn only_successes_are_cached() {
        let (_dir, issuer, auth) = setup(100);
        let token = token_expiring_in(&issuer, 600);
        let mut tampered = token.clone();
        tampered.pop();
        assert!(auth.verify(&tampered).is_err());
        assert!(auth.verify(&tampered).is_err());
        assert!(auth.verify(&token).is_ok());
        assert!(auth.verify(&tampered).is_err());
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let (_dir, _issuer, auth) = setup(100);
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(auth.verify(&huge).unwrap_err(), AuthError::TooLarge);
    }
}
