//! Who is calling: the caseworker's JWT access token, verified against the identity provider's
//! keys — static ones from config and/or the provider's JWKS endpoint ([`crate::jwks`]).
//!
//! Every check fails closed: the algorithm must be on the configured allow-list (never a
//! symmetric one) and equal the key's own; `exp`, `iss`, `aud` and `sub` are required and `nbf`
//! is checked, with a small leeway, and every time claim must be a number the clock can hold
//! (a fraction is fine); the token must be an access token (`typ` `at+jwt` and/or a
//! configured claim), so an ID token is refused. Header fields that point elsewhere (`jku`,
//! `x5u`, `jwk`, `x5c`) are never read. Claims become a [`Caller`] through the configured claim
//! names.
//!
//! A system (fagsystem) calling on a caseworker's behalf is known by its TLS client certificate
//! alone: the subject common name of the chain the connection was verified with
//! ([`Credentials::system_name`]), checked against the configured [`Systems`]. No header names a
//! system; an `x-system` or the like is ignored.

pub use crate::config::PANEL_SYSTEM;
use crate::config::{AuthConfig, ClaimsConfig, ClientAuth, ConfigError, KeyAlgorithm, ROLES};
use crate::config::{SystemConfig, TlsConfig};
use crate::jwks::{JwksKeys, JwksSetupError, MAX_KID_BYTES, PublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use samblik_proto::v1::Purpose;
use serde_json::{Map, Value};
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
    /// Samblik role names (see [`ROLES`]), mapped from the token's.
    pub roles: Vec<String>,
    /// For role citizen only: the citizen's own CPR number, from the token. A citizen sees
    /// their own access log and nothing else.
    pub citizen: Option<samblik_proto::Cpr>,
}

/// A system (fagsystem) calling on a caseworker's behalf, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingSystem {
    /// Its client certificate's subject common name.
    pub name: String,
    /// The sources its lookups may ask; `None`: every source.
    pub sources: Option<Vec<String>>,
    /// The purposes it may look up for; `None`: every purpose.
    pub purposes: Option<Vec<Purpose>>,
}

impl CallingSystem {
    fn unrestricted(name: &str) -> Self {
        CallingSystem {
            name: name.to_owned(),
            sources: None,
            purposes: None,
        }
    }

    pub fn may_ask(&self, source_id: &str) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|id| id == source_id))
    }

    pub fn may_look_up_for(&self, purpose: Purpose) -> bool {
        self.purposes.as_ref().is_none_or(|p| p.contains(&purpose))
    }
}

/// The calling systems the listener's config names, and whether others are let in.
#[derive(Debug, Clone, Default)]
pub struct Systems {
    listed: HashMap<String, Arc<CallingSystem>>,
    require_listed: bool,
}

