//! The embedded store's compressed bodies, over a real SQLite file: a dictionary trained from the
//! store's own records, records read back whole by verification and every search (the
//! break-the-glass filter reaches into sealed, compressed bodies), a changed byte found at its
//! record, and a training that fails changing nothing but the size. Every body is sealed; what
//! is compressed is what the seal holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestStore, runtime, spawn_append};
use samblik_audit::Cpr;
use samblik_audit::bodies::{Schedule, TRAINING_RECORDS, dictionary_of};
use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
use samblik_audit::search::AuditQuery;
use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::testing::cpr;
use samblik_audit::verify::{VerifyError, verify_store};
use samblik_audit::*;
use std::sync::Arc;

const CITIZENS: [&str; 3] = ["0101901235", "0202902346", "0303903457"];

/// A lookup record much like the gateway's: three sources, field paths, a purpose; every
/// seventh breaks the glass.
fn event(i: usize) -> AuditEvent {
    let case = |source: &str, tier: u8, fields: &[&str]| SourceEntry {
        source_id: source.into(),
        status: "ok".into(),
        cases: vec![CaseEntry {
            case_id: format!("{}-2026-{i:06}", &source[..2].to_uppercase()),
            tier,
            basis: Some("statute:existence-and-contact".into()),
            rule_ids: vec!["statute".into()],
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        }],
        flag: None,
    };
    let existence = [
        "existence.case_type",
        "existence.state",
        "existence.opened_on",
        "existence.responsible.name",
        "existence.responsible.unit",
        "existence.responsible.phone",
    ];
    AuditEvent {
        request_id: format!("5c2d{i:04x}-9a1e-4b7f-8c3d-{:012x}", i * 7919),
        action: Action::Lookup,
        actor: Actor {
            caller_id: format!("cw-jobcenter-{:03}", i % 40),
            name: format!("Sagsbehandler {}", i % 40),
            department: "jobcenter".into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: Some(cpr(CITIZENS[i % 3])),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: i
            .is_multiple_of(7)
            .then(|| "urgent: the child's safety is at stake".into()),
        outcome: if i % 11 == 10 {
            Outcome::Denied
        } else {
            Outcome::Answered
        },
        detail: (i % 11 == 10).then(|| "permission denied: no open case for this citizen".into()),
        reason: (i % 11 == 10).then(|| review::NO_RELATION.into()),
        sources: vec![
            case("child-welfare", 1, &existence),
            case("jobcenter", 3, &existence),
            SourceEntry {
                source_id: "integration".into(),
                status: "ok".into(),
                cases: Vec::new(),
                flag: None,
            },
        ],
        policy_version: "sha256:ff1c58e0ab48dde9e407f480133d70e86feb1fb8e211f9fbfe0f5b168f71a99a"
            .into(),
    }
}

/// A writer on a store, appending the events it is given.
struct Writer {
    log: Arc<AuditLog>,
    rt: tokio::runtime::Runtime,
    next: usize,
}

impl Writer {
    /// A writer on the store of `s`, training dictionaries on `schedule`.
    fn start(s: &TestStore, schedule: Schedule) -> Self {
        let store =
            SqliteStore::open_with_schedule(s.sqlite_path(), Durability::Full, schedule, s.keys())
                .unwrap();
        let signer = CheckpointSigner::load_or_create(&s.key).unwrap();
        let options = WriterOptions::new("replica-a");
        Writer {
            log: Arc::new(AuditLog::start(Box::new(store), signer, options).unwrap()),
            rt: runtime(),
            next: 0,
        }
    }

    /// Appends `n` more events, all at once (group commit).
    fn append(&mut self, n: usize) {
        let pending: Vec<_> = (self.next..self.next + n)
            .map(|i| spawn_append(&self.rt, &self.log, event(i)))
            .collect();
        for p in pending {
            self.rt.block_on(p).unwrap().unwrap();
        }
        self.next += n;
    }

    /// Appends a few events at a time until `done` holds: a dictionary is trained on a thread
    /// of its own and stored by the first write after it is ready. Bounded.
    fn append_until(&mut self, what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            self.append(10);
        }
    }

    /// Stops the writer; returns how many events it appended.
    fn close(self) -> usize {
        Arc::into_inner(self.log).unwrap().close();
        self.next
    }
}

