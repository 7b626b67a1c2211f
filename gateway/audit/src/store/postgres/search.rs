//! The searches of [`crate::search`] run on the PostgreSQL store, and a record's row as every
//! read of the store takes it.
//!
//! The design: `docs/audit-store.md`.

use crate::atrest::{AtRestKeys, Sealed};
use crate::record::AuditRecord;
use crate::search::Cursor;
use crate::search::{
    Activity, AuditQuery, Dialect, Param, activity_sql, records_of, refusal_of, search_sql,
};
use crate::{AuditError, StoredRecord};
use chrono::{DateTime, Utc};

/// A row of [`STORED_COLUMNS`](crate::STORED_COLUMNS), its body opened. A body that does not
/// open becomes a text that matches no hash (it says why), so verification and searches report
/// that record rather than failing as a whole.
pub(crate) fn stored_record(
    r: &postgres::Row,
    keys: &AtRestKeys,
) -> Result<StoredRecord, postgres::Error> {
    Ok(StoredRecord {
        seq: r.try_get::<_, i64>(0)?.unsigned_abs(),
        request_id: r.try_get(1)?,
        cpr: r.try_get(2)?,
        caller_id: r.try_get(3)?,
        body: open_body(keys, r.try_get(4)?),
        hash: r.try_get(5)?,
        at: r.try_get(6)?,
        department: r.try_get(7)?,
        action: r.try_get(8)?,
        outcome: r.try_get(9)?,
    })
}

/// A stored body opened: its canonical JSON, or why it does not open.
fn open_body(keys: &AtRestKeys, stored: String) -> String {
    keys.open_text(Sealed::Body, &stored)
        .unwrap_or_else(|why| format!("unreadable: {why}"))
}

/// Records read per page while a filter on the (sealed) body is applied here.
const BODY_FILTER_PAGE: usize = 500;

/// Runs [`search_sql`] on a PostgreSQL connection. The body is sealed, so the server cannot
/// reach into it: a search for break-the-glass or flagged records reads the other filters'
/// matches page by page, newest first, and keeps those whose opened body matches.
pub(crate) fn postgres_search(
    client: &mut postgres::Client,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    let mut page = |query: &AuditQuery, limit: usize| -> Result<Vec<AuditRecord>, AuditError> {
        let sql = search_sql(Dialect::Postgres, keys, query, limit)?;
        let rows = client
            .query(&sql.text, &postgres_params(&sql.params))?
            .iter()
            .map(|r| stored_record(r, keys))
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        records_of(rows, keys)
    };
    if !query.break_glass && !query.flagged_sources {
        return page(query, limit);
    }
    let mut unfiltered = query.clone();
    unfiltered.break_glass = false;
    unfiltered.flagged_sources = false;
    let matches = |r: &AuditRecord| {
        (!query.break_glass || r.break_glass_reason.is_some())
            && (!query.flagged_sources || r.sources.iter().any(|s| s.flag.is_some()))
    };
    let mut found = Vec::new();
    while found.len() < limit {
        let read = page(&unfiltered, BODY_FILTER_PAGE)?;
        let Some(last) = read.last() else {
            break;
        };
        unfiltered.after = Some(Cursor {
            at: last.at.clone(),
            chain: last.chain.clone(),
            seq: last.seq,
        });
        let whole = read.len() == BODY_FILTER_PAGE;
        found.extend(read.into_iter().filter(|r| matches(r)));
        if !whole {
            break;
        }
    }
    found.truncate(limit);
    Ok(found)
}

/// Runs [`activity_sql`] on a PostgreSQL connection.
pub(crate) fn postgres_activity(
    client: &mut postgres::Client,
    keys: &AtRestKeys,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    callers: &[String],
) -> Result<Vec<Activity>, AuditError> {
    let sql = activity_sql(Dialect::Postgres, from, until, callers, None);
    Ok(client
        .query(&sql.text, &postgres_params(&sql.params))?
        .iter()
        .map(|r| {
            let body: Option<String> = r.try_get(5)?;
            let refusal = refusal_of(body.map(|b| open_body(keys, b)));
            Ok(Activity {
                at: r.try_get(0)?,
                request_id: r.try_get(1)?,
                caller_id: r.try_get(2)?,
                department: r.try_get(3)?,
                cpr: refusal.cpr,
                outcome: r.try_get(4)?,
                reason: refusal.reason,
                detail: refusal.detail,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()?)
}

fn postgres_params(params: &[Param]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
            Param::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
        })
        .collect()
}
