//! The authenticator against tokens signed as an identity provider signs them (the demo's
//! issuer): expiry against the token cache, what the cache keeps, and the time claims.

use samblik::tokens::{DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID, DemoIssuer};
use samblik_gateway::auth::{AuthError, Authenticator};
use samblik_gateway::config::{AuthConfig, ClaimsConfig, KeyAlgorithm, KeyConfig};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        algorithms: vec![KeyAlgorithm::ES256, KeyAlgorithm::RS256],
        jwks: None,
        claims: ClaimsConfig::default(),
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

/// A token signed by the trusted issuer with these claims besides `sub`, `iss` and `aud`.
fn token_with(issuer: &DemoIssuer, times: Value) -> String {
    let mut claims = serde_json::json!({
        "sub": "cw-1", "department": "jobcenter", "iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE,
    });
    for (name, value) in times.as_object().unwrap() {
        claims[name] = value.clone();
    }
    issuer.sign(&claims).unwrap()
}

/// Every time claim the clock cannot hold, or that is no JSON number, is refused as an
/// invalid token: never a panic, never accepted.
#[test]
fn time_claims_out_of_range_or_not_numbers_are_refused() {
    let (_dir, issuer, auth) = setup(100);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let later = serde_json::json!(now + 600);
    for times in [
        serde_json::json!({"exp": 1u64 << 63}),
        serde_json::json!({"exp": u64::MAX}),
        serde_json::json!({"exp": 1e300}),
        serde_json::json!({"exp": -1}),
        serde_json::json!({"exp": "9999999999"}),
        serde_json::json!({"exp": null}),
        serde_json::json!({"exp": later, "iat": "1700000000"}),
        serde_json::json!({"exp": later, "iat": 1u64 << 63}),
        serde_json::json!({"exp": later, "nbf": u64::MAX}),
        serde_json::json!({"exp": later, "nbf": [1]}),
    ] {
        let token = token_with(&issuer, times.clone());
        match auth.verify(&token) {
            Err(AuthError::Invalid(_) | AuthError::MissingClaim(_)) => {}
            other => panic!("{times}: {other:?}"),
        }
    }
}

/// A NumericDate may have a fraction (RFC 7519); `nbf` in the future holds a token back, and
/// the `exp` of an accepted token is the cache's limit.
#[test]
fn fractional_time_claims_are_times() {
    let (_dir, issuer, auth) = setup(100);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let token = token_with(
        &issuer,
        serde_json::json!({"exp": now + 600.5, "iat": now - 0.25, "nbf": now - 1.5}),
    );
    assert_eq!(auth.verify(&token).unwrap().id, "cw-1");
    let early = token_with(
        &issuer,
        serde_json::json!({"exp": now + 600.0, "nbf": now + 300.0}),
    );
    assert_eq!(
        auth.verify(&early).unwrap_err(),
        AuthError::Invalid("the token is not valid yet".into())
    );
    let expired = token_with(&issuer, serde_json::json!({"exp": now - 0.5}));
    assert_eq!(
        auth.verify(&expired).unwrap_err(),
        AuthError::Invalid("the token has expired".into())
    );
}
