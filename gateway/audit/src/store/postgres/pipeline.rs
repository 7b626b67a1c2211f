//! The PostgreSQL store's batches written on several connections at once ([`CONNECTIONS`]),
//! committed in order: the server inserts several batches at once, and a chain in the database
//! never has a gap.
//!
//! The design: `docs/audit-store.md`.

use crate::checkpoint::Checkpoint;
use crate::store::postgres::batch::{Inserts, insert, session};
use crate::{AuditError, Durability, LogSync, SealedRecord};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};

/// Connections a writer's batches are spread over: two let the server insert one batch while it
/// commits the one before, and use two of its cores (`docs/benchmark-history.md`, "PostgreSQL:
/// batches on two connections, committed in order").
pub const CONNECTIONS: usize = 2;

/// A batch of fewer records that finds the pipeline idle is committed on the store's own
/// connection instead, and answered at once: handing it over costs two thread hand-offs (to a
/// connection's thread, then to the writer's sync thread), which at moderate load lengthened a
/// lookup more than the overlap gained (`docs/benchmark-history.md`, "The gateway on
/// PostgreSQL"). Larger batches are what a writer falling behind makes, and what the pipeline is
/// for.
pub const INLINE_BELOW: usize = 64;

/// What the pipeline's sessions are called on the server (`application_name`), with their
/// number after it.
pub const BATCHES_NAME: &str = "samblik-audit-batches";

/// A batch handed to a connection's thread.
struct Job {
    index: u64,
    records: Vec<SealedRecord>,
    checkpoint: Option<Checkpoint>,
}

/// The pipeline's progress, shared by the writer, the connections' threads and the sync side.
#[derive(Default)]
struct State {
    /// Batches handed over so far.
    submitted: u64,
    /// The first `finished` batches have committed or failed (they finish in order).
    finished: u64,
    /// The first batch that failed since the last recovery, and why.
    failed: Option<(u64, String)>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// The server process of the session that holds the chain's claim (0: none claimed).
    claim_pid: Arc<AtomicI32>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `done(state)` holds.
    fn wait_until<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        done: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while !done(&state) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state
    }

    /// Waits until every batch before `index` has finished; then whether they all committed.
    fn turn(&self, index: u64) -> Result<(), AuditError> {
        let state = self.wait_until(self.state(), |s| s.finished >= index);
        match &state.failed {
            Some((failed, why)) if *failed < index => Err(AuditError::Store(format!(
                "an earlier audit batch was not written ({why}); this one is rolled back"
            ))),
            _ => Ok(()),
        }
    }

    /// Marks batch `index` finished; its predecessors have.
    fn finish(&self, index: u64, outcome: Result<(), AuditError>) {
        let mut state = self.state();
        debug_assert_eq!(state.finished, index, "batches finish in order");
        state.finished = index + 1;
        if let Err(e) = outcome
            && state.failed.is_none()
        {
            tracing::error!(error = %e, batch = index, "an audit batch was not written");
            state.failed = Some((index, e.to_string()));
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Waits until every batch handed over before the call has finished; `Err` if one of them
    /// failed.
    fn settle(&self) -> Result<(), AuditError> {
        let state = self.state();
        let target = state.submitted;
        let state = self.wait_until(state, |s| s.finished >= target);
        match &state.failed {
            Some((failed, why)) if *failed < target => Err(AuditError::Store(format!(
                "an audit batch was not written: {why}"
            ))),
            _ => Ok(()),
        }
    }
}

/// The connections' threads and what they share: owned by the store.
pub(crate) struct Pipeline {
    senders: Vec<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("connections", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts `connections` threads, each connecting to `url` at its first batch (and again
    /// after losing its connection). `claim_pid` names the session holding the chain's claim.
    pub(crate) fn start(
        url: &str,
        durability: Durability,
        connections: usize,
        claim_pid: Arc<AtomicI32>,
        keys: Arc<crate::AtRestKeys>,
    ) -> Result<Self, AuditError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            claim_pid,
        });
        let mut pipeline = Pipeline {
            senders: Vec::new(),
            threads: Vec::new(),
            shared,
        };
        for i in 0..connections.max(1) {
            let (tx, rx) = mpsc::channel::<Job>();
            let mut connection = Connection {
                url: url.to_owned(),
                name: format!("{BATCHES_NAME}-{i}"),
                durability,
                client: None,
                shared: Arc::clone(&pipeline.shared),
                keys: Arc::clone(&keys),
            };
            let thread = std::thread::Builder::new()
                .name(format!("samblik-audit-pg-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        connection.write(job);
                    }
                })
                .map_err(|e| {
                    AuditError::Store(format!("cannot start an audit connection thread: {e}"))
                })?;
            pipeline.senders.push(tx);
            pipeline.threads.push(thread);
        }
        Ok(pipeline)
    }

    /// Hands a batch to the next connection, once fewer batches than connections are in flight.
    /// Refused after a failure until [`Pipeline::recover`].
    pub(crate) fn submit(
        &self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        let connections = self.senders.len() as u64;
        let state = self.shared.state();
        let mut state = self.shared.wait_until(state, |s| {
            s.failed.is_some() || s.submitted - s.finished < connections
        });
        if let Some((_, why)) = &state.failed {
            return Err(AuditError::Store(format!(
                "an audit batch was not written ({why}); nothing more is written until the \
                 writer recovers"
            )));
        }
        let index = state.submitted;
        state.submitted += 1;
        drop(state);
        let job = Job {
            index,
            records: records.to_vec(),
            checkpoint: checkpoint.cloned(),
        };
        let sent = self.senders[(index % connections) as usize].send(job);
        if sent.is_err() {
            // The connection's thread is gone (it panicked): finish the batch here, in its turn,
            // so those after it are not waited for forever.
            let _ = self.shared.turn(index);
            let gone = || AuditError::Store("an audit connection thread has stopped".into());
            self.shared.finish(index, Err(gone()));
            return Err(gone());
        }
        Ok(())
    }

    /// Whether no batch is in flight and none has failed since the last recovery.
    pub(crate) fn idle(&self) -> bool {
        let state = self.shared.state();
        state.finished == state.submitted && state.failed.is_none()
    }

    /// Waits until every batch handed over has finished; `Err` if one failed since the last
    /// recovery. The store calls it before anything it does on its own connection, so that
    /// writes stay in order and reads see every batch.
    pub(crate) fn settle(&self) -> Result<(), AuditError> {
        self.shared.settle()
    }

    /// After a failure: once every batch in flight has finished, accepts batches again. The
    /// writer re-reads the chain's head after this.
    pub(crate) fn recover(&self) {
        let state = self.shared.state();
        let target = state.submitted;
        let mut state = self.shared.wait_until(state, |s| s.finished >= target);
        if let Some((index, _)) = state.failed.take() {
            tracing::info!(
                batch = index,
                "audit batches accepted again after a failure"
            );
        }
    }

    /// The sync side the writer's sync threads wait on.
    pub(crate) fn sync(&self) -> PipelineSync {
        PipelineSync(Arc::clone(&self.shared))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.senders.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an audit connection thread panicked");
            }
        }
    }
}

