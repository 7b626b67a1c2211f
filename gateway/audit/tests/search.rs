//! Reading the log back, over a real SQLite file and a real PostgreSQL: the auditors' filters,
//! keyset paging, hash checks on every record shown, and one citizen found completely among a
//! million records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chrono::{DateTime, Utc};
use common::{TestStore, runtime, test_stores};
use samblik_audit::Cpr;
use samblik_audit::search::{self, AuditQuery, Cursor};
use samblik_audit::testing::cpr as cpr_of;
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
        cpr: Some(cpr_of(CITIZENS[i % 3])),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: i
            .is_multiple_of(7)
            .then(|| "urgent: the child's safety is at stake".into()),
        outcome: if i.is_multiple_of(5) {
            Outcome::Denied
        } else {
            Outcome::Answered
        },
        detail: refusal_detail(i),
        reason: refusal_reason(i),
        sources: Vec::new(),
        policy_version: "test".into(),
    }
}

/// Refusals are for lack of relation (every third) or for a purpose; others have no detail.
fn refusal_detail(i: usize) -> Option<String> {
    i.is_multiple_of(5).then(|| {
        match (i.is_multiple_of(3), refusal_reason(i).is_some()) {
            // The message is for people, and has been reworded since.
            (true, true) => "permission denied: no case of yours for this citizen".into(),
            (true, false) => "permission denied: you have no open case for this citizen in your \
                              department; break the glass"
                .into(),
            (false, _) => {
                "permission denied: the calling system may not look up for the purpose follow-up"
                    .into()
            }
        }
    })
}

/// Every odd refusal was recorded before refusals had reasons, and has none.
fn refusal_reason(i: usize) -> Option<String> {
    let reason = if i.is_multiple_of(3) {
        review::NO_RELATION
    } else {
        "PURPOSE_NOT_ALLOWED"
    };
    (i.is_multiple_of(5) && i.is_multiple_of(2)).then(|| reason.into())
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
            cpr: Some(cpr_of(CITIZENS[1])),
            ..AuditQuery::default()
        };
        let found = search(by_citizen.clone(), 1000);
        assert_eq!(
            ids(&found),
            expect(&|r| r.cpr.as_ref().map(Cpr::as_str) == Some(CITIZENS[1]))
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
        // By request, within the citizen's records (the citizen's view asks so).
        let q = AuditQuery {
            request_ids: vec!["req-4".into(), "req-7".into(), "req-9".into()],
            ..by_citizen.clone()
        };
        let wanted = ["req-4", "req-7", "req-9"];
        assert_eq!(
            ids(&search(q, 1000)),
            expect(&|r| r.cpr.as_ref().map(Cpr::as_str) == Some(CITIZENS[1])
                && wanted.contains(&r.request_id.as_str()))
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
        // Why a refused lookup was refused, and whom it was about (read from its body: the
        // citizen column holds a keyed hash): by its reason, or by its detail if it was
        // recorded before refusals had reasons.
        let everyone = rt
            .block_on(registry.activity(time(all.last().unwrap()), Utc::now(), Vec::new()))
            .unwrap();
        for a in &everyone {
            let i: usize = a.request_id["req-".len()..].parse().unwrap();
            let citizen = (a.outcome == "denied").then_some(CITIZENS[i % 3]);
            assert_eq!(a.cpr.as_ref().map(Cpr::as_str), citizen, "{a:?}");
            assert_eq!(a.detail, refusal_detail(i), "{a:?}");
            assert_eq!(a.reason, refusal_reason(i), "{a:?}");
            assert_eq!(a.refused_for_lack_of_relation(), i.is_multiple_of(15));
        }
        let kinds: Vec<(bool, bool)> = everyone
            .iter()
            .filter(|a| a.detail.is_some())
            .map(|a| (a.refused_for_lack_of_relation(), a.reason.is_some()))
            .collect();
        for kind in [(true, true), (true, false), (false, true), (false, false)] {
            assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
        }
        assert!(activity.iter().any(|a| a.refused_for_lack_of_relation()));

        // What was read back holds each CPR as a `Cpr`: printed for a log line or a panic
        // message, none of it shows a citizen.
        let query = AuditQuery {
            cpr: Some(cpr_of(CITIZENS[1])),
            ..AuditQuery::default()
        };
        let found = search(query.clone(), 1000);
        let stored = s.store().records("replica-a", 0, 100).unwrap();
        let printed = format!("{query:?} {found:?} {everyone:?} {stored:?}");
        assert!(!found.is_empty() && !stored.is_empty());
        for citizen in CITIZENS {
            assert!(!printed.contains(citizen), "a CPR number was printed");
        }
    }
}

