//! Several gateway replicas writing to one PostgreSQL database: each its own chain, all signed
//! with one key, written at once, one pruned — and every chain still verifies. Two writers on
//! one chain are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestStore, lookup_event, postgres_store, runtime};
use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::verify::verify_store;
use samblik_audit::*;
use std::sync::Arc;

fn start(s: &TestStore, chain: &str) -> Result<AuditLog, AuditError> {
    let options = WriterOptions {
        checkpoint_every: 10,
        ..WriterOptions::new(chain)
    };
    AuditLog::start(
        s.store(),
        CheckpointSigner::load_or_create(&s.key)?,
        options,
    )
}

#[test]
fn replicas_write_their_own_chains_at_once_and_each_stays_verifiable() {
    let s = postgres_store("replicas");
    let a = Arc::new(start(&s, "replica-a").unwrap());
    let b = Arc::new(start(&s, "replica-b").unwrap());

    // A second writer on a live chain is refused, and the live one goes on.
    let err = start(&s, "replica-a").unwrap_err();
    assert!(err.to_string().contains("another gateway"), "{err}");

    let rt = runtime();
    rt.block_on(async {
        let mut pending = Vec::new();
        for i in 0..200 {
            let log = Arc::clone(if i % 2 == 0 { &a } else { &b });
            pending.push(tokio::spawn(
                async move { log.append(lookup_event(i)).await },
            ));
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
    });
    // One replica prunes its own chain; the other's is untouched.
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    let report = rt.block_on(a.prune(cutoff, "test")).unwrap().unwrap();
    assert!(report.records > 0);
    Arc::into_inner(a).unwrap().close();
    Arc::into_inner(b).unwrap().close();

    let key = load_verifying_key(&public_key_path(&s.key)).unwrap();
    let summaries = verify_store(&mut *s.store(), &key).unwrap();
    let chains: Vec<(&str, u64)> = summaries
        .iter()
        .map(|c| (c.chain.as_str(), c.records))
        .collect();
    // replica-b: its start-up, 100 lookups, its clean stop.
    assert_eq!(chains.len(), 2, "{chains:?}");
    assert!(chains.contains(&("replica-b", 102)), "{chains:?}");

    // Once the live writer is gone, the chain may be written again (a restart).
    start(&s, "replica-a").unwrap().close();
}
