//! Reading the log back: the auditors' searches, the raw material of the review queue, and the
//! citizen's "who looked at my data". Both stores answer the same [`AuditQuery`] with the same
//! SQL (only the placeholders and the JSON operator differ), newest first, a page at a time by
//! keyset (never OFFSET, so page 1000 costs what page 1 does), over the indexed columns.

use crate::atrest::AtRestKeys;
use crate::record::{Action, AuditRecord, Outcome};
use crate::store::sqlite::chunks::{POSTING_CALLER, POSTING_CITIZEN, RowWindow};
use crate::{AuditError, STORED_COLUMNS, StoredRecord};
use chrono::{DateTime, SecondsFormat, Utc};
use samblik_cpr::Cpr;

/// Which records; `None` and empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub cpr: Option<Cpr>,
    pub caller_id: Option<String>,
    pub department: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
    pub actions: Vec<Action>,
    pub outcomes: Vec<Outcome>,
    /// Only records that carry a break-the-glass reason.
    pub break_glass: bool,
    /// Only records with a flagged source ([`crate::SourceEntry::flag`]).
    pub flagged_sources: bool,
    /// Only the records of these requests (by `request_id`).
    pub request_ids: Vec<String>,
    /// Only records older than this one (the last of the previous page).
    pub after: Option<Cursor>,
}

/// A record's place in the newest-first order: the page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: String,
    pub chain: String,
    pub seq: u64,
}

impl Cursor {
    pub fn of(record: &AuditRecord) -> Cursor {
        Cursor {
            at: record.at.clone(),
            chain: record.chain.clone(),
            seq: record.seq,
        }
    }

    /// An opaque token for the wire.
    pub fn encode(&self) -> String {
        hex::encode(format!("{}\n{}\n{}", self.at, self.seq, self.chain))
    }

    /// `None` for a token this gateway did not make.
    pub fn decode(token: &str) -> Option<Cursor> {
        let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
        let mut parts = text.splitn(3, '\n');
        let at = parts.next()?.to_owned();
        let seq = parts.next()?.parse().ok()?;
        let chain = parts.next()?.to_owned();
        DateTime::parse_from_rfc3339(&at).ok()?;
        Some(Cursor { at, chain, seq })
    }
}

/// A lookup as the review queue needs it: who, when, how it ended — and, for a refused lookup
/// only, about whom and why (its `cpr`, `reason` and `detail`, read from its body, the only
/// body read: the `cpr` column holds a keyed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub at: String,
    pub request_id: String,
    pub caller_id: String,
    pub department: String,
    /// The citizen looked up, for a refused lookup (`None` for every other lookup, and when the
    /// request named no valid CPR).
    pub cpr: Option<Cpr>,
    pub outcome: String,
    /// The refusal's reason; `None` for a lookup that was not refused, and for a refusal
    /// recorded before refusals had reasons.
    pub reason: Option<String>,
    /// The refusal's detail; `None` for a lookup that was not refused.
    pub detail: Option<String>,
}

/// How a record's time is written, so text comparison orders as time does.
pub fn time_bound(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The SQL dialect: placeholders and how to reach into the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// A statement and its parameters, with placeholders for `dialect`.
#[derive(Debug)]
pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Param>,
}

