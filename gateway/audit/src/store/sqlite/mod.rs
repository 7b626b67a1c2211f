//! The embedded store: one SQLite file in WAL mode; a commit is durable once its frames are in
//! the write-ahead log and the log is fsync'ed — by the store itself, not inside SQLite's commit.
//! Records are indexed by citizen (their keyed hash) and caller a chunk at a time
//! ([`POSTINGS_CHUNK`] records), not one by one; bodies and the registry's contents are sealed
//! ([`crate::atrest`]).
//!
//! Why, and how searches and chains read it: `docs/audit-store.md`.

pub mod bodies;
pub(crate) mod chunks;
mod open_chunk;
mod search;

use crate::atrest::AtRestKeys;
use crate::checkpoint::Checkpoint;
use crate::registry::model::{AccessRequest, ChangeOutcome, Consent, RegistryChange, RequestState};
use crate::registry::reader::{RegistryReader, RequestFilter};
use crate::registry::rows::{
    CONSENT_COLUMNS, ConsentRow, REQUEST_COLUMNS, RequestRow, decide_refusal, seal_reason,
    time_text,
};
use crate::store::sqlite::bodies::{
    Encoder, Schedule, SharedDictionaries, register_function, shared, stored_record, with_bodies,
};
use crate::store::sqlite::chunks::{
    POSTING_CALLER, POSTING_CITIZEN, RowWindow, SUMMARISED, indexed_through, summarised,
};
use crate::store::sqlite::open_chunk::OpenChunk;
use crate::store::sqlite::search::{sqlite_activity, sqlite_search};
use crate::{
    AuditError, AuditRecord, AuditStore, CHAINS, Commit, LogSync, STORED_COLUMNS, SealChange,
    SealedRecord, StoredRecord,
};
use rusqlite::{Connection, OptionalExtension, params};
use samblik_cpr::Cpr;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    body       BLOB    NOT NULL,
    hash       TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_at_rest (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    index_check TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_postings (
    chunk INTEGER NOT NULL,
    kind  INTEGER NOT NULL,
    key   TEXT    NOT NULL,
    at    TEXT    NOT NULL,
    rid   INTEGER NOT NULL,
    PRIMARY KEY (chunk, kind, key, at, rid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_dictionaries (
    id              INTEGER PRIMARY KEY,
    trained_through INTEGER NOT NULL,
    dict            BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_chunks (
    chunk     INTEGER NOT NULL,
    chain     TEXT    NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    min_at    TEXT    NOT NULL,
    max_at    TEXT    NOT NULL,
    PRIMARY KEY (chunk, chain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_postings_state (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_through  INTEGER NOT NULL
);
INSERT OR IGNORE INTO audit_postings_state (id, indexed_through) VALUES (1, 0);
CREATE INDEX IF NOT EXISTS audit_records_maintenance ON audit_records (chain, seq)
    WHERE action = 'audit-maintenance';
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain     TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    head_hash TEXT    NOT NULL,
    at        TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consents (
    id               TEXT    PRIMARY KEY,
    cpr              TEXT    NOT NULL,
    sealed           TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    from_departments TEXT    NOT NULL,
    recipients       TEXT    NOT NULL,
    max_tier         INTEGER NOT NULL,
    purposes         TEXT    NOT NULL,
    valid_from       TEXT    NOT NULL,
    valid_until      TEXT,
    recorded_by      TEXT    NOT NULL,
    recorded_at      TEXT    NOT NULL,
    withdrawn_at     TEXT,
    withdrawn_by     TEXT
);
CREATE INDEX IF NOT EXISTS consents_cpr ON consents (cpr, recorded_at);
CREATE TABLE IF NOT EXISTS access_requests (
    id                   TEXT    PRIMARY KEY,
    cpr                  TEXT    NOT NULL,
    sealed               TEXT    NOT NULL,
    requester_id         TEXT    NOT NULL,
    requester_name       TEXT    NOT NULL,
    requester_department TEXT    NOT NULL,
    source_id            TEXT    NOT NULL,
    owner_department     TEXT    NOT NULL,
    tier_wanted          INTEGER NOT NULL,
    purpose              TEXT    NOT NULL,
    filed_at             TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    decided_by           TEXT,
    decided_at           TEXT,
    decision_reason      TEXT,
    granted_tier         INTEGER,
    granted_until        TEXT
);
CREATE INDEX IF NOT EXISTS access_requests_cpr ON access_requests (cpr, filed_at);
CREATE INDEX IF NOT EXISTS access_requests_requester
    ON access_requests (cpr, requester_id, state);
CREATE INDEX IF NOT EXISTS access_requests_owner
    ON access_requests (owner_department, state, filed_at);
";

/// Both stores take it; it is here too, where the embedded store's callers have long found it.
pub use crate::Durability;
pub use crate::store::sqlite::chunks::POSTINGS_CHUNK;
pub use crate::store::sqlite::search::sqlite_search_plan;

#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// `None` for a read-only store.
    checkpointer: Option<Checkpointer>,
    /// The write-ahead log, to fsync; `None` unless the store is durable.
    wal: Option<Wal>,
    /// The rowid from which the next chunk of postings is due: a commit that reaches it indexes
    /// (and 0 makes the next commit check). Only a hint (another store on the same file may
    /// have indexed the chunk), checked against the file when reached.
    postings_due: i64,
    /// Compresses the bodies the store writes; `None` for a read-only store.
    encoder: Option<Encoder>,
    /// The dictionaries met reading bodies back.
    dictionaries: SharedDictionaries,
    /// What the next chunk's postings and summary need of the records this store wrote since
    /// the last whole chunk.
    open_chunk: OpenChunk,
    /// `PRAGMA data_version` after this store's last commit: another connection's commit
    /// changes it.
    data_version: Option<i64>,
    /// The keys its bodies and CPR columns are sealed and hashed with.
    keys: Arc<AtRestKeys>,
}

/// The store's own descriptor of the write-ahead log, and whether an fsync of it failed (on any
/// thread) since the store last recovered.
#[derive(Debug, Clone)]
struct Wal {
    file: Arc<File>,
    failed: Arc<AtomicBool>,
}

impl Wal {
    fn open(db: &Path) -> Result<Self, AuditError> {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        // Never created here: SQLite made it when the connection opened the store in WAL mode.
        let file = File::open(&path).map_err(|e| {
            AuditError::Store(format!(
                "cannot open the audit store's write-ahead log {}: {e}",
                Path::new(&path).display()
            ))
        })?;
        Ok(Wal {
            file: Arc::new(file),
            failed: Arc::new(AtomicBool::new(false)),
        })
    }

    fn sync(&self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(|e| {
            self.failed.store(true, Ordering::SeqCst);
            AuditError::Store(format!(
                "cannot fsync the audit store's write-ahead log: {e}"
            ))
        })
    }
}

impl LogSync for Wal {
    fn sync(&self) -> Result<(), AuditError> {
        Wal::sync(self)
    }
}

/// Bytes of records appended between two background checkpoints: about SQLite's own default
/// (1,000 pages of log), counting the indexes' pages as well as the records'.
const CHECKPOINT_AFTER_BYTES: usize = 1 << 20;
/// Log pages after which the writer checkpoints in its own commit after all, should the
/// background checkpointer fall behind (the log would otherwise grow without bound).
const FALLBACK_CHECKPOINT_PAGES: u32 = 16_384;

impl SqliteStore {
    /// Opens (creating if need be) the store at `path`, sealing with `keys`. A store written
    /// with another index key, or before the store sealed at all, is refused.
    pub fn open(
        path: &Path,
        durability: Durability,
        keys: Arc<AtRestKeys>,
    ) -> Result<Self, AuditError> {
        Self::open_with_schedule(path, durability, Schedule::default(), keys)
    }

    /// [`SqliteStore::open`], training body dictionaries on `schedule` (a test's smaller
    /// figures) instead of the default.
    #[doc(hidden)]
    pub fn open_with_schedule(
        path: &Path,
        durability: Durability,
        schedule: Schedule,
        keys: Arc<AtRestKeys>,
    ) -> Result<Self, AuditError> {
        let conn = open_writable(path, durability)?;
        claim_at_rest(&conn, &keys, true)?;
        let encoder = Encoder::open(&conn, path, schedule, &keys)?;
        conn.pragma_update(None, "wal_autocheckpoint", FALLBACK_CHECKPOINT_PAGES)?;
        let wal = match durability {
            Durability::Full => Some(Wal::open(path)?),
            Durability::Off => None,
        };
        let checkpointer = Checkpointer::start(open_writable(path, durability)?)?;
        let mut store = SqliteStore {
            conn,
            checkpointer: Some(checkpointer),
            wal,
            postings_due: 0,
            encoder: Some(encoder),
            dictionaries: shared(&keys),
            open_chunk: OpenChunk::default(),
            data_version: None,
            keys,
        };
        // Brings the postings up to date (all of them, for a file written before they
        // existed: every commit indexes what is due), summarises the chunks a file written
        // before the summaries existed had indexed, and drops the per-record indexes both
        // replace. (A file's `UNIQUE (chain, seq)` constraint cannot be dropped without
        // rewriting the table; an older file keeps it, and nothing relies on it.)
        store.write(true, |tx, _, _| {
            tx.execute_batch(
                "DROP INDEX IF EXISTS audit_records_cpr;
                 DROP INDEX IF EXISTS audit_records_caller;
                 DROP INDEX IF EXISTS audit_records_at;",
            )?;
            if !summarised(tx)? {
                let through = indexed_through(tx)?;
                tx.execute("DELETE FROM audit_chunks", [])?;
                summarise_chunks(tx, 0, through)?;
                tx.pragma_update(None, "user_version", SUMMARISED)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Commits `write` in one immediate transaction; with `durable`, returns once the commit is
    /// fsync'ed. First recovers from an earlier failed fsync, if there was one. `write` notes
    /// the records it inserts in the open chunk; a write that fails forgets the open chunk.
    fn write<T>(
        &mut self,
        durable: bool,
        write: impl FnOnce(&Connection, Option<&mut Encoder>, &mut OpenChunk) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let written = self.write_once(durable, write);
        if written.is_err() {
            self.open_chunk.forget();
        }
        written
    }

    fn write_once<T>(
        &mut self,
        durable: bool,
        write: impl FnOnce(&Connection, Option<&mut Encoder>, &mut OpenChunk) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        if self
            .wal
            .as_ref()
            .is_some_and(|wal| wal.failed.load(Ordering::SeqCst))
        {
            self.recover_sync()?;
        }
        let tx = Immediate::begin(&self.conn)?;
        // Under the write lock: has another connection committed since this store last did?
        let data_version = data_version(&self.conn)?;
        if self.data_version != Some(data_version) {
            self.open_chunk.forget();
        }
        let done = write(&self.conn, self.encoder.as_mut(), &mut self.open_chunk)?;
        let last = last_rowid(&self.conn)?;
        let due = if last >= self.postings_due {
            index_postings(&self.conn, last, &mut self.open_chunk)?
        } else {
            self.postings_due
        };
        let dictionary = match &mut self.encoder {
            Some(encoder) => encoder.step(&self.conn, last)?,
            None => None,
        };
        tx.commit()?;
        self.data_version = Some(data_version);
        self.postings_due = due;
        if let (Some(encoder), Some(dictionary)) = (&mut self.encoder, dictionary) {
            encoder.adopt(dictionary);
        }
        if durable && let Some(wal) = &self.wal {
            wal.sync()?;
        }
        Ok(done)
    }

    fn append_records(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
        durable: bool,
    ) -> Result<(), AuditError> {
        self.write(durable, |tx, encoder, open_chunk| {
            insert(tx, encoder, open_chunk, records, checkpoint)
        })?;
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.appended(records.iter().map(|r| r.body.len()).sum());
        }
        Ok(())
    }
}

/// Opens (creating if need be) the store's file, in WAL mode, with its schema.
fn open_writable(path: &Path, durability: Durability) -> Result<Connection, AuditError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| AuditError::Store(e.to_string()))?;
    }
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: a commit does not fsync the log; the store does (see `docs/audit-store.md`). SQLite
    // still fsyncs around its checkpoints and when it starts reusing the log.
    let sync = match durability {
        Durability::Full => "NORMAL",
        Durability::Off => "OFF",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // What a prune deletes (and what a registry change overwrites) is overwritten with zeros,
    // not left in the file's free space, where a CPR number would outlive its retention. The
    // records table is only ever appended to otherwise, so this costs the writer nothing.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // The writer alone keeps more statements than rusqlite's default of 16: a statement
    // evicted is parsed again at its next use.
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Copies the write-ahead log into the database file on its own connection and thread, when the
/// writer says enough was appended. A passive checkpoint never blocks the writer; the writer's
/// commits stay durable on their own (the log is fsync'ed in every commit).
#[derive(Debug)]
struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    appended: usize,
}

impl Checkpointer {
    fn start(conn: Connection) -> Result<Self, AuditError> {
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("samblik-audit-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "audit log checkpoint failed; retrying later");
                    }
                }
            })
            .map_err(|e| AuditError::Store(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
            appended: 0,
        })
    }

    /// Counts `bytes` appended and wakes the thread when a checkpoint is due.
    fn appended(&mut self, bytes: usize) {
        self.appended += bytes;
        if self.appended >= CHECKPOINT_AFTER_BYTES
            && let Some(wake) = &self.wake
        {
            // Full: a checkpoint is already due, and it will copy these pages too.
            let _ = wake.try_send(());
            self.appended = 0;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the audit checkpoint thread panicked");
        }
    }
}

impl SqliteStore {
    /// Chunks whose postings and summary this store wrote from its open chunk rather than from
    /// the table, since it opened.
    #[doc(hidden)]
    pub fn chunks_indexed_from_memory(&self) -> u64 {
        self.open_chunk.indexed()
    }

    /// Opens an existing store for reading only (verification, search): nothing is created or
    /// changed.
    pub fn open_read_only(path: &Path, keys: Arc<AtRestKeys>) -> Result<Self, AuditError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        claim_at_rest(&conn, &keys, false)?;
        Ok(SqliteStore {
            conn,
            checkpointer: None,
            wal: None,
            postings_due: i64::MAX,
            encoder: None,
            dictionaries: shared(&keys),
            open_chunk: OpenChunk::default(),
            data_version: None,
            keys,
        })
    }
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Store(e.to_string())
    }
}

/// Holds the file to `keys`: a store remembers its index key's check value from its first
/// open, and refuses any other key (its searches by CPR would find nothing, and new rows would
/// be hashed apart from old ones). A file that holds records or registry rows but no check
/// value was written before the store sealed them, with every CPR in clear: it is refused, and
/// must be moved aside (see `docs/audit-store.md`). With `claim`, an empty store takes the key.
fn claim_at_rest(conn: &Connection, keys: &AtRestKeys, claim: bool) -> Result<(), AuditError> {
    let has = |table: &str| -> Result<bool, AuditError> {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
            [table],
            |r| r.get(0),
        )?;
        Ok(exists
            && conn.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get(0)
            })?)
    };
    let stored: Option<String> = if has("audit_at_rest")? {
        conn.query_row(
            "SELECT index_check FROM audit_at_rest WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?
    } else {
        None
    };
    match stored {
        Some(check) if check == keys.check_value() => Ok(()),
        Some(_) => Err(AuditError::DataKey(
            "the audit data key file's index key is not the one this audit store was written              with: give the gateway that key file (restore it from backup); a new index key is              never taken by a store in use"
                .into(),
        )),
        None if has("audit_records")? || has("consents")? || has("access_requests")? => {
            Err(AuditError::Store(
                "this audit store was written before CPR numbers were sealed at rest and holds                  them in clear: keep it aside (read it with an earlier release) and start a new                  store; see docs/audit-store.md"
                    .into(),
            ))
        }
        None if claim => {
            conn.execute(
                "INSERT INTO audit_at_rest (id, index_check) VALUES (1, ?1)",
                [keys.check_value()],
            )?;
            Ok(())
        }
        None => Ok(()),
    }
}

