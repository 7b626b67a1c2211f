//! Every lookup leaves an audit record — answered, refused or abandoned — and no answer leaves
//! before its record is durable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::testing::FaultInjecting;
use samblik_audit::{Action, Outcome};
use samblik_proto::v1::{Purpose, SourceStatus};
use samblik_synth::Department;
use samblik_tests::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn an_answered_lookup_records_who_looked_at_whom_and_exactly_what_was_disclosed() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let dashed = format!("{}-{}", &cpr[..6], &cpr[6..]);
    let token = token(Department::Jobcenter);
    let response = m
        .gateway
        .client()
        .await
        .lookup(request(&dashed, Purpose::FollowUp, Some(&token), None))
        .await
        .unwrap();
    let id = request_id_of(response.metadata());
    let answer = response.into_inner();
    let records = m.gateway.audit_records_of(&id);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.action, Action::Lookup);
    assert_eq!(r.outcome, Outcome::Answered);
    assert_eq!(
        r.cpr.as_ref().map(samblik_proto::Cpr::as_str),
        Some(cpr),
        "the CPR is stored normalised"
    );
    assert_eq!(r.purpose.as_deref(), Some("follow-up"));
    let worker = caseworker(Department::Jobcenter);
    assert_eq!(
        (r.actor.caller_id.as_str(), r.actor.department.as_str()),
        (worker.id.as_str(), "jobcenter")
    );
    // The policy's hash, the same one the audit writer recorded when it started.
    assert!(
        r.policy_version.starts_with("sha256:"),
        "{}",
        r.policy_version
    );
    let started = &m.gateway.audit_records()[0];
    assert_eq!(r.policy_version, started.policy_version);
    assert_eq!(r.sources.len(), Department::ALL.len());
    let mut addresses = 0;
    for (entry, result) in r.sources.iter().zip(&answer.sources) {
        assert_eq!(entry.source_id, result.source_id);
        assert_eq!(entry.status, "ok");
        let ids: Vec<&str> = entry.cases.iter().map(|c| c.case_id.as_str()).collect();
        let sent: Vec<&str> = result.cases.iter().map(|c| c.case_id.as_str()).collect();
        assert_eq!(ids, sent);
        // Every part of `Selected` that left is named, the address too.
        for (recorded, case) in entry.cases.iter().zip(&result.cases) {
            let Some(s) = &case.selected else { continue };
            for (sent, path) in [
                (!s.interventions.is_empty(), "selected.interventions"),
                (!s.situation.is_empty(), "selected.situation"),
                (!s.goals.is_empty(), "selected.goals"),
                (
                    !s.next_follow_up_on.is_empty(),
                    "selected.next_follow_up_on",
                ),
                (
                    !s.assessment_summary.is_empty(),
                    "selected.assessment_summary",
                ),
                (!s.residence.is_empty(), "selected.residence"),
            ] {
                assert_eq!(
                    recorded.fields.iter().any(|f| f == path),
                    sent,
                    "{path} in {:?}",
                    recorded.fields
                );
            }
            addresses += usize::from(!s.residence.is_empty());
        }
        if entry.source_id == "jobcenter" {
            // The caller's own department: in full, and every disclosed field is named.
            for case in &entry.cases {
                assert_eq!(case.tier, 3);
                assert_eq!(case.basis.as_deref(), Some("own-department"));
                assert!(case.fields.iter().any(|f| f.starts_with("full.documents[")));
            }
            continue;
        }
        for case in &entry.cases {
            assert_eq!(case.tier, 1);
            assert_eq!(case.basis.as_deref(), Some("statute:existence-and-contact"));
            assert!(!case.rule_ids.is_empty());
            assert!(
                case.fields
                    .iter()
                    .any(|f| f == "existence.responsible.phone"),
                "{:?}",
                case.fields
            );
            assert!(
                case.fields.iter().all(|f| f.starts_with("existence.")),
                "{:?}",
                case.fields
            );
        }
    }
    assert!(addresses > 0, "no address was disclosed to check");
}