impl Systems {
    /// The systems of the listener's TLS config (none without TLS or client certificates).
    pub fn from_config(tls: Option<&TlsConfig>) -> Result<Self, ConfigError> {
        let Some(tls) = tls.filter(|t| t.client_certs != ClientAuth::Off) else {
            return Ok(Systems::default());
        };
        let system = |c: &SystemConfig| -> Result<CallingSystem, ConfigError> {
            let purposes = c
                .purposes
                .as_ref()
                .map(|codes| {
                    codes
                        .iter()
                        .map(|code| {
                            Purpose::from_code(code).ok_or_else(|| {
                                ConfigError::Invalid(format!(
                                    "server.tls.systems {:?}: unknown purpose {code:?}",
                                    c.name
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            Ok(CallingSystem {
                name: c.name.clone(),
                sources: c.sources.clone(),
                purposes,
            })
        };
        Ok(Systems {
            listed: tls
                .systems
                .iter()
                .map(|c| Ok((c.name.clone(), Arc::new(system(c)?))))
                .collect::<Result<_, ConfigError>>()?,
            require_listed: tls.require_listed_systems,
        })
    }

    /// The system named `name` with its restrictions; one not listed is let in without
    /// restrictions, unless only listed systems are.
    pub fn admit(&self, name: &str) -> Result<Arc<CallingSystem>, SystemRefused> {
        match self.listed.get(name) {
            Some(system) => Ok(Arc::clone(system)),
            None if self.require_listed => Err(SystemRefused),
            None => Ok(Arc::new(CallingSystem::unrestricted(name))),
        }
    }
}

/// A client certificate's system is not in the configured list, and only listed ones are let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the calling system is not configured in server.tls.systems")]
pub struct SystemRefused;

/// Why a request is not authenticated. Only for the log: callers get one generic message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the authorization header")]
    Missing,
    #[error("authorization header is not a bearer token")]
    NotBearer,
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not three base64url segments")]
    NotCompact,
    #[error("token header is malformed: {0}")]
    MalformedHeader(String),
    #[error("token algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(Algorithm),
    #[error("token header has `crit` extensions, none of which are understood")]
    CriticalHeader,
    #[error("token is not an access token (typ or token use)")]
    NotAccessToken,
    #[error("token names no key id")]
    NoKeyId,
    #[error("token names an unknown key id")]
    UnknownKey,
    #[error("token algorithm does not match its key's")]
    AlgorithmMismatch,
    #[error("token is not valid: {0}")]
    Invalid(String),
    #[error("token lacks the claim {0}")]
    MissingClaim(String),
    #[error("the client certificate names no system (subject common name)")]
    UnnamedCertificate,
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
    #[error(transparent)]
    Jwks(#[from] JwksSetupError),
}

/// A verified token's caller, valid until the token's `exp`.
#[derive(Debug, Clone)]
struct Verified {
    caller: Arc<Caller>,
    expires_at: SystemTime,
    /// The key that verified it: a cached token is accepted only while that key still is.
    kid: String,
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
/// (at most five minutes), and used only while the key that verified it is still trusted (a
/// key removed from the JWKS ends its tokens at once). Only successes are cached.
pub struct Authenticator {
    keys: HashMap<String, PublicKey>,
    jwks: Option<JwksKeys>,
    /// One validation per allowed algorithm, each accepting only that algorithm.
    validations: HashMap<Algorithm, Validation>,
    claims: ClaimsConfig,
    /// How far `exp` and `nbf` may be off the clock.
    leeway: Duration,
    verified: Option<moka::sync::Cache<String, Verified>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Authenticator")
            .field("kids", &kids)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl Authenticator {
    /// Reads every configured public key and sets up the JWKS client. Fails on the first
    /// unreadable or invalid key.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        crate::jwt_crypto::install();
        let mut keys = HashMap::new();
        for k in &config.keys {
            let pem =
                std::fs::read(&k.public_key_file).map_err(|source| AuthSetupError::ReadKey {
                    kid: k.kid.clone(),
                    path: k.public_key_file.clone(),
                    source,
                })?;
            let key = decoding_key(k.algorithm, &pem).map_err(|e| AuthSetupError::BadKey {
                kid: k.kid.clone(),
                path: k.public_key_file.clone(),
                algorithm: k.algorithm,
                message: e.to_string(),
            })?;
            keys.insert(
                k.kid.clone(),
                PublicKey {
                    algorithm: k.algorithm.to_jwt(),
                    key,
                },
            );
        }
        let jwks = config
            .jwks
            .as_ref()
            .map(|j| JwksKeys::new(j, &config.algorithms))
            .transpose()?;
        let validations = config
            .algorithms
            .iter()
            .map(|a| {
                let mut validation = Validation::new(a.to_jwt());
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(&[&config.audience]);
                // `exp`, `nbf` and `iat` are checked by `TimeClaims`: any JSON number is a valid
                // NumericDate, and one the clock cannot hold must be refused, not overflow.
                validation.set_required_spec_claims(&["iss", "aud", "sub"]);
                validation.validate_exp = false;
                validation.validate_nbf = false;
                (a.to_jwt(), validation)
            })
            .collect();
        let verified = (config.verified_token_cache > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.verified_token_cache)
                .expire_after(UntilExpiry)
                .build()
        });
        Ok(Authenticator {
            keys,
            jwks,
            validations,
            claims: config.claims.clone(),
            leeway: Duration::from_secs(config.leeway_secs),
            verified,
        })
    }

    /// Authenticates the caller of a request from its `authorization: Bearer …` header.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, AuthError> {
        self.verify(bearer_token(metadata)?)
    }

    /// Before [`Self::authenticate`]: when keys come from a JWKS endpoint and the request's
    /// token names a key id that is not known (or the keys are old), fetch the key set — within
    /// the rate limit. Does nothing for static keys or a request without a usable token;
    /// `authenticate` then refuses it.
    pub async fn refresh_keys_for(&self, metadata: &MetadataMap) {
        let Some(jwks) = &self.jwks else {
            return;
        };
        let Ok(token) = bearer_token(metadata) else {
            return;
        };
        if token.len() > MAX_TOKEN_BYTES || segments(token) != 3 {
            return;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        match header.kid {
            Some(kid) if !self.keys.contains_key(&kid) => jwks.prepare(&kid).await,
            _ => {}
        }
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
            // The cache's own expiry is coarse; the token's is not. And a key that was
            // withdrawn takes its tokens with it.
            if hit.expires_at > SystemTime::now() && self.key(&hit.kid).is_some() {
                return Ok(hit.caller);
            }
            cache.invalidate(token);
        }
        let verified = self.verify_uncached(token)?;
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified.caller)
    }

    fn key(&self, kid: &str) -> Option<PublicKey> {
        if let Some(key) = self.keys.get(kid) {
            return Some(key.clone());
        }
        self.jwks.as_ref()?.get(kid)
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        if segments(token) != 3 {
            return Err(AuthError::NotCompact);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::MalformedHeader(e.to_string()))?;
        // The allow-list first: whatever else the header says is irrelevant for an algorithm
        // that is not accepted.
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or(AuthError::AlgorithmNotAllowed(header.alg))?;
        if header.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        if !self.claims.typ.is_empty() && !typ_matches(header.typ.as_deref(), &self.claims.typ) {
            return Err(AuthError::NotAccessToken);
        }
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        if kid.len() > MAX_KID_BYTES {
            return Err(AuthError::UnknownKey);
        }
        let key = self.key(&kid).ok_or(AuthError::UnknownKey)?;
        // Each key verifies exactly one algorithm: an RSA key never checks an HMAC, an ES256 key
        // never an ES384.
        if key.algorithm != header.alg {
            return Err(AuthError::AlgorithmMismatch);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let times = TimeClaims::of(&data.claims)?;
        times.check(SystemTime::now(), self.leeway)?;
        let caller = caller_from_claims(&data.claims, &self.claims)?;
        Ok(Verified {
            caller: Arc::new(caller),
            expires_at: times.exp,
            kid,
        })
    }
}

fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    Ok(value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::NotBearer)?
        .trim())
}

fn segments(token: &str) -> usize {
    token.split('.').count()
}

/// `typ` per RFC 9068 §2.1: `at+jwt`, optionally as `application/at+jwt`, in any case.
fn typ_matches(typ: Option<&str>, required: &str) -> bool {
    let Some(typ) = typ else {
        return false;
    };
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    typ == required.to_ascii_lowercase()
}

/// The value at a dotted claim path, e.g. `realm_access.roles`. A claim whose name itself holds
/// a dot is found too.
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let (first, rest) = path.split_once('.')?;
    claim(claims.get(first)?.as_object()?, rest)
}

fn claim_str<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a str> {
    claim(claims, path)?
        .as_str()
        .filter(|s| !s.trim().is_empty())
}

/// The longest identity claim (`sub`, name, department, municipality) accepted, in bytes: far
/// above any real identifier or name, far below what would bloat every audit record it is in.
pub const MAX_IDENTITY_CLAIM_BYTES: usize = 256;

/// An identity claim as the audit record will hold it, or why the token is refused. The issuer
/// signed it, but the text is still the outside world's: a control character (a newline, an
/// escape sequence) could forge a line in a log or repaint an operator's terminal, and a
/// text-direction override could make one caller's name read as another's on an auditor's page.
/// Refused rather than cleaned, so that the record names the caller exactly as the issuer did.
/// The message never repeats the value.
fn identity_claim<'a>(
    claims: &'a Map<String, Value>,
    path: &str,
) -> Result<Option<&'a str>, AuthError> {
    let Some(text) = claim_str(claims, path) else {
        return Ok(None);
    };
    if text.len() > MAX_IDENTITY_CLAIM_BYTES {
        return Err(AuthError::Invalid(format!(
            "the {path} claim is longer than {MAX_IDENTITY_CLAIM_BYTES} bytes"
        )));
    }
    if text.chars().any(is_hazardous_char) {
        return Err(AuthError::Invalid(format!(
            "the {path} claim holds a control or text-direction character"
        )));
    }
    Ok(Some(text))
}

/// Control characters (C0, DEL, C1) and the Unicode bidirectional embeddings, overrides and
/// isolates, and the line and paragraph separators.
fn is_hazardous_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061C}')
}

