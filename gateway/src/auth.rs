//! Who is calling: the caseworker's JWT access token, verified against the identity provider's
//! keys from config (issuer, audience, expiry, not-before, signature, algorithm pinned per key).

use crate::config::{AuthConfig, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
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

/// Verifies bearer tokens. Cheap to share behind an `Arc`.
pub struct Authenticator {
    keys: HashMap<String, VerifyingKey>,
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
        Ok(Authenticator { keys })
    }

    /// Authenticates the caller of a request from its `authorization: Bearer …` header.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
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
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
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
        Ok(Caller {
            name: claims.name.unwrap_or_else(|| claims.sub.clone()),
            id: claims.sub,
            department,
            municipality: claims.municipality.unwrap_or_default(),
            roles: claims.roles,
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
