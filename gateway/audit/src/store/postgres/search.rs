//! The searches of [`crate::search`] run on the PostgreSQL store, and a record's row as every
//! read of the store takes it.
//!
//! The design: `docs/audit-store.md`.

use crate::record::AuditRecord;
use crate::search::{
    Activity, AuditQuery, Dialect, Param, activity_sql, records_of, refusal_of, search_sql,
};
use crate::store::StoredCpr;
use crate::{AuditError, StoredRecord};
use chrono::{DateTime, Utc};

/// A row of [`STORED_COLUMNS`](crate::STORED_COLUMNS).
pub(crate) fn stored_record(r: &postgres::Row) -> Result<StoredRecord, postgres::Error> {
    Ok(StoredRecord {
        seq: r.try_get::<_, i64>(0)?.unsigned_abs(),
        request_id: r.try_get(1)?,
        cpr: r.try_get(2)?,
        caller_id: r.try_get(3)?,
        body: r.try_get(4)?,
        hash: r.try_get(5)?,
        at: r.try_get(6)?,
        department: r.try_get(7)?,
        action: r.try_get(8)?,
        outcome: r.try_get(9)?,
    })
}

/// Runs [`search_sql`] on a PostgreSQL connection.
pub(crate) fn postgres_search(
    client: &mut postgres::Client,
    query: &AuditQuery,
    limit: usize,
) -> Result<Vec<AuditRecord>, AuditError> {
    let sql = search_sql(Dialect::Postgres, query, limit)?;
    let rows = client
        .query(&sql.text, &postgres_params(&sql.params))?
        .iter()
        .map(stored_record)
        .collect::<Result<Vec<_>, postgres::Error>>()?;
    records_of(rows)
}

/// Runs [`activity_sql`] on a PostgreSQL connection.
pub(crate) fn postgres_activity(
    client: &mut postgres::Client,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    callers: &[String],
) -> Result<Vec<Activity>, AuditError> {
    let sql = activity_sql(Dialect::Postgres, from, until, callers, None);
    Ok(client
        .query(&sql.text, &postgres_params(&sql.params))?
        .iter()
        .map(|r| {
            let (reason, detail) = refusal_of(r.try_get(6)?);
            Ok(Activity {
                at: r.try_get(0)?,
                request_id: r.try_get(1)?,
                caller_id: r.try_get(2)?,
                department: r.try_get(3)?,
                cpr: r.try_get::<_, Option<StoredCpr>>(4)?.map(|c| c.0),
                outcome: r.try_get(5)?,
                reason,
                detail,
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
