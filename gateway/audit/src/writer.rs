//! The single writer: it owns the store, seals events into the chain and commits everything that
//! is waiting in one transaction (group commit), so durability costs one fsync per batch rather
//! than one per request. A registry change is a job of its own: the writer commits what is
//! batched before it, then applies the change and writes its record in one transaction.
//!
//! The writer also keeps the chain's own history: a start-up record that says how the previous
//! writer stopped (cleanly, or not: a crash, a kill, or a torn last write the store discarded),
//! a signed "writer stopped" record on a clean stop, and retention prunes (see
//! [`crate::maintenance`]), which are jobs like any other so they are chained in order.

use crate::checkpoint::Checkpoint;
use crate::checkpoint::CheckpointSigner;
use crate::maintenance::{Maintenance, PreviousStop, PruneReport, Retention};
use crate::record::{
    Action, Actor, AuditEvent, AuditRecord, EncodedEvent, GENESIS_HASH, Outcome, SealedRecord,
};
use crate::registry::model::{ChangeOutcome, RegistryChange};
use crate::{AuditError, AuditStore, Commit, LogSync};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// How the writer chains and checkpoints.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// This replica's chain id.
    pub chain: String,
    /// A signed checkpoint at least every this many records…
    pub checkpoint_every: u64,
    /// …and at least this often while records arrive.
    pub checkpoint_interval: Duration,
    /// Most records in one transaction.
    pub max_batch: usize,
    /// The policy version recorded on the writer's own records.
    pub policy_version: String,
    /// Prune records older than `keep` at start-up and every `every`; `None`: never on its own
    /// (an operator can still call [`AuditLog::prune`]).
    pub retention: Option<Retention>,
    /// Most records one prune deletes, so a large backlog is pruned in steps between ordinary
    /// writes rather than holding the writer for long.
    pub max_prune_records: u64,
    /// While the store cannot be written, how often the idle writer tries again: health recovers
    /// by itself, with no lookup to carry it (a load balancer sends none to an unhealthy
    /// gateway).
    pub retry_every: Duration,
    /// How many fsyncs of the store's log may be in flight at once (at least one), for stores
    /// whose commits are fsync'ed apart from the writer. See [`SYNC_THREADS`].
    pub sync_threads: usize,
    /// An operator's acknowledgement of the break the start-up check finds, so that the chain
    /// is written again; `None`: a broken chain stays closed ([`AuditError::ChainBroken`]).
    pub acknowledge_break: Option<Acknowledgement>,
}

/// Who acknowledges a broken chain, and why; written into the signed start-up record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub by: String,
    pub reason: String,
}

impl WriterOptions {
    pub fn new(chain: impl Into<String>) -> Self {
        WriterOptions {
            chain: chain.into(),
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 1024,
            policy_version: String::new(),
            retention: None,
            max_prune_records: 50_000,
            retry_every: Duration::from_secs(1),
            sync_threads: SYNC_THREADS,
            acknowledge_break: None,
        }
    }
}

/// Proof that a record is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: String,
}

type AppendReply = Option<oneshot::Sender<Result<Receipt, AuditError>>>;
/// An ordinary record, already encoded by its caller, and who waits.
type AppendJob = (EncodedEvent, AppendReply);
type ChangeReply = oneshot::Sender<Result<(ChangeOutcome, Receipt), AuditError>>;
type PruneReply = oneshot::Sender<Result<Option<PruneReport>, AuditError>>;

enum Job {
    /// Encoded on the caller's thread: the writer's serial work per record is only chaining.
    Append {
        event: EncodedEvent,
        reply: AppendReply,
    },
    Change {
        event: AuditEvent,
        // Boxed: a change is rare and large; ordinary records should not pay for its size.
        change: Box<RegistryChange>,
        reply: ChangeReply,
    },
    Prune {
        cutoff: String,
        by: String,
        reply: PruneReply,
    },
}

