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

/// One problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain {chain:?}, record {seq}: {reason}")]
pub struct Broken {
    pub chain: String,
    /// The record (or checkpoint position) that does not verify.
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

/// Everything a failed verification found. It does not stop at the first problem: after a
/// break it takes up the chain again at the next record that can be read, so a gap that is
/// known and explained (a store restored from a backup) does not hide tampering after it, and
/// one broken chain does not hide the state of the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaks {
    /// The first problem: chains in order, and in each the first record that does not verify.
    pub first: Broken,
    /// The problems found after it, in the same order: at most [`LISTED_PER_CHAIN`] per chain.
    pub further: Vec<Broken>,
    /// Problems found beyond those listed.
    pub unlisted: u64,
    /// The chains that verify.
    pub verified: Vec<ChainSummary>,
}

impl Breaks {
    /// " (and N further problems)", or nothing if the first is the only one.
    pub fn and_further(further: u64) -> String {
        match further {
            0 => String::new(),
            1 => " (and 1 further problem)".into(),
            n => format!(" (and {n} further problems)"),
        }
    }
}

impl std::fmt::Display for Breaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let further = self.further.len() as u64 + self.unlisted;
        write!(f, "{}{}", self.first, Breaks::and_further(further))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] AuditError),
    #[error("the audit log does not verify: {0}")]
    Broken(Box<Breaks>),
}

const PAGE: usize = 10_000;

/// Problems described per chain; the rest are counted. A chain whose every record was altered
/// would otherwise list millions.
pub const LISTED_PER_CHAIN: usize = 20;

/// Verifies every chain in `store` against the checkpoint key.
pub fn verify_store(
    store: &mut dyn AuditStore,
    key: &VerifyingKey,
) -> Result<Vec<ChainSummary>, VerifyError> {
    let mut verified = Vec::new();
    let mut problems: Vec<Broken> = Vec::new();
    let mut unlisted = 0;
    for chain in store.chains()? {
        let checked = verify_chain(store, &chain, key, None)?;
        if checked.problems.is_empty() {
            verified.push(checked.summary);
        }
        problems.extend(checked.problems);
        unlisted += checked.unlisted;
    }
    let mut problems = problems.into_iter();
    match problems.next() {
        None => Ok(verified),
        Some(first) => Err(VerifyError::Broken(Box::new(Breaks {
            first,
            further: problems.collect(),
            unlisted,
            verified,
        }))),
    }
}

/// One chain's verification: what it saw, and what does not verify.
pub(crate) struct Checked {
    pub(crate) summary: ChainSummary,
    pub(crate) problems: Vec<Broken>,
    pub(crate) unlisted: u64,
}

impl Checked {
    /// The first problem, as an error.
    pub(crate) fn first_problem(self) -> Result<ChainSummary, Broken> {
        match self.problems.into_iter().next() {
            None => Ok(self.summary),
            Some(first) => Err(first),
        }
    }
}

/// The problems of one chain, as they are found.
struct Found<'a> {
    chain: &'a str,
    problems: Vec<Broken>,
    unlisted: u64,
}

impl Found<'_> {
    fn at(&mut self, seq: u64, reason: impl Into<String>) {
        if self.problems.len() < LISTED_PER_CHAIN {
            self.problems.push(Broken {
                chain: self.chain.to_owned(),
                seq,
                reason: reason.into(),
            });
        } else {
            self.unlisted += 1;
        }
    }
}

/// A prune record as the chain states it.
struct Cut {
    /// The prune record's own seq.
    at_seq: u64,
    through_seq: u64,
    anchor_hash: String,
}

