//! Verification of a whole store: every chain's records in order, their hashes and links, the
//! indexed columns against the hashed body, and every signed checkpoint.
//!
//! What the key vouches for, besides the checkpoints' heads: every chain begins with the
//! writer's signed start-up record (or, after a prune, at the signed checkpoint kept at the
//! cut), and every audit-maintenance record — start-up, clean stop, prune — has a checkpoint at
//! its own seq, because the writer commits each together with one. So neither a chain nor a
//! prune record (which would excuse a missing front) can be made up without the key.

use crate::checkpoint::Checkpoint;
use crate::maintenance::Maintenance;
use crate::record::{AuditRecord, GENESIS_HASH, hash_of};
use crate::{AuditError, AuditStore};
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain {chain:?}, record {seq}: {reason}")]
pub struct Broken {
    pub chain: String,
    /// The first record (or checkpoint position) that does not verify.
    pub seq: u64,
    pub reason: String,
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub chain: String,
    /// Records stored (from `first_seq` to the head).
    pub records: u64,
    /// The first stored record: 1, or the record after the last prune's cut.
    pub first_seq: u64,
    pub checkpoints: usize,
    pub head_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] AuditError),
    #[error("the audit log does not verify: {0}")]
    Broken(Broken),
}

const PAGE: usize = 10_000;

/// Verifies every chain in `store` against the checkpoint key.
pub fn verify_store(
    store: &mut dyn AuditStore,
    key: &VerifyingKey,
) -> Result<Vec<ChainSummary>, VerifyError> {
    let mut summaries = Vec::new();
    for chain in store.chains()? {
        summaries.push(verify_chain(store, &chain, key, None)?);
    }
    Ok(summaries)
}

/// A prune record as the chain states it.
struct Cut {
    /// The prune record's own seq.
    at_seq: u64,
    through_seq: u64,
    anchor_hash: String,
}