fn insert(
    conn: &Connection,
    encoder: Option<&mut Encoder>,
    open_chunk: &mut OpenChunk,
    records: &[SealedRecord],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), AuditError> {
    let encoder =
        encoder.ok_or_else(|| AuditError::Store("a read-only audit store cannot write".into()))?;
    if let Some(first) = records.first() {
        follows_head(conn, &first.chain, first.seq)?;
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO audit_records
         (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut first = None;
    let cprs: Vec<Option<String>> = records
        .iter()
        .map(|r| r.indexed.cpr.as_ref().map(|c| encoder.keys().index(c)))
        .collect();
    for (r, cpr) in records.iter().zip(&cprs) {
        let body = encoder.encode(&r.body)?;
        insert.execute(params![
            r.chain,
            i64::try_from(r.seq).map_err(|_| AuditError::Store("seq overflow".into()))?,
            r.at,
            r.indexed.request_id,
            cpr,
            r.indexed.caller_id,
            r.indexed.department,
            r.indexed.action.as_str(),
            r.indexed.outcome.as_str(),
            body,
            r.hash,
        ])?;
        first.get_or_insert_with(|| conn.last_insert_rowid());
    }
    if let Some(first) = first {
        open_chunk.note(first, conn.last_insert_rowid(), records, &cprs);
    }
    if let Some(c) = checkpoint {
        conn.prepare_cached(
            "INSERT INTO audit_checkpoints (chain, seq, head_hash, at, signature)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            c.chain,
            i64::try_from(c.seq).map_err(|_| AuditError::Store("seq overflow".into()))?,
            c.head_hash,
            c.at,
            c.signature
        ])?;
    }
    Ok(())
}

/// Refuses to write record `seq` of `chain` unless it comes after the chain's last row: a
/// second writer on the chain (another process given the same chain, or an operator's prune of
/// a live gateway's chain) read a head that has since moved, and its records would fork the
/// chain. (It may come more than one after: a writer that found signed records missing goes
/// on after them.) Inside the writer's immediate transaction, so no other writer can slip in
/// between.
fn follows_head(conn: &Connection, chain: &str, seq: u64) -> Result<(), AuditError> {
    // From the table's last row back to the chain's: almost always the first (a chain's first
    // record in a file full of others' reads them all, once). No bound parameter: SQLite
    // re-prepared the statement with one, `WHERE chain = ?1`, at every execution, 14 % of the
    // writer's thread when records came one at a time.
    let mut newest_first =
        conn.prepare_cached("SELECT chain, seq FROM audit_records ORDER BY rowid DESC")?;
    let mut rows = newest_first.query([])?;
    let mut last = None;
    while let Some(row) = rows.next()? {
        if row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)? == chain {
            last = Some(row.get::<_, i64>(1)?);
            break;
        }
    }
    match last {
        // A chain pruned to nothing has no row to follow; its prune record comes next.
        None => Ok(()),
        Some(last) if u64::try_from(last).is_ok_and(|last| last < seq) => Ok(()),
        Some(last) => Err(AuditError::Store(format!(
            "chain {chain} was written by another writer (its last record is {last}, this \
             writer's next is {seq}): nothing was written; run one gateway per chain"
        ))),
    }
}