/// The strings of a claim that is a string array or a space-separated string (like `scope`).
fn claim_words<'a>(claims: &'a Map<String, Value>, path: &str) -> Vec<&'a str> {
    match claim(claims, path) {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A token's time claims (RFC 7519 NumericDates: any JSON number of seconds since the epoch,
/// a fraction included), each one the clock can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeClaims {
    exp: SystemTime,
    nbf: Option<SystemTime>,
    iat: Option<SystemTime>,
}

impl TimeClaims {
    fn of(claims: &Map<String, Value>) -> Result<Self, AuthError> {
        Ok(TimeClaims {
            exp: numeric_date(claims, "exp")?
                .ok_or_else(|| AuthError::MissingClaim("exp".into()))?,
            nbf: numeric_date(claims, "nbf")?,
            iat: numeric_date(claims, "iat")?,
        })
    }

    /// Expired, or not yet valid, at `now` give or take `leeway`.
    fn check(&self, now: SystemTime, leeway: Duration) -> Result<(), AuthError> {
        if self.exp.checked_add(leeway).is_some_and(|exp| exp < now) {
            return Err(AuthError::Invalid("the token has expired".into()));
        }
        if let Some(nbf) = self.nbf
            && now.checked_add(leeway).is_some_and(|now| now < nbf)
        {
            return Err(AuthError::Invalid("the token is not valid yet".into()));
        }
        Ok(())
    }
}