#[test]
fn a_gateway_given_another_key_than_its_stores_is_refused_at_start_up() {
    let (config, _dir) = with_own_audit(gateway_config(&[], 1_000));
    // A first start signs the store's checkpoints (its clean stop, at least) with a new key.
    samblik_gateway::server::open_audit_log(&config.audit, "v1")
        .unwrap()
        .close();
    // Another replica's key put in its place.
    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("other.key");
    samblik_audit::CheckpointSigner::load_or_create(&other_key).unwrap();
    std::fs::copy(&other_key, &config.audit.signing_key_file).unwrap();
    let err = samblik_gateway::server::open_audit_log(&config.audit, "v1").unwrap_err();
    assert!(
        err.to_string()
            .contains("does not sign the audit store's checkpoints"),
        "{err}"
    );
}

#[tokio::test]
async fn refusals_are_recorded_too() {
    let m = start_municipal().await;
    let mut client = m.gateway.client().await;
    let cpr = all_department_citizen();
    let token = token(Department::ChildWelfare);

    let no_token = client
        .lookup(request(cpr, Purpose::PrepareMeeting, None, None))
        .await
        .unwrap_err();
    let bad_cpr = client
        .lookup(request(
            "3002901234",
            Purpose::PrepareMeeting,
            Some(&token),
            None,
        ))
        .await
        .unwrap_err();
    let no_purpose = client
        .lookup(request(cpr, Purpose::Unspecified, Some(&token), None))
        .await
        .unwrap_err();

    let r = &m
        .gateway
        .audit_records_of(&request_id_of(no_token.metadata()))[0];
    assert_eq!(r.outcome, Outcome::Unauthenticated);
    assert!(r.actor.caller_id.is_empty() && r.cpr.is_none());

    let r = &m
        .gateway
        .audit_records_of(&request_id_of(bad_cpr.metadata()))[0];
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(r.actor.caller_id, caseworker(Department::ChildWelfare).id);
    assert!(r.cpr.is_none(), "an invalid CPR is not a CPR");

    let r = &m
        .gateway
        .audit_records_of(&request_id_of(no_purpose.metadata()))[0];
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(r.cpr.as_ref().map(samblik_proto::Cpr::as_str), Some(cpr));
    assert!(r.sources.is_empty());
}

