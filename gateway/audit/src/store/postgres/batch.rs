//! How a batch of records is written, on the PostgreSQL store's own connection and on the
//! pipeline's alike: the session ([`session`]), the two statements prepared on it ([`Inserts`])
//! and the insert of a batch ([`insert`]).
//!
//! The design: `docs/audit-store.md`.

use crate::checkpoint::Checkpoint;
use crate::{AuditError, Durability, SealedRecord};
use postgres::{Client, NoTls, Statement};

/// A session that commits as `durability` says; with `read_only`, one that cannot write.
/// Named `name` on the server (`application_name`, for operators and `pg_stat_activity`).
pub(crate) fn session(
    url: &str,
    durability: Durability,
    read_only: bool,
    name: &str,
) -> Result<Client, AuditError> {
    let mut client = Client::connect(url, NoTls)?;
    let commit = match durability {
        Durability::Full => "on",
        Durability::Off => "off",
    };
    let read_only = if read_only { "on" } else { "off" };
    client.batch_execute(&format!(
        "SET synchronous_commit = {commit}; SET default_transaction_read_only = {read_only};
         SET application_name = '{name}'"
    ))?;
    Ok(client)
}

/// The two statements a batch is written with.
#[derive(Clone)]
pub(crate) struct Inserts {
    records: Statement,
    checkpoint: Statement,
    /// The keys the bodies are sealed and the CPR column hashed with.
    keys: std::sync::Arc<crate::AtRestKeys>,
}

impl Inserts {
    /// Prepared on `client`'s connection (outside any transaction, so that a rollback cannot
    /// take them away).
    pub(crate) fn prepare(
        client: &mut Client,
        keys: &std::sync::Arc<crate::AtRestKeys>,
    ) -> Result<Self, AuditError> {
        Ok(Inserts {
            records: client.prepare(INSERT_RECORDS)?,
            checkpoint: client.prepare(INSERT_CHECKPOINT)?,
            keys: std::sync::Arc::clone(keys),
        })
    }
}

/// The key of the advisory lock that claims the chain named by the SQL expression `$chain`
/// (the store's `lock_chain`).
macro_rules! chain_lock_key {
    ($chain:literal) => {
        concat!(
            "hashtextextended('samblik-audit-chain:' || ",
            $chain,
            ", 0)"
        )
    };
}
pub(crate) use chain_lock_key;

/// One statement (one round trip) per batch rather than one per record: each column goes as an
/// array, unnested side by side in the select list (no sort, no materialised function scan: the
/// rows' order in the table means nothing, every read orders by seq or time). `$12`, unless 0,
/// is the server process that must still hold the claim of the batch's chain (an advisory lock,
/// the store's `lock_chain`, whose 64-bit key `pg_locks` shows in halves): a pipeline's
/// connection ([`crate::store::postgres::pipeline`]) writes for a claim held by another
/// session, and inserts nothing once that session has ended.
const INSERT_RECORDS: &str = concat!(
    "INSERT INTO audit_records
     (chain, seq, at, request_id, cpr, caller_id, department, action, outcome, body, hash)
     SELECT UNNEST($1::text[]), UNNEST($2::bigint[]), UNNEST($3::text[]), UNNEST($4::text[]),
            UNNEST($5::text[]), UNNEST($6::text[]), UNNEST($7::text[]), UNNEST($8::text[]),
            UNNEST($9::text[]), UNNEST($10::text[]), UNNEST($11::text[])
     WHERE $12::int4 = 0
        OR EXISTS (SELECT 1 FROM pg_locks
                    WHERE locktype = 'advisory' AND pid = $12::int4 AND granted
                      AND ((classid::int8 << 32) | objid::int8) = ",
    chain_lock_key!("($1::text[])[1]"),
    ")"
);

const INSERT_CHECKPOINT: &str =
    "INSERT INTO audit_checkpoints (chain, seq, head_hash, at, signature)
     VALUES ($1, $2, $3, $4, $5)";

pub(crate) fn to_i64(n: u64) -> Result<i64, AuditError> {
    i64::try_from(n).map_err(|_| AuditError::Store("seq overflow".into()))
}

/// Inserts a batch in `tx`. With `claim_pid` (not 0), only while that server process still
/// holds the chain's claim.
pub(crate) fn insert(
    tx: &mut postgres::Transaction<'_>,
    statements: &Inserts,
    records: &[SealedRecord],
    checkpoint: Option<&Checkpoint>,
    claim_pid: i32,
) -> Result<(), AuditError> {
    if !records.is_empty() {
        let column = |f: fn(&SealedRecord) -> &str| records.iter().map(f).collect::<Vec<_>>();
        let seqs = records
            .iter()
            .map(|r| to_i64(r.seq))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = &statements.keys;
        let cprs: Vec<Option<String>> = records
            .iter()
            .map(|r| r.indexed.cpr.as_ref().map(|c| keys.index(c)))
            .collect();
        let bodies = records
            .iter()
            .map(|r| keys.seal_text(crate::Sealed::Body, &r.body))
            .collect::<Result<Vec<_>, _>>()?;
        let inserted = tx.execute(
            &statements.records,
            &[
                &column(|r| &r.chain),
                &seqs,
                &column(|r| &r.at),
                &column(|r| &r.indexed.request_id),
                &cprs,
                &column(|r| &r.indexed.caller_id),
                &column(|r| &r.indexed.department),
                &column(|r| r.indexed.action.as_str()),
                &column(|r| r.indexed.outcome.as_str()),
                &bodies,
                &column(|r| &r.hash),
                &claim_pid,
            ],
        )?;
        if inserted != records.len() as u64 {
            return Err(AuditError::Store(
                "the session holding the audit chain's claim has ended; the batch is not written"
                    .into(),
            ));
        }
    }
    if let Some(c) = checkpoint {
        tx.execute(
            &statements.checkpoint,
            &[&c.chain, &to_i64(c.seq)?, &c.head_hash, &c.at, &c.signature],
        )?;
    }
    Ok(())
}
