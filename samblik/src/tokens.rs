//! Demo token issuing: the stand-in for the municipality's identity provider when running
//! `samblik demo`. A throw-away ES256 key pair lives in the demo's data directory; `samblik token`
//! signs access tokens for the demo users with it, and the demo gateway trusts its public half.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The demo identity provider's issuer.
pub const DEMO_ISSUER: &str = "https://idp.sonderaa.kommune.example/demo";
/// The audience of tokens for Samblik.
pub const DEMO_AUDIENCE: &str = "samblik";
/// The `typ` of access tokens (RFC 9068), which ID tokens lack.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The demo signing key's id.
pub const DEMO_KID: &str = "samblik-demo-1";

const PRIVATE_KEY_FILE: &str = "keys/demo-signing.key.pem";
const PUBLIC_KEY_FILE: &str = "keys/demo-signing.pub.pem";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate the demo key pair: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the demo signing key is not usable: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
}

/// The demo identity provider's signing key.
pub struct DemoIssuer {
    encoding_key: EncodingKey,
    public_key_path: PathBuf,
}

impl std::fmt::Debug for DemoIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoIssuer")
            .field("public_key_path", &self.public_key_path)
            .finish_non_exhaustive()
    }
}

/// The claims of a demo access token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub sub: String,
    pub name: String,
    pub department: String,
    pub municipality: String,
    pub roles: Vec<String>,
    /// A citizen's own CPR number (role citizen only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpr: Option<samblik_proto::Cpr>,
}

#[derive(Serialize)]
struct SignedClaims<'a> {
    #[serde(flatten)]
    claims: &'a TokenClaims,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl DemoIssuer {
    /// Loads the key pair from `dir/keys/`, generating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, TokenError> {
        let private_path = dir.join(PRIVATE_KEY_FILE);
        let public_path = dir.join(PUBLIC_KEY_FILE);
        if !private_path.is_file() || !public_path.is_file() {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            write_secret(&private_path, pair.serialize_pem().as_bytes())?;
            write_file(&public_path, pair.public_key_pem().as_bytes())?;
        }
        Self::load(dir)
    }

    /// Loads an existing key pair from `dir/keys/`.
    pub fn load(dir: &Path) -> Result<Self, TokenError> {
        samblik_gateway::jwt_crypto::install();
        let private_path = dir.join(PRIVATE_KEY_FILE);
        let pem = fs::read(&private_path).map_err(|source| TokenError::Io {
            path: private_path,
            source,
        })?;
        Ok(DemoIssuer {
            encoding_key: EncodingKey::from_ec_pem(&pem)?,
            public_key_path: dir.join(PUBLIC_KEY_FILE),
        })
    }

    /// The public key file the gateway verifies demo tokens with.
    pub fn public_key_path(&self) -> &Path {
        &self.public_key_path
    }

    /// Signs arbitrary claims with the demo key as an access token (kid and `typ` `at+jwt`
    /// included), for tests that need tokens the gateway must refuse: wrong issuer, expired, and
    /// so on.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        self.sign_with_header(&Self::header(), claims)
    }

    /// The header of the demo's access tokens: ES256, the demo kid, `typ` `at+jwt` (RFC 9068).
    pub fn header() -> Header {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(DEMO_KID.to_owned());
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header
    }

    /// Signs claims under any header, for tests of what the gateway must refuse.
    pub fn sign_with_header<T: Serialize>(
        &self,
        header: &Header,
        claims: &T,
    ) -> Result<String, TokenError> {
        Ok(jsonwebtoken::encode(header, claims, &self.encoding_key)?)
    }

    /// Signs an access token valid for `ttl` from now.
    pub fn mint(&self, claims: &TokenClaims, ttl: Duration) -> Result<String, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signed = SignedClaims {
            claims,
            iss: DEMO_ISSUER,
            aud: DEMO_AUDIENCE,
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
        };
        self.sign(&signed)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    fs::write(path, bytes).map_err(io)
}

/// Writes a private key readable by its owner only.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    let io = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}
