//! A witness of the signed checkpoints, kept outside the store. Signed checkpoints make a cut
//! or a rewrite of a chain's tail detectable — unless whoever can write to the database deletes
//! the newest records together with their checkpoints: what is left still verifies. So every
//! checkpoint is also appended to a witness the database's writer cannot rewrite (a file on
//! another path or volume, append-only), and verification holds the store to the newest
//! checkpoint the witness saw of each chain.
//!
//! A checkpoint reaches the witness only once the batch it signs is durable in the store, so a
//! crash never leaves the witness ahead of the store: a witnessed checkpoint missing from the
//! store was taken out of it.

use crate::checkpoint::Checkpoint;
use crate::registry::model::{ChangeOutcome, RegistryChange};
use crate::{AuditError, AuditStore, Commit, LogSync, SealChange, SealedRecord, StoredRecord};
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An append-only file of checkpoints, one JSON object per line, each line written with
/// `O_APPEND` and on disk (`fdatasync`) before the next.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    file: Mutex<File>,
}

impl Witness {
    /// Opens the witness file at `path`, creating it (mode 0600, and its directory) if missing.
    pub fn open(path: &Path) -> Result<Arc<Witness>, AuditError> {
        let failed =
            |e: std::io::Error| AuditError::Store(format!("audit witness {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(failed)?;
        Ok(Arc::new(Witness {
            path: path.to_owned(),
            file: Mutex::new(file),
        }))
    }

    /// Appends `checkpoint` and waits until it is on disk.
    pub fn record(&self, checkpoint: &Checkpoint) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(checkpoint)
            .map_err(|e| AuditError::Store(format!("audit witness: {e}")))?;
        line.push(b'\n');
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // One write of the whole line to an O_APPEND file: lines of concurrent writers never
        // interleave.
        (&*file)
            .write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|e| AuditError::Store(format!("audit witness {}: {e}", self.path.display())))
    }

    /// Every checkpoint in the witness file at `path`, in the order written. A last line
    /// without its newline was cut short by a crash while it was written (its batch was durable
    /// already, and the next checkpoint covers it) and is left out; any other line that is not
    /// a checkpoint is an error.
    pub fn read(path: &Path) -> Result<Vec<Checkpoint>, AuditError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuditError::Store(format!("audit witness {}: {e}", path.display())))?;
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    AuditError::Store(format!(
                        "audit witness {} line {}: not a checkpoint: {e}",
                        path.display(),
                        i + 1
                    ))
                })
            })
            .collect()
    }
}

/// What the witness says the store lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessFinding {
    #[error(
        "chain {chain}: the witness holds a signed checkpoint at seq {witnessed}, but the store \
         ends at seq {store_head}: the records after {store_head} were cut, with their checkpoints"
    )]
    Cut {
        chain: String,
        witnessed: u64,
        store_head: u64,
    },
    #[error(
        "chain {chain}: the witness holds a signed checkpoint at seq {seq}, but the store has no \
         record {seq}: records were taken out of the chain"
    )]
    Missing { chain: String, seq: u64 },
    #[error(
        "chain {chain}: record {seq} in the store is not the one the witnessed checkpoint signed: \
         the chain was rewritten from there"
    )]
    Rewritten { chain: String, seq: u64 },
    #[error("the witness holds a checkpoint of chain {chain} at seq {seq} with a bad signature")]
    BadSignature { chain: String, seq: u64 },
}

/// Holds `store` to `witnessed`: for every chain, the newest witnessed checkpoint's record must
/// be in the store with the hash it signed. Run after [`crate::verify::verify_store`], which
/// checks the chain itself; this finds what that cannot: a tail cut with its checkpoints.
/// Every witnessed checkpoint's signature must verify under `key`.
pub fn check_witness(
    store: &mut dyn AuditStore,
    key: &VerifyingKey,
    witnessed: &[Checkpoint],
) -> Result<Vec<WitnessFinding>, AuditError> {
    let mut findings = Vec::new();
    let mut newest: BTreeMap<&str, &Checkpoint> = BTreeMap::new();
    for c in witnessed {
        if !c.verify(key) {
            findings.push(WitnessFinding::BadSignature {
                chain: c.chain.clone(),
                seq: c.seq,
            });
            continue;
        }
        let entry = newest.entry(c.chain.as_str()).or_insert(c);
        if c.seq > entry.seq {
            *entry = c;
        }
    }
    for checkpoint in newest.into_values() {
        findings.extend(held_to(store, checkpoint)?);
    }
    Ok(findings)
}

