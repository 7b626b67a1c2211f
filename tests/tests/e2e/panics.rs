//! A panic while serving a request is contained: in the pipeline, the caller gets INTERNAL with
//! the request id (a stream ends with it, not silently), the audit record says the gateway
//! failed, and the gateway goes on serving; in an in-process source, that department shows
//! ERROR and the others are served.

use samblik_audit::Outcome;
use samblik_gateway::testing::PANIC_CALLER;
use samblik_proto::v1::{Purpose, SourceStatus};
use samblik_synth::Department;
use samblik_tests::*;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

/// A jobcenter caseworker's token whose caller id makes the pipeline panic.
fn panicking_caller() -> String {
    let mut claims = samblik::demo::caseworker_claims(
        caseworker(Department::Jobcenter),
        &municipality().municipality.code,
    );
    claims.sub = PANIC_CALLER.to_owned();
    issuer().1.mint(&claims, Duration::from_secs(600)).unwrap()
}

/// A citizen with a jobcenter case, so the jobcenter caller has a relation.
fn jobcenter_citizen() -> &'static str {
    all_department_citizen()
}

#[tokio::test]
async fn a_panic_in_the_pipeline_is_internal_recorded_and_the_gateway_goes_on() {
    let m = start_municipal().await;
    let mut client = m.gateway.client().await;
    let cpr = jobcenter_citizen();
    let refused = client
        .lookup(request(
            cpr,
            Purpose::PrepareMeeting,
            Some(&panicking_caller()),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert_eq!(reason_of(&refused), "INTERNAL_ERROR");
    let id = request_id_of(refused.metadata());
    // The draft's record is written as the handler unwinds, without waiting for it.
    assert!(
        eventually(Duration::from_secs(10), || !m
            .gateway
            .audit_records_of(&id)
            .is_empty())
        .await
    );
    let record = &m.gateway.audit_records_of(&id)[0];
    assert_eq!(record.outcome, Outcome::Failed);
    assert_eq!(record.reason.as_deref(), Some("INTERNAL_ERROR"));
    assert!(record.sources.iter().all(|s| s.cases.is_empty()));

    // The same connection serves the next caller.
    let answer = client
        .lookup(request(
            cpr,
            Purpose::PrepareMeeting,
            Some(&token(Department::Jobcenter)),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer
            .sources
            .iter()
            .all(|s| s.status() == SourceStatus::Ok)
    );
}

#[tokio::test]
async fn a_panic_in_a_streamed_lookup_ends_the_stream_with_internal() {
    let m = start_municipal().await;
    let mut client = m.gateway.client().await;
    let mut stream = client
        .lookup_stream(request(
            jobcenter_citizen(),
            Purpose::PrepareMeeting,
            Some(&panicking_caller()),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut ended_with = None;
    while let Some(part) = stream.next().await {
        if let Err(status) = part {
            ended_with = Some(status);
            break;
        }
    }
    let status = ended_with.expect("the stream ended without saying the gateway failed");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(reason_of(&status), "INTERNAL_ERROR");
}

#[tokio::test]
async fn a_panicking_source_shows_error_and_the_others_are_served() {
    let gateway = TestGateway::in_process(vec![
        (Arc::new(Panicking), "Panicking"),
        (reference(Department::Jobcenter), "Jobcenter"),
    ])
    .start()
    .await;
    let mut client = gateway.client().await;
    for _ in 0..2 {
        let answer = client
            .lookup(request(
                jobcenter_citizen(),
                Purpose::PrepareMeeting,
                Some(&token(Department::Jobcenter)),
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        let status = |id: &str| {
            answer
                .sources
                .iter()
                .find(|s| s.source_id == id)
                .unwrap()
                .status()
        };
        assert_eq!(status("panicking"), SourceStatus::Error);
        assert_eq!(status("jobcenter"), SourceStatus::Ok);
    }
}
