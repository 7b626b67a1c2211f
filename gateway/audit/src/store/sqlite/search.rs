//! The searches of [`crate::search`] run on the embedded store: by citizen or caller through the
//! postings, otherwise chunk by chunk, since the file has no index on time.
//!
//! How the postings and the chunks answer a search: `docs/audit-store.md`.

use crate::atrest::AtRestKeys;
use crate::record::AuditRecord;
use crate::search::{
    Activity, AuditQuery, Dialect, Param, activity_sql, records_of, refusal_of, search_sql_among,
};
use crate::store::sqlite::bodies::{
    self, SharedDictionaries, StoredBody, stored_record, with_bodies,
};
use crate::store::sqlite::chunks::{POSTINGS_CHUNK, RowWindow, indexed_through, summarised};
use crate::{AuditError, StoredRecord};
use chrono::{DateTime, Utc};
use rusqlite::params;

/// Runs [`search_sql`](crate::search::search_sql) on an SQLite connection.
pub(crate) fn sqlite_search(
    conn: &rusqlite::Connection,
    dictionaries: &SharedDictionaries,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    // One read transaction: `samblik_body` knows every dictionary the rows it reads need.
    let tx = conn.unchecked_transaction()?;
    if query.break_glass || query.flagged_sources {
        bodies::lock(dictionaries)?.refresh(&tx)?;
    }
    let newest = newest_candidates(query, limit);
    let records = if newest.is_none() && summarised(&tx)? {
        by_chunks(&tx, dictionaries, keys, query, limit)?
    } else {
        // By citizen or caller, the newest candidates first; a short page may be short only
        // because other filters dropped candidates, so it is asked again without the bound.
        let mut rows = sqlite_rows(&tx, keys, query, limit, newest, None)?;
        if newest.is_some() && rows.len() < limit {
            rows = sqlite_rows(&tx, keys, query, limit, None, None)?;
        }
        records_of(with_bodies(dictionaries, &tx, rows)?, keys)?
    };
    tx.commit()?;
    Ok(records)
}

/// A search by neither citizen nor caller, on a store with no index on time: the records not
/// yet in a chunk, then chunk after chunk, those reaching latest first, each a page at most,
/// merged, until no chunk left can reach into the page. Records are written roughly in time
/// order, so a page of the newest reads a chunk or two; a chunk's summary says how late its
/// records reach, so an out-of-order record is never missed, only read later.
fn by_chunks(
    tx: &rusqlite::Connection,
    dictionaries: &SharedDictionaries,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let read = |rows: RowWindow| -> Result<Vec<AuditRecord>, AuditError> {
        let rows = sqlite_rows(tx, keys, query, limit, None, Some(rows))?;
        records_of(with_bodies(dictionaries, tx, rows)?, keys)
    };
    let mut page = read((indexed_through(tx)?, i64::MAX))?;
    let newest_first =
        |a: &AuditRecord, b: &AuditRecord| (&b.at, &b.chain, b.seq).cmp(&(&a.at, &a.chain, a.seq));
    page.sort_by(newest_first);
    let until = query.after.as_ref().map(|after| after.at.clone());
    for (rows, latest) in chunks_between(tx, query.from, query.until, until)? {
        if page.len() >= limit && page.last().is_some_and(|last| latest < last.at) {
            break;
        }
        page.extend(read(rows)?);
        page.sort_by(newest_first);
        page.truncate(limit);
    }
    Ok(page)
}

/// How many of a key's newest postings a first try of a search by citizen or caller reads:
/// a few pages' worth.
fn newest_candidates(query: &AuditQuery, limit: usize) -> Option<usize> {
    (query.cpr.is_some() || query.caller_id.is_some()).then(|| limit.saturating_mul(4).max(256))
}

