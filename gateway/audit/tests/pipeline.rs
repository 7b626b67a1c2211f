//! The PostgreSQL store's pipeline: a writer's batches spread over connections of their own and
//! committed in order (`pg_pipeline.rs`). At the store's level, so that each batch's fate is
//! known: which connection it is on, which one fails, and what the database holds afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, TestStore, lookup_event, postgres_store, runtime, spawn_append, wait_until};
use samblik_audit::record::GENESIS_HASH;
use samblik_audit::*;

const CHAIN: &str = "replica-a";

/// Records in a batch the store hands to its pipeline even when it is idle.
const BATCH: usize = pg_pipeline::INLINE_BELOW;

/// `n` lookups sealed after `head`, which moves to the last of them.
fn sealed(head: &mut (u64, String), n: usize) -> Vec<SealedRecord> {
    (0..n)
        .map(|i| {
            head.0 += 1;
            let record = AuditRecord::seal(
                lookup_event(i),
                CHAIN,
                head.0,
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                &head.1,
            );
            head.1.clone_from(&record.hash);
            record.to_sealed()
        })
        .collect()
}

fn url(s: &TestStore) -> &str {
    match &s.backend {
        Backend::Postgres(url) => url,
        Backend::Sqlite(_) => panic!("not a PostgreSQL store"),
    }
}

fn session(s: &TestStore) -> ::postgres::Client {
    ::postgres::Client::connect(url(s), ::postgres::NoTls).unwrap()
}

/// The store's (seq, hash) pairs of the chain, in order.
fn stored(store: &mut dyn AuditStore) -> Vec<(u64, String)> {
    store
        .records(CHAIN, 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.hash))
        .collect()
}

fn expected(batches: &[&Vec<SealedRecord>]) -> Vec<(u64, String)> {
    batches
        .iter()
        .flat_map(|b| b.iter().map(|r| (r.seq, r.hash.clone())))
        .collect()
}

