//! The single writer: it owns the store, seals events into the chain and commits everything that
//! is waiting in one transaction (group commit), so durability costs one fsync per batch rather
//! than one per request. A registry change is a job of its own: the writer commits what is
//! batched before it, then applies the change and writes its record in one transaction.

use crate::checkpoint::Checkpoint;
use crate::checkpoint::CheckpointSigner;
use crate::record::{Action, Actor, AuditEvent, AuditRecord, GENESIS_HASH, Outcome};
use crate::registry::{ChangeOutcome, RegistryChange};
use crate::{AuditError, AuditStore};
use std::sync::mpsc::{self, RecvTimeoutError};
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
}

impl WriterOptions {
    pub fn new(chain: impl Into<String>) -> Self {
        WriterOptions {
            chain: chain.into(),
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 1024,
            policy_version: String::new(),
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
/// An ordinary record: the event, a `change` to describe (a review mark), and who waits.
type AppendJob = (AuditEvent, Option<serde_json::Value>, AppendReply);
type ChangeReply = oneshot::Sender<Result<(ChangeOutcome, Receipt), AuditError>>;

enum Job {
    Append {
        event: AuditEvent,
        change: Option<Box<serde_json::Value>>,
        reply: AppendReply,
    },
    Change {
        event: AuditEvent,
        // Boxed: a change is rare and large; ordinary records should not pay for its size.
        change: Box<RegistryChange>,
        reply: ChangeReply,
    },
}

/// The handle the gateway writes through. Dropping the last handle stops the writer after it has
/// written everything queued and a final checkpoint.
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
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), AuditError>>(1);
        let chain = options.chain.clone();
        let writer = std::thread::Builder::new()
            .name("samblik-audit-writer".into())
            .spawn(move || {
                let started = open().and_then(|mut store| {
                    let state = begin(&mut *store, &signer, &options)?;
                    Ok((store, state))
                });
                match started {
                    Ok((store, state)) => {
                        let _ = ready_tx.send(Ok(()));
                        run(store, signer, options, state, rx, health_tx);
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
                event,
                change: None,
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
                event,
                change: Some(Box::new(change)),
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

    /// Queues `event` without waiting: for paths that can no longer wait, such as a request whose
    /// caller went away (its handler is being dropped).
    pub fn append_detached(&self, event: AuditEvent) {
        let job = Job::Append {
            event,
            change: None,
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

/// Reads the chain's head and writes the start-up record, checkpointed at once so the head is
/// always signed.
fn begin(
    store: &mut dyn AuditStore,
    signer: &CheckpointSigner,
    options: &WriterOptions,
) -> Result<ChainState, AuditError> {
    let head = store.head(&options.chain)?;
    let last_checkpoint = store.last_checkpoint(&options.chain)?;
    let mut state = ChainState {
        seq: head.as_ref().map_or(0, |(s, _)| *s),
        hash: head.map_or_else(|| GENESIS_HASH.to_owned(), |(_, h)| h),
        checkpointed_seq: last_checkpoint.map_or(0, |c| c.seq),
        checkpointed_at: Instant::now(),
        stale: false,
    };
    let detail = format!(
        "writer started; chain head at seq {}, last checkpoint at seq {}",
        state.seq, state.checkpointed_seq
    );
    let started = AuditEvent {
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
        sources: Vec::new(),
        policy_version: options.policy_version.clone(),
    };
    let record = state.seal(started, &options.chain);
    let checkpoint = signer.sign(&options.chain, record.seq, &record.hash, &record.at);
    store.append(std::slice::from_ref(&record), Some(&checkpoint))?;
    state.checkpointed_seq = record.seq;
    Ok(state)
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
    fn seal(&mut self, event: AuditEvent, chain: &str) -> AuditRecord {
        self.seal_with_change(event, None, chain)
    }

    fn seal_with_change(
        &mut self,
        event: AuditEvent,
        change: Option<serde_json::Value>,
        chain: &str,
    ) -> AuditRecord {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let record =
            AuditRecord::seal_with_change(event, change, chain, self.seq + 1, at, &self.hash);
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
    rx: mpsc::Receiver<Job>,
    health: watch::Sender<bool>,
) {
    let mut writer = Writer {
        store,
        signer,
        options,
        state,
        health,
    };
    loop {
        let first = match rx.recv_timeout(writer.options.checkpoint_interval) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: sign the head if records came after the last checkpoint.
                writer.sign_head_if_unsigned();
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
        // Ordinary records are committed together; a change waits for those before it, then
        // gets a transaction of its own, so the chain keeps the order the jobs came in.
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Append {
                    event,
                    change,
                    reply,
                } => batch.push((event, change.map(|c| *c), reply)),
                Job::Change {
                    event,
                    change,
                    reply,
                } => {
                    writer.append(std::mem::take(&mut batch));
                    writer.change(event, &change, reply);
                }
            }
        }
        writer.append(batch);
    }
    // Shutting down: sign the head if records came after the last checkpoint.
    writer.sign_head_if_unsigned();
}

struct Writer {
    store: Box<dyn AuditStore>,
    signer: CheckpointSigner,
    options: WriterOptions,
    state: ChainState,
    health: watch::Sender<bool>,
}

impl Writer {
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

    /// After a failed write, re-reads the store's head before the next one.
    fn refresh(&mut self) -> Result<(), AuditError> {
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
        self.health
            .send_if_modified(|h| !std::mem::replace(h, true));
    }

    fn failed(&mut self, before: (u64, String), error: &AuditError, records: usize) {
        (self.state.seq, self.state.hash) = before;
        self.state.stale = true;
        tracing::error!(error = %error, records, "audit write failed; lookups are refused until it recovers");
        // Health first: whoever hears of the failure must find the gateway unhealthy.
        self.health
            .send_if_modified(|h| std::mem::replace(h, false));
    }

    /// Seals and commits ordinary records in one transaction.
    fn append(&mut self, jobs: Vec<AppendJob>) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = self.refresh() {
            fail(
                jobs.into_iter().map(|(_, _, reply)| reply),
                &e,
                &self.health,
            );
            return;
        }
        let chain = self.options.chain.as_str();
        let before = (self.state.seq, self.state.hash.clone());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for (event, change, reply) in jobs {
            let record = self.state.seal_with_change(event, change, chain);
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
        match self.store.append(&records, checkpoint.as_ref()) {
            Ok(()) => {
                self.succeeded(checkpoint.is_some());
                for (reply, receipt) in replies {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(receipt));
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

    /// Applies a registry change and commits its record with it, in one transaction.
    fn change(&mut self, mut event: AuditEvent, change: &RegistryChange, reply: ChangeReply) {
        if let Err(e) = self.refresh() {
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
            event.cpr = Some(cpr.to_owned());
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
                |outcome: ChangeOutcome| -> Result<(AuditRecord, Option<Checkpoint>), AuditError> {
                    // Sealed once per transaction; should a store call this twice, the record
                    // still takes the same place in the chain.
                    (state.seq, state.hash) = before.clone();
                    let mut event = event.clone();
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
                    let record = state.seal_with_change(event, Some(body.clone()), &options.chain);
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
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let checkpoint = signer.sign(chain, state.seq, &state.hash, &at);
    match store.append(&[], Some(&checkpoint)) {
        Ok(()) => {
            state.checkpointed_seq = state.seq;
            state.checkpointed_at = Instant::now();
        }
        Err(e) => tracing::error!(error = %e, "cannot write an audit checkpoint"),
    }
}

fn fail(
    replies: impl Iterator<Item = AppendReply>,
    error: &AuditError,
    health: &watch::Sender<bool>,
) {
    tracing::error!(error = %error, "audit store unavailable; lookups are refused until it recovers");
    health.send_if_modified(|h| std::mem::replace(h, false));
    for reply in replies.flatten() {
        let _ = reply.send(Err(error.clone()));
    }
}