#[test]
fn a_record_altered_in_place_is_never_shown() {
    for s in test_stores("search_tamper") {
        write(&s, 5);
        // Another record's body: sealed with the store's key, it opens, and does not match.
        s.sql(
            "UPDATE audit_records SET body = (SELECT body FROM audit_records WHERE seq = 4)
             WHERE seq = 3",
        );
        let registry = s.registry();
        let err = runtime()
            .block_on(registry.search(AuditQuery::default(), 100))
            .unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
    }
}

#[test]
fn a_record_whose_columns_were_edited_is_never_shown() {
    for s in test_stores("search_columns") {
        let records = write(&s, 6);
        // Record 3 is citizen 1's lookup; its citizen column now names citizen 0, whose own
        // "who looked at my data" must not show it.
        let moved = records.iter().find(|r| r.seq == 3).unwrap();
        assert_eq!(moved.cpr.as_ref().map(Cpr::as_str), Some(CITIZENS[1]));
        s.sql(&format!(
            "UPDATE audit_records SET cpr = '{}' WHERE seq = 3",
            s.keys.index(&cpr_of(CITIZENS[0]))
        ));
        let registry = s.registry();
        let query = AuditQuery {
            cpr: Some(cpr_of(CITIZENS[0])),
            ..AuditQuery::default()
        };
        let err = runtime().block_on(registry.search(query, 100)).unwrap_err();
        assert!(err.to_string().contains("record 3 has columns"), "{err}");
    }
}