/// The handle the gateway writes through. Dropping the last handle stops the writer after it has
/// written everything queued and its signed clean-stop record.
#[derive(Debug)]
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
    health: watch::Receiver<bool>,
    chain: String,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl AuditLog {
    /// Starts the writer over `store`. See [`AuditLog::start_with`].
    pub fn start(
        store: Box<dyn AuditStore>,
        signer: CheckpointSigner,
        options: WriterOptions,
    ) -> Result<Self, AuditError> {
        Self::start_with(move || Ok(store), signer, options)
    }

    /// Starts the writer thread, which opens its store with `open` (on its own thread: some
    /// stores, such as PostgreSQL's blocking client, must not run on an async runtime), reads the
    /// chain's head and writes a start-up record — so every restart, including one after a crash,
    /// is itself in the log. If any of that fails, so does `start_with`, and a gateway must not
    /// serve.
    pub fn start_with(
        open: impl FnOnce() -> Result<Box<dyn AuditStore>, AuditError> + Send + 'static,
        signer: CheckpointSigner,
        options: WriterOptions,
    ) -> Result<Self, AuditError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (health_tx, health) = watch::channel(true);
        let health_tx = Arc::new(Health::new(health_tx));
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), AuditError>>(1);
        let chain = options.chain.clone();
        let writer = std::thread::Builder::new()
            .name("samblik-audit-writer".into())
            .spawn(move || {
                let started = open().and_then(|mut store| {
                    let state = begin(&mut *store, &signer, &options)?;
                    let syncer = store
                        .deferred_sync()?
                        .map(|sync| {
                            Syncer::start(sync, Arc::clone(&health_tx), options.sync_threads)
                        })
                        .transpose()?;
                    Ok((store, state, syncer))
                });
                match started {
                    Ok((store, state, syncer)) => {
                        let _ = ready_tx.send(Ok(()));
                        run(store, signer, options, state, syncer, rx, health_tx);
                    }
                    // Started, but closed: the gateway runs (and says NOT_SERVING) rather than
                    // stopping, so that health and the operator's command can tell why.
                    Err(AuditError::ChainBroken(why)) if options.acknowledge_break.is_none() => {
                        // Unhealthy before anyone can ask.
                        health_tx.set(&health_tx.commit, false);
                        let _ = ready_tx.send(Ok(()));
                        closed(&why, &rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| AuditError::Store(format!("cannot start the writer thread: {e}")))?;
        ready.recv().map_err(|_| AuditError::Stopped)??;
        Ok(AuditLog {
            jobs,
            health,
            chain,
            writer: Some(writer),
        })
    }

    /// Writes `event` and waits until it is durable.
    pub async fn append(&self, event: AuditEvent) -> Result<Receipt, AuditError> {
        let (reply, receipt) = oneshot::channel();
        self.jobs
            .send(Job::Append {
                event: event.encode(None),
                reply: Some(reply),
            })
            .map_err(|_| AuditError::Stopped)?;
        receipt.await.map_err(|_| AuditError::Stopped)?
    }

    /// [`AuditLog::append`] for a record that carries a `change` of its own making, such as an
    /// auditor's review mark (not a registry change: nothing else is written).
    pub async fn append_with_change(
        &self,
        event: AuditEvent,
        change: serde_json::Value,
    ) -> Result<Receipt, AuditError> {
        let (reply, receipt) = oneshot::channel();
        self.jobs
            .send(Job::Append {
                event: event.encode(Some(&change)),
                reply: Some(reply),
            })
            .map_err(|_| AuditError::Stopped)?;
        receipt.await.map_err(|_| AuditError::Stopped)?
    }

    /// Applies a registry change and writes `event` as its audit record, in one transaction, and
    /// waits until both are durable. The writer fills in the event's action (from the change),
    /// its CPR (from the change, where it names one; set it yourself for a decision), its outcome
    /// and detail (from what the change did), and the change itself as the record's `change`.
    ///
    /// A change that was refused (not found, already done, wrong department, invalid) is `Ok`
    /// with that outcome: it changed nothing, and its record says so. `Err` means the store
    /// failed: nothing was changed or recorded, and the log is unhealthy until a write succeeds.
    pub async fn change(
        &self,
        event: AuditEvent,
        change: RegistryChange,
    ) -> Result<(ChangeOutcome, Receipt), AuditError> {
        let (reply, done) = oneshot::channel();
        self.jobs
            .send(Job::Change {
                event,
                change: Box::new(change),
                reply,
            })
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Prunes this writer's chain: cuts its front at the latest signed checkpoint whose record
    /// is older than `cutoff` (and no newer record comes before it), and records the prune with
    /// a signed checkpoint, all in one transaction. `by` says who asked. `Ok(None)`: nothing is
    /// old enough. A report with `more` set hit [`WriterOptions::max_prune_records`]: call again.
    ///
    /// The records to be deleted are verified first; if they do not verify, nothing is pruned
    /// and the error names the first bad record, which stays in the store as evidence.
    /// Only this writer's chain is pruned: each replica's writer prunes its own.
    pub async fn prune(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        by: &str,
    ) -> Result<Option<PruneReport>, AuditError> {
        let (reply, done) = oneshot::channel();
        self.jobs
            .send(Job::Prune {
                cutoff: timestamp(cutoff),
                by: by.to_owned(),
                reply,
            })
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues `event` without waiting: for paths that can no longer wait, such as a request whose
    /// caller went away (its handler is being dropped).
    pub fn append_detached(&self, event: AuditEvent) {
        let job = Job::Append {
            event: event.encode(None),
            reply: None,
        };
        if self.jobs.send(job).is_err() {
            tracing::error!("audit writer stopped; a cancellation record was lost");
        }
    }

    /// `true` while the last write succeeded.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.health.clone()
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Stops the writer after everything queued is written and the head is signed, and waits
    /// for it.
    pub fn close(mut self) {
        let writer = self.writer.take();
        drop(self);
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the audit writer panicked while closing");
        }
    }
}

/// Checks the store, reads the chain's head, tells a clean stop from an unclean one, and writes
/// the start-up record, checkpointed at once so the head is always signed.
///
/// If the last signed checkpoint is ahead of the head, records that were committed and signed
/// are gone (a store restored from an old backup, a disk that lost writes, or tampering). The
/// writer does not refuse to start — the gateway could then never serve again without someone
/// editing the store — but it does not paper over the loss either: it records what is missing
/// and continues the chain from the signed checkpoint, so the gap stays in the chain and
/// verification keeps naming it for the auditors.
fn begin(
    store: &mut dyn AuditStore,
    signer: &CheckpointSigner,
    options: &WriterOptions,
) -> Result<ChainState, AuditError> {
    store.check_integrity()?;
    let chain = options.chain.as_str();
    store.claim(chain)?;
    let head = store.head(chain)?;
    let last_checkpoint = store.last_checkpoint(chain)?;
    let head_seq = head.as_ref().map_or(0, |(s, _)| *s);
    let key = signer.verifying_key();
    let witnessed = store.witnessed(chain)?;
    let broken = tail_break(
        store,
        chain,
        &key,
        head_seq,
        last_checkpoint.as_ref(),
        witnessed.as_ref(),
    )?;
    let acknowledged = match (broken, &options.acknowledge_break) {
        (Some(why), None) => {
            tracing::error!(
                chain,
                "the audit chain failed its start-up check; it stays closed until the break is acknowledged"
            );
            return Err(AuditError::ChainBroken(why));
        }
        (None, Some(_)) => {
            return Err(AuditError::Store(format!(
                "chain {chain} passes its start-up check: there is no break to acknowledge"
            )));
        }
        (Some(why), Some(ack)) => {
            tracing::warn!(chain, by = %ack.by, "a break of the audit chain was acknowledged");
            Some(format!("{why}; acknowledged by {}: {}", ack.by, ack.reason))
        }
        (None, None) => None,
    };
    // A signed checkpoint ahead of the head, in the store or the witness: continue after it.
    let last_checkpoint = [last_checkpoint, witnessed.filter(|w| w.verify(&key))]
        .into_iter()
        .flatten()
        .max_by_key(|c| c.seq);
    let checkpoint_seq = last_checkpoint.as_ref().map_or(0, |c| c.seq);
    let previous_stop = match head_seq {
        0 if checkpoint_seq == 0 => PreviousStop::FirstStart,
        0 => PreviousStop::Unclean,
        seq => {
            let last = store.records(chain, seq - 1, 1)?;
            let stopped = last.first().is_some_and(|stored| {
                AuditRecord::from_stored(&stored.body, &stored.hash).is_ok_and(|record| {
                    Maintenance::of(&record) == Some(Maintenance::WriterStopped)
                })
            });
            if stopped && checkpoint_seq == seq {
                PreviousStop::Clean
            } else {
                PreviousStop::Unclean
            }
        }
    };
    let mut state = ChainState {
        seq: head_seq,
        hash: head.map_or_else(|| GENESIS_HASH.to_owned(), |(_, h)| h),
        checkpointed_seq: checkpoint_seq,
        checkpointed_at: Instant::now(),
        stale: false,
    };
    let mut missing = None;
    if let Some(checkpoint) = last_checkpoint.filter(|c| c.seq > head_seq) {
        tracing::error!(
            chain,
            head_seq,
            checkpoint_seq,
            "signed audit records are missing from the store; continuing the chain after the signed checkpoint"
        );
        missing = Some([head_seq + 1, checkpoint.seq]);
        state.seq = checkpoint.seq;
        state.hash = checkpoint.head_hash;
    }
    let mut detail = match previous_stop {
        PreviousStop::FirstStart | PreviousStop::Clean => format!(
            "writer started; chain head at seq {head_seq}, last checkpoint at seq {checkpoint_seq}"
        ),
        PreviousStop::Unclean => {
            tracing::warn!(
                chain,
                head_seq,
                checkpoint_seq,
                "the audit writer did not stop cleanly last time; recovered"
            );
            format!(
                "writer started; recovered after an unclean stop (crash, kill or torn last write); \
                 chain head at seq {head_seq}, last checkpoint at seq {checkpoint_seq}"
            )
        }
    };
    if let Some([first, last]) = missing {
        detail.push_str(&format!(
            "; records {first}..={last}, signed by the checkpoint at {last}, are missing: the \
             chain continues after that checkpoint"
        ));
    }
    if let Some(ack) = &acknowledged {
        detail.push_str(&format!("; the chain was broken: {ack}"));
    }
    let change = Maintenance::WriterStarted {
        head_seq,
        checkpoint_seq,
        previous_stop,
        missing,
        acknowledged,
    };
    let record = state.seal(
        maintenance_event(detail, options).encode(Some(&change.to_value())),
        chain,
    );
    let checkpoint = signer.sign(chain, record.seq, &record.hash, &record.at);
    store.append(std::slice::from_ref(&record), Some(&checkpoint))?;
    state.checkpointed_seq = record.seq;
    Ok(state)
}

/// Why `chain` may not be appended to as it stands, or `None`. Its tail since the last signed
/// checkpoint must link and hash, that checkpoint must be this key's and sign its record, and the
/// newest checkpoint a witness holds must be in the store with the hash it signed. Records lost
/// in a crash are not a break: a batch and its checkpoint commit together, and a checkpoint is
/// witnessed only once durable.
fn tail_break(
    store: &mut dyn AuditStore,
    chain: &str,
    key: &ed25519_dalek::VerifyingKey,
    head_seq: u64,
    last_checkpoint: Option<&Checkpoint>,
    witnessed: Option<&Checkpoint>,
) -> Result<Option<String>, AuditError> {
    if let Some(w) = witnessed {
        if !w.verify(key) {
            return Ok(Some(format!(
                "the witness's newest checkpoint of the chain (seq {}) does not verify with the \
                 signing key",
                w.seq
            )));
        }
        if let Some(finding) = crate::witness::held_to(store, w)? {
            return Ok(Some(finding.to_string()));
        }
    }
    let Some(c) = last_checkpoint else {
        return Ok((head_seq > 0)
            .then(|| format!("the chain holds {head_seq} records but no signed checkpoint")));
    };
    if !c.verify(key) {
        return Ok(Some(format!(
            "the last checkpoint (seq {}) does not verify with the signing key",
            c.seq
        )));
    }
    if c.seq > head_seq {
        return Ok(Some(format!(
            "records {}..={}, signed by the checkpoint at {}, are missing from the store",
            head_seq + 1,
            c.seq,
            c.seq
        )));
    }
    // The records from the checkpoint's to the head: each hashes to its stored hash and links
    // to the one before; the first is the one the checkpoint signed.
    let mut expected_prev: Option<String> = None;
    let mut next = c.seq;
    while next <= head_seq {
        let page = store.records(chain, next - 1, 1_000)?;
        if page.is_empty() {
            break;
        }
        for stored in page {
            let seq = stored.seq;
            let fails = |why: &str| {
                Ok(Some(format!(
                    "record {seq} after the last signed checkpoint {why}"
                )))
            };
            if seq != next {
                return fails(&format!("is missing (the next stored is {seq})"));
            }
            let Ok(record) = AuditRecord::from_stored(&stored.body, &stored.hash) else {
                return fails("does not hash to its stored hash");
            };
            match &expected_prev {
                None if stored.hash != c.head_hash => {
                    return fails("is not the one the checkpoint signed");
                }
                Some(prev) if &record.prev_hash != prev => {
                    return fails("does not link to the record before it");
                }
                _ => {}
            }
            expected_prev = Some(stored.hash);
            next = seq + 1;
        }
    }
    if next <= head_seq {
        return Ok(Some(format!(
            "records {next}..={head_seq} are missing from the chain's tail"
        )));
    }
    Ok(None)
}

/// The writer of a chain that failed its start-up check (and reported itself unhealthy): it
/// writes nothing and refuses every record, so nothing is disclosed, until the gateway stops.
fn closed(why: &str, rx: &mpsc::Receiver<Job>) {
    let broken = || AuditError::ChainBroken(why.to_owned());
    while let Ok(job) = rx.recv() {
        match job {
            Job::Append { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(broken()));
                }
            }
            Job::Change { reply, .. } => {
                let _ = reply.send(Err(broken()));
            }
            Job::Prune { reply, .. } => {
                let _ = reply.send(Err(broken()));
            }
        }
    }
}

/// A record of the writer's own (a test forging one words it the same way).
pub fn maintenance_event(detail: String, options: &WriterOptions) -> AuditEvent {
    AuditEvent {
        request_id: String::new(),
        action: Action::AuditMaintenance,
        actor: Actor {
            caller_id: "samblik".into(),
            name: "Samblik audit writer".into(),
            ..Actor::default()
        },
        cpr: None,
        purpose: None,
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: Some(detail),
        reason: None,
        sources: Vec::new(),
        policy_version: options.policy_version.clone(),
    }
}

/// A record's time: RFC 3339 UTC with microseconds, so that times compare as text.
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

struct ChainState {
    seq: u64,
    hash: String,
    checkpointed_seq: u64,
    checkpointed_at: Instant,
    /// After a failed write the store's head is re-read before the next batch.
    stale: bool,
}

impl ChainState {
    /// Chains an encoded event after the head: the only serial part of writing a record.
    fn seal(&mut self, event: EncodedEvent, chain: &str) -> SealedRecord {
        let at = timestamp(chrono::Utc::now());
        let record = event.seal(chain, self.seq + 1, at, &self.hash);
        self.seq = record.seq;
        self.hash.clone_from(&record.hash);
        record
    }

    fn checkpoint_due(&self, options: &WriterOptions) -> bool {
        self.seq - self.checkpointed_seq >= options.checkpoint_every
            || self.checkpointed_at.elapsed() >= options.checkpoint_interval
    }
}

fn run(
    store: Box<dyn AuditStore>,
    signer: CheckpointSigner,
    options: WriterOptions,
    state: ChainState,
    syncer: Option<Syncer>,
    rx: mpsc::Receiver<Job>,
    health: Arc<Health>,
) {
    let mut writer = Writer {
        store,
        signer,
        options,
        state,
        syncer,
        health,
    };
    // The first scheduled prune runs at start-up: a gateway restarted more often than the
    // interval still prunes.
    let mut next_prune = writer.options.retention.map(|_| Instant::now());
    loop {
        if let (Some(due), Some(retention)) = (next_prune, writer.options.retention)
            && Instant::now() >= due
        {
            next_prune = Some(writer.scheduled_prune(retention));
        }
        let mut wait = next_prune.map_or(writer.options.checkpoint_interval, |due| {
            writer
                .options
                .checkpoint_interval
                .min(due.saturating_duration_since(Instant::now()))
        });
        // Unhealthy: retry soon. Batches still waiting for their fsync (or, on PostgreSQL, their
        // commit) may yet fail, and the sync thread that finds out cannot wake this one: look
        // again soon, or a store that failed while the writer was idle would be retried only
        // when the next record or the checkpoint interval came.
        if !writer.health.healthy() || writer.syncer.as_ref().is_some_and(|s| !s.idle()) {
            wait = wait.min(writer.options.retry_every);
        }
        let first = match rx.recv_timeout(wait) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: try a store that failed again, or sign the head if records came after
                // the last checkpoint.
                if writer.health.healthy() {
                    writer.sign_head_if_unsigned();
                } else if let Err(e) = writer.ready() {
                    tracing::debug!(error = %e, "the audit store cannot be written yet");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        while jobs.len() < writer.options.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Ordinary records are committed together; a change or a prune waits for those before
        // it, then gets a transaction of its own, so the chain keeps the order the jobs came in.
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Append { event, reply } => batch.push((event, reply)),
                Job::Change {
                    event,
                    change,
                    reply,
                } => {
                    writer.append(std::mem::take(&mut batch));
                    writer.change(event, &change, reply);
                }
                Job::Prune { cutoff, by, reply } => {
                    writer.append(std::mem::take(&mut batch));
                    let _ = reply.send(writer.prune(&cutoff, &by));
                }
            }
        }
        writer.append(batch);
    }
    // Shutting down: the last record says so, signed, so the next start knows it was clean.
    writer.stop();
    // The syncer answers what it still holds before the writer is gone.
    drop(writer.syncer.take());
}