/// Every record's stored body, opened: `(seq, what the seal holds)` — a zstd frame or the
/// canonical JSON — in the order written. Every body is sealed.
fn opened(s: &TestStore) -> Vec<(i64, Vec<u8>)> {
    let conn = rusqlite::Connection::open(s.sqlite_path()).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, body FROM audit_records ORDER BY rowid")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap()
        .map(|row| {
            let (seq, body) = row.unwrap();
            (seq, s.keys.open(Sealed::Body, &body).unwrap())
        })
        .collect()
}

fn is_frame(inner: &[u8]) -> bool {
    inner.starts_with(&[0x28, 0xB5, 0x2F, 0xFD])
}

fn compressed(s: &TestStore) -> i64 {
    opened(s)
        .iter()
        .filter(|(_, inner)| is_frame(inner))
        .count() as i64
}

/// The dictionaries the compressed bodies name.
fn dictionaries_used(s: &TestStore) -> std::collections::BTreeSet<u32> {
    opened(s)
        .iter()
        .filter(|(_, inner)| is_frame(inner))
        .map(|(_, inner)| dictionary_of(inner).unwrap())
        .collect()
}

/// A store with at least `TRAINING_RECORDS` records, then `after` more once its bodies are
/// compressed; returns how many events were written.
fn compressed_store(s: &TestStore, after: usize) -> usize {
    let mut w = Writer::start(s, Schedule::default());
    w.append(usize::try_from(TRAINING_RECORDS).unwrap());
    w.append_until("the first compressed body", || compressed(s) > 0);
    w.append(after);
    w.close()
}

fn sql<T: rusqlite::types::FromSql>(s: &TestStore, query: &str) -> T {
    rusqlite::Connection::open(s.sqlite_path())
        .unwrap()
        .query_row(query, [], |r| r.get(0))
        .unwrap()
}

fn verify(s: &TestStore) -> Result<Vec<verify::ChainSummary>, VerifyError> {
    let key = load_verifying_key(&public_key_path(&s.key)).unwrap();
    verify_store(
        &mut SqliteStore::open_read_only(s.sqlite_path(), s.keys()).unwrap(),
        &key,
    )
}

/// Every record of the chain as the store reads it back (newest first), checked against its hash.
fn all_records(s: &TestStore) -> Vec<AuditRecord> {
    let mut store = SqliteStore::open_read_only(s.sqlite_path(), s.keys()).unwrap();
    let mut records: Vec<AuditRecord> = store
        .records("replica-a", 0, 100_000)
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(record::hash_of(&r.body), r.hash, "record {}", r.seq);
            AuditRecord::from_stored(&r.body, &r.hash).unwrap()
        })
        .collect();
    records.reverse();
    records
}

/// How many lookups the store holds, read back and checked.
fn lookups(s: &TestStore) -> usize {
    all_records(s)
        .iter()
        .filter(|r| r.action == Action::Lookup)
        .count()
}

