//! How the embedded store indexes its records a chunk at a time: the chunk's size, the kinds of
//! posting, the postings' mark, and whether the file's chunks are summarised. The store, its
//! open chunk and its searches all read these.
//!
//! Why chunks, and how a search uses them: `docs/audit-store.md`.

use crate::AuditError;
use rusqlite::Connection;

/// Records per chunk of postings. A search probes each chunk once (a million records: ~250
/// seeks) and reads fewer than this many unindexed records directly.
pub const POSTINGS_CHUNK: i64 = 4096;
/// `audit_postings.kind` of a citizen's posting (key: the CPR number).
pub(crate) const POSTING_CITIZEN: i64 = 0;
/// `audit_postings.kind` of a caller's posting (key: the caller's id).
pub(crate) const POSTING_CALLER: i64 = 1;

/// The postings' mark: the records above it are in no chunk yet (neither posted nor
/// summarised).
pub(crate) fn indexed_through(conn: &Connection) -> Result<i64, AuditError> {
    Ok(conn
        .prepare_cached("SELECT indexed_through FROM audit_postings_state")?
        .query_row([], |r| r.get(0))?)
}

/// Rowids `(lo, hi]`: the records of a chunk, or those not yet in one.
pub(crate) type RowWindow = (i64, i64);

/// `PRAGMA user_version` of a file whose indexed chunks are all summarised in `audit_chunks`
/// (and which has no index on `at`).
pub(crate) const SUMMARISED: i64 = 1;

/// Whether every indexed chunk of the file is summarised in `audit_chunks`: true once a
/// writable store has opened it. A file only ever read by older versions, or opened read-only,
/// may not be; its reads then take the old ways (by `(chain, seq)` and `at`, whose indexes
/// such a file still has).
pub(crate) fn summarised(conn: &Connection) -> Result<bool, AuditError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(version >= SUMMARISED)
}
