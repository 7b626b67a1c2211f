//! The audit writer alone: how many records per second it makes durable when every caller waits
//! for its own fsync one after another (the disk's single-record fsync rate) and when many
//! callers write at once (group commit), on the same disk in the same run.
//!
//! `cargo run --release -p samblik-tests --bin auditbench -- [--dir /var/tmp] [--seconds 5] [--writers 256] [--no-fsync]`

use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::{
    Action, Actor, AuditEvent, AuditLog, CaseEntry, CheckpointSigner, Outcome, SourceEntry,
    WriterOptions,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("bench-{i}"),
        action: Action::Lookup,
        actor: Actor {
            caller_id: format!("cw-jobcenter-{:03}", i % 60),
            name: "Bench Caseworker".into(),
            department: "jobcenter".into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: Some(format!("0101{:06}", i % 1_000_000)),
        purpose: Some("prepare-meeting".into()),
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: None,
        sources: ["child-welfare", "jobcenter", "integration"]
            .into_iter()
            .map(|s| SourceEntry {
                source_id: s.into(),
                status: "ok".into(),
                cases: vec![CaseEntry {
                    case_id: format!("{s}-{i}"),
                    tier: 1,
                    basis: Some("minimum-variation".into()),
                    rule_ids: vec!["minimum-variation/existence-and-contact".into()],
                    fields: vec![
                        "existence.case_type".into(),
                        "existence.state".into(),
                        "existence.responsible.name".into(),
                        "existence.responsible.phone".into(),
                    ],
                }],
            })
            .collect(),
        policy_version: "minimum-variation/v1".into(),
    }
}

/// `--no-fsync` measures the writer's CPU ceiling: the same work without waiting for the disk.
fn no_fsync() -> bool {
    std::env::args().any(|a| a == "--no-fsync")
}

fn open(dir: &std::path::Path, name: &str) -> anyhow::Result<AuditLog> {
    let durability = if no_fsync() {
        Durability::Off
    } else {
        Durability::Full
    };
    let store = SqliteStore::open(&dir.join(format!("{name}.db")), durability)?;
    let signer = CheckpointSigner::load_or_create(&dir.join(format!("{name}.key")))?;
    Ok(AuditLog::start(
        Box::new(store),
        signer,
        WriterOptions::new(name),
    )?)
}

samblik_gateway::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut dir: Option<PathBuf> = None;
    let (mut seconds, mut writers) = (5u64, 256usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-fsync" {
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => dir = Some(value.into()),
            "--seconds" => seconds = value.parse()?,
            "--writers" => writers = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let tmp = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let run_for = Duration::from_secs(seconds);

    // One record at a time: each append waits for its own commit and fsync.
    let single = open(tmp.path(), "single")?;
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < run_for {
        single.append(event(n)).await?;
        n += 1;
    }
    let single_rate = n as f64 / started.elapsed().as_secs_f64();
    single.close();

    // Many writers at once: the writer commits whatever is waiting in one transaction.
    let group = Arc::new(open(tmp.path(), "group")?);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let group = Arc::clone(&group);
        tasks.spawn(async move {
            let mut done = 0usize;
            while started.elapsed() < run_for {
                if group.append(event(w * 1_000_000 + done)).await.is_err() {
                    break;
                }
                done += 1;
            }
            done
        });
    }
    let mut total = 0usize;
    while let Some(done) = tasks.join_next().await {
        total += done?;
    }
    let group_rate = total as f64 / started.elapsed().as_secs_f64();

    println!(
        "audit writer ({} allocator), {}s each, SQLite WAL synchronous={} in {}",
        samblik_gateway::ALLOCATOR_NAME,
        seconds,
        if no_fsync() {
            "OFF, nothing fsync'ed"
        } else {
            "NORMAL, the log fsync'ed before each receipt"
        },
        tmp.path().display()
    );
    println!("single record per fsync : {single_rate:>9.0} records/s");
    println!("group commit, {writers} writers: {group_rate:>9.0} records/s");
    println!(
        "ratio group / single: {:.1} (target >= 20)",
        group_rate / single_rate
    );
    if let Ok(group) = Arc::try_unwrap(group) {
        group.close();
    }
    Ok(())
}
