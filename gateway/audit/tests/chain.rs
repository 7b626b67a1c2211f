//! The audit log over a real SQLite file: durability, group commit, fail-closed behaviour and
//! tamper evidence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::testing::FaultInjecting;
use samblik_audit::verify::{VerifyError, verify_store};
use samblik_audit::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

struct Setup {
    _dir: tempfile::TempDir,
    db: PathBuf,
    key: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup {
        db: dir.path().join("audit.db"),
        key: dir.path().join("audit-signing.key"),
        _dir: dir,
    }
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
        cpr: Some(format!("01019{:05}", i % 100_000)),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: None,
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
        }],
        policy_version: "test".into(),
    }
}

fn options(every: u64) -> WriterOptions {
    let mut o = WriterOptions::new("replica-a");
    o.checkpoint_every = every;
    o
}

fn open(s: &Setup, store: impl AuditStore) -> AuditLog {
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    AuditLog::start(Box::new(store), signer, options(10)).unwrap()
}

fn verify(s: &Setup) -> Result<Vec<verify::ChainSummary>, VerifyError> {
    let key = load_verifying_key(&public_key_path(&s.key)).unwrap();
    let mut store = SqliteStore::open(&s.db, Durability::Full).unwrap();
    verify_store(&mut store, &key)
}

/// Writes `n` lookups and stops the writer (which signs its head on the way out).
async fn write(s: &Setup, n: usize) {
    let log = open(s, SqliteStore::open(&s.db, Durability::Full).unwrap());
    for i in 0..n {
        log.append(event(i)).await.unwrap();
    }
    log.close();
}

fn sql(s: &Setup, statement: &str) {
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn broken_at(s: &Setup) -> u64 {
    match verify(s) {
        Err(VerifyError::Broken(b)) => b.seq,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[tokio::test]
async fn records_chain_and_verify_across_restarts() {
    let s = setup();
    write(&s, 25).await;
    write(&s, 5).await;
    let summary = verify(&s).unwrap();
    assert_eq!(summary.len(), 1);
    // 2 start-up records + 30 lookups.
    assert_eq!(summary[0].records, 32);
    assert!(summary[0].checkpoints >= 4);
}

#[tokio::test]
async fn concurrent_appends_are_group_committed() {
    let s = setup();
    let store = FaultInjecting::new(SqliteStore::open(&s.db, Durability::Full).unwrap());
    let commits = Arc::clone(&store.commits);
    let log = Arc::new(open(&s, store));
    let before = commits.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(
            async move { log.append(event(i)).await.unwrap() },
        ));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
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

#[tokio::test]
async fn a_failing_store_refuses_appends_turns_unhealthy_and_recovers() {
    let s = setup();
    let store = FaultInjecting::new(SqliteStore::open(&s.db, Durability::Full).unwrap());
    let failing = Arc::clone(&store.failing);
    let log = open(&s, store);
    let health = log.health();
    log.append(event(1)).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    assert!(log.append(event(2)).await.is_err());
    assert!(!*health.borrow());
    assert!(log.append(event(3)).await.is_err());
    failing.store(false, Ordering::SeqCst);
    let receipt = log.append(event(4)).await.unwrap();
    assert!(*health.borrow());
    // The failed records left no gap: the chain goes on from the last durable one.
    assert_eq!(receipt.seq, 3);
    log.close();
    assert_eq!(verify(&s).unwrap()[0].records, 3);
}

#[tokio::test]
async fn the_start_up_fails_when_the_store_cannot_be_written() {
    let s = setup();
    std::fs::write(&s.db, b"this is not a database").unwrap();
    assert!(SqliteStore::open(&s.db, Durability::Full).is_err());
    let unwritable = Path::new("/proc/samblik-cannot-write-here/audit.db");
    assert!(SqliteStore::open(unwritable, Durability::Full).is_err());
}

#[tokio::test]
async fn a_flipped_byte_is_found_at_its_record() {
    let s = setup();
    write(&s, 30).await;
    sql(
        &s,
        "UPDATE audit_records SET body = replace(body, '\"tier\":1', '\"tier\":3') WHERE seq = 17",
    );
    assert_eq!(broken_at(&s), 17);
}

#[tokio::test]
async fn a_changed_index_column_is_found() {
    let s = setup();
    write(&s, 30).await;
    sql(
        &s,
        "UPDATE audit_records SET cpr = '0202020202' WHERE seq = 9",
    );
    assert_eq!(broken_at(&s), 9);
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let s = setup();
    write(&s, 30).await;
    sql(&s, "DELETE FROM audit_records WHERE seq = 12");
    assert_eq!(broken_at(&s), 12);
}

#[tokio::test]
async fn swapped_records_are_found() {
    let s = setup();
    write(&s, 30).await;
    sql(
        &s,
        "UPDATE audit_records SET seq = -1 WHERE seq = 20;
         UPDATE audit_records SET seq = 20 WHERE seq = 21;
         UPDATE audit_records SET seq = 21 WHERE seq = -1;",
    );
    assert_eq!(broken_at(&s), 20);
}

#[tokio::test]
async fn a_cut_tail_is_found_by_the_signed_checkpoint() {
    let s = setup();
    write(&s, 30).await;
    let summary = verify(&s).unwrap();
    let last = summary[0].records;
    sql(
        &s,
        &format!("DELETE FROM audit_records WHERE seq > {}", last - 3),
    );
    assert_eq!(broken_at(&s), last - 2);
}

#[tokio::test]
async fn a_cut_and_forged_tail_is_found() {
    let s = setup();
    write(&s, 30).await;
    // Cut the tail back to seq 15 and write a forged, correctly hashed chain after it.
    sql(&s, "DELETE FROM audit_records WHERE seq > 15");
    {
        let mut store = SqliteStore::open(&s.db, Durability::Full).unwrap();
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
        store.append(&forged, None).unwrap();
    }
    // Every hash links, but the signed checkpoint after 15 does not match.
    let at = broken_at(&s);
    assert!(at > 15 && at <= 32, "found at {at}");
}

#[tokio::test]
async fn an_idle_writer_signs_its_head() {
    let s = setup();
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    let mut o = options(1_000);
    o.checkpoint_interval = Duration::from_millis(50);
    let log = AuditLog::start(
        Box::new(SqliteStore::open(&s.db, Durability::Full).unwrap()),
        signer,
        o,
    )
    .unwrap();
    log.append(event(1)).await.unwrap();
    let mut store = SqliteStore::open(&s.db, Durability::Full).unwrap();
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(log);
}