/// Makes a pipelined batch's receipts wait for its commit (which waited for the WAL flush).
pub(crate) struct PipelineSync(Arc<Shared>);

impl LogSync for PipelineSync {
    fn sync(&self) -> Result<(), AuditError> {
        self.0.settle()
    }
}

/// One of the pipeline's connections, on its thread.
struct Connection {
    url: String,
    /// Its `application_name`: `samblik-audit-batches-N`.
    name: String,
    durability: Durability,
    client: Option<(postgres::Client, Inserts)>,
    shared: Arc<Shared>,
    /// Seal the batches' bodies, on this connection's thread.
    keys: Arc<crate::AtRestKeys>,
}

impl Connection {
    fn write(&mut self, job: Job) {
        let span = tracing::debug_span!(
            "audit_batch",
            batch = job.index,
            records = job.records.len()
        );
        let _entered = span.enter();
        let outcome = self.insert_and_commit(&job);
        if outcome.is_err() {
            // The connection may be unusable: connect afresh for the next batch.
            self.client = None;
        }
        self.shared.finish(job.index, outcome);
    }

    /// Inserts the batch, waits for its turn, commits. Whatever fails, the batch waits for its
    /// turn before it is finished.
    fn insert_and_commit(&mut self, job: &Job) -> Result<(), AuditError> {
        let shared = Arc::clone(&self.shared);
        let connection = connected(
            &mut self.client,
            &self.url,
            self.durability,
            &self.name,
            &self.keys,
        );
        let inserted = connection.and_then(|(client, inserts)| {
            let mut tx = client.transaction()?;
            let claim_pid = shared.claim_pid.load(Ordering::SeqCst);
            insert(
                &mut tx,
                inserts,
                &job.records,
                job.checkpoint.as_ref(),
                claim_pid,
            )?;
            Ok(tx)
        });
        let turn = shared.turn(job.index);
        let tx = inserted?;
        turn?;
        tx.commit()?;
        Ok(())
    }
}

/// `client`, connected (again) if it is not.
fn connected<'a>(
    client: &'a mut Option<(postgres::Client, Inserts)>,
    url: &str,
    durability: Durability,
    name: &str,
    keys: &Arc<crate::AtRestKeys>,
) -> Result<&'a mut (postgres::Client, Inserts), AuditError> {
    if let Some((open, _)) = client
        && open.is_closed()
    {
        *client = None;
    }
    if client.is_none() {
        let mut session = session(url, durability, false, name)?;
        let inserts = Inserts::prepare(&mut session, keys)?;
        *client = Some((session, inserts));
    }
    client
        .as_mut()
        .ok_or_else(|| AuditError::Store("no audit database connection".into()))
}
