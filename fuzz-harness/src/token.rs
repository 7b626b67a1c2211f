//! The access-token parser and claim checks: `Authenticator::verify`, as every request's
//! authentication calls it, with the fixture's static EdDSA key.
//!
//! The input is tried twice: as the token itself, and as a header and claims (JSON, split at the
//! first NUL byte; the standard header when there is none) that the harness signs with the
//! fixture's key, so that the claim checks behind the signature are fuzzed too.

use crate::fixture::{AUDIENCE, ISSUER, KID, LEEWAY_SECS, fixture};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use samblik_gateway::config::ROLES;
use samblik_policy::Role;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header of an access token signed with the fixture's key.
pub const HEADER: &str = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"fuzz-1"}"#;

pub fn run(data: &[u8]) {
    let fixture = fixture();
    if let Ok(token) = std::str::from_utf8(data) {
        // The bytes themselves as a token: refused (the fuzzer cannot sign), never a panic.
        let _ = fixture.auth.verify(token);
    }
    let (header, claims) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (HEADER.as_bytes(), data),
    };
    let token = sign(header, claims);
    let Ok(caller) = fixture.auth.verify(&token) else {
        return;
    };
    // Accepted: the claims are JSON and every check held.
    let claims: Map<String, Value> = serde_json::from_slice(claims).expect("accepted claims");
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    assert!(match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    });
    let header: Map<String, Value> = serde_json::from_slice(header).expect("accepted header");
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("EdDSA"));
    assert_eq!(header.get("kid").and_then(Value::as_str), Some(KID));
    assert!(header.get("crit").is_none());
    // Time claims: exp is there and not past, nbf not ahead (give or take the leeway and the
    // moments since the check).
    let now = SystemTime::now();
    let slack = Duration::from_secs(LEEWAY_SECS + 5);
    let exp = time(&claims, "exp").expect("an accepted token has exp");
    assert!(
        exp.checked_add(slack).is_none_or(|exp| exp >= now),
        "an expired token was accepted"
    );
    if let Some(nbf) = time(&claims, "nbf") {
        assert!(
            now.checked_add(slack).is_some_and(|now| nbf <= now),
            "a token not yet valid was accepted"
        );
    }
    // The caller: named, with Samblik's roles only, each once and each one the policy knows.
    let sub = claims.get("sub").and_then(Value::as_str).expect("sub");
    assert_eq!(caller.id, sub);
    assert!(!caller.id.trim().is_empty());
    for (i, role) in caller.roles.iter().enumerate() {
        assert!(
            ROLES.contains(&role.as_str()),
            "role {role:?} is not Samblik's"
        );
        assert!(!caller.roles[..i].contains(role), "role {role:?} twice");
        assert!(
            Role::parse(role).is_some(),
            "role {role:?} is granted but the policy does not know it"
        );
    }
    let citizen = caller.roles.iter().any(|r| r == "citizen");
    assert_eq!(citizen, caller.citizen.is_some());
    let only_citizen = citizen && caller.roles.len() == 1;
    assert!(only_citizen || !caller.department.trim().is_empty());
}

/// The claim `name` as a time, if it is a number.
fn time(claims: &Map<String, Value>, name: &str) -> Option<SystemTime> {
    let secs = claims.get(name)?.as_f64()?;
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

/// A compact JWS of `header` and `claims`, signed with the fixture's key.
pub fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = fixture().signer.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}
