//! The embedded store's open chunk: what its postings and summary need of each record this
//! store wrote since the last whole chunk, kept by the writer as it inserts them, so a completed
//! chunk is indexed without reading it back from the table (see [`crate::store::sqlite`]).
//!
//! When it is used and when it is forgotten: `docs/audit-store.md`.

use crate::AuditError;
use crate::SealedRecord;
use crate::store::sqlite::chunks::{POSTING_CALLER, POSTING_CITIZEN, POSTINGS_CHUNK};
use rusqlite::{Connection, params};
use std::fmt::Write as _;
use std::sync::LazyLock;

/// The columns of one record that its postings and its chunk's summary need.
#[derive(Debug)]
struct Noted {
    chain: String,
    seq: i64,
    at: String,
    /// The citizen's keyed hash, as the `cpr` column holds it.
    cpr: Option<String>,
    caller_id: String,
}

/// Postings written by one statement.
const ROWS_PER_INSERT: usize = 256;

static INSERT_POSTINGS: LazyLock<String> = LazyLock::new(|| insert_postings(ROWS_PER_INSERT));

/// `INSERT` of `rows` postings of one chunk: the chunk is `?1`, each row's kind, key, time and
/// rowid the next four parameters.
fn insert_postings(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO audit_postings (chunk, kind, key, at, rid) VALUES ");
    for row in 0..rows {
        let p = 2 + 4 * row;
        if row > 0 {
            sql.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(sql, "(?1, ?{p}, ?{}, ?{}, ?{})", p + 1, p + 2, p + 3);
    }
    sql
}

/// Runs an [`insert_postings`] statement for `rows` of `chunk`.
fn post(
    insert: &mut rusqlite::Statement<'_>,
    chunk: i64,
    rows: &[(i64, &str, &str, i64)],
) -> Result<(), AuditError> {
    insert.raw_bind_parameter(1, chunk)?;
    for ((kind, key, at, rid), p) in rows.iter().zip((2..).step_by(4)) {
        insert.raw_bind_parameter(p, kind)?;
        insert.raw_bind_parameter(p + 1, key)?;
        insert.raw_bind_parameter(p + 2, at)?;
        insert.raw_bind_parameter(p + 3, rid)?;
    }
    insert.raw_execute()?;
    Ok(())
}

#[derive(Debug, Default)]
pub(crate) struct OpenChunk {
    /// The chunk boundary (a rowid, a multiple of [`POSTINGS_CHUNK`]) after which `noted` holds
    /// every record, in rowid order; `None` while nothing is known.
    from: Option<i64>,
    noted: Vec<Noted>,
    /// Chunks indexed from memory since the store opened (for tests and diagnostics).
    indexed: u64,
}

impl OpenChunk {
    /// Forgets what it holds: the next chunk is indexed from the table, and noting starts again
    /// at the next chunk boundary.
    pub(crate) fn forget(&mut self) {
        self.from = None;
        self.noted.clear();
    }

    /// Notes `records`, just inserted in this order with the rowids `first..=last`, inside the
    /// transaction that inserted them, with their `cprs` as the `cpr` column holds them.
    pub(crate) fn note(
        &mut self,
        first: i64,
        last: i64,
        records: &[SealedRecord],
        cprs: &[Option<String>],
    ) {
        let consecutive = usize::try_from(last - first + 1).is_ok_and(|n| n == records.len())
            && cprs.len() == records.len();
        if !consecutive {
            self.forget();
            return;
        }
        let next = self
            .from
            .and_then(|from| Some(from + 1 + i64::try_from(self.noted.len()).ok()?));
        let records = if next == Some(first) {
            records
        } else {
            // Start afresh at the first chunk boundary among these records, if there is one.
            self.forget();
            let before_boundary = (POSTINGS_CHUNK - (first - 1) % POSTINGS_CHUNK) % POSTINGS_CHUNK;
            let Some(rest) = usize::try_from(before_boundary)
                .ok()
                .and_then(|skip| records.get(skip..))
                .filter(|rest| !rest.is_empty())
            else {
                return;
            };
            self.from = Some(first - 1 + before_boundary);
            rest
        };
        let skipped = cprs.len() - records.len();
        self.noted
            .extend(records.iter().zip(&cprs[skipped..]).map(|(r, cpr)| Noted {
                chain: r.chain.clone(),
                seq: i64::try_from(r.seq).unwrap_or(i64::MAX),
                at: r.at.clone(),
                cpr: cpr.clone(),
                caller_id: r.indexed.caller_id.clone(),
            }));
    }

    /// Writes the postings and the summary of the chunk of rowids `(through, through +
    /// POSTINGS_CHUNK]` from what was noted, inside the caller's transaction, if it holds that
    /// chunk whole; returns whether it did (otherwise the caller indexes it from the table).
    pub(crate) fn index(&mut self, conn: &Connection, through: i64) -> Result<bool, AuditError> {
        let whole = usize::try_from(POSTINGS_CHUNK).unwrap_or(usize::MAX);
        if self.from != Some(through) || self.noted.len() < whole {
            if self.from.is_some_and(|from| from < through) {
                // The chunk was indexed by another store on the file: what is noted is stale.
                self.forget();
            }
            return Ok(false);
        }
        let chunk = through / POSTINGS_CHUNK;
        let records = &self.noted[..whole];

        let mut postings: Vec<(i64, &str, &str, i64)> = Vec::with_capacity(2 * whole);
        for (rid, r) in (through + 1..).zip(records) {
            if let Some(cpr) = &r.cpr {
                postings.push((POSTING_CITIZEN, cpr, &r.at, rid));
            }
            postings.push((POSTING_CALLER, &r.caller_id, &r.at, rid));
        }
        // In the table's key order (`BINARY` collation compares bytes, as `str` does), many rows
        // to a statement: within one statement SQLite appends each row after the last without
        // seeking from the root, as it did for the sorted `INSERT … SELECT`.
        postings.sort_unstable();
        for rows in postings.chunks(ROWS_PER_INSERT) {
            if rows.len() == ROWS_PER_INSERT {
                post(&mut *conn.prepare_cached(&INSERT_POSTINGS)?, chunk, rows)?;
            } else {
                post(
                    &mut conn.prepare(&insert_postings(rows.len()))?,
                    chunk,
                    rows,
                )?;
            }
        }

        // Per chain: first and last seq, earliest and latest time. A chunk holds few chains.
        let mut chains: Vec<(&str, i64, i64, &str, &str)> = Vec::new();
        for r in records {
            match chains.iter_mut().find(|c| c.0 == r.chain) {
                Some(c) => {
                    c.1 = c.1.min(r.seq);
                    c.2 = c.2.max(r.seq);
                    c.3 = c.3.min(&r.at);
                    c.4 = c.4.max(&r.at);
                }
                None => chains.push((&r.chain, r.seq, r.seq, &r.at, &r.at)),
            }
        }
        let mut summarise = conn.prepare_cached(
            "INSERT OR REPLACE INTO audit_chunks (chunk, chain, first_seq, last_seq, min_at, max_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (chain, first_seq, last_seq, min_at, max_at) in chains {
            summarise.execute(params![chunk, chain, first_seq, last_seq, min_at, max_at])?;
        }

        self.noted.drain(..whole);
        self.from = Some(through + POSTINGS_CHUNK);
        self.indexed += 1;
        Ok(true)
    }

    /// Chunks indexed from memory since the store opened.
    pub(crate) fn indexed(&self) -> u64 {
        self.indexed
    }
}