fn sqlite_rows(
    conn: &rusqlite::Connection,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
    newest: Option<usize>,
    rows: Option<RowWindow>,
) -> Result<Vec<(StoredRecord, StoredBody)>, AuditError> {
    let sql = search_sql_among(Dialect::Sqlite, keys, query, limit, newest, rows)?;
    let mut stmt = conn.prepare(&sql.text)?;
    let rows = stmt
        .query_map(
            rusqlite::params_from_iter(sqlite_params(&sql.params)),
            stored_record,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The plan SQLite chooses for a search (`EXPLAIN QUERY PLAN`, one line per step): what a test,
/// or an operator looking into a slow search, checks to see which indexes answer it.
pub fn sqlite_search_plan(
    conn: &rusqlite::Connection,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
) -> Result<Vec<String>, AuditError> {
    let newest = newest_candidates(query, limit);
    let sql = search_sql_among(Dialect::Sqlite, keys, query, limit, newest, None)?;
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))?;
    let steps = stmt
        .query_map(
            rusqlite::params_from_iter(sqlite_params(&sql.params)),
            |r| r.get::<_, String>(3),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(steps)
}

/// Runs [`activity_sql`] on an SQLite connection.
pub(crate) fn sqlite_activity(
    conn: &rusqlite::Connection,
    dictionaries: &SharedDictionaries,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    callers: &[String],
) -> Result<Vec<Activity>, AuditError> {
    // One read transaction: `samblik_body` knows every dictionary a refusal's body needs.
    let tx = conn.unchecked_transaction()?;
    bodies::lock(dictionaries)?.refresh(&tx)?;
    // With no index on time: the records not yet in a chunk and the chunks the period touches.
    let windows = if summarised(&tx)? {
        let mut windows = vec![Some((indexed_through(&tx)?, i64::MAX))];
        for (rows, _) in chunks_between(&tx, Some(from), Some(until), None)? {
            windows.push(Some(rows));
        }
        windows
    } else {
        vec![None]
    };
    let mut activity = Vec::new();
    for rows in windows {
        let sql = activity_sql(Dialect::Sqlite, from, until, callers, rows);
        let mut stmt = tx.prepare_cached(&sql.text)?;
        let found = stmt.query_map(
            rusqlite::params_from_iter(sqlite_params(&sql.params)),
            |r| {
                let refusal = refusal_of(r.get(5)?);
                Ok(Activity {
                    at: r.get(0)?,
                    request_id: r.get(1)?,
                    caller_id: r.get(2)?,
                    department: r.get(3)?,
                    cpr: refusal.cpr,
                    outcome: r.get(4)?,
                    reason: refusal.reason,
                    detail: refusal.detail,
                })
            },
        )?;
        for a in found {
            activity.push(a?);
        }
    }
    tx.commit()?;
    activity.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(activity)
}

fn sqlite_params(params: &[Param]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(t) => rusqlite::types::Value::Text(t.clone()),
            Param::Int(i) => rusqlite::types::Value::Integer(*i),
        })
        .collect()
}

/// The summarised chunks that can hold records at or after `from`, before `until` and at or
/// before `at_most`: each as its window of rowids and the latest time in it, those reaching
/// latest first.
fn chunks_between(
    conn: &rusqlite::Connection,
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    at_most: Option<String>,
) -> Result<Vec<(RowWindow, String)>, AuditError> {
    let bound = |t: Option<DateTime<Utc>>| t.map(crate::search::time_bound);
    let mut stmt = conn.prepare_cached(
        "SELECT chunk, max(max_at) FROM audit_chunks GROUP BY chunk
         HAVING (?1 IS NULL OR max(max_at) >= ?1)
            AND (?2 IS NULL OR min(min_at) < ?2)
            AND (?3 IS NULL OR min(min_at) <= ?3)
         ORDER BY 2 DESC, 1 DESC",
    )?;
    let chunks = stmt
        .query_map(params![bound(from), bound(until), at_most], |r| {
            let chunk: i64 = r.get(0)?;
            Ok((
                (chunk * POSTINGS_CHUNK, (chunk + 1) * POSTINGS_CHUNK),
                r.get::<_, String>(1)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(chunks)
}