/// `true` while the last commit succeeded and so did the last fsync of a pipelined commit: two
/// threads report, and either one failing makes the log unhealthy.
#[derive(Debug)]
struct Health {
    commit: AtomicBool,
    sync: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Health {
    fn new(tx: watch::Sender<bool>) -> Self {
        Health {
            commit: AtomicBool::new(true),
            sync: AtomicBool::new(true),
            tx,
        }
    }

    fn set(&self, which: &AtomicBool, ok: bool) {
        which.store(ok, Ordering::SeqCst);
        // Both flags are read under the channel's lock, so the last report wins consistently.
        self.tx.send_if_modified(|h| {
            let now = self.commit.load(Ordering::SeqCst) && self.sync.load(Ordering::SeqCst);
            std::mem::replace(h, now) != now
        });
    }

    fn commit(&self, ok: bool) {
        self.set(&self.commit, ok);
    }

    fn healthy(&self) -> bool {
        self.commit.load(Ordering::SeqCst) && self.sync.load(Ordering::SeqCst)
    }

    fn sync(&self, ok: bool) {
        self.set(&self.sync, ok);
    }
}

/// Receipts of a batch committed but not yet fsync'ed: the batch's place in commit order and the
/// writer's epoch when it was committed.
struct Committed {
    order: u64,
    epoch: u64,
    replies: Vec<(AppendReply, Receipt)>,
}

/// How many fsyncs may be in flight at once, by default: one. A second sync thread starts a
/// batch's fsync as soon as it is committed, even while the previous batch's is still running,
/// so a record waits for about one fsync rather than the rest of the one in progress and then
/// its own. But at saturation it doubles the fsyncs for the same records, and on a virtual disk
/// each costs CPU the lookups need: with one, the gateway keeps a larger share of its fsync-off
/// throughput at 512 callers, and the same at 32 and 128 (`docs/benchmark-history.md`, "One
/// fsync in flight instead of two").
pub const SYNC_THREADS: usize = 1;

/// The fsync half of a pipelined commit, for stores with a [`LogSync`]: the writer commits a
/// batch without waiting for the disk and hands its receipts here; a sync thread fsyncs the log,
/// then the receipts are sent — while the writer already commits the next batch. Receipts leave
/// only once their records are durable, in commit order, and one fsync answers every batch
/// committed before it began.
///
/// A failed fsync fails its batches and every batch committed after it until the writer has
/// recovered the store ([`AuditStore::recover_sync`]): after a failed fsync the kernel may have
/// dropped those writes, and a later fsync succeeding does not prove them on disk (nor the
/// records after them: SQLite's log is read back only up to the first bad frame). Hence the
/// release in commit order. The writer counts recoveries in epochs; `failed_epoch` is the last
/// epoch whose commits cannot be trusted.
struct Syncer {
    batches: Option<mpsc::Sender<Committed>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<SyncShared>,
    /// Batches handed over so far.
    committed: u64,
    /// The writer's epoch: the number of recoveries so far, plus one.
    epoch: u64,
}

/// What the sync threads share.
struct SyncShared {
    sync: Box<dyn LogSync>,
    queue: std::sync::Mutex<mpsc::Receiver<Committed>>,
    release: std::sync::Mutex<Release>,
    /// Signalled whenever batches are answered.
    released: std::sync::Condvar,
    failed_epoch: AtomicU64,
    health: Arc<Health>,
}

/// Batches whose fsync has finished, held until every batch committed before them is answered.
struct Release {
    next: u64,
    done: std::collections::BTreeMap<u64, (Committed, bool)>,
}

impl Syncer {
    fn start(
        sync: Box<dyn LogSync>,
        health: Arc<Health>,
        threads: usize,
    ) -> Result<Self, AuditError> {
        let (batches, rx) = mpsc::channel::<Committed>();
        let shared = Arc::new(SyncShared {
            sync,
            queue: std::sync::Mutex::new(rx),
            release: std::sync::Mutex::new(Release {
                next: 0,
                done: std::collections::BTreeMap::new(),
            }),
            released: std::sync::Condvar::new(),
            failed_epoch: AtomicU64::new(0),
            health,
        });
        let mut syncer = Syncer {
            batches: Some(batches),
            threads: Vec::new(),
            shared,
            committed: 0,
            epoch: 1,
        };
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&syncer.shared);
            let thread = std::thread::Builder::new()
                .name(format!("samblik-audit-sync-{i}"))
                .spawn(move || shared.run())
                .map_err(|e| {
                    AuditError::Store(format!("cannot start an audit sync thread: {e}"))
                })?;
            syncer.threads.push(thread);
        }
        Ok(syncer)
    }

    /// Whether an fsync failed since the writer last recovered the store.
    fn failed(&self) -> bool {
        self.shared.failed_epoch.load(Ordering::SeqCst) >= self.epoch
    }

    fn recovered(&mut self) {
        self.epoch = self.shared.failed_epoch.load(Ordering::SeqCst) + 1;
    }

    /// Whether every batch handed over so far is answered.
    fn idle(&self) -> bool {
        let release = self
            .shared
            .release
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        release.next == self.committed
    }

    /// Waits until every batch handed over so far is answered, so that a write made durable
    /// inline (a registry change, a prune, the clean-stop record) is answered only after
    /// everything committed before it, and after a failed fsync only once the store recovered.
    fn drain(&self) {
        let mut release = self
            .shared
            .release
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while release.next < self.committed {
            release = self
                .shared
                .released
                .wait(release)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn send(&mut self, replies: Vec<(AppendReply, Receipt)>) {
        let committed = Committed {
            order: self.committed,
            epoch: self.epoch,
            replies,
        };
        let Some(batches) = &self.batches else {
            return;
        };
        match batches.send(committed) {
            Ok(()) => self.committed += 1,
            Err(mpsc::SendError(committed)) => {
                // The threads are gone (they panicked): nobody can say these records are
                // durable. Not counted, so nobody waits for them to be answered.
                for reply in committed.replies.into_iter().filter_map(|(reply, _)| reply) {
                    let _ = reply.send(Err(AuditError::Stopped));
                }
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.batches = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an audit sync thread panicked");
            }
        }
    }
}

impl SyncShared {
    fn run(&self) {
        loop {
            // Everything committed by now is covered by one fsync.
            let batches = {
                let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let Ok(first) = queue.recv() else {
                    return;
                };
                let mut batches = vec![first];
                batches.extend(queue.try_iter());
                batches
            };
            let newest = batches.iter().map(|b| b.epoch).max().unwrap_or(0);
            let synced = newest > self.failed_epoch.load(Ordering::SeqCst)
                && match self.sync.sync() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "audit log fsync failed; records are refused until the store recovers");
                        self.failed_epoch.fetch_max(newest, Ordering::SeqCst);
                        false
                    }
                };
            self.release(batches, synced);
        }
    }

    /// Answers, in commit order, every batch whose fsync has finished and whose predecessors
    /// are answered.
    fn release(&self, batches: Vec<Committed>, synced: bool) {
        let mut release = self.release.lock().unwrap_or_else(PoisonError::into_inner);
        for batch in batches {
            release.done.insert(batch.order, (batch, synced));
        }
        loop {
            let next = release.next;
            let Some((batch, synced)) = release.done.remove(&next) else {
                self.released.notify_all();
                return;
            };
            release.next += 1;
            if !synced {
                self.failed_epoch.fetch_max(batch.epoch, Ordering::SeqCst);
            }
            let durable = synced && batch.epoch > self.failed_epoch.load(Ordering::SeqCst);
            self.health.sync(durable);
            for (reply, receipt) in batch.replies {
                if let Some(reply) = reply {
                    let _ = reply.send(if durable {
                        Ok(receipt)
                    } else {
                        Err(AuditError::Store(
                            "the audit log could not be fsync'ed; the record may not be durable"
                                .into(),
                        ))
                    });
                }
            }
        }
    }
}

