//! The disclosure policy end to end: relation, break-the-glass, consent (recorded, withdrawn,
//! refused), access requests decided by the owning department, sensitivity and field sets —
//! through the real gateway, real sources and the audit store, over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::{Action, Outcome};
use samblik_gateway::config::Config;
use samblik_proto::v1::access_request_service_client::AccessRequestServiceClient;
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::consent_service_client::ConsentServiceClient;
use samblik_proto::v1::{
    AccessRequest, AuditFilter, Case, CaseType, Consent, ConsentKind, DecideAccessRequest,
    Existence, FileAccessRequest, ListAccessRequests, ListConsentsRequest, LookupResponse,
    MyAccessLogRequest, Purpose, RecordConsentRequest, RequestState, RequestView,
    SearchAuditRequest, Selected, SourceResult, SourceStatus, Tier, WithdrawConsentRequest,
};
use samblik_synth::Department;
use samblik_tests::*;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::Code;
use tonic::transport::Channel;

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap(),
        nanos: 0,
    }
}

/// A consent from the citizen to share child welfare's data with the jobcenter.
fn child_welfare_to_jobcenter(tier: Tier) -> Consent {
    Consent {
        kind: ConsentKind::Permit as i32,
        from_departments: vec!["child-welfare".into()],
        to_departments: vec!["jobcenter".into()],
        max_tier: tier as i32,
        purposes: vec![Purpose::PrepareMeeting as i32],
        document_ref: "SBSYS 27.12.04-G01-3-26 dok. 14".into(),
        ..Consent::default()
    }
}