/// Changes when another connection commits to the file (never for this connection's commits).
fn data_version(conn: &Connection) -> Result<i64, AuditError> {
    Ok(conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?)
}

fn last_rowid(conn: &Connection) -> Result<i64, AuditError> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(max(rowid), 0) FROM audit_records")?
        .query_row([], |r| r.get(0))?)
}

/// The writer's transaction: immediate, so the write lock is taken before anything is read and
/// writers on the same file (another process) are serialised. Begun and committed through
/// statements prepared once (parsing them for every batch cost ~2 % of the writer's thread);
/// dropped before its commit, it rolls back.
struct Immediate<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Immediate<'c> {
    fn begin(conn: &'c Connection) -> Result<Self, AuditError> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Immediate { conn, open: true })
    }

    fn commit(mut self) -> Result<(), AuditError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        // A commit that failed (a full disk, an I/O error) can leave the transaction open.
        if self.open
            && !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "cannot roll back a failed audit transaction");
        }
    }
}

/// Writes the postings of every whole chunk of records (up to rowid `last`, the table's last)
/// not yet indexed, inside the caller's transaction; returns the rowid at which the next chunk
/// will be whole.
fn index_postings(
    conn: &Connection,
    last: i64,
    open_chunk: &mut OpenChunk,
) -> Result<i64, AuditError> {
    let mut through = indexed_through(conn)?;
    let indexed = through;
    if last < through {
        // Rowids started again (a prune emptied the table): every posting is stale.
        conn.execute("DELETE FROM audit_postings", [])?;
        conn.execute("DELETE FROM audit_chunks", [])?;
        open_chunk.forget();
        through = 0;
    }
    let mut chunk = conn.prepare_cached(
        "INSERT INTO audit_postings (chunk, kind, key, at, rid)
         SELECT ?1, ?4, cpr, at, rowid FROM audit_records
          WHERE rowid > ?2 AND rowid <= ?3 AND cpr IS NOT NULL
         UNION ALL
         SELECT ?1, ?5, caller_id, at, rowid FROM audit_records
          WHERE rowid > ?2 AND rowid <= ?3
         ORDER BY 2, 3, 4, 5",
    )?;
    while last - through >= POSTINGS_CHUNK {
        if open_chunk.index(conn, through)? {
            through += POSTINGS_CHUNK;
            continue;
        }
        chunk.execute(params![
            through / POSTINGS_CHUNK,
            through,
            through + POSTINGS_CHUNK,
            POSTING_CITIZEN,
            POSTING_CALLER
        ])?;
        summarise_chunks(conn, through, through + POSTINGS_CHUNK)?;
        through += POSTINGS_CHUNK;
    }
    if through != indexed {
        conn.execute(
            "UPDATE audit_postings_state SET indexed_through = ?1",
            params![through],
        )?;
    }
    Ok(through + POSTINGS_CHUNK)
}

