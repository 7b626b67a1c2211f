//! The disclosure policy end to end: relation, break-the-glass, consent (recorded, withdrawn,
//! refused), access requests decided by the owning department, sensitivity and field sets —
//! through the real gateway, real sources and the audit store, over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::{Action, Outcome};
use samblik_proto::v1::access_request_service_client::AccessRequestServiceClient;
use samblik_proto::v1::consent_service_client::ConsentServiceClient;
use samblik_proto::v1::{
    AccessRequest, Case, CaseType, Consent, ConsentKind, DecideAccessRequest, Existence,
    FileAccessRequest, ListAccessRequests, ListConsentsRequest, LookupResponse, Purpose,
    RecordConsentRequest, RequestState, RequestView, Selected, SourceResult, Tier,
    WithdrawConsentRequest,
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
    let cpr = three_department_citizen();
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
    let withdrawn = ConsentServiceClient::new(channel.clone())
        .withdraw_consent(authed(
            WithdrawConsentRequest {
                cpr: cpr.into(),
                consent_id: consent_id.clone(),
            },
            &jobcenter,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!withdrawn.active && withdrawn.withdrawn_at.is_some());
    let after = look(&m.gateway, &jobcenter, cpr).await;
    assert!(
        tiers(source(&after, "child-welfare"))
            .iter()
            .all(|t| *t == Tier::Existence)
    );
    // Withdrawing twice changes nothing and says so.
    let again = ConsentServiceClient::new(channel.clone())
        .withdraw_consent(authed(
            WithdrawConsentRequest {
                cpr: cpr.into(),
                consent_id: consent_id.clone(),
            },
            &jobcenter,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The registry lists it, and every change is in the audit log.
    let listed = ConsentServiceClient::new(channel.clone())
        .list_consents(authed(ListConsentsRequest { cpr: cpr.into() }, &jobcenter))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.consents.len(), 1);
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
    assert!(
        records
            .iter()
            .any(|r| r.action == Action::ConsentsListed && r.cpr.as_deref() == Some(cpr))
    );
}

#[tokio::test]
async fn a_negative_consent_hides_the_department_without_a_trace() {
    let m = start_municipal().await;
    let cpr = three_department_citizen();
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
    let request_id = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
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
    assert!(
        records
            .iter()
            .any(|r| r.outcome == Outcome::Denied && r.cpr.as_deref() == Some(cpr))
    );
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
    let cpr = three_department_citizen();
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
    let cpr = three_department_citizen();
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
    let listed = ConsentServiceClient::new(channel.clone())
        .list_consents(authed(ListConsentsRequest { cpr: cpr.into() }, &jobcenter))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.consents.is_empty());
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

/// A child-welfare source that holds an honour-related-conflict case and a case of a citizen
/// with address protection.
fn sensitive_cases(cpr: &str) -> Vec<Case> {
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
    vec![
        case("BF-2026-000001", "SL-140", &["address-protection"]),
        case("BF-2026-000002", "SL-12a", &[]),
    ]
}

#[tokio::test]
async fn sensitive_cases_vanish_addresses_stay_protected_and_field_sets_apply() {
    let cpr = three_department_citizen();
    let jobcenter_source = start_source(reference(Department::Jobcenter)).await;
    let scripted = start_source(Arc::new(Scripted {
        cases: sensitive_cases(cpr),
    }))
    .await;
    let mut config = gateway_config(
        &[
            SourceSpec::at("child-welfare", scripted.addr),
            SourceSpec::at("jobcenter", jobcenter_source.addr),
        ],
        3_000,
    );
    // Child welfare shares goals, not the situation, at tier 2.
    config.policy.field_sets = vec![samblik_gateway::config::FieldSetConfig {
        source: "child-welfare".into(),
        case_types: Vec::new(),
        selected: vec!["goals".into(), "residence".into()],
    }];
    let gateway = start_gateway_from_config(config).await;
    let jobcenter = token(Department::Jobcenter);
    record(
        &gateway.channel().await,
        &jobcenter,
        cpr,
        child_welfare_to_jobcenter(Tier::Selected),
    )
    .await
    .unwrap();
    let answer = look(&gateway, &jobcenter, cpr).await;
    let cw = source(&answer, "child-welfare");
    // The SL § 12 a case is not there at all.
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