fn seqs(records: &[AuditRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn sqlite_bodies_are_compressed_once_trained_and_read_back_whole_everywhere() {
    let s = common::sqlite_store("bodies");
    let n = compressed_store(&s, 600);

    // Trained once, from the store's own records; the records after it are compressed.
    assert_eq!(sql::<i64>(&s, "SELECT count(*) FROM audit_dictionaries"), 1);
    let bodies = opened(&s);
    let (frames, plain): (Vec<_>, Vec<_>) = bodies.iter().partition(|(_, inner)| is_frame(inner));
    let (blobs, texts) = (frames.len() as i64, plain.len() as i64);
    assert!(
        texts >= TRAINING_RECORDS,
        "{texts} records before the dictionary"
    );
    assert!(blobs >= 600, "only {blobs} records compressed");
    let average = |bodies: &[&(i64, Vec<u8>)]| {
        bodies.iter().map(|(_, b)| b.len() as f64).sum::<f64>() / bodies.len() as f64
    };
    let (blob_bytes, text_bytes) = (average(&frames), average(&plain));
    assert!(
        blob_bytes * 4.0 < text_bytes,
        "a compressed body takes {blob_bytes:.0} bytes against {text_bytes:.0}"
    );

    // The dictionary outlives the records it was trained on: it learnt their shape, and no
    // citizen, caller, request, case or free text.
    let dict: Vec<u8> = sql(&s, "SELECT dict FROM audit_dictionaries");
    let case_ids = (0..n).map(|i| format!("-2026-{i:06}"));
    for personal in CITIZENS
        .into_iter()
        .map(str::to_owned)
        .chain(
            [
                "Sagsbehandler",
                "cw-jobcenter-",
                "-9a1e-4b7f-",
                "child's safety",
            ]
            .map(str::to_owned),
        )
        .chain(case_ids)
    {
        assert!(
            !dict
                .windows(personal.len())
                .any(|w| w == personal.as_bytes()),
            "the dictionary holds {personal:?}"
        );
    }
    assert!(dict.windows(19).any(|w| w == b"existence.case_type"));

    // Verification decompresses and hashes every record; reading back gives every record.
    let summary = verify(&s).unwrap();
    let records = all_records(&s);
    assert_eq!(summary[0].records, records.len() as u64);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == Action::Lookup)
            .count(),
        n
    );

    // The searches, on both kinds of body, find what a full scan finds.
    let registry = s.registry();
    let rt = runtime();
    let search = |q: AuditQuery| rt.block_on(registry.search(q, 100_000)).unwrap();
    let glass = search(AuditQuery {
        break_glass: true,
        ..AuditQuery::default()
    });
    let expected: Vec<AuditRecord> = records
        .iter()
        .filter(|r| r.break_glass_reason.is_some())
        .cloned()
        .collect();
    assert_eq!(seqs(&glass), seqs(&expected));
    assert!(glass.len() > n / 7 - 2);
    let citizen = search(AuditQuery {
        cpr: Some(cpr(CITIZENS[2])),
        ..AuditQuery::default()
    });
    let expected: Vec<AuditRecord> = records
        .iter()
        .filter(|r| r.cpr.as_ref().map(Cpr::as_str) == Some(CITIZENS[2]))
        .cloned()
        .collect();
    assert_eq!(citizen, expected);
    // The review queue reads a refusal's reason out of its body, compressed or not.
    let activity = rt
        .block_on(registry.activity(chrono::DateTime::UNIX_EPOCH, chrono::Utc::now(), Vec::new()))
        .unwrap();
    let mut refused: Vec<&str> = activity
        .iter()
        .filter(|a| a.refused_for_lack_of_relation())
        .map(|a| a.request_id.as_str())
        .collect();
    let mut expected: Vec<&str> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Denied)
        .map(|r| r.request_id.as_str())
        .collect();
    assert_eq!(refused.len(), expected.len());
    assert!(refused.len() > n / 11 - 2);
    refused.sort_unstable();
    expected.sort_unstable();
    assert_eq!(refused, expected);
    assert!(
        activity
            .iter()
            .filter(|a| a.outcome == "denied")
            .all(|a| a.cpr.is_some())
    );

    // A store opened again compresses with the file's dictionary rather than training anew.
    let mut w = Writer::start(&s, Schedule::default());
    w.append(20);
    w.close();
    assert_eq!(sql::<i64>(&s, "SELECT count(*) FROM audit_dictionaries"), 1);
    assert!(is_frame(&opened(&s).last().unwrap().1));
    verify(&s).unwrap();
}