/// Verifies `chain`; with `until`, only its records up to that seq (what a prune is about to
/// delete), without the tail check.
pub(crate) fn verify_chain(
    store: &mut dyn AuditStore,
    chain: &str,
    key: &VerifyingKey,
    until: Option<u64>,
) -> Result<ChainSummary, VerifyError> {
    let broken = |seq: u64, reason: String| {
        VerifyError::Broken(Broken {
            chain: chain.to_owned(),
            seq,
            reason,
        })
    };
    let checkpoints: BTreeMap<u64, Checkpoint> = store
        .checkpoints(chain)?
        .into_iter()
        .map(|c| (c.seq, c))
        .collect();
    for c in checkpoints.values() {
        if !c.verify(key) {
            return Err(broken(c.seq, "checkpoint signature is not valid".into()));
        }
    }
    // Where the chain says its front was cut: the latest cut named by a prune record. Every
    // record read here is walked (and so checked) again below.
    let cut = store
        .maintenance_records(chain)?
        .into_iter()
        .filter(|stored| hash_of(&stored.body) == stored.hash)
        .filter_map(|stored| {
            let record = AuditRecord::from_stored(&stored.body, &stored.hash).ok()?;
            match Maintenance::of(&record)? {
                Maintenance::Prune {
                    through_seq,
                    anchor_hash,
                    ..
                } if record.seq == stored.seq && record.chain == chain => Some(Cut {
                    at_seq: record.seq,
                    through_seq,
                    anchor_hash,
                }),
                _ => None,
            }
        })
        .max_by_key(|cut| cut.through_seq);
    let Some(first_seq) = store.records(chain, 0, 1)?.first().map(|r| r.seq) else {
        // A prune never deletes its own record, so a chain the writer wrote always has records.
        let last = checkpoints.keys().next_back().copied().unwrap_or(0);
        return Err(broken(
            1,
            format!("no records are stored, but signed checkpoints up to {last} are"),
        ));
    };
    let expected_first = cut.as_ref().map_or(1, |c| c.through_seq + 1);
    if first_seq > expected_first {
        let accounted = match &cut {
            Some(c) => format!(
                "the last prune record (at {}) pruned through {}",
                c.at_seq, c.through_seq
            ),
            None => "no prune record accounts for them".to_owned(),
        };
        return Err(broken(
            expected_first,
            format!(
                "records {expected_first}..={} are missing from the front of the chain; {accounted}",
                first_seq - 1
            ),
        ));
    }
    if first_seq < expected_first {
        let at = cut.as_ref().map_or(0, |c| c.at_seq);
        return Err(broken(
            first_seq,
            format!(
                "stored although the prune record at {at} pruned records through {}",
                expected_first - 1
            ),
        ));
    }
    let mut prev_hash = GENESIS_HASH.to_owned();
    if let Some(cut) = &cut {
        // The front was pruned: the chain now starts at the signed checkpoint kept at the cut.
        let Some(anchor) = checkpoints.get(&cut.through_seq) else {
            return Err(broken(
                first_seq,
                format!(
                    "no signed checkpoint at {} anchors the pruned front",
                    cut.through_seq
                ),
            ));
        };
        if anchor.head_hash != cut.anchor_hash {
            return Err(broken(
                cut.at_seq,
                format!(
                    "the prune record's anchor differs from the signed checkpoint at {}",
                    cut.through_seq
                ),
            ));
        }
        prev_hash.clone_from(&anchor.head_hash);
    }
    let until = until.unwrap_or(u64::MAX);
    let mut expected_seq = first_seq;
    'walk: loop {
        let page = store.records(chain, expected_seq - 1, PAGE)?;
        if page.is_empty() {
            break;
        }
        for stored in page {
            if stored.seq > until {
                break 'walk;
            }
            if stored.seq != expected_seq {
                return Err(broken(
                    expected_seq,
                    format!("record missing (next stored record is {})", stored.seq),
                ));
            }
            let seq = stored.seq;
            if hash_of(&stored.body) != stored.hash {
                return Err(broken(seq, "content does not match its hash".into()));
            }
            let record = AuditRecord::from_stored(&stored.body, &stored.hash)
                .map_err(|e| broken(seq, format!("body is not a valid record: {e}")))?;
            if record.prev_hash != prev_hash {
                return Err(broken(seq, "does not link to the previous record".into()));
            }
            // Every column a search filters on: one edited in place would hide the record
            // from a search (or a prune would take it early) while its body still verifies.
            if record.seq != seq
                || record.chain != chain
                || record.request_id != stored.request_id
                || record.cpr != stored.cpr
                || record.actor.caller_id != stored.caller_id
                || record.at != stored.at
                || record.actor.department != stored.department
                || record.action.as_str() != stored.action
                || record.outcome.as_str() != stored.outcome
            {
                return Err(broken(seq, "indexed columns differ from the record".into()));
            }
            let checkpoint = checkpoints.get(&seq);
            if let Some(c) = checkpoint
                && c.head_hash != record.hash
            {
                return Err(broken(seq, "differs from the signed checkpoint".into()));
            }
            let maintenance = Maintenance::of(&record);
            // A chain the writer wrote begins with its start-up record; one that does not was
            // made up (or its front cut) without the key. After a prune, the signed checkpoint
            // at the cut anchors the front instead.
            if seq == first_seq
                && cut.is_none()
                && !matches!(maintenance, Some(Maintenance::WriterStarted { .. }))
            {
                return Err(broken(
                    seq,
                    "the chain does not begin with a \"writer started\" record".into(),
                ));
            }
            // The writer signs each of its start-up, clean-stop and prune records in the same
            // commit that writes it: one without its checkpoint was written without the key.
            let always_signed = matches!(
                maintenance,
                Some(
                    Maintenance::WriterStarted { .. }
                        | Maintenance::WriterStopped
                        | Maintenance::Prune { .. }
                )
            );
            if always_signed && checkpoint.is_none() {
                return Err(broken(
                    seq,
                    "audit-maintenance record without its signed checkpoint".into(),
                ));
            }
            prev_hash = record.hash;
            expected_seq += 1;
        }
    }
    let last = expected_seq - 1;
    if until == u64::MAX
        && let Some((&seq, _)) = checkpoints.iter().next_back()
        && seq > last
    {
        return Err(broken(
            last + 1,
            format!("records up to the signed checkpoint at {seq} are missing (tail cut)"),
        ));
    }
    Ok(ChainSummary {
        chain: chain.to_owned(),
        records: last + 1 - first_seq,
        first_seq,
        checkpoints: checkpoints.len(),
        head_hash: prev_hash,
    })
}
