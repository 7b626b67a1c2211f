//! `samblik.v1.AuditService` end to end: auditors search, export, verify and review the log
//! through the real gateway; a citizen sees who looked at their data and nothing else; every
//! one of these reads is itself in the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::{Action, Outcome};
use samblik_proto::v1::audit_service_client::AuditServiceClient;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{
    AccessLogEntry, AuditEntry, AuditFilter, ExportAuditRequest, ExportFormat, LookupRequest,
    MarkReviewedRequest, MyAccessLogRequest, Purpose, ReviewQueueRequest, SearchAuditRequest,
    VerifyAuditRequest,
};
use samblik_synth::Department;
use samblik_tests::*;
use tonic::Code;
use tonic::transport::Channel;

const AUDITOR: &str = "aud-test";

async fn audit_client(m: &Municipal) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(m.gateway.channel().await)
}

async fn lookup(m: &Municipal, token: &str, cpr: &str, break_glass: Option<&str>) -> Code {
    let mut client = LookupServiceClient::new(m.gateway.channel().await);
    let message = LookupRequest {
        cpr: cpr.to_owned(),
        purpose: Purpose::PrepareMeeting as i32,
        break_glass_reason: break_glass.unwrap_or_default().to_owned(),
        ..LookupRequest::default()
    };
    match client.lookup(authed(message, token)).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Every entry matching `filter`, following the page tokens, `page_size` at a time.
async fn search_all(m: &Municipal, filter: AuditFilter, page_size: u32) -> Vec<AuditEntry> {
    let token = staff_token(AUDITOR, "auditor");
    let mut client = audit_client(m).await;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .search(authed(
                SearchAuditRequest {
                    filter: Some(filter.clone()),
                    page_size,
                    page_token,
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

fn by_citizen(cpr: &str) -> AuditFilter {
    AuditFilter {
        cpr: cpr.to_owned(),
        ..AuditFilter::default()
    }
}

#[tokio::test]
async fn an_auditor_finds_a_lookup_with_what_it_disclosed_and_the_search_is_itself_audited() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    assert_eq!(
        lookup(&m, &token(Department::Jobcenter), cpr, None).await,
        Code::Ok
    );
    let other = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|c| *c != cpr && departments_of(c).contains(&Department::Jobcenter))
        .unwrap();
    lookup(&m, &token(Department::Jobcenter), other, None).await;

    let found = search_all(&m, by_citizen(cpr), 50).await;
    let lookups: Vec<&AuditEntry> = found.iter().filter(|e| e.action == "lookup").collect();
    assert_eq!(lookups.len(), 1, "{found:?}");
    let e = lookups[0];
    assert_eq!(e.cpr, cpr);
    assert_eq!(e.outcome, "answered");
    assert_eq!(e.caller_id, caseworker(Department::Jobcenter).id);
    assert_eq!(e.department, "jobcenter");
    assert_eq!(e.purpose, "prepare-meeting");
    assert_eq!(e.hash.len(), 64);
    let disclosed: Vec<&str> = e
        .sources
        .iter()
        .flat_map(|s| &s.cases)
        .flat_map(|c| c.fields.iter().map(String::as_str))
        .collect();
    assert!(
        disclosed.contains(&"existence.responsible.name"),
        "{disclosed:?}"
    );
    assert!(
        e.sources
            .iter()
            .flat_map(|s| &s.cases)
            .all(|c| !c.basis.is_empty())
    );
    assert!(
        found.iter().all(|e| e.cpr == cpr),
        "only that citizen's records"
    );

    // The auditor's search is in the log, against the citizen searched for, and says how.
    let searches = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::AuditSearched)
        .collect::<Vec<_>>();
    assert_eq!(searches.len(), 1);
    assert_eq!(
        searches[0].cpr.as_ref().map(samblik_proto::Cpr::as_str),
        Some(cpr)
    );
    assert_eq!(searches[0].actor.caller_id, AUDITOR);
    assert_eq!(searches[0].outcome, Outcome::Answered);
    assert_eq!(searches[0].detail.as_deref(), Some("filter: citizen"));

    // Paging two at a time gives the same records as one page.
    let everything = search_all(&m, AuditFilter::default(), 500).await;
    let paged = search_all(&m, AuditFilter::default(), 2).await;
    let keys = |v: &[AuditEntry]| {
        v.iter()
            .map(|e| (e.chain.clone(), e.seq))
            .collect::<Vec<_>>()
    };
    // The paged walk also sees the searches made while it pages; compare what both saw.
    let first: Vec<_> = keys(&everything);
    let walked: Vec<_> = keys(&paged)
        .into_iter()
        .filter(|k| first.contains(k))
        .collect();
    assert_eq!(walked, first);
}

#[tokio::test]
async fn only_auditors_search_and_bad_filters_are_refused_and_recorded() {
    let m = start_municipal().await;
    let mut client = audit_client(&m).await;
    let search = |filter: AuditFilter, page_token: &str| SearchAuditRequest {
        filter: Some(filter),
        page_size: 10,
        page_token: page_token.to_owned(),
    };
    let caseworker = token(Department::Jobcenter);
    let err = client
        .search(authed(search(AuditFilter::default(), ""), &caseworker))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .search(tonic::Request::new(search(AuditFilter::default(), "")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let auditor = staff_token(AUDITOR, "auditor");
    for (filter, token) in [
        (by_citizen("0101901234x"), ""),
        (AuditFilter::default(), "not-a-token"),
        (
            AuditFilter {
                flagged: true,
                ..AuditFilter::default()
            },
            "",
        ),
    ] {
        let err = client
            .search(authed(search(filter, token), &auditor))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let outcomes: Vec<Outcome> = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::AuditSearched)
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Denied,
            Outcome::Unauthenticated,
            Outcome::Invalid,
            Outcome::Invalid,
            Outcome::Invalid
        ]
    );
}

#[tokio::test]
async fn exports_hold_every_matching_record_as_csv_and_as_json_lines() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    for _ in 0..3 {
        lookup(&m, &token(Department::Jobcenter), cpr, None).await;
    }
    let auditor = staff_token(AUDITOR, "auditor");
    let mut client = audit_client(&m).await;
    let mut export = async |format: ExportFormat| {
        let mut stream = client
            .export(authed(
                ExportAuditRequest {
                    filter: Some(by_citizen(cpr)),
                    format: format as i32,
                },
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            data.extend(chunk.data);
        }
        String::from_utf8(data).unwrap()
    };
    let csv = export(ExportFormat::Csv).await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    assert_eq!(&header[0], "at");
    let cpr_column = header.iter().position(|h| h == "cpr").unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // Three lookups, and the export itself: its record is durable before the first byte leaves.
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows.iter().all(|r| &r[cpr_column] == cpr));
    assert_eq!(
        &rows[0][header.iter().position(|h| h == "action").unwrap()],
        "audit-exported"
    );

    let jsonl = export(ExportFormat::JsonLines).await;
    let lines: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Both exports are records about this citizen too.
    assert_eq!(lines.len(), 5, "{jsonl}");
    for line in &lines {
        // Each line is the stored record: its hash can be checked by anyone holding the export.
        let mut record = line.clone();
        let object = record.as_object_mut().unwrap();
        let hash = object.remove("hash").unwrap();
        object.remove("flags");
        let record: samblik_audit::AuditRecord = serde_json::from_value(record).unwrap();
        assert_eq!(record.compute_hash(), hash.as_str().unwrap());
    }
    assert_eq!(lines[0]["action"], "audit-exported");
    let exports = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::AuditExported)
        .count();
    assert_eq!(exports, 2);
}

