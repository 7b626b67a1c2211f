//! Reading the log back, over a real SQLite file and a real PostgreSQL: the auditors' filters,
//! keyset paging, hash checks on every record shown, and one citizen found completely among a
//! million records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::{DateTime, Utc};
use common::{TestStore, runtime, test_stores};
use samblik_audit::search::{AuditQuery, Cursor};
use samblik_audit::*;
use std::time::Instant;

const CITIZENS: [&str; 3] = ["0101901235", "0202902346", "0303903457"];

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{i}"),
        action: if i % 10 == 9 {
            Action::ConsentsListed
        } else {
            Action::Lookup
        },
        actor: Actor {
            caller_id: format!("cw-{}", i % 4),
            name: "Test".into(),
            department: if i.is_multiple_of(2) {
                "jobcenter"
            } else {
                "child-welfare"
            }
            .into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: Some(CITIZENS[i % 3].into()),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: i
            .is_multiple_of(7)
            .then(|| "urgent: the child's safety is at stake".into()),
        outcome: if i.is_multiple_of(5) {
            Outcome::Denied
        } else {
            Outcome::Answered
        },
        detail: None,
        sources: Vec::new(),
        policy_version: "test".into(),
    }
}

/// Writes `n` events through the writer (after its start-up record); returns every record of
/// the chain, newest first.
fn write(s: &TestStore, n: usize) -> Vec<AuditRecord> {
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    let log = AuditLog::start(s.store(), signer, WriterOptions::new("replica-a")).unwrap();
    let rt = runtime();
    for i in 0..n {
        rt.block_on(log.append(event(i))).unwrap();
    }
    log.close();
    let mut records: Vec<AuditRecord> = s
        .store()
        .records("replica-a", 0, 100_000)
        .unwrap()
        .iter()
        .map(|r| AuditRecord::from_stored(&r.body, &r.hash).unwrap())
        .collect();
    records.reverse();
    records
}

fn ids(records: &[AuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn time(r: &AuditRecord) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&r.at).unwrap().into()
}

#[test]
fn every_filter_matches_a_full_scan_and_pages_join_up() {
    for s in test_stores("search") {
        let all = write(&s, 60);
        let registry = s.registry();
        let rt = runtime();
        let search = |q: AuditQuery, limit: usize| rt.block_on(registry.search(q, limit)).unwrap();
        let expect = |keep: &dyn Fn(&AuditRecord) -> bool| -> Vec<u64> {
            ids(&all.iter().filter(|r| keep(r)).cloned().collect::<Vec<_>>())
        };

        let by_citizen = AuditQuery {
            cpr: Some(CITIZENS[1].into()),
            ..AuditQuery::default()
        };
        let found = search(by_citizen.clone(), 1000);
        assert_eq!(
            ids(&found),
            expect(&|r| r.cpr.as_deref() == Some(CITIZENS[1]))
        );
        assert_eq!(found.len(), 20);

        // Paging by cursor, four at a time, gives the same records in the same order.
        let mut paged = Vec::new();
        let mut query = by_citizen.clone();
        loop {
            let page = search(query.clone(), 4);
            if page.is_empty() {
                break;
            }
            query.after = page.last().map(Cursor::of);
            paged.extend(page);
        }
        assert_eq!(ids(&paged), ids(&found));

        let q = AuditQuery {
            caller_id: Some("cw-1".into()),
            department: Some("child-welfare".into()),
            ..AuditQuery::default()
        };
        assert_eq!(
            ids(&search(q, 1000)),
            expect(&|r| r.actor.caller_id == "cw-1" && r.actor.department == "child-welfare")
        );
        let q = AuditQuery {
            break_glass: true,
            ..AuditQuery::default()
        };
        let glass = search(q, 1000);
        assert_eq!(ids(&glass), expect(&|r| r.break_glass_reason.is_some()));
        assert_eq!(glass.len(), 9);
        let q = AuditQuery {
            outcomes: vec![Outcome::Denied],
            actions: vec![Action::Lookup],
            ..AuditQuery::default()
        };
        assert_eq!(
            ids(&search(q, 1000)),
            expect(&|r| r.outcome == Outcome::Denied && r.action == Action::Lookup)
        );
        let (from, until) = (time(&all[40]), time(&all[10]));
        let q = AuditQuery {
            from: Some(from),
            until: Some(until),
            ..AuditQuery::default()
        };
        assert_eq!(
            ids(&search(q, 1000)),
            expect(&|r| time(r) >= from && time(r) < until)
        );

        // The review queue's raw material: lookups only, oldest first.
        let activity = rt
            .block_on(registry.activity(time(all.last().unwrap()), Utc::now(), vec!["cw-2".into()]))
            .unwrap();
        let mut expected: Vec<String> = all
            .iter()
            .filter(|r| r.action == Action::Lookup && r.actor.caller_id == "cw-2")
            .map(|r| r.request_id.clone())
            .collect();
        expected.reverse();
        let got: Vec<String> = activity.iter().map(|a| a.request_id.clone()).collect();
        assert_eq!(got, expected);
    }
}