#[test]
fn a_changed_byte_in_a_compressed_body_or_its_dictionary_is_found_at_its_record() {
    let s = common::sqlite_store("bodies-tamper");
    compressed_store(&s, 600);
    let conn = rusqlite::Connection::open(s.sqlite_path()).unwrap();
    let frames: Vec<i64> = opened(&s)
        .into_iter()
        .filter(|(_, inner)| is_frame(inner))
        .map(|(seq, _)| seq)
        .collect();
    let first_blob = frames[0];
    // A record in the middle of the compressed ones.
    let target = frames[frames.len() / 2];
    assert!(target > first_blob);
    let original: Vec<u8> = conn
        .query_row(
            "SELECT body FROM audit_records WHERE seq = ?1",
            [target],
            |r| r.get(0),
        )
        .unwrap();
    let put = |body: &[u8]| {
        conn.execute(
            "UPDATE audit_records SET body = ?1 WHERE seq = ?2",
            rusqlite::params![body, target],
        )
        .unwrap();
    };
    let broken_at = || match verify(&s) {
        Err(VerifyError::Broken(b)) => b.first.seq,
        other => panic!("expected a broken chain, got {other:?}"),
    };

    // A flipped bit in the sealed data (past its key id and nonce), anywhere.
    for at in [original.len() / 2, original.len() - 1] {
        let mut flipped = original.clone();
        flipped[at] ^= 0x10;
        put(&flipped);
        assert_eq!(broken_at(), target.unsigned_abs(), "flip at byte {at}");
    }
    // Not sealed at all, and a seal cut short.
    put(b"not a zstd frame");
    assert_eq!(broken_at(), target.unsigned_abs());
    put(&original[..original.len() / 2]);
    assert_eq!(broken_at(), target.unsigned_abs());
    put(&original);
    verify(&s).unwrap();

    // A search shows no altered record either: it names it.
    put(&original[..original.len() - 3]);
    let registry = s.registry();
    let err = runtime()
        .block_on(registry.search(AuditQuery::default(), 100_000))
        .unwrap_err();
    assert!(err.to_string().contains(&target.to_string()), "{err}");
    put(&original);

    // A changed dictionary breaks the first record compressed with it.
    let mut dict: Vec<u8> = conn
        .query_row("SELECT dict FROM audit_dictionaries", [], |r| r.get(0))
        .unwrap();
    let content = dict.len() - 4000;
    for b in &mut dict[content..] {
        *b = b.wrapping_add(1);
    }
    conn.execute("UPDATE audit_dictionaries SET dict = ?1", [dict])
        .unwrap();
    assert_eq!(broken_at(), first_blob.unsigned_abs());
}

#[test]
fn dictionaries_are_retrained_on_schedule_and_every_one_stays_readable() {
    let s = common::sqlite_store("bodies-retrain");
    let schedule = Schedule {
        training_records: 2048,
        retrain_after_records: 1500,
    };
    let mut w = Writer::start(&s, schedule);
    w.append(2_048);
    w.append_until("bodies compressed with two dictionaries", || {
        dictionaries_used(&s).len() >= 2
    });
    let n = w.close();
    assert!(sql::<i64>(&s, "SELECT count(*) FROM audit_dictionaries") >= 2);
    verify(&s).unwrap();
    assert_eq!(lookups(&s), n);
}

#[test]
fn a_training_that_fails_leaves_the_records_as_they_are() {
    let s = common::sqlite_store("bodies-untrained");
    // Three records are too few to train on: zstd refuses, and the writer goes on.
    let schedule = Schedule {
        training_records: 3,
        retrain_after_records: 1 << 20,
    };
    let mut w = Writer::start(&s, schedule);
    for _ in 0..20 {
        w.append(5);
    }
    w.close();
    assert_eq!(sql::<i64>(&s, "SELECT count(*) FROM audit_dictionaries"), 0);
    assert_eq!(compressed(&s), 0);
    verify(&s).unwrap();
    assert_eq!(lookups(&s), 100);
}
