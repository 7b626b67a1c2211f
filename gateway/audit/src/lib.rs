//! Samblik's audit log: every request leaves one record, written durably before the answer does —
//! hash-chained ([`record`]), with signed checkpoints ([`checkpoint`]), by one group-commit writer
//! ([`AuditLog`]) into SQLite ([`sqlite`]) or PostgreSQL ([`postgres`]). Consents and access
//! requests ([`registry`]) live in the same store. If the store cannot write, nothing is
//! disclosed.
//!
//! The design, with the writer's diagram: `docs/audit-store.md`.

pub mod atrest;
pub mod checkpoint;
pub mod maintenance;
pub mod record;
pub mod registry;
pub mod review;
pub mod search;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;
pub mod witness;
mod writer;

// The stores live in `store/`, a folder each; their callers find them at the crate's top.
pub use store::postgres;
pub use store::postgres::pipeline as pg_pipeline;
pub use store::sqlite;
pub use store::sqlite::bodies;

pub use samblik_cpr::Cpr;

pub use atrest::{AtRestKeys, Sealed};
pub use checkpoint::{Checkpoint, CheckpointSigner};
pub use maintenance::{Maintenance, PreviousStop, PruneReport, Retention};
pub use record::{
    Action, Actor, AuditEvent, AuditRecord, CaseEntry, EncodedEvent, FOREIGN_CITIZEN, GENESIS_HASH,
    Indexed, Outcome, SealedRecord, SourceEntry,
};
pub use registry::{
    AccessRequest, ChangeOutcome, Consent, ConsentKind, Recipients, Registry, RegistryChange,
    RegistryReader, RequestFilter, RequestState,
};
pub use writer::{
    Acknowledgement, AuditLog, Receipt, SYNC_THREADS, WriterOptions, maintenance_event,
};

/// Whether a commit waits for the disk, in either store. `Off` exists only to measure what
/// durability costs; never run a municipality on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk before it is reported durable: SQLite's log fsync'ed, or
    /// PostgreSQL's WAL flushed (`synchronous_commit = on`).
    Full,
    /// Nothing waits for the disk: SQLite `synchronous=OFF`, PostgreSQL
    /// `synchronous_commit = off`.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The store failed (I/O error, disk full, database unreachable).
    #[error("audit store: {0}")]
    Store(String),
    /// The signing key could not be read or created.
    #[error("audit signing key: {0}")]
    Key(String),
    /// The audit data keys ([`atrest`]) could not be read or created, or are not the store's.
    #[error("audit data key: {0}")]
    DataKey(String),
    /// The writer has stopped.
    #[error("the audit writer is not running")]
    Stopped,
    /// The chain failed its start-up check (its tail against its last signed checkpoint and
    /// the witness): nothing is appended to it until an operator acknowledges the break
    /// (`samblik audit acknowledge-break`).
    #[error("the audit chain is broken and closed until the break is acknowledged: {0}")]
    ChainBroken(String),
}

/// A record as read back for verification: the indexed columns as the store holds them, and the
/// body opened (the canonical JSON). Verification holds every column a search filters on to the
/// hashed body, so the CPR column stays the raw text here: the citizen's keyed hash
/// ([`AtRestKeys::index`]; a column edited to anything else is a finding, not a read error);
/// `Debug` prints neither it nor the body.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub request_id: String,
    pub cpr: Option<String>,
    pub caller_id: String,
    pub body: String,
    pub hash: String,
    pub at: String,
    pub department: String,
    pub action: String,
    pub outcome: String,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRecord")
            .field("seq", &self.seq)
            .field("request_id", &self.request_id)
            .field("cpr", &self.cpr.as_ref().map(|_| "<cpr redacted>"))
            .field("caller_id", &self.caller_id)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("hash", &self.hash)
            .field("at", &self.at)
            .field("department", &self.department)
            .field("action", &self.action)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl StoredRecord {
    /// Whether the columns a search filters on say what the record's hashed content says (the
    /// chain and seq aside): one edited in place would show a record to the wrong search — a
    /// lookup to another citizen — or hide it from the right one.
    pub(crate) fn columns_agree(&self, record: &AuditRecord, keys: &AtRestKeys) -> bool {
        record.seq == self.seq
            && record.request_id == self.request_id
            && record.cpr.as_ref().map(|c| keys.index(c)).as_deref() == self.cpr.as_deref()
            && record.actor.caller_id == self.caller_id
            && record.at == self.at
            && record.actor.department == self.department
            && record.action.as_str() == self.action
            && record.outcome.as_str() == self.outcome
    }
}

