//! No CPR number in clear at rest: after a session through the real gateway — lookups (answered,
//! refused, break-the-glass), an auditor's search by CPR, a citizen's own log, a consent
//! recorded and withdrawn, an access request filed and decided — no looked-up CPR, with or
//! without its dash, is anywhere in the audit store's directory (the database, its WAL and
//! shared memory, the witness, the keys), while search, the citizen's log and verification
//! still work.

use samblik_proto::v1::access_request_service_client::AccessRequestServiceClient;
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::consent_service_client::ConsentServiceClient;
use samblik_proto::v1::{
    AuditFilter, Consent, ConsentKind, DecideAccessRequest, FileAccessRequest, MyAccessLogRequest,
    Purpose, RecordConsentRequest, SearchAuditRequest, Tier, WithdrawConsentRequest,
};
use samblik_synth::Department;
use samblik_tests::*;
use std::path::{Path, PathBuf};

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The files under `dir` that hold `cpr` as 10 digits or as DDMMYY-SSSS.
fn holding(dir: &Path, cpr: &str) -> Vec<PathBuf> {
    let dashed = format!("{}-{}", &cpr[..6], &cpr[6..]);
    files_under(dir)
        .into_iter()
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap();
            [cpr, dashed.as_str()]
                .iter()
                .any(|form| bytes.windows(form.len()).any(|w| w == form.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn after_a_session_no_looked_up_cpr_is_in_the_audit_stores_files() {
    let m = start_municipal().await;
    let channel = m.gateway.channel().await;
    let jobcenter = token(Department::Jobcenter);
    let child_welfare = token(Department::ChildWelfare);
    let shared = all_department_citizen();
    let stranger = citizen_without_cases();
    let mut looked_up = vec![shared.to_owned(), stranger.to_owned()];

    // Lookups: answered, refused for lack of relation, and with the glass broken.
    let answered = m
        .gateway
        .client()
        .await
        .lookup(request(
            shared,
            Purpose::PrepareMeeting,
            Some(&jobcenter),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let refused = m
        .gateway
        .client()
        .await
        .lookup(request(
            stranger,
            Purpose::PrepareMeeting,
            Some(&jobcenter),
            None,
        ))
        .await;
    assert!(refused.is_err());
    let mut glass = request(stranger, Purpose::PrepareMeeting, Some(&jobcenter), None);
    glass.get_mut().break_glass_reason = BREAK_GLASS_REASON.into();
    m.gateway.client().await.lookup(glass).await.unwrap();
    let jobcenter_citizens = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .filter(|cpr| *cpr != shared && departments_of(cpr).contains(&Department::Jobcenter))
        .take(3);
    for cpr in jobcenter_citizens {
        looked_up.push(cpr.to_owned());
        // Answered or refused (a closed case is no relation): recorded either way.
        let _ = m
            .gateway
            .client()
            .await
            .lookup(request(cpr, Purpose::FollowUp, Some(&jobcenter), None))
            .await;
    }

    // A consent recorded and withdrawn; an access request filed (its justification naming the
    // citizen, as free text may) and decided.
    let mut consents = ConsentServiceClient::new(channel.clone());
    let consent = consents
        .record_consent(authed(
            RecordConsentRequest {
                cpr: shared.into(),
                consent: Some(Consent {
                    kind: ConsentKind::Permit as i32,
                    from_departments: vec!["child-welfare".into()],
                    to_departments: vec!["jobcenter".into()],
                    max_tier: Tier::Selected as i32,
                    purposes: vec![Purpose::PrepareMeeting as i32],
                    document_ref: format!("Samtykke fra {shared}, dok. 14"),
                    ..Consent::default()
                }),
            },
            &jobcenter,
        ))
        .await
        .unwrap()
        .into_inner();
    consents
        .withdraw_consent(authed(
            WithdrawConsentRequest {
                cpr: shared.into(),
                consent_id: consent.consent.as_ref().unwrap().consent_id.clone(),
            },
            &jobcenter,
        ))
        .await
        .unwrap();
    let case_id = answered
        .sources
        .iter()
        .find(|s| s.source_id == "child-welfare")
        .and_then(|s| s.cases.first())
        .map(|c| c.case_id.clone())
        .unwrap();
    let mut requests = AccessRequestServiceClient::new(channel.clone());
    let filed = requests
        .file_request(authed(
            FileAccessRequest {
                cpr: shared.into(),
                source_id: "child-welfare".into(),
                case_id,
                tier_wanted: Tier::Selected as i32,
                purpose: Purpose::PrepareMeeting as i32,
                justification: format!(
                    "Borger {}-{} skal i praktik; koordinering nødvendig",
                    &shared[..6],
                    &shared[6..]
                ),
            },
            &jobcenter,
        ))
        .await
        .unwrap()
        .into_inner();
    requests
        .decide_request(authed(
            DecideAccessRequest {
                request_id: filed.request_id.clone(),
                approve: false,
                tier: Tier::Selected as i32,
                until: None,
                reason: format!("Ikke nødvendigt for {shared}"),
            },
            &child_welfare,
        ))
        .await
        .unwrap();

    // Search by CPR and the citizen's own log work as before, and read the sealed records.
    let mut audit = AuditServiceClient::new(channel.clone());
    let auditor = staff_token("aud-001", "auditor");
    let found = audit
        .search(authed(
            SearchAuditRequest {
                filter: Some(AuditFilter {
                    cpr: shared.to_owned(),
                    ..AuditFilter::default()
                }),
                ..SearchAuditRequest::default()
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        found.entries.len() >= 4,
        "the lookup, the consent and its withdrawal, the request: {}",
        found.entries.len()
    );
    let mine = audit
        .my_access_log(authed(
            MyAccessLogRequest::default(),
            &citizen_token(shared),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        mine.entries.iter().any(|e| e.department == "jobcenter"),
        "{mine:?}"
    );
    // The registry reads back what it sealed: the withdrawn consent, in the citizen's list.
    let listed = consents
        .list_consents(authed(
            samblik_proto::v1::ListConsentsRequest { cpr: shared.into() },
            &jobcenter,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.consents.iter().any(|c| c.consent == consent.consent));

    // Nothing in clear, in any file of the store's directory: the database, its -wal and
    // -shm, the witness, the keys. Read while the gateway runs: the WAL holds the session's
    // pages, not yet copied into the database file.
    let dir = m.gateway.audit_db().parent().unwrap().to_owned();
    let names: Vec<String> = files_under(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["audit.db", "audit.db-wal", "audit-checkpoints.jsonl"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for cpr in &looked_up {
        assert_eq!(holding(&dir, cpr), Vec::<PathBuf>::new(), "a CPR in clear");
    }
    let records = m.gateway.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(stranger)),
        "the records themselves still name the citizen once opened"
    );
}
