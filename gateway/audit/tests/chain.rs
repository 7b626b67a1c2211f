//! The audit log over a real SQLite file: durability, group commit, fail-closed behaviour and
//! tamper evidence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::postgres::PostgresStore;
use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::testing::FaultInjecting;
use samblik_audit::testing::cpr;
use samblik_audit::verify::{VerifyError, verify_store};
use samblik_audit::*;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;
use common::{Backend, TestStore as Setup, spawn_append, wait_until};

/// One empty store per backend: every test runs against SQLite and against PostgreSQL (a real
/// server; the README's test command starts one and sets `SAMBLIK_TEST_POSTGRES_URL`).
fn setups() -> Vec<Setup> {
    common::test_stores("audit")
}

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("req-{i}"),
        action: Action::Lookup,
        actor: Actor {
            caller_id: format!("cw-{}", i % 7),
            name: "Test".into(),
            department: "jobcenter".into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: Some(cpr(&format!("01019{:05}", i % 100_000))),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: None,
        reason: None,
        sources: vec![SourceEntry {
            source_id: "child-welfare".into(),
            status: "ok".into(),
            cases: vec![CaseEntry {
                case_id: format!("BF-{i}"),
                tier: 1,
                basis: Some("minimum-variation".into()),
                rule_ids: vec!["r1".into()],
                fields: vec!["existence.case_type".into()],
            }],
            flag: None,
        }],
        policy_version: "test".into(),
    }
}

fn options(every: u64) -> WriterOptions {
    let mut o = WriterOptions::new("replica-a");
    o.checkpoint_every = every;
    o
}

fn open(s: &Setup, store: Box<dyn AuditStore>) -> AuditLog {
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    AuditLog::start(store, signer, options(10)).unwrap()
}

fn verify(s: &Setup) -> Result<Vec<verify::ChainSummary>, VerifyError> {
    let key = load_verifying_key(&public_key_path(&s.key)).unwrap();
    verify_store(&mut *s.store(), &key)
}

/// Writes `n` lookups and stops the writer (which signs its head on the way out).
fn write(s: &Setup, n: usize) {
    let log = open(s, s.store());
    for i in 0..n {
        block_on(log.append(event(i))).unwrap();
    }
    log.close();
}

/// Runs a future to completion on a runtime of its own; the stores are used outside it.
fn block_on<F: Future>(future: F) -> F::Output {
    common::runtime().block_on(future)
}