/// The columns a [`StoredRecord`] is read from, in its fields' order.
pub(crate) const STORED_COLUMNS: &str =
    "seq, request_id, cpr, caller_id, body, hash, at, department, action, outcome";

/// Every chain a store holds anything of: records or checkpoints. A chain whose records were
/// all deleted still has its checkpoints, and verification must see it.
pub(crate) const CHAINS: &str = "SELECT chain FROM audit_records
     UNION SELECT chain FROM audit_checkpoints ORDER BY chain";

/// What [`AuditStore::append_unsynced`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Committed and durable already, as [`AuditStore::append`] would.
    Durable,
    /// Kept once a [`LogSync::sync`] that began after the call has succeeded.
    Deferred,
}

/// Makes durable, on a thread of its own, what a store committed with
/// [`AuditStore::append_unsynced`]: see [`AuditStore::deferred_sync`].
pub trait LogSync: Send + Sync + 'static {
    /// Returns once everything committed before the call is durable. Several threads may call
    /// it at once.
    fn sync(&self) -> Result<(), AuditError>;
}

/// Where records are kept. Implementations commit each `append` atomically and durably: when it
/// returns `Ok`, every record and the checkpoint survive a crash; when it fails, none was kept.
pub trait AuditStore: Send + 'static {
    /// The citizen's entry in the store's CPR index columns: its keyed hash under the store's
    /// index key ([`AtRestKeys::index`]). Verification holds the column to the record with it.
    fn cpr_index(&self, cpr: &Cpr) -> String;
    /// The seq and hash of the chain's last record.
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError>;
    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError>;
    fn append(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError>;
    /// Writes like [`AuditStore::append`], atomically, but may return before the batch is
    /// durable, or even committed ([`Commit::Deferred`]): it is kept once a [`LogSync::sync`]
    /// that began after this returned has succeeded. If that sync fails, the batch may not have
    /// been kept: the writer reads the chain's head again after [`AuditStore::recover_sync`].
    /// The default is `append`, durable at once.
    fn append_unsynced(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Commit, AuditError> {
        self.append(records, checkpoint).map(|()| Commit::Durable)
    }
    /// For a store that can overlap one batch's commit or fsync with the next batch's work: the
    /// handle that makes its [`AuditStore::append_unsynced`] batches durable. SQLite commits at
    /// once and fsyncs on the sync threads; PostgreSQL commits on connections of its own
    /// ([`postgres`]). `None`, the default: every commit waits for the disk itself.
    fn deferred_sync(&mut self) -> Result<Option<Box<dyn LogSync>>, AuditError> {
        Ok(None)
    }
    /// After a [`LogSync::sync`] failed: makes everything committed so far durable by a path
    /// that does not rely on the failed writes (after a failed fsync the kernel may have
    /// dropped them), or fails. The writer refuses records until this succeeds, then reads the
    /// chain's head again.
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        Ok(())
    }
    /// Every chain with records or checkpoints in the store, by name.
    fn chains(&mut self) -> Result<Vec<String>, AuditError>;
    /// Up to `limit` records of `chain` after `after_seq`, in order.
    fn records(
        &mut self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError>;
    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError>;
    /// The newest checkpoint of `chain` that a witness outside the store holds
    /// ([`crate::witness`]); `None` without a witness. Its signature is not checked here.
    fn witnessed(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        let _ = chain;
        Ok(None)
    }
    /// The chain's audit-maintenance records (start-ups, stops, prunes), in order: verification
    /// reads the prune records first to learn where the chain's front was cut. The default reads
    /// the whole chain.
    fn maintenance_records(&mut self, chain: &str) -> Result<Vec<StoredRecord>, AuditError> {
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let page = self.records(chain, after, 10_000)?;
            let Some(last) = page.last() else {
                return Ok(found);
            };
            after = last.seq;
            found.extend(page.into_iter().filter(|r| {
                AuditRecord::from_stored(&r.body, &r.hash)
                    .is_ok_and(|record| record.action == Action::AuditMaintenance)
            }));
        }
    }
    /// Where a prune may cut the chain: the latest signed checkpoint at or before `max_seq` whose
    /// record is still stored and comes before every record written at or after `cutoff`
    /// (RFC 3339, as records' `at`).
    fn prune_anchor(
        &mut self,
        chain: &str,
        cutoff: &str,
        max_seq: u64,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let _ = (chain, cutoff, max_seq);
        Err(AuditError::Store("this audit store cannot prune".into()))
    }
    /// In one transaction: deletes the chain's records through `through_seq` (exactly
    /// `expected` of them, or nothing is changed) and its checkpoints before `through_seq`, and
    /// appends `record` (the prune record) with `checkpoint`. Consents and access requests are
    /// never touched.
    fn prune(
        &mut self,
        chain: &str,
        through_seq: u64,
        expected: u64,
        record: &SealedRecord,
        checkpoint: &Checkpoint,
    ) -> Result<u64, AuditError> {
        let _ = (chain, through_seq, expected, record, checkpoint);
        Err(AuditError::Store("this audit store cannot prune".into()))
    }
    /// Checks the store's own integrity before a writer starts (SQLite: `PRAGMA quick_check`).
    fn check_integrity(&mut self) -> Result<(), AuditError> {
        Ok(())
    }
    /// Claims `chain` for this store's writer for as long as it lives, before it reads the
    /// chain's head: a second writer on the same chain (two replicas given one chain id, or an
    /// operator's prune of a live replica's chain) is refused rather than racing it. A store
    /// that one process owns (SQLite) has nothing to claim.
    fn claim(&mut self, chain: &str) -> Result<(), AuditError> {
        let _ = chain;
        Ok(())
    }
    /// Applies a (validated) registry change and, in the same transaction, writes the audit
    /// record describing it: `seal` is called once with what the change did and returns the
    /// record (and a checkpoint, if due) to insert. Refused outcomes change nothing but are
    /// written all the same. When this fails, neither the change nor the record was kept.
    ///
    /// Must be race-free against other writers on the same store (other replicas): a request is
    /// decided at most once, a consent withdrawn at most once.
    fn apply_change(
        &mut self,
        change: &RegistryChange,
        seal: &mut SealChange<'_>,
    ) -> Result<ChangeOutcome, AuditError> {
        let _ = (change, seal);
        Err(AuditError::Store(
            "this audit store does not keep the registry".into(),
        ))
    }
}

