//! The production store: PostgreSQL, for several gateway replicas writing to one database. Each
//! replica writes its own chain, so replicas never contend for a chain's head and every chain
//! stays verifiable on its own. A commit returns after PostgreSQL has flushed its WAL
//! (`synchronous_commit` is forced on for the session), unless the store was opened with
//! [`Durability::Off`] to measure what that costs.
//!
//! A writer's batches are written on connections of their own, several at once and committed in
//! order ([`pipeline`]); the store's own connection holds the chain's claim and does
//! everything else.

mod batch;
pub mod pipeline;
mod search;

use crate::atrest::AtRestKeys;
use crate::checkpoint::Checkpoint;
use crate::registry::model::{AccessRequest, ChangeOutcome, Consent, RegistryChange, RequestState};
use crate::registry::reader::{RegistryReader, RequestFilter};
use crate::registry::rows::{
    CONSENT_COLUMNS, ConsentRow, REQUEST_COLUMNS, RequestRow, decide_refusal, seal_reason,
    time_text,
};
use crate::store::postgres::batch::{Inserts, chain_lock_key, insert, session, to_i64};
use crate::store::postgres::pipeline::{CONNECTIONS, INLINE_BELOW, Pipeline};
use crate::store::postgres::search::{postgres_activity, postgres_search, stored_record};
use crate::{
    AuditError, AuditRecord, AuditStore, CHAINS, Commit, Durability, LogSync, STORED_COLUMNS,
    SealChange, SealedRecord, StoredRecord,
};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};
use samblik_cpr::Cpr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

