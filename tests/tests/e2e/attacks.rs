//! The attack suite: every known trick with access tokens, each against the real gateway over
//! gRPC. Every refused token is UNAUTHENTICATED with the one generic message, and no source is
//! asked anything. Each test also shows the honest token is accepted, so a gateway that refused
//! everything would fail it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use samblik::tokens::{DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID, DemoIssuer};
use samblik_gateway::config::{AuthConfig, ClaimMatch, JwksConfig, KeyAlgorithm, KeyConfig};
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::Purpose;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_tests::idp::{JwksServer, RSA_PUBLIC_PEM, SigningKey, TestPki};
use samblik_tests::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::Code;
use tonic::transport::Channel;

const RSA_KID: &str = "idp-rsa-1";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid access-token claims for a jobcenter caseworker.
fn claims() -> Value {
    json!({
        "sub": "cw-jobcenter-001", "name": "Test Caseworker", "department": "jobcenter",
        "municipality": "999", "roles": ["caseworker"],
        "iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE,
        "iat": now(), "nbf": now(), "exp": now() + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn demo() -> &'static DemoIssuer {
    &issuer().1
}

/// The demo's auth config plus the RSA fixture key as a static key.
fn static_auth(dir: &tempfile::TempDir) -> AuthConfig {
    let mut auth = gateway_config(&[], 3_000).auth;
    let rsa = dir.path().join("rsa.pub.pem");
    std::fs::write(&rsa, RSA_PUBLIC_PEM).unwrap();
    auth.keys.push(KeyConfig {
        kid: RSA_KID.to_owned(),
        algorithm: KeyAlgorithm::RS256,
        public_key_file: rsa,
    });
    auth
}

struct Gateway {
    _keys: tempfile::TempDir,
    gateway: RunningGateway,
    seen: Arc<Mutex<Vec<CallerContext>>>,
    client: LookupServiceClient<Channel>,
}

impl Gateway {
    async fn start(auth: impl FnOnce(&tempfile::TempDir) -> AuthConfig) -> Self {
        let keys = tempfile::tempdir().unwrap();
        let (gateway, seen) = start_gateway_with_auth(auth(&keys)).await;
        let client = gateway.client().await;
        Gateway {
            _keys: keys,
            gateway,
            seen,
            client,
        }
    }

    async fn call(&self, token: &str) -> Result<(), tonic::Status> {
        let mut client = self.client.clone();
        client
            .lookup(request(
                all_department_citizen(),
                Purpose::PrepareMeeting,
                Some(token),
                None,
            ))
            .await
            .map(|_| ())
    }

    async fn accepts(&self, what: &str, token: &str) {
        if let Err(status) = self.call(token).await {
            panic!("{what}: expected acceptance, got {status:?}");
        }
    }

    /// Asserts `token` is refused as unauthenticated, with the generic message, and that no
    /// source was called.
    async fn refuses(&self, what: &str, token: &str) {
        let before = self.calls();
        let status = self
            .call(token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status
                .message()
                .starts_with("missing or invalid access token (request id "),
            "{what}: the message says more than it should: {:?}",
            status.message()
        );
        assert_eq!(self.calls(), before, "{what}: a source was called");
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with any header and payload JSON and any signature bytes.
fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

#[tokio::test]
async fn alg_none_is_refused() {
    let g = Gateway::start(static_auth).await;
    g.accepts("control", &demo().sign(&claims()).unwrap()).await;
    for alg in ["none", "None", "NONE", ""] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": DEMO_KID});
        g.refuses(
            &format!("alg {alg:?}, no signature"),
            &forge(&header, &claims(), b""),
        )
        .await;
        // The valid ES256 signature of other content does not help either.
        let real = demo().sign(&claims()).unwrap();
        let signature = real.rsplit('.').next().unwrap();
        let token = format!(
            "{}.{}.{signature}",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        g.refuses(&format!("alg {alg:?}, borrowed signature"), &token)
            .await;
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let g = Gateway::start(static_auth).await;
    let rsa = SigningKey::rs256(RSA_KID);
    g.accepts("control: RS256", &rsa.sign(&rsa.header(), &claims()))
        .await;
    // The classic confusion: the verifier's own public key (PEM, or its DER) as an HMAC secret.
    for (what, secret) in [
        ("pem", RSA_PUBLIC_PEM.as_bytes().to_vec()),
        ("pem, trimmed", RSA_PUBLIC_PEM.trim().as_bytes().to_vec()),
    ] {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some(RSA_KID.to_owned());
            header.typ = Some("at+jwt".to_owned());
            let token =
                jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret))
                    .unwrap();
            g.refuses(&format!("{alg:?} with the public key ({what})"), &token)
                .await;
        }
    }
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_are_refused() {
    let g = Gateway::start(|dir| {
        let mut auth = static_auth(dir);
        // The RSA key is configured, but only ES256 is allowed.
        auth.algorithms = vec![KeyAlgorithm::ES256];
        auth.keys.retain(|k| k.kid != RSA_KID);
        auth
    })
    .await;
    g.accepts("control: ES256", &demo().sign(&claims()).unwrap())
        .await;
    let rsa = SigningKey::rs256(RSA_KID);
    g.refuses("RS256 (not allowed)", &rsa.sign(&rsa.header(), &claims()))
        .await;
    let mut ps = rsa.header();
    ps.alg = Algorithm::PS256;
    g.refuses("PS256 (not allowed)", &rsa.sign(&ps, &claims()))
        .await;

    // Allowed algorithm, but not the key's: an ES256 key never verifies an RS256 signature.
    let both = Gateway::start(static_auth).await;
    let mut header = rsa.header();
    header.kid = Some(DEMO_KID.to_owned());
    both.refuses(
        "RS256 token naming the ES256 key",
        &rsa.sign(&header, &claims()),
    )
    .await;
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384 = EncodingKey::from_ec_pem(p384.serialize_pem().as_bytes()).unwrap();
    let mut header = DemoIssuer::header();
    header.alg = Algorithm::ES384;
    both.refuses(
        "ES384 (not allowed)",
        &jsonwebtoken::encode(&header, &claims(), &p384).unwrap(),
    )
    .await;
}

#[tokio::test]
async fn unknown_path_like_and_huge_key_ids_are_refused() {
    let g = Gateway::start(static_auth).await;
    let mut kids: Vec<Option<String>> = [
        "unknown",
        "../../../../etc/passwd",
        "/dev/zero",
        "file:///etc/shadow",
        "https://127.0.0.1:1/jwks.json",
        "samblik-demo-1\0",
        "samblik-demo-1 ",
        "' OR 1=1 --",
    ]
    .iter()
    .map(|k| Some((*k).to_owned()))
    .collect();
    kids.push(Some("k".repeat(5_000)));
    kids.push(Some(String::new()));
    kids.push(None);
    for kid in kids {
        let mut header = DemoIssuer::header();
        header.kid = kid.clone();
        let token = demo().sign_with_header(&header, &claims()).unwrap();
        let shown: String = format!("{kid:?}").chars().take(40).collect();
        g.refuses(&format!("kid {shown}"), &token).await;
    }
}

#[tokio::test]
async fn jku_x5u_and_embedded_jwk_headers_are_ignored() {
    // The attacker runs their own JWKS endpoint with their own key and points the token at it.
    let attacker = SigningKey::es256("attacker-1");
    let attacker_jwks = JwksServer::start(&[&attacker]).await;
    let g = Gateway::start(static_auth).await;
    for kid in ["attacker-1", DEMO_KID] {
        let mut header = attacker.header();
        header.kid = Some(kid.to_owned());
        header.jku = Some(attacker_jwks.url.clone());
        header.x5u = Some(attacker_jwks.url.clone());
        header.jwk = Some(attacker.jwk.clone());
        g.refuses(
            &format!("attacker's key via jku/x5u/jwk, kid {kid}"),
            &attacker.sign(&header, &claims()),
        )
        .await;
    }
    assert_eq!(
        attacker_jwks.fetch_count(),
        0,
        "the gateway fetched a URL named by a token"
    );
    // The same headers on an honestly signed token change nothing: they are simply not read.
    let mut header = DemoIssuer::header();
    header.jku = Some(attacker_jwks.url.clone());
    header.jwk = Some(attacker.jwk.clone());
    g.accepts(
        "honest token with extra headers",
        &demo().sign_with_header(&header, &claims()).unwrap(),
    )
    .await;
    assert_eq!(attacker_jwks.fetch_count(), 0);
}

#[tokio::test]
async fn expiry_and_not_before_are_enforced_with_the_configured_leeway() {
    // The demo config allows 30 s of clock skew.
    let g = Gateway::start(static_auth).await;
    let sign = |c: Value| demo().sign(&c).unwrap();
    g.accepts(
        "expired 5 s ago (within leeway)",
        &sign(with(claims(), "exp", json!(now() - 5))),
    )
    .await;
    g.refuses(
        "expired 60 s ago",
        &sign(with(claims(), "exp", json!(now() - 60))),
    )
    .await;
    g.refuses(
        "expired a day ago",
        &sign(with(claims(), "exp", json!(now() - 86_400))),
    )
    .await;
    g.refuses(
        "nbf 120 s in the future",
        &sign(with(claims(), "nbf", json!(now() + 120))),
    )
    .await;
    g.refuses("no exp", &sign(without(claims(), "exp"))).await;
}

/// Time claims that are no JSON number, or that the clock cannot hold, are refused as any bad
/// token is (UNAUTHENTICATED, nothing asked), and the gateway goes on serving: a validly signed
/// `exp` of 2^63 once panicked the handler. A fraction is a valid NumericDate (RFC 7519).
#[tokio::test]
async fn time_claims_of_the_wrong_type_or_out_of_range_are_refused() {
    let g = Gateway::start(static_auth).await;
    let sign = |c: Value| demo().sign(&c).unwrap();
    let exp = now() + 600;
    for (what, value) in [
        ("exp as a string", json!(exp.to_string())),
        ("exp negative", json!(-1)),
        ("exp as an object", json!({"value": exp})),
        ("exp null", Value::Null),
        ("exp 2^63", json!(1u64 << 63)),
        ("exp 2^64 - 1", json!(u64::MAX)),
        ("exp 1e300", json!(1e300)),
    ] {
        g.refuses(what, &sign(with(claims(), "exp", value))).await;
    }
    g.refuses("nbf as a string", &sign(with(claims(), "nbf", json!("0"))))
        .await;
    g.refuses(
        "nbf 2^64 - 1",
        &sign(with(claims(), "nbf", json!(u64::MAX))),
    )
    .await;
    g.refuses("iat as a string", &sign(with(claims(), "iat", json!("0"))))
        .await;
    g.refuses("iat 2^63", &sign(with(claims(), "iat", json!(1u64 << 63))))
        .await;
    g.accepts(
        "exp with a fraction",
        &sign(with(claims(), "exp", json!(exp as f64 + 0.5))),
    )
    .await;
}

#[tokio::test]
async fn missing_or_wrong_issuer_audience_or_subject_are_refused() {
    let g = Gateway::start(static_auth).await;
    let sign = |c: Value| demo().sign(&c).unwrap();
    g.accepts("control", &sign(claims())).await;
    g.accepts(
        "audience as an array holding ours",
        &sign(with(claims(), "aud", json!(["other", DEMO_AUDIENCE]))),
    )
    .await;
    for (what, token) in [
        ("no iss", sign(without(claims(), "iss"))),
        ("no aud", sign(without(claims(), "aud"))),
        ("no sub", sign(without(claims(), "sub"))),
        ("empty sub", sign(with(claims(), "sub", json!("")))),
        ("sub not a string", sign(with(claims(), "sub", json!(42)))),
        (
            "wrong iss",
            sign(with(claims(), "iss", json!("https://evil.example"))),
        ),
        (
            "iss with a trailing slash",
            sign(with(claims(), "iss", json!(format!("{DEMO_ISSUER}/")))),
        ),
        ("wrong aud", sign(with(claims(), "aud", json!("other")))),
        (
            "aud array without ours",
            sign(with(claims(), "aud", json!(["a", "b"]))),
        ),
        ("no department", sign(without(claims(), "department"))),
    ] {
        g.refuses(what, &token).await;
    }
}

#[tokio::test]
async fn an_id_token_is_not_an_access_token() {
    let g = Gateway::start(static_auth).await;
    let id_claims = with(claims(), "nonce", json!("n-0S6_WzA2Mj"));
    for typ in [None, Some("JWT"), Some("id_token+jwt"), Some("at+jwt-not")] {
        let mut header = DemoIssuer::header();
        header.typ = typ.map(str::to_owned);
        g.refuses(
            &format!("typ {typ:?}"),
            &demo().sign_with_header(&header, &id_claims).unwrap(),
        )
        .await;
    }
    let mut header = DemoIssuer::header();
    header.typ = Some("application/AT+JWT".to_owned());
    g.accepts(
        "typ application/at+jwt",
        &demo().sign_with_header(&header, &claims()).unwrap(),
    )
    .await;

    // An identity provider without `typ`: a token-use claim decides instead.
    let by_claim = Gateway::start(|dir| {
        let mut auth = static_auth(dir);
        auth.claims.typ = String::new();
        auth.claims.token_use = Some(ClaimMatch {
            claim: "token_use".to_owned(),
            value: "access".to_owned(),
        });
        auth
    })
    .await;
    let mut plain = DemoIssuer::header();
    plain.typ = Some("JWT".to_owned());
    let sign = |c: Value| demo().sign_with_header(&plain, &c).unwrap();
    by_claim
        .accepts(
            "token_use access",
            &sign(with(claims(), "token_use", json!("access"))),
        )
        .await;
    by_claim
        .refuses(
            "token_use id",
            &sign(with(claims(), "token_use", json!("id"))),
        )
        .await;
    by_claim.refuses("no token_use", &sign(claims())).await;
}

#[tokio::test]
async fn malformed_tokens_are_refused_fast() {
    let g = Gateway::start(static_auth).await;
    let good = demo().sign(&claims()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        ("empty", String::new()),
        ("one segment", parts[0].to_owned()),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.{}", parts[2])),
        ("five segments", format!("{good}.x.y")),
        ("bad base64", "!!!.@@@.###".to_owned()),
        (
            "bad base64 payload",
            format!("{}.%%%.{}", parts[0], parts[2]),
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"nope"), parts[1], parts[2]),
        ),
        (
            "payload not JSON",
            format!("{}.{}.{}", parts[0], b64(b"[1,2"), parts[2]),
        ),
        (
            "payload an array",
            format!("{}.{}.{}", parts[0], b64(b"[]"), parts[2]),
        ),
        ("signature truncated", good[..good.len() - 4].to_owned()),
        (
            "padded base64",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        ("just dots", "..".to_owned()),
        (
            "9 KB token",
            format!("{}.{}.{}", parts[0], "A".repeat(9 * 1024), parts[2]),
        ),
    ];
    for (what, token) in cases {
        let started = Instant::now();
        g.refuses(what, &token).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    g.accepts("control", &good).await;
}

#[tokio::test]
async fn a_one_megabyte_header_is_refused_cleanly_and_the_gateway_keeps_serving() {
    let g = Gateway::start(static_auth).await;
    let huge = format!(
        "{}.{}.{}",
        b64(b"{\"alg\":\"ES256\"}"),
        "A".repeat(1 << 20),
        "B"
    );
    for header in ["authorization", "x-padding"] {
        let started = Instant::now();
        let mut client = g.gateway.client().await;
        let mut req = request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            None,
            None,
        );
        let value = if header == "authorization" {
            format!("Bearer {huge}")
        } else {
            huge.clone()
        };
        req.metadata_mut().insert(header, value.parse().unwrap());
        let status = client.lookup(req).await.unwrap_err();
        // Refused before it is parsed: by the header-list limit (the connection's answer is an
        // error status) or, below it, as a token too large. Never OK, never a hang.
        assert_ne!(status.code(), Code::Ok);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{header}: took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(g.calls(), 0);
    // The gateway still serves, on a fresh connection and on the shared one.
    let good = demo().sign(&claims()).unwrap();
    g.accepts("after the huge header", &good).await;
    let mut fresh = g.gateway.client().await;
    fresh
        .lookup(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&good),
            None,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn identity_smuggled_in_metadata_is_ignored() {
    let g = Gateway::start(static_auth).await;
    let smuggled = [
        ("x-user", "admin"),
        ("x-tier", "3"),
        ("x-department", "child-welfare"),
        ("x-municipality", "101"),
        ("x-roles", "admin"),
        ("x-forwarded-user", "admin"),
        // A system is named by its TLS client certificate, never by a header.
        ("x-system", "kmd-momentum"),
        ("x-client-cert", "CN=kmd-momentum"),
        ("x-forwarded-client-cert", "Subject=\"CN=kmd-momentum\""),
    ];
    // Without a token, metadata is no identity at all.
    let mut client = g.client.clone();
    let mut req = request(
        all_department_citizen(),
        Purpose::PrepareMeeting,
        None,
        None,
    );
    for (k, v) in smuggled {
        req.metadata_mut().insert(k, v.parse().unwrap());
    }
    let status = client.lookup(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(g.calls(), 0);

    // With a token, the token's identity is the one that reaches the source, and the answer is
    // the same as without the extra metadata.
    let token = demo().sign(&claims()).unwrap();
    let plain = client
        .lookup(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&token),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut req = request(
        all_department_citizen(),
        Purpose::PrepareMeeting,
        Some(&token),
        None,
    );
    for (k, v) in smuggled {
        req.metadata_mut().insert(k, v.parse().unwrap());
    }
    let with_metadata = client.lookup(req).await.unwrap().into_inner();
    let records = g.gateway.audit_records_of(&with_metadata.request_id);
    assert!(!records.is_empty());
    for record in records {
        assert_eq!(record.actor.caller_id, "cw-jobcenter-001");
        assert_eq!(
            record.actor.system, None,
            "a header named the calling system"
        );
    }
    let cases = |r: &samblik_proto::v1::LookupResponse| -> Vec<_> {
        r.sources
            .iter()
            .map(|s| (s.source_id.clone(), s.status, s.cases.clone()))
            .collect()
    };
    assert_eq!(cases(&plain), cases(&with_metadata));
    let seen = g.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for caller in seen {
        assert_eq!(caller.caller_id, "cw-jobcenter-001");
        assert_eq!(caller.caller_department, "jobcenter");
        assert_eq!(caller.municipality, "999");
    }
}

#[tokio::test]
async fn claim_names_and_roles_come_from_config() {
    let g = Gateway::start(|dir| {
        let mut auth = static_auth(dir);
        auth.claims.department = "org.department_code".to_owned();
        auth.claims.municipality = "org.kommunekode".to_owned();
        auth.claims.roles = "realm_access.roles".to_owned();
        auth.claims
            .role_names
            .insert("Sagsbehandler".to_owned(), "caseworker".to_owned());
        auth
    })
    .await;
    let token = demo()
        .sign(&with(
            with(
                without(without(claims(), "department"), "municipality"),
                "org",
                json!({"department_code": "jobcenter", "kommunekode": "461"}),
            ),
            "realm_access",
            json!({"roles": ["Sagsbehandler"]}),
        ))
        .unwrap();
    g.accepts("mapped claims", &token).await;
    let seen = g.seen.lock().unwrap().clone();
    assert_eq!(seen[0].caller_department, "jobcenter");
    assert_eq!(seen[0].municipality, "461");
    // The demo's claim names are not looked at any more.
    g.refuses(
        "department under the default name",
        &demo().sign(&claims()).unwrap(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Keys from the identity provider's JWKS endpoint (real HTTPS on a loopback port).

fn jwks_auth(server: &JwksServer, configure: impl FnOnce(&mut JwksConfig)) -> AuthConfig {
    let mut auth = gateway_config(&[], 3_000).auth;
    auth.keys.clear();
    let mut jwks = JwksConfig {
        url: server.url.clone(),
        ca_file: Some(server.pki.ca_file.clone()),
        ttl_secs: 3_600,
        refresh_secs: 300,
        min_refresh_secs: 30,
        timeout_ms: 2_000,
    };
    configure(&mut jwks);
    auth.jwks = Some(jwks);
    auth
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

#[tokio::test]
async fn jwks_keys_verify_tokens_and_unknown_kids_fetch_no_more_than_the_rate_limit() {
    let es = SigningKey::es256("idp-es-1");
    let rsa = SigningKey::rs256("idp-rsa-1");
    let server = JwksServer::start(&[&es, &rsa]).await;
    let g = Gateway::start(|_| jwks_auth(&server, |_| {})).await;
    assert_eq!(
        server.fetch_count(),
        0,
        "nothing is fetched before a token arrives"
    );
    g.accepts("ES256 from the JWKS", &es.sign(&es.header(), &claims()))
        .await;
    g.accepts("RS256 from the JWKS", &rsa.sign(&rsa.header(), &claims()))
        .await;
    assert_eq!(server.fetch_count(), 1);

    // A flood of made-up key ids: refused, and the identity provider is not asked again
    // within the rate limit (30 s here).
    let unknown = SigningKey::es256("x");
    for kid in [
        "unknown-1".to_owned(),
        "unknown-2".to_owned(),
        "../../etc/passwd".to_owned(),
        "https://127.0.0.1:1/other.json".to_owned(),
        "k".repeat(5_000),
    ] {
        let mut header = unknown.header();
        header.kid = Some(kid.clone());
        g.refuses("unknown kid", &unknown.sign(&header, &claims()))
            .await;
    }
    // Symmetric confusion against a JWKS RSA key.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("idp-rsa-1".to_owned());
    hs.typ = Some("at+jwt".to_owned());
    let forged = jsonwebtoken::encode(
        &hs,
        &claims(),
        &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
    )
    .unwrap();
    g.refuses("HS256 with the JWKS RSA key", &forged).await;
    assert_eq!(server.fetch_count(), 1, "unknown kids caused extra fetches");
    g.accepts("still fine", &es.sign(&es.header(), &claims()))
        .await;
}

#[tokio::test]
async fn key_rotation_new_kid_at_once_removed_kid_after_the_refresh() {
    let old = SigningKey::es256("idp-2026-1");
    let new = SigningKey::es256("idp-2026-2");
    let server = JwksServer::start(&[&old]).await;
    // No rate limit, and a one-second grace period before published removals take effect.
    let g = Gateway::start(|_| {
        jwks_auth(&server, |j| {
            j.min_refresh_secs = 0;
            j.refresh_secs = 1;
        })
    })
    .await;
    let old_token = old.sign(&old.header(), &claims());
    g.accepts("old key", &old_token).await;
    g.refuses(
        "new key before it is published",
        &new.sign(&new.header(), &claims()),
    )
    .await;

    server.publish(&[&old, &new]);
    g.accepts(
        "new key, just published",
        &new.sign(&new.header(), &claims()),
    )
    .await;
    g.accepts("old key still published", &old_token).await;

    // The identity provider withdraws the old key. Within the refresh interval the gateway
    // notices, and the old key's tokens — also the one in the verified-token cache — stop.
    server.publish(&[&new]);
    let refused = within(Duration::from_secs(5), async || {
        g.call(&old_token)
            .await
            .is_err_and(|s| s.code() == Code::Unauthenticated)
    })
    .await;
    assert!(refused, "a token of a withdrawn key is still accepted");
    g.refuses("old key, withdrawn", &old.sign(&old.header(), &claims()))
        .await;
    g.accepts("new key", &new.sign(&new.header(), &claims()))
        .await;
}

#[tokio::test]
async fn jwks_outage_keeps_cached_keys_until_their_ttl_then_refuses() {
    let key = SigningKey::es256("idp-1");
    let server = JwksServer::start(&[&key]).await;
    let g = Gateway::start(|_| {
        jwks_auth(&server, |j| {
            j.ttl_secs = 2;
            j.refresh_secs = 1;
            j.min_refresh_secs = 0;
        })
    })
    .await;
    // A fresh token per call: the verified-token cache must not be what keeps them working.
    let fresh = || key.sign(&key.header(), &with(claims(), "jti", json!(uuid())));
    g.accepts("before the outage", &fresh()).await;
    let down_at = Instant::now();
    server.set_up(false);
    g.accepts("during the outage, cached keys", &fresh()).await;

    let refused = within(Duration::from_secs(6), async || {
        g.call(&fresh())
            .await
            .is_err_and(|s| s.code() == Code::Unauthenticated)
    })
    .await;
    assert!(refused, "tokens still accepted long after the keys' TTL");
    assert!(
        down_at.elapsed() >= Duration::from_millis(900),
        "keys dropped before their TTL: {:?}",
        down_at.elapsed()
    );
    g.refuses("after the TTL", &fresh()).await;

    server.set_up(true);
    let back = within(Duration::from_secs(5), async || {
        g.call(&fresh()).await.is_ok()
    })
    .await;
    assert!(
        back,
        "the gateway did not recover when the identity provider came back"
    );
}

#[tokio::test]
async fn a_jwks_endpoint_with_an_untrusted_certificate_is_not_used() {
    let key = SigningKey::es256("idp-1");
    let server = JwksServer::start(&[&key]).await;
    let other_ca = TestPki::new();
    let g = Gateway::start(|_| jwks_auth(&server, |j| j.ca_file = Some(other_ca.ca_file.clone())))
        .await;
    g.refuses(
        "key from an endpoint we cannot authenticate",
        &key.sign(&key.header(), &claims()),
    )
    .await;
    assert_eq!(
        server.fetch_count(),
        0,
        "a request got past the TLS handshake"
    );
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("jti-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}
