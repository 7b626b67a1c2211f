//! The production store: PostgreSQL, for several gateway replicas writing to one database. Each
//! replica writes its own chain, so replicas never contend for a chain's head and every chain
//! stays verifiable on its own. A commit returns after PostgreSQL has flushed its WAL
//! (`synchronous_commit` is forced on for the session).

use crate::checkpoint::Checkpoint;
use crate::{AuditError, AuditRecord, AuditStore, StoredRecord};
use postgres::{Client, NoTls};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    id         BIGSERIAL PRIMARY KEY,
    chain      TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    at         TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    cpr        TEXT,
    caller_id  TEXT   NOT NULL,
    department TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_cpr ON audit_records (cpr, at);
CREATE INDEX IF NOT EXISTS audit_records_caller ON audit_records (caller_id, at);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records (at);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain     TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    head_hash TEXT   NOT NULL,
    at        TEXT   NOT NULL,
    signature TEXT   NOT NULL,
    PRIMARY KEY (chain, seq)
);
";

/// Serialises schema creation between replicas starting at the same moment.
const SCHEMA_LOCK: i64 = 0x5341_4d42_4c49_4b01;

pub struct PostgresStore {
    client: Client,
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

fn to_i64(n: u64) -> Result<i64, AuditError> {
    i64::try_from(n).map_err(|_| AuditError::Store("seq overflow".into()))
}

impl PostgresStore {
    /// Connects (`postgres://user@host:port/db`) and creates the schema if missing.
    pub fn connect(url: &str) -> Result<Self, AuditError> {
        let mut client = Client::connect(url, NoTls)?;
        client.batch_execute("SET synchronous_commit = on")?;
        client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
        let created = client.batch_execute(SCHEMA);
        client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
        created?;
        Ok(PostgresStore { client })
    }
}

impl AuditStore for PostgresStore {
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        let row = self.client.query_opt(
            "SELECT seq, hash FROM audit_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )?;
        Ok(row.map(|r| (r.get::<_, i64>(0).unsigned_abs(), r.get::<_, String>(1))))
    }

    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        let row = self.client.query_opt(
            "SELECT seq, head_hash, at, signature FROM audit_checkpoints
             WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )?;
        Ok(row.map(|r| checkpoint(chain, &r)))
    }

    fn append(
        &mut self,
        records: &[AuditRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        let mut tx = self.client.transaction()?;
        let insert = tx.prepare(
            "INSERT INTO audit_records
             (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )?;
        for r in records {
            tx.execute(
                &insert,
                &[
                    &r.chain,
                    &to_i64(r.seq)?,
                    &r.at,
                    &r.request_id,
                    &r.cpr,
                    &r.actor.caller_id,
                    &r.actor.department,
                    &r.action.as_str(),
                    &r.outcome.as_str(),
                    &r.canonical_json(),
                    &r.hash,
                ],
            )?;
        }
        if let Some(c) = checkpoint {
            tx.execute(
                "INSERT INTO audit_checkpoints (chain, seq, head_hash, at, signature)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&c.chain, &to_i64(c.seq)?, &c.head_hash, &c.at, &c.signature],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn chains(&mut self) -> Result<Vec<String>, AuditError> {
        Ok(self
            .client
            .query(
                "SELECT DISTINCT chain FROM audit_records ORDER BY chain",
                &[],
            )?
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
            .client
            .query(
                "SELECT seq, request_id, cpr, caller_id, body, hash FROM audit_records
                 WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&chain, &to_i64(after_seq)?, &limit],
            )?
            .iter()
            .map(|r| StoredRecord {
                seq: r.get::<_, i64>(0).unsigned_abs(),
                request_id: r.get(1),
                cpr: r.get(2),
                caller_id: r.get(3),
                body: r.get(4),
                hash: r.get(5),
            })
            .collect())
    }

    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        Ok(self
            .client
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
