//! The audit log's own records (`Action::AuditMaintenance`): each writer's start-up and clean
//! stop, and retention pruning, which cuts a chain's front only at a signed checkpoint and
//! records the cut in a signed `prune` record.
//!
//! How verification accepts a pruned front: `docs/audit-store.md`.

use crate::record::{Action, AuditRecord};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What an audit-maintenance record did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Maintenance {
    /// A writer started on the chain.
    WriterStarted {
        /// The chain's head as the writer found it.
        head_seq: u64,
        /// The last signed checkpoint as the writer found it.
        checkpoint_seq: u64,
        previous_stop: PreviousStop,
        /// Records that were committed and signed (the checkpoint is ahead of the head) but are
        /// gone: `[first, last]`. The chain continues from the signed checkpoint, so the gap
        /// stays visible to verification.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missing: Option<[u64; 2]>,
        /// The break the start-up check found and an operator acknowledged, so that the chain
        /// is written again: what was found, who acknowledged it and why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledged: Option<String>,
    },
    /// The writer stopped cleanly: this is its last record, signed by its last checkpoint.
    WriterStopped,
    /// The store accepts writes again after it could not be written (full disk, I/O error,
    /// database down): the first record since, signed. Lookups in between were refused, and
    /// could not be recorded.
    StoreRecovered,
    /// Records `from_seq..=through_seq` were pruned.
    Prune {
        from_seq: u64,
        through_seq: u64,
        /// How many records were deleted.
        records: u64,
        /// The hash of record `through_seq`, as signed by the checkpoint kept at the cut.
        anchor_hash: String,
        /// Records at or after this time (RFC 3339) were kept.
        cutoff: String,
        /// Who asked: the retention schedule or an operator's command.
        by: String,
    },
}

/// How the writer before this one stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreviousStop {
    /// The chain was empty.
    FirstStart,
    /// The chain ends with a signed "writer stopped" record.
    Clean,
    /// It did not: a crash, a kill, a power loss, or a torn last write that the store discarded.
    Unclean,
}

impl Maintenance {
    /// The maintenance part of `record`, if it is an audit-maintenance record that has one.
    pub fn of(record: &AuditRecord) -> Option<Self> {
        if record.action != Action::AuditMaintenance {
            return None;
        }
        serde_json::from_value(record.change.clone()?).ok()
    }

    pub fn to_value(&self) -> serde_json::Value {
        // A plain enum of numbers and strings always serialises.
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// How long records are kept, and how often the writer prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records older than this are pruned.
    pub keep: Duration,
    /// The writer prunes at start-up and then this often.
    pub every: Duration,
}

/// What one prune did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub chain: String,
    pub from_seq: u64,
    pub through_seq: u64,
    pub records: u64,
    pub anchor_hash: String,
    pub cutoff: String,
    /// The seq of the prune record.
    pub record_seq: u64,
    /// More records were old enough but over the per-prune limit; prune again.
    pub more: bool,
}