/// A record's key is its place in its chain, `(chain, seq)`: a table created before has a
/// serial `id` as well, which nothing reads (and which every insert had to draw and index).
///
/// The columns the indexes hold compare byte by byte (`COLLATE "C"`), as SQLite's do: an RFC
/// 3339 time, a CPR number, a caller id or a chain id has no linguistic order, and the database's
/// own collation (`da_DK.UTF-8`, say) would make every index comparison of every insert a
/// locale-aware one. Tables created before keep the database's collation; `ALTER TABLE
/// audit_records ALTER COLUMN … TYPE TEXT COLLATE "C"` (which rebuilds the indexes, under a
/// lock) moves one over.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    chain      TEXT COLLATE \"C\" NOT NULL,
    seq        BIGINT NOT NULL,
    at         TEXT COLLATE \"C\" NOT NULL,
    request_id TEXT   NOT NULL,
    cpr        TEXT COLLATE \"C\",
    caller_id  TEXT COLLATE \"C\" NOT NULL,
    department TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE IF NOT EXISTS audit_at_rest (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    index_check TEXT    NOT NULL
);
-- A body (~1–3 KB of JSON) is compressed by the server before it is stored: with lz4 (the
-- server's default is pglz, several times slower) a batch of records is written ~40 % faster
-- (docs/benchmark-history.md: the body compressed with lz4 by the server). Older rows keep
-- what they were stored with; a server built without lz4 keeps pglz. Altered only when it is
-- not yet so: the change locks the table.
DO $$
BEGIN
    IF (SELECT attcompression FROM pg_attribute
         WHERE attrelid = 'audit_records'::regclass AND attname = 'body') <> 'l' THEN
        ALTER TABLE audit_records ALTER COLUMN body SET COMPRESSION lz4;
    END IF;
EXCEPTION WHEN feature_not_supported OR undefined_column OR syntax_error THEN
    RAISE NOTICE 'audit_records.body stays compressed with the server''s default: %', SQLERRM;
END
$$;
CREATE INDEX IF NOT EXISTS audit_records_cpr ON audit_records (cpr, at);
CREATE INDEX IF NOT EXISTS audit_records_caller ON audit_records (caller_id, at);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records (at);
CREATE INDEX IF NOT EXISTS audit_records_maintenance ON audit_records (chain, seq)
    WHERE action = 'audit-maintenance';
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain     TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    head_hash TEXT   NOT NULL,
    at        TEXT   NOT NULL,
    signature TEXT   NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE IF NOT EXISTS consents (
    id               TEXT     PRIMARY KEY,
    cpr              TEXT     NOT NULL,
    sealed           TEXT     NOT NULL,
    kind             TEXT     NOT NULL,
    from_departments TEXT     NOT NULL,
    recipients       TEXT     NOT NULL,
    max_tier         SMALLINT NOT NULL,
    purposes         TEXT     NOT NULL,
    valid_from       TEXT     NOT NULL,
    valid_until      TEXT,
    recorded_by      TEXT     NOT NULL,
    recorded_at      TEXT     NOT NULL,
    withdrawn_at     TEXT,
    withdrawn_by     TEXT
);
CREATE INDEX IF NOT EXISTS consents_cpr ON consents (cpr, recorded_at);
CREATE TABLE IF NOT EXISTS access_requests (
    id                   TEXT     PRIMARY KEY,
    cpr                  TEXT     NOT NULL,
    sealed               TEXT     NOT NULL,
    requester_id         TEXT     NOT NULL,
    requester_name       TEXT     NOT NULL,
    requester_department TEXT     NOT NULL,
    source_id            TEXT     NOT NULL,
    owner_department     TEXT     NOT NULL,
    tier_wanted          SMALLINT NOT NULL,
    purpose              TEXT     NOT NULL,
    filed_at             TEXT     NOT NULL,
    state                TEXT     NOT NULL,
    decided_by           TEXT,
    decided_at           TEXT,
    decision_reason      TEXT,
    granted_tier         SMALLINT,
    granted_until        TEXT
);
CREATE INDEX IF NOT EXISTS access_requests_cpr ON access_requests (cpr, filed_at);
CREATE INDEX IF NOT EXISTS access_requests_requester
    ON access_requests (cpr, requester_id, state);
CREATE INDEX IF NOT EXISTS access_requests_owner
    ON access_requests (owner_department, state, filed_at);
";

/// Serialises schema creation between replicas starting at the same moment.
const SCHEMA_LOCK: i64 = 0x5341_4d42_4c49_4b01;

pub struct PostgresStore {
    client: Client,
    /// Prepared at the first write on this connection.
    inserts: Option<Inserts>,
    /// To connect again once the connection is gone (a database restart, a failover, a
    /// terminated session): the writer's next try reconnects, so the log recovers by itself.
    url: String,
    durability: Durability,
    /// Opened only to read ([`PostgresStore::open_read_only`]): so is every session after it.
    read_only: bool,
    /// The chain this session holds the lock of ([`AuditStore::claim`]), taken again on a new
    /// connection.
    claimed: Option<String>,
    /// The server process of the session holding the claim, for the pipeline's connections to
    /// check (0 before a claim).
    claim_pid: Arc<AtomicI32>,
    /// The connections the writer's batches are spread over, once it asked for them
    /// ([`AuditStore::deferred_sync`]).
    pipeline: Option<Pipeline>,
    /// How many connections that is.
    connections: usize,
    /// The keys its bodies and CPR columns are sealed and hashed with.
    keys: Arc<AtRestKeys>,
}

/// A registry reader's statements, each prepared once on its connection: a query given as text
/// is prepared again every time it runs, which costs a second round trip and a parse and plan
/// on the server. The conditions the reader builds are few, so the map stays small.
#[derive(Default)]
struct Statements(std::collections::HashMap<String, Statement>);

impl Statements {
    /// `sql` prepared on `client`'s connection.
    fn get(&mut self, client: &mut Client, sql: &str) -> Result<Statement, AuditError> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may hold a password: never print it.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl From<postgres::Error> for AuditError {
    fn from(e: postgres::Error) -> Self {
        AuditError::Store(e.to_string())
    }
}

impl PostgresStore {
    /// Connects (`postgres://user@host:port/db`) and creates the schema if missing. Every
    /// commit waits for PostgreSQL's WAL flush, whatever the server's default.
    /// A database written with another index key, or before the store sealed at all, is
    /// refused.
    pub fn connect(url: &str, keys: Arc<AtRestKeys>) -> Result<Self, AuditError> {
        Self::connect_with(url, Durability::Full, keys)
    }

    /// [`PostgresStore::connect`]; with [`Durability::Off`] a commit returns before its WAL is
    /// flushed (`synchronous_commit = off` for this session only): for measuring what
    /// durability costs, never for a municipality.
    pub fn connect_with(
        url: &str,
        durability: Durability,
        keys: Arc<AtRestKeys>,
    ) -> Result<Self, AuditError> {
        let mut client = session(url, durability, false, own_name(false))?;
        create_schema(&mut client, &keys)?;
        Ok(PostgresStore {
            client,
            inserts: None,
            url: url.to_owned(),
            durability,
            read_only: false,
            claimed: None,
            claim_pid: Arc::default(),
            pipeline: None,
            connections: CONNECTIONS,
            keys,
        })
    }

    /// Opens an existing store to read it only (verification): a read-only session, and nothing
    /// created — a database without the audit log's tables is an error, not an empty store.
    pub fn open_read_only(url: &str, keys: Arc<AtRestKeys>) -> Result<Self, AuditError> {
        let mut client = session(url, Durability::Full, true, own_name(true))?;
        let exists: bool = client
            .query_one("SELECT to_regclass('audit_records') IS NOT NULL", &[])?
            .get(0);
        if !exists {
            return Err(AuditError::Store(
                "no audit store in this database (it has no audit_records table)".into(),
            ));
        }
        claim_at_rest(&mut client, &keys, false)?;
        Ok(PostgresStore {
            client,
            inserts: None,
            url: url.to_owned(),
            durability: Durability::Full,
            read_only: true,
            claimed: None,
            claim_pid: Arc::default(),
            pipeline: None,
            connections: CONNECTIONS,
            keys,
        })
    }

    /// The connection, made again if the last one is gone. A call that fails because the
    /// server went away leaves the client closed; the next call reconnects.
    fn connected(&mut self) -> Result<&mut Client, AuditError> {
        if self.client.is_closed() {
            tracing::warn!("the audit database connection is gone; connecting again");
            self.client = session(
                &self.url,
                self.durability,
                self.read_only,
                own_name(self.read_only),
            )?;
            self.inserts = None;
            // The lock went with the old session: a writer that took the chain meanwhile keeps
            // it, and this one writes nothing more.
            if let Some(chain) = &self.claimed {
                let pid = lock_chain(&mut self.client, chain)?;
                self.claim_pid.store(pid, Ordering::SeqCst);
            }
        }
        Ok(&mut self.client)
    }

    /// Spreads the writer's batches over `connections` connections (1: one beside the store's
    /// own). For measuring; [`CONNECTIONS`] otherwise.
    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// Before anything on the store's own connection: every pipelined batch has finished, so
    /// writes stay in order and reads see them; `Err` if one failed and the writer has not
    /// recovered yet.
    fn settled(&mut self) -> Result<&mut Client, AuditError> {
        if let Some(pipeline) = &self.pipeline {
            pipeline.settle()?;
        }
        self.connected()
    }

    /// The statements a batch is written with, prepared once per connection (outside any
    /// transaction, so that a rollback cannot take them away).
    fn inserts(&mut self) -> Result<Inserts, AuditError> {
        self.settled()?;
        if let Some(inserts) = &self.inserts {
            return Ok(inserts.clone());
        }
        let inserts = Inserts::prepare(&mut self.client, &self.keys)?;
        self.inserts = Some(inserts.clone());
        Ok(inserts)
    }

    /// What this store's session commits with: `on` unless it was opened with
    /// [`Durability::Off`].
    pub fn synchronous_commit(&mut self) -> Result<String, AuditError> {
        Ok(self
            .client
            .query_one("SHOW synchronous_commit", &[])?
            .get::<_, String>(0))
    }
}

/// How long a writer waits for its chain's lock: a gateway restarted at once after a crash
/// finds its old session still ending on the server.
const CHAIN_LOCK_WAIT: &str = "10s";

/// Takes `chain`'s session-level advisory lock (waiting up to [`CHAIN_LOCK_WAIT`]), or says
/// that someone else holds it. Returns the session's server process, which holds it.
fn lock_chain(client: &mut Client, chain: &str) -> Result<i32, AuditError> {
    client.batch_execute(&format!("SET lock_timeout = '{CHAIN_LOCK_WAIT}'"))?;
    let locked = client.query_one(
        concat!(
            "SELECT pg_backend_pid() FROM pg_advisory_lock(",
            chain_lock_key!("$1"),
            ")"
        ),
        &[&chain],
    );
    client.batch_execute("RESET lock_timeout")?;
    match locked {
        Ok(row) => Ok(row.get(0)),
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Err(AuditError::Store(format!(
                "the audit chain {chain:?} is being written by another gateway (or an \
                 operator's command): each replica needs a chain of its own ([audit] chain)"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// What the store's own session is called on the server.
fn own_name(read_only: bool) -> &'static str {
    if read_only {
        "samblik-audit-reader"
    } else {
        "samblik-audit-writer"
    }
}

fn create_schema(client: &mut Client, keys: &AtRestKeys) -> Result<(), AuditError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
    let created = client
        .batch_execute(SCHEMA)
        .map_err(AuditError::from)
        .and_then(|()| claim_at_rest(client, keys, true));
    client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
    created
}

/// Holds the database to `keys`, as the embedded store does (`claim_at_rest` there): the index
/// key's check value is remembered at the first start and every other key refused; a database
/// with records or registry rows but no check value was written before CPR numbers were sealed
/// and is refused. With `claim`, an empty database takes the key (under the schema lock).
fn claim_at_rest(client: &mut Client, keys: &AtRestKeys, claim: bool) -> Result<(), AuditError> {
    let (stored, written): (Option<String>, bool) = {
        let row = client.query_one(
            "SELECT CASE WHEN to_regclass('audit_at_rest') IS NULL THEN NULL
                         ELSE (SELECT index_check FROM audit_at_rest WHERE id = 1) END,
                    EXISTS (SELECT 1 FROM audit_records)
                    OR (to_regclass('consents') IS NOT NULL AND EXISTS (SELECT 1 FROM consents))
                    OR (to_regclass('access_requests') IS NOT NULL
                        AND EXISTS (SELECT 1 FROM access_requests))",
            &[],
        )?;
        (row.try_get(0)?, row.try_get(1)?)
    };
    match stored {
        Some(check) if check == keys.check_value() => Ok(()),
        Some(_) => Err(AuditError::DataKey(
            "the audit data key file's index key is not the one this audit database was \
             written with: give the gateway that key file (restore it from backup); a new \
             index key is never taken by a store in use"
                .into(),
        )),
        None if written => Err(AuditError::Store(
            "this audit database was written before CPR numbers were sealed at rest and holds \
             them in clear: keep it aside (read it with an earlier release) and start a new \
             database; see docs/audit-store.md"
                .into(),
        )),
        None if claim => {
            client.execute(
                "INSERT INTO audit_at_rest (id, index_check) VALUES (1, $1)
                 ON CONFLICT (id) DO NOTHING",
                &[&keys.check_value()],
            )?;
            Ok(())
        }
        None => Ok(()),
    }
}

/// Applies a registry change inside the caller's transaction. Each change is one conditional
/// statement, so under READ COMMITTED a concurrent writer (another replica) waits for the row
/// and then finds the condition false: a request is decided once, a consent withdrawn once.
fn apply(
    tx: &mut postgres::Transaction<'_>,
    keys: &AtRestKeys,
    change: &RegistryChange,
) -> Result<ChangeOutcome, AuditError> {
    let changed = |rows: u64| {
        if rows == 1 {
            ChangeOutcome::Applied
        } else {
            ChangeOutcome::AlreadyDone
        }
    };
    Ok(match change {
        RegistryChange::RecordConsent(consent) => {
            let c = ConsentRow::from_consent(consent, keys)?;
            changed(tx.execute(
                &format!(
                    "INSERT INTO consents ({CONSENT_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &c.id,
                    &c.cpr,
                    &c.sealed,
                    &c.kind,
                    &c.from_departments,
                    &c.recipients,
                    &c.max_tier,
                    &c.purposes,
                    &c.valid_from,
                    &c.valid_until,
                    &c.recorded_by,
                    &c.recorded_at,
                    &c.withdrawn_at,
                    &c.withdrawn_by,
                ],
            )?)
        }
        RegistryChange::WithdrawConsent { id, cpr, by, at } => {
            let rows = tx.execute(
                "UPDATE consents SET withdrawn_at = $3, withdrawn_by = $4
                 WHERE id = $1 AND cpr = $2 AND withdrawn_at IS NULL",
                &[id, &keys.index(cpr), &time_text(*at), by],
            )?;
            if rows == 1 {
                ChangeOutcome::Applied
            } else if tx
                .query_opt(
                    "SELECT 1 FROM consents WHERE id = $1 AND cpr = $2",
                    &[id, &keys.index(cpr)],
                )?
                .is_some()
            {
                ChangeOutcome::AlreadyDone
            } else {
                ChangeOutcome::NotFound
            }
        }
        RegistryChange::FileRequest(request) => {
            let r = RequestRow::from_request(request, keys)?;
            changed(tx.execute(
                &format!(
                    "INSERT INTO access_requests ({REQUEST_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                             $16, $17)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &r.id,
                    &r.cpr,
                    &r.sealed,
                    &r.requester_id,
                    &r.requester_name,
                    &r.requester_department,
                    &r.source_id,
                    &r.owner_department,
                    &r.tier_wanted,
                    &r.purpose,
                    &r.filed_at,
                    &r.state,
                    &r.decided_by,
                    &r.decided_at,
                    &r.decision_reason,
                    &r.granted_tier,
                    &r.granted_until,
                ],
            )?)
        }
        RegistryChange::DecideRequest {
            id,
            by,
            by_department,
            approve,
            tier,
            until,
            reason,
            at,
        } => {
            let (state, tier, until) = if *approve {
                (
                    RequestState::Approved,
                    tier.map(i16::from),
                    until.map(time_text),
                )
            } else {
                (RequestState::Denied, None, None)
            };
            let rows = tx.execute(
                "UPDATE access_requests
                 SET state = $3, decided_by = $4, decided_at = $5, decision_reason = $6,
                     granted_tier = $7, granted_until = $8
                 WHERE id = $1 AND owner_department = $2 AND state = 'pending'",
                &[
                    id,
                    by_department,
                    &state.as_str(),
                    by,
                    &time_text(*at),
                    &seal_reason(keys, Some(reason))?,
                    &tier,
                    &until,
                ],
            )?;
            if rows == 1 {
                ChangeOutcome::Applied
            } else {
                let found = tx
                    .query_opt(
                        "SELECT state, owner_department FROM access_requests WHERE id = $1",
                        &[id],
                    )?
                    .map(|r| (r.get(0), r.get(1)));
                decide_refusal(found, by_department)
            }
        }
    })
}

impl AuditStore for PostgresStore {
    fn cpr_index(&self, cpr: &Cpr) -> String {
        self.keys.index(cpr)
    }

    fn claim(&mut self, chain: &str) -> Result<(), AuditError> {
        let pid = lock_chain(self.settled()?, chain)?;
        self.claim_pid.store(pid, Ordering::SeqCst);
        self.claimed = Some(chain.to_owned());
        Ok(())
    }

    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        let row = self.settled()?.query_opt(
            "SELECT seq, hash FROM audit_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )?;
        Ok(row.map(|r| (r.get::<_, i64>(0).unsigned_abs(), r.get::<_, String>(1))))
    }

    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        let row = self.settled()?.query_opt(
            "SELECT seq, head_hash, at, signature FROM audit_checkpoints
             WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )?;
        Ok(row.map(|r| checkpoint(chain, &r)))
    }

    fn append(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        let inserts = self.inserts()?;
        let mut tx = self.settled()?.transaction()?;
        insert(&mut tx, &inserts, records, checkpoint, 0)?;
        tx.commit()?;
        Ok(())
    }

    /// Hands the batch to the pipeline's next connection ([`pipeline`]): it is
    /// durable once the pipeline's sync says so. A small batch that finds the pipeline idle is
    /// committed here at once, on the store's own connection ([`INLINE_BELOW`]). (Not any batch
    /// that finds it idle: a batch committed here holds up the writer, so the next would find it
    /// idle too, and a writer falling behind would never use the pipeline.)
    fn append_unsynced(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Commit, AuditError> {
        match &self.pipeline {
            Some(pipeline) if records.len() >= INLINE_BELOW || !pipeline.idle() => {
                pipeline.submit(records, checkpoint)?;
                Ok(Commit::Deferred)
            }
            _ => self.append(records, checkpoint).map(|()| Commit::Durable),
        }
    }

    fn deferred_sync(&mut self) -> Result<Option<Box<dyn LogSync>>, AuditError> {
        if self.read_only {
            return Ok(None);
        }
        if self.pipeline.is_none() {
            self.pipeline = Some(Pipeline::start(
                &self.url,
                self.durability,
                self.connections,
                Arc::clone(&self.claim_pid),
                Arc::clone(&self.keys),
            )?);
        }
        Ok(self
            .pipeline
            .as_ref()
            .map(|p| Box::new(p.sync()) as Box<dyn LogSync>))
    }

    /// Accepts batches again once those in flight have finished: every batch that committed is
    /// durable (its commit waited for the WAL flush), and those after a failed one were rolled
    /// back, so the writer re-reads the chain's head.
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        if let Some(pipeline) = &self.pipeline {
            pipeline.recover();
        }
        Ok(())
    }

    fn apply_change(
        &mut self,
        change: &RegistryChange,
        seal: &mut SealChange<'_>,
    ) -> Result<ChangeOutcome, AuditError> {
        // Dropping the transaction on any error below rolls the change back.
        let inserts = self.inserts()?;
        let keys = Arc::clone(&self.keys);
        let mut tx = self.settled()?.transaction()?;
        let outcome = apply(&mut tx, &keys, change)?;
        let (record, checkpoint) = seal(outcome)?;
        insert(
            &mut tx,
            &inserts,
            std::slice::from_ref(&record),
            checkpoint.as_ref(),
            0,
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    fn maintenance_records(&mut self, chain: &str) -> Result<Vec<StoredRecord>, AuditError> {
        Ok(self
            .settled()?
            .query(
                &format!(
                    "SELECT {STORED_COLUMNS} FROM audit_records
                     WHERE chain = $1 AND action = 'audit-maintenance' ORDER BY seq"
                ),
                &[&chain],
            )?
            .iter()
            .map(|r| stored_record(r, &self.keys))
            .collect::<Result<_, _>>()?)
    }

    fn prune_anchor(
        &mut self,
        chain: &str,
        cutoff: &str,
        max_seq: u64,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let max_seq = i64::try_from(max_seq).unwrap_or(i64::MAX);
        let row = self.settled()?.query_opt(
            "SELECT c.seq, c.head_hash, c.at, c.signature FROM audit_checkpoints c
             WHERE c.chain = $1 AND c.seq <= $3
               AND c.seq < COALESCE((SELECT r.seq FROM audit_records r
                                     WHERE r.chain = $1 AND r.at >= $2
                                     ORDER BY r.seq LIMIT 1), 9223372036854775807)
               AND EXISTS (SELECT 1 FROM audit_records r WHERE r.chain = $1 AND r.seq = c.seq)
             ORDER BY c.seq DESC LIMIT 1",
            &[&chain, &cutoff, &max_seq],
        )?;
        Ok(row.map(|r| checkpoint(chain, &r)))
    }

    fn prune(
        &mut self,
        chain: &str,
        through_seq: u64,
        expected: u64,
        record: &SealedRecord,
        checkpoint: &Checkpoint,
    ) -> Result<u64, AuditError> {
        let through = to_i64(through_seq)?;
        let inserts = self.inserts()?;
        // Dropping the transaction on any error below rolls the delete back.
        let mut tx = self.settled()?.transaction()?;
        let deleted = tx.execute(
            "DELETE FROM audit_records WHERE chain = $1 AND seq <= $2",
            &[&chain, &through],
        )?;
        if deleted != expected {
            return Err(AuditError::Store(format!(
                "prune of chain {chain} through {through_seq} would delete {deleted} records, \
                 not the {expected} verified; nothing was pruned"
            )));
        }
        tx.execute(
            "DELETE FROM audit_checkpoints WHERE chain = $1 AND seq < $2",
            &[&chain, &through],
        )?;
        insert(
            &mut tx,
            &inserts,
            std::slice::from_ref(record),
            Some(checkpoint),
            0,
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    fn chains(&mut self) -> Result<Vec<String>, AuditError> {
        Ok(self
            .settled()?
            .query(CHAINS, &[])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn records(
        &mut self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .settled()?
            .query(
                &format!(
                    "SELECT {STORED_COLUMNS} FROM audit_records
                     WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ),
                &[&chain, &to_i64(after_seq)?, &limit],
            )?
            .iter()
            .map(|r| stored_record(r, &self.keys))
            .collect::<Result<_, _>>()?)
    }

    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        Ok(self
            .settled()?
            .query(
                "SELECT seq, head_hash, at, signature FROM audit_checkpoints
                 WHERE chain = $1 ORDER BY seq",
                &[&chain],
            )?
            .iter()
            .map(|r| checkpoint(chain, r))
            .collect())
    }
}

fn checkpoint(chain: &str, r: &postgres::Row) -> Checkpoint {
    Checkpoint {
        chain: chain.to_owned(),
        seq: r.get::<_, i64>(0).unsigned_abs(),
        head_hash: r.get(1),
        at: r.get(2),
        signature: r.get(3),
    }
}

/// Reads the registry on a connection of its own. Blocking: never use it on an async runtime's
/// thread ([`crate::Registry`] runs it on blocking threads).
pub struct PostgresReader {
    client: Client,
    statements: Statements,
    keys: Arc<AtRestKeys>,
}

impl std::fmt::Debug for PostgresReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresReader").finish_non_exhaustive()
    }
}

impl PostgresReader {
    /// Connects; with `create`, creates the schema if missing (as the writer would).
    pub fn connect(url: &str, create: bool, keys: Arc<AtRestKeys>) -> Result<Self, AuditError> {
        let mut client = Client::connect(url, NoTls)?;
        if create {
            create_schema(&mut client, &keys)?;
        } else {
            claim_at_rest(&mut client, &keys, false)?;
        }
        client.batch_execute("SET default_transaction_read_only = on")?;
        Ok(PostgresReader {
            client,
            statements: Statements::default(),
            keys,
        })
    }

    fn consents(
        &mut self,
        condition: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Consent>, AuditError> {
        let statement = self.statements.get(
            &mut self.client,
            &format!("SELECT {CONSENT_COLUMNS} FROM consents WHERE {condition}"),
        )?;
        self.client
            .query(&statement, args)?
            .iter()
            .map(|r| {
                ConsentRow {
                    id: r.try_get(0)?,
                    cpr: r.try_get(1)?,
                    sealed: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    from_departments: r.try_get(4)?,
                    recipients: r.try_get(5)?,
                    max_tier: r.try_get(6)?,
                    purposes: r.try_get(7)?,
                    valid_from: r.try_get(8)?,
                    valid_until: r.try_get(9)?,
                    recorded_by: r.try_get(10)?,
                    recorded_at: r.try_get(11)?,
                    withdrawn_at: r.try_get(12)?,
                    withdrawn_by: r.try_get(13)?,
                }
                .into_consent(&self.keys)
            })
            .collect()
    }

    fn access_requests(
        &mut self,
        condition: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<AccessRequest>, AuditError> {
        let statement = self.statements.get(
            &mut self.client,
            &format!("SELECT {REQUEST_COLUMNS} FROM access_requests WHERE {condition}"),
        )?;
        self.client
            .query(&statement, args)?
            .iter()
            .map(|r| {
                RequestRow {
                    id: r.try_get(0)?,
                    cpr: r.try_get(1)?,
                    sealed: r.try_get(2)?,
                    requester_id: r.try_get(3)?,
                    requester_name: r.try_get(4)?,
                    requester_department: r.try_get(5)?,
                    source_id: r.try_get(6)?,
                    owner_department: r.try_get(7)?,
                    tier_wanted: r.try_get(8)?,
                    purpose: r.try_get(9)?,
                    filed_at: r.try_get(10)?,
                    state: r.try_get(11)?,
                    decided_by: r.try_get(12)?,
                    decided_at: r.try_get(13)?,
                    decision_reason: r.try_get(14)?,
                    granted_tier: r.try_get(15)?,
                    granted_until: r.try_get(16)?,
                }
                .into_request(&self.keys)
            })
            .collect()
    }
}

impl RegistryReader for PostgresReader {
    fn consents_for(&mut self, cpr: &Cpr) -> Result<Vec<Consent>, AuditError> {
        self.consents(
            "cpr = $1 ORDER BY recorded_at DESC, id DESC",
            &[&self.keys.index(cpr)],
        )
    }

    fn consent(&mut self, id: &str) -> Result<Option<Consent>, AuditError> {
        Ok(self.consents("id = $1", &[&id])?.pop())
    }

    fn grants_for(&mut self, cpr: &Cpr, caller_id: &str) -> Result<Vec<AccessRequest>, AuditError> {
        self.access_requests(
            "cpr = $1 AND requester_id = $2 AND state = 'approved'
             ORDER BY decided_at DESC, id DESC",
            &[&self.keys.index(cpr), &caller_id],
        )
    }

    fn requests(
        &mut self,
        filter: &RequestFilter,
        limit: usize,
    ) -> Result<Vec<AccessRequest>, AuditError> {
        // Only the filters given go into the query, so it can use the matching index.
        let state = filter.state.map(RequestState::as_str);
        let cpr = filter.cpr.as_ref().map(|c| self.keys.index(c));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conditions = vec!["TRUE".to_owned()];
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let filters = [
            ("owner_department", filter.owner_department.as_deref()),
            ("requester_id", filter.requester_id.as_deref()),
            ("state", state),
            ("cpr", cpr.as_deref()),
        ];
        for (column, value) in &filters {
            if let Some(value) = value {
                args.push(value);
                conditions.push(format!("{column} = ${}", args.len()));
            }
        }
        args.push(&limit);
        let condition = format!(
            "{} ORDER BY filed_at DESC, id DESC LIMIT ${}",
            conditions.join(" AND "),
            args.len()
        );
        self.access_requests(&condition, &args)
    }

    fn request(&mut self, id: &str) -> Result<Option<AccessRequest>, AuditError> {
        Ok(self.access_requests("id = $1", &[&id])?.pop())
    }

    fn search(
        &mut self,
        query: &crate::search::AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        postgres_search(&mut self.client, &self.keys, query, limit)
    }

    fn activity(
        &mut self,
        from: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        callers: &[String],
    ) -> Result<Vec<crate::search::Activity>, AuditError> {
        postgres_activity(&mut self.client, &self.keys, from, until, callers)
    }
}