struct Writer {
    store: Box<dyn AuditStore>,
    signer: CheckpointSigner,
    options: WriterOptions,
    state: ChainState,
    /// `Some` when the store's commits are fsync'ed on a thread of their own.
    syncer: Option<Syncer>,
    health: Arc<Health>,
}

impl Writer {
    /// Runs the retention schedule's prune; returns when the next one is due.
    fn scheduled_prune(&mut self, retention: Retention) -> Instant {
        let now = chrono::Utc::now();
        let cutoff = chrono::Duration::from_std(retention.keep)
            .ok()
            .and_then(|keep| now.checked_sub_signed(keep))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match self.prune(&timestamp(cutoff), "retention schedule") {
            // A backlog larger than one prune: continue after the jobs that are waiting.
            Ok(Some(report)) if report.more => Instant::now(),
            Ok(_) => Instant::now() + retention.every,
            Err(e) => {
                tracing::error!(chain = %self.options.chain, error = %e, "scheduled audit prune failed");
                Instant::now() + retention.every
            }
        }
    }

    /// Cuts the chain's front at the latest signed checkpoint older than `cutoff`; see
    /// [`AuditLog::prune`].
    fn prune(&mut self, cutoff: &str, by: &str) -> Result<Option<PruneReport>, AuditError> {
        self.settle()
            .inspect_err(|e| fail(std::iter::empty(), e, &self.health))?;
        let chain = self.options.chain.clone();
        let Some(front) = self.store.records(&chain, 0, 1)?.first().map(|r| r.seq) else {
            return Ok(None);
        };
        let Some(latest) = self.store.prune_anchor(&chain, cutoff, u64::MAX)? else {
            tracing::info!(chain, cutoff, "audit prune: nothing old enough");
            return Ok(None);
        };
        let limit = front.saturating_add(self.options.max_prune_records.max(1)) - 1;
        let anchor = if latest.seq > limit {
            self.store
                .prune_anchor(&chain, cutoff, limit)?
                .unwrap_or_else(|| latest.clone())
        } else {
            latest.clone()
        };
        // Never delete what does not verify: it is the evidence.
        crate::verify::verify_chain(
            &mut *self.store,
            &chain,
            &self.signer.verifying_key(),
            Some(anchor.seq),
        )?
        .first_problem()
        .map_err(|broken| {
            tracing::error!(chain, error = %broken, "refusing to prune audit records that do not verify");
            AuditError::Store(format!(
                "refusing to prune: the audit log does not verify: {broken}"
            ))
        })?;
        let records = anchor.seq + 1 - front;
        let change = Maintenance::Prune {
            from_seq: front,
            through_seq: anchor.seq,
            records,
            anchor_hash: anchor.head_hash.clone(),
            cutoff: cutoff.to_owned(),
            by: by.to_owned(),
        };
        let detail = format!(
            "pruned records {front}..={} (older than {cutoff}); anchor hash {}",
            anchor.seq, anchor.head_hash
        );
        let before = (self.state.seq, self.state.hash.clone());
        let record = self.state.seal(
            maintenance_event(detail, &self.options).encode(Some(&change.to_value())),
            &chain,
        );
        let checkpoint = self
            .signer
            .sign(&chain, record.seq, &record.hash, &record.at);
        match self
            .store
            .prune(&chain, anchor.seq, records, &record, &checkpoint)
        {
            Ok(_) => {
                self.succeeded(true);
                tracing::info!(
                    chain,
                    from_seq = front,
                    through_seq = anchor.seq,
                    records,
                    "audit records pruned"
                );
                Ok(Some(PruneReport {
                    chain,
                    from_seq: front,
                    through_seq: anchor.seq,
                    records,
                    anchor_hash: anchor.head_hash,
                    cutoff: cutoff.to_owned(),
                    record_seq: record.seq,
                    more: anchor.seq < latest.seq,
                }))
            }
            Err(e) => {
                self.failed(before, &e, 1);
                Err(e)
            }
        }
    }