/// The review queue's items of `kind`, as an auditor sees them.
async fn queue_items(m: &Municipal, kind: &str) -> Vec<samblik_proto::v1::ReviewItem> {
    let auditor = staff_token(AUDITOR, "auditor");
    let mut items = audit_client(m)
        .await
        .review_queue(authed(ReviewQueueRequest::default(), &auditor))
        .await
        .unwrap()
        .into_inner()
        .items;
    items.retain(|i| i.kind == kind);
    items
}

#[tokio::test]
async fn many_denied_counts_the_distinct_citizens_a_caller_was_refused_for_lack_of_relation() {
    let m = start_municipal_with(|c| c.audit.review.max_denied_per_day = 2).await;
    let jobcenter = token(Department::Jobcenter);
    let strangers = citizens_without_cases();
    assert!(
        strangers.len() >= 3,
        "the test municipality has few such citizens"
    );
    // Six refusals of the same citizen are one citizen tried, not many.
    for _ in 0..6 {
        assert_eq!(
            lookup(&m, &jobcenter, strangers[0], None).await,
            Code::PermissionDenied
        );
    }
    let refused = |m: &Municipal| {
        m.gateway
            .audit_records()
            .into_iter()
            .filter(|r| r.action == Action::Lookup && r.outcome == Outcome::Denied)
            .collect::<Vec<_>>()
    };
    assert_eq!(refused(&m).len(), 6);
    assert_eq!(queue_items(&m, "many-denied").await, []);
    // Two more citizens: three, above two.
    for cpr in &strangers[1..3] {
        assert_eq!(
            lookup(&m, &jobcenter, cpr, None).await,
            Code::PermissionDenied
        );
    }
    // All in one local day — unless the test ran across midnight, which it then says.
    let hours: std::collections::BTreeSet<String> =
        refused(&m).iter().map(|r| r.at[..13].to_owned()).collect();
    if hours.len() > 1 {
        eprintln!("the refusals straddled an hour ({hours:?}): the day's count not checked");
        return;
    }
    let items = queue_items(&m, "many-denied").await;
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0].count, 3);
    assert_eq!(items[0].request_ids.len(), 8);
    assert_eq!(items[0].caller_id, caseworker(Department::Jobcenter).id);
    assert!(
        items[0]
            .summary
            .starts_with("3 distinct citizens refused for lack of relation"),
        "{}",
        items[0].summary
    );
}

