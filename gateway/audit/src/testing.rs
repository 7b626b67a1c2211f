//! What only tests and benchmarks use (feature `testing`, never in the production build): a
//! fault-injecting store for what happens when the audit log cannot be written (disk full, I/O
//! error, database down), and [`ScratchDatabase`], a test's own database on the test PostgreSQL
//! server ([`test_postgres_url`]).

use crate::checkpoint::Checkpoint;
use crate::registry::model::{ChangeOutcome, RegistryChange};
use crate::{AuditError, AuditStore, Commit, LogSync, SealChange, SealedRecord, StoredRecord};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Wraps a store; while `failing` is set, every append fails as a full disk would, and every
/// registry change fails after the change was applied, just before its record would be written
/// (so the inner store must roll the change back).
#[derive(Debug)]
pub struct FaultInjecting<S> {
    inner: S,
    pub failing: Arc<AtomicBool>,
    /// While set, every [`LogSync::sync`] and [`AuditStore::recover_sync`] fails, as a disk
    /// reporting a write-back error would: the commits themselves succeed.
    pub sync_failing: Arc<AtomicBool>,
    /// Held by a test, it keeps every [`LogSync::sync`] waiting (a slow disk).
    pub sync_hold: Arc<Mutex<()>>,
    /// The next this many syncs fail, each after waiting for `failing_sync_hold` (a disk whose
    /// write-back error shows up late), while the others go on.
    pub failing_syncs: Arc<AtomicUsize>,
    pub failing_sync_hold: Arc<Mutex<()>>,
    /// Syncs that have returned.
    pub syncs: Arc<AtomicUsize>,
    /// Appends that reached the inner store (each one transaction).
    pub commits: Arc<AtomicUsize>,
    /// While set, every registry change is committed by the inner store and then reported
    /// failed, as a change whose fsync failed would be: in the store, but never answered.
    pub changes_unconfirmed: Arc<AtomicBool>,
}

/// The inner store's [`LogSync`], failing while `failing` is set.
struct FaultInjectingSync {
    inner: Box<dyn LogSync>,
    failing: Arc<AtomicBool>,
    hold: Arc<Mutex<()>>,
    failing_syncs: Arc<AtomicUsize>,
    failing_hold: Arc<Mutex<()>>,
    syncs: Arc<AtomicUsize>,
}

impl LogSync for FaultInjectingSync {
    fn sync(&self) -> Result<(), AuditError> {
        let result = if self
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            drop(lock(&self.failing_hold));
            Err(sync_fault())
        } else {
            drop(lock(&self.hold));
            if self.failing.load(Ordering::SeqCst) {
                Err(sync_fault())
            } else {
                self.inner.sync()
            }
        };
        self.syncs.fetch_add(1, Ordering::SeqCst);
        result
    }
}

fn full_fault() -> AuditError {
    AuditError::Store("database or disk is full (injected fault)".into())
}

