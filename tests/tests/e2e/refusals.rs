//! Every refusal has a stable reason: in the status as `google.rpc.ErrorInfo` (domain `samblik`,
//! the request id in its metadata) and in the refusal's audit record, whichever service refused
//! and whether or not a handler read the request. The message stays for people.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::Outcome;
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::consent_service_client::ConsentServiceClient;
use samblik_proto::v1::policy_service_client::PolicyServiceClient;
use samblik_proto::v1::{ExplainRequest, ListConsentsRequest, Purpose, SearchAuditRequest};
use samblik_synth::Department;
use samblik_tests::*;
use tonic::Code;

/// What a refusal must be: its code, its reason, and its audit record's outcome.
type Refusal = (Code, &'static str, Outcome);

const UNAUTHENTICATED: Refusal = (
    Code::Unauthenticated,
    "UNAUTHENTICATED",
    Outcome::Unauthenticated,
);
const NO_RELATION: Refusal = (Code::PermissionDenied, "NO_RELATION", Outcome::Denied);
const ROLE_REQUIRED: Refusal = (Code::PermissionDenied, "ROLE_REQUIRED", Outcome::Denied);
const INVALID_CPR: Refusal = (Code::InvalidArgument, "INVALID_CPR", Outcome::Invalid);
const REQUEST_TOO_LARGE: Refusal = (Code::InvalidArgument, "REQUEST_TOO_LARGE", Outcome::Invalid);
const MESSAGE_TOO_LARGE: Refusal = (Code::OutOfRange, "MESSAGE_TOO_LARGE", Outcome::Invalid);
const MESSAGE_UNDECODABLE: Refusal = (
    Code::InvalidArgument,
    "MESSAGE_UNDECODABLE",
    Outcome::Invalid,
);

/// Checks that `refused` is `expected`, on the wire and in its one audit record, which stores
/// the same reason.
fn assert_refused(m: &Municipal, refused: &tonic::Status, expected: Refusal) {
    let (code, reason, outcome) = expected;
    assert_eq!(refused.code(), code, "{refused:?}");
    assert_eq!(reason_of(refused), reason);
    let records = m
        .gateway
        .audit_records_of(&request_id_of(refused.metadata()));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].outcome, outcome);
    assert_eq!(records[0].reason.as_deref(), Some(reason));
}

/// A lookup of `cpr` for a meeting that must be refused.
async fn refused_lookup(m: &Municipal, cpr: &str, token: Option<&str>) -> tonic::Status {
    let mut client = m.gateway.client().await;
    let asked = request(cpr, Purpose::PrepareMeeting, token, None);
    client.lookup(asked).await.unwrap_err()
}

#[tokio::test]
async fn a_lookup_without_relation_is_refused_for_no_relation_and_recorded_so() {
    let m = start_municipal().await;
    let token = token(Department::ChildWelfare);
    let refused = refused_lookup(&m, citizen_without_cases(), Some(&token)).await;
    assert_refused(&m, &refused, NO_RELATION);
    // The message is as it was.
    let id = request_id_of(refused.metadata());
    assert_eq!(
        refused.message(),
        format!(
            "you have no open case for this citizen in your department; if you must look \
             anyway, break the glass with a written reason (request id {id})"
        )
    );

    // The streamed lookup is refused alike.
    let asked = request(
        citizen_without_cases(),
        Purpose::FollowUp,
        Some(&token),
        None,
    );
    let mut client = m.gateway.client().await;
    let refused = client.lookup_stream(asked).await.map(drop).unwrap_err();
    assert_refused(&m, &refused, NO_RELATION);
    assert_eq!(m.calls(), 2, "only the caller's own department was asked");
}

#[tokio::test]
async fn an_invalid_cpr_is_refused_for_invalid_cpr_and_recorded_so() {
    let m = start_municipal().await;
    let token = token(Department::Jobcenter);
    let refused = refused_lookup(&m, "3002901234", Some(&token)).await;
    assert_refused(&m, &refused, INVALID_CPR);
    assert_eq!(m.calls(), 0);
}

#[tokio::test]
async fn a_request_too_large_is_refused_for_its_size_whichever_limit_it_passes() {
    let m = start_municipal().await;
    let token = token(Department::Jobcenter);

    // Over the lookup's limit (4 KiB), under the transport's (256 KiB): read, and refused.
    let refused = refused_lookup(&m, &"1".repeat(8 * 1024), Some(&token)).await;
    assert_refused(&m, &refused, REQUEST_TOO_LARGE);
    assert!(
        refused
            .message()
            .starts_with("request is larger than 4096 bytes")
    );

    // Over the transport's: refused before any handler reads it, with tonic's code and words.
    let refused = refused_lookup(&m, &"1".repeat(300 * 1024), Some(&token)).await;
    assert_refused(&m, &refused, MESSAGE_TOO_LARGE);
    assert!(
        refused
            .message()
            .starts_with("Error, decoded message length too large"),
        "{refused:?}"
    );
    assert_eq!(m.calls(), 0);
}

#[tokio::test]
async fn a_message_that_is_not_protobuf_is_refused_for_it() {
    let m = start_municipal().await;
    let refused = raw_unary(
        m.gateway.channel().await,
        "/samblik.v1.LookupService/Lookup",
        vec![0xff; 16],
        Some(&token(Department::Jobcenter)),
    )
    .await
    .unwrap_err();
    assert_refused(&m, &refused, MESSAGE_UNDECODABLE);
}

/// The consent, audit and policy services refuse through the same mapping as the lookup.
#[tokio::test]
async fn every_service_refuses_with_a_reason() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);

    let refused = refused_lookup(&m, all_department_citizen(), None).await;
    assert_refused(&m, &refused, UNAUTHENTICATED);

    let refused = AuditServiceClient::new(channel.clone())
        .search(authed(SearchAuditRequest::default(), &jobcenter))
        .await
        .unwrap_err();
    assert_refused(&m, &refused, ROLE_REQUIRED);

    let listing = ListConsentsRequest {
        cpr: citizen_without_cases().into(),
    };
    let refused = ConsentServiceClient::new(channel.clone())
        .list_consents(authed(listing, &jobcenter))
        .await
        .unwrap_err();
    assert_refused(&m, &refused, NO_RELATION);

    let mut policy = PolicyServiceClient::new(channel);
    let refused = policy
        .explain(authed(ExplainRequest::default(), &jobcenter))
        .await
        .unwrap_err();
    assert_refused(&m, &refused, ROLE_REQUIRED);

    // The explanation names the reason a refused lookup would carry.
    let subject = ExplainRequest {
        cpr: citizen_without_cases().into(),
        purpose: Purpose::FollowUp as i32,
        caller_id: caseworker(Department::ChildWelfare).id.clone(),
        caller_department: Department::ChildWelfare.id().into(),
        roles: vec!["caseworker".into()],
        ..ExplainRequest::default()
    };
    let explained = policy
        .explain(authed(subject, &staff_token("dpo-1", "admin")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.refusal_reason, "NO_RELATION");
    assert!(explained.refusal.contains("no open case"), "{explained:?}");
}