/// The time claim `name`: absent, or a JSON number of seconds since the epoch that the clock
/// can hold. A string, a negative number or one past the clock's range is refused.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<SystemTime>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = || AuthError::Invalid(format!("the {name} claim is not a time"));
    let Value::Number(number) = value else {
        return Err(invalid());
    };
    let since_epoch = match number.as_u64() {
        Some(secs) => Duration::from_secs(secs),
        None => number
            .as_f64()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(invalid)?,
    };
    UNIX_EPOCH
        .checked_add(since_epoch)
        .map(Some)
        .ok_or_else(invalid)
}

fn caller_from_claims(
    claims: &Map<String, Value>,
    config: &ClaimsConfig,
) -> Result<Caller, AuthError> {
    let sub =
        identity_claim(claims, "sub")?.ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
    if let Some(required) = &config.token_use
        && !claim_words(claims, &required.claim).contains(&required.value.as_str())
    {
        return Err(AuthError::NotAccessToken);
    }
    let mut roles: Vec<String> = Vec::new();
    for role in claim_words(claims, &config.roles) {
        let mapped = match config.role_names.get(role) {
            Some(to) => to.as_str(),
            None if ROLES.contains(&role) => role,
            // A role Samblik does not know grants nothing.
            None => continue,
        };
        if !roles.iter().any(|r| r == mapped) {
            roles.push(mapped.to_owned());
        }
    }
    // A citizen signs in with their own CPR and belongs to no department; everyone else must
    // carry one. A citizen token without a valid CPR claim grants the citizen role nothing.
    let only_citizen = roles.iter().all(|r| r == "citizen") && !roles.is_empty();
    let citizen = if roles.iter().any(|r| r == "citizen") {
        claim_str(claims, &config.cpr).and_then(|c| samblik_proto::Cpr::parse(c).ok())
    } else {
        None
    };
    if citizen.is_none() {
        roles.retain(|r| r != "citizen");
    }
    let department = match identity_claim(claims, &config.department)? {
        Some(d) => d,
        None if only_citizen && citizen.is_some() => "",
        None => return Err(AuthError::MissingClaim(config.department.clone())),
    };
    let caller = Caller {
        id: sub.to_owned(),
        name: identity_claim(claims, &config.name)?
            .unwrap_or(sub)
            .to_owned(),
        department: department.to_owned(),
        municipality: identity_claim(claims, &config.municipality)?
            .unwrap_or_default()
            .to_owned(),
        roles,
        citizen,
    };
    Ok(caller)
}