struct Where {
    dialect: Dialect,
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Where {
    fn new(dialect: Dialect) -> Self {
        Where {
            dialect,
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The placeholder for a new parameter.
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    /// `column = value`, if a value is given; returns its placeholder.
    fn equals(&mut self, column: &str, value: Option<&str>) -> Option<String> {
        let p = self.bind(Param::Text(value?.to_owned()));
        self.clauses.push(format!("{column} = {p}"));
        Some(p)
    }

    fn one_of(&mut self, column: &str, values: &[&str]) {
        if values.is_empty() {
            return;
        }
        let placeholders: Vec<String> = values
            .iter()
            .map(|v| self.bind(Param::Text((*v).to_owned())))
            .collect();
        self.clauses
            .push(format!("{column} IN ({})", placeholders.join(", ")));
    }

    /// `from <= at < until`, each bound if given; returns the clauses on `at`, for a
    /// subquery to apply too.
    fn period(&mut self, from: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> String {
        let mut bounds = String::new();
        if let Some(from) = from {
            let p = self.bind(Param::Text(time_bound(from)));
            self.clauses.push(format!("at >= {p}"));
            bounds.push_str(&format!(" AND at >= {p}"));
        }
        if let Some(until) = until {
            let p = self.bind(Param::Text(time_bound(until)));
            self.clauses.push(format!("at < {p}"));
            bounds.push_str(&format!(" AND at < {p}"));
        }
        bounds
    }

    /// `lo < rowid <= hi`: one window of an SQLite table's rows.
    fn rows(&mut self, (lo, hi): RowWindow) {
        let lo = self.bind(Param::Int(lo));
        let hi = self.bind(Param::Int(hi));
        self.clauses.push(format!("rowid > {lo} AND rowid <= {hi}"));
    }

    fn render(&self) -> String {
        if self.clauses.is_empty() {
            "TRUE".to_owned()
        } else {
            self.clauses.join(" AND ")
        }
    }
}

fn seq_param(seq: u64) -> Result<Param, AuditError> {
    i64::try_from(seq)
        .map(Param::Int)
        .map_err(|_| AuditError::Store("seq overflow".into()))
}

/// `SELECT` of up to `limit` records matching `query`, newest first: the stored columns of
/// [`StoredRecord`] plus `chain` and `at`.
pub(crate) fn search_sql(
    dialect: Dialect,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
) -> Result<Sql, AuditError> {
    search_sql_among(dialect, keys, query, limit, None, None)
}

/// [`search_sql`]; on SQLite, by citizen or caller, with `newest` only the records of the key's
/// `newest` postings are candidates (with every posting as new as the last of them, so a tie
/// is never cut), not all of them: a caller with a hundred thousand records is answered by
/// reading a page's worth of records, not all of theirs. A page shorter than `limit` may then
/// be short only because the other filters dropped candidates; the SQLite search
/// (`sqlite_search`) asks again without the bound. With `rows`, only the records in that window
/// of rowids (SQLite).
pub(crate) fn search_sql_among(
    dialect: Dialect,
    keys: &AtRestKeys,
    query: &AuditQuery,
    limit: usize,
    newest: Option<usize>,
    rows: Option<RowWindow>,
) -> Result<Sql, AuditError> {
    let mut w = Where::new(dialect);
    if let Some(rows) = rows {
        w.rows(rows);
    }
    // The column holds the citizen's keyed hash.
    let cpr_index = query.cpr.as_ref().map(|c| keys.index(c));
    let cpr = w.equals("cpr", cpr_index.as_deref());
    let caller = w.equals("caller_id", query.caller_id.as_deref());
    w.equals("department", query.department.as_deref());
    // The clauses on `at` the postings apply too (a posting carries its record's `at`).
    let mut bounds = w.period(query.from, query.until);
    let actions: Vec<&str> = query.actions.iter().map(|a| a.as_str()).collect();
    w.one_of("action", &actions);
    let outcomes: Vec<&str> = query.outcomes.iter().map(|o| o.as_str()).collect();
    w.one_of("outcome", &outcomes);
    let request_ids: Vec<&str> = query.request_ids.iter().map(String::as_str).collect();
    w.one_of("request_id", &request_ids);
    // The body is sealed: SQLite opens it in SQL (`samblik_body`); PostgreSQL cannot, and
    // its store applies these two filters itself (`postgres_search`).
    if query.break_glass && dialect == Dialect::Sqlite {
        w.clauses.push(
            "json_extract(samblik_body(body), '$.break_glass_reason') IS NOT NULL".to_owned(),
        );
    }
    if query.flagged_sources && dialect == Dialect::Sqlite {
        w.clauses.push(
            "EXISTS (SELECT 1 FROM json_each(samblik_body(body), '$.sources') \
             WHERE json_extract(value, '$.flag') IS NOT NULL)"
                .to_owned(),
        );
    }
    if let Some(after) = &query.after {
        let at = w.bind(Param::Text(after.at.clone()));
        let chain = w.bind(Param::Text(after.chain.clone()));
        let seq = w.bind(seq_param(after.seq)?);
        w.clauses.push(format!(
            "(at < {at} OR (at = {at} AND (chain < {chain} OR (chain = {chain} AND seq < {seq}))))"
        ));
        bounds.push_str(&format!(" AND at <= {at}"));
    }
    // SQLite indexes the citizen and the caller in postings, a chunk of records at a time (see
    // the `sqlite` module): the candidates are the chunks' postings for the key plus the
    // records not yet in a chunk; the clauses above still decide.
    let postings = match (cpr, caller) {
        (Some(cpr), _) => Some((POSTING_CITIZEN, cpr)),
        (None, Some(caller)) => Some((POSTING_CALLER, caller)),
        (None, None) => None,
    };
    let (with, table) = match (dialect, postings) {
        (Dialect::Sqlite, Some((kind, key))) => {
            let kind = w.bind(Param::Int(kind));
            let mut posted = format!(
                "audit_postings WHERE chunk IN posting_chunks AND kind = {kind} AND key = {key}{bounds}"
            );
            let mut with = "WITH RECURSIVE posting_chunks(c) AS (
                   SELECT min(chunk) FROM audit_postings
                   UNION ALL
                   SELECT c + 1 FROM posting_chunks
                    WHERE c < (SELECT max(chunk) FROM audit_postings))"
                .to_owned();
            if let Some(newest) = newest {
                // The `at` of the key's `newest`-th newest posting: records older than it are
                // not candidates, whether posted or not yet.
                let offset = w.bind(Param::Int(
                    i64::try_from(newest.saturating_sub(1)).unwrap_or(i64::MAX),
                ));
                with.push_str(&format!(
                    ",
                 threshold(at) AS MATERIALIZED (
                   SELECT COALESCE((SELECT at FROM {posted}
                                    ORDER BY at DESC LIMIT 1 OFFSET {offset}), ''))"
                ));
                posted.push_str(" AND at >= (SELECT at FROM threshold)");
                w.clauses
                    .push("at >= (SELECT at FROM threshold)".to_owned());
            }
            w.clauses.push(format!(
                "rowid IN (SELECT rid FROM {posted}
                           UNION ALL
                           SELECT rowid FROM audit_records
                            WHERE rowid > (SELECT indexed_through FROM audit_postings_state))"
            ));
            // Found by rowid; no index on time may be scanned instead.
            (with + "\n", "audit_records NOT INDEXED")
        }
        _ => (String::new(), "audit_records"),
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let limit = w.bind(Param::Int(limit));
    Ok(Sql {
        text: format!(
            "{with}SELECT {STORED_COLUMNS} FROM {table}
             WHERE {} ORDER BY at DESC, chain DESC, seq DESC LIMIT {limit}",
            w.render()
        ),
        params: w.params,
    })
}

/// `SELECT` of the lookups made in a period (by some callers only, if given), oldest first, as
/// [`Activity`] columns.
pub(crate) fn activity_sql(
    dialect: Dialect,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    callers: &[String],
    rows: Option<RowWindow>,
) -> Sql {
    let mut w = Where::new(dialect);
    if let Some(rows) = rows {
        w.rows(rows);
    }
    w.period(Some(from), Some(until));
    w.one_of(
        "action",
        &[Action::Lookup.as_str(), Action::LookupStream.as_str()],
    );
    let callers: Vec<&str> = callers.iter().map(String::as_str).collect();
    w.one_of("caller_id", &callers);
    // Only a refusal's body is read, once ([`refusal_of`]): few lookups are refused. SQLite
    // opens it in SQL; PostgreSQL returns it sealed, for the store to open.
    let why = match dialect {
        Dialect::Sqlite => "samblik_body(body)",
        Dialect::Postgres => "body",
    };
    let denied = w.bind(Param::Text(Outcome::Denied.as_str().to_owned()));
    Sql {
        text: format!(
            "SELECT at, request_id, caller_id, department, outcome,
                    CASE WHEN outcome = {denied} THEN {why} END
             FROM audit_records
             WHERE {} ORDER BY at",
            w.render()
        ),
        params: w.params,
    }
}

/// What the review queue reads of a refusal's body: whom it was about and why.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Refusal {
    pub cpr: Option<Cpr>,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

/// A refusal's citizen, reason and detail from its opened body ([`activity_sql`]); nothing for
/// a lookup that was not refused, or a body that is not a record.
pub(crate) fn refusal_of(body: Option<String>) -> Refusal {
    body.and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Parses a page of stored rows back into records, checking each body against its hash: a
/// search never shows an auditor a record that was altered in place.
pub(crate) fn records_of(
    rows: Vec<StoredRecord>,
    keys: &AtRestKeys,
) -> Result<Vec<AuditRecord>, AuditError> {
    rows.into_iter()
        .map(|row| {
            if crate::record::hash_of(&row.body) != row.hash {
                return Err(AuditError::Store(format!(
                    "record {} does not match its hash; run `samblik audit verify`",
                    row.seq
                )));
            }
            let record = AuditRecord::from_stored(&row.body, &row.hash).map_err(|e| {
                AuditError::Store(format!("record {} is unreadable: {e}", row.seq))
            })?;
            if !row.columns_agree(&record, keys) {
                return Err(AuditError::Store(format!(
                    "record {} has columns that differ from its content; run `samblik audit verify`",
                    row.seq
                )));
            }
            Ok(record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_tokens_are_refused() {
        let c = Cursor {
            at: "2026-11-22T10:00:00.000001Z".into(),
            chain: "gw\n1".into(),
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(&hex::encode("x\n1\nc")), None);
        assert_eq!(
            Cursor::decode(&hex::encode("2026-11-22T10:00:00Z\nx\nc")),
            None
        );
    }

    #[test]
    fn the_filter_binds_every_value_and_never_splices_it() {
        let query = AuditQuery {
            cpr: Cpr::parse("0101901235").ok(),
            caller_id: Some("cw' OR 1=1 --".into()),
            actions: vec![Action::Lookup],
            break_glass: true,
            after: Some(Cursor {
                at: "2026-11-22T10:00:00.000000Z".into(),
                chain: "gw".into(),
                seq: 7,
            }),
            ..AuditQuery::default()
        };
        let keys = AtRestKeys::generate().unwrap();
        let sql = search_sql(Dialect::Postgres, &keys, &query, 10).unwrap();
        assert!(!sql.text.contains("OR 1=1"));
        assert!(sql.text.contains("cpr = $1"));
        // The citizen is searched by their keyed hash, never in clear.
        let index = keys.index(query.cpr.as_ref().unwrap());
        assert!(matches!(&sql.params[0], Param::Text(t) if *t == index));
        assert!(sql.text.contains("LIMIT $7"));
        assert_eq!(sql.params.len(), 7);
        let sql = search_sql(Dialect::Sqlite, &keys, &AuditQuery::default(), 10).unwrap();
        assert!(sql.text.contains("WHERE TRUE"));
    }
}