/// The rowid after which `chain`'s first record with a seq above `after_seq` lies: the start of
/// the first summarised chunk holding one, else of the records not yet summarised.
fn walk_start(conn: &Connection, chain: &str, after_seq: i64) -> Result<i64, AuditError> {
    Ok(conn
        .prepare_cached(
            "SELECT COALESCE(
                 (SELECT min(chunk) FROM audit_chunks WHERE chain = ?1 AND last_seq > ?2) * ?3,
                 (SELECT indexed_through FROM audit_postings_state))",
        )?
        .query_row(params![chain, after_seq, POSTINGS_CHUNK], |r| r.get(0))?)
}

/// The rowids `(lo, hi]` that hold `chain`'s record `seq`, if it is anywhere: its summarised
/// chunk, or the records not yet summarised.
fn seq_window(conn: &Connection, chain: &str, seq: i64) -> Result<RowWindow, AuditError> {
    let chunk: Option<i64> = conn
        .prepare_cached(
            "SELECT chunk FROM audit_chunks
              WHERE chain = ?1 AND first_seq <= ?2 AND last_seq >= ?2
              ORDER BY chunk LIMIT 1",
        )?
        .query_row(params![chain, seq], |r| r.get(0))
        .optional()?;
    match chunk {
        Some(chunk) => Ok((chunk * POSTINGS_CHUNK, (chunk + 1) * POSTINGS_CHUNK)),
        None => Ok((walk_start(conn, chain, i64::MAX)?, i64::MAX)),
    }
}

