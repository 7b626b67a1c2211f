//! The embedded store: one SQLite file, WAL, `synchronous=FULL`, so a committed batch is on disk.

use crate::checkpoint::Checkpoint;
use crate::{AuditError, AuditRecord, AuditStore, StoredRecord};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_records (
    chain      TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    at         TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    cpr        TEXT,
    caller_id  TEXT    NOT NULL,
    department TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_cpr ON audit_records (cpr, at);
CREATE INDEX IF NOT EXISTS audit_records_caller ON audit_records (caller_id, at);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records (at);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain     TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    head_hash TEXT    NOT NULL,
    at        TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
) WITHOUT ROWID;
";

/// Whether a commit waits for the disk. `Off` exists only to measure what durability costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Full,
    Off,
}

#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    pub fn open(path: &Path, durability: Durability) -> Result<Self, AuditError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| AuditError::Store(e.to_string()))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Off => "OFF",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore { conn })
    }
}

impl SqliteStore {
    /// Opens an existing store for reading only (verification, search): nothing is created or
    /// changed.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(SqliteStore { conn })
    }
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Store(e.to_string())
    }
}

impl AuditStore for SqliteStore {
    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        let row = self
            .conn
            .query_row(
                "SELECT seq, hash FROM audit_records WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
                params![chain],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        Ok(row.map(|(seq, hash)| (seq.unsigned_abs(), hash)))
    }

    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        Ok(self.checkpoints(chain)?.into_iter().max_by_key(|c| c.seq))
    }

    fn append(
        &mut self,
        records: &[AuditRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit_records
                 (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for r in records {
                insert.execute(params![
                    r.chain,
                    i64::try_from(r.seq).map_err(|_| AuditError::Store("seq overflow".into()))?,
                    r.at,
                    r.request_id,
                    r.cpr,
                    r.actor.caller_id,
                    r.actor.department,
                    r.action.as_str(),
                    r.outcome.as_str(),
                    r.canonical_json(),
                    r.hash,
                ])?;
            }
            if let Some(c) = checkpoint {
                tx.execute(
                    "INSERT INTO audit_checkpoints (chain, seq, head_hash, at, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        c.chain,
                        i64::try_from(c.seq)
                            .map_err(|_| AuditError::Store("seq overflow".into()))?,
                        c.head_hash,
                        c.at,
                        c.signature
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn chains(&mut self) -> Result<Vec<String>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT chain FROM audit_records ORDER BY chain")?;
        let chains = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(chains)
    }

    fn records(
        &mut self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, request_id, cpr, caller_id, body, hash FROM audit_records
             WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(
                params![
                    chain,
                    i64::try_from(after_seq).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(StoredRecord {
                        seq: r.get::<_, i64>(0)?.unsigned_abs(),
                        request_id: r.get(1)?,
                        cpr: r.get(2)?,
                        caller_id: r.get(3)?,
                        body: r.get(4)?,
                        hash: r.get(5)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, head_hash, at, signature FROM audit_checkpoints WHERE chain = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![chain], |r| {
                Ok(Checkpoint {
                    chain: chain.to_owned(),
                    seq: r.get::<_, i64>(0)?.unsigned_abs(),
                    head_hash: r.get(1)?,
                    at: r.get(2)?,
                    signature: r.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