#[tokio::test]
async fn a_lookup_abandoned_by_its_caller_is_recorded_as_cancelled() {
    let hanging = Arc::new(Hanging::default());
    let server = start_source(hanging.clone()).await;
    let gateway = TestGateway::over(&[SourceSpec::at("hanging", server.addr)])
        .deadline_ms(5_000)
        .start()
        .await;
    let mut client = gateway.client().await;
    let token = token(Department::Jobcenter);
    let cpr = all_department_citizen().to_owned();
    let call = tokio::spawn(async move {
        // No source of the caller's department here: only breaking the glass gets through.
        let mut req = request(&cpr, Purpose::PrepareMeeting, Some(&token), None);
        req.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
        client.lookup(req).await
    });
    assert!(
        eventually(Duration::from_secs(5), || hanging
            .started
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    call.abort();
    let cancelled = || {
        gateway.audit_records().iter().any(|r| {
            r.outcome == Outcome::Cancelled
                && r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(all_department_citizen())
        })
    };
    assert!(
        eventually(Duration::from_secs(5), cancelled).await,
        "no cancellation record"
    );
}

#[tokio::test]
async fn a_streamed_lookup_records_each_part_before_sending_it() {
    let m = start_municipal().await;
    let token = token(Department::Integration);
    let response = m
        .gateway
        .client()
        .await
        .lookup_stream(request(
            all_department_citizen(),
            Purpose::DraftPlan,
            Some(&token),
            None,
        ))
        .await
        .unwrap();
    let id = request_id_of(response.metadata());
    let mut stream = response.into_inner();
    let mut sent = Vec::new();
    while let Some(part) = stream.message().await.unwrap() {
        // The part's record is durable before the part arrives.
        let recorded: Vec<String> = m
            .gateway
            .audit_records_of(&id)
            .iter()
            .flat_map(|r| r.sources.iter().map(|s| s.source_id.clone()))
            .collect();
        assert!(
            recorded.contains(&part.source_id),
            "{} sent before recorded",
            part.source_id
        );
        sent.push(part.source_id);
    }
    let records = m.gateway.audit_records_of(&id);
    assert_eq!(records.len(), Department::ALL.len());
    assert!(
        records
            .iter()
            .all(|r| r.action == Action::LookupStream && r.outcome == Outcome::Answered)
    );
    assert_eq!(sent.len(), Department::ALL.len());
}

/// Not protobuf at all: a varint that never ends.
const NOT_PROTOBUF: [u8; 16] = [0xff; 16];

#[tokio::test]
async fn a_lookup_that_is_not_protobuf_is_refused_and_recorded_unread() {
    // The source is never asked: the request is refused before any handler reads it.
    let jobcenter = SourceSpec::at("jobcenter", dead_address().await);
    let gateway = TestGateway::over(&[jobcenter])
        .deadline_ms(3_000)
        .start()
        .await;
    let token = token(Department::Jobcenter);
    let status = raw_unary(
        gateway.channel().await,
        "/samblik.v1.LookupService/Lookup",
        NOT_PROTOBUF.to_vec(),
        Some(&token),
    )
    .await
    .unwrap_err();
    // Not tonic's INTERNAL: the caller sent something wrong, not the gateway.
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let id = request_id_of(status.metadata());

    let detail = the_unread_lookup(gateway.audit_records(), &id);
    assert!(detail.contains("could not be read"), "{detail}");
    assert!(!detail.contains(&token));

    // Without a token it is recorded all the same, naming nobody.
    let status = raw_unary(
        gateway.channel().await,
        "/samblik.v1.PolicyService/Explain",
        NOT_PROTOBUF.to_vec(),
        None,
    )
    .await
    .unwrap_err();
    let records = gateway.audit_records_of(&request_id_of(status.metadata()));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].action, Action::PolicyExplained);
    assert_eq!(records[0].outcome, Outcome::Invalid);
    assert!(records[0].actor.caller_id.is_empty());
}