#[tokio::test]
async fn break_the_glass_and_anomalies_reach_the_review_queue_until_an_auditor_marks_them() {
    // Two lookups an hour are "many", and there are no working days: every lookup in this test
    // is outside working hours.
    let m = start_municipal_with(|c| {
        c.audit.review.max_lookups_per_hour = 2;
        c.audit.review.max_denied_per_day = 1;
        c.audit.review.work_days = Vec::new();
    })
    .await;
    let jobcenter = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    for _ in 0..3 {
        assert_eq!(lookup(&m, &jobcenter, cpr, None).await, Code::Ok);
    }
    // Two citizens the caseworker has no case for: two citizens refused, above one.
    let strangers = citizens_without_cases();
    let stranger = strangers[0];
    assert_eq!(
        lookup(&m, &jobcenter, stranger, None).await,
        Code::PermissionDenied
    );
    assert_eq!(
        lookup(&m, &jobcenter, strangers[1], None).await,
        Code::PermissionDenied
    );
    let glass = lookup(&m, &jobcenter, stranger, Some(BREAK_GLASS_REASON)).await;
    assert_eq!(glass, Code::Ok);

    let auditor = staff_token(AUDITOR, "auditor");
    let mut client = audit_client(&m).await;
    let queue = async |client: &mut AuditServiceClient<Channel>, include_reviewed: bool| {
        client
            .review_queue(authed(
                ReviewQueueRequest {
                    include_reviewed,
                    ..ReviewQueueRequest::default()
                },
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner()
            .items
    };
    let items = queue(&mut client, false).await;
    let kinds = |kind: &str| items.iter().filter(|i| i.kind == kind).count();
    assert_eq!(kinds("break-glass"), 1, "{items:#?}");
    assert_eq!(kinds("outside-hours"), 6, "{items:#?}");
    // The six lookups fall in one clock hour and one day — unless this test ran across the turn
    // of an hour, which it then says rather than failing.
    let hours: std::collections::BTreeSet<String> = m
        .gateway
        .audit_records()
        .iter()
        .filter(|r| r.action == Action::Lookup)
        .map(|r| r.at[..13].to_owned())
        .collect();
    if hours.len() == 1 {
        assert_eq!(kinds("many-lookups"), 1, "{items:#?}");
        assert_eq!(kinds("many-denied"), 1, "{items:#?}");
        let many = items.iter().find(|i| i.kind == "many-lookups").unwrap();
        assert_eq!(many.count, 6);
        assert_eq!(many.caller_id, caseworker(Department::Jobcenter).id);
    } else {
        eprintln!("the lookups straddled an hour ({hours:?}): per-hour counts not checked");
    }
    let glass = items.iter().find(|i| i.kind == "break-glass").unwrap();

    // The flagged filter finds exactly the flagged lookups, and each carries its flags.
    let now = std::time::SystemTime::now();
    let period = AuditFilter {
        from: Some(prost_types::Timestamp {
            seconds: now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 3600,
            nanos: 0,
        }),
        until: Some(prost_types::Timestamp {
            seconds: now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 3600,
            nanos: 0,
        }),
        flagged: true,
        ..AuditFilter::default()
    };
    let flagged = search_all(&m, period, 50).await;
    assert_eq!(flagged.len(), 6, "{flagged:#?}");
    let breaking = flagged
        .iter()
        .find(|e| !e.break_glass_reason.is_empty())
        .unwrap();
    assert!(breaking.flags.contains(&"break-glass".to_owned()));
    assert!(breaking.flags.contains(&"outside-hours".to_owned()));
    if hours.len() == 1 {
        assert!(breaking.flags.contains(&"many-lookups".to_owned()));
    }

    // Marking needs a note; then the item leaves the queue, and the mark is in the log.
    let mark = |note: &str| {
        authed(
            MarkReviewedRequest {
                key: glass.key.clone(),
                note: note.to_owned(),
                seen_count: 0,
            },
            &auditor,
        )
    };
    assert_eq!(
        client.mark_reviewed(mark("ok")).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let caseworker_mark = authed(
        MarkReviewedRequest {
            key: glass.key.clone(),
            note: "looks fine to me".into(),
            seen_count: 0,
        },
        &jobcenter,
    );
    assert_eq!(
        client
            .mark_reviewed(caseworker_mark)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let marked = client
        .mark_reviewed(mark(
            "Checked with the department leader: urgent school report",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(marked.reviewed);
    let after = queue(&mut client, false).await;
    assert!(after.iter().all(|i| i.key != glass.key));
    assert_eq!(after.len(), items.len() - 1);
    let all = queue(&mut client, true).await;
    let reviewed = all.iter().find(|i| i.key == glass.key).unwrap();
    assert_eq!(reviewed.reviewed_by, AUDITOR);
    assert!(reviewed.review_note.starts_with("Checked with"));
    let marks: Vec<_> = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::ReviewMarked && r.outcome == Outcome::Answered)
        .collect();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].change.as_ref().unwrap()["key"], glass.key.as_str());
}

#[tokio::test]
async fn an_auditor_verifies_the_chain_through_the_api() {
    let m = start_municipal().await;
    lookup(
        &m,
        &token(Department::Jobcenter),
        all_department_citizen(),
        None,
    )
    .await;
    let auditor = staff_token(AUDITOR, "auditor");
    let verified = audit_client(&m)
        .await
        .verify(authed(VerifyAuditRequest {}, &auditor))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.chains.len(), 1);
    assert!(verified.chains[0].records >= 2);
    let records = m.gateway.audit_records();
    assert_eq!(records.last().unwrap().action, Action::AuditVerified);
    assert_eq!(
        records.last().unwrap().detail.as_deref(),
        Some("every chain verifies")
    );

    // Two records altered far apart: the answer names the first, and lists the second.
    let edited = rusqlite::Connection::open(m.gateway.audit_db())
        .unwrap()
        .execute(
            "UPDATE audit_records SET department = 'elsewhere' WHERE seq IN (1, 3)",
            [],
        )
        .unwrap();
    assert_eq!(edited, 2);
    let broken = audit_client(&m)
        .await
        .verify(authed(VerifyAuditRequest {}, &auditor))
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.ok);
    assert_eq!(broken.broken_seq, 1);
    let further: Vec<_> = broken.further.iter().map(|b| b.seq).collect();
    assert_eq!(further, [3], "{broken:?}");
    assert_eq!(
        broken.further[0].reason,
        "indexed columns differ from the record"
    );
    assert_eq!(
        m.gateway.audit_records().last().unwrap().detail.as_deref(),
        Some(
            format!(
                "chain {:?} breaks at record 1 (and 1 further problem)",
                broken.broken_chain
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn a_citizen_sees_who_looked_at_their_data_and_nothing_else() {
    let m = start_municipal().await;
    let cpr = all_department_citizen();
    let other = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|c| *c != cpr && departments_of(c).contains(&Department::Jobcenter))
        .unwrap();
    assert_eq!(
        lookup(&m, &token(Department::Jobcenter), cpr, None).await,
        Code::Ok
    );
    lookup(&m, &token(Department::Jobcenter), other, None).await;
    let stranger = citizen_without_cases();
    // Refused: nobody saw anything, so it is not in the citizen's view.
    lookup(&m, &token(Department::Jobcenter), stranger, None).await;

    let mut client = audit_client(&m).await;
    let mine = client
        .my_access_log(authed(MyAccessLogRequest::default(), &citizen_token(cpr)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.entries.len(), 1, "{mine:?}");
    let e = &mine.entries[0];
    assert_eq!(e.department, "jobcenter");
    assert_eq!(e.caller_name, caseworker(Department::Jobcenter).name);
    assert_eq!(e.purpose, "prepare-meeting");
    assert!(!e.break_glass);
    let theirs = client
        .my_access_log(authed(
            MyAccessLogRequest::default(),
            &citizen_token(stranger),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.entries.is_empty(), "{theirs:?}");

    // A citizen may not search the log, and a caseworker may not read a citizen's view.
    let err = client
        .search(authed(
            SearchAuditRequest {
                filter: Some(by_citizen(other)),
                ..SearchAuditRequest::default()
            },
            &citizen_token(cpr),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .my_access_log(authed(
            MyAccessLogRequest::default(),
            &token(Department::Jobcenter),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The citizen's reading is audited, against their own CPR.
    let viewed: Vec<_> = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::CitizenViewed && r.outcome == Outcome::Answered)
        .collect();
    assert_eq!(viewed.len(), 2);
    assert_eq!(
        viewed[0].cpr.as_ref().map(samblik_proto::Cpr::as_str),
        Some(cpr)
    );
}

/// A department whose every answer waits until the test lets one through.
struct Late {
    inner: std::sync::Arc<dyn samblik_adapters::Source>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl samblik_adapters::Source for Late {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn find_cases(
        &self,
        query: samblik_adapters::CaseQuery,
        caller: samblik_proto::source::v1::CallerContext,
    ) -> Result<samblik_adapters::SourceAnswer, samblik_adapters::SourceError> {
        self.release.acquire().await.unwrap().forget();
        self.inner.find_cases(query, caller).await
    }
    async fn health(&self) -> samblik_adapters::Health {
        self.inner.health().await
    }
}

/// Every entry of the citizen's view, following the page tokens, `page_size` at a time.
async fn my_access_log_all(m: &Municipal, cpr: &str, page_size: u32) -> Vec<AccessLogEntry> {
    let mut client = audit_client(m).await;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .my_access_log(authed(
                MyAccessLogRequest {
                    page_size,
                    page_token,
                },
                &citizen_token(cpr),
            ))
            .await
            .unwrap()
            .into_inner();
        let most = if page_size == 0 {
            50
        } else {
            page_size as usize
        };
        assert!(page.entries.len() <= most, "{page_size}: {page:?}");
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_streamed_lookup_is_one_access_in_the_citizens_view_whatever_comes_between_its_records() {
    // Integration answers only when let through, so another lookup is recorded between the
    // streamed lookup's first records and its last.
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut sources = Vec::new();
    let mut specs = Vec::new();
    for department in Department::ALL {
        let source: std::sync::Arc<dyn samblik_adapters::Source> =
            if department == Department::Integration {
                std::sync::Arc::new(Late {
                    inner: reference(department),
                    release: std::sync::Arc::clone(&release),
                })
            } else {
                reference(department)
            };
        let running = start_source(source).await;
        // Time enough for the other lookup while integration waits.
        let mut spec = SourceSpec::at(department.id(), running.addr).timeout_ms(9_000);
        spec.department = department.display_name().to_owned();
        specs.push(spec);
        sources.push(running);
    }
    let gateway = TestGateway::from_config(gateway_config(&specs, 10_000))
        .start()
        .await;
    let m = Municipal {
        gateway,
        sources,
        seen: Default::default(),
    };
    let cpr = all_department_citizen();

    let mut client = LookupServiceClient::new(m.gateway.channel().await);
    let mut streamed = client
        .lookup_stream(request(
            cpr,
            Purpose::PrepareMeeting,
            Some(&token(Department::Jobcenter)),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    // Each part is sent only once its record is durable.
    for _ in 1..Department::ALL.len() {
        let part = streamed.message().await.unwrap().unwrap();
        assert_ne!(part.source_id, Department::Integration.id());
    }
    let between = LookupRequest {
        cpr: cpr.to_owned(),
        purpose: Purpose::FollowUp as i32,
        sources: vec![Department::Jobcenter.id().to_owned()],
        ..LookupRequest::default()
    };
    client
        .lookup(authed(between, &token(Department::Jobcenter)))
        .await
        .unwrap();
    release.add_permits(1);
    let last = streamed.message().await.unwrap().unwrap();
    assert_eq!(last.source_id, Department::Integration.id());
    assert!(streamed.message().await.unwrap().is_none());
    let lookups: Vec<_> = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| {
            r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(cpr)
                && r.outcome == Outcome::Answered
        })
        .collect();
    assert_eq!(
        lookups.iter().map(|r| r.action).collect::<Vec<_>>(),
        [
            Action::LookupStream,
            Action::LookupStream,
            Action::LookupStream,
            Action::Lookup,
            Action::LookupStream
        ],
        "the other lookup is recorded between the streamed lookup's records"
    );
    let at = |i: usize| chrono::DateTime::parse_from_rfc3339(&lookups[i].at).unwrap();
    assert!(at(0) < at(3) && at(3) < at(4), "{lookups:?}");
    let wire = |i: usize| prost_types::Timestamp {
        seconds: at(i).timestamp(),
        nanos: i32::try_from(at(i).timestamp_subsec_nanos()).unwrap(),
    };
    let (streamed_at, other_at) = (wire(0), wire(3));

    // Each access once, at the time its request began, newest first: the other lookup, then
    // the streamed one, which began before it; on every page size — one that splits the
    // streamed lookup's records too.
    for page_size in [0, 1, 2, 3] {
        let seen: Vec<(String, String, Option<prost_types::Timestamp>)> =
            my_access_log_all(&m, cpr, page_size)
                .await
                .into_iter()
                .map(|e| (e.department, e.purpose, e.at))
                .collect();
        assert_eq!(
            seen,
            [
                (
                    "jobcenter".to_owned(),
                    "follow-up".to_owned(),
                    Some(other_at)
                ),
                (
                    "jobcenter".to_owned(),
                    "prepare-meeting".to_owned(),
                    Some(streamed_at)
                ),
            ],
            "page size {page_size}"
        );
    }
}

#[tokio::test]
async fn the_citizen_view_can_hide_caseworker_names() {
    let m = start_municipal_with(|c| c.audit.citizen_sees_names = false).await;
    let cpr = all_department_citizen();
    assert_eq!(
        lookup(&m, &token(Department::Jobcenter), cpr, None).await,
        Code::Ok
    );
    let mine = audit_client(&m)
        .await
        .my_access_log(authed(MyAccessLogRequest::default(), &citizen_token(cpr)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.entries.len(), 1);
    assert_eq!(mine.entries[0].caller_name, "");
    assert_eq!(mine.entries[0].department, "jobcenter");
}

/// `from` and `until` as the wire's timestamps.
fn period_filter(
    from: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
) -> AuditFilter {
    let wire = |t: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap(),
    };
    AuditFilter {
        from: Some(wire(from)),
        until: Some(wire(until)),
        flagged: true,
        ..AuditFilter::default()
    }
}

/// Every working hour of every day: only the per-hour count flags anything.
fn always_working(c: &mut samblik_gateway::config::Config, max_lookups_per_hour: usize) {
    c.audit.review.max_lookups_per_hour = max_lookups_per_hour;
    c.audit.review.work_start = "00:00".into();
    c.audit.review.work_end = "23:59".into();
    c.audit.review.work_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(String::from)
        .to_vec();
}

/// The rows of a flagged CSV export over `filter`.
async fn export_rows(m: &Municipal, filter: AuditFilter) -> Vec<csv::StringRecord> {
    let mut stream = audit_client(m)
        .await
        .export(authed(
            ExportAuditRequest {
                filter: Some(filter),
                format: ExportFormat::Csv as i32,
            },
            &staff_token(AUDITOR, "auditor"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        data.extend(chunk.data);
    }
    csv::Reader::from_reader(data.as_slice())
        .records()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn the_flagged_filter_keeps_every_lookup_of_a_window_however_many_it_holds() {
    let m = start_municipal_with(|c| always_working(c, 2)).await;
    let jobcenter = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    // More lookups than a review item lists request ids for.
    let lookups = samblik_audit::review::MAX_ITEM_REQUESTS + 12;
    for _ in 0..lookups {
        assert_eq!(lookup(&m, &jobcenter, cpr, None).await, Code::Ok);
    }
    let now = chrono::Utc::now();
    let period = period_filter(
        now - chrono::Duration::hours(2),
        now + chrono::Duration::hours(1),
    );
    // Paged a few at a time, the flagged search finds every lookup (the search records
    // themselves are not flagged).
    let flagged = search_all(&m, period.clone(), 7).await;
    assert!(flagged.iter().all(|e| e.action == "lookup"), "{flagged:#?}");
    assert_eq!(flagged.len(), lookups);
    assert!(
        flagged
            .iter()
            .all(|e| e.flags.contains(&"many-lookups".to_owned()))
    );
    assert_eq!(export_rows(&m, period).await.len(), lookups);
    // The queue's item still lists no more than its cap of request ids, and counts them all.
    let items = audit_client(&m)
        .await
        .review_queue(authed(
            ReviewQueueRequest::default(),
            &staff_token(AUDITOR, "auditor"),
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    let counted: u32 = items
        .iter()
        .filter(|i| i.kind == "many-lookups")
        .map(|i| i.count)
        .sum();
    assert_eq!(counted as usize, lookups, "{items:#?}");
    assert!(
        items
            .iter()
            .all(|i| i.request_ids.len() <= samblik_audit::review::MAX_ITEM_REQUESTS)
    );
}

/// The hours (UTC, `YYYY-MM-DDTHH`) the gateway's lookups fall in.
fn lookup_hours(m: &Municipal) -> std::collections::BTreeSet<String> {
    m.gateway
        .audit_records()
        .iter()
        .filter(|r| r.action == Action::Lookup)
        .map(|r| r.at[..13].to_owned())
        .collect()
}

#[tokio::test]
async fn a_mark_covers_an_item_as_it_was_and_a_key_that_names_nothing_cannot_be_marked() {
    let m = start_municipal_with(|c| always_working(c, 2)).await;
    let jobcenter = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    let auditor = staff_token(AUDITOR, "auditor");
    let mut client = audit_client(&m).await;
    let caller = &caseworker(Department::Jobcenter).id;

    // The coming hour's key is predictable, but there is nothing to review in it yet.
    let next_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:00Z");
    for key in [
        format!("many-lookups:{caller}:{next_hour}"),
        "outside-hours:no-such-request".to_owned(),
    ] {
        let err = client
            .mark_reviewed(authed(
                MarkReviewedRequest {
                    key,
                    note: "nothing to see here".into(),
                    seen_count: 0,
                },
                &auditor,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let refused = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::ReviewMarked)
        .map(|r| r.outcome)
        .collect::<Vec<_>>();
    assert_eq!(refused, vec![Outcome::Invalid, Outcome::Invalid]);

    for _ in 0..3 {
        assert_eq!(lookup(&m, &jobcenter, cpr, None).await, Code::Ok);
    }
    let queue = async |client: &mut AuditServiceClient<Channel>| {
        client
            .review_queue(authed(ReviewQueueRequest::default(), &auditor))
            .await
            .unwrap()
            .into_inner()
            .items
    };
    let items = queue(&mut client).await;
    let Some(many) = items.iter().find(|i| i.kind == "many-lookups") else {
        assert!(lookup_hours(&m).len() > 1, "{items:#?}");
        eprintln!("the lookups straddled an hour: nothing to mark");
        return;
    };
    let marked = client
        .mark_reviewed(authed(
            MarkReviewedRequest {
                key: many.key.clone(),
                note: "three lookups for one meeting".into(),
                seen_count: many.count,
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(marked.reviewed);
    assert_eq!(marked.count, many.count);
    assert!(queue(&mut client).await.iter().all(|i| i.key != many.key));

    // The caller goes on in the same hour: the mark no longer covers the window.
    assert_eq!(lookup(&m, &jobcenter, cpr, None).await, Code::Ok);
    if lookup_hours(&m).len() > 1 {
        eprintln!("the lookups straddled an hour: the marked window did not grow");
        return;
    }
    let items = queue(&mut client).await;
    let grown = items.iter().find(|i| i.key == many.key).unwrap();
    assert_eq!(grown.count, many.count + 1);
    assert!(!grown.reviewed);
    assert!(grown.summary.contains("grown since reviewed"), "{grown:?}");

    // Marked again from a listing taken before it grew: the mark covers what that showed, and
    // the window stays in the queue; marked as it is now shown, it leaves.
    let mark = async |client: &mut AuditServiceClient<Channel>, seen_count: u32| {
        client
            .mark_reviewed(authed(
                MarkReviewedRequest {
                    key: many.key.clone(),
                    note: "looked at the listing".into(),
                    seen_count,
                },
                &auditor,
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let stale = mark(&mut client, many.count).await;
    assert!(!stale.reviewed, "{stale:?}");
    assert!(
        queue(&mut client).await.iter().any(|i| i.key == many.key),
        "a mark of the smaller window took the grown one off the queue"
    );
    let current = mark(&mut client, grown.count).await;
    assert!(current.reviewed, "{current:?}");
    assert!(queue(&mut client).await.iter().all(|i| i.key != many.key));
    let counts: Vec<u64> = m
        .gateway
        .audit_records()
        .iter()
        .filter(|r| r.action == Action::ReviewMarked && r.outcome == Outcome::Answered)
        .filter_map(|r| r.change.as_ref()?.get("count")?.as_u64())
        .collect();
    assert_eq!(
        counts,
        [
            u64::from(many.count),
            u64::from(many.count),
            u64::from(grown.count)
        ]
    );
}

#[tokio::test]
async fn a_window_is_judged_whole_whichever_part_of_it_a_period_holds() {
    // Eight lookups in an hour are above five; neither half of them is.
    let m = start_municipal_with(|c| always_working(c, 5)).await;
    let jobcenter = token(Department::Jobcenter);
    let cpr = all_department_citizen();
    for _ in 0..8 {
        assert_eq!(lookup(&m, &jobcenter, cpr, None).await, Code::Ok);
    }
    if lookup_hours(&m).len() > 1 {
        eprintln!("the lookups straddled an hour: no window holds all eight");
        return;
    }
    let lookups: Vec<samblik_audit::AuditRecord> = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::Lookup)
        .collect();
    let at = |r: &samblik_audit::AuditRecord| {
        chrono::DateTime::parse_from_rfc3339(&r.at)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    // A period's edge falls between the fourth and the fifth lookup.
    let edge = at(&lookups[4]);
    let hour = chrono::Duration::hours(1);
    let ids = |entries: &[AuditEntry]| {
        let mut ids: Vec<String> = entries.iter().map(|e| e.request_id.clone()).collect();
        ids.sort();
        ids
    };
    let expected = |range: std::ops::Range<usize>| {
        let mut ids: Vec<String> = lookups[range]
            .iter()
            .map(|r| r.request_id.clone())
            .collect();
        ids.sort();
        ids
    };
    let after = search_all(&m, period_filter(edge, edge + hour), 3).await;
    assert_eq!(ids(&after), expected(4..8), "{after:#?}");
    let before = search_all(&m, period_filter(edge - hour, edge), 3).await;
    assert_eq!(ids(&before), expected(0..4), "{before:#?}");
    assert_eq!(
        export_rows(&m, period_filter(edge, edge + hour))
            .await
            .len(),
        4
    );

    // The queue from the edge on counts the whole window; a period that ends before the window
    // starts does not hold it.
    let queue = async |from, until| {
        let period = period_filter(from, until);
        audit_client(&m)
            .await
            .review_queue(authed(
                ReviewQueueRequest {
                    from: period.from,
                    until: period.until,
                    ..ReviewQueueRequest::default()
                },
                &staff_token(AUDITOR, "auditor"),
            ))
            .await
            .unwrap()
            .into_inner()
            .items
    };
    let items = queue(edge, edge + hour).await;
    let many: Vec<_> = items.iter().filter(|i| i.kind == "many-lookups").collect();
    assert_eq!(many.len(), 1, "{items:#?}");
    assert_eq!(many[0].count, 8);
    let earlier = queue(edge - hour * 2, edge - hour).await;
    assert!(earlier.is_empty(), "{earlier:#?}");
}

#[tokio::test]
async fn a_break_the_glass_reason_with_control_characters_is_refused_and_recorded() {
    let m = start_municipal().await;
    let jobcenter = token(Department::Jobcenter);
    let stranger = citizen_without_cases();
    for reason in [
        format!("{BREAK_GLASS_REASON}\u{1b}[2K\rnothing happened here"),
        format!("{BREAK_GLASS_REASON}\nApproved by the auditor"),
        format!("{BREAK_GLASS_REASON}\u{7}"),
    ] {
        assert_eq!(
            lookup(&m, &jobcenter, stranger, Some(&reason)).await,
            Code::InvalidArgument,
            "{reason:?}"
        );
    }
    assert_eq!(m.calls(), 0, "a source was called");
    let refused: Vec<Outcome> = m
        .gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::Lookup)
        .map(|r| r.outcome)
        .collect();
    assert_eq!(refused, vec![Outcome::Invalid; 3]);
    // Danish letters and punctuation are plain text.
    let danish = "Akut: barnet på Ærø-skolen er i fare, jf. underretning fra lærer Søren Ålbæk";
    assert_eq!(
        lookup(&m, &jobcenter, stranger, Some(danish)).await,
        Code::Ok
    );
}