fn decoding_key(
    algorithm: KeyAlgorithm,
    pem: &[u8],
) -> Result<DecodingKey, jsonwebtoken::errors::Error> {
    match algorithm {
        KeyAlgorithm::ES256 | KeyAlgorithm::ES384 => DecodingKey::from_ec_pem(pem),
        KeyAlgorithm::RS256 | KeyAlgorithm::PS256 => DecodingKey::from_rsa_pem(pem),
        KeyAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;

    #[test]
    fn listed_systems_keep_their_limits_and_others_are_let_in_only_if_allowed() {
        let mut tls = TlsConfig {
            client_certs: ClientAuth::Optional,
            client_ca_file: Some("ca.pem".into()),
            ..TlsConfig::new("c.pem".into(), "k.pem".into())
        };
        tls.systems = vec![SystemConfig {
            name: "DUBU".into(),
            sources: Some(vec!["jobcenter".into()]),
            purposes: Some(vec!["follow-up".into()]),
        }];
        let systems = Systems::from_config(Some(&tls)).unwrap();
        let dubu = systems.admit("DUBU").unwrap();
        assert!(dubu.may_ask("jobcenter") && !dubu.may_ask("child-welfare"));
        assert!(dubu.may_look_up_for(Purpose::FollowUp));
        assert!(!dubu.may_look_up_for(Purpose::PrepareMeeting));
        let other = systems.admit("KMD Momentum").unwrap();
        assert!(other.may_ask("child-welfare") && other.may_look_up_for(Purpose::Coordinate));
        // Names are exact: no case folding, no trimming.
        assert_eq!(systems.admit("dubu").unwrap().purposes, None);

        tls.require_listed_systems = true;
        let systems = Systems::from_config(Some(&tls)).unwrap();
        assert!(systems.admit("DUBU").is_ok());
        assert_eq!(systems.admit("KMD Momentum"), Err(SystemRefused));

        tls.systems[0].purposes = Some(vec!["curiosity".into()]);
        assert!(Systems::from_config(Some(&tls)).is_err());
    }

    /// Found by the token fuzz target: a department leader's token granted
    /// `department_leader`, a name the policy, the panel and the registry API do not know, so
    /// the role reached no rule.
    #[test]
    fn every_role_a_token_grants_is_one_the_policy_knows() {
        for role in ROLES {
            assert!(samblik_policy::Role::parse(role).is_some(), "{role}");
        }
        let claims = serde_json::json!({
            "sub": "u1", "exp": 10, "department": "jobcenter",
            "roles": ["department-leader", "department_leader"],
        });
        let caller = caller_from_claims(claims.as_object().unwrap(), &ClaimsConfig::default());
        assert_eq!(caller.unwrap().roles, ["department-leader"]);
    }

    #[test]
    fn identity_claims_with_control_or_direction_characters_or_too_long_are_refused() {
        let config = ClaimsConfig::default();
        let with = |field: &str, value: &str| {
            let mut claims = serde_json::json!({
                "sub": "cw-1", "exp": 10, "name": "Ane", "department": "jobcenter",
                "municipality": "999", "roles": ["caseworker"],
            });
            claims[field] = Value::String(value.to_owned());
            caller_from_claims(claims.as_object().unwrap(), &config)
        };
        let hostile = [
            "cw-1\nforged: line".to_owned(),
            "cw-1\r".to_owned(),
            "\u{1b}[31mred\u{1b}[0m".to_owned(),
            "tab\there".to_owned(),
            "nul\u{0}".to_owned(),
            "c1\u{9b}31m".to_owned(),
            "evil\u{202E}gnp.exe".to_owned(),
            "isolate\u{2067}x".to_owned(),
            "sep\u{2028}x".to_owned(),
            "x".repeat(MAX_IDENTITY_CLAIM_BYTES + 1),
            "æ".repeat(MAX_IDENTITY_CLAIM_BYTES / 2 + 1),
        ];
        for field in ["sub", "name", "department", "municipality"] {
            for value in &hostile {
                let refused = with(field, value).unwrap_err();
                assert!(
                    matches!(refused, AuthError::Invalid(_)),
                    "{field}: {refused}"
                );
                let message = refused.to_string();
                assert!(message.contains(field), "{message}");
                assert!(
                    !message.contains(value.as_str()),
                    "the value is not repeated"
                );
            }
        }
        // Quotes, markup, commas and letters beyond ASCII are text, kept exactly.
        let odd = r#"Ane "Lis" O'Hara <b>&amp;</b>, Æblø; =1+1"#;
        let caller = with("name", odd).unwrap();
        assert_eq!(caller.name, odd);
        let longest = "x".repeat(MAX_IDENTITY_CLAIM_BYTES);
        assert_eq!(with("sub", &longest).unwrap().id, longest);
    }

    #[test]
    fn claims_map_through_config_and_unknown_roles_grant_nothing() {
        let mut config = ClaimsConfig {
            department: "org.dept".into(),
            roles: "realm_access.roles".into(),
            ..ClaimsConfig::default()
        };
        config
            .role_names
            .insert("Leder".into(), "department-leader".into());
        let claims = serde_json::json!({
            "sub": "u1", "exp": 10, "org": {"dept": "jobcenter"},
            "realm_access": {"roles": ["Leder", "auditor", "superuser", "auditor"]},
        });
        let caller = caller_from_claims(claims.as_object().unwrap(), &config).unwrap();
        let times = TimeClaims::of(claims.as_object().unwrap()).unwrap();
        assert_eq!(times.exp, UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(caller.department, "jobcenter");
        assert_eq!(caller.name, "u1");
        assert_eq!(caller.roles, ["department-leader", "auditor"]);

        let scope = serde_json::json!({"sub": "u1", "exp": 10, "org": {"dept": "x"},
            "realm_access": {"roles": "caseworker admin"}});
        let caller = caller_from_claims(scope.as_object().unwrap(), &config).unwrap();
        assert_eq!(caller.roles, ["caseworker", "admin"]);

        let flat = serde_json::json!({"sub": "u1", "exp": 10, "department": "jobcenter"});
        assert_eq!(
            caller_from_claims(flat.as_object().unwrap(), &config).unwrap_err(),
            AuthError::MissingClaim("org.dept".into())
        );
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/test-rsa.pub.pem");
        let auth = Authenticator::from_config(&AuthConfig {
            issuer: "https://idp.example".into(),
            audience: "samblik".into(),
            leeway_secs: 0,
            keys: vec![KeyConfig {
                kid: "k".into(),
                algorithm: KeyAlgorithm::RS256,
                public_key_file: fixture,
            }],
            verified_token_cache: 100,
            algorithms: vec![KeyAlgorithm::RS256],
            jwks: None,
            claims: ClaimsConfig::default(),
        })
        .unwrap();
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(auth.verify(&huge).unwrap_err(), AuthError::TooLarge);
    }
}
