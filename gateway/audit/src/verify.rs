//! Verification of a whole store: every chain's records in order, their hashes and links, the
//! indexed columns against the hashed body, and every signed checkpoint.

use crate::checkpoint::Checkpoint;
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
    pub records: u64,
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
        summaries.push(verify_chain(store, &chain, key)?);
    }
    Ok(summaries)
}

fn verify_chain(
    store: &mut dyn AuditStore,
    chain: &str,
    key: &VerifyingKey,
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
    let mut expected_seq = 1u64;
    let mut prev_hash = GENESIS_HASH.to_owned();
    loop {
        let page = store.records(chain, expected_seq - 1, PAGE)?;
        if page.is_empty() {
            break;
        }
        for stored in page {
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
            if record.seq != seq
                || record.chain != chain
                || record.request_id != stored.request_id
                || record.cpr != stored.cpr
                || record.actor.caller_id != stored.caller_id
            {
                return Err(broken(seq, "indexed columns differ from the record".into()));
            }
            if let Some(c) = checkpoints.get(&seq)
                && c.head_hash != record.hash
            {
                return Err(broken(seq, "differs from the signed checkpoint".into()));
            }
            prev_hash = record.hash;
            expected_seq += 1;
        }
    }
    let last = expected_seq - 1;
    if let Some((&seq, _)) = checkpoints.iter().next_back()
        && seq > last
    {
        return Err(broken(
            last + 1,
            format!("records up to the signed checkpoint at {seq} are missing (tail cut)"),
        ));
    }
    Ok(ChainSummary {
        chain: chain.to_owned(),
        records: last,
        checkpoints: checkpoints.len(),
        head_hash: prev_hash,
    })
}
