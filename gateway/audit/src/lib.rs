//! Samblik's audit log: every request leaves one record, written durably before the answer does.
//!
//! ```text
//! request handler ──AuditEvent──► AuditLog::append ──► writer thread ──► AuditStore (SQLite)
//!        ▲                                                │ group commit: every event waiting
//!        └──────────── receipt (seq, hash) ◄──────────────┘ goes into one transaction + fsync
//! ```
//!
//! - [`record`]: the record and its canonical encoding; each record carries the SHA-256 of the
//!   one before it (a hash chain per gateway replica).
//! - [`checkpoint`]: Ed25519-signed checkpoints of the chain's head every N records or T seconds,
//!   so cutting or rewriting the tail is detectable.
//! - [`verify`]: walks a whole store and names the first bad record.
//! - [`sqlite`]: the embedded store (WAL, `synchronous=FULL`).
//!
//! If the store cannot write, `append` fails, the gateway answers UNAVAILABLE and discloses
//! nothing, and [`AuditLog::health`] reports unhealthy until a write succeeds again.

pub mod checkpoint;
pub mod postgres;
pub mod record;
pub mod sqlite;
pub mod testing;
pub mod verify;
mod writer;

pub use checkpoint::{Checkpoint, CheckpointSigner};
pub use record::{
    Action, Actor, AuditEvent, AuditRecord, CaseEntry, GENESIS_HASH, Outcome, SourceEntry,
};
pub use writer::{AuditLog, Receipt, WriterOptions};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The store failed (I/O error, disk full, database unreachable).
    #[error("audit store: {0}")]
    Store(String),
    /// The signing key could not be read or created.
    #[error("audit signing key: {0}")]
    Key(String),
    /// The writer has stopped.
    #[error("the audit writer is not running")]
    Stopped,
}

/// A record as read back for verification: the indexed columns and the stored body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub request_id: String,
    pub cpr: Option<String>,
    pub caller_id: String,
    pub body: String,
    pub hash: String,
}

/// Where records are kept. Implementations commit each `append` atomically and durably: when it
/// returns `Ok`, every record and the checkpoint survive a crash; when it fails, none was kept.
pub trait AuditStore: Send + 'static {
    /// The seq and hash of the chain's last record.
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError>;
    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError>;
    fn append(
        &mut self,
        records: &[AuditRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError>;
    fn chains(&mut self) -> Result<Vec<String>, AuditError>;
    /// Up to `limit` records of `chain` after `after_seq`, in order.
    fn records(
        &mut self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError>;
    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError>;
}

impl<S: AuditStore + ?Sized> AuditStore for Box<S> {
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        (**self).head(chain)
    }
    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        (**self).last_checkpoint(chain)
    }
    fn append(
        &mut self,
        records: &[AuditRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        (**self).append(records, checkpoint)
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
}
