//! Sources that are down, hang, answer garbage, answer about someone else or refuse in words of
//! their own: that source's status says so (and its words stay out of the log), the others are
//! served, and the call returns within its deadline. A remote source is sent what is left of
//! that deadline as its `grpc-timeout`, and the source server drops the work when it runs out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_proto::source::v1::FindCasesRequest;
use samblik_proto::source::v1::source_service_client::SourceServiceClient;
use samblik_proto::v1::{
    Case, CaseType, Existence, Full, LookupResponse, Purpose, Selected, SourceResult, SourceStatus,
    Tier,
};
use samblik_synth::Department;
use samblik_tests::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::Code;

fn status_of(response: &LookupResponse, id: &str) -> SourceStatus {
    response
        .sources
        .iter()
        .find(|s| s.source_id == id)
        .unwrap_or_else(|| panic!("no result for {id}"))
        .status()
}

/// The jobcenter reference source plus `faulty` behind the gateway; one lookup.
async fn lookup_with(faulty: SourceSpec, deadline: Option<Duration>) -> (LookupResponse, Duration) {
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    let gateway = TestGateway::over(&[SourceSpec::at("jobcenter", jobcenter.addr), faulty])
        .deadline_ms(1_000)
        .start()
        .await;
    // A jobcenter caseworker: the jobcenter source establishes the relation.
    let token = token(Department::Jobcenter);
    let mut client = gateway.client().await;
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.lookup(request(
            all_department_citizen(),
            Purpose::PrepareMeeting,
            Some(&token),
            deadline,
        )),
    )
    .await
    .expect("the gateway answered")
    .unwrap()
    .into_inner();
    let elapsed = started.elapsed();
    assert_eq!(status_of(&response, "jobcenter"), SourceStatus::Ok);
    let jobcenter_cases = response
        .sources
        .iter()
        .find(|s| s.source_id == "jobcenter")
        .unwrap();
    assert!(!jobcenter_cases.cases.is_empty());
    (response, elapsed)
}

#[tokio::test]
async fn a_source_that_is_down_is_unavailable_and_the_rest_are_served() {
    let dead = dead_address().await;
    let (response, _) = lookup_with(SourceSpec::at("down", dead), None).await;
    assert_eq!(status_of(&response, "down"), SourceStatus::Unavailable);
    let down = response
        .sources
        .iter()
        .find(|s| s.source_id == "down")
        .unwrap();
    assert!(down.cases.is_empty() && down.as_of.is_none());
    assert!(!down.detail.is_empty());
}

#[tokio::test]
async fn a_hanging_source_times_out_within_the_callers_deadline_and_its_call_is_cancelled() {
    let hanging = Arc::new(Hanging::default());
    let cancelled = Arc::clone(&hanging.cancelled);
    let server = start_source(hanging.clone()).await;
    let (response, elapsed) = lookup_with(
        SourceSpec::at("hanging", server.addr),
        Some(Duration::from_millis(3_000)),
    )
    .await;
    // The gateway gave up on the source in time to answer (the client would otherwise have
    // failed the call with DEADLINE_EXCEEDED): the configured margin was kept back.
    assert_eq!(status_of(&response, "hanging"), SourceStatus::Timeout);
    assert!(
        elapsed >= Duration::from_millis(1_900) && elapsed < Duration::from_millis(3_000),
        "answered after {elapsed:?}"
    );
    assert_eq!(hanging.started.load(Ordering::SeqCst), 1);
    // The abandoned call does not linger: the source sees it cancelled.
    assert!(
        eventually(Duration::from_secs(5), || cancelled.load(Ordering::SeqCst)
            == 1)
        .await,
        "the hanging call was never cancelled"
    );
}