fn broken_at(s: &Setup) -> u64 {
    match verify(s) {
        Err(VerifyError::Broken(b)) => b.first.seq,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

/// A PostgreSQL store waits for the WAL flush on every commit even where the server's default
/// says otherwise; only a store opened to measure what that costs (`Durability::Off`) does not.
#[test]
fn postgres_commits_wait_for_the_wal_flush_whatever_the_default() {
    use samblik_audit::Durability;
    use samblik_audit::postgres::PostgresStore;
    for s in setups() {
        let Backend::Postgres(url) = &s.backend else {
            continue;
        };
        let database = url.rsplit_once('/').unwrap().1;
        s.sql(&format!(
            "ALTER DATABASE {database} SET synchronous_commit = off"
        ));
        let mut durable = PostgresStore::connect(url, s.keys()).unwrap();
        assert_eq!(durable.synchronous_commit().unwrap(), "on");
        let mut unsynced = PostgresStore::connect_with(url, Durability::Off, s.keys()).unwrap();
        assert_eq!(unsynced.synchronous_commit().unwrap(), "off");
        let log = open(&s, Box::new(durable));
        block_on(log.append(event(1))).unwrap();
        log.close();
        assert!(verify(&s).is_ok());
    }
}

/// The server compresses a record's body with lz4 rather than its slower default, and the
/// records read back and verify as ever. (Debian's PostgreSQL, the one the tests run on, is
/// built with lz4.)
#[test]
fn postgres_bodies_are_compressed_with_lz4() {
    for s in setups() {
        let Backend::Postgres(url) = &s.backend else {
            continue;
        };
        let log = open(&s, s.store());
        for i in 0..20 {
            block_on(log.append(event(i))).unwrap();
        }
        log.close();
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        let method: String = client
            .query_one(
                "SELECT attcompression::text FROM pg_attribute
                  WHERE attrelid = 'audit_records'::regclass AND attname = 'body'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(method, "l");
        // The bodies large enough to be compressed were, with lz4.
        let methods: Vec<Option<String>> = client
            .query(
                "SELECT DISTINCT pg_column_compression(body) FROM audit_records",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(methods.iter().flatten().all(|m| m == "lz4"), "{methods:?}");
        assert!(verify(&s).is_ok());
    }
}

/// The text columns the indexes hold compare byte by byte, whatever the database's collation:
/// as on SQLite, and without a locale-aware comparison at every step of every index insert.
#[test]
fn postgres_indexed_text_columns_compare_byte_by_byte() {
    for s in setups() {
        if !s.is_postgres() {
            continue;
        }
        write(&s, 3);
        let Backend::Postgres(url) = &s.backend else {
            continue;
        };
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        let collations: Vec<(String, String)> = client
            .query(
                "SELECT a.attname::text, c.collname::text
                   FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
                  WHERE a.attrelid = 'audit_records'::regclass
                    AND a.attname IN ('chain', 'at', 'cpr', 'caller_id')
                  ORDER BY a.attname",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(String, String)> = ["at", "caller_id", "chain", "cpr"]
            .iter()
            .map(|c| ((*c).to_owned(), "C".to_owned()))
            .collect();
        assert_eq!(collations, expected);
    }
}

/// A new table is keyed by a record's place in its chain; one created before, with a serial id
/// and the database's collation, is written and verified as ever.
#[test]
fn postgres_a_new_table_is_keyed_by_chain_and_seq_and_an_older_one_still_works() {
    for s in setups() {
        let Backend::Postgres(url) = &s.backend else {
            continue;
        };
        write(&s, 3);
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        let key = |client: &mut ::postgres::Client| -> Vec<String> {
            client
                .query(
                    "SELECT a.attname::text
                       FROM pg_index i
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                      WHERE i.indrelid = 'audit_records'::regclass AND i.indisprimary
                      ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        assert_eq!(key(&mut client), ["chain", "seq"]);

        // The table as earlier versions created it: a serial id, the database's collation.
        s.sql(
            "DROP TABLE audit_records, audit_checkpoints;
             CREATE TABLE audit_records (
                 id BIGSERIAL PRIMARY KEY, chain TEXT NOT NULL, seq BIGINT NOT NULL,
                 at TEXT NOT NULL, request_id TEXT NOT NULL, cpr TEXT, caller_id TEXT NOT NULL,
                 department TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL,
                 body TEXT NOT NULL, hash TEXT NOT NULL, UNIQUE (chain, seq));",
        );
        write(&s, 3);
        assert_eq!(key(&mut client), ["id"]);
        let ids: Vec<i64> = client
            .query("SELECT id FROM audit_records ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            ids.len() >= 3 && ids.windows(2).all(|w| w[0] < w[1]),
            "{ids:?}"
        );
        verify(&s).unwrap();
    }
}

#[test]
fn records_chain_and_verify_across_restarts() {
    for s in setups() {
        write(&s, 25);
        write(&s, 5);
        let summary = verify(&s).unwrap();
        assert_eq!(summary.len(), 1);
        // 2 start-up records + 30 lookups + 2 clean-stop records.
        assert_eq!(summary[0].records, 34);
        assert!(summary[0].checkpoints >= 4);
    }
}

#[test]
fn concurrent_appends_are_group_committed() {
    for s in setups() {
        let store = FaultInjecting::new(s.store());
        let commits = Arc::clone(&store.commits);
        let log = Arc::new(open(&s, Box::new(store)));
        let before = commits.load(Ordering::SeqCst);
        let mut seqs: Vec<u64> = block_on(async {
            let mut tasks = Vec::new();
            for i in 0..400 {
                let log = Arc::clone(&log);
                tasks.push(tokio::spawn(async move {
                    log.append(event(i)).await.unwrap().seq
                }));
            }
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap());
            }
            seqs
        });
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            400,
            "every append got its own place in the chain"
        );
        let transactions = commits.load(Ordering::SeqCst) - before;
        assert!(
            transactions < 200,
            "400 concurrent records took {transactions} transactions"
        );
        Arc::try_unwrap(log).unwrap().close();
        verify(&s).unwrap();
    }
}

#[test]
fn a_failing_store_refuses_appends_turns_unhealthy_and_recovers() {
    for s in setups() {
        let store = FaultInjecting::new(s.store());
        let failing = Arc::clone(&store.failing);
        let log = open(&s, Box::new(store));
        let health = log.health();
        block_on(log.append(event(1))).unwrap();
        failing.store(true, Ordering::SeqCst);
        assert!(block_on(log.append(event(2))).is_err());
        assert!(!*health.borrow());
        assert!(block_on(log.append(event(3))).is_err());
        failing.store(false, Ordering::SeqCst);
        let receipt = block_on(log.append(event(4))).unwrap();
        assert!(*health.borrow());
        // The failed records left no gap: the chain goes on from the last durable one, with
        // the recovery recorded first.
        assert_eq!(receipt.seq, 4);
        assert_eq!(maintenance_at(&s, 3), Maintenance::StoreRecovered);
        log.close();
        // Start-up, a lookup, the recovery, a lookup, clean stop.
        assert_eq!(verify(&s).unwrap()[0].records, 5);
    }
}

#[test]
fn sqlite_commits_the_next_batch_while_the_last_one_is_fsynced_and_answers_only_after_the_fsync() {
    let s = common::sqlite_store("audit");
    let store = FaultInjecting::new(s.store());
    let (commits, hold) = (Arc::clone(&store.commits), Arc::clone(&store.sync_hold));
    let log = Arc::new(open(&s, Box::new(store)));
    let runtime = common::runtime();
    let slow_disk = hold.lock().unwrap();
    let before = commits.load(Ordering::SeqCst);
    let first = spawn_append(&runtime, &log, event(1));
    wait_until("the first record is committed", || {
        commits.load(Ordering::SeqCst) > before
    });
    let second = spawn_append(&runtime, &log, event(2));
    // The writer is not waiting for the disk: it commits the next record meanwhile…
    wait_until(
        "the second record is committed while the first is fsynced",
        || commits.load(Ordering::SeqCst) > before + 1,
    );
    // …but neither caller hears of its record before the fsync that covers it.
    assert!(!first.is_finished() && !second.is_finished());
    drop(slow_disk);
    let first = runtime.block_on(first).unwrap().unwrap();
    let second = runtime.block_on(second).unwrap().unwrap();
    assert_eq!(second.seq, first.seq + 1);
    drop(runtime);
    Arc::try_unwrap(log).unwrap().close();
    assert_eq!(verify(&s).unwrap()[0].records, 4);
}

/// Only with two fsyncs in flight at once (the writer's default is one).
#[test]
fn sqlite_a_later_fsync_that_succeeds_does_not_answer_records_after_an_earlier_one_that_failed() {
    let s = common::sqlite_store("audit");
    let store = FaultInjecting::new(s.store());
    let (commits, syncs) = (Arc::clone(&store.commits), Arc::clone(&store.syncs));
    let (failing_syncs, late_error) = (
        Arc::clone(&store.failing_syncs),
        Arc::clone(&store.failing_sync_hold),
    );
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    let two_syncs = WriterOptions {
        sync_threads: 2,
        ..options(10)
    };
    let log = Arc::new(AuditLog::start(Box::new(store), signer, two_syncs).unwrap());
    let runtime = common::runtime();
    // The first record's fsync will fail, but only after the second record's has succeeded.
    let late = late_error.lock().unwrap();
    failing_syncs.store(1, Ordering::SeqCst);
    let before = (commits.load(Ordering::SeqCst), syncs.load(Ordering::SeqCst));
    let first = spawn_append(&runtime, &log, event(1));
    wait_until("the first record is committed and its fsync began", || {
        commits.load(Ordering::SeqCst) > before.0 && failing_syncs.load(Ordering::SeqCst) == 0
    });
    let second = spawn_append(&runtime, &log, event(2));
    wait_until("the second record's fsync has succeeded", || {
        syncs.load(Ordering::SeqCst) > before.1
    });
    assert!(
        !second.is_finished(),
        "a record was answered before the fsync of the one committed before it"
    );
    drop(late);
    assert!(runtime.block_on(first).unwrap().is_err());
    assert!(
        runtime.block_on(second).unwrap().is_err(),
        "its log frames follow frames the disk may have lost"
    );
    // The store recovers at the next write, and the chain still verifies.
    runtime.block_on(log.append(event(3))).unwrap();
    drop(runtime);
    Arc::try_unwrap(log).unwrap().close();
    verify(&s).unwrap();
}

/// The failure reaches the sync thread, which cannot wake the writer: the writer must look
/// again within `retry_every` while a batch of its is unanswered, not at the checkpoint interval.
#[test]
fn sqlite_an_fsync_failing_after_the_writer_went_idle_is_recovered_without_another_write() {
    let s = common::sqlite_store("audit");
    let store = FaultInjecting::new(s.store());
    let commits = Arc::clone(&store.commits);
    let (failing_syncs, late_error) = (
        Arc::clone(&store.failing_syncs),
        Arc::clone(&store.failing_sync_hold),
    );
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    let idle_long = WriterOptions {
        retry_every: Duration::from_millis(20),
        checkpoint_interval: Duration::from_secs(600),
        ..options(10)
    };
    let log = Arc::new(AuditLog::start(Box::new(store), signer, idle_long).unwrap());
    let health = log.health();
    let runtime = common::runtime();
    let late = late_error.lock().unwrap();
    failing_syncs.store(1, Ordering::SeqCst);
    let before = commits.load(Ordering::SeqCst);
    let first = spawn_append(&runtime, &log, event(1));
    wait_until("the record is committed and its fsync began", || {
        commits.load(Ordering::SeqCst) > before && failing_syncs.load(Ordering::SeqCst) == 0
    });
    // Nothing more is written: the writer is waiting for work when the disk reports the error.
    drop(late);
    assert!(runtime.block_on(first).unwrap().is_err());
    wait_until("healthy again without another write", || *health.borrow());
    drop(runtime);
    Arc::try_unwrap(log).unwrap().close();
    assert_eq!(maintenance_at(&s, 3), Maintenance::StoreRecovered);
    verify(&s).unwrap();
}

#[test]
fn sqlite_a_failed_fsync_refuses_its_records_turns_unhealthy_and_recovers() {
    let s = common::sqlite_store("audit");
    let store = FaultInjecting::new(s.store());
    let failing = Arc::clone(&store.sync_failing);
    let log = open(&s, Box::new(store));
    let health = log.health();
    block_on(log.append(event(1))).unwrap();
    failing.store(true, Ordering::SeqCst);
    // Committed, but its fsync failed: the caller must not go on as if it were durable.
    let error = block_on(log.append(event(2))).unwrap_err();
    assert!(error.to_string().contains("fsync"), "{error}");
    assert!(!*health.borrow());
    // While the disk still fails, recovery fails and nothing more is committed.
    assert!(block_on(log.append(event(3))).is_err());
    assert!(!*health.borrow());
    failing.store(false, Ordering::SeqCst);
    let receipt = block_on(log.append(event(4))).unwrap();
    assert!(*health.borrow());
    // Start-up, 1, and 2 (committed before its fsync failed; its caller was refused), the
    // recovery, then 4.
    assert_eq!(receipt.seq, 5);
    assert_eq!(maintenance_at(&s, 4), Maintenance::StoreRecovered);
    log.close();
    assert_eq!(verify(&s).unwrap()[0].records, 6);
}

#[test]
fn sqlite_a_second_writer_on_a_chain_cannot_fork_it() {
    // Two processes given one chain (or an operator's prune of a live gateway's chain): the
    // embedded store has no claim, but a writer whose head has moved is refused, so the chain
    // stays one line.
    let s = common::sqlite_store("audit");
    let a = open(&s, s.store());
    block_on(a.append(event(1))).unwrap();
    let b = open(&s, s.store());
    let error = block_on(a.append(event(2))).unwrap_err();
    assert!(error.to_string().contains("another writer"), "{error}");
    // Each goes on from the head it reads again, after the other's records.
    block_on(b.append(event(3))).unwrap();
    block_on(a.append(event(4))).unwrap();
    b.close();
    a.close();
    verify(&s).unwrap();
}

#[test]
fn a_store_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    std::fs::write(&db, b"this is not a database").unwrap();
    let keys = Arc::new(AtRestKeys::generate().unwrap());
    assert!(SqliteStore::open(&db, Durability::Full, keys.clone()).is_err());
    assert!(PostgresStore::connect("postgres://nobody@127.0.0.1:1/none", keys.clone()).is_err());
    let unwritable = Path::new("/proc/samblik-cannot-write-here/audit.db");
    assert!(SqliteStore::open(unwritable, Durability::Full, keys).is_err());
}

#[test]
fn a_flipped_byte_is_found_at_its_record() {
    for s in setups() {
        write(&s, 30);
        s.flip_body_byte(17);
        assert_eq!(broken_at(&s), 17);
    }
}

#[test]
fn a_changed_index_column_is_found() {
    for s in setups() {
        write(&s, 30);
        // Every column a search filters on, each edited in place on its own record.
        let edits = [
            (
                9,
                "cpr = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
            ),
            (10, "caller_id = 'cw-someone-else'"),
            (11, "department = 'child-welfare'"),
            (12, "outcome = 'denied'"),
            (13, "action = 'consents-listed'"),
            (14, "at = '2026-01-01T00:00:00.000000Z'"),
        ];
        for (seq, edit) in edits.into_iter().rev() {
            s.sql(&format!(
                "UPDATE audit_records SET {edit} WHERE seq = {seq}"
            ));
            assert_eq!(broken_at(&s), seq, "{edit}");
        }
    }
}

#[test]
fn a_deleted_record_is_found() {
    for s in setups() {
        write(&s, 30);
        s.sql("DELETE FROM audit_records WHERE seq = 12");
        assert_eq!(broken_at(&s), 12);
    }
}

#[test]
fn swapped_records_are_found() {
    for s in setups() {
        write(&s, 30);
        s.sql(
            "UPDATE audit_records SET seq = -1 WHERE seq = 20;
         UPDATE audit_records SET seq = 20 WHERE seq = 21;
         UPDATE audit_records SET seq = 21 WHERE seq = -1;",
        );
        assert_eq!(broken_at(&s), 20);
    }
}

#[test]
fn a_cut_tail_is_found_by_the_signed_checkpoint() {
    for s in setups() {
        write(&s, 30);
        let summary = verify(&s).unwrap();
        let last = summary[0].records;
        s.sql(&format!(
            "DELETE FROM audit_records WHERE seq > {}",
            last - 3
        ));
        assert_eq!(broken_at(&s), last - 2);
    }
}

#[test]
fn a_cut_and_forged_tail_is_found() {
    for s in setups() {
        write(&s, 30);
        // Cut the tail back to seq 15 and write a forged, correctly hashed chain after it.
        s.sql("DELETE FROM audit_records WHERE seq > 15");
        {
            let mut store = s.store();
            let (mut seq, mut hash) = store.head("replica-a").unwrap().unwrap();
            let mut forged = Vec::new();
            for i in 0..20 {
                seq += 1;
                let r = AuditRecord::seal(
                    event(1000 + i),
                    "replica-a",
                    seq,
                    "2026-01-01T00:00:00Z".into(),
                    &hash,
                );
                hash.clone_from(&r.hash);
                forged.push(r);
            }
            let forged: Vec<_> = forged.iter().map(AuditRecord::to_sealed).collect();
            store.append(&forged, None).unwrap();
        }
        // Every hash links, but the signed checkpoint after 15 does not match.
        let at = broken_at(&s);
        assert!(at > 15 && at <= 32, "found at {at}");
    }
}

/// Whoever can write to the database can delete the newest records together with their
/// checkpoints: what is left verifies. The witness, written outside the store as each
/// checkpoint became durable, still names the cut.
#[test]
fn a_cut_that_takes_its_checkpoints_along_is_found_by_the_witness() {
    use samblik_audit::witness::{Witness, WitnessFinding, Witnessed, check_witness};
    for s in setups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness/checkpoints.jsonl");
        let witnessed = |s: &Setup| -> Box<dyn AuditStore> {
            Box::new(Witnessed::new(s.store(), Witness::open(&path).unwrap()))
        };
        let log = open(&s, witnessed(&s));
        for i in 0..45 {
            block_on(log.append(event(i))).unwrap();
        }
        log.close();
        let key = load_verifying_key(&public_key_path(&s.key)).unwrap();
        let witness = Witness::read(&path).unwrap();
        assert!(
            witness.len() >= 5,
            "start-up, every 10 records and the stop: {witness:?}"
        );
        let head = verify(&s).unwrap()[0].records;
        assert_eq!(
            witness.last().unwrap().seq,
            head,
            "the clean stop is witnessed"
        );
        assert_eq!(check_witness(&mut *s.store(), &key, &witness).unwrap(), []);

        // Cut the newest records back to a signed checkpoint, and every checkpoint after it.
        let kept = witness[witness.len() - 3].seq;
        s.sql(&format!(
            "DELETE FROM audit_records WHERE seq > {kept};
             DELETE FROM audit_checkpoints WHERE seq > {kept};"
        ));
        verify(&s).expect("the store alone cannot tell");
        let findings = check_witness(&mut *s.store(), &key, &witness).unwrap();
        assert_eq!(
            findings,
            [WitnessFinding::Cut {
                chain: "replica-a".into(),
                witnessed: head,
                store_head: kept,
            }]
        );
        assert!(
            findings[0]
                .to_string()
                .contains(&format!("ends at seq {kept}")),
            "{}",
            findings[0]
        );

        // A witness line that is not a checkpoint, or is signed by another key, is no evidence.
        let mut forged = witness.last().unwrap().clone();
        forged.seq += 1_000;
        let findings = check_witness(&mut *s.store(), &key, &[forged]).unwrap();
        assert!(matches!(
            findings[..],
            [WitnessFinding::BadSignature { .. }]
        ));
        // A line cut short by a crash while it was written is left out; the rest read.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"chain\":\"rep"))
            .unwrap();
        assert_eq!(Witness::read(&path).unwrap(), witness);
    }
}

#[test]
fn an_idle_writer_signs_its_head() {
    for s in setups() {
        let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
        let mut o = options(1_000);
        o.checkpoint_interval = Duration::from_millis(50);
        let log = AuditLog::start(s.store(), signer, o).unwrap();
        block_on(log.append(event(1))).unwrap();
        let mut store = s.store();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let signed = store.last_checkpoint("replica-a").unwrap().map(|c| c.seq);
            if signed == Some(2) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "head never signed: {signed:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(log);
    }
}

// ---------------------------------------------------------------------------------------------
// Retention: pruning a chain's front at a signed checkpoint.

fn text_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A cutoff strictly after every record written so far and at or before every record written
/// after it returns (records carry microseconds): polls the clock until it ticks.
fn cutoff_now() -> chrono::DateTime<chrono::Utc> {
    let before = text_time(chrono::Utc::now());
    loop {
        let now = chrono::Utc::now();
        if text_time(now) > before {
            return now;
        }
        std::hint::spin_loop();
    }
}

fn open_with(s: &Setup, options: WriterOptions) -> AuditLog {
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    AuditLog::start(s.store(), signer, options).unwrap()
}

fn prune(s: &Setup, cutoff: chrono::DateTime<chrono::Utc>) -> Option<PruneReport> {
    let log = open(s, s.store());
    let report = block_on(log.prune(cutoff, "test")).unwrap();
    log.close();
    report
}

fn stored(s: &Setup) -> Vec<AuditRecord> {
    s.store()
        .records("replica-a", 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| AuditRecord::from_stored(&r.body, &r.hash).unwrap())
        .collect()
}

fn maintenance(record: &AuditRecord) -> Maintenance {
    Maintenance::of(record).unwrap_or_else(|| panic!("not a maintenance record: {record:?}"))
}

/// What the maintenance record at `seq` did.
fn maintenance_at(s: &Setup, seq: u64) -> Maintenance {
    let records = stored(s);
    maintenance(records.iter().find(|r| r.seq == seq).unwrap())
}

#[test]
fn a_prune_cuts_the_front_at_a_signed_checkpoint_and_the_chain_still_verifies() {
    for s in setups() {
        // Start-up 1, lookups 2..=31, clean stop 32 (signed).
        write(&s, 30);
        let cutoff = cutoff_now();
        let log = open(&s, s.store()); // start-up 33, after the cutoff
        let report = block_on(log.prune(cutoff, "test")).unwrap().unwrap();
        assert_eq!(
            (
                report.from_seq,
                report.through_seq,
                report.records,
                report.record_seq
            ),
            (1, 32, 32, 34)
        );
        assert!(!report.more);
        log.close(); // clean stop 35

        let summary = verify(&s).unwrap();
        assert_eq!((summary[0].first_seq, summary[0].records), (33, 3));
        let records = stored(&s);
        let pruned = &records[1];
        assert_eq!(pruned.action, Action::AuditMaintenance);
        assert_eq!(
            maintenance(pruned),
            Maintenance::Prune {
                from_seq: 1,
                through_seq: 32,
                records: 32,
                anchor_hash: report.anchor_hash.clone(),
                cutoff: text_time(cutoff),
                by: "test".into(),
            }
        );
        assert!(
            pruned
                .detail
                .as_deref()
                .unwrap()
                .starts_with("pruned records 1..=32 (older than ")
        );
        // The checkpoint at the cut is kept as the anchor; those before it are gone.
        let checkpoints = s.store().checkpoints("replica-a").unwrap();
        assert_eq!(checkpoints[0].seq, 32);
        assert_eq!(checkpoints[0].head_hash, report.anchor_hash);
        assert_eq!(records[0].prev_hash, report.anchor_hash);
    }
}

/// Retention means gone: a pruned record's CPR number is not left behind in the file's free
/// space (SQLite leaves deleted content in place unless told otherwise).
#[test]
fn a_pruned_record_leaves_no_trace_in_the_file() {
    let s = common::sqlite_store("audit-secure-delete");
    const CPR: &str = "3112992468";
    let log = open(&s, s.store());
    for i in 0..30 {
        let mut lookup = event(i);
        lookup.cpr = Some(cpr(CPR));
        block_on(log.append(lookup)).unwrap();
    }
    log.close();
    let file = || {
        // The last connection to close copies the log into the file and removes it.
        assert!(!s.sqlite_path().with_extension("db-wal").exists());
        std::fs::read(s.sqlite_path()).unwrap()
    };
    // The number itself is never in the file (it is sealed); its keyed hash, in the records'
    // index column, is until the prune.
    let index = s.keys.index(&cpr(CPR));
    let holds = |bytes: &[u8], what: &str| bytes.windows(what.len()).any(|w| w == what.as_bytes());
    assert!(!holds(&file(), CPR), "a CPR number in clear");
    assert!(
        holds(&file(), &index),
        "the records are in the file before the prune"
    );

    let report = prune(&s, cutoff_now()).unwrap();
    assert_eq!(report.records, 32);
    assert!(
        !holds(&file(), &index),
        "a pruned citizen's index is still in the file"
    );
    assert!(!holds(&file(), CPR), "a CPR number in clear");
    verify(&s).unwrap();
}

#[test]
fn a_prune_keeps_every_record_newer_than_the_cutoff() {
    for s in setups() {
        write(&s, 10); // 1..=12, the stop at 12 signed
        let cutoff = cutoff_now();
        write(&s, 10); // 13..=24
        let report = prune(&s, cutoff).unwrap();
        assert_eq!((report.from_seq, report.through_seq), (1, 12));
        let records = stored(&s);
        assert_eq!(records[0].seq, 13);
        assert!(records.iter().all(|r| r.at >= text_time(cutoff)));
        let newer: Vec<&str> = records
            .iter()
            .filter(|r| r.action == Action::Lookup)
            .map(|r| r.request_id.as_str())
            .collect();
        assert_eq!(
            newer,
            (0..10).map(|i| format!("req-{i}")).collect::<Vec<_>>()
        );
        verify(&s).unwrap();
        // Nothing is older than a cutoff before the first record.
        let long_ago = chrono::Utc::now() - chrono::Duration::days(365);
        assert_eq!(prune(&s, long_ago), None);
        verify(&s).unwrap();
    }
}

#[test]
fn repeated_prunes_and_restarts_continue_the_chain() {
    for s in setups() {
        write(&s, 10);
        let first = prune(&s, cutoff_now()).unwrap();
        write(&s, 5);
        let second = prune(&s, cutoff_now()).unwrap();
        assert_eq!(second.from_seq, first.through_seq + 1);
        assert!(second.through_seq > second.from_seq);
        verify(&s).unwrap();

        // A restart after a prune continues the chain where it was, after a clean stop.
        let before = verify(&s).unwrap()[0].clone();
        let log = open(&s, s.store());
        let receipt = block_on(log.append(event(99))).unwrap();
        log.close();
        let head = before.first_seq + before.records - 1;
        assert_eq!(receipt.seq, head + 2, "start-up record, then the lookup");
        let records = stored(&s);
        let started = records.iter().find(|r| r.seq == head + 1).unwrap();
        assert!(matches!(
            maintenance(started),
            Maintenance::WriterStarted {
                previous_stop: PreviousStop::Clean,
                ..
            }
        ));
        assert_eq!(started.prev_hash, before.head_hash);
        let after = verify(&s).unwrap();
        assert_eq!(after[0].first_seq, before.first_seq);
        assert_eq!(after[0].records, before.records + 3);
    }
}

#[test]
fn a_front_cut_without_a_prune_record_is_found() {
    for s in setups() {
        write(&s, 30);
        // Cut exactly as a prune would, at a signed checkpoint, but without its record.
        let at = s.store().checkpoints("replica-a").unwrap()[1].seq;
        s.sql(&format!(
            "DELETE FROM audit_records WHERE seq <= {at};
             DELETE FROM audit_checkpoints WHERE seq < {at};"
        ));
        assert_eq!(broken_at(&s), 1);
    }
}

#[test]
fn records_cut_beyond_the_prune_record_are_found() {
    for s in setups() {
        write(&s, 30);
        let report = prune(&s, cutoff_now()).unwrap();
        write(&s, 30);
        // Cut further, at a later signed checkpoint, leaving the prune record in place.
        let at = s
            .store()
            .checkpoints("replica-a")
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .find(|&seq| seq > report.record_seq + 5)
            .unwrap();
        s.sql(&format!(
            "DELETE FROM audit_records WHERE seq <= {at} AND seq <> {};
             DELETE FROM audit_checkpoints WHERE seq < {at};",
            report.record_seq
        ));
        assert_eq!(broken_at(&s), report.through_seq + 1);
    }
}

#[test]
fn a_prune_record_cut_away_with_its_prefix_is_found() {
    for s in setups() {
        write(&s, 30);
        let report = prune(&s, cutoff_now()).unwrap();
        write(&s, 10);
        // The prune record is signed by its own checkpoint: cut there, taking the record along.
        s.sql(&format!(
            "DELETE FROM audit_records WHERE seq <= {at};
             DELETE FROM audit_checkpoints WHERE seq < {at};",
            at = report.record_seq
        ));
        assert_eq!(broken_at(&s), 1);
    }
}

/// An audit-maintenance record as the writer words it, for forging one.
fn forged_maintenance() -> AuditEvent {
    let mut options = WriterOptions::new("replica-a");
    options.policy_version = "test".into();
    maintenance_event("forged".into(), &options)
}

/// Appends records sealed after `chain`'s head (or the genesis hash), unsigned, as someone
/// with write access to the store but without the key could.
fn forge(s: &Setup, chain: &str, records: Vec<(AuditEvent, Option<Maintenance>)>) -> u64 {
    let mut store = s.store();
    let (mut seq, mut hash) = store
        .head(chain)
        .unwrap()
        .unwrap_or((0, GENESIS_HASH.to_owned()));
    let mut sealed = Vec::new();
    for (event, change) in records {
        seq += 1;
        let record = AuditRecord::seal_with_change(
            event,
            change.map(|c| c.to_value()),
            chain,
            seq,
            text_time(chrono::Utc::now()),
            &hash,
        );
        hash.clone_from(&record.hash);
        sealed.push(record.to_sealed());
    }
    store.append(&sealed, None).unwrap();
    seq
}

fn broken(s: &Setup) -> verify::Broken {
    match verify(s) {
        Err(VerifyError::Broken(b)) => b.first,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn a_prune_record_forged_without_the_key_is_found() {
    for s in setups() {
        write(&s, 30); // 1..=32, signed at 1, every 10 records and at 32
        // A correctly hashed prune record after the head names a signed checkpoint as its
        // cut; the records through that checkpoint are then deleted. Only the key is missing:
        // the writer signs every prune record at its own seq.
        let anchor = s.store().checkpoints("replica-a").unwrap()[1].clone();
        assert!(anchor.seq > 1 && anchor.seq < 32, "{anchor:?}");
        let prune = Maintenance::Prune {
            from_seq: 1,
            through_seq: anchor.seq,
            records: anchor.seq,
            anchor_hash: anchor.head_hash.clone(),
            cutoff: text_time(chrono::Utc::now()),
            by: "retention schedule".into(),
        };
        let forged = forge(&s, "replica-a", vec![(forged_maintenance(), Some(prune))]);
        assert_eq!(forged, 33);
        s.sql(&format!(
            "DELETE FROM audit_records WHERE seq <= {at};
             DELETE FROM audit_checkpoints WHERE seq < {at};",
            at = anchor.seq
        ));
        let b = broken(&s);
        assert_eq!((b.chain.as_str(), b.seq), ("replica-a", forged), "{b}");
    }
}

#[test]
fn a_forged_clean_stop_record_is_found() {
    for s in setups() {
        write(&s, 5);
        let forged = forge(
            &s,
            "replica-a",
            vec![(forged_maintenance(), Some(Maintenance::WriterStopped))],
        );
        assert_eq!(broken_at(&s), forged);
    }
}

#[test]
fn a_chain_whose_records_are_all_deleted_is_found_by_its_checkpoints() {
    for s in setups() {
        write(&s, 30);
        s.sql("DELETE FROM audit_records");
        let b = broken(&s);
        assert_eq!((b.chain.as_str(), b.seq), ("replica-a", 1), "{b}");
    }
}

#[test]
fn a_chain_made_up_without_the_key_is_found() {
    for s in setups() {
        write(&s, 5);
        // Ordinary records from the genesis hash: no start-up record begins the chain.
        forge(&s, "gateway-9", (0..5).map(|i| (event(i), None)).collect());
        let b = broken(&s);
        assert_eq!((b.chain.as_str(), b.seq), ("gateway-9", 1), "{b}");
        // With a start-up record in front, its missing checkpoint gives it away.
        let started = Maintenance::WriterStarted {
            head_seq: 0,
            checkpoint_seq: 0,
            previous_stop: PreviousStop::FirstStart,
            missing: None,
            acknowledged: None,
        };
        let mut records = vec![(forged_maintenance(), Some(started))];
        records.extend((0..5).map(|i| (event(i), None)));
        forge(&s, "gateway-8", records);
        let b = broken(&s);
        assert_eq!((b.chain.as_str(), b.seq), ("gateway-8", 1), "{b}");
    }
}

#[test]
fn a_missing_key_is_created_only_for_a_store_without_checkpoints() {
    for s in setups() {
        // A new store: the key is created.
        let first = CheckpointSigner::load_or_create_for(&s.key, &mut *s.store()).unwrap();
        drop(first);
        write(&s, 3);
        let public = std::fs::read_to_string(public_key_path(&s.key)).unwrap();
        // Deleted beside a store that has checkpoints: refused, and the `.pub` stays.
        std::fs::remove_file(&s.key).unwrap();
        let err = CheckpointSigner::load_or_create_for(&s.key, &mut *s.store()).unwrap_err();
        assert!(err.to_string().contains("restore the key"), "{err}");
        assert!(!s.key.exists());
        assert_eq!(
            std::fs::read_to_string(public_key_path(&s.key)).unwrap(),
            public
        );
        verify(&s).unwrap();

        // Another replica's key, not the one the store is signed with: refused at start-up.
        let other = s.key.with_file_name("other-replica.key");
        CheckpointSigner::load_or_create(&other).unwrap();
        let err = CheckpointSigner::load_or_create_for(&other, &mut *s.store()).unwrap_err();
        assert!(err.to_string().contains("same key"), "{err}");
    }
}

#[test]
fn a_prune_never_deletes_records_that_do_not_verify() {
    for s in setups() {
        write(&s, 30);
        s.flip_body_byte(17);
        let log = open(&s, s.store());
        let refused = block_on(log.prune(cutoff_now(), "test")).unwrap_err();
        assert!(refused.to_string().contains("record 17"), "{refused}");
        // Refusing to prune is not a store failure: the log stays healthy.
        assert!(*log.health().borrow());
        log.close();
        assert_eq!(broken_at(&s), 17);
        // Nothing was pruned (record 17 no longer opens, so it is not read as a record here).
        assert_eq!(s.store().records("replica-a", 0, 1).unwrap()[0].seq, 1);
    }
}

#[test]
fn a_large_backlog_is_pruned_in_steps() {
    for s in setups() {
        let mut o = options(5);
        o.max_prune_records = 12;
        let log = open_with(&s, o.clone());
        for i in 0..40 {
            block_on(log.append(event(i))).unwrap();
        }
        log.close();
        let cutoff = cutoff_now();
        let log = open_with(&s, o);
        let mut steps = Vec::new();
        loop {
            let report = block_on(log.prune(cutoff, "test")).unwrap().unwrap();
            assert!(report.records <= 12, "{report:?}");
            steps.push(report.clone());
            if !report.more {
                break;
            }
            verify(&s).unwrap();
        }
        log.close();
        assert!(steps.len() >= 3, "{steps:?}");
        for pair in steps.windows(2) {
            assert_eq!(pair[1].from_seq, pair[0].through_seq + 1);
        }
        // Everything up to the last stop before the cutoff is gone.
        assert_eq!(steps.last().unwrap().through_seq, 42);
        verify(&s).unwrap();
    }
}

#[test]
fn the_retention_schedule_prunes_in_the_background() {
    for s in setups() {
        write(&s, 10);
        let mut o = options(10);
        o.retention = Some(Retention {
            keep: Duration::ZERO,
            every: Duration::from_millis(20),
        });
        let log = open_with(&s, o);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stored(&s)[0].seq == 1 {
            assert!(std::time::Instant::now() < deadline, "never pruned");
            std::thread::sleep(Duration::from_millis(10));
        }
        block_on(log.append(event(1))).unwrap();
        log.close();
        let summary = verify(&s).unwrap();
        assert!(summary[0].first_seq > 12, "{summary:?}");
        assert!(
            stored(&s)
                .iter()
                .any(|r| matches!(Maintenance::of(r), Some(Maintenance::Prune { by, .. }) if by == "retention schedule"))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up after a clean stop, a crash, a torn write or lost records.

#[test]
fn the_start_up_record_tells_a_clean_stop_from_an_unclean_one() {
    for s in setups() {
        write(&s, 3);
        // A "crash": the writer never stops. Every batch is signed, so the abandoned writer has
        // nothing left to write while the next one runs.
        let log = open_with(&s, options(1));
        block_on(log.append(event(4))).unwrap();
        std::mem::forget(log);
        if s.is_postgres() {
            // A crashed process's connection ends with it, and with it its claim on the chain.
            s.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()",
            );
        }
        write(&s, 1);
        let starts: Vec<(PreviousStop, String)> = stored(&s)
            .iter()
            .filter_map(|r| match Maintenance::of(r) {
                Some(Maintenance::WriterStarted { previous_stop, .. }) => {
                    Some((previous_stop, r.detail.clone().unwrap()))
                }
                _ => None,
            })
            .collect();
        let kinds: Vec<PreviousStop> = starts.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                PreviousStop::FirstStart,
                PreviousStop::Clean,
                PreviousStop::Unclean
            ]
        );
        assert!(
            starts[2]
                .1
                .starts_with("writer started; recovered after an unclean stop"),
            "{}",
            starts[2].1
        );
        assert!(
            starts[2]
                .1
                .contains("chain head at seq 7, last checkpoint at seq 7"),
            "{}",
            starts[2].1
        );
        verify(&s).unwrap();
    }
}

#[test]
fn signed_records_missing_at_start_up_close_the_chain_until_the_break_is_acknowledged() {
    for s in setups() {
        write(&s, 30); // 1..=32, the stop at 32 signed
        s.sql("DELETE FROM audit_records WHERE seq > 20");
        // Closed: nothing is written, every record is refused, and the log says it is unhealthy.
        let log = open(&s, s.store());
        assert!(!*log.health().borrow());
        let refused = block_on(log.append(event(1))).unwrap_err();
        assert!(
            matches!(&refused, AuditError::ChainBroken(why) if why.contains("records 21..=32")),
            "{refused}"
        );
        log.close();
        assert_eq!(s.store().head("replica-a").unwrap().unwrap().0, 20);

        // An operator acknowledges the break: the chain goes on after the signed checkpoint
        // (no seq is reused), and the start-up record says what was broken and who said so.
        let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
        let mut acknowledging = options(10);
        acknowledging.acknowledge_break = Some(Acknowledgement {
            by: "ops-1".into(),
            reason: "restored from last night's backup".into(),
        });
        AuditLog::start(s.store(), signer, acknowledging.clone())
            .unwrap()
            .close();
        let log = open(&s, s.store());
        assert!(*log.health().borrow());
        // 33 and 34: the acknowledging writer's start-up and stop; 35 this one's start-up.
        assert_eq!(block_on(log.append(event(1))).unwrap().seq, 36);
        log.close();
        // Acknowledging a chain that is not broken is refused.
        let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
        let nothing = AuditLog::start(s.store(), signer, acknowledging).unwrap_err();
        assert!(
            nothing.to_string().contains("no break to acknowledge"),
            "{nothing}"
        );
        let records = stored(&s);
        let started = records.iter().find(|r| r.seq == 33).unwrap();
        assert_eq!(
            maintenance(started),
            Maintenance::WriterStarted {
                head_seq: 20,
                checkpoint_seq: 32,
                previous_stop: PreviousStop::Unclean,
                missing: Some([21, 32]),
                acknowledged: Some(
                    "records 21..=32, signed by the checkpoint at 32, are missing from the \
                     store; acknowledged by ops-1: restored from last night's backup"
                        .into()
                ),
            }
        );
        assert!(
            started
                .detail
                .as_deref()
                .unwrap()
                .contains("records 21..=32"),
            "{started:?}"
        );
        // The gap is the only problem: the start-up record after it links to the signed
        // checkpoint the writer went on from.
        let breaks = breaks(&s);
        assert_eq!(breaks.first.seq, 21);
        assert_eq!(problems(&breaks), [21]);
        // Tampering after the gap is not hidden by it.
        s.flip_body_byte(36);
        assert_eq!(problems(&self::breaks(&s)), [21, 36]);
    }
}

fn breaks(s: &Setup) -> verify::Breaks {
    match verify(s) {
        Err(VerifyError::Broken(b)) => *b,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

/// The seqs of every problem found, listed or not, in order.
fn problems(breaks: &verify::Breaks) -> Vec<u64> {
    std::iter::once(&breaks.first)
        .chain(&breaks.further)
        .map(|b| b.seq)
        .collect()
}

#[test]
fn verification_goes_on_past_a_break_and_finds_each_problem_once() {
    for s in setups() {
        write(&s, 30); // 1..=32
        s.flip_body_byte(5);
        s.sql("DELETE FROM audit_records WHERE seq = 20");
        s.sql("UPDATE audit_records SET caller_id = 'cw-someone-else' WHERE seq = 27");
        let breaks = breaks(&s);
        assert_eq!(problems(&breaks), [5, 20, 27], "{breaks:#?}");
        assert_eq!(
            breaks.further[0].reason,
            "record missing (next stored record is 21)"
        );
        assert_eq!(breaks.unlisted, 0);
        assert!(breaks.verified.is_empty());
    }
}

#[test]
fn one_broken_chain_does_not_hide_the_others() {
    for s in setups() {
        write(&s, 30);
        let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
        let b = AuditLog::start(s.store(), signer, WriterOptions::new("replica-b")).unwrap();
        for i in 0..5 {
            block_on(b.append(event(i))).unwrap();
        }
        b.close();
        s.sql("DELETE FROM audit_records WHERE chain = 'replica-a' AND seq = 12");
        let breaks = breaks(&s);
        assert_eq!(
            (breaks.first.chain.as_str(), breaks.first.seq),
            ("replica-a", 12)
        );
        assert!(breaks.further.is_empty(), "{breaks:#?}");
        let verified: Vec<_> = breaks
            .verified
            .iter()
            .map(|c| (c.chain.as_str(), c.records))
            .collect();
        assert_eq!(verified, [("replica-b", 7)]);
    }
}

#[test]
fn a_chain_broken_throughout_lists_the_first_problems_and_counts_the_rest() {
    for s in setups() {
        write(&s, 30); // 1..=32
        s.sql("UPDATE audit_records SET department = 'elsewhere'");
        let breaks = breaks(&s);
        assert_eq!(breaks.further.len() + 1, verify::LISTED_PER_CHAIN);
        assert_eq!(breaks.unlisted, 32 - verify::LISTED_PER_CHAIN as u64);
        assert_eq!(problems(&breaks), (1..=20).collect::<Vec<u64>>());
    }
}

/// SQLite only: the WAL's last frame torn mid-way, as a crash during the write would leave it.
#[test]
fn a_torn_last_write_is_discarded_and_the_restart_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let key = dir.path().join("audit-signing.key");
    let keys = Arc::new(AtRestKeys::generate().unwrap());
    let signer = CheckpointSigner::load_or_create(&key).unwrap();
    let log = AuditLog::start(
        Box::new(SqliteStore::open(&db, Durability::Full, keys.clone()).unwrap()),
        signer,
        options(10),
    )
    .unwrap();
    let mut last = 0;
    for i in 0..15 {
        last = block_on(log.append(event(i))).unwrap().seq;
    }
    // Copy the store while the writer still has it open, so the WAL still holds the frames.
    let copy = tempfile::tempdir().unwrap();
    let (db2, wal2) = (
        copy.path().join("audit.db"),
        copy.path().join("audit.db-wal"),
    );
    std::fs::copy(&db, &db2).unwrap();
    std::fs::copy(dir.path().join("audit.db-wal"), &wal2).unwrap();
    log.close();
    let page: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let page = page.unsigned_abs();
    let wal_len = std::fs::metadata(&wal2).unwrap().len();
    assert!(wal_len > 32 + 2 * (24 + page), "the WAL holds frames");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal2)
        .unwrap()
        .set_len(wal_len - page / 2)
        .unwrap();

    let signer = CheckpointSigner::load_or_create(&key).unwrap();
    let log = AuditLog::start(
        Box::new(SqliteStore::open(&db2, Durability::Full, keys.clone()).unwrap()),
        signer,
        options(10),
    )
    .unwrap();
    log.close();
    let mut store = SqliteStore::open_read_only(&db2, keys).unwrap();
    let records: Vec<AuditRecord> = store
        .records("replica-a", 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| AuditRecord::from_stored(&r.body, &r.hash).unwrap())
        .collect();
    // The torn transaction held only the last lookup: everything before it is there.
    let lookups = records
        .iter()
        .filter(|r| r.action == Action::Lookup)
        .count();
    assert_eq!(lookups, 14);
    assert_eq!(records[usize::try_from(last).unwrap() - 1].seq, last);
    let started = &records[usize::try_from(last).unwrap() - 1];
    let detail = started.detail.as_deref().unwrap();
    assert!(
        detail.starts_with("writer started; recovered after an unclean stop")
            && detail.contains(&format!("chain head at seq {}", last - 1)),
        "{detail}"
    );
    let key = load_verifying_key(&public_key_path(&key)).unwrap();
    let summary = verify_store(&mut store, &key).unwrap();
    assert_eq!(summary[0].records, last + 1);
}

#[test]
fn a_corrupt_sqlite_file_refuses_to_start() {
    let s = common::sqlite_store("audit");
    write(&s, 300);
    let Backend::Sqlite(db) = &s.backend else {
        unreachable!("an SQLite store")
    };
    // Overwrite a page in the middle of the file with garbage.
    let len = std::fs::metadata(db).unwrap().len();
    let mut bytes = std::fs::read(db).unwrap();
    let middle = usize::try_from(len / 2 / 4096 * 4096).unwrap();
    for b in &mut bytes[middle + 8..middle + 4096] {
        *b = 0x5a;
    }
    std::fs::write(db, bytes).unwrap();
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    let error = SqliteStore::open(db, Durability::Full, s.keys())
        .and_then(|store| AuditLog::start(Box::new(store), signer, options(10)))
        .unwrap_err();
    assert!(error.to_string().contains("corrupt"), "{error}");
}
