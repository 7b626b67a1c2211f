//! Token verification with the key in memory: the per-request cost of authentication when the
//! verified-token cache misses (a new token) — ES256 and RS256 — and when it hits.
//!
//! `cargo bench -p samblik-tests --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use samblik_gateway::auth::Authenticator;
use samblik_gateway::config::{AuthConfig, ClaimsConfig, KeyAlgorithm, KeyConfig};
use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

// The allocator the `samblik` program runs (`--no-default-features`: the system's).
samblik::global_allocator!();

const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/test-rsa.key.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/test-rsa.pub.pem");

fn setup(cache: u64) -> (tempfile::TempDir, Authenticator, String, String) {
    samblik_gateway::jwt_crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_pub = dir.path().join("ec.pub.pem");
    std::fs::write(&ec_pub, ec.public_key_pem()).unwrap();
    let rsa_pub = dir.path().join("rsa.pub.pem");
    std::fs::write(&rsa_pub, RSA_PUBLIC).unwrap();
    let config = AuthConfig {
        issuer: "https://idp.example".into(),
        audience: "samblik".into(),
        leeway_secs: 30,
        keys: vec![
            KeyConfig {
                kid: "ec".into(),
                algorithm: KeyAlgorithm::ES256,
                public_key_file: ec_pub,
            },
            KeyConfig {
                kid: "rsa".into(),
                algorithm: KeyAlgorithm::RS256,
                public_key_file: rsa_pub,
            },
        ],
        verified_token_cache: cache,
        algorithms: vec![KeyAlgorithm::ES256, KeyAlgorithm::RS256],
        jwks: None,
        claims: ClaimsConfig::default(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": "cw-jobcenter-001", "name": "Test", "department": "jobcenter",
        "municipality": "999", "roles": ["caseworker"], "iss": "https://idp.example",
        "aud": "samblik", "iat": now, "nbf": now, "exp": now + 3600,
    });
    let sign = |alg, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let es = sign(
        Algorithm::ES256,
        "ec",
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    );
    let rs = sign(
        Algorithm::RS256,
        "rsa",
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    );
    (dir, Authenticator::from_config(&config).unwrap(), es, rs)
}

fn verify(c: &mut Criterion) {
    let (_dir, uncached, es, rs) = setup(0);
    c.bench_function("verify ES256 (signature checked)", |b| {
        b.iter(|| uncached.verify(black_box(&es)).unwrap())
    });
    c.bench_function("verify RS256 (signature checked)", |b| {
        b.iter(|| uncached.verify(black_box(&rs)).unwrap())
    });
    // The floor: ring's P-256 signature check alone, without any JWT handling.
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let message = es.rsplit_once('.').unwrap().0.as_bytes().to_vec();
    let sig = pair.sign(&rng, &message).unwrap();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec(),
    );
    c.bench_function("ring P-256 signature check alone", |b| {
        b.iter(|| public.verify(black_box(&message), sig.as_ref()).unwrap())
    });
    let (_dir2, cached, es, _) = setup(10_000);
    cached.verify(&es).unwrap();
    c.bench_function("verify ES256 (verified-token cache hit)", |b| {
        b.iter(|| cached.verify(black_box(&es)).unwrap())
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