#[tokio::test]
async fn without_a_client_deadline_the_configured_default_applies() {
    let hanging = start_source(Arc::new(Hanging::default())).await;
    let (response, elapsed) = lookup_with(SourceSpec::at("hanging", hanging.addr), None).await;
    assert_eq!(status_of(&response, "hanging"), SourceStatus::Timeout);
    assert!(
        elapsed >= Duration::from_millis(900),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(2_000),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn the_per_source_timeout_is_shorter_than_the_deadline() {
    let hanging = start_source(Arc::new(Hanging::default())).await;
    let (response, elapsed) = lookup_with(
        SourceSpec::at("hanging", hanging.addr).timeout_ms(200),
        Some(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(status_of(&response, "hanging"), SourceStatus::Timeout);
    assert!(
        elapsed < Duration::from_millis(2_000),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_source_that_answers_garbage_is_reported_and_the_rest_are_served() {
    let garbage = start_garbage_server().await;
    let (response, _) = lookup_with(SourceSpec::at("garbage", garbage.addr), None).await;
    let status = status_of(&response, "garbage");
    assert!(
        matches!(status, SourceStatus::Unavailable | SourceStatus::Error),
        "garbage reported as {status:?}"
    );
    assert!(
        response
            .sources
            .iter()
            .find(|s| s.source_id == "garbage")
            .unwrap()
            .cases
            .is_empty()
    );
}

/// What the gateway made of a scripted source's answer.
async fn scripted_result(scripted: &RunningSource) -> SourceResult {
    let (response, _) = lookup_with(SourceSpec::at("scripted", scripted.addr), None).await;
    response
        .sources
        .into_iter()
        .find(|s| s.source_id == "scripted")
        .unwrap()
}

fn case(id: &str, cpr: &str, tier: Tier) -> Case {
    let mut case = Case {
        case_id: id.into(),
        subject_cpr: cpr.into(),
        tier: Tier::Full as i32,
        existence: Some(Existence {
            case_type: Some(CaseType {
                code: "LAB-27".into(),
                name: "Min Plan".into(),
                legal_paragraph: "Lov om en aktiv beskæftigelsesindsats § 27".into(),
            }),
            opened_on: "2025-01-01".into(),
            ..Existence::default()
        }),
        selected: Some(Selected {
            situation: "secret situation".into(),
            ..Selected::default()
        }),
        full: Some(Full::default()),
        ..Case::default()
    };
    case.restrict_to(tier);
    case
}

#[tokio::test]
async fn fields_above_the_tier_asked_are_removed() {
    let cpr = all_department_citizen();
    let scripted = start_source(Arc::new(Scripted {
        cases: vec![
            case("MINE-1", cpr, Tier::Full),
            case("MINE-2", cpr, Tier::Existence),
        ],
    }))
    .await;
    let result = scripted_result(&scripted).await;
    assert_eq!(result.status(), SourceStatus::Ok);
    let ids: Vec<&str> = result.cases.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(ids, ["MINE-1", "MINE-2"]);
    for case in &result.cases {
        assert_eq!(case.tier(), Tier::Existence);
        assert!(case.selected.is_none() && case.full.is_none(), "{case:?}");
    }
}

/// A department's system that answers with a case about someone else has mixed up whom it is
/// answering about: none of its answer is used, the audit record flags the source, and the
/// lookup reaches the auditors' review queue.
#[tokio::test]
async fn a_source_that_answers_about_another_citizen_is_dropped_whole_and_flagged() {
    let cpr = all_department_citizen();
    let other = citizen_without_cases();
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    let scripted = start_source(Arc::new(Scripted {
        cases: vec![
            case("MINE-1", cpr, Tier::Existence),
            case("OTHER-1", other, Tier::Existence),
        ],
    }))
    .await;
    let gateway = TestGateway::over(&[
        SourceSpec::at("jobcenter", jobcenter.addr),
        SourceSpec::at("scripted", scripted.addr),
    ])
    .start()
    .await;
    let mut client = gateway.client().await;
    let token = token(Department::Jobcenter);
    let response = client
        .lookup(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&response, "jobcenter"), SourceStatus::Ok);
    let scripted_result = response
        .sources
        .iter()
        .find(|s| s.source_id == "scripted")
        .unwrap();
    assert_eq!(scripted_result.status(), SourceStatus::Error);
    assert!(
        scripted_result.cases.is_empty(),
        "not even the case about {cpr}"
    );
    assert!(
        scripted_result.detail.contains("another citizen"),
        "{scripted_result:?}"
    );

    let records = gateway.audit_records();
    let lookup = records
        .iter()
        .find(|r| r.action == samblik_audit::Action::Lookup)
        .unwrap();
    let flagged: Vec<(&str, &str, Option<&str>)> = lookup
        .sources
        .iter()
        .map(|s| (s.source_id.as_str(), s.status.as_str(), s.flag.as_deref()))
        .collect();
    assert!(flagged.contains(&("scripted", "error", Some(samblik_audit::FOREIGN_CITIZEN))));
    assert!(flagged.contains(&("jobcenter", "ok", None)));

    let auditor = staff_token("aud-test", "auditor");
    let items =
        samblik_proto::v1::audit_service_client::AuditServiceClient::new(gateway.channel().await)
            .review_queue(authed(
                samblik_proto::v1::ReviewQueueRequest::default(),
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner()
            .items;
    let foreign: Vec<_> = items
        .iter()
        .filter(|i| i.kind == "foreign-citizen")
        .collect();
    assert_eq!(foreign.len(), 1, "{items:#?}");
    assert_eq!(
        foreign[0].request_ids,
        std::slice::from_ref(&lookup.request_id)
    );
    assert!(
        foreign[0].summary.starts_with("scripted answered"),
        "{:?}",
        foreign[0]
    );
}

#[tokio::test]
async fn a_malformed_case_makes_the_source_an_error_not_a_silent_gap() {
    let cpr = all_department_citizen();
    let mut broken = case("BROKEN", cpr, Tier::Existence);
    broken.existence = None;
    let scripted = start_source(Arc::new(Scripted {
        cases: vec![case("FINE", cpr, Tier::Existence), broken],
    }))
    .await;
    let result = scripted_result(&scripted).await;
    assert_eq!(result.status(), SourceStatus::Error);
    assert!(result.cases.is_empty());
}

#[tokio::test]
async fn a_sources_error_message_never_reaches_the_log_and_its_status_is_still_recorded() {
    let (log, _capturing) = CapturedLog::start();
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    // Third-party adapters that refuse with a message naming the citizen looked up.
    let blabbers = [
        ("internal", Code::Internal, SourceStatus::Error, "error"),
        (
            "refusing",
            Code::PermissionDenied,
            SourceStatus::Denied,
            "denied",
        ),
        (
            "down",
            Code::Unavailable,
            SourceStatus::Unavailable,
            "unavailable",
        ),
        ("picky", Code::InvalidArgument, SourceStatus::Error, "error"),
    ];
    let mut specs = vec![SourceSpec::at("jobcenter", jobcenter.addr)];
    let mut running = Vec::new();
    for (id, code, ..) in blabbers {
        let source = start_blabbing(code).await;
        specs.push(SourceSpec::at(id, source.addr));
        running.push(source);
    }
    let gateway = TestGateway::over(&specs).deadline_ms(3_000).start().await;
    let cpr = all_department_citizen();
    let answer = gateway
        .client()
        .await
        .lookup(request(
            cpr,
            Purpose::PrepareMeeting,
            Some(&token(Department::Jobcenter)),
            None,
        ))
        .await
        .unwrap();
    let request_id = request_id_of(answer.metadata());
    let response = answer.into_inner();
    assert_eq!(status_of(&response, "jobcenter"), SourceStatus::Ok);
    let records = gateway.audit_records_of(&request_id);
    assert_eq!(records.len(), 1, "{records:?}");
    let text = log.text();
    assert!(!text.contains(cpr), "the CPR number is in the log:\n{text}");
    assert!(
        !text.contains(BLABBING_MESSAGE),
        "a source's message is in the log:\n{text}"
    );
    for (id, code, status, recorded) in blabbers {
        assert_eq!(status_of(&response, id), status, "{id}");
        let entry = records[0].sources.iter().find(|s| s.source_id == id);
        assert_eq!(entry.map(|s| s.status.as_str()), Some(recorded), "{id}");
        // The log says which source failed, and how: its status code.
        assert!(
            text.lines().any(|l| l.contains("source lookup failed")
                && l.contains(&format!("source={id} "))
                && l.contains(&format!("{code:?}"))),
            "no failure logged for {id} in:\n{text}"
        );
    }
}

/// A department whose circuit opens shows as NOT_SERVING under its own health name, while the
/// gateway as a whole, and every other department, stays SERVING.
#[tokio::test]
async fn an_open_circuit_is_visible_in_health_and_the_gateway_stays_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    let failing = start_source(Arc::new(Failing {
        error: samblik_adapters::SourceError::Unavailable(samblik_adapters::Cause::Fixed("down")),
    }))
    .await;
    let gateway = TestGateway::over(&[
        SourceSpec::at("jobcenter", jobcenter.addr),
        SourceSpec::at("failing", failing.addr),
    ])
    .adjust(|c| {
        for s in &mut c.sources {
            s.breaker_failures = 2;
        }
    })
    .start()
    .await;
    let mut health = HealthClient::new(gateway.channel().await);
    let check = async |health: &mut HealthClient<_>, service: &str| {
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    let name = samblik_gateway::server::source_health_name("failing");
    assert_eq!(
        check(&mut health, &name).await,
        ServingStatus::Serving as i32
    );
    let mut watch = health
        .watch(HealthCheckRequest {
            service: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let mut client = gateway.client().await;
    let token = token(Department::Jobcenter);
    for _ in 0..2 {
        let response = client
            .lookup(request(
                all_department_citizen(),
                Purpose::PrepareMeeting,
                Some(&token),
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status_of(&response, "failing"), SourceStatus::Unavailable);
    }
    let changed = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the health service reported the open circuit")
        .unwrap()
        .unwrap();
    assert_eq!(changed.status, ServingStatus::NotServing as i32);
    assert_eq!(check(&mut health, "").await, ServingStatus::Serving as i32);
    let jobcenter_name = samblik_gateway::server::source_health_name("jobcenter");
    assert_eq!(
        check(&mut health, &jobcenter_name).await,
        ServingStatus::Serving as i32
    );
}

/// The budget the source `id` was given, through the gateway, for one lookup with the caller's
/// `deadline` (the gateway keeps 250 ms of it back to answer in).
async fn budget_given(spec: impl FnOnce(SocketAddr) -> SourceSpec, deadline: Duration) -> Duration {
    let budgets = Arc::new(Recording::<Budget>::new(Arc::new(Scripted {
        cases: Vec::new(),
    })));
    let server = start_source(budgets.clone()).await;
    lookup_with(spec(server.addr), Some(deadline)).await;
    match budgets.seen()[..] {
        [Budget(Some(budget))] => budget,
        ref seen => panic!("the source was given {seen:?}"),
    }
}

#[tokio::test]
async fn a_remote_source_is_sent_what_is_left_of_the_lookups_deadline() {
    let budget = budget_given(
        |addr| SourceSpec::at("scripted", addr),
        Duration::from_secs(1),
    )
    .await;
    // 1 s from the caller, less the answer margin: the lookup's deadline is 750 ms away.
    assert!(
        budget > Duration::ZERO && budget <= Duration::from_millis(750),
        "the source was given {budget:?}"
    );
}

#[tokio::test]
async fn a_remote_source_is_sent_its_own_timeout_when_that_is_shorter() {
    let budget = budget_given(
        |addr| SourceSpec::at("scripted", addr).timeout_ms(200),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        budget > Duration::ZERO && budget <= Duration::from_millis(200),
        "the source was given {budget:?}"
    );
}

/// A source service client over one HTTP/2 connection of its own. Unlike tonic's channel it does
/// not enforce the `grpc-timeout` it sends, and it keeps the connection open: a call ends only
/// when the server ends it.
type Patient = tower::util::BoxCloneService<
    hyper::Request<tonic::body::Body>,
    hyper::Response<hyper::body::Incoming>,
    hyper::Error,
>;

async fn patient_client(addr: SocketAddr) -> SourceServiceClient<Patient> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let service = tower::service_fn(move |request| {
        let mut sender = sender.clone();
        async move { sender.send_request(request).await }
    });
    SourceServiceClient::with_origin(
        tower::util::BoxCloneService::new(service),
        format!("http://{addr}").parse().unwrap(),
    )
}

fn find_cases(grpc_timeout: Option<&'static str>) -> tonic::Request<FindCasesRequest> {
    let mut request = tonic::Request::new(FindCasesRequest {
        cpr: all_department_citizen().to_owned(),
        max_tier: Tier::Existence as i32,
        caller: None,
    });
    if let Some(value) = grpc_timeout {
        request
            .metadata_mut()
            .insert("grpc-timeout", value.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn the_source_server_drops_a_lookup_at_its_grpc_timeout_and_answers_deadline_exceeded() {
    let hanging = Arc::new(Hanging::default());
    let budgets = Arc::new(Recording::<Budget>::new(hanging.clone()));
    let server = start_source(budgets.clone()).await;
    let mut client = patient_client(server.addr).await;
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        client.find_cases(find_cases(Some("300m"))),
    )
    .await
    .expect("the source server answered")
    .unwrap_err();
    let elapsed = started.elapsed();
    // The server's own answer (tonic's timer would have said CANCELLED), at the deadline.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(2_000),
        "answered after {elapsed:?}"
    );
    // The work was dropped before the answer left, and the source knew its budget.
    assert_eq!(hanging.started.load(Ordering::SeqCst), 1);
    assert_eq!(hanging.cancelled.load(Ordering::SeqCst), 1);
    match budgets.seen()[..] {
        [Budget(Some(budget))] => assert!(
            budget > Duration::ZERO && budget <= Duration::from_millis(300),
            "{budget:?}"
        ),
        ref seen => panic!("the source was given {seen:?}"),
    }
}

#[tokio::test]
async fn the_source_server_serves_a_lookup_without_or_with_a_senseless_grpc_timeout() {
    let cpr = all_department_citizen();
    let budgets = Arc::new(Recording::<Budget>::new(Arc::new(Scripted {
        cases: vec![case("MINE-1", cpr, Tier::Existence)],
    })));
    let server = start_source(budgets.clone()).await;
    let mut client = patient_client(server.addr).await;
    for grpc_timeout in [None, Some("soon"), Some("99999999H")] {
        let answer = client
            .find_cases(find_cases(grpc_timeout))
            .await
            .unwrap_or_else(|s| panic!("{grpc_timeout:?}: {s:?}"))
            .into_inner();
        assert_eq!(answer.cases.len(), 1, "{grpc_timeout:?}");
    }
    // No deadline, an unreadable one ignored, an absurd one capped.
    match budgets.seen()[..] {
        [Budget(None), Budget(None), Budget(Some(capped))] => assert!(
            capped <= samblik_adapters::MAX_GRPC_TIMEOUT
                && capped > samblik_adapters::MAX_GRPC_TIMEOUT - Duration::from_secs(60),
            "{capped:?}"
        ),
        ref seen => panic!("the source was given {seen:?}"),
    }
}