/// Fills the store with a million records of 20,000 other citizens, straight in SQL (their
/// bodies are placeholders: no search here shows them), with `n` real records of one citizen
/// spread across the same period: a third before the million, a third in its middle and a third
/// after it — so on SQLite two thirds are found through the postings (indexed a chunk at a
/// time) and the last through the records not yet in a chunk.
fn fill(s: &TestStore, n: usize) {
    drop(s.store()); // Creates the schema.
    let started = Instant::now();
    let filler = |from: u32, to: u32| {
        if s.is_postgres() {
            s.sql(&format!(
                "INSERT INTO audit_records
                   (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
                 SELECT 'filler', i,
                   format('2026-%s-%sT%s:%s:00.%sZ', lpad((1 + i % 12)::text, 2, '0'),
                     lpad((1 + (i / 12) % 28)::text, 2, '0'), lpad(((i / 336) % 24)::text, 2, '0'),
                     lpad(((i / 8064) % 60)::text, 2, '0'), lpad((i % 1000000)::text, 6, '0')),
                   'req-' || i, (1000000000 + i % 20000)::text, 'cw-' || (i % 300), 'jobcenter',
                   'lookup', 'answered', '{{}}', 'x'
                 FROM generate_series({from}, {to}) AS i;
                 ANALYZE audit_records;"
            ));
        } else {
            s.sql(&format!(
                "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to})
                 INSERT INTO audit_records
                   (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
                 SELECT 'filler', i,
                   printf('2026-%02d-%02dT%02d:%02d:00.%06dZ', 1 + i % 12, 1 + (i / 12) % 28,
                     (i / 336) % 24, (i / 8064) % 60, i % 1000000),
                   'req-' || i, printf('%d', 1000000000 + i % 20000), 'cw-' || (i % 300),
                   'jobcenter', 'lookup', 'answered', '{{}}', 'x'
                 FROM n;
                 ANALYZE;"
            ));
        }
    };
    let mut prev = GENESIS_HASH.to_owned();
    let records: Vec<_> = (0..n)
        .map(|i| {
            let at = format!("2026-{:02}-{:02}T12:00:00.000000Z", 1 + i % 12, 1 + i % 28);
            let r = AuditRecord::seal(event(i * 3), "target", i as u64 + 1, at, &prev);
            prev.clone_from(&r.hash);
            r.to_sealed()
        })
        .collect();
    let third = n / 3;
    s.store().append(&records[..third], None).unwrap();
    filler(1, 500_000);
    s.store().append(&records[third..2 * third], None).unwrap();
    filler(500_001, 1_000_000);
    s.store().append(&records[2 * third..], None).unwrap();
    eprintln!("filled in {:?}", started.elapsed());
}

/// The citizen's records by a full scan of the table, bypassing every index.
fn full_scan(s: &TestStore, cpr: &str) -> Vec<(String, u64)> {
    let cpr = s.keys.index(&cpr_of(cpr));
    let cpr = cpr.as_str();
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
            cpr: Some(cpr_of(cpr)),
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
        // By department, neither citizen nor caller: the newest page, the few matching records
        // spread over the whole million, whose times do not follow the order they were written
        // in (SQLite then reads every chunk).
        let started = Instant::now();
        let query = AuditQuery {
            department: Some("child-welfare".into()),
            ..AuditQuery::default()
        };
        let page = rt.block_on(registry.search(query, 50)).unwrap();
        eprintln!("a department's newest page: {:?}", started.elapsed());
        let key = |r: &AuditRecord| (r.chain.clone(), r.seq);
        let expected: Vec<_> = found
            .iter()
            .filter(|r| r.actor.department == "child-welfare")
            .take(50)
            .map(key)
            .collect();
        assert_eq!(expected.len(), 50);
        assert_eq!(page.iter().map(key).collect::<Vec<_>>(), expected);
        // Interactive because the citizen's postings answer it (a seek per chunk, records
        // fetched by rowid), not because this machine is fast.
        if let common::Backend::Sqlite(db) = &s.backend {
            let conn = rusqlite::Connection::open(db).unwrap();
            let query = AuditQuery {
                cpr: Some(cpr_of(cpr)),
                ..AuditQuery::default()
            };
            let plan = sqlite::sqlite_search_plan(&conn, &s.keys, &query, 51).unwrap();
            let uses = |step: &str| plan.iter().any(|p| p.contains(step));
            assert!(
                uses("SEARCH audit_postings USING PRIMARY KEY (chunk=? AND kind=? AND key=?)"),
                "{plan:?}"
            );
            assert!(
                uses("SEARCH audit_records USING INTEGER PRIMARY KEY (rowid"),
                "{plan:?}"
            );
            assert!(!uses("SCAN audit_records"), "{plan:?}");
            // Two thirds of the citizen's records are found through their postings.
            let posted: i64 = conn
                .query_row(
                    "SELECT count(*) FROM audit_postings WHERE key = ?1",
                    [s.keys.index(&cpr_of(cpr))],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(posted, 80);
        }
    }
}

/// Appends `n` records of `chain` after `prev` (seq `first`..), in batches as the writer would;
/// returns the last hash.
fn append_sealed(
    store: &mut dyn AuditStore,
    chain: &str,
    day: &str,
    first: usize,
    n: usize,
    prev: &str,
) -> String {
    let mut prev = prev.to_owned();
    let records: Vec<_> = (first..first + n)
        .map(|i| {
            let at = format!(
                "{day}T{:02}:{:02}:{:02}.{:06}Z",
                i / 3600 % 24,
                i / 60 % 60,
                i % 60,
                i
            );
            let r = AuditRecord::seal(event(i), chain, i as u64, at, &prev);
            prev.clone_from(&r.hash);
            r.to_sealed()
        })
        .collect();
    for batch in records.chunks(700) {
        store.append(batch, None).unwrap();
    }
    prev
}

/// The same records in the same order, else a short account of the difference.
fn same(found: Vec<(String, i64)>, expected: Vec<(String, i64)>, what: &str) {
    if found != expected {
        let missing = expected.iter().filter(|e| !found.contains(e)).count();
        panic!(
            "{what}: the search found {} records, a full scan {} ({missing} missing)",
            found.len(),
            expected.len()
        );
    }
}

/// Every citizen's and caller's records, by search (paged) and by a full scan bypassing every
/// index and posting, must be the same.
fn assert_searches_complete(s: &TestStore) {
    let registry = s.registry();
    let rt = runtime();
    let conn = rusqlite::Connection::open(s.sqlite_path()).unwrap();
    let scan = |column: &str, key: &str, bounds: &str| -> Vec<(String, i64)> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT chain, seq FROM audit_records NOT INDEXED WHERE {column} = ?1 {bounds}
                 ORDER BY at DESC, chain DESC, seq DESC"
            ))
            .unwrap();
        stmt.query_map([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let paged = |mut query: AuditQuery| -> Vec<(String, i64)> {
        let mut found = Vec::new();
        loop {
            // As `AuditService.Search` pages: a short page is the last.
            let page = rt.block_on(registry.search(query.clone(), 400)).unwrap();
            query.after = page.last().map(Cursor::of);
            found.extend(page.iter().map(|r| (r.chain.clone(), r.seq as i64)));
            if page.len() < 400 {
                return found;
            }
        }
    };
    for cpr in CITIZENS {
        let query = AuditQuery {
            cpr: Some(cpr_of(cpr)),
            ..AuditQuery::default()
        };
        let expected = scan("cpr", &s.keys.index(&cpr_of(cpr)), "");
        assert!(!expected.is_empty());
        same(paged(query), expected, cpr);
    }
    for caller in ["cw-0", "cw-1", "cw-2", "cw-3"] {
        let query = AuditQuery {
            caller_id: Some(caller.into()),
            ..AuditQuery::default()
        };
        assert_eq!(
            paged(query),
            scan("caller_id", caller, ""),
            "caller {caller}"
        );
    }
    // A caller's denied lookups only: fewer than a page among the caller's newest records, so
    // the search must look past them.
    let query = AuditQuery {
        caller_id: Some("cw-2".into()),
        outcomes: vec![Outcome::Denied],
        ..AuditQuery::default()
    };
    same(
        paged(query),
        scan("caller_id", "cw-2", "AND outcome = 'denied'"),
        "a caller's denied lookups",
    );
    // A period, whose bounds the postings apply too.
    let from: DateTime<Utc> = "2026-03-01T01:00:00Z".parse().unwrap();
    let until: DateTime<Utc> = "2026-03-01T02:00:00Z".parse().unwrap();
    let query = AuditQuery {
        cpr: Some(cpr_of(CITIZENS[2])),
        from: Some(from),
        until: Some(until),
        ..AuditQuery::default()
    };
    same(
        paged(query),
        scan(
            "cpr",
            &s.keys.index(&cpr_of(CITIZENS[2])),
            "AND at >= '2026-03-01T01:00:00.000000Z' AND at < '2026-03-01T02:00:00.000000Z'",
        ),
        "a citizen in a period",
    );

    // Neither citizen nor caller: with no index on time, chunk after chunk, those reaching
    // latest first (the other chain was written after but dated before, so chunks overlap in
    // time and out of order).
    let query = AuditQuery {
        department: Some("child-welfare".into()),
        ..AuditQuery::default()
    };
    same(
        paged(query),
        scan("department", "child-welfare", ""),
        "a department",
    );
    let query = AuditQuery {
        department: Some("jobcenter".into()),
        outcomes: vec![Outcome::Denied],
        ..AuditQuery::default()
    };
    same(
        paged(query),
        scan("department", "jobcenter", "AND outcome = 'denied'"),
        "a department's denied lookups",
    );
    for (from, until) in [
        ("2026-02-01T00:30:00Z", "2026-02-01T00:40:00Z"),
        ("2026-03-01T00:05:00Z", "2026-03-01T02:00:00Z"),
        ("2026-01-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ] {
        let (from, until): (DateTime<Utc>, DateTime<Utc>) =
            (from.parse().unwrap(), until.parse().unwrap());
        let bounds = format!(
            "AND at >= '{}' AND at < '{}'",
            search::time_bound(from),
            search::time_bound(until)
        );
        let query = AuditQuery {
            from: Some(from),
            until: Some(until),
            ..AuditQuery::default()
        };
        // `'all' = 'all'`: a scan of every record in the period.
        same(
            paged(query),
            scan("'all'", "all", &bounds),
            "a period alone",
        );
        // The review queue's scan of a period's lookups.
        let mut lookups: Vec<String> = conn
            .prepare(&format!(
                "SELECT request_id FROM audit_records NOT INDEXED
                  WHERE action IN ('lookup', 'lookup-stream') {bounds}"
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let activity = rt
            .block_on(registry.activity(from, until, Vec::new()))
            .unwrap();
        assert!(
            activity.windows(2).all(|w| w[0].at <= w[1].at),
            "activity oldest first"
        );
        let mut found: Vec<String> = activity.into_iter().map(|a| a.request_id).collect();
        lookups.sort();
        found.sort();
        assert_eq!(found, lookups, "a period's lookups");
    }
}

/// Every chain, walked as verification walks it (pages from any seq), and its head, must be
/// what a full scan in seq order finds: with no `(chain, seq)` index, SQLite walks a chain by
/// rowid from the chunk its summaries say holds the seq.
fn assert_chains_walk(s: &TestStore) {
    let conn = rusqlite::Connection::open(s.sqlite_path()).unwrap();
    // Read-only, as `samblik audit verify` opens it: a file no writable store has opened since
    // it was written by an older version is walked the old way, by its `(chain, seq)` index.
    let mut store = sqlite::SqliteStore::open_read_only(s.sqlite_path(), s.keys()).unwrap();
    let chains: Vec<String> = conn
        .prepare(
            "SELECT chain FROM audit_records NOT INDEXED
             UNION SELECT chain FROM audit_checkpoints ORDER BY chain",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(store.chains().unwrap(), chains);
    for chain in chains {
        let seqs: Vec<u64> = conn
            .prepare("SELECT seq FROM audit_records NOT INDEXED WHERE chain = ?1 ORDER BY seq")
            .unwrap()
            .query_map([&chain], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|seq| seq.unwrap().unsigned_abs())
            .collect();
        let head = store.head(&chain).unwrap().map(|(seq, _)| seq);
        assert_eq!(head, seqs.last().copied(), "{chain}'s head");
        let mut walked = Vec::new();
        let mut after = 0;
        loop {
            let page = store.records(&chain, after, 1_000).unwrap();
            walked.extend(page.iter().map(|r| r.seq));
            match page.last() {
                Some(last) => after = last.seq,
                None => break,
            }
        }
        assert_eq!(walked, seqs, "{chain} walked");
        for from in seqs.iter().step_by(997) {
            let page: Vec<u64> = store
                .records(&chain, *from, 5)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            let expected: Vec<u64> = seqs.iter().copied().filter(|s| s > from).take(5).collect();
            assert_eq!(page, expected, "{chain} after {from}");
        }
    }
}

/// Prunes `replica-a` through `through` (`expected` records) with a prune record at `seq`, as
/// the writer would (the store does not check the checkpoint's signature).
fn prune(store: &mut dyn AuditStore, seq: usize, through: usize, expected: u64, prev: &mut String) {
    let at = format!("2026-03-02T00:00:{:02}.000000Z", seq % 60);
    let record = AuditRecord::seal(event(seq), "replica-a", seq as u64, at.clone(), prev);
    prev.clone_from(&record.hash);
    let checkpoint = Checkpoint {
        chain: "replica-a".into(),
        seq: seq as u64,
        head_hash: prev.clone(),
        at,
        signature: "test".into(),
    };
    let pruned = store
        .prune(
            "replica-a",
            through as u64,
            expected,
            &record.to_sealed(),
            &checkpoint,
        )
        .unwrap();
    assert_eq!(pruned, expected);
}

fn indexed_through(s: &TestStore) -> i64 {
    rusqlite::Connection::open(s.sqlite_path())
        .unwrap()
        .query_row(
            "SELECT indexed_through FROM audit_postings_state",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// SQLite keeps no per-record index on the citizen or the caller: they are indexed a chunk of
/// records at a time, and a search reads the records not yet in a chunk directly. Across chunk
/// boundaries, after prunes (one of which empties the table, so rowids start again) and in a
/// file written before postings existed, a search finds exactly what a full scan finds.
#[test]
fn sqlite_postings_find_what_a_full_scan_finds_across_chunks_prunes_and_old_files() {
    let s = common::sqlite_store("postings");
    let chunk = sqlite::POSTINGS_CHUNK;
    let mut store = s.store();
    let n = 2 * chunk as usize + 300;
    let mut prev = append_sealed(&mut *store, "replica-a", "2026-03-01", 1, n, GENESIS_HASH);
    // Another chain, written after but dated before: unindexed records older than indexed ones.
    append_sealed(
        &mut *store,
        "replica-b",
        "2026-02-01",
        1,
        3000,
        GENESIS_HASH,
    );
    // Two whole chunks indexed, the rest read directly.
    assert_eq!(indexed_through(&s), 2 * chunk);
    assert_searches_complete(&s);
    assert_chains_walk(&s);

    // A prune of the first chunk and part of the second: their postings go with the records.
    let next = n + 1;
    prune(&mut *store, next, 5000, 5000, &mut prev);
    let conn = rusqlite::Connection::open(s.sqlite_path()).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM audit_postings WHERE rid <= 5000"),
        0
    );
    assert_searches_complete(&s);
    assert_chains_walk(&s);

    // A file written before postings and chunk summaries existed: its per-record indexes are
    // replaced and every whole chunk is indexed and summarised when a store opens it. Until
    // then, a reader searches it the old way.
    conn.execute_batch(
        "DELETE FROM audit_postings;
         DELETE FROM audit_chunks;
         PRAGMA user_version = 0;
         UPDATE audit_postings_state SET indexed_through = 0;
         CREATE INDEX audit_records_cpr ON audit_records (cpr, at);
         CREATE INDEX audit_records_caller ON audit_records (caller_id, at);
         CREATE INDEX audit_records_at ON audit_records (at);",
    )
    .unwrap();
    drop(store);
    assert_searches_complete(&s);
    assert_chains_walk(&s);
    let mut store = s.store();
    assert_eq!(indexed_through(&s), 2 * chunk);
    let old = "SELECT count(*) FROM sqlite_master
               WHERE name IN ('audit_records_cpr', 'audit_records_caller', 'audit_records_at')";
    assert_eq!(count(old), 0);
    assert_eq!(
        count("SELECT count(DISTINCT chunk) FROM audit_chunks"),
        count(
            "SELECT count(DISTINCT (rowid - 1) / 4096) FROM audit_records
                WHERE rowid <= (SELECT indexed_through FROM audit_postings_state)"
        )
    );
    assert_searches_complete(&s);
    assert_chains_walk(&s);

    // A prune of every record but its own (the other chain gone first, as if pruned by its
    // own writer): rowids start again from 1, and the postings with them.
    conn.execute("DELETE FROM audit_records WHERE chain = 'replica-b'", [])
        .unwrap();
    let last = next + 1;
    prune(&mut *store, last, next, (next - 5000) as u64, &mut prev);
    assert_eq!(indexed_through(&s), 0);
    append_sealed(
        &mut *store,
        "replica-a",
        "2026-03-03",
        last + 1,
        chunk as usize + 10,
        &prev,
    );
    assert_eq!(indexed_through(&s), chunk);
    assert_searches_complete(&s);
    assert_chains_walk(&s);
}

/// The store writes a chunk's postings and summary from what it noted of the records as it
/// inserted them, instead of reading the chunk back. They are the very rows that indexing from
/// the table gives, also when another connection changed a record of the open chunk in between.
#[test]
fn sqlite_chunks_indexed_as_written_are_those_indexed_from_the_table() {
    let s = common::sqlite_store("open-chunk");
    let chunk = sqlite::POSTINGS_CHUNK as usize;
    let mut store = sqlite::SqliteStore::open(s.sqlite_path(), Durability::Off, s.keys()).unwrap();
    let prev = append_sealed(
        &mut store,
        "replica-a",
        "2026-03-01",
        1,
        chunk + 100,
        GENESIS_HASH,
    );
    append_sealed(
        &mut store,
        "replica-b",
        "2026-02-01",
        1,
        chunk - 200,
        GENESIS_HASH,
    );
    assert_eq!(store.chunks_indexed_from_memory(), 1);

    // Another connection changes a record the open chunk holds: that chunk is indexed from the
    // table, as the file now has it; noting starts again at the next chunk.
    let conn = rusqlite::Connection::open(s.sqlite_path()).unwrap();
    let altered = (chunk + 50) as i64;
    conn.execute(
        "UPDATE audit_records SET caller_id = 'altered-elsewhere' WHERE rowid = ?1",
        [altered],
    )
    .unwrap();
    let next = chunk + 101;
    let prev = append_sealed(&mut store, "replica-a", "2026-03-02", next, 1000, &prev);
    // A chain whose clock stepped back: its chunk's earliest time is its last record's.
    let mut prev_c = GENESIS_HASH.to_owned();
    let stepped_back: Vec<_> = (1..=3)
        .map(|seq| {
            let at = format!("2026-03-0{}T12:00:00.000000Z", 6 - seq);
            let r = AuditRecord::seal(event(seq), "replica-c", seq as u64, at, &prev_c);
            prev_c.clone_from(&r.hash);
            r.to_sealed()
        })
        .collect();
    store.append(&stepped_back, None).unwrap();
    append_sealed(
        &mut store,
        "replica-a",
        "2026-03-02",
        next + 1000,
        2 * chunk - 700,
        &prev,
    );
    assert_eq!(indexed_through(&s), 4 * sqlite::POSTINGS_CHUNK);
    assert_eq!(store.chunks_indexed_from_memory(), 3);
    let rows = |conn: &rusqlite::Connection| {
        let postings: Vec<(i64, i64, String, String, i64)> = conn
            .prepare("SELECT chunk, kind, key, at, rid FROM audit_postings ORDER BY 1, 2, 3, 4, 5")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let chunks: Vec<(i64, String, i64, i64, String, String)> = conn
            .prepare(
                "SELECT chunk, chain, first_seq, last_seq, min_at, max_at FROM audit_chunks
                  ORDER BY 1, 2",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (postings, chunks)
    };
    let as_written = rows(&conn);
    assert!(
        as_written
            .0
            .iter()
            .any(|p| p.2 == "altered-elsewhere" && p.4 == altered),
        "the altered record is posted as the file holds it"
    );
    assert_eq!(
        as_written.1.len(),
        6,
        "chunk 1 holds two chains, chunk 2 three"
    );

    // The same file indexed afresh from the table, as when a store opens a file whose
    // postings are missing.
    drop(store);
    conn.execute_batch(
        "DELETE FROM audit_postings;
         DELETE FROM audit_chunks;
         UPDATE audit_postings_state SET indexed_through = 0;",
    )
    .unwrap();
    let store = sqlite::SqliteStore::open(s.sqlite_path(), Durability::Off, s.keys()).unwrap();
    assert_eq!(indexed_through(&s), 4 * sqlite::POSTINGS_CHUNK);
    assert_eq!(store.chunks_indexed_from_memory(), 0);
    let from_table = rows(&conn);
    assert_eq!(as_written.0.len(), from_table.0.len());
    assert!(as_written.0 == from_table.0, "postings differ");
    assert_eq!(as_written.1, from_table.1);
}
