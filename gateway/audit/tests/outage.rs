//! The audit store going away and coming back, with nobody writing in between: the writer's own
//! retry finds it (reconnecting to PostgreSQL), records the recovery, and health turns back on.
//! A load balancer sends no lookups to an unhealthy gateway, so nothing else would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestStore, lookup_event, postgres_store, runtime, wait_until};
use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::verify::verify_store;
use samblik_audit::*;
use std::time::Duration;

/// A connection to the test server's administrative database, and the name of `s`'s database.
fn admin_of(s: &TestStore) -> (::postgres::Client, String) {
    let common::Backend::Postgres(url) = &s.backend else {
        panic!("not a PostgreSQL store");
    };
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let admin = testing::test_postgres_url();
    let client = ::postgres::Client::connect(&admin, ::postgres::NoTls).unwrap();
    (client, database)
}

#[test]
fn a_terminated_database_session_is_reconnected_by_the_idle_writer_and_recorded() {
    let s = postgres_store("outage");
    let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
    let options = WriterOptions {
        retry_every: Duration::from_millis(20),
        ..WriterOptions::new("replica-a")
    };
    let log = AuditLog::start(s.store(), signer, options).unwrap();
    let health = log.health();
    let rt = runtime();
    rt.block_on(log.append(lookup_event(0))).unwrap();

    // The database goes down for a while: it takes no new connections and ends the writer's
    // session (a restart or a failover looks the same to the writer).
    let (mut admin, database) = admin_of(&s);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{database}' AND pid <> pg_backend_pid();"
        ))
        .unwrap();
    assert!(
        rt.block_on(log.append(lookup_event(1))).is_err(),
        "written with the database down"
    );
    assert!(!*health.borrow(), "healthy without a database");

    // It comes back. No one writes; the writer's retry reconnects and health comes back.
    admin
        .batch_execute(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        .unwrap();
    wait_until("health back without a write", || *health.borrow());
    rt.block_on(log.append(lookup_event(2))).unwrap();
    log.close();

    let mut store = s.store();
    let key = load_verifying_key(&public_key_path(&s.key)).unwrap();
    verify_store(&mut *store, &key).unwrap();
    let records: Vec<AuditRecord> = store
        .records("replica-a", 0, 1_000)
        .unwrap()
        .iter()
        .map(|r| AuditRecord::from_stored(&r.body, &r.hash).unwrap())
        .collect();
    let recovered = records
        .iter()
        .filter(|r| Maintenance::of(r) == Some(Maintenance::StoreRecovered))
        .count();
    assert_eq!(recovered, 1, "the recovery is recorded once");
    let lookups: Vec<&str> = records
        .iter()
        .filter(|r| r.action == Action::Lookup)
        .map(|r| r.request_id.as_str())
        .collect();
    assert_eq!(
        lookups,
        ["req-0", "req-2"],
        "the refused write left nothing"
    );
}