/// What the store lacks of `checkpoint` (whose signature the caller has checked): its record,
/// with the hash it signed. The one check behind both [`check_witness`] and the writer's
/// start-up check of its own chain.
pub(crate) fn held_to(
    store: &mut dyn AuditStore,
    checkpoint: &Checkpoint,
) -> Result<Option<WitnessFinding>, AuditError> {
    let chain = checkpoint.chain.as_str();
    let store_head = store.head(chain)?.map_or(0, |(seq, _)| seq);
    if store_head < checkpoint.seq {
        return Ok(Some(WitnessFinding::Cut {
            chain: chain.to_owned(),
            witnessed: checkpoint.seq,
            store_head,
        }));
    }
    let record = store
        .records(chain, checkpoint.seq - 1, 1)?
        .into_iter()
        .next()
        .filter(|r| r.seq == checkpoint.seq);
    Ok(match record {
        None => Some(WitnessFinding::Missing {
            chain: chain.to_owned(),
            seq: checkpoint.seq,
        }),
        Some(r) if r.hash != checkpoint.head_hash => Some(WitnessFinding::Rewritten {
            chain: chain.to_owned(),
            seq: checkpoint.seq,
        }),
        Some(_) => None,
    })
}

/// A store whose every durable checkpoint is also written to a [`Witness`]. A checkpoint that
/// cannot be witnessed fails its batch, as a store failure would: no answer leaves on a record
/// whose checkpoint the witness lacks.
pub struct Witnessed<S> {
    inner: S,
    witness: Arc<Witness>,
    /// Checkpoints of batches committed but not yet durable ([`Commit::Deferred`]), for the
    /// next successful [`LogSync::sync`] to witness.
    pending: Arc<Mutex<Vec<Checkpoint>>>,
}

impl<S> std::fmt::Debug for Witnessed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witnessed")
            .field("witness", &self.witness.path)
            .finish_non_exhaustive()
    }
}

impl<S: AuditStore> Witnessed<S> {
    pub fn new(inner: S, witness: Arc<Witness>) -> Self {
        Witnessed {
            inner,
            witness,
            pending: Arc::default(),
        }
    }
}

/// The deferred sync of a [`Witnessed`] store: witnesses, after each successful sync, the
/// checkpoints committed before it began.
struct WitnessedSync {
    inner: Box<dyn LogSync>,
    witness: Arc<Witness>,
    pending: Arc<Mutex<Vec<Checkpoint>>>,
}

impl LogSync for WitnessedSync {
    fn sync(&self) -> Result<(), AuditError> {
        let due = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let synced = self.inner.sync().and_then(|()| {
            due.iter()
                .try_for_each(|checkpoint| self.witness.record(checkpoint))
        });
        if synced.is_err() {
            // Not witnessed yet: the next sync that succeeds does it.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let later = std::mem::replace(&mut *pending, due);
            pending.extend(later);
        }
        synced
    }
}

impl<S: AuditStore> AuditStore for Witnessed<S> {
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
        self.inner.append(records, checkpoint)?;
        checkpoint.map_or(Ok(()), |c| self.witness.record(c))
    }
    fn append_unsynced(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Commit, AuditError> {
        let commit = self.inner.append_unsynced(records, checkpoint)?;
        if let Some(c) = checkpoint {
            match commit {
                Commit::Durable => self.witness.record(c)?,
                Commit::Deferred => self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(c.clone()),
            }
        }
        Ok(commit)
    }
    fn deferred_sync(&mut self) -> Result<Option<Box<dyn LogSync>>, AuditError> {
        Ok(self.inner.deferred_sync()?.map(|inner| {
            Box::new(WitnessedSync {
                inner,
                witness: Arc::clone(&self.witness),
                pending: Arc::clone(&self.pending),
            }) as Box<dyn LogSync>
        }))
    }
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        self.inner.recover_sync()?;
        // Everything committed is durable now: so are the pending checkpoints' batches.
        let due = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        due.iter().try_for_each(|c| self.witness.record(c))
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
        Ok(Witness::read(&self.witness.path)?
            .into_iter()
            .filter(|c| c.chain == chain)
            .max_by_key(|c| c.seq))
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
        let pruned = self
            .inner
            .prune(chain, through_seq, expected, record, checkpoint)?;
        self.witness.record(checkpoint)?;
        Ok(pruned)
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
        let mut sealed = None;
        let outcome = self.inner.apply_change(change, &mut |outcome| {
            let (record, checkpoint) = seal(outcome)?;
            sealed.clone_from(&checkpoint);
            Ok((record, checkpoint))
        })?;
        if let Some(c) = &sealed {
            self.witness.record(c)?;
        }
        Ok(outcome)
    }
}
