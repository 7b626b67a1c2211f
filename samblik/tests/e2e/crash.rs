//! `kill -9` of the whole gateway at random moments under load, again and again: every lookup
//! a client saw answered is in the audit log after restart, and the chain verifies. Once for
//! the demo, its log in SQLite, and once for `samblik serve` from a config, its log in
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{LookupRequest, Purpose};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::SAMBLIK;
use samblik_audit::AuditStore;

/// Crash cycles: at least 20 (CI); `SAMBLIK_CRASH_CYCLES` asks for more.
fn cycles() -> u64 {
    std::env::var("SAMBLIK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(20)
}

fn run(args: &[&str]) -> String {
    let out = Command::new(SAMBLIK).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tiny deterministic generator for the kill moments.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn start_demo(dir: &Path) -> (std::process::Child, serde_json::Value) {
    let facts = dir.join("demo.json");
    let _ = std::fs::remove_file(&facts);
    let mut child = Command::new(SAMBLIK)
        // Plaintext keeps this test about durability; TLS has tests of its own.
        .args([
            "demo",
            "--dir",
            dir.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--panel-addr",
            "127.0.0.1:0",
            "--insecure",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !facts.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the demo exited early");
        assert!(Instant::now() < deadline, "the demo did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let facts = serde_json::from_slice(&std::fs::read(&facts).unwrap()).unwrap();
    (child, facts)
}

/// A gateway just started, with what its callers need.
struct Started {
    gateway: crate::common::Running,
    url: String,
    token: String,
    cprs: Vec<String>,
}

/// Starts a gateway with `start`, hammers it with four callers and kills it (`kill -9`) at a
/// random moment, `cycles()` times; returns the request id of every lookup a caller saw
/// answered.
fn answered_across_kills(mut start: impl FnMut() -> Started) -> BTreeSet<String> {
    let answered: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Lcg(2017);
    for _ in 0..cycles() {
        let Started {
            mut gateway,
            url,
            token,
            cprs,
        } = start();
        // Four callers hammer the gateway until it dies under them.
        let load = {
            let answered = Arc::clone(&answered);
            runtime.spawn(async move {
                let mut callers = Vec::new();
                for caller in 0..4 {
                    let (url, token, cprs, answered) = (
                        url.clone(),
                        token.clone(),
                        cprs.clone(),
                        Arc::clone(&answered),
                    );
                    callers.push(tokio::spawn(async move {
                        let Ok(mut client) = LookupServiceClient::connect(url).await else {
                            return;
                        };
                        for i in 0.. {
                            let mut request = tonic::Request::new(LookupRequest {
                                cpr: cprs[(caller + i) % cprs.len()].clone(),
                                purpose: Purpose::PrepareMeeting as i32,
                                ..LookupRequest::default()
                            });
                            request.metadata_mut().insert(
                                "authorization",
                                format!("Bearer {token}").parse().unwrap(),
                            );
                            match client.lookup(request).await {
                                Ok(response) => {
                                    let id = response.into_inner().request_id;
                                    answered.lock().unwrap().insert(id);
                                }
                                Err(_) => return,
                            }
                        }
                    }));
                }
                for c in callers {
                    let _ = c.await;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20 + rng.next(300)));
        gateway.0.kill().unwrap(); // SIGKILL: no shutdown, no final checkpoint.
        gateway.0.wait().unwrap();
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), load).await })
            .expect("the load stopped after the kill")
            .unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() > 100,
        "too little load to prove anything: {}",
        answered.len()
    );
    answered
}

/// Every answered lookup is in the log, each start is itself recorded, and every start after
/// a kill -9 says it was unclean.
fn assert_every_answer_logged(store: &mut dyn AuditStore, answered: &BTreeSet<String>) {
    let mut records: Vec<samblik_audit::AuditRecord> = Vec::new();
    for chain in store.chains().unwrap() {
        for r in store.records(&chain, 0, usize::MAX).unwrap() {
            records.push(serde_json::from_str(&r.body).unwrap());
        }
    }
    let logged: BTreeSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    let missing = answered
        .iter()
        .filter(|id| !logged.contains(id.as_str()))
        .count();
    assert_eq!(missing, 0, "answered lookups missing from the audit log");
    use samblik_audit::{Maintenance, PreviousStop};
    let starts: Vec<PreviousStop> = records
        .iter()
        .filter_map(|r| match Maintenance::of(r) {
            Some(Maintenance::WriterStarted { previous_stop, .. }) => Some(previous_stop),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len() as u64, cycles());
    assert_eq!(starts[0], PreviousStop::FirstStart);
    assert!(
        starts[1..].iter().all(|s| *s == PreviousStop::Unclean),
        "{starts:?}"
    );
}

/// The demo, its audit log in SQLite in its data directory.
#[test]
fn every_answered_lookup_survives_kill_9_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run(&["synth", "--seed", "9", "--citizens", "2000", "--out", d]);
    let mut token = String::new();
    let answered = answered_across_kills(|| {
        let (gateway, facts) = start_demo(dir.path());
        let gateway = crate::common::Running(gateway);
        let user = facts["users"][0]["id"].as_str().unwrap();
        if token.is_empty() {
            token = run(&["token", "--dir", d, "--user", user])
                .trim()
                .to_owned();
        }
        Started {
            gateway,
            url: facts["gateway_url"].as_str().unwrap().to_owned(),
            token: token.clone(),
            cprs: facts["users"][0]["citizens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect(),
        }
    });

    // After the last crash the chain verifies, and every answered lookup is in it.
    let verified = run(&["audit", "verify", "--dir", d]);
    assert!(verified.contains("verified"), "{verified}");
    let keys =
        samblik_audit::AtRestKeys::load(&dir.path().join(samblik::demo::AUDIT_DATA_KEY_FILE))
            .unwrap();
    let mut store = samblik_audit::sqlite::SqliteStore::open_read_only(
        &dir.path().join("audit.db"),
        Arc::new(keys),
    )
    .unwrap();
    assert_every_answer_logged(&mut store, &answered);
}

/// `samblik serve` from a config file, its audit log in PostgreSQL, a source in a process of
/// its own that outlives every kill.
#[test]
fn every_answered_lookup_survives_kill_9_on_postgresql_and_the_chain_verifies() {
    let setup = crate::common::postgres_setup("crash", "replica-crash");
    let crate::common::PostgresSetup {
        config,
        url,
        token,
        jobcenter_cprs: cprs,
        ..
    } = &setup;
    let answered = answered_across_kills(|| {
        let (gateway, addr) = crate::common::start_serve(config, url);
        Started {
            gateway,
            url: format!("http://{addr}"),
            token: token.clone(),
            cprs: cprs.clone(),
        }
    });

    let verified = Command::new(SAMBLIK)
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .env("SAMBLIK_AUDIT_DATABASE_URL", url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && text.contains("verified"),
        "{text}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let keys =
        samblik_audit::AtRestKeys::load(&config.parent().unwrap().join("keys/audit-data.keys"))
            .unwrap();
    let mut store =
        samblik_audit::postgres::PostgresStore::open_read_only(url, Arc::new(keys)).unwrap();
    assert_every_answer_logged(&mut store, &answered);
}
