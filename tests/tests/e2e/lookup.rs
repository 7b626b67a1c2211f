//! End-to-end lookups: the four reference sources and the gateway on loopback, called through
//! the generated gRPC client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_proto::v1::{CaseState, Purpose, SourceStatus, Tier};
use samblik_synth::{CaseState as DataState, Department};
use samblik_tests::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_citizen_with_cases_in_four_departments_is_shown_at_tier_1_elsewhere_and_in_full_at_home()
{
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let token = token(Department::Jobcenter);
    let response = m
        .gateway
        .client()
        .await
        .lookup(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
        .await
        .unwrap();
    let request_id = response
        .metadata()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let response = response.into_inner();
    assert_eq!(request_id.as_deref(), Some(response.request_id.as_str()));

    let ids: Vec<&str> = response
        .sources
        .iter()
        .map(|s| s.source_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["child-welfare", "jobcenter", "integration", "adult-social"]
    );
    for source in &response.sources {
        assert_eq!(source.status(), SourceStatus::Ok, "{source:?}");
        assert!(source.as_of.is_some());
        let department: Department = source.source_id.parse().unwrap();
        assert_eq!(source.department, department.display_name());
        let expected: BTreeMap<&str, &samblik_synth::CaseRecord> = municipality()
            .cases
            .iter()
            .filter(|c| c.cpr == cpr && c.department() == department)
            .map(|c| (c.case_id.as_str(), c))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(source.cases.len(), expected.len());
        for case in &source.cases {
            let record = expected[case.case_id.as_str()];
            assert!(case.subject_cpr.is_empty() && case.sensitivity.is_empty());
            let disclosure = case.disclosure.as_ref().unwrap();
            if department == Department::Jobcenter {
                // The caller's own department: in full, on that basis.
                assert_eq!(case.tier(), Tier::Full);
                assert!(case.selected.is_some() && case.full.is_some());
                assert_eq!(disclosure.basis, "own-department");
                assert!(disclosure.withheld.is_empty());
            } else {
                // Elsewhere tier 1 only, on the municipality's statute: existence and contact,
                // and it says in words what is withheld and why.
                assert_eq!(case.tier(), Tier::Existence);
                assert!(case.selected.is_none() && case.full.is_none());
                assert_eq!(
                    (disclosure.basis.as_str(), disclosure.basis_id.as_str()),
                    ("statute", "existence-and-contact")
                );
                let withheld = &disclosure.withheld[0];
                assert_eq!(
                    (withheld.part.as_str(), withheld.code.as_str()),
                    ("selected", "needs-basis")
                );
                assert!(withheld.reason.contains("consent"), "{withheld:?}");
            }
            let existence = case.existence.as_ref().unwrap();
            let case_type = existence.case_type.as_ref().unwrap();
            assert_eq!(case_type.code, record.plan_type.code());
            assert_eq!(
                case_type.legal_paragraph,
                record.plan_type.legal_paragraph()
            );
            assert_eq!(existence.opened_on, record.opened_on.to_string());
            let open = record.state == DataState::Open;
            assert_eq!(existence.state() == CaseState::Open, open);
            let worker = municipality()
                .caseworkers
                .iter()
                .find(|w| w.id == record.responsible)
                .unwrap();
            let contact = existence.responsible.as_ref().unwrap();
            assert_eq!(
                (&contact.name, &contact.unit, &contact.phone, &contact.email),
                (&worker.name, &worker.unit, &worker.phone, &worker.email)
            );
        }
    }
}

#[tokio::test]
async fn a_citizen_without_cases_gets_an_explicit_empty_answer_from_every_source() {
    let m = start_municipal().await;
    let token = token(Department::ChildWelfare);
    let mut client = m.gateway.client().await;
    // Without a case of their own the caller has no relation to the citizen: refused, and only
    // the caller's own department was asked.
    let denied = client
        .lookup(request(
            citizen_without_cases(),
            Purpose::FollowUp,
            Some(&token),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(m.calls(), 1);
    // Breaking the glass, every source answers explicitly that it has nothing.
    let mut req = request(
        citizen_without_cases(),
        Purpose::FollowUp,
        Some(&token),
        None,
    );
    req.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
    let response = client.lookup(req).await.unwrap().into_inner();
    assert_eq!(response.sources.len(), 4);
    for source in &response.sources {
        assert_eq!(source.status(), SourceStatus::Ok);
        assert!(source.cases.is_empty());
        assert!(source.as_of.is_some());
    }
    assert_eq!(m.calls(), 1 + 4);
}

#[tokio::test]
async fn the_dashed_notation_is_the_same_citizen() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let dashed = format!("{}-{}", &cpr[..6], &cpr[6..]);
    let token = token(Department::Integration);
    let mut client = m.gateway.client().await;
    let plain = client
        .lookup(request(cpr, Purpose::DraftPlan, Some(&token), None))
        .await
        .unwrap()
        .into_inner();
    let with_dash = client
        .lookup(request(&dashed, Purpose::DraftPlan, Some(&token), None))
        .await
        .unwrap()
        .into_inner();
    let count = |r: &samblik_proto::v1::LookupResponse| {
        r.sources.iter().map(|s| s.cases.len()).sum::<usize>()
    };
    assert!(count(&plain) >= 3);
    assert_eq!(count(&plain), count(&with_dash));
}

#[tokio::test]
async fn a_source_filter_answers_for_the_named_sources_only() {
    let m = start_municipal().await;
    let token = token(Department::Jobcenter);
    let mut req = request(
        all_department_citizen(),
        Purpose::Coordinate,
        Some(&token),
        None,
    );
    req.get_mut().sources = vec![
        "integration".into(),
        "child-welfare".into(),
        "integration".into(),
    ];
    let response = m
        .gateway
        .client()
        .await
        .lookup(req)
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = response
        .sources
        .iter()
        .map(|s| s.source_id.as_str())
        .collect();
    assert_eq!(ids, ["child-welfare", "integration"]);
    // The two named, and the caller's own department to establish the relation.
    assert_eq!(m.calls(), 3);
}

#[tokio::test]
async fn the_stream_yields_one_message_per_source() {
    let m = start_municipal().await;
    let token = token(Department::Jobcenter);
    let mut stream = m
        .gateway
        .client()
        .await
        .lookup_stream(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&token),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(result) = stream.message().await.unwrap() {
        assert_eq!(result.status(), SourceStatus::Ok);
        assert!(!result.cases.is_empty());
        seen.push(result.source_id);
    }
    seen.sort();
    assert_eq!(
        seen,
        ["adult-social", "child-welfare", "integration", "jobcenter"]
    );
}

#[tokio::test]
async fn the_stream_delivers_fast_sources_before_a_slow_one_times_out() {
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    let hanging = start_source(std::sync::Arc::new(Hanging::default())).await;
    let gateway = TestGateway::over(&[
        SourceSpec::at("jobcenter", jobcenter.addr),
        SourceSpec::at("hanging", hanging.addr),
    ])
    .deadline_ms(1_500)
    .start()
    .await;
    let token = token(Department::Jobcenter);
    let started = Instant::now();
    let mut stream = gateway
        .client()
        .await
        .lookup_stream(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&token),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let second = stream.message().await.unwrap().unwrap();
    let second_at = started.elapsed();
    assert!(stream.message().await.unwrap().is_none());
    assert_eq!(
        (first.source_id.as_str(), first.status()),
        ("jobcenter", SourceStatus::Ok)
    );
    assert_eq!(
        (second.source_id.as_str(), second.status()),
        ("hanging", SourceStatus::Timeout)
    );
    // The fast source is not held back by the slow one: it arrives well before the deadline,
    // and the slow one is reported when the deadline passes.
    assert!(
        first_at < Duration::from_millis(1_000),
        "first after {first_at:?}"
    );
    assert!(
        second_at >= Duration::from_millis(1_300),
        "second after {second_at:?}"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "samblik.v1.LookupService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"samblik.v1.LookupService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
