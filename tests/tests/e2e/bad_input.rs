//! Bad input and bad credentials are refused with a clear status before any source is asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik::tokens::{DEMO_AUDIENCE, DEMO_ISSUER, DemoIssuer};
use samblik_proto::v1::Purpose;
use samblik_synth::Department;
use samblik_tests::*;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::Code;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn malformed_or_missing_input_is_invalid_argument_and_no_source_is_called() {
    let m = start_municipal().await;
    let token = token(Department::Jobcenter);
    let mut client = m.gateway.client().await;
    let good = all_department_citizen();
    let oversized = "1".repeat(64 * 1024);
    let cases: Vec<(String, i32, &str)> = vec![
        (String::new(), Purpose::PrepareMeeting as i32, "missing"),
        ("12345".into(), Purpose::PrepareMeeting as i32, "10 digits"),
        (
            "010190123X".into(),
            Purpose::PrepareMeeting as i32,
            "10 digits",
        ),
        (
            "0101901234 ".into(),
            Purpose::PrepareMeeting as i32,
            "10 digits",
        ),
        (
            "3002901234".into(),
            Purpose::PrepareMeeting as i32,
            "birth date",
        ),
        (
            "2902001234".into(),
            Purpose::PrepareMeeting as i32,
            "birth date",
        ),
        (
            "3113901234".into(),
            Purpose::PrepareMeeting as i32,
            "birth date",
        ),
        (
            good.to_owned(),
            Purpose::Unspecified as i32,
            "purpose is missing",
        ),
        (good.to_owned(), 99, "not a known purpose"),
        (oversized, Purpose::PrepareMeeting as i32, "larger than"),
    ];
    for (cpr, purpose, needle) in cases {
        let mut req = request(&cpr, Purpose::PrepareMeeting, Some(&token), None);
        req.get_mut().purpose = purpose;
        let status = client.lookup(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
        // The message never echoes the input.
        assert!(cpr.len() < 6 || !status.message().contains(&cpr));
        assert!(status.metadata().get("x-request-id").is_some());
    }
    let mut unknown_source = request(good, Purpose::PrepareMeeting, Some(&token), None);
    unknown_source.get_mut().sources = vec!["tax-office".into()];
    let status = client.lookup(unknown_source).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("unknown source"));

    let status = client
        .lookup_stream(request(
            "999999",
            Purpose::PrepareMeeting,
            Some(&token),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(m.calls(), 0, "a source was called");
}

#[tokio::test]
async fn missing_or_invalid_tokens_are_unauthenticated_and_no_source_is_called() {
    let m = start_municipal().await;
    let mut client = m.gateway.client().await;
    let cpr = all_department_citizen();
    let issuer = &issuer().1;
    let other_keys = tempfile::tempdir().unwrap();
    let impostor = DemoIssuer::load_or_create(other_keys.path()).unwrap();
    let claims = |iss: &str, aud: &str, nbf: u64, exp: u64| {
        json!({
            "sub": "cw-jobcenter-001", "name": "Test", "department": "jobcenter",
            "municipality": "999", "roles": ["caseworker"],
            "iss": iss, "aud": aud, "iat": now(), "nbf": nbf, "exp": exp,
        })
    };
    let valid = claims(DEMO_ISSUER, DEMO_AUDIENCE, now(), now() + 600);
    let mut no_department = valid.clone();
    no_department.as_object_mut().unwrap().remove("department");
    let mut no_sub = valid.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut no_exp = valid.clone();
    no_exp.as_object_mut().unwrap().remove("exp");

    let tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a JWT", Some("not-a-token".into())),
        (
            "signed by another key",
            Some(impostor.sign(&valid).unwrap()),
        ),
        (
            "wrong issuer",
            Some(
                issuer
                    .sign(&claims(
                        "https://evil.example",
                        DEMO_AUDIENCE,
                        now(),
                        now() + 600,
                    ))
                    .unwrap(),
            ),
        ),
        (
            "wrong audience",
            Some(
                issuer
                    .sign(&claims(DEMO_ISSUER, "other-service", now(), now() + 600))
                    .unwrap(),
            ),
        ),
        (
            "expired",
            Some(
                issuer
                    .sign(&claims(
                        DEMO_ISSUER,
                        DEMO_AUDIENCE,
                        now() - 7200,
                        now() - 3600,
                    ))
                    .unwrap(),
            ),
        ),
        (
            "not yet valid",
            Some(
                issuer
                    .sign(&claims(
                        DEMO_ISSUER,
                        DEMO_AUDIENCE,
                        now() + 3600,
                        now() + 7200,
                    ))
                    .unwrap(),
            ),
        ),
        ("no exp", Some(issuer.sign(&no_exp).unwrap())),
        ("no sub", Some(issuer.sign(&no_sub).unwrap())),
        ("no department", Some(issuer.sign(&no_department).unwrap())),
    ];
    for (what, token) in &tokens {
        let status = client
            .lookup(request(
                cpr,
                Purpose::PrepareMeeting,
                token.as_deref(),
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        // One generic message: which check failed is not the caller's business.
        assert!(
            status
                .message()
                .starts_with("missing or invalid access token"),
            "{what}"
        );
    }
    // Authentication comes before validation: a bad token with a bad CPR is still unauthenticated.
    let status = client
        .lookup(request("nonsense", Purpose::Unspecified, None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // And the same valid claims, signed by the right key, are accepted.
    client
        .lookup(request(
            cpr,
            Purpose::PrepareMeeting,
            Some(&issuer.sign(&valid).unwrap()),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        m.calls(),
        Department::ALL.len(),
        "only the valid lookup reached the sources"
    );
}
