//! The single writer: it owns the store, seals events into the chain and commits everything that
//! is waiting in one transaction (group commit), so durability costs one fsync per batch rather
//! than one per request.

use crate::checkpoint::CheckpointSigner;
use crate::record::{Action, Actor, AuditEvent, AuditRecord, GENESIS_HASH, Outcome};
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

struct Job {
    event: AuditEvent,
    reply: Option<oneshot::Sender<Result<Receipt, AuditError>>>,
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
            .send(Job {
                event,
                reply: Some(reply),
            })
            .map_err(|_| AuditError::Stopped)?;
        receipt.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues `event` without waiting: for paths that can no longer wait, such as a request whose
    /// caller went away (its handler is being dropped).
    pub fn append_detached(&self, event: AuditEvent) {
        if self.jobs.send(Job { event, reply: None }).is_err() {
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
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let record = AuditRecord::seal(event, chain, self.seq + 1, at, &self.hash);
        self.seq = record.seq;
        self.hash.clone_from(&record.hash);
        record
    }
}

fn run(
    mut store: Box<dyn AuditStore>,
    signer: CheckpointSigner,
    options: WriterOptions,
    mut state: ChainState,
    rx: mpsc::Receiver<Job>,
    health: watch::Sender<bool>,
) {
    let chain = options.chain.as_str();
    loop {
        let first = match rx.recv_timeout(options.checkpoint_interval) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: sign the head if records came after the last checkpoint.
                if !state.stale && state.seq > state.checkpointed_seq {
                    sign_head(&mut *store, &signer, chain, &mut state);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut jobs = vec![first];
        while jobs.len() < options.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if state.stale {
            match store.head(chain) {
                Ok(head) => {
                    state.seq = head.as_ref().map_or(0, |(s, _)| *s);
                    state.hash = head.map_or_else(|| GENESIS_HASH.to_owned(), |(_, h)| h);
                    state.stale = false;
                }
                Err(e) => {
                    fail(jobs, &e, &health);
                    continue;
                }
            }
        }
        let before = (state.seq, state.hash.clone());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for job in jobs {
            let record = state.seal(job.event, chain);
            replies.push((
                job.reply,
                Receipt {
                    seq: record.seq,
                    hash: record.hash.clone(),
                },
            ));
            records.push(record);
        }
        let due = state.seq - state.checkpointed_seq >= options.checkpoint_every
            || state.checkpointed_at.elapsed() >= options.checkpoint_interval;
        let checkpoint = due.then(|| {
            let at = records.last().map(|r| r.at.clone()).unwrap_or_default();
            signer.sign(chain, state.seq, &state.hash, &at)
        });
        match store.append(&records, checkpoint.as_ref()) {
            Ok(()) => {
                if checkpoint.is_some() {
                    state.checkpointed_seq = state.seq;
                    state.checkpointed_at = Instant::now();
                }
                health.send_if_modified(|h| !std::mem::replace(h, true));
                for (reply, receipt) in replies {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(receipt));
                    }
                }
            }
            Err(e) => {
                (state.seq, state.hash) = before;
                state.stale = true;
                tracing::error!(error = %e, records = records.len(), "audit write failed; lookups are refused until it recovers");
                // Health first: whoever hears of the failure must find the gateway unhealthy.
                health.send_if_modified(|h| std::mem::replace(h, false));
                let jobs = replies.into_iter().map(|(reply, _)| reply);
                for reply in jobs.flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    // Shutting down: sign the head if records came after the last checkpoint.
    if !state.stale && state.seq > state.checkpointed_seq {
        sign_head(&mut *store, &signer, chain, &mut state);
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

fn fail(jobs: Vec<Job>, error: &AuditError, health: &watch::Sender<bool>) {
    tracing::error!(error = %error, "audit store unavailable; lookups are refused until it recovers");
    health.send_if_modified(|h| std::mem::replace(h, false));
    for job in jobs {
        if let Some(reply) = job.reply {
            let _ = reply.send(Err(error.clone()));
        }
    }
}
