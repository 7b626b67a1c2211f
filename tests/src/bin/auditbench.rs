//! The audit writer alone: records made durable per second one at a time (each waiting for its
//! own fsync) and by many writers at once (group commit), on the same disk in the same run. How
//! to read what it prints: `docs/load-tools.md`.
//!
//! `cargo run --release -p samblik-tests --bin auditbench -- [--dir /var/tmp] [--seconds 5] [--writers 256] [--no-fsync] [--postgres ADMIN_URL]`
//!
//! `--postgres ADMIN_URL`: PostgreSQL instead of SQLite, a database of its own per run on that
//! server (`--no-fsync` then means `synchronous_commit = off`).

use samblik_audit::AuditStore;
use samblik_audit::Durability;
use samblik_audit::postgres::PostgresStore;
use samblik_audit::sqlite::SqliteStore;
use samblik_audit::{
    Action, Actor, AtRestKeys, AuditEvent, AuditLog, CaseEntry, CheckpointSigner, Outcome,
    SourceEntry, WriterOptions,
};
use samblik_tests::ScratchDatabases;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A lookup's record, as varied as a municipality's: a random request id, one of 240 callers in
/// four departments, zero to three cases per source at tiers 1–3 with their field paths (a tier-3
/// case lists its documents). Deterministic in `i`. Varied, because the embedded store
/// compresses bodies with a dictionary trained on earlier ones, and identical records would
/// flatter it.
fn event(i: usize) -> AuditEvent {
    let mut rng = Mix(i as u64);
    const DEPARTMENTS: [&str; 4] = ["jobcenter", "child-welfare", "integration", "adult-social"];
    const FIRST: [&str; 16] = [
        "Anne", "Mette", "Lars", "Søren", "Fatima", "Jonas", "Ida", "Mads", "Camilla", "Ahmad",
        "Louise", "Rasmus", "Sofie", "Henrik", "Nadia", "Peter",
    ];
    const LAST: [&str; 16] = [
        "Jensen",
        "Nielsen",
        "Hansen",
        "Pedersen",
        "Andersen",
        "Christensen",
        "Larsen",
        "Sørensen",
        "Rasmussen",
        "Jørgensen",
        "Petersen",
        "Madsen",
        "Kristensen",
        "Olsen",
        "Thomsen",
        "Yilmaz",
    ];
    const PURPOSES: [&str; 4] = [
        "prepare-meeting",
        "coordinate-plan",
        "assess-need",
        "follow-up",
    ];
    let caller = rng.below(240);
    let department = DEPARTMENTS[caller % 4];
    let sources = [
        ("child-welfare", "BF"),
        ("jobcenter", "JC"),
        ("integration", "IN"),
    ]
    .into_iter()
    .map(|(source, prefix)| SourceEntry {
        source_id: source.into(),
        status: "ok".into(),
        cases: (0..rng.below(4))
            .map(|_| {
                let case_id = format!(
                    "{prefix}-20{}-{:06}",
                    20 + rng.below(7),
                    rng.below(1_000_000)
                );
                let tier = 1 + rng.below(3) as u8;
                let mut fields: Vec<String> = [
                    "existence.case_type",
                    "existence.state",
                    "existence.opened_on",
                    "existence.responsible.name",
                    "existence.responsible.unit",
                    "existence.responsible.phone",
                    "existence.responsible.email",
                ]
                .map(String::from)
                .to_vec();
                if tier >= 2 {
                    fields.extend(
                        [
                            "selected.interventions",
                            "selected.goals",
                            "selected.next_follow_up_on",
                        ]
                        .map(String::from),
                    );
                }
                if tier == 3 {
                    let documents = 1 + rng.below(6);
                    fields.extend(
                        (1..=documents).map(|d| format!("full.documents[{case_id}-D{d:02}]")),
                    );
                }
                let (basis, rule) = match tier {
                    1 => ("statute:existence-and-contact", "statute"),
                    2 => ("consent", "consent-selected"),
                    _ => ("own-department", "own-department"),
                };
                CaseEntry {
                    case_id,
                    tier,
                    basis: Some(basis.into()),
                    rule_ids: vec![rule.into()],
                    fields,
                }
            })
            .collect(),
        flag: None,
    })
    .collect();
    AuditEvent {
        request_id: format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            rng.next() as u32,
            rng.below(1 << 16),
            rng.below(1 << 12),
            rng.below(1 << 16),
            rng.next() >> 16
        ),
        action: Action::Lookup,
        actor: Actor {
            caller_id: format!("cw-{department}-{caller:03}"),
            name: format!("{} {}", FIRST[caller % 16], LAST[caller / 16 % 16]),
            department: department.into(),
            municipality: "999".into(),
            system: None,
        },
        cpr: samblik_proto::Cpr::parse(&format!("0101{:06}", rng.below(1_000_000))).ok(),
        purpose: Some(PURPOSES[rng.below(4)].into()),
        break_glass_reason: None,
        outcome: Outcome::Answered,
        detail: None,
        reason: None,
        sources,
        policy_version: "sha256:ff1c58e0ab48dde9e407f480133d70e86feb1fb8e211f9fbfe0f5b168f71a99a"
            .into(),
    }
}