fn lock(hold: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    hold.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sync_fault() -> AuditError {
    AuditError::Store("cannot fsync the audit log: Input/output error (injected fault)".into())
}

impl<S: AuditStore> FaultInjecting<S> {
    pub fn new(inner: S) -> Self {
        FaultInjecting {
            inner,
            failing: Arc::new(AtomicBool::new(false)),
            sync_failing: Arc::new(AtomicBool::new(false)),
            sync_hold: Arc::new(Mutex::new(())),
            failing_syncs: Arc::new(AtomicUsize::new(0)),
            failing_sync_hold: Arc::new(Mutex::new(())),
            syncs: Arc::new(AtomicUsize::new(0)),
            commits: Arc::new(AtomicUsize::new(0)),
            changes_unconfirmed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<S> FaultInjecting<S> {
    /// A write about to reach the inner store: fails while `failing`, else is counted.
    fn commit(&self) -> Result<(), AuditError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(full_fault());
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl<S: AuditStore> AuditStore for FaultInjecting<S> {
    fn cpr_index(&self, cpr: &samblik_cpr::Cpr) -> String {
        self.inner.cpr_index(cpr)
    }
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        self.inner.head(chain)
    }
    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        self.inner.last_checkpoint(chain)
    }
    fn append(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        self.commit()?;
        self.inner.append(records, checkpoint)
    }
    fn append_unsynced(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Commit, AuditError> {
        self.commit()?;
        self.inner.append_unsynced(records, checkpoint)
    }
    fn deferred_sync(&mut self) -> Result<Option<Box<dyn LogSync>>, AuditError> {
        Ok(self.inner.deferred_sync()?.map(|inner| {
            Box::new(FaultInjectingSync {
                inner,
                failing: Arc::clone(&self.sync_failing),
                hold: Arc::clone(&self.sync_hold),
                failing_syncs: Arc::clone(&self.failing_syncs),
                failing_hold: Arc::clone(&self.failing_sync_hold),
                syncs: Arc::clone(&self.syncs),
            }) as Box<dyn LogSync>
        }))
    }
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        if self.sync_failing.load(Ordering::SeqCst) {
            return Err(sync_fault());
        }
        self.inner.recover_sync()
    }
    fn chains(&mut self) -> Result<Vec<String>, AuditError> {
        self.inner.chains()
    }
    fn records(
        &mut self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        self.inner.records(chain, after_seq, limit)
    }
    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        self.inner.checkpoints(chain)
    }
    fn witnessed(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        self.inner.witnessed(chain)
    }
    fn maintenance_records(&mut self, chain: &str) -> Result<Vec<StoredRecord>, AuditError> {
        self.inner.maintenance_records(chain)
    }
    fn prune_anchor(
        &mut self,
        chain: &str,
        cutoff: &str,
        max_seq: u64,
    ) -> Result<Option<Checkpoint>, AuditError> {
        self.inner.prune_anchor(chain, cutoff, max_seq)
    }
    fn prune(
        &mut self,
        chain: &str,
        through_seq: u64,
        expected: u64,
        record: &SealedRecord,
        checkpoint: &Checkpoint,
    ) -> Result<u64, AuditError> {
        self.commit()?;
        self.inner
            .prune(chain, through_seq, expected, record, checkpoint)
    }
    fn check_integrity(&mut self) -> Result<(), AuditError> {
        self.inner.check_integrity()
    }
    fn claim(&mut self, chain: &str) -> Result<(), AuditError> {
        self.inner.claim(chain)
    }
    fn apply_change(
        &mut self,
        change: &RegistryChange,
        seal: &mut SealChange<'_>,
    ) -> Result<ChangeOutcome, AuditError> {
        let failing = Arc::clone(&self.failing);
        let mut failing_seal = |outcome: ChangeOutcome| {
            if failing.load(Ordering::SeqCst) {
                return Err(full_fault());
            }
            seal(outcome)
        };
        let result = self.inner.apply_change(change, &mut failing_seal);
        if result.is_ok() {
            self.commits.fetch_add(1, Ordering::SeqCst);
            if self.changes_unconfirmed.load(Ordering::SeqCst) {
                return Err(sync_fault());
            }
        }
        result
    }
}

/// The environment variable that names the test PostgreSQL server's administrative URL;
/// `./scripts/test` starts the server and sets it.
pub const TEST_POSTGRES_URL_ENV: &str = "SAMBLIK_TEST_POSTGRES_URL";

/// The test PostgreSQL server's administrative URL. A test of the PostgreSQL store fails without
/// one, never passes by skipping what it was written to check.
#[allow(clippy::panic)]
pub fn test_postgres_url() -> String {
    match std::env::var(TEST_POSTGRES_URL_ENV) {
        Ok(url) => url,
        Err(_) => panic!(
            "{TEST_POSTGRES_URL_ENV} is not set: the PostgreSQL store's tests need a server. Run \
             ./scripts/test, or start one with `. scripts/postgres.sh && start_test_postgres`"
        ),
    }
}

/// A database of its own on a PostgreSQL server (given by an administrator's URL), for a test or
/// a benchmark: created empty, and dropped when this goes, ending any session still in it.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl std::fmt::Debug for ScratchDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold a password: never print them.
        f.debug_struct("ScratchDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ScratchDatabase {
    /// Creates `samblik_{label}_{process}_{n}` on the server at `admin` (`label`: lower-case
    /// letters, digits and `_`).
    pub fn create(admin: &str, label: &str) -> Result<Self, AuditError> {
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(AuditError::Store(format!(
                "{label:?} cannot name a scratch database"
            )));
        }
        let name = format!(
            "samblik_{label}_{}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::SeqCst)
        );
        let mut client = postgres::Client::connect(admin, postgres::NoTls)?;
        // One left by an earlier process of the same id that did not end cleanly.
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        client.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
        Ok(ScratchDatabase {
            url: format!("{base}/{name}"),
            admin: admin.to_owned(),
            name,
        })
    }

    /// The database's URL: the administrator's, naming this database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let dropped = postgres::Client::connect(&self.admin, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            tracing::warn!(database = %self.name, error = %e, "a scratch database was not dropped");
        }
    }
}

/// A synthetic CPR number for a test, from its 10 digits (or `DDMMYY-SSSS`); panics on one that
/// is not a CPR number, which is a mistake in the test.
#[allow(clippy::panic)]
pub fn cpr(digits: &str) -> samblik_cpr::Cpr {
    samblik_cpr::Cpr::parse(digits).unwrap_or_else(|e| panic!("not a test CPR number: {e}"))
}

#[cfg(test)]
mod tests {
    use super::ScratchDatabase;

    #[test]
    fn a_scratch_database_is_named_only_by_a_plain_label() {
        // Refused before any connection: nothing listens at this address.
        for label in [
            "",
            "x; DROP DATABASE postgres",
            "Upper",
            "with-dash",
            "q\"uote",
        ] {
            let refused =
                ScratchDatabase::create("postgres://postgres@127.0.0.1:1/postgres", label);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("cannot name a scratch database")),
                "{label:?}: {refused:?}"
            );
        }
    }
}
