//! The whole municipality's catalogue end to end: the adult-social area as a fourth department
//! with its own reference source, SL § 12 a out of sight of every other department, and a case
//! of a type the catalogue does not know.

use samblik_proto::v1::{
    Case, CaseState, CaseType, Existence, Full, LookupResponse, Purpose, Selected, SourceResult,
    SourceStatus, Tier,
};
use samblik_synth::{CaseState as DataState, Department, PlanType};
use samblik_tests::*;
use std::sync::Arc;

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

#[tokio::test]
async fn an_adult_social_caseworker_with_an_open_141_case_looks_up_all_four_departments() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    assert!(
        municipality()
            .cases
            .iter()
            .any(|c| c.cpr == cpr && c.plan_type == PlanType::Sl141 && c.state == DataState::Open)
    );
    let adult_social = token(Department::AdultSocial);
    let answer = look(&m.gateway, &adult_social, cpr).await;
    let ids: Vec<&str> = answer
        .sources
        .iter()
        .map(|s| s.source_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["child-welfare", "jobcenter", "integration", "adult-social"]
    );
    for result in &answer.sources {
        assert_eq!(result.status(), SourceStatus::Ok, "{result:?}");
        assert!(!result.cases.is_empty(), "{result:?}");
        let expected = if result.source_id == "adult-social" {
            Tier::Full
        } else {
            Tier::Existence
        };
        assert!(
            result.cases.iter().all(|c| c.tier() == expected),
            "{result:?}"
        );
    }
    let own = source(&answer, "adult-social");
    assert_eq!(own.department, "Voksenområdet");
    let codes: Vec<&str> = own
        .cases
        .iter()
        .filter_map(|c| c.existence.as_ref()?.case_type.as_ref())
        .map(|t| t.code.as_str())
        .collect();
    assert!(codes.contains(&"SL-141"), "{codes:?}");

    // A citizen with cases elsewhere but none in the adult-social area: no relation.
    let stranger = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|cpr| {
            let held = departments_of(cpr);
            !held.is_empty() && !held.contains(&Department::AdultSocial)
        })
        .unwrap();
    let refused = m
        .gateway
        .client()
        .await
        .lookup(request(
            stranger,
            Purpose::PrepareMeeting,
            Some(&adult_social),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(reason_of(&refused), "NO_RELATION");
}

#[tokio::test]
async fn an_honour_related_conflict_case_is_seen_by_the_adult_social_area_alone() {
    let m = start_municipal().await;
    let record = municipality()
        .cases
        .iter()
        .find(|c| c.plan_type == PlanType::Sl12a)
        .unwrap();
    let cpr = record.cpr.as_str();
    // The report's overlap: the citizen also has a case at the jobcenter.
    assert!(departments_of(cpr).contains(&Department::Jobcenter));

    // The jobcenter has a relation and a statute for existence, and still sees nothing of it:
    // the adult-social area answered, with no case.
    let answer = look(&m.gateway, &token(Department::Jobcenter), cpr).await;
    let adult = source(&answer, "adult-social");
    assert_eq!(adult.status(), SourceStatus::Ok, "{adult:?}");
    assert!(adult.cases.is_empty(), "{adult:?}");
    assert!(!source(&answer, "jobcenter").cases.is_empty());

    // Nor does breaking the glass show it to another department.
    let mut glass = request(
        cpr,
        Purpose::PrepareMeeting,
        Some(&token(Department::ChildWelfare)),
        None,
    );
    glass.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
    let answer = m
        .gateway
        .client()
        .await
        .lookup(glass)
        .await
        .unwrap()
        .into_inner();
    assert!(source(&answer, "adult-social").cases.is_empty());

    // The owning area sees it in full, its flags kept inside the gateway.
    let answer = look(&m.gateway, &token(Department::AdultSocial), cpr).await;
    let own = source(&answer, "adult-social");
    let case = own
        .cases
        .iter()
        .find(|c| c.case_id == record.case_id)
        .unwrap();
    assert_eq!(case.tier(), Tier::Full);
    assert!(case.sensitivity.is_empty());
}

/// A case the adult-social system sends, open, with every tier filled in.
fn adult_case(id: &str, cpr: &str, code: &str) -> Case {
    Case {
        case_id: id.into(),
        subject_cpr: cpr.into(),
        tier: Tier::Full as i32,
        existence: Some(Existence {
            case_type: Some(CaseType {
                code: code.into(),
                name: "Socialpædagogisk støtte".into(),
                legal_paragraph: "Serviceloven § 85".into(),
            }),
            state: CaseState::Open as i32,
            opened_on: "2026-02-01".into(),
            ..Existence::default()
        }),
        selected: Some(Selected {
            situation: "Situation".into(),
            ..Selected::default()
        }),
        full: Some(Full::default()),
        sensitivity: Vec::new(),
        disclosure: None,
    }
}

#[tokio::test]
async fn a_case_of_an_unknown_type_is_its_departments_alone_and_counted_in_the_log() {
    let (log, _capturing) = CapturedLog::start();
    let cpr = all_department_citizen();
    let jobcenter = start_source(reference(Department::Jobcenter)).await;
    let adult_social = start_source(Arc::new(Scripted {
        cases: vec![
            adult_case("VO-2026-000042", cpr, "SL-85x"),
            adult_case("VO-2026-000043", cpr, "SL-141"),
        ],
    }))
    .await;
    let gateway = TestGateway::over(&[
        SourceSpec::at("jobcenter", jobcenter.addr),
        SourceSpec::at("adult-social", adult_social.addr),
    ])
    .deadline_ms(3_000)
    .start()
    .await;

    // Its own department sees it in full, as a case of the type the source named.
    let answer = look(&gateway, &token(Department::AdultSocial), cpr).await;
    let own = source(&answer, "adult-social");
    let unknown = own
        .cases
        .iter()
        .find(|c| c.case_id == "VO-2026-000042")
        .unwrap();
    assert_eq!(unknown.tier(), Tier::Full, "{own:?}");
    let shown_type = unknown
        .existence
        .as_ref()
        .unwrap()
        .case_type
        .as_ref()
        .unwrap();
    assert_eq!(shown_type.code, "SL-85x");
    assert_eq!(unknown.disclosure.as_ref().unwrap().basis, "own-department");

    // Another department sees the known case and nothing of the unknown one.
    let answer = look(&gateway, &token(Department::Jobcenter), cpr).await;
    let other = source(&answer, "adult-social");
    let ids: Vec<&str> = other.cases.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(ids, ["VO-2026-000043"]);

    // Counted, under its code, for the operators.
    let text = log.text();
    assert!(
        text.contains("catalogue does not know") && text.contains("code=SL-85x"),
        "{text}"
    );
    assert!(text.contains("seen=1") && text.contains("seen=2"), "{text}");
    assert!(!text.contains(cpr));
}