/// Writes the summary of each whole chunk of records in rowids `(from, to]`: per chain in the
/// chunk, its first and last seq and its earliest and latest time. They say where a chain's
/// records are (walking a chain by rowid starts at the chunk that holds the seq wanted) and
/// which chunks a time range can touch; they are hints, and every read still checks the
/// records' own columns.
fn summarise_chunks(conn: &Connection, from: i64, to: i64) -> Result<(), AuditError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO audit_chunks (chunk, chain, first_seq, last_seq, min_at, max_at)
         SELECT (rowid - 1) / ?3, chain, min(seq), max(seq), min(at), max(at)
           FROM audit_records WHERE rowid > ?1 AND rowid <= ?2
          GROUP BY 1, 2",
    )?
    .execute(params![from, to, POSTINGS_CHUNK])?;
    Ok(())
}

/// Drops the postings of records a prune deleted (rowids `first..=last`): a chunk left without
/// records goes whole (a range of its key); a chunk partly pruned (another chain's records
/// share it) loses the postings whose record is gone.
fn drop_pruned_postings(conn: &Connection, first: i64, last: i64) -> Result<(), AuditError> {
    let mut any_left = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM audit_records WHERE rowid > ?1 AND rowid <= ?2)",
    )?;
    let mut drop_chunk = conn.prepare_cached("DELETE FROM audit_postings WHERE chunk = ?1")?;
    let mut drop_gone = conn.prepare_cached(
        "DELETE FROM audit_postings
          WHERE chunk = ?1
            AND NOT EXISTS (SELECT 1 FROM audit_records r WHERE r.rowid = audit_postings.rid)",
    )?;
    // The chunk of rowid r is (r - 1) / POSTINGS_CHUNK.
    for chunk in (first - 1) / POSTINGS_CHUNK..=(last - 1) / POSTINGS_CHUNK {
        let (lo, hi) = (chunk * POSTINGS_CHUNK, (chunk + 1) * POSTINGS_CHUNK);
        if any_left.query_row(params![lo, hi], |r| r.get::<_, bool>(0))? {
            drop_gone.execute(params![chunk])?;
        } else {
            drop_chunk.execute(params![chunk])?;
        }
        // Summarised afresh from what is left, if it was summarised at all (a chunk above
        // the postings' mark is not yet).
        let summarised = conn
            .prepare_cached("DELETE FROM audit_chunks WHERE chunk = ?1")?
            .execute(params![chunk])?;
        if summarised > 0 {
            summarise_chunks(conn, lo, hi)?;
        }
    }
    Ok(())
}