/// Sessions of the pipeline waiting for a lock, by name.
fn waiting_for_a_lock(watcher: &mut ::postgres::Client) -> Vec<String> {
    watcher
        .query(
            "SELECT application_name FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND application_name LIKE 'samblik-audit-batches-%'
              ORDER BY application_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `s`'s store, holding the chain's claim, and the sync side of its pipeline.
fn claimed(s: &TestStore) -> (Box<dyn AuditStore>, Box<dyn LogSync>) {
    claiming(s, CHAIN)
}

/// `s`'s store, holding `chain`'s claim, and the sync side of its pipeline.
fn claiming(s: &TestStore, chain: &str) -> (Box<dyn AuditStore>, Box<dyn LogSync>) {
    let mut store = s.store();
    store.claim(chain).unwrap();
    let sync = store
        .deferred_sync()
        .unwrap()
        .expect("PostgreSQL pipelines its batches");
    (store, sync)
}

/// Hands `batch` to the pipeline and sees its sync refuse it for want of the chain's claim.
fn refused_without_a_claim(store: &mut dyn AuditStore, sync: &dyn LogSync, batch: &[SealedRecord]) {
    assert_eq!(
        store.append_unsynced(batch, None).unwrap(),
        Commit::Deferred
    );
    let refused = sync.sync().expect_err("written without the chain's claim");
    assert!(refused.to_string().contains("claim"), "{refused}");
}

/// Ends the sessions of `watcher`'s database whose `application_name` is like `name`.
fn end_sessions(watcher: &mut ::postgres::Client, name: &str) {
    watcher
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE $1",
            &[&name],
        )
        .unwrap();
}

#[test]
fn postgres_batches_commit_in_order_and_none_after_a_failed_one() {
    let s = postgres_store("pipeline");
    let (mut store, sync) = claimed(&s);
    let mut head = (0, GENESIS_HASH.to_owned());

    // A small batch with nothing in flight is committed on the store's own connection.
    let lone = sealed(&mut head, BATCH - 1);
    assert_eq!(store.append_unsynced(&lone, None).unwrap(), Commit::Durable);
    // A batch goes to the pipeline's first connection.
    let first = sealed(&mut head, BATCH);
    assert_eq!(
        store.append_unsynced(&first, None).unwrap(),
        Commit::Deferred
    );
    sync.sync().unwrap();
    assert_eq!(stored(&mut *store), expected(&[&lone, &first]));

    // The next two batches go to the two connections (the second, small, because the first is
    // in flight), and both wait for a lock an operator holds on the table.
    let mut operator = session(&s);
    let mut lock = operator.transaction().unwrap();
    lock.batch_execute("LOCK TABLE audit_records IN EXCLUSIVE MODE")
        .unwrap();
    let second = sealed(&mut head, BATCH);
    let third = sealed(&mut head, 2);
    assert_eq!(
        store.append_unsynced(&second, None).unwrap(),
        Commit::Deferred
    );
    assert_eq!(
        store.append_unsynced(&third, None).unwrap(),
        Commit::Deferred
    );
    let mut watcher = session(&s);
    wait_until("both connections wait for the lock", || {
        waiting_for_a_lock(&mut watcher).len() == 2
    });

    // The second batch's session ends; the third, on the other connection, gets the table once
    // the lock is released, inserts, and must not commit after a batch that failed.
    end_sessions(&mut watcher, "samblik-audit-batches-1");
    lock.commit().unwrap();
    let failed = sync
        .sync()
        .expect_err("a batch that was not written is not durable");
    assert!(failed.to_string().contains("not written"), "{failed}");
    let refused = store
        .append_unsynced(&sealed(&mut head.clone(), BATCH), None)
        .expect_err("nothing is handed over before the writer recovers");
    assert!(
        refused.to_string().contains("until the writer recovers"),
        "{refused}"
    );
    assert!(
        store.head(CHAIN).is_err(),
        "the store's own connection is not used before the writer recovers"
    );

    // The writer recovers and reads the head again: the failed batch and the one after it are
    // not there, and the chain goes on from the last batch that committed.
    store.recover_sync().unwrap();
    let (seq, hash) = store.head(CHAIN).unwrap().unwrap();
    assert_eq!(
        (seq, hash.as_str()),
        (2 * BATCH as u64 - 1, first.last().unwrap().hash.as_str())
    );
    assert_eq!(stored(&mut *store), expected(&[&lone, &first]));
    let mut head = (seq, hash);
    let after = sealed(&mut head, BATCH);
    let last = sealed(&mut head, BATCH);
    assert_eq!(
        store.append_unsynced(&after, None).unwrap(),
        Commit::Deferred
    );
    assert_eq!(
        store.append_unsynced(&last, None).unwrap(),
        Commit::Deferred
    );
    sync.sync().unwrap();
    assert_eq!(
        stored(&mut *store),
        expected(&[&lone, &first, &after, &last])
    );
}

#[test]
fn postgres_a_batch_is_written_only_while_its_own_chain_is_claimed() {
    let s = postgres_store("pipeline_own_claim");
    // The store's session claims another chain (its pid holds an advisory lock, just not this
    // chain's): a batch of this chain must not pass for claimed.
    let (mut store, sync) = claiming(&s, "replica-b");
    let mut head = (0, GENESIS_HASH.to_owned());
    refused_without_a_claim(&mut *store, &*sync, &sealed(&mut head.clone(), BATCH));
    store.recover_sync().unwrap();
    assert_eq!(stored(&mut *store), []);

    // Claimed, it is written.
    store.claim(CHAIN).unwrap();
    let claimed = sealed(&mut head, BATCH);
    store.append_unsynced(&claimed, None).unwrap();
    sync.sync().unwrap();
    assert_eq!(stored(&mut *store), expected(&[&claimed]));
}

#[test]
fn postgres_batches_are_not_written_once_the_session_holding_the_claim_has_ended() {
    let s = postgres_store("pipeline_claim");
    let (mut store, sync) = claimed(&s);
    let mut head = (0, GENESIS_HASH.to_owned());
    let first = sealed(&mut head, BATCH);
    store.append_unsynced(&first, None).unwrap();
    sync.sync().unwrap();

    // The store's own session, which holds the chain's claim, ends (an operator, a network
    // fault): the chain is free for another writer, and the pipeline's connections, whose
    // sessions live on, must not write for a claim nobody holds.
    end_sessions(&mut session(&s), "samblik-audit-writer");
    refused_without_a_claim(&mut *store, &*sync, &sealed(&mut head.clone(), BATCH));

    // Once recovered, the store's connection is made again and takes the claim again; batches
    // are written again.
    store.recover_sync().unwrap();
    // The first use may be the one that finds the connection closed (as the writer's first
    // try after a fault does); the next connects again.
    let mut head = store
        .head(CHAIN)
        .or_else(|_| store.head(CHAIN))
        .unwrap()
        .unwrap();
    assert_eq!(stored(&mut *store), expected(&[&first]));
    let next = sealed(&mut head, BATCH);
    store.append_unsynced(&next, None).unwrap();
    sync.sync().unwrap();
    assert_eq!(stored(&mut *store), expected(&[&first, &next]));
}

#[test]
fn postgres_a_batch_connection_lost_under_load_fails_only_unwritten_records_and_the_chain_goes_on()
{
    let s = postgres_store("pipeline_writer");
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    // An idle writer signs its head and looks at its store only this often, unless it knows to
    // retry sooner: it must find a failure reported after it went idle within `retry_every`.
    let options = WriterOptions {
        retry_every: std::time::Duration::from_millis(20),
        checkpoint_interval: std::time::Duration::from_secs(600),
        ..WriterOptions::new(CHAIN)
    };
    let log = std::sync::Arc::new(AuditLog::start(s.store(), signer, options).unwrap());
    let rt = runtime();
    let mut watcher = session(&s);
    let (mut answered, mut refused) = (Vec::new(), 0);
    // Bursts of lookups, and during each the pipeline's sessions are ended; until some records
    // were refused (a session ended mid-batch) in at least three bursts' time.
    for round in 0..100 {
        let burst: Vec<_> = (0..500)
            .map(|i| spawn_append(&rt, &log, lookup_event(i)))
            .collect();
        end_sessions(&mut watcher, "samblik-audit-batches-%");
        for append in burst {
            match rt.block_on(append).unwrap() {
                Ok(receipt) => answered.push(receipt),
                Err(_) => refused += 1,
            }
        }
        if refused > 0 && round >= 2 {
            break;
        }
    }
    assert!(refused > 0, "no batch was ever cut off");

    // The writer recovers by itself and the chain goes on.
    let health = log.health();
    wait_until("healthy again", || *health.borrow());
    answered.push(rt.block_on(log.append(lookup_event(0))).unwrap());
    std::sync::Arc::try_unwrap(log).unwrap().close();

    let mut store = s.store();
    let key = checkpoint::load_verifying_key(&checkpoint::public_key_path(&s.key)).unwrap();
    verify::verify_store(&mut *store, &key).unwrap();
    let kept: std::collections::HashMap<u64, String> = stored(&mut *store).into_iter().collect();
    for receipt in &answered {
        assert_eq!(
            kept.get(&receipt.seq),
            Some(&receipt.hash),
            "an answered record is not in the log"
        );
    }
}