/// Seals the record of a registry change once its outcome is known: `(record, checkpoint)`.
pub type SealChange<'a> =
    dyn FnMut(ChangeOutcome) -> Result<(SealedRecord, Option<Checkpoint>), AuditError> + 'a;

impl<S: AuditStore + ?Sized> AuditStore for Box<S> {
    fn cpr_index(&self, cpr: &Cpr) -> String {
        (**self).cpr_index(cpr)
    }
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        (**self).head(chain)
    }
    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        (**self).last_checkpoint(chain)
    }
    fn append(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        (**self).append(records, checkpoint)
    }
    fn append_unsynced(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Commit, AuditError> {
        (**self).append_unsynced(records, checkpoint)
    }
    fn deferred_sync(&mut self) -> Result<Option<Box<dyn LogSync>>, AuditError> {
        (**self).deferred_sync()
    }
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        (**self).recover_sync()
    }
    fn chains(&mut self) -> Result<Vec<String>, AuditError> {
        (**self).chains()
    }
    fn records(
        &mut self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        (**self).records(chain, after_seq, limit)
    }
    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        (**self).checkpoints(chain)
    }
    fn witnessed(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        (**self).witnessed(chain)
    }
    fn maintenance_records(&mut self, chain: &str) -> Result<Vec<StoredRecord>, AuditError> {
        (**self).maintenance_records(chain)
    }
    fn prune_anchor(
        &mut self,
        chain: &str,
        cutoff: &str,
        max_seq: u64,
    ) -> Result<Option<Checkpoint>, AuditError> {
        (**self).prune_anchor(chain, cutoff, max_seq)
    }
    fn prune(
        &mut self,
        chain: &str,
        through_seq: u64,
        expected: u64,
        record: &SealedRecord,
        checkpoint: &Checkpoint,
    ) -> Result<u64, AuditError> {
        (**self).prune(chain, through_seq, expected, record, checkpoint)
    }
    fn check_integrity(&mut self) -> Result<(), AuditError> {
        (**self).check_integrity()
    }
    fn claim(&mut self, chain: &str) -> Result<(), AuditError> {
        (**self).claim(chain)
    }
    fn apply_change(
        &mut self,
        change: &RegistryChange,
        seal: &mut SealChange<'_>,
    ) -> Result<ChangeOutcome, AuditError> {
        (**self).apply_change(change, seal)
    }
}