    /// Writes the signed "writer stopped" record.
    fn stop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::error!(error = %e, "audit store unavailable at shutdown; no clean-stop record");
            return;
        }
        let before = (self.state.seq, self.state.hash.clone());
        let record = self.state.seal(
            maintenance_event("writer stopped cleanly".into(), &self.options)
                .encode(Some(&Maintenance::WriterStopped.to_value())),
            &self.options.chain,
        );
        let checkpoint =
            self.signer
                .sign(&self.options.chain, record.seq, &record.hash, &record.at);
        if let Err(e) = self
            .store
            .append(std::slice::from_ref(&record), Some(&checkpoint))
        {
            tracing::error!(error = %e, "cannot write the audit writer's clean-stop record");
            // Sign what is there, as before this record existed.
            (self.state.seq, self.state.hash) = before;
            self.sign_head_if_unsigned();
        }
    }

    fn sign_head_if_unsigned(&mut self) {
        if !self.state.stale && self.state.seq > self.state.checkpointed_seq {
            sign_head(
                &mut *self.store,
                &self.signer,
                &self.options.chain,
                &mut self.state,
            );
        }
    }

    /// Before a write that is made durable inline: waits for the pipelined fsyncs in flight,
    /// then [`Self::refresh`]es (and after a failure, see [`Self::ready`]).
    fn settle(&mut self) -> Result<(), AuditError> {
        if let Some(syncer) = &self.syncer {
            syncer.drain();
        }
        self.ready()
    }

    /// Before every write: [`Self::refresh`]es; after a failed write or fsync, first writes a
    /// signed [`Maintenance::StoreRecovered`] record (durable inline), which is what turns health
    /// back on — so every recovery is in the chain, whether a lookup or the idle writer's retry
    /// found it.
    fn ready(&mut self) -> Result<(), AuditError> {
        if self.health.healthy() {
            return self.refresh();
        }
        if let Some(syncer) = &self.syncer {
            syncer.drain();
        }
        self.refresh()?;
        let before = (self.state.seq, self.state.hash.clone());
        let record = self.state.seal(
            maintenance_event(
                "the audit store accepts writes again; lookups were refused while it did not"
                    .into(),
                &self.options,
            )
            .encode(Some(&Maintenance::StoreRecovered.to_value())),
            &self.options.chain,
        );
        let checkpoint =
            self.signer
                .sign(&self.options.chain, record.seq, &record.hash, &record.at);
        match self
            .store
            .append(std::slice::from_ref(&record), Some(&checkpoint))
        {
            Ok(()) => {
                self.succeeded(true);
                self.health.sync(true);
                tracing::info!(chain = %self.options.chain, "audit store writable again");
                Ok(())
            }
            Err(e) => {
                (self.state.seq, self.state.hash) = before;
                self.state.stale = true;
                self.health.commit(false);
                Err(e)
            }
        }
    }

    /// Before every write: recovers the store after a failed fsync, and re-reads its head after
    /// a failed write.
    fn refresh(&mut self) -> Result<(), AuditError> {
        self.recover_sync()?;
        if self.state.stale {
            let head = self.store.head(&self.options.chain)?;
            self.state.seq = head.as_ref().map_or(0, |(s, _)| *s);
            self.state.hash = head.map_or_else(|| GENESIS_HASH.to_owned(), |(_, h)| h);
            self.state.stale = false;
        }
        Ok(())
    }

    fn succeeded(&mut self, checkpointed: bool) {
        if checkpointed {
            self.state.checkpointed_seq = self.state.seq;
            self.state.checkpointed_at = Instant::now();
        }
        self.health.commit(true);
    }

    fn failed(&mut self, before: (u64, String), error: &AuditError, records: usize) {
        (self.state.seq, self.state.hash) = before;
        self.state.stale = true;
        tracing::error!(error = %error, records, "audit write failed; lookups are refused until it recovers");
        // Health first: whoever hears of the failure must find the gateway unhealthy.
        self.health.commit(false);
    }

    /// Seals and commits ordinary records in one transaction.
    fn append(&mut self, jobs: Vec<AppendJob>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = self.ready() {
            fail(jobs.into_iter().map(|(_, reply)| reply), &e, &self.health);
            return;
        }
        let chain = self.options.chain.as_str();
        let before = (self.state.seq, self.state.hash.clone());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for (event, reply) in jobs {
            let record = self.state.seal(event, chain);
            replies.push((
                reply,
                Receipt {
                    seq: record.seq,
                    hash: record.hash.clone(),
                },
            ));
            records.push(record);
        }
        let checkpoint = self.state.checkpoint_due(&self.options).then(|| {
            let at = records.last().map(|r| r.at.clone()).unwrap_or_default();
            self.signer
                .sign(chain, self.state.seq, &self.state.hash, &at)
        });
        let committed = match &self.syncer {
            Some(_) => self.store.append_unsynced(&records, checkpoint.as_ref()),
            None => self
                .store
                .append(&records, checkpoint.as_ref())
                .map(|()| Commit::Durable),
        };
        match committed {
            Ok(commit) => {
                self.succeeded(checkpoint.is_some());
                match &mut self.syncer {
                    // Receipts leave once the syncer has made the batch durable, and after
                    // every batch before it; a batch durable already, with none waiting before
                    // it, is answered here.
                    Some(syncer) if commit == Commit::Deferred || !syncer.idle() => {
                        syncer.send(replies)
                    }
                    _ => {
                        for (reply, receipt) in replies {
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(receipt));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                self.failed(before, &e, records.len());
                for reply in replies.into_iter().filter_map(|(reply, _)| reply) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// After a pipelined commit's fsync failed: recovers the store before anything else is
    /// committed, so no receipt rests on writes the kernel may have dropped.
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        let Some(syncer) = &mut self.syncer else {
            return Ok(());
        };
        if !syncer.failed() {
            return Ok(());
        }
        self.store.recover_sync()?;
        syncer.recovered();
        // What the failed commits held may not be in the store (PostgreSQL rolls back the
        // batches after a failed one): the head is read again before anything is sealed on it.
        self.state.stale = true;
        self.health.sync(true);
        tracing::info!(chain = %self.options.chain, "audit store recovered after a failed fsync");
        Ok(())
    }

    /// Applies a registry change and commits its record with it, in one transaction.
    fn change(&mut self, mut event: AuditEvent, change: &RegistryChange, reply: ChangeReply) {
        if let Err(e) = self.settle() {
            fail(std::iter::empty(), &e, &self.health);
            let _ = reply.send(Err(e));
            return;
        }
        event.action = match change {
            RegistryChange::RecordConsent(_) => Action::ConsentRecorded,
            RegistryChange::WithdrawConsent { .. } => Action::ConsentWithdrawn,
            RegistryChange::FileRequest(_) => Action::AccessRequested,
            RegistryChange::DecideRequest { .. } => Action::AccessDecided,
        };
        if let Some(cpr) = change.cpr() {
            event.cpr = Some(cpr.clone());
        }
        let body = match serde_json::to_value(change) {
            Ok(body) => body,
            Err(e) => {
                let _ = reply.send(Err(AuditError::Store(format!(
                    "cannot encode a registry change: {e}"
                ))));
                return;
            }
        };
        let invalid = change.validate().err();
        let before = (self.state.seq, self.state.hash.clone());
        let mut sealed: Option<(Receipt, bool)> = None;
        let result = {
            let Writer {
                store,
                signer,
                options,
                state,
                ..
            } = self;
            let mut seal =
                |outcome: ChangeOutcome| -> Result<(SealedRecord, Option<Checkpoint>), AuditError> {
                    // Sealed once per transaction; should a store call this twice, the record
                    // still takes the same place in the chain.
                    (state.seq, state.hash) = before.clone();
                    let mut event = event.clone();
                    event.reason = outcome.reason().map(str::to_owned);
                    (event.outcome, event.detail) = match outcome {
                        ChangeOutcome::Applied => (Outcome::Answered, None),
                        ChangeOutcome::NotFound | ChangeOutcome::AlreadyDone => {
                            (Outcome::Refused, Some(outcome.as_str().to_owned()))
                        }
                        ChangeOutcome::WrongDepartment => {
                            (Outcome::Denied, Some(outcome.as_str().to_owned()))
                        }
                        ChangeOutcome::Invalid => (
                            Outcome::Invalid,
                            Some(
                                invalid
                                    .clone()
                                    .unwrap_or_else(|| outcome.as_str().to_owned()),
                            ),
                        ),
                    };
                    let record = state.seal(event.encode(Some(&body)), &options.chain);
                    let checkpoint = state
                        .checkpoint_due(options)
                        .then(|| signer.sign(&options.chain, record.seq, &record.hash, &record.at));
                    sealed = Some((
                        Receipt {
                            seq: record.seq,
                            hash: record.hash.clone(),
                        },
                        checkpoint.is_some(),
                    ));
                    Ok((record, checkpoint))
                };
            if invalid.is_some() {
                // Nothing to apply: the refusal is recorded like any other record.
                seal(ChangeOutcome::Invalid).and_then(|(record, checkpoint)| {
                    store
                        .append(std::slice::from_ref(&record), checkpoint.as_ref())
                        .map(|()| ChangeOutcome::Invalid)
                })
            } else {
                store.apply_change(change, &mut seal)
            }
        };
        match (result, sealed) {
            (Ok(outcome), Some((receipt, checkpointed))) => {
                self.succeeded(checkpointed);
                let _ = reply.send(Ok((outcome, receipt)));
            }
            (Ok(_), None) => {
                // A store that committed without writing the record: treat it as a failure.
                let e = AuditError::Store("the store applied a change without its record".into());
                self.failed(before, &e, 0);
                let _ = reply.send(Err(e));
            }
            (Err(e), _) => {
                self.failed(before, &e, 1);
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Writes a checkpoint of the current head on its own.
fn sign_head(
    store: &mut dyn AuditStore,
    signer: &CheckpointSigner,
    chain: &str,
    state: &mut ChainState,
) {
    let at = timestamp(chrono::Utc::now());
    let checkpoint = signer.sign(chain, state.seq, &state.hash, &at);
    match store.append(&[], Some(&checkpoint)) {
        Ok(()) => {
            state.checkpointed_seq = state.seq;
            state.checkpointed_at = Instant::now();
        }
        Err(e) => tracing::error!(error = %e, "cannot write an audit checkpoint"),
    }
}

fn fail(replies: impl Iterator<Item = AppendReply>, error: &AuditError, health: &Health) {
    tracing::error!(error = %error, "audit store unavailable; lookups are refused until it recovers");
    health.commit(false);
    for reply in replies.flatten() {
        let _ = reply.send(Err(error.clone()));
    }
}