/// Applies a registry change inside the caller's transaction, sealing with `keys`.
fn apply(
    conn: &Connection,
    keys: &AtRestKeys,
    change: &RegistryChange,
) -> Result<ChangeOutcome, AuditError> {
    let changed = |rows: usize| {
        if rows == 1 {
            ChangeOutcome::Applied
        } else {
            ChangeOutcome::AlreadyDone
        }
    };
    Ok(match change {
        RegistryChange::RecordConsent(consent) => {
            let c = ConsentRow::from_consent(consent, keys)?;
            changed(conn.execute(
                &format!(
                    "INSERT INTO consents ({CONSENT_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (id) DO NOTHING"
                ),
                params![
                    c.id,
                    c.cpr,
                    c.sealed,
                    c.kind,
                    c.from_departments,
                    c.recipients,
                    c.max_tier,
                    c.purposes,
                    c.valid_from,
                    c.valid_until,
                    c.recorded_by,
                    c.recorded_at,
                    c.withdrawn_at,
                    c.withdrawn_by
                ],
            )?)
        }
        RegistryChange::WithdrawConsent { id, cpr, by, at } => {
            let rows = conn.execute(
                "UPDATE consents SET withdrawn_at = ?3, withdrawn_by = ?4
                 WHERE id = ?1 AND cpr = ?2 AND withdrawn_at IS NULL",
                params![id, keys.index(cpr), time_text(*at), by],
            )?;
            if rows == 1 {
                ChangeOutcome::Applied
            } else {
                let exists = conn
                    .query_row(
                        "SELECT 1 FROM consents WHERE id = ?1 AND cpr = ?2",
                        params![id, keys.index(cpr)],
                        |_| Ok(()),
                    )
                    .optional()?;
                match exists {
                    Some(()) => ChangeOutcome::AlreadyDone,
                    None => ChangeOutcome::NotFound,
                }
            }
        }
        RegistryChange::FileRequest(request) => {
            let r = RequestRow::from_request(request, keys)?;
            changed(conn.execute(
                &format!(
                    "INSERT INTO access_requests ({REQUEST_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                             ?16, ?17)
                     ON CONFLICT (id) DO NOTHING"
                ),
                params![
                    r.id,
                    r.cpr,
                    r.sealed,
                    r.requester_id,
                    r.requester_name,
                    r.requester_department,
                    r.source_id,
                    r.owner_department,
                    r.tier_wanted,
                    r.purpose,
                    r.filed_at,
                    r.state,
                    r.decided_by,
                    r.decided_at,
                    r.decision_reason,
                    r.granted_tier,
                    r.granted_until
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
            let rows = conn.execute(
                "UPDATE access_requests
                 SET state = ?3, decided_by = ?4, decided_at = ?5, decision_reason = ?6,
                     granted_tier = ?7, granted_until = ?8
                 WHERE id = ?1 AND owner_department = ?2 AND state = 'pending'",
                params![
                    id,
                    by_department,
                    state.as_str(),
                    by,
                    time_text(*at),
                    seal_reason(keys, Some(reason))?,
                    tier,
                    until
                ],
            )?;
            if rows == 1 {
                ChangeOutcome::Applied
            } else {
                let found = conn
                    .query_row(
                        "SELECT state, owner_department FROM access_requests WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                decide_refusal(found, by_department)
            }
        }
    })
}

impl AuditStore for SqliteStore {
    fn cpr_index(&self, cpr: &Cpr) -> String {
        self.keys.index(cpr)
    }

    fn head(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        // A chain's records are appended in order, so its head is its last row.
        let sql = if summarised(&self.conn)? {
            "SELECT seq, hash FROM audit_records NOT INDEXED WHERE chain = ?1
              ORDER BY rowid DESC LIMIT 1"
        } else {
            "SELECT seq, hash FROM audit_records WHERE chain = ?1 ORDER BY seq DESC LIMIT 1"
        };
        let row = self
            .conn
            .prepare_cached(sql)?
            .query_row(params![chain], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        Ok(row.map(|(seq, hash)| (seq.unsigned_abs(), hash)))
    }

    fn last_checkpoint(&mut self, chain: &str) -> Result<Option<Checkpoint>, AuditError> {
        Ok(self.checkpoints(chain)?.into_iter().max_by_key(|c| c.seq))
    }

    fn append(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditError> {
        self.append_records(records, checkpoint, true)
    }

    fn append_unsynced(
        &mut self,
        records: &[SealedRecord],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Commit, AuditError> {
        self.append_records(records, checkpoint, false)?;
        Ok(Commit::Deferred)
    }

    fn deferred_sync(&mut self) -> Result<Option<Box<dyn LogSync>>, AuditError> {
        Ok(self
            .wal
            .clone()
            .map(|wal| Box::new(wal) as Box<dyn LogSync>))
    }

    /// Copies every committed page into the database file and fsyncs it (SQLite does, in a
    /// checkpoint), then empties the log: the log writes whose fsync failed are no longer
    /// needed, since the database file now holds what they held, read back through SQLite.
    /// Fails while a reader still holds part of the log, and is retried at the next write.
    fn recover_sync(&mut self) -> Result<(), AuditError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let (busy, _, _): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        if busy != 0 {
            return Err(AuditError::Store(
                "recovering after a failed fsync: the write-ahead log is still in use; retrying \
                 at the next write"
                    .into(),
            ));
        }
        wal.failed.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn apply_change(
        &mut self,
        change: &RegistryChange,
        seal: &mut SealChange<'_>,
    ) -> Result<ChangeOutcome, AuditError> {
        // In one immediate transaction, so writers on the same file (other processes) are
        // serialised and a request is decided once.
        let keys = Arc::clone(&self.keys);
        self.write(true, |tx, encoder, open_chunk| {
            let outcome = apply(tx, &keys, change)?;
            let (record, checkpoint) = seal(outcome)?;
            insert(
                tx,
                encoder,
                open_chunk,
                std::slice::from_ref(&record),
                checkpoint.as_ref(),
            )?;
            Ok(outcome)
        })
    }

    fn maintenance_records(&mut self, chain: &str) -> Result<Vec<StoredRecord>, AuditError> {
        read_records(
            &self.conn,
            &self.dictionaries,
            &format!(
                "SELECT {STORED_COLUMNS} FROM audit_records
                 WHERE chain = ?1 AND action = 'audit-maintenance' ORDER BY seq"
            ),
            params![chain],
        )
    }

    fn prune_anchor(
        &mut self,
        chain: &str,
        cutoff: &str,
        max_seq: u64,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let max_seq = i64::try_from(max_seq).unwrap_or(i64::MAX);
        let conn = &self.conn;
        // The chain's first record at or after the cutoff, walking it from the first chunk
        // that reaches the cutoff: a prune must stop before it.
        let start: i64 = conn
            .prepare_cached(
                "SELECT COALESCE(
                     (SELECT min(chunk) FROM audit_chunks WHERE chain = ?1 AND max_at >= ?2) * ?3,
                     (SELECT indexed_through FROM audit_postings_state))",
            )?
            .query_row(params![chain, cutoff, POSTINGS_CHUNK], |r| r.get(0))?;
        let kept: i64 = conn
            .prepare_cached(
                "SELECT COALESCE((SELECT seq FROM audit_records NOT INDEXED
                                   WHERE rowid > ?3 AND chain = ?1 AND at >= ?2
                                   ORDER BY rowid LIMIT 1), 9223372036854775807)",
            )?
            .query_row(params![chain, cutoff, start], |r| r.get(0))?;
        // The latest checkpoint before it whose record is still there.
        let candidates: Vec<Checkpoint> = self
            .checkpoints(chain)?
            .into_iter()
            .filter(|c| i64::try_from(c.seq).is_ok_and(|seq| seq <= max_seq && seq < kept))
            .collect();
        for checkpoint in candidates.into_iter().rev() {
            let seq = i64::try_from(checkpoint.seq).unwrap_or(i64::MAX);
            let (lo, hi) = seq_window(&self.conn, chain, seq)?;
            let present: bool = self
                .conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM audit_records NOT INDEXED
                                     WHERE rowid > ?3 AND rowid <= ?4 AND chain = ?1 AND seq = ?2)",
                )?
                .query_row(params![chain, seq, lo, hi], |r| r.get(0))?;
            if present {
                return Ok(Some(checkpoint));
            }
        }
        Ok(None)
    }

    fn prune(
        &mut self,
        chain: &str,
        through_seq: u64,
        expected: u64,
        record: &SealedRecord,
        checkpoint: &Checkpoint,
    ) -> Result<u64, AuditError> {
        let through =
            i64::try_from(through_seq).map_err(|_| AuditError::Store("seq overflow".into()))?;
        // The commit indexes afresh: rowids start again if the prune empties the table. What
        // the open chunk noted may be deleted.
        self.postings_due = 0;
        self.open_chunk.forget();
        self.write(true, |tx, encoder, open_chunk| {
            // The chain's front, up to the chunk that holds its record `through`: a prune
            // reads what it deletes and the chunks it shares with other chains, no more.
            let (_, bound) = seq_window(tx, chain, through)?;
            let (first, last): (Option<i64>, Option<i64>) = tx.query_row(
                "SELECT min(rowid), max(rowid) FROM audit_records NOT INDEXED
                  WHERE rowid <= ?3 AND chain = ?1 AND seq <= ?2",
                params![chain, through, bound],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let deleted = tx.execute(
                "DELETE FROM audit_records NOT INDEXED WHERE rowid <= ?3 AND chain = ?1 AND seq <= ?2",
                params![chain, through, bound],
            )?;
            let deleted = u64::try_from(deleted).unwrap_or(u64::MAX);
            if deleted != expected {
                // Dropping the transaction rolls the delete back.
                return Err(AuditError::Store(format!(
                    "prune of chain {chain} through {through_seq} would delete {deleted} \
                     records, not the {expected} verified; nothing was pruned"
                )));
            }
            tx.execute(
                "DELETE FROM audit_checkpoints WHERE chain = ?1 AND seq < ?2",
                params![chain, through],
            )?;
            insert(
                tx,
                encoder,
                open_chunk,
                std::slice::from_ref(record),
                Some(checkpoint),
            )?;
            // What the prune deleted may be in the open chunk: the next chunk is indexed from
            // the table.
            open_chunk.forget();
            if let (Some(first), Some(last)) = (first, last) {
                drop_pruned_postings(tx, first, last)?;
            }
            Ok(deleted)
        })
    }

    fn check_integrity(&mut self) -> Result<(), AuditError> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check(5)")?;
        let problems = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        if problems.iter().all(|p| p == "ok") {
            return Ok(());
        }
        Err(AuditError::Store(format!(
            "the audit database is corrupt (PRAGMA quick_check: {}); keep the file for \
             investigation and restore the store from a backup",
            problems.join("; ")
        )))
    }

    fn chains(&mut self) -> Result<Vec<String>, AuditError> {
        // Read at every start-up (the signing key must match every chain's checkpoints): from
        // the chunks' summaries and the unindexed tail, not from every record.
        let sql = if summarised(&self.conn)? {
            "SELECT chain FROM audit_chunks
             UNION SELECT chain FROM audit_records
                    WHERE rowid > (SELECT indexed_through FROM audit_postings_state)
             UNION SELECT chain FROM audit_checkpoints ORDER BY chain"
        } else {
            CHAINS
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
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
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if !summarised(&self.conn)? {
            return read_records(
                &self.conn,
                &self.dictionaries,
                &format!(
                    "SELECT {STORED_COLUMNS} FROM audit_records
                     WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ),
                params![chain, after, limit],
            );
        }
        // In the order the rows were written, which for a chain is its order: a record moved
        // or renumbered is then met where it lies, and verification names it.
        let start = walk_start(&self.conn, chain, after)?;
        read_records(
            &self.conn,
            &self.dictionaries,
            &format!(
                "SELECT {STORED_COLUMNS} FROM audit_records NOT INDEXED
                 WHERE rowid > ?4 AND chain = ?1 AND seq > ?2 ORDER BY rowid LIMIT ?3"
            ),
            params![chain, after, limit, start],
        )
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

/// Reads records ([`STORED_COLUMNS`]) with a cached statement.
fn read_records(
    conn: &Connection,
    dictionaries: &SharedDictionaries,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<StoredRecord>, AuditError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(args, stored_record)?
        .collect::<Result<Vec<_>, _>>()?;
    with_bodies(dictionaries, conn, rows)
}

/// Reads the registry on a connection of its own (WAL lets it read while the writer writes).
#[derive(Debug)]
pub struct SqliteReader {
    conn: Connection,
    /// The body dictionaries met, shared with the connection's `samblik_body` function.
    dictionaries: SharedDictionaries,
    keys: Arc<AtRestKeys>,
}

impl SqliteReader {
    /// Opens the store at `path` for reading the registry. With `create`, the file and schema are
    /// created if missing (as the writer would), so a registry can be opened first.
    pub fn open(path: &Path, create: bool, keys: Arc<AtRestKeys>) -> Result<Self, AuditError> {
        let conn = if create {
            let conn = open_writable(path, Durability::Full)?;
            claim_at_rest(&conn, &keys, true)?;
            conn
        } else {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn
        };
        claim_at_rest(&conn, &keys, false)?;
        conn.pragma_update(None, "query_only", true)?;
        let dictionaries = shared(&keys);
        register_function(&conn, &dictionaries)?;
        Ok(SqliteReader {
            conn,
            dictionaries,
            keys,
        })
    }

    fn consents(
        &self,
        condition: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Consent>, AuditError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consents WHERE {condition}"
        ))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(ConsentRow {
                    id: r.get(0)?,
                    cpr: r.get(1)?,
                    sealed: r.get(2)?,
                    kind: r.get(3)?,
                    from_departments: r.get(4)?,
                    recipients: r.get(5)?,
                    max_tier: r.get(6)?,
                    purposes: r.get(7)?,
                    valid_from: r.get(8)?,
                    valid_until: r.get(9)?,
                    recorded_by: r.get(10)?,
                    recorded_at: r.get(11)?,
                    withdrawn_at: r.get(12)?,
                    withdrawn_by: r.get(13)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|row| row.into_consent(&self.keys))
            .collect()
    }

    fn access_requests(
        &self,
        condition: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<AccessRequest>, AuditError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE {condition}"
        ))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(RequestRow {
                    id: r.get(0)?,
                    cpr: r.get(1)?,
                    sealed: r.get(2)?,
                    requester_id: r.get(3)?,
                    requester_name: r.get(4)?,
                    requester_department: r.get(5)?,
                    source_id: r.get(6)?,
                    owner_department: r.get(7)?,
                    tier_wanted: r.get(8)?,
                    purpose: r.get(9)?,
                    filed_at: r.get(10)?,
                    state: r.get(11)?,
                    decided_by: r.get(12)?,
                    decided_at: r.get(13)?,
                    decision_reason: r.get(14)?,
                    granted_tier: r.get(15)?,
                    granted_until: r.get(16)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|row| row.into_request(&self.keys))
            .collect()
    }
}

impl SqliteReader {
    /// Every consent, newest first per citizen (for the in-memory mirror).
    pub fn all_consents(&mut self) -> Result<Vec<Consent>, AuditError> {
        self.consents("1 = 1 ORDER BY cpr, recorded_at DESC, id DESC", &[])
    }

    /// Every approved request (for the in-memory mirror), as `grants_for` orders them.
    pub fn all_grants(&mut self) -> Result<Vec<AccessRequest>, AuditError> {
        self.access_requests(
            "state = 'approved' ORDER BY cpr, requester_id, decided_at DESC, id DESC",
            &[],
        )
    }
}

impl RegistryReader for SqliteReader {
    fn consents_for(&mut self, cpr: &Cpr) -> Result<Vec<Consent>, AuditError> {
        self.consents(
            "cpr = ?1 ORDER BY recorded_at DESC, id DESC",
            &[&self.keys.index(cpr)],
        )
    }

    fn consent(&mut self, id: &str) -> Result<Option<Consent>, AuditError> {
        Ok(self.consents("id = ?1", &[&id])?.pop())
    }

    fn grants_for(&mut self, cpr: &Cpr, caller_id: &str) -> Result<Vec<AccessRequest>, AuditError> {
        self.access_requests(
            "cpr = ?1 AND requester_id = ?2 AND state = 'approved'
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
        let mut conditions = vec!["1 = 1".to_owned()];
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
        let filters = [
            ("owner_department", filter.owner_department.as_deref()),
            ("requester_id", filter.requester_id.as_deref()),
            ("state", state),
            ("cpr", cpr.as_deref()),
        ];
        for (column, value) in &filters {
            if let Some(value) = value {
                args.push(value);
                conditions.push(format!("{column} = ?{}", args.len()));
            }
        }
        args.push(&limit);
        let condition = format!(
            "{} ORDER BY filed_at DESC, id DESC LIMIT ?{}",
            conditions.join(" AND "),
            args.len()
        );
        self.access_requests(&condition, &args)
    }

    fn request(&mut self, id: &str) -> Result<Option<AccessRequest>, AuditError> {
        Ok(self.access_requests("id = ?1", &[&id])?.pop())
    }

    fn search(
        &mut self,
        query: &crate::search::AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        sqlite_search(&self.conn, &self.dictionaries, &self.keys, query, limit)
    }

    fn activity(
        &mut self,
        from: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        callers: &[String],
    ) -> Result<Vec<crate::search::Activity>, AuditError> {
        sqlite_activity(&self.conn, &self.dictionaries, from, until, callers)
    }
}