/// Verifies `chain`; with `until`, only its records up to that seq (what a prune is about to
/// delete), without the tail check. Only a store that cannot be read is an error; what does not
/// verify is in the result's problems.
pub(crate) fn verify_chain(
    store: &mut dyn AuditStore,
    chain: &str,
    key: &VerifyingKey,
    until: Option<u64>,
) -> Result<Checked, AuditError> {
    let mut found = Found {
        chain,
        problems: Vec::new(),
        unlisted: 0,
    };
    let mut checkpoints: BTreeMap<u64, Checkpoint> = store
        .checkpoints(chain)?
        .into_iter()
        .map(|c| (c.seq, c))
        .collect();
    // A checkpoint that is not validly signed vouches for nothing: it is reported and set aside.
    checkpoints.retain(|_, c| {
        let valid = c.verify(key);
        if !valid {
            found.at(c.seq, "checkpoint signature is not valid");
        }
        valid
    });
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
        found.at(
            1,
            format!("no records are stored, but signed checkpoints up to {last} are"),
        );
        return Ok(found.into_checked(ChainSummary {
            chain: chain.to_owned(),
            records: 0,
            first_seq: 1,
            checkpoints: checkpoints.len(),
            head_hash: String::new(),
        }));
    };
    // `None`: the next record's link cannot be checked (what came before it is missing or does
    // not verify); the walk takes the chain up again from that record's own link.
    let mut prev_hash = Some(GENESIS_HASH.to_owned());
    let expected_first = cut.as_ref().map_or(1, |c| c.through_seq + 1);
    if first_seq > expected_first {
        let accounted = match &cut {
            Some(c) => format!(
                "the last prune record (at {}) pruned through {}",
                c.at_seq, c.through_seq
            ),
            None => "no prune record accounts for them".to_owned(),
        };
        found.at(
            expected_first,
            format!(
                "records {expected_first}..={} are missing from the front of the chain; {accounted}",
                first_seq - 1
            ),
        );
        prev_hash = None;
    }
    if first_seq < expected_first {
        let at = cut.as_ref().map_or(0, |c| c.at_seq);
        found.at(
            first_seq,
            format!(
                "stored although the prune record at {at} pruned records through {}",
                expected_first - 1
            ),
        );
        prev_hash = None;
    }
    if let Some(cut) = &cut
        && prev_hash.is_some()
    {
        // The front was pruned: the chain now starts at the signed checkpoint kept at the cut.
        match checkpoints.get(&cut.through_seq) {
            None => {
                found.at(
                    first_seq,
                    format!(
                        "no signed checkpoint at {} anchors the pruned front",
                        cut.through_seq
                    ),
                );
                prev_hash = None;
            }
            Some(anchor) => {
                if anchor.head_hash != cut.anchor_hash {
                    found.at(
                        cut.at_seq,
                        format!(
                            "the prune record's anchor differs from the signed checkpoint at {}",
                            cut.through_seq
                        ),
                    );
                }
                prev_hash = Some(anchor.head_hash.clone());
            }
        }
    }
    let until = until.unwrap_or(u64::MAX);
    let mut expected_seq = first_seq;
    let mut head_hash = String::new();
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
                found.at(
                    expected_seq,
                    format!("record missing (next stored record is {})", stored.seq),
                );
                // Past a gap the link is checked against a signed checkpoint just before the
                // next record, if there is one: a writer that found its signed records gone
                // goes on from its last checkpoint.
                prev_hash = checkpoints
                    .get(&(stored.seq - 1))
                    .map(|c| c.head_hash.clone());
                expected_seq = stored.seq;
            }
            let seq = stored.seq;
            expected_seq += 1;
            head_hash.clone_from(&stored.hash);
            // What the next record should link to: this one's hash, as stored, whatever else is
            // wrong with it; a record replaced with a hash of its own then also breaks the link.
            let link = prev_hash.replace(stored.hash.clone());
            if hash_of(&stored.body) != stored.hash {
                found.at(seq, "content does not match its hash");
                continue;
            }
            let record = match AuditRecord::from_stored(&stored.body, &stored.hash) {
                Ok(record) => record,
                Err(e) => {
                    found.at(seq, format!("body is not a valid record: {e}"));
                    continue;
                }
            };
            if link.is_some_and(|link| record.prev_hash != link) {
                found.at(seq, "does not link to the previous record");
            }
            // Every column a search filters on: one edited in place would hide the record
            // from a search (or a prune would take it early) while its body still verifies.
            if record.seq != seq
                || record.chain != chain
                || record.request_id != stored.request_id
                || record.cpr.as_ref().map(|c| store.cpr_index(c)) != stored.cpr
                || record.actor.caller_id != stored.caller_id
                || record.at != stored.at
                || record.actor.department != stored.department
                || record.action.as_str() != stored.action
                || record.outcome.as_str() != stored.outcome
            {
                found.at(seq, "indexed columns differ from the record");
            }
            let checkpoint = checkpoints.get(&seq);
            if let Some(c) = checkpoint
                && c.head_hash != record.hash
            {
                found.at(seq, "differs from the signed checkpoint");
            }
            let maintenance = Maintenance::of(&record);
            // A chain the writer wrote begins with its start-up record; one that does not was
            // made up (or its front cut) without the key. After a prune, the signed checkpoint
            // at the cut anchors the front instead. (A front already reported missing is not
            // reported twice.)
            if seq == first_seq
                && first_seq == expected_first
                && cut.is_none()
                && !matches!(maintenance, Some(Maintenance::WriterStarted { .. }))
            {
                found.at(
                    seq,
                    "the chain does not begin with a \"writer started\" record",
                );
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
                found.at(
                    seq,
                    "audit-maintenance record without its signed checkpoint",
                );
            }
        }
    }
    let last = expected_seq - 1;
    if until == u64::MAX
        && let Some((&seq, _)) = checkpoints.iter().next_back()
        && seq > last
    {
        found.at(
            last + 1,
            format!("records up to the signed checkpoint at {seq} are missing (tail cut)"),
        );
    }
    Ok(found.into_checked(ChainSummary {
        chain: chain.to_owned(),
        records: last + 1 - first_seq,
        first_seq,
        checkpoints: checkpoints.len(),
        head_hash,
    }))
}

impl Found<'_> {
    fn into_checked(self, summary: ChainSummary) -> Checked {
        Checked {
            summary,
            problems: self.problems,
            unlisted: self.unlisted,
        }
    }
}
