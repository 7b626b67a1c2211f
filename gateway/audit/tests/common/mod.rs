//! What the audit store's test suites share: one empty store per backend — a SQLite file and a
//! database of its own on the real PostgreSQL server the README's test command starts.

#![allow(dead_code)]

use samblik_audit::postgres::PostgresStore;
use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::testing::{ScratchDatabase, test_postgres_url};
use samblik_audit::{AtRestKeys, AuditStore, Registry};
use std::path::PathBuf;

pub enum Backend {
    Sqlite(PathBuf),
    Postgres(String),
}

/// An empty store of one backend, with a place for its checkpoint key.
pub struct TestStore {
    _dir: tempfile::TempDir,
    pub backend: Backend,
    pub key: PathBuf,
    /// The keys its CPR columns are hashed and its bodies sealed with.
    pub keys: std::sync::Arc<AtRestKeys>,
    /// The PostgreSQL store's database, dropped with it.
    _database: Option<ScratchDatabase>,
}

impl TestStore {
    pub fn store(&self) -> Box<dyn AuditStore> {
        match &self.backend {
            Backend::Sqlite(db) => {
                Box::new(SqliteStore::open(db, Durability::Full, self.keys()).unwrap())
            }
            Backend::Postgres(url) => Box::new(PostgresStore::connect(url, self.keys()).unwrap()),
        }
    }

    /// The SQLite store's file (a test of SQLite's own layout).
    pub fn sqlite_path(&self) -> &std::path::Path {
        match &self.backend {
            Backend::Sqlite(db) => db,
            Backend::Postgres(_) => panic!("not an SQLite store"),
        }
    }

    pub fn registry(&self) -> Registry {
        match &self.backend {
            Backend::Sqlite(db) => Registry::sqlite(db, self.keys()).unwrap(),
            Backend::Postgres(url) => Registry::postgres(url, self.keys()).unwrap(),
        }
    }

    /// Runs SQL statements directly on the store (to tamper with it, or to fill it fast).
    pub fn sql(&self, statements: &str) {
        match &self.backend {
            Backend::Sqlite(db) => rusqlite::Connection::open(db)
                .unwrap()
                .execute_batch(statements)
                .unwrap(),
            Backend::Postgres(url) => ::postgres::Client::connect(url, ::postgres::NoTls)
                .unwrap()
                .batch_execute(statements)
                .unwrap(),
        }
    }

    /// The store's keys, to open it with.
    pub fn keys(&self) -> std::sync::Arc<AtRestKeys> {
        std::sync::Arc::clone(&self.keys)
    }

    /// Changes one byte in the middle of record `seq`'s stored (sealed) body, as a flipped bit
    /// on disk or a hand edit would: it no longer opens.
    pub fn flip_body_byte(&self, seq: i64) {
        match &self.backend {
            Backend::Sqlite(db) => {
                let conn = rusqlite::Connection::open(db).unwrap();
                let mut body: Vec<u8> = conn
                    .query_row(
                        "SELECT body FROM audit_records WHERE seq = ?1",
                        [seq],
                        |r| r.get(0),
                    )
                    .unwrap();
                let middle = body.len() / 2;
                body[middle] ^= 0x20;
                conn.execute(
                    "UPDATE audit_records SET body = ?1 WHERE seq = ?2",
                    rusqlite::params![body, seq],
                )
                .unwrap();
            }
            Backend::Postgres(url) => {
                let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
                let body: String = client
                    .query_one("SELECT body FROM audit_records WHERE seq = $1", &[&seq])
                    .unwrap()
                    .get(0);
                // A base64 digit changed to another one.
                let middle = body.len() / 2;
                let swapped = if &body[middle..=middle] == "A" {
                    "B"
                } else {
                    "A"
                };
                let body = format!("{}{swapped}{}", &body[..middle], &body[middle + 1..]);
                client
                    .execute(
                        "UPDATE audit_records SET body = $1 WHERE seq = $2",
                        &[&body, &seq],
                    )
                    .unwrap();
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }
}

/// One empty store per backend. Without the test PostgreSQL server, this fails.
pub fn test_stores(prefix: &str) -> Vec<TestStore> {
    vec![
        test_store(prefix, None),
        test_store(prefix, Some(&test_postgres_url())),
    ]
}

/// An empty SQLite store, for what only SQLite has (its file, its WAL).
pub fn sqlite_store(prefix: &str) -> TestStore {
    test_store(prefix, None)
}

fn test_store(prefix: &str, postgres_admin: Option<&str>) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let database = postgres_admin.map(|admin| ScratchDatabase::create(admin, prefix).unwrap());
    let backend = match &database {
        None => Backend::Sqlite(dir.path().join("audit.db")),
        Some(database) => Backend::Postgres(database.url().to_owned()),
    };
    TestStore {
        key: dir.path().join("audit-signing.key"),
        keys: std::sync::Arc::new(AtRestKeys::generate().unwrap()),
        backend,
        _dir: dir,
        _database: database,
    }
}

/// Waits (bounded) until `done` holds: for what another thread does, with no fixed sleep.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Appends `event` on `runtime` without waiting for its receipt.
pub fn spawn_append(
    runtime: &tokio::runtime::Runtime,
    log: &std::sync::Arc<samblik_audit::AuditLog>,
    event: samblik_audit::AuditEvent,
) -> tokio::task::JoinHandle<Result<samblik_audit::Receipt, samblik_audit::AuditError>> {
    let log = std::sync::Arc::clone(log);
    runtime.spawn(async move { log.append(event).await })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain answered lookup by one of five jobcenter caseworkers, for tests about the log rather
/// than what a record says.
pub fn lookup_event(i: usize) -> samblik_audit::AuditEvent {
    use samblik_audit::{Action, Actor, AuditEvent, Outcome};
    AuditEvent {
        request_id: format!("req-{i}"),
        action: Action::Lookup,
        actor: Actor {
            caller_id: format!("cw-{}", i % 5),
            name: "Test".into(),
            department: "jobcenter".into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: Some(samblik_audit::testing::cpr("0101901235")),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: None,
        reason: None,
        sources: Vec::new(),
        policy_version: "test".into(),
    }
}

/// An empty PostgreSQL store, for what only PostgreSQL has (sessions, locks); `None` off CI
/// without a server (CI fails in [`test_stores`] instead).
pub fn postgres_store(prefix: &str) -> TestStore {
    test_store(prefix, Some(&test_postgres_url()))
}