async fn record(
    channel: &Channel,
    token: &str,
    cpr: &str,
    consent: Consent,
) -> Result<samblik_proto::v1::ConsentRecord, tonic::Status> {
    ConsentServiceClient::new(channel.clone())
        .record_consent(authed(
            RecordConsentRequest {
                cpr: cpr.into(),
                consent: Some(consent),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn withdraw(
    channel: &Channel,
    token: &str,
    cpr: &str,
    consent_id: &str,
) -> Result<samblik_proto::v1::ConsentRecord, tonic::Status> {
    ConsentServiceClient::new(channel.clone())
        .withdraw_consent(authed(
            WithdrawConsentRequest {
                cpr: cpr.into(),
                consent_id: consent_id.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn consents(
    channel: &Channel,
    token: &str,
    cpr: &str,
) -> Result<Vec<samblik_proto::v1::ConsentRecord>, tonic::Status> {
    ConsentServiceClient::new(channel.clone())
        .list_consents(authed(ListConsentsRequest { cpr: cpr.into() }, token))
        .await
        .map(|r| r.into_inner().consents)
}

async fn look(gateway: &RunningGateway, token: &str, cpr: &str) -> LookupResponse {
    gateway
        .client()
        .await
        .lookup(request(cpr, Purpose::PrepareMeeting, Some(token), None))
        .await
        .unwrap()
        .into_inner()
}

fn source<'a>(response: &'a LookupResponse, id: &str) -> &'a SourceResult {
    response.sources.iter().find(|s| s.source_id == id).unwrap()
}

fn tiers(result: &SourceResult) -> Vec<Tier> {
    result.cases.iter().map(Case::tier).collect()
}

#[tokio::test]
async fn consent_lifts_other_departments_to_tier_2_and_withdrawal_drops_them_on_the_next_call() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let jobcenter = token(Department::Jobcenter);
    let channel = m.gateway.channel().await;

    // Without consent: child welfare's cases at tier 1, saying what is withheld.
    let before = look(&m.gateway, &jobcenter, cpr).await;
    let cw = source(&before, "child-welfare");
    assert!(!cw.cases.is_empty());
    assert!(tiers(cw).iter().all(|t| *t == Tier::Existence));

    // The citizen consents to tier 2 (interventions, goals) for meetings.
    let recorded = record(
        &channel,
        &jobcenter,
        cpr,
        child_welfare_to_jobcenter(Tier::Selected),
    )
    .await
    .unwrap();
    assert!(recorded.active);
    let consent_id = recorded.consent.unwrap().consent_id;
    let with_consent = look(&m.gateway, &jobcenter, cpr).await;
    let cw = source(&with_consent, "child-welfare");
    for case in &cw.cases {
        assert_eq!(case.tier(), Tier::Selected);
        let selected = case.selected.as_ref().unwrap();
        assert!(!selected.interventions.is_empty() || !selected.goals.is_empty());
        assert!(case.full.is_none());
        let disclosure = case.disclosure.as_ref().unwrap();
        assert_eq!(
            (disclosure.basis.as_str(), disclosure.basis_id.as_str()),
            ("consent", consent_id.as_str())
        );
        assert_eq!(disclosure.withheld[0].part, "full");
    }
    // Consent is purpose-bound: for drafting a plan it does not apply.
    let other_purpose = m
        .gateway
        .client()
        .await
        .lookup(request(cpr, Purpose::DraftPlan, Some(&jobcenter), None))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tiers(source(&other_purpose, "child-welfare"))
            .iter()
            .all(|t| *t == Tier::Existence)
    );
    // Integration was not named in the consent: still tier 1.
    assert!(
        tiers(source(&with_consent, "integration"))
            .iter()
            .all(|t| *t == Tier::Existence)
    );

    // Withdrawn: the very next lookup is back at tier 1.
    let withdrawn = withdraw(&channel, &jobcenter, cpr, &consent_id)
        .await
        .unwrap();
    assert!(!withdrawn.active && withdrawn.withdrawn_at.is_some());
    let after = look(&m.gateway, &jobcenter, cpr).await;
    assert!(
        tiers(source(&after, "child-welfare"))
            .iter()
            .all(|t| *t == Tier::Existence)
    );
    // Withdrawing twice changes nothing and says so.
    let again = withdraw(&channel, &jobcenter, cpr, &consent_id)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The registry lists it, and every change is in the audit log.
    let listed = consents(&channel, &jobcenter, cpr).await.unwrap();
    assert_eq!(listed.len(), 1);
    let records = m.gateway.audit_records();
    let changes: Vec<(Action, Outcome)> = records
        .iter()
        .filter(|r| r.change.is_some() && r.action != Action::AuditMaintenance)
        .map(|r| (r.action, r.outcome))
        .collect();
    assert_eq!(
        changes,
        [
            (Action::ConsentRecorded, Outcome::Answered),
            (Action::ConsentWithdrawn, Outcome::Answered),
            (Action::ConsentWithdrawn, Outcome::Refused),
        ]
    );
    assert!(records.iter().any(|r| r.action == Action::ConsentsListed
        && r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(cpr)));
}

#[tokio::test]
async fn a_negative_consent_hides_the_department_without_a_trace() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let jobcenter = token(Department::Jobcenter);
    let channel = m.gateway.channel().await;
    record(
        &channel,
        &jobcenter,
        cpr,
        child_welfare_to_jobcenter(Tier::Full),
    )
    .await
    .unwrap();
    let refusal = Consent {
        kind: ConsentKind::Refuse as i32,
        max_tier: 0,
        purposes: Vec::new(),
        ..child_welfare_to_jobcenter(Tier::Existence)
    };
    record(&channel, &jobcenter, cpr, refusal).await.unwrap();
    let answer = look(&m.gateway, &jobcenter, cpr).await;
    let cw = source(&answer, "child-welfare");
    // The source answered; its cases are simply not there — no count, no placeholder.
    assert!(cw.cases.is_empty() && cw.detail.is_empty() && cw.as_of.is_some());
    assert!(!source(&answer, "integration").cases.is_empty());
}

#[tokio::test]
async fn without_a_relation_the_lookup_is_denied_and_break_the_glass_gets_tier_1_marked_for_review()
{
    let m = start_municipal().await;
    // A child-welfare caseworker and a citizen child welfare has no case for.
    let cpr = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|cpr| {
            let d = departments_of(cpr);
            d.contains(&Department::Jobcenter) && !d.contains(&Department::ChildWelfare)
        })
        .unwrap();
    let child_welfare = token(Department::ChildWelfare);
    let mut client = m.gateway.client().await;
    let denied = client
        .lookup(request(
            cpr,
            Purpose::PrepareMeeting,
            Some(&child_welfare),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(!denied.message().contains(cpr));

    // A reason that says nothing is refused.
    let mut short = request(cpr, Purpose::PrepareMeeting, Some(&child_welfare), None);
    short.get_mut().break_glass_reason = "urgent".into();
    assert_eq!(
        client.lookup(short).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let mut glass = request(cpr, Purpose::PrepareMeeting, Some(&child_welfare), None);
    glass.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
    let response = client.lookup(glass).await.unwrap();
    let request_id = request_id_of(response.metadata());
    let answer = response.into_inner();
    let jc = source(&answer, "jobcenter");
    assert!(!jc.cases.is_empty());
    for case in &jc.cases {
        assert_eq!(case.tier(), Tier::Existence);
        let d = case.disclosure.as_ref().unwrap();
        assert_eq!(d.basis, "break-the-glass");
        assert_eq!(d.withheld[0].code, "break-the-glass-cap");
    }
    // The records: the denial, and the break-the-glass lookup with its reason (the review mark).
    let records = m.gateway.audit_records();
    assert!(records.iter().any(|r| r.outcome == Outcome::Denied
        && r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(cpr)));
    let glass = &m.gateway.audit_records_of(&request_id)[0];
    assert_eq!(
        glass.break_glass_reason.as_deref(),
        Some(BREAK_GLASS_REASON)
    );
    assert!(
        glass
            .sources
            .iter()
            .flat_map(|s| &s.cases)
            .all(|c| c.tier == 1)
    );
}

async fn file(
    channel: &Channel,
    token: &str,
    cpr: &str,
    case_id: &str,
    tier: Tier,
) -> Result<AccessRequest, tonic::Status> {
    AccessRequestServiceClient::new(channel.clone())
        .file_request(authed(
            FileAccessRequest {
                cpr: cpr.into(),
                source_id: "child-welfare".into(),
                case_id: case_id.into(),
                tier_wanted: tier as i32,
                purpose: Purpose::PrepareMeeting as i32,
                justification: "Skal koordinere praktikforløb med familiens indsatser".into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn decide(
    channel: &Channel,
    token: &str,
    request_id: &str,
    approve: bool,
    tier: Tier,
    until: SystemTime,
) -> Result<AccessRequest, tonic::Status> {
    AccessRequestServiceClient::new(channel.clone())
        .decide_request(authed(
            DecideAccessRequest {
                request_id: request_id.into(),
                approve,
                tier: tier as i32,
                until: Some(timestamp(until)),
                reason: "Nødvendigt for koordinering".into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_access_request_approved_by_the_owning_department_lifts_exactly_that_case_until_it_expires()
 {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let jobcenter = token(Department::Jobcenter);
    let child_welfare = token(Department::ChildWelfare);
    let integration = token(Department::Integration);
    let channel = m.gateway.channel().await;
    let before = look(&m.gateway, &jobcenter, cpr).await;
    let cw_cases: Vec<String> = source(&before, "child-welfare")
        .cases
        .iter()
        .map(|c| c.case_id.clone())
        .collect();
    let wanted = cw_cases[0].clone();

    // Bad requests change nothing.
    assert_eq!(
        file(&channel, &jobcenter, cpr, &wanted, Tier::Hidden)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let filed = file(&channel, &jobcenter, cpr, &wanted, Tier::Selected)
        .await
        .unwrap();
    assert_eq!(filed.state(), RequestState::Pending);
    assert_eq!(filed.owner_department, "child-welfare");

    // The owning department's inbox holds it; the requester's department cannot decide it.
    let inbox = AccessRequestServiceClient::new(channel.clone())
        .list_requests(authed(
            ListAccessRequests {
                view: RequestView::Inbox as i32,
                state: RequestState::Pending as i32,
            },
            &child_welfare,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        inbox
            .requests
            .iter()
            .any(|r| r.request_id == filed.request_id)
    );
    let soon = SystemTime::now() + Duration::from_secs(4);
    let outsider = decide(
        &channel,
        &integration,
        &filed.request_id,
        true,
        Tier::Selected,
        soon,
    )
    .await
    .unwrap_err();
    assert_eq!(outsider.code(), Code::PermissionDenied);
    // More than was asked for cannot be granted.
    let too_much = decide(
        &channel,
        &child_welfare,
        &filed.request_id,
        true,
        Tier::Full,
        soon,
    )
    .await
    .unwrap_err();
    assert_eq!(too_much.code(), Code::InvalidArgument);

    let approved = decide(
        &channel,
        &child_welfare,
        &filed.request_id,
        true,
        Tier::Selected,
        soon,
    )
    .await
    .unwrap();
    assert_eq!(approved.state(), RequestState::Approved);
    assert_eq!(approved.granted_tier(), Tier::Selected);
    // Deciding again is refused.
    let twice = decide(
        &channel,
        &child_welfare,
        &filed.request_id,
        false,
        Tier::Selected,
        soon,
    )
    .await
    .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);

    // Exactly that case is lifted, on the grant; the others stay at tier 1.
    let lifted = look(&m.gateway, &jobcenter, cpr).await;
    for case in &source(&lifted, "child-welfare").cases {
        let d = case.disclosure.as_ref().unwrap();
        if case.case_id == wanted {
            assert_eq!(case.tier(), Tier::Selected);
            assert_eq!(
                (d.basis.as_str(), d.basis_id.as_str()),
                ("grant", filed.request_id.as_str())
            );
        } else {
            assert_eq!(case.tier(), Tier::Existence);
        }
    }
    // Only for the caller it was granted to: another jobcenter caller would need their own.
    // And it expires: once past its end, the case is back at tier 1.
    let gateway = &m.gateway;
    let mut expired = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let now = look(gateway, &jobcenter, cpr).await;
        let case = source(&now, "child-welfare")
            .cases
            .iter()
            .find(|c| c.case_id == wanted)
            .unwrap()
            .clone();
        if case.tier() == Tier::Existence {
            expired = true;
            break;
        }
        assert!(
            SystemTime::now() < soon + Duration::from_secs(1),
            "the grant outlived its end"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(expired, "the grant never expired");
    // (The end travels in whole seconds.)
    assert!(
        SystemTime::now() + Duration::from_secs(1) >= soon,
        "expired early"
    );

    let decided: Vec<(Action, Outcome)> = m
        .gateway
        .audit_records()
        .iter()
        .filter(|r| r.change.is_some() && r.action != Action::AuditMaintenance)
        .map(|r| (r.action, r.outcome))
        .collect();
    assert_eq!(
        decided,
        [
            (Action::AccessRequested, Outcome::Answered),
            (Action::AccessDecided, Outcome::Denied),
            (Action::AccessDecided, Outcome::Answered),
            (Action::AccessDecided, Outcome::Refused),
        ]
    );
}

#[tokio::test]
async fn bad_consents_are_refused_and_change_nothing() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let jobcenter = token(Department::Jobcenter);
    let channel = m.gateway.channel().await;
    let now = SystemTime::now();
    let backwards = Consent {
        valid_from: Some(timestamp(now)),
        valid_until: Some(timestamp(now - Duration::from_secs(3600))),
        ..child_welfare_to_jobcenter(Tier::Selected)
    };
    let tier_4 = Consent {
        max_tier: 4,
        ..child_welfare_to_jobcenter(Tier::Selected)
    };
    let no_purpose = Consent {
        purposes: vec![0],
        ..child_welfare_to_jobcenter(Tier::Selected)
    };
    let no_document = Consent {
        document_ref: " ".into(),
        ..child_welfare_to_jobcenter(Tier::Selected)
    };
    for bad in [backwards, tier_4, no_purpose, no_document] {
        let status = record(&channel, &jobcenter, cpr, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let listed = consents(&channel, &jobcenter, cpr).await.unwrap();
    assert!(listed.is_empty());
    assert!(
        m.gateway
            .audit_records()
            .iter()
            .all(|r| r.change.is_none() || r.action == Action::AuditMaintenance)
    );
    let refused = m
        .gateway
        .audit_records()
        .iter()
        .filter(|r| r.action == Action::ConsentRecorded && r.outcome == Outcome::Invalid)
        .count();
    assert_eq!(refused, 4);
}

/// A child-welfare source's case of a citizen with address protection, and an adult-social
/// source's honour-related-conflict (SL § 12 a) case.
fn sensitive_cases(cpr: &str) -> (Vec<Case>, Vec<Case>) {
    let case = |id: &str, code: &str, flags: &[&str]| Case {
        case_id: id.into(),
        subject_cpr: cpr.into(),
        tier: Tier::Full as i32,
        existence: Some(Existence {
            case_type: Some(CaseType {
                code: code.into(),
                name: code.into(),
                legal_paragraph: format!("Serviceloven {code}"),
            }),
            state: samblik_proto::v1::CaseState::Open as i32,
            opened_on: "2026-01-05".into(),
            ..Existence::default()
        }),
        selected: Some(Selected {
            situation: "Situation".into(),
            goals: vec![samblik_proto::v1::Goal {
                description: "Mål".into(),
                target_on: String::new(),
            }],
            residence: "Skovvej 12, 9990 Sønderå".into(),
            ..Selected::default()
        }),
        full: None,
        sensitivity: flags.iter().map(|f| (*f).to_owned()).collect(),
        disclosure: None,
    };
    (
        vec![case("BF-2026-000001", "SL-140", &["address-protection"])],
        vec![case("VO-2026-000001", "SL-12a", &[])],
    )
}

/// A jobcenter reference source and scripted child-welfare and adult-social sources holding
/// [`sensitive_cases`], with a gateway config over the three.
async fn sensitive_municipality(cpr: &str) -> (Vec<RunningSource>, Config) {
    let (child_welfare, adult_social) = sensitive_cases(cpr);
    let jobcenter_source = start_source(reference(Department::Jobcenter)).await;
    let child_welfare = start_source(Arc::new(Scripted {
        cases: child_welfare,
    }))
    .await;
    let adult_social = start_source(Arc::new(Scripted {
        cases: adult_social,
    }))
    .await;
    let config = gateway_config(
        &[
            SourceSpec::at("child-welfare", child_welfare.addr),
            SourceSpec::at("jobcenter", jobcenter_source.addr),
            SourceSpec::at("adult-social", adult_social.addr),
        ],
        3_000,
    );
    (vec![jobcenter_source, child_welfare, adult_social], config)
}

#[tokio::test]
async fn sensitive_cases_vanish_addresses_stay_protected_and_field_sets_apply() {
    let cpr = all_department_citizen();
    let (_sources, mut config) = sensitive_municipality(cpr).await;
    // Child welfare shares goals, not the situation, at tier 2.
    config.policy.field_sets = vec![samblik_gateway::config::FieldSetConfig {
        source: "child-welfare".into(),
        case_types: Vec::new(),
        selected: vec!["goals".into(), "residence".into()],
    }];
    let gateway = TestGateway::from_config(config).start().await;
    let jobcenter = token(Department::Jobcenter);
    record(
        &gateway.channel().await,
        &jobcenter,
        cpr,
        child_welfare_to_jobcenter(Tier::Selected),
    )
    .await
    .unwrap();
    // The citizen's consent to share the adult-social area's data with the jobcenter does not
    // reach the SL § 12 a case.
    let adult_social_to_jobcenter = Consent {
        from_departments: vec!["adult-social".into()],
        ..child_welfare_to_jobcenter(Tier::Full)
    };
    record(
        &gateway.channel().await,
        &jobcenter,
        cpr,
        adult_social_to_jobcenter,
    )
    .await
    .unwrap();
    let answer = look(&gateway, &jobcenter, cpr).await;
    // The SL § 12 a case is not there at all.
    let adult_social = source(&answer, "adult-social");
    assert_eq!(adult_social.status(), SourceStatus::Ok, "{adult_social:?}");
    assert!(adult_social.cases.is_empty(), "{adult_social:?}");
    let cw = source(&answer, "child-welfare");
    assert_eq!(cw.cases.len(), 1, "{cw:?}");
    let case = &cw.cases[0];
    assert_eq!(case.case_id, "BF-2026-000001");
    assert_eq!(case.tier(), Tier::Selected);
    let selected = case.selected.as_ref().unwrap();
    assert!(!selected.goals.is_empty(), "goals are in the field set");
    assert!(selected.situation.is_empty(), "the situation is not");
    assert!(selected.residence.is_empty(), "the address is protected");
    assert!(case.sensitivity.is_empty(), "flags never leave the gateway");
    let withheld = &case.disclosure.as_ref().unwrap().withheld;
    assert!(
        withheld
            .iter()
            .any(|w| w.part == "selected.residence" && w.code == "address-protection"),
        "{withheld:?}"
    );
    // The audit record names only what was disclosed.
    let records = gateway.audit_records();
    let entry = records
        .iter()
        .rev()
        .find(|r| r.action == Action::Lookup)
        .unwrap();
    let fields = &entry
        .sources
        .iter()
        .find(|s| s.source_id == "child-welfare")
        .unwrap()
        .cases[0]
        .fields;
    assert!(fields.iter().any(|f| f == "selected.goals"));
    assert!(
        !fields
            .iter()
            .any(|f| f == "selected.residence" || f == "selected.situation")
    );
}

#[tokio::test]
async fn a_policy_file_with_a_typo_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.cedar");
    let text = samblik_policy_default().replace("context.consent", "context.consnet");
    std::fs::write(&file, text).unwrap();
    let somewhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sources = [SourceSpec::at("jobcenter", somewhere)];
    let mut config = gateway_config(&sources, 3_000);
    config.policy.file = Some(file);
    let err = samblik_gateway::disclosure::DisclosurePolicy::from_config(&config).unwrap_err();
    assert!(err.to_string().contains("consnet"), "{err}");
    // And an unknown source in a statute.
    let mut config = gateway_config(&sources, 3_000);
    config.policy.statutes[0].sources = vec!["jobcentre".into()];
    let err = samblik_gateway::disclosure::DisclosurePolicy::from_config(&config).unwrap_err();
    assert!(err.to_string().contains("jobcentre"), "{err}");
}

fn samblik_policy_default() -> String {
    samblik_gateway::disclosure::DisclosurePolicy::default_rules().to_owned()
}

/// Whether `department` holds an open case for the citizen (the relation a lookup needs).
fn open_in(cpr: &str, department: Department) -> bool {
    municipality().cases.iter().any(|c| {
        c.cpr == cpr
            && c.department() == department
            && c.state == samblik_synth::model::CaseState::Open
    })
}

/// A citizen with an open jobcenter case and no child-welfare case at all, and the id of one of
/// their jobcenter cases.
fn jobcenter_only_citizen() -> (&'static str, &'static str) {
    municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .filter(|cpr| open_in(cpr, Department::Jobcenter))
        .find(|cpr| !departments_of(cpr).contains(&Department::ChildWelfare))
        .and_then(|cpr| {
            municipality()
                .cases
                .iter()
                .find(|c| c.cpr == cpr && c.department() == Department::Jobcenter)
                .map(|c| (cpr, c.case_id.as_str()))
        })
        .unwrap()
}

/// A refusal's message without the request id it ends with.
fn without_request_id(status: &tonic::Status) -> &str {
    let message = status.message();
    message.split(" (request id ").next().unwrap_or(message)
}

fn filing(cpr: &str, source_id: &str, case_id: &str, tier: Tier) -> FileAccessRequest {
    FileAccessRequest {
        cpr: cpr.into(),
        source_id: source_id.into(),
        case_id: case_id.into(),
        tier_wanted: tier as i32,
        purpose: Purpose::PrepareMeeting as i32,
        justification: "Skal koordinere praktikforløb med familiens indsatser".into(),
    }
}

async fn file_as(
    channel: &Channel,
    token: &str,
    message: FileAccessRequest,
) -> Result<AccessRequest, tonic::Status> {
    AccessRequestServiceClient::new(channel.clone())
        .file_request(authed(message, token))
        .await
        .map(tonic::Response::into_inner)
}

/// Files `message` as `token`, which must be refused with `code`; the refusal.
async fn refused_filing(
    channel: &Channel,
    token: &str,
    message: FileAccessRequest,
    code: Code,
) -> tonic::Status {
    let refused = file_as(channel, token, message)
        .await
        .expect_err("the filing is refused");
    assert_eq!(refused.code(), code, "{refused:?}");
    refused
}

async fn requests(channel: &Channel, token: &str, view: RequestView) -> Vec<AccessRequest> {
    AccessRequestServiceClient::new(channel.clone())
        .list_requests(authed(
            ListAccessRequests {
                view: view as i32,
                state: RequestState::Unspecified as i32,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .requests
}

#[tokio::test]
async fn filing_an_access_request_needs_a_relation_and_a_case_the_source_holds_for_the_citizen() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);
    let child_welfare = token(Department::ChildWelfare);
    let integration = token(Department::Integration);

    // A caller with no open case for the citizen in their own department may not ask for more
    // of a case they could never have been shown.
    let (stranger, jobcenter_case) = jobcenter_only_citizen();
    assert!(!open_in(stranger, Department::ChildWelfare));
    let denied = refused_filing(
        &channel,
        &child_welfare,
        filing(stranger, "jobcenter", jobcenter_case, Tier::Selected),
        Code::PermissionDenied,
    )
    .await;
    assert!(!denied.message().contains(stranger));
    assert!(denied.message().contains("no open case"), "{denied:?}");

    // A related caller: the case must be one the named source holds for this citizen.
    let cpr = all_department_citizen();
    assert!(open_in(cpr, Department::Jobcenter));
    let shown = look(&m.gateway, &jobcenter, cpr).await;
    let visible = source(&shown, "child-welfare").cases[0].case_id.clone();
    let missing = refused_filing(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfare", "BF-1999-999999", Tier::Selected),
        Code::NotFound,
    )
    .await;
    // Another citizen's case, of the right source.
    let someone_elses = municipality()
        .cases
        .iter()
        .find(|c| c.cpr != cpr && c.department() == Department::ChildWelfare)
        .unwrap();
    let foreign = refused_filing(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfare", &someone_elses.case_id, Tier::Selected),
        Code::NotFound,
    )
    .await;
    assert_eq!(without_request_id(&foreign), without_request_id(&missing));
    // A case of the citizen, but of another source than the one named.
    let integration_case = source(&shown, "integration").cases[0].case_id.clone();
    refused_filing(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfare", &integration_case, Tier::Selected),
        Code::NotFound,
    )
    .await;
    // An unknown source is a bad request.
    refused_filing(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfarre", &visible, Tier::Selected),
        Code::InvalidArgument,
    )
    .await;
    // Asking for what one is shown already asks for nothing.
    refused_filing(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfare", &visible, Tier::Existence),
        Code::FailedPrecondition,
    )
    .await;

    // Nothing was stored: no inbox, no caller holds a request.
    for (t, view) in [
        (&jobcenter, RequestView::Mine),
        (&child_welfare, RequestView::Mine),
        (&child_welfare, RequestView::Inbox),
        (&integration, RequestView::Inbox),
    ] {
        assert!(requests(&channel, t, view).await.is_empty());
    }
    // Every refusal is in the log, against the citizen, and no change was made.
    let records = m.gateway.audit_records();
    assert!(
        records
            .iter()
            .all(|r| r.change.is_none() || r.action == Action::AuditMaintenance)
    );
    let refusals: Vec<(Outcome, Option<&str>)> = records
        .iter()
        .filter(|r| r.action == Action::AccessRequested)
        .map(|r| (r.outcome, r.cpr.as_ref().map(samblik_proto::Cpr::as_str)))
        .collect();
    assert_eq!(
        refusals,
        [
            (Outcome::Denied, Some(stranger)),
            (Outcome::Invalid, Some(cpr)),
            (Outcome::Invalid, Some(cpr)),
            (Outcome::Invalid, Some(cpr)),
            (Outcome::Invalid, Some(cpr)),
            (Outcome::Invalid, Some(cpr)),
        ]
    );

    // The same request for a case the caller is shown is filed.
    let filed = file_as(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfare", &visible, Tier::Selected),
    )
    .await
    .unwrap();
    assert_eq!(filed.state(), RequestState::Pending);
}

#[tokio::test]
async fn an_access_request_for_a_hidden_case_is_refused_exactly_as_for_a_missing_one() {
    let cpr = all_department_citizen();
    let (_sources, config) = sensitive_municipality(cpr).await;
    let gateway = TestGateway::from_config(config).start().await;
    let channel = gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);
    // VO-2026-000001 is an SL § 12 a case: hidden from the jobcenter, so it must not be
    // told apart from a case that does not exist.
    let hidden = file_as(
        &channel,
        &jobcenter,
        filing(cpr, "adult-social", "VO-2026-000001", Tier::Selected),
    )
    .await
    .unwrap_err();
    let missing = file_as(
        &channel,
        &jobcenter,
        filing(cpr, "adult-social", "VO-2026-000002", Tier::Selected),
    )
    .await
    .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(
        (hidden.code(), without_request_id(&hidden)),
        (missing.code(), without_request_id(&missing))
    );
    // The visible case of the same source can be asked for.
    let filed = file_as(
        &channel,
        &jobcenter,
        filing(cpr, "child-welfare", "BF-2026-000001", Tier::Selected),
    )
    .await
    .unwrap();
    assert_eq!(filed.case_id, "BF-2026-000001");
}

#[tokio::test]
async fn recording_a_consent_needs_a_relation_to_the_citizen() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let (cpr, _) = jobcenter_only_citizen();
    let child_welfare = token(Department::ChildWelfare);
    let jobcenter = token(Department::Jobcenter);
    let consent = Consent {
        from_departments: vec!["jobcenter".into()],
        to_departments: vec!["child-welfare".into()],
        ..child_welfare_to_jobcenter(Tier::Selected)
    };
    // Child welfare has no case for the citizen: it may not record their consent.
    let denied = record(&channel, &child_welfare, cpr, consent.clone())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(!denied.message().contains(cpr));
    let listed = consents(&channel, &jobcenter, cpr).await.unwrap();
    assert!(listed.is_empty(), "nothing was recorded");
    let records = m.gateway.audit_records();
    assert!(
        records
            .iter()
            .all(|r| r.change.is_none() || r.action == Action::AuditMaintenance)
    );
    assert!(records.iter().any(|r| r.action == Action::ConsentRecorded
        && r.outcome == Outcome::Denied
        && r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(cpr)));

    // The jobcenter, which holds an open case for the citizen, may.
    let recorded = record(&channel, &jobcenter, cpr, consent).await.unwrap();
    assert!(recorded.active);
}

/// A consent of `jobcenter_only_citizen`'s, recorded by the jobcenter (which holds their case):
/// the token of a related caller, the citizen, and the consent's id.
async fn consent_of_jobcenter_only_citizen(channel: &Channel) -> (String, &'static str, String) {
    let jobcenter = token(Department::Jobcenter);
    let (cpr, _) = jobcenter_only_citizen();
    let consent = Consent {
        from_departments: vec!["jobcenter".into()],
        to_departments: vec!["child-welfare".into()],
        ..child_welfare_to_jobcenter(Tier::Selected)
    };
    let recorded = record(channel, &jobcenter, cpr, consent).await.unwrap();
    (jobcenter, cpr, recorded.consent.unwrap().consent_id)
}

/// The audit log's records of `action`: their outcomes and the citizens they name.
fn outcomes(gateway: &RunningGateway, action: Action) -> Vec<(Outcome, Option<String>)> {
    gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == action)
        .map(|r| (r.outcome, r.cpr.map(|c| c.as_str().to_owned())))
        .collect()
}

#[tokio::test]
async fn withdrawing_a_consent_needs_a_relation_and_tells_an_outsider_nothing() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let (jobcenter, cpr, consent_id) = consent_of_jobcenter_only_citizen(&channel).await;
    let child_welfare = token(Department::ChildWelfare);

    // Child welfare has no case for the citizen: it may not withdraw their consent, and cannot
    // tell an existing consent from a missing one.
    let existing = withdraw(&channel, &child_welfare, cpr, &consent_id)
        .await
        .unwrap_err();
    let missing = withdraw(&channel, &child_welfare, cpr, "c-no-such-consent")
        .await
        .unwrap_err();
    assert_eq!(existing.code(), Code::PermissionDenied, "{existing:?}");
    assert_eq!(
        (existing.code(), without_request_id(&existing)),
        (missing.code(), without_request_id(&missing))
    );
    assert!(existing.message().contains("no open case"), "{existing:?}");
    assert!(!existing.message().contains(cpr));

    // The consent still holds, and only its recording changed the registry.
    let listed = consents(&channel, &jobcenter, cpr).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].active && listed[0].withdrawn_at.is_none());
    let records = m.gateway.audit_records();
    let changes: Vec<Action> = records
        .iter()
        .filter(|r| r.change.is_some() && r.action != Action::AuditMaintenance)
        .map(|r| r.action)
        .collect();
    assert_eq!(changes, [Action::ConsentRecorded]);
    let denied = Some(cpr.to_owned());
    assert_eq!(
        outcomes(&m.gateway, Action::ConsentWithdrawn),
        [(Outcome::Denied, denied.clone()), (Outcome::Denied, denied)]
    );

    // The jobcenter, which holds an open case for the citizen, may withdraw it.
    let withdrawn = withdraw(&channel, &jobcenter, cpr, &consent_id)
        .await
        .unwrap();
    assert!(!withdrawn.active && withdrawn.withdrawn_at.is_some());
}

#[tokio::test]
async fn staff_list_a_citizens_consents_only_with_a_relation_and_admins_not_at_all() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let (jobcenter, cpr, consent_id) = consent_of_jobcenter_only_citizen(&channel).await;

    // Neither child welfare, which has no case for the citizen, nor an administrator is shown
    // the citizen's consents.
    let outsider = consents(&channel, &token(Department::ChildWelfare), cpr)
        .await
        .unwrap_err();
    assert_eq!(outsider.code(), Code::PermissionDenied, "{outsider:?}");
    assert!(outsider.message().contains("no open case"), "{outsider:?}");
    assert!(!outsider.message().contains(cpr));
    let admin = consents(&channel, &staff_token("dpo-test", "admin"), cpr)
        .await
        .unwrap_err();
    assert_eq!(admin.code(), Code::PermissionDenied, "{admin:?}");
    assert!(
        admin.message().contains("needs one of the roles"),
        "{admin:?}"
    );

    // The jobcenter, which holds an open case for the citizen, is.
    let listed = consents(&channel, &jobcenter, cpr).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].consent.as_ref().unwrap().consent_id, consent_id);

    // The outsider's attempt is recorded against the citizen; the administrator's is refused
    // on their role, before the request is read.
    let cpr = Some(cpr.to_owned());
    assert_eq!(
        outcomes(&m.gateway, Action::ConsentsListed),
        [
            (Outcome::Denied, cpr.clone()),
            (Outcome::Denied, None),
            (Outcome::Answered, cpr),
        ]
    );
}

#[tokio::test]
async fn registry_calls_fail_closed_while_the_callers_own_department_is_down() {
    let mut m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    assert!(open_in(cpr, Department::Jobcenter));

    // While the jobcenter's source answers, the jobcenter is the citizen's caseworker: it
    // records a consent, and is shown a child-welfare case it could ask for more of.
    let consent = child_welfare_to_jobcenter(Tier::Selected);
    let earlier = record(&channel, &jobcenter, cpr, consent).await.unwrap();
    let consent_id = earlier.consent.unwrap().consent_id;
    let shown = look(&m.gateway, &jobcenter, cpr).await;
    let visible = source(&shown, "child-welfare").cases[0].case_id.clone();

    // The jobcenter's own source goes down; the other departments' stay up.
    let jobcenter_source = Department::ALL
        .iter()
        .position(|d| *d == Department::Jobcenter)
        .unwrap();
    let down = m.sources.remove(jobcenter_source);
    let addr = down.addr;
    drop(down);
    let refuses_connections = || std::net::TcpStream::connect(addr).is_err();
    assert!(
        eventually(Duration::from_secs(5), refuses_connections).await,
        "the jobcenter's source still accepts connections"
    );

    // The relation cannot be established: every call fails closed, as unavailable — neither
    // allowed nor denied — and says that nothing was changed.
    let wider = child_welfare_to_jobcenter(Tier::Full);
    let unavailable = [
        record(&channel, &jobcenter, cpr, wider).await.map(|_| ()),
        withdraw(&channel, &jobcenter, cpr, &consent_id)
            .await
            .map(|_| ()),
        consents(&channel, &jobcenter, cpr).await.map(|_| ()),
        file_as(
            &channel,
            &jobcenter,
            filing(cpr, "child-welfare", &visible, Tier::Selected),
        )
        .await
        .map(|_| ()),
    ];
    for result in unavailable {
        let status = result.expect_err("the call fails while the relation is unknown");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("did not answer"), "{status:?}");
        assert!(
            status.message().contains("nothing was changed"),
            "{status:?}"
        );
        assert!(!status.message().contains(cpr));
    }

    // Nothing changed: the earlier consent is the citizen's only one and still active, and no
    // access request was filed.
    let listed = consents(&channel, &citizen_token(cpr), cpr).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].consent.as_ref().unwrap().consent_id, consent_id);
    assert!(listed[0].active && listed[0].withdrawn_at.is_none());
    let child_welfare = token(Department::ChildWelfare);
    let mine = requests(&channel, &jobcenter, RequestView::Mine).await;
    let inbox = requests(&channel, &child_welfare, RequestView::Inbox).await;
    assert!(mine.is_empty() && inbox.is_empty(), "{mine:?} {inbox:?}");
    let changes: Vec<Action> = m
        .gateway
        .audit_records()
        .iter()
        .filter(|r| r.change.is_some() && r.action != Action::AuditMaintenance)
        .map(|r| r.action)
        .collect();
    assert_eq!(changes, [Action::ConsentRecorded]);

    // Every failed call is in the log against the citizen, as failed.
    let failed = (Outcome::Failed, Some(cpr.to_owned()));
    let answered = (Outcome::Answered, Some(cpr.to_owned()));
    let logged = |action| outcomes(&m.gateway, action);
    assert_eq!(
        logged(Action::ConsentRecorded),
        [answered.clone(), failed.clone()]
    );
    assert_eq!(
        logged(Action::ConsentWithdrawn),
        std::slice::from_ref(&failed)
    );
    assert_eq!(logged(Action::ConsentsListed), [failed.clone(), answered]);
    assert_eq!(logged(Action::AccessRequested), [failed]);
}

#[tokio::test]
async fn a_citizen_lists_exactly_their_own_consents() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    let (other, _) = jobcenter_only_citizen();
    let mine = record(
        &channel,
        &jobcenter,
        cpr,
        child_welfare_to_jobcenter(Tier::Selected),
    )
    .await
    .unwrap();
    let theirs = record(
        &channel,
        &jobcenter,
        other,
        Consent {
            from_departments: vec!["jobcenter".into()],
            to_any_department_with_case: true,
            to_departments: Vec::new(),
            ..child_welfare_to_jobcenter(Tier::Existence)
        },
    )
    .await
    .unwrap();
    let list = |token: String, cpr: &str| {
        let mut client = ConsentServiceClient::new(channel.clone());
        let message = ListConsentsRequest { cpr: cpr.into() };
        async move { client.list_consents(authed(message, &token)).await }
    };
    let ids = |r: tonic::Response<samblik_proto::v1::ListConsentsResponse>| -> Vec<String> {
        r.into_inner()
            .consents
            .into_iter()
            .map(|c| c.consent.unwrap().consent_id)
            .collect()
    };
    let mine_id = mine.consent.unwrap().consent_id;
    // By the token alone, or naming themselves (in either spelling).
    assert_eq!(
        ids(list(citizen_token(cpr), "").await.unwrap()),
        std::slice::from_ref(&mine_id)
    );
    assert_eq!(
        ids(list(citizen_token(cpr), cpr).await.unwrap()),
        std::slice::from_ref(&mine_id)
    );
    let dashed = format!("{}-{}", &cpr[..6], &cpr[6..]);
    assert_eq!(
        ids(list(citizen_token(cpr), &dashed).await.unwrap()),
        [mine_id]
    );
    assert_eq!(
        ids(list(citizen_token(other), "").await.unwrap()),
        [theirs.consent.unwrap().consent_id]
    );
    // Never anyone else's.
    let denied = list(citizen_token(cpr), other).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(!denied.message().contains(other));
    let bad = list(citizen_token(cpr), "0101").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    // Nor may a citizen record or withdraw one.
    let recording = record(
        &channel,
        &citizen_token(cpr),
        cpr,
        child_welfare_to_jobcenter(Tier::Full),
    )
    .await
    .unwrap_err();
    assert_eq!(recording.code(), Code::PermissionDenied);

    // Each reading is in the log against the citizen it was about; the attempt on another
    // citizen's is recorded as denied against that citizen.
    let records = m.gateway.audit_records();
    let listed: Vec<(Outcome, Option<&str>)> = records
        .iter()
        .filter(|r| r.action == Action::ConsentsListed)
        .map(|r| (r.outcome, r.cpr.as_ref().map(samblik_proto::Cpr::as_str)))
        .collect();
    assert_eq!(
        listed,
        [
            (Outcome::Answered, Some(cpr)),
            (Outcome::Answered, Some(cpr)),
            (Outcome::Answered, Some(cpr)),
            (Outcome::Answered, Some(other)),
            (Outcome::Denied, Some(other)),
            (Outcome::Invalid, None),
        ]
    );
}

#[tokio::test]
async fn the_log_names_every_citizen_whose_access_request_was_listed() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);
    let child_welfare = token(Department::ChildWelfare);
    // Two citizens the jobcenter asks child welfare about.
    let mut filed: Vec<(&str, String)> = Vec::new();
    for cpr in municipality().citizens.iter().map(|c| c.cpr.as_str()) {
        if filed.len() == 2 {
            break;
        }
        if !open_in(cpr, Department::Jobcenter)
            || !departments_of(cpr).contains(&Department::ChildWelfare)
        {
            continue;
        }
        let answer = look(&m.gateway, &jobcenter, cpr).await;
        let Some(case) = source(&answer, "child-welfare").cases.first() else {
            continue;
        };
        let request = file_as(
            &channel,
            &jobcenter,
            filing(cpr, "child-welfare", &case.case_id, Tier::Selected),
        )
        .await
        .unwrap();
        filed.push((cpr, request.request_id));
    }
    assert_eq!(filed.len(), 2);

    // Child welfare reads its inbox; the integration department's is empty.
    let inbox = requests(&channel, &child_welfare, RequestView::Inbox).await;
    assert_eq!(inbox.len(), 2);
    assert!(
        requests(
            &channel,
            &token(Department::Integration),
            RequestView::Inbox
        )
        .await
        .is_empty()
    );

    // An auditor searching by either citizen finds that their request was shown, to whom,
    // and which request it was.
    let auditor = staff_token("aud-test", "auditor");
    let mut audit = AuditServiceClient::new(channel.clone());
    for (i, (cpr, request_id)) in filed.iter().enumerate() {
        let found = audit
            .search(authed(
                SearchAuditRequest {
                    filter: Some(AuditFilter {
                        cpr: (*cpr).to_owned(),
                        ..AuditFilter::default()
                    }),
                    ..SearchAuditRequest::default()
                },
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner();
        let shown: Vec<_> = found
            .entries
            .iter()
            .filter(|e| e.action == "requests-listed" && e.outcome == "answered")
            .collect();
        assert_eq!(shown.len(), 1, "{:?}", found.entries);
        assert_eq!(shown[0].caller_id, caseworker(Department::ChildWelfare).id);
        assert!(shown[0].detail.contains(request_id.as_str()), "{shown:?}");
        let (_, other_request) = &filed[1 - i];
        assert!(!shown[0].detail.contains(other_request.as_str()));
    }
    // The listing is one request, recorded once per citizen shown; the empty one names nobody.
    let records = m.gateway.audit_records();
    let listings: Vec<_> = records
        .iter()
        .filter(|r| r.action == Action::RequestsListed)
        .collect();
    assert_eq!(listings.len(), 3, "{listings:?}");
    assert_eq!(listings[0].request_id, listings[1].request_id);
    let mut named: Vec<&str> = listings[..2]
        .iter()
        .map(|r| r.cpr.as_ref().map(samblik_proto::Cpr::as_str).unwrap())
        .collect();
    named.sort_unstable();
    let mut expected: Vec<&str> = filed.iter().map(|(c, _)| *c).collect();
    expected.sort_unstable();
    assert_eq!(named, expected);
    assert_eq!(listings[2].cpr, None);
    assert_eq!(listings[2].actor.department, "integration");

    // And the citizen sees that child welfare read their request.
    let mine = audit
        .my_access_log(authed(
            MyAccessLogRequest::default(),
            &citizen_token(filed[0].0),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        mine.entries.iter().any(|e| e.department == "child-welfare"
            && e.action == "read a request for access to your cases"),
        "{mine:?}"
    );
}

/// Break-the-glass is for the emergency: beyond `policy.break_glass_per_day` answered ones in a
/// day, a caller's next is refused (RESOURCE_EXHAUSTED, BREAK_GLASS_LIMIT_REACHED), recorded
/// with its reason (so the review queue flags it) and discloses nothing; other callers are not
/// held back by it.
#[tokio::test]
async fn break_the_glass_beyond_the_daily_limit_is_refused_recorded_and_flagged() {
    let m = start_municipal_with(|c| c.policy.break_glass_per_day = 2).await;
    let citizens: Vec<&str> = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .filter(|cpr| {
            let d = departments_of(cpr);
            d.contains(&Department::Jobcenter) && !d.contains(&Department::ChildWelfare)
        })
        .take(3)
        .collect();
    let child_welfare = token(Department::ChildWelfare);
    let mut client = m.gateway.client().await;
    let glass = |cpr: &str, token: &str| {
        let mut r = request(cpr, Purpose::PrepareMeeting, Some(token), None);
        r.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
        r
    };
    for cpr in &citizens[..2] {
        client.lookup(glass(cpr, &child_welfare)).await.unwrap();
    }
    let calls = m.calls();
    let refused = client
        .lookup(glass(citizens[2], &child_welfare))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason_of(&refused), "BREAK_GLASS_LIMIT_REACHED");
    // Only the caller's own department was asked (for the relation); nothing else.
    assert!(m.calls() - calls <= 1, "{} calls", m.calls() - calls);
    let record = &m
        .gateway
        .audit_records_of(&request_id_of(refused.metadata()))[0];
    assert_eq!(record.outcome, Outcome::Denied);
    assert_eq!(record.reason.as_deref(), Some("BREAK_GLASS_LIMIT_REACHED"));
    assert_eq!(
        record.break_glass_reason.as_deref(),
        Some(BREAK_GLASS_REASON)
    );
    assert!(record.sources.iter().all(|s| s.cases.is_empty()));

    // Another caseworker's emergency is not held back by this one's.
    let jobcenter_worker = token(Department::Integration);
    let other = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|cpr| {
            let d = departments_of(cpr);
            d.contains(&Department::Jobcenter) && !d.contains(&Department::Integration)
        })
        .unwrap();
    client
        .lookup(glass(other, &jobcenter_worker))
        .await
        .unwrap();
}