#[test]
fn a_record_altered_in_place_is_never_shown() {
    for s in test_stores("search_tamper") {
        write(&s, 5);
        s.sql(
            "UPDATE audit_records SET body = replace(body, 'prepare-meeting', 'draft-plan')
             WHERE seq = 3",
        );
        let registry = s.registry();
        let err = runtime()
            .block_on(registry.search(AuditQuery::default(), 100))
            .unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
    }
}

/// Fills the store with a million records of 20,000 other citizens, straight in SQL (their
/// bodies are placeholders: no search here shows them), then adds `n` real records of one
/// citizen spread across the same period.
fn fill(s: &TestStore, n: usize) {
    drop(s.store()); // Creates the schema.
    let started = Instant::now();
    if s.is_postgres() {
        s.sql(
            "INSERT INTO audit_records
               (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
             SELECT 'filler', i,
               format('2026-%s-%sT%s:%s:00.%sZ', lpad((1 + i % 12)::text, 2, '0'),
                 lpad((1 + (i / 12) % 28)::text, 2, '0'), lpad(((i / 336) % 24)::text, 2, '0'),
                 lpad(((i / 8064) % 60)::text, 2, '0'), lpad((i % 1000000)::text, 6, '0')),
               'req-' || i, (1000000000 + i % 20000)::text, 'cw-' || (i % 300), 'jobcenter',
               'lookup', 'answered', '{}', 'x'
             FROM generate_series(1, 1000000) AS i;
             ANALYZE audit_records;",
        );
    } else {
        s.sql(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
             INSERT INTO audit_records
               (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
             SELECT 'filler', i,
               printf('2026-%02d-%02dT%02d:%02d:00.%06dZ', 1 + i % 12, 1 + (i / 12) % 28,
                 (i / 336) % 24, (i / 8064) % 60, i % 1000000),
               'req-' || i, printf('%d', 1000000000 + i % 20000), 'cw-' || (i % 300),
               'jobcenter', 'lookup', 'answered', '{}', 'x'
             FROM n;
             ANALYZE;",
        );
    }
    let mut prev = GENESIS_HASH.to_owned();
    let records: Vec<_> = (0..n)
        .map(|i| {
            let at = format!("2026-{:02}-{:02}T12:00:00.000000Z", 1 + i % 12, 1 + i % 28);
            let r = AuditRecord::seal(event(i * 3), "target", i as u64 + 1, at, &prev);
            prev.clone_from(&r.hash);
            r.to_sealed()
        })
        .collect();
    s.store().append(&records, None).unwrap();
    eprintln!("filled in {:?}", started.elapsed());
}

/// The citizen's records by a full scan of the table, bypassing every index.
fn full_scan(s: &TestStore, cpr: &str) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = match &s.backend {
        common::Backend::Sqlite(db) => {
            let conn = rusqlite::Connection::open(db).unwrap();
            let mut stmt = conn
                .prepare("SELECT chain, seq FROM audit_records NOT INDEXED WHERE cpr = ?1")
                .unwrap();
            stmt.query_map([cpr], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        common::Backend::Postgres(url) => {
            let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
            client
                .batch_execute("SET enable_indexscan = off; SET enable_bitmapscan = off;")
                .unwrap();
            client
                .query(
                    "SELECT chain, seq FROM audit_records WHERE cpr = $1",
                    &[&cpr],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                .collect()
        }
    };
    found.sort();
    found
}

#[test]
fn one_citizen_among_a_million_records_is_found_completely_by_index() {
    for s in test_stores("search_million") {
        fill(&s, 120);
        let cpr = CITIZENS[0];
        let registry = s.registry();
        let rt = runtime();
        let started = Instant::now();
        let mut query = AuditQuery {
            cpr: Some(cpr.into()),
            ..AuditQuery::default()
        };
        let mut found = Vec::new();
        let mut first_page = None;
        loop {
            let page = rt.block_on(registry.search(query.clone(), 50)).unwrap();
            first_page.get_or_insert_with(|| started.elapsed());
            if page.is_empty() {
                break;
            }
            query.after = page.last().map(Cursor::of);
            found.extend(page);
        }
        let all_pages = started.elapsed();
        eprintln!(
            "{}: first page {first_page:?}, all {} records {all_pages:?}",
            if s.is_postgres() {
                "postgres"
            } else {
                "sqlite"
            },
            found.len()
        );
        // Newest first, and exactly what a full scan finds.
        assert!(found.windows(2).all(|w| w[0].at >= w[1].at));
        let mut seen: Vec<(String, u64)> = found.iter().map(|r| (r.chain.clone(), r.seq)).collect();
        seen.sort();
        assert_eq!(seen, full_scan(&s, cpr));
        assert_eq!(seen.len(), 120);
        // Interactive because the citizen's index answers it, not because this machine is fast.
        if let common::Backend::Sqlite(db) = &s.backend {
            let conn = rusqlite::Connection::open(db).unwrap();
            let plan: Vec<String> = conn
                .prepare(
                    "EXPLAIN QUERY PLAN SELECT body FROM audit_records WHERE cpr = ?1
                     ORDER BY at DESC, chain DESC, seq DESC LIMIT 51",
                )
                .unwrap()
                .query_map([cpr], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                plan.iter().any(|p| p.contains("audit_records_cpr")),
                "{plan:?}"
            );
        }
    }
}