/// SplitMix64: a few lines of deterministic variety, no dependency.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// CPU seconds the audit writer's thread has used so far (Linux: from `/proc`), to tell a writer
/// kept busy from one waiting for work. `None` where that cannot be read.
fn writer_cpu() -> Option<f64> {
    // Clock ticks per second: 100 on every Linux this runs on (`getconf CLK_TCK`).
    const TICKS: f64 = 100.0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // "samblik-audit-writer", as the kernel keeps it (15 bytes).
        if name.trim_end() != "samblik-audit-w" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // The fields after the name, which is in parentheses: utime and stime are 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        return Some(ticks / TICKS);
    }
    None
}

/// `--no-fsync` measures the writer's CPU ceiling: the same work without waiting for the disk.
fn no_fsync() -> bool {
    std::env::args().any(|a| a == "--no-fsync")
}

/// A store named `name`: a SQLite file in `dir`, or the PostgreSQL database at `postgres`.
fn open(dir: &std::path::Path, name: &str, postgres: Option<&str>) -> anyhow::Result<AuditLog> {
    let durability = if no_fsync() {
        Durability::Off
    } else {
        Durability::Full
    };
    // The data keys, as a configured gateway's: sealing and hashing are part of the cost.
    let keys = Arc::new(AtRestKeys::load_or_create(
        &dir.join(format!("{name}-data.keys")),
    )?);
    let store: Box<dyn AuditStore> = match postgres {
        Some(url) => Box::new(PostgresStore::connect_with(url, durability, keys)?),
        None => Box::new(SqliteStore::open(
            &dir.join(format!("{name}.db")),
            durability,
            keys,
        )?),
    };
    let signer = CheckpointSigner::load_or_create(&dir.join(format!("{name}.key")))?;
    Ok(AuditLog::start(store, signer, WriterOptions::new(name))?)
}

samblik::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut dir: Option<PathBuf> = None;
    let mut postgres: Option<ScratchDatabases> = None;
    let mut urls: [Option<String>; 2] = [None, None];
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
            "--postgres" => {
                let mut databases = ScratchDatabases::on(&value, "auditbench");
                // The PostgreSQL client blocks: off the runtime's own work.
                urls = tokio::task::block_in_place(|| -> anyhow::Result<_> {
                    Ok([
                        Some(databases.create("single")?),
                        Some(databases.create("group")?),
                    ])
                })?;
                postgres = Some(databases);
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let tmp = match &dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let run_for = Duration::from_secs(seconds);

    // One record at a time: each append waits for its own commit and fsync.
    let single = tokio::task::block_in_place(|| open(tmp.path(), "single", urls[0].as_deref()))?;
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < run_for {
        single.append(event(n)).await?;
        n += 1;
    }
    let single_rate = n as f64 / started.elapsed().as_secs_f64();
    tokio::task::block_in_place(|| single.close());

    // Many writers at once: the writer commits whatever is waiting in one transaction.
    let group = Arc::new(tokio::task::block_in_place(|| {
        open(tmp.path(), "group", urls[1].as_deref())
    })?);
    let busy_before = writer_cpu();
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
    let busy = writer_cpu()
        .zip(busy_before)
        .map(|(after, before)| (after - before) / started.elapsed().as_secs_f64());

    let store = match (&postgres, no_fsync()) {
        (None, true) => format!(
            "SQLite WAL synchronous=OFF, nothing fsync'ed, in {}",
            tmp.path().display()
        ),
        (None, false) => format!(
            "SQLite WAL synchronous=NORMAL, the log fsync'ed before each receipt, in {}",
            tmp.path().display()
        ),
        (Some(_), true) => "PostgreSQL, synchronous_commit=off".to_owned(),
        (Some(_), false) => {
            "PostgreSQL, synchronous_commit=on (WAL flushed before each receipt)".to_owned()
        }
    };
    println!(
        "audit writer ({} allocator), {}s each, {store}",
        samblik::ALLOCATOR_NAME,
        seconds,
    );
    println!("single record per fsync : {single_rate:>9.0} records/s");
    println!("group commit, {writers} writers: {group_rate:>9.0} records/s");
    if let Some(busy) = busy {
        // Well below a whole core, the writer waits for work (or for a core): the group rate
        // is then the writers' as much as the writer's.
        println!(
            "the writer's thread busy: {:.0} % of a core during the group phase",
            busy * 100.0
        );
    }
    println!(
        "ratio group / single: {:.1} (target >= 20)",
        group_rate / single_rate
    );
    if let Ok(group) = Arc::try_unwrap(group) {
        tokio::task::block_in_place(|| group.close());
    }
    tokio::task::block_in_place(|| drop(postgres));
    Ok(())
}