#[tokio::test]
async fn an_unread_request_that_cannot_be_recorded_is_unavailable() {
    let mut failing = None;
    let jobcenter = SourceSpec::at("jobcenter", dead_address().await);
    let gateway = TestGateway::over(&[jobcenter])
        .audited_by(|path, keys| {
            let store =
                FaultInjecting::new(SqliteStore::open(path, Durability::Full, keys).unwrap());
            failing = Some(Arc::clone(&store.failing));
            Box::new(store)
        })
        .start()
        .await;
    failing.unwrap().store(true, Ordering::SeqCst);
    let status = raw_unary(
        gateway.channel().await,
        "/samblik.v1.LookupService/Lookup",
        NOT_PROTOBUF.to_vec(),
        Some(&token(Department::Jobcenter)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    request_id_of(status.metadata());
}

#[tokio::test]
async fn when_the_audit_store_fails_nothing_is_disclosed_health_says_so_and_it_recovers() {
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    let mut failing = None;
    let gateway = TestGateway::over(&[SourceSpec::at("jobcenter", jobcenter.addr)])
        .audited_by(|path, keys| {
            let store =
                FaultInjecting::new(SqliteStore::open(path, Durability::Full, keys).unwrap());
            failing = Some(Arc::clone(&store.failing));
            Box::new(store)
        })
        .start()
        .await;
    let failing = failing.unwrap();
    let mut client = gateway.client().await;
    let mut health = HealthClient::new(gateway.channel().await);
    let serving = |h: &mut HealthClient<_>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "samblik.v1.LookupService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    let token = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    assert_eq!(serving(&mut health).await, ServingStatus::Serving as i32);

    failing.store(true, Ordering::SeqCst);
    let status = client
        .lookup(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains(cpr));
    let status = client
        .lookup_stream(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
        .await
        .map(|_| ())
        .err();
    // The stream is refused outright or ends with UNAVAILABLE before any part: never a part.
    if status.is_none() {
        let mut stream = client
            .lookup_stream(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stream.message().await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    let mut last = 0;
    for _ in 0..100 {
        last = serving(&mut health).await;
        if last == ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, ServingStatus::NotServing as i32);

    // The store heals; no lookup comes (a load balancer sends none to an unhealthy gateway):
    // the writer's own retry finds it, records the recovery, and health turns back on.
    failing.store(false, Ordering::SeqCst);
    let mut last = 0;
    for _ in 0..500 {
        last = serving(&mut health).await;
        if last == ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, ServingStatus::Serving as i32);
    let recovered: Vec<_> = gateway
        .audit_records()
        .into_iter()
        .filter(|r| {
            samblik_audit::Maintenance::of(r) == Some(samblik_audit::Maintenance::StoreRecovered)
        })
        .collect();
    assert_eq!(recovered.len(), 1, "the recovery is recorded once");
    let answer = client
        .lookup(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.sources[0].status(), SourceStatus::Ok);
}

/// A consent withdrawal whose record could not be confirmed durable (its fsync failed) is in the
/// store all the same: the next lookup must not go on using the consent from memory.
#[tokio::test]
async fn a_withdrawal_that_failed_to_confirm_still_ends_the_consent_for_the_next_lookup() {
    use samblik_proto::v1::consent_service_client::ConsentServiceClient;
    use samblik_proto::v1::{
        Consent, ConsentKind, RecordConsentRequest, Tier, WithdrawConsentRequest,
    };
    let mut specs = Vec::new();
    let mut running = Vec::new();
    for department in [Department::Jobcenter, Department::ChildWelfare] {
        let source = start_source(reference(department)).await;
        let mut spec = SourceSpec::at(department.id(), source.addr);
        spec.department = department.display_name().to_owned();
        specs.push(spec);
        running.push(source);
    }
    let mut unconfirmed = None;
    let gateway = TestGateway::over(&specs)
        .audited_by(|path, keys| {
            let store =
                FaultInjecting::new(SqliteStore::open(path, Durability::Full, keys).unwrap());
            unconfirmed = Some(Arc::clone(&store.changes_unconfirmed));
            Box::new(store)
        })
        .start()
        .await;
    let unconfirmed = unconfirmed.unwrap();
    let token = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    let mut consents = ConsentServiceClient::new(gateway.channel().await);
    let child_welfare_tiers = || async {
        let answer = gateway
            .client()
            .await
            .lookup(request(cpr, Purpose::PrepareMeeting, Some(&token), None))
            .await
            .unwrap()
            .into_inner();
        let source = answer
            .sources
            .iter()
            .find(|s| s.source_id == Department::ChildWelfare.id())
            .unwrap();
        assert!(!source.cases.is_empty());
        source.cases.iter().map(|c| c.tier()).collect::<Vec<_>>()
    };

    let recorded = consents
        .record_consent(authed(
            RecordConsentRequest {
                cpr: cpr.into(),
                consent: Some(Consent {
                    kind: ConsentKind::Permit as i32,
                    from_departments: vec![Department::ChildWelfare.id().into()],
                    to_departments: vec![Department::Jobcenter.id().into()],
                    max_tier: Tier::Selected as i32,
                    purposes: vec![Purpose::PrepareMeeting as i32],
                    document_ref: "SBSYS 27.12.04-G01-3-26 dok. 14".into(),
                    ..Consent::default()
                }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let consent_id = recorded.consent.unwrap().consent_id;
    assert!(
        child_welfare_tiers()
            .await
            .iter()
            .all(|t| *t == Tier::Selected)
    );

    unconfirmed.store(true, Ordering::SeqCst);
    let status = consents
        .withdraw_consent(authed(
            WithdrawConsentRequest {
                cpr: cpr.into(),
                consent_id: consent_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    unconfirmed.store(false, Ordering::SeqCst);

    assert!(
        child_welfare_tiers()
            .await
            .iter()
            .all(|t| *t == Tier::Existence),
        "the withdrawn consent is still used"
    );
}
