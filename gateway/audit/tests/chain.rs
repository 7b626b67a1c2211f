//! The audit log over a real SQLite file: durability, group commit, fail-closed behaviour and
//! tamper evidence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::postgres::PostgresStore;
use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::testing::FaultInjecting;
use samblik_audit::verify::{VerifyError, verify_store};
use samblik_audit::*;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where a test's audit log lives: every test runs against SQLite and against PostgreSQL (a real
/// server; the README's test command starts one and sets `SAMBLIK_TEST_POSTGRES_URL`).
enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

struct Setup {
    _dir: tempfile::TempDir,
    backend: Backend,
    key: PathBuf,
}

impl Setup {
    fn store(&self) -> Box<dyn AuditStore> {
        match &self.backend {
            Backend::Sqlite(db) => Box::new(SqliteStore::open(db, Durability::Full).unwrap()),
            Backend::Postgres(url) => Box::new(PostgresStore::connect(url).unwrap()),
        }
    }

    fn sql(&self, statement: &str) {
        match &self.backend {
            Backend::Sqlite(db) => rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch(statement)
                .unwrap(),
            Backend::Postgres(url) => ::postgres::Client::connect(url, ::postgres::NoTls)
                .unwrap()
                .batch_execute(statement)
                .unwrap(),
        }
    }
}

/// One setup per backend, each with an empty store.
fn setups() -> Vec<Setup> {
    let mut setups = vec![setup(None)];
    match std::env::var("SAMBLIK_TEST_POSTGRES_URL") {
        Ok(admin) => setups.push(setup(Some(&admin))),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must test the PostgreSQL store: run the tests through ./scripts/test")
        }
        Err(_) => eprintln!("SAMBLIK_TEST_POSTGRES_URL not set: PostgreSQL store not tested"),
    }
    setups
}

fn setup(postgres_admin: Option<&str>) -> Setup {
    static DATABASES: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    let backend = match postgres_admin {
        None => Backend::Sqlite(dir.path().join("audit.db")),
        Some(admin) => {
            let name = format!(
                "samblik_audit_{}_{}",
                std::process::id(),
                DATABASES.fetch_add(1, Ordering::SeqCst)
            );
            let mut client = ::postgres::Client::connect(admin, ::postgres::NoTls).unwrap();
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
            let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
            Backend::Postgres(format!("{base}/{name}"))
        }
    };
    Setup {
        key: dir.path().join("audit-signing.key"),
        backend,
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn broken_at(s: &Setup) -> u64 {
    match verify(s) {
        Err(VerifyError::Broken(b)) => b.seq,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn records_chain_and_verify_across_restarts() {
    for s in setups() {
        write(&s, 25);
        write(&s, 5);
        let summary = verify(&s).unwrap();
        assert_eq!(summary.len(), 1);
        // 2 start-up records + 30 lookups.
        assert_eq!(summary[0].records, 32);
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
        // The failed records left no gap: the chain goes on from the last durable one.
        assert_eq!(receipt.seq, 3);
        log.close();
        assert_eq!(verify(&s).unwrap()[0].records, 3);
    }
}

#[test]
fn a_store_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    std::fs::write(&db, b"this is not a database").unwrap();
    assert!(SqliteStore::open(&db, Durability::Full).is_err());
    assert!(PostgresStore::connect("postgres://nobody@127.0.0.1:1/none").is_err());
    let unwritable = Path::new("/proc/samblik-cannot-write-here/audit.db");
    assert!(SqliteStore::open(unwritable, Durability::Full).is_err());
}

#[test]
fn a_flipped_byte_is_found_at_its_record() {
    for s in setups() {
        write(&s, 30);
        s.sql("UPDATE audit_records SET body = replace(body, '\"tier\":1', '\"tier\":3') WHERE seq = 17",
        );
        assert_eq!(broken_at(&s), 17);
    }
}

#[test]
fn a_changed_index_column_is_found() {
    for s in setups() {
        write(&s, 30);
        s.sql("UPDATE audit_records SET cpr = '0202020202' WHERE seq = 9");
        assert_eq!(broken_at(&s), 9);
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
            store.append(&forged, None).unwrap();
        }
        // Every hash links, but the signed checkpoint after 15 does not match.
        let at = broken_at(&s);
        assert!(at > 15 && at <= 32, "found at {at}");
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
