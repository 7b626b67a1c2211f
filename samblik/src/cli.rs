//! The `samblik` command line: `demo`, `synth`, `source`, `token`, `lookup`, `serve`.

use crate::demo::{self, DemoOptions};
use anyhow::Context;
use clap::{Parser, Subcommand};
use samblik_gateway::config::{ClientAuth, Config, TlsConfig};
use samblik_proto::v1::Purpose;
use samblik_reference::ReferenceSource;
use samblik_synth::{Department, SynthConfig, store};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "samblik",
    version,
    about = "Samblik: a federated, read-only lookup of a citizen's cases across a municipality's departments"
)]
struct Cli {
    /// Log as JSON lines instead of text (logs go to stderr; RUST_LOG sets the level).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on loopback with a synthetic municipality: four sources and the gateway.
    Demo {
        /// Data directory (generated on first run, reused after).
        #[arg(long, default_value = "samblik-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2017)]
        seed: u64,
        /// Inhabitants of the synthetic municipality (an average Danish one has ~43,000).
        #[arg(long, default_value_t = 43_000)]
        citizens: usize,
        /// The gateway's gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
        /// The lookup panel's HTTPS address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        panel_addr: SocketAddr,
        /// Plaintext instead of TLS (gateway) and mutual TLS (sources). Never outside a demo.
        #[arg(long)]
        insecure: bool,
    },
    /// Generate a synthetic municipality into a data directory.
    Synth {
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 43_000)]
        citizens: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one reference source service over a data directory: over mutual TLS, where only a
    /// client with a certificate of --client-ca (the gateway's) gets an answer, or in plaintext
    /// with --insecure.
    #[command(group(
        clap::ArgGroup::new("transport")
            .required(true)
            .args(["tls_cert", "insecure"])
    ))]
    Source {
        /// child-welfare, jobcenter or integration.
        #[arg(long)]
        kind: Department,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The source's certificate chain (PEM); re-read when it changes.
        #[arg(long, requires_all = ["tls_key", "client_ca"])]
        tls_cert: Option<PathBuf>,
        /// The source's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The CA the gateway's client certificate must chain to (PEM); a client without such a
        /// certificate is refused at the handshake.
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Plaintext, no TLS: anyone who reaches the port can read citizens' cases. Only for a
        /// demo or a test on loopback.
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
        insecure: bool,
    },
    /// Print a signed access token for a demo user.
    Token {
        /// The demo's data directory.
        #[arg(long, default_value = "samblik-demo")]
        dir: PathBuf,
        /// The user id, e.g. cw-jobcenter-003 (demo.json lists the demo users).
        #[arg(long)]
        user: String,
        /// How long the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Look up a citizen and print a readable overview.
    Lookup {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        cpr: String,
        /// prepare-meeting, draft-plan, follow-up or coordinate.
        #[arg(long, value_parser = parse_purpose)]
        purpose: Purpose,
        /// Only these sources (repeatable).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Break the glass: look up a citizen you have no open case for, stating why in writing.
        /// The answer is capped and the lookup is marked for the auditors' review.
        #[arg(long, value_name = "REASON")]
        break_glass: Option<String>,
    },
    /// The disclosure policy: check a policy file, or explain what a caller would see.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Ask a gateway or a source whether it serves (grpc.health.v1 Check): prints the status
    /// and exits 0 only when SERVING. For container health checks and Kubernetes exec probes,
    /// which cannot speak gRPC over TLS themselves.
    Health {
        /// The service's address, e.g. https://127.0.0.1:50051.
        #[arg(long, default_value = "https://127.0.0.1:50051")]
        addr: String,
        /// The health service name to ask about; "" is the whole server.
        #[arg(long, default_value = "")]
        service: String,
        #[command(flatten)]
        tls: ClientTlsArgs,
        /// No answer within this long counts as not serving.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Run the gateway from a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// This replica's audit chain instead of the config's `audit.chain`: replicas that share
        /// one config (a Kubernetes Deployment passes `$(POD_NAME)`) each need their own chain.
        #[arg(long)]
        audit_chain: Option<String>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// How to reach the gateway and as whom.
#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// The gateway, e.g. https://127.0.0.1:50051 (http:// for `demo --insecure`).
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    addr: String,
    /// The access token (or set SAMBLIK_TOKEN).
    #[arg(long, env = "SAMBLIK_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// How a client command trusts a server over TLS, and who it is.
#[derive(Debug, clap::Args)]
struct ClientTlsArgs {
    /// The CA (PEM) the server's certificate chains to, for an https:// address
    /// (the demo's is in demo.json → ca_file).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS, e.g. a fagsystem's.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The name the server's certificate must carry, where it is not the address's host
    /// (e.g. a probe in the gateway's container dials 127.0.0.1).
    #[arg(long)]
    tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    fn client_tls(&self) -> crate::client::ClientTls {
        crate::client::ClientTls {
            ca_file: self.cacert.clone(),
            identity: self.cert.clone().zip(self.key.clone()),
            server_name: self.tls_server_name.clone(),
        }
    }
}

impl GatewayArgs {
    fn tls(&self) -> crate::client::ClientTls {
        self.tls.client_tls()
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

// Parsed once from the command line: the size of a variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Load and validate a policy the way the gateway does at start-up, and print its version
    /// and rules. Exits non-zero if the gateway would refuse to start.
    Check {
        /// A gateway config file (its [policy] section and sources); without it, the default
        /// policy over the demo's sources.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A Cedar policy file to check instead of the configured one.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// What would a caller see for a citizen, and why? A dry run for the data-protection
    /// officer (role admin): no case content is disclosed; the explanation is audited.
    Explain {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        cpr: String,
        #[arg(long, value_parser = parse_purpose)]
        purpose: Purpose,
        /// The caller to explain for, e.g. cw-jobcenter-003.
        #[arg(long)]
        caller_id: String,
        /// The caller's department, e.g. jobcenter.
        #[arg(long)]
        caller_department: String,
        /// The caller's roles (repeatable).
        #[arg(long = "role", default_value = "caseworker")]
        roles: Vec<String>,
        /// Explain a break-the-glass lookup.
        #[arg(long)]
        break_glass: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every chain of the audit log: hashes, links, indexed columns and signed
    /// checkpoints. Names the first bad record and exits non-zero if there is one.
    Verify {
        /// The demo's data directory.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        dir: Option<PathBuf>,
        /// A gateway config file (its [audit] section).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Search the access log (role auditor), newest first. The search is itself audited.
    Search {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        filter: crate::audit_cli::FilterArgs,
        /// Show at most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Export matching records as CSV or JSON lines (role auditor). Audited.
    Export {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        filter: crate::audit_cli::FilterArgs,
        /// csv or jsonl.
        #[arg(long, value_parser = parse_export_format, default_value = "csv")]
        format: samblik_proto::v1::ExportFormat,
        /// Write here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The review queue: break-the-glass lookups and anomaly flags (role auditor).
    Review {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// From (default: 7 days before --until).
        #[arg(long, value_parser = crate::audit_cli::parse_time)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Until (default: now).
        #[arg(long, value_parser = crate::audit_cli::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Also items already reviewed.
        #[arg(long)]
        all: bool,
    },
    /// Mark a review item as reviewed, with what you concluded (role auditor). Audited.
    MarkReviewed {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The item's key, as `samblik audit review` prints it.
        key: String,
        #[arg(long)]
        note: String,
        /// The item's count as `samblik audit review` printed it: the mark covers that many,
        /// and a window that has grown since stays in the queue. Unset: the item as it is now.
        #[arg(long)]
        count: Option<u32>,
    },
    /// Who looked at my data (role citizen; `samblik token --user citizen:CPR` in the demo).
    MyLog {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Prune the audit log: delete the gateway chain's records older than the retention period,
    /// cutting at a signed checkpoint, and write the prune as a signed record (`audit verify`
    /// still passes). Consents and access requests are kept.
    ///
    /// This runs an audit writer on the configured chain, which must have no other writer: stop
    /// the gateway of that chain first. A running gateway prunes its own chain on a schedule
    /// ([audit] retention_days, prune_interval_secs).
    Prune {
        /// The demo's data directory.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        dir: Option<PathBuf>,
        /// A gateway config file (its [audit] section).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Prune records older than this many days; default: the config's retention_days
        /// (183 for the demo). 0 prunes everything up to the last signed checkpoint.
        #[arg(long)]
        older_than_days: Option<u32>,
        /// Prune this chain instead of the configured one, e.g. that of a replica that is gone
        /// (no running gateway may write it).
        #[arg(long)]
        chain: Option<String>,
    },
    /// Acknowledge a break the gateway's start-up check found in its chain (records cut or
    /// rewritten since the last signed checkpoint, or a cut the witness names), so that the
    /// gateway writes it again. Writes a signed record of the break, who acknowledged it and
    /// why; verification keeps naming the break itself. The gateway must be stopped.
    AcknowledgeBreak {
        /// The demo's data directory.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        dir: Option<PathBuf>,
        /// A gateway config file (its [audit] section).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Who acknowledges (recorded).
        #[arg(long)]
        by: String,
        /// Why the chain may be written again, e.g. what was restored (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Rotate the audit data key: append a fresh data key to the data key file
    /// (`[audit] data_key_file`). It seals from the next start of every gateway given the file;
    /// the keys before it stay to open what they sealed — never remove one while anything it
    /// sealed is kept. The index key is not changed.
    AddDataKey {
        /// The demo's data directory.
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        dir: Option<PathBuf>,
        /// A gateway config file (its [audit] section).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_export_format(text: &str) -> Result<samblik_proto::v1::ExportFormat, String> {
    match text {
        "csv" => Ok(samblik_proto::v1::ExportFormat::Csv),
        "jsonl" | "json-lines" => Ok(samblik_proto::v1::ExportFormat::JsonLines),
        _ => Err("expected csv or jsonl".to_owned()),
    }
}

impl GatewayArgs {
    /// Connects, for the audit commands.
    async fn audit_call(&self) -> anyhow::Result<crate::audit_cli::Call> {
        Ok(crate::audit_cli::Call {
            channel: crate::client::connect(&self.addr, &self.tls()).await?,
            token: self.token.clone(),
            timeout: self.timeout(),
        })
    }
}

/// Runs an audit command against the gateway.
async fn audit_command(command: AuditCommand) -> anyhow::Result<()> {
    use crate::audit_cli as a;
    let printed = match command {
        AuditCommand::Verify { .. }
        | AuditCommand::Prune { .. }
        | AuditCommand::AcknowledgeBreak { .. }
        | AuditCommand::AddDataKey { .. } => {
            anyhow::bail!(
                "verify, prune, acknowledge-break and add-data-key run on the store itself"
            )
        }
        AuditCommand::Search {
            gateway,
            filter,
            limit,
        } => a::search(&gateway.audit_call().await?, &filter, limit).await,
        AuditCommand::Export {
            gateway,
            filter,
            format,
            out,
        } => {
            let call = gateway.audit_call().await?;
            let written = match &out {
                Some(path) => {
                    let mut file = std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    a::export(&call, &filter, format, &mut file).await
                }
                None => a::export(&call, &filter, format, &mut std::io::stdout().lock()).await,
            };
            written.map(|n| match &out {
                Some(path) => format!("{n} bytes written to {}\n", path.display()),
                None => String::new(),
            })
        }
        AuditCommand::Review {
            gateway,
            from,
            until,
            all,
        } => a::review(&gateway.audit_call().await?, from, until, all).await,
        AuditCommand::MarkReviewed {
            gateway,
            key,
            note,
            count,
        } => a::mark_reviewed(&gateway.audit_call().await?, key, note, count).await,
        AuditCommand::MyLog { gateway } => a::my_log(&gateway.audit_call().await?).await,
    };
    print!("{}", printed.map_err(status_error)?);
    Ok(())
}

fn parse_purpose(code: &str) -> Result<Purpose, String> {
    Purpose::from_code(code)
        .ok_or_else(|| "expected prepare-meeting, draft-plan, follow-up or coordinate".to_owned())
}

/// A gRPC status as a one-line error, with a refusal's reason; anything else as it is.
fn status_error(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<tonic::Status>() {
        Ok(status) => match samblik_gateway::error::Reason::of_status(&status) {
            Some(reason) => {
                anyhow::anyhow!("{:?} ({reason}): {}", status.code(), status.message())
            }
            None => anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
        },
        Err(e) => e,
    }
}

/// Runs the command line; the exit code says whether it succeeded.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Verifies an audit store. Runs on a thread of its own: the PostgreSQL client blocks.
fn verify_audit(
    open: impl FnOnce() -> Result<Box<dyn samblik_audit::AuditStore>, samblik_audit::AuditError>
    + Send
    + 'static,
    key: &std::path::Path,
    witness: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
    let public = public_key_path(key);
    let key = load_verifying_key(&public)
        .with_context(|| format!("cannot read the checkpoint key {}", public.display()))?;
    let witnessed = witness
        .map(samblik_audit::witness::Witness::read)
        .transpose()?;
    let (verified, findings) = std::thread::spawn(move || -> anyhow::Result<_> {
        let mut store = open()?;
        let verified = samblik_audit::verify::verify_store(&mut *store, &key);
        let findings = match &witnessed {
            Some(w) => samblik_audit::witness::check_witness(&mut *store, &key, w)?,
            None => Vec::new(),
        };
        Ok((verified, findings))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the verification thread panicked"))??;
    // What the witness finds first: a cut with its checkpoints leaves a chain that verifies.
    for (i, finding) in findings.iter().enumerate() {
        println!(
            "witness problem {}: {}",
            i + 1,
            crate::audit_cli::shown(&finding.to_string())
        );
    }
    let summaries = match verified {
        Ok(summaries) => summaries,
        Err(samblik_audit::verify::VerifyError::Broken(breaks)) => {
            // Every problem found; the error names the first again.
            for s in &breaks.verified {
                print_verified(s);
            }
            for (i, broken) in std::iter::once(&breaks.first)
                .chain(&breaks.further)
                .enumerate()
            {
                println!(
                    "problem {}: {}",
                    i + 1,
                    crate::audit_cli::shown(&broken.to_string())
                );
            }
            if breaks.unlisted > 0 {
                println!("… and {} further problems not listed", breaks.unlisted);
            }
            anyhow::bail!(
                "the audit log does not verify: {}",
                crate::audit_cli::shown(&breaks.to_string())
            );
        }
        Err(e) => return Err(e.into()),
    };
    // An empty store verifies trivially: most likely the wrong store, never a pass.
    anyhow::ensure!(
        !summaries.is_empty(),
        "the audit store holds no chain: nothing was verified (is this the right store?)"
    );
    for s in &summaries {
        print_verified(s);
    }
    if let Some(first) = findings.first() {
        anyhow::bail!(
            "the audit log does not match its witness: {}",
            crate::audit_cli::shown(&first.to_string())
        );
    }
    match witness {
        Some(path) => println!(
            "witness {}: every chain holds its newest witnessed checkpoint",
            path.display()
        ),
        None => println!(
            "no witness configured: a cut of the newest records with their checkpoints would not be found"
        ),
    }
    Ok(())
}

fn print_verified(s: &samblik_audit::verify::ChainSummary) {
    let pruned = if s.first_seq > 1 {
        format!("; records 1..={} pruned", s.first_seq - 1)
    } else {
        String::new()
    };
    println!(
        "chain {}: {} records, {} signed checkpoints, head {} — verified{pruned}",
        crate::audit_cli::shown(&s.chain),
        s.records,
        s.checkpoints,
        s.head_hash
    );
}

/// Prunes the configured chain of an audit store through a writer of its own, so the prune is
/// chained and signed like every other record.
/// The audit section of the demo's directory or of a config file, for the commands that run on
/// the store itself.
fn audit_config_of(
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<samblik_gateway::config::AuditConfig> {
    match (dir, config) {
        (Some(dir), _) => {
            let db = dir.join(demo::AUDIT_DB_FILE);
            anyhow::ensure!(db.is_file(), "no audit log at {}", db.display());
            Ok(demo::demo_audit_config(&dir))
        }
        (None, Some(config)) => Ok(Config::load(&config)?.audit),
        (None, None) => anyhow::bail!("give --dir or --config"),
    }
}

/// Starts the configured chain's writer with the acknowledgement, which writes the signed
/// start-up record naming the break, and stops it cleanly.
async fn acknowledge_break(
    audit: samblik_gateway::config::AuditConfig,
    by: String,
    reason: String,
) -> anyhow::Result<()> {
    use samblik_audit::{Acknowledgement, AuditLog, CheckpointSigner};
    anyhow::ensure!(
        !by.trim().is_empty() && !reason.trim().is_empty(),
        "--by and --reason must say who acknowledges the break and why"
    );
    let key = audit.signing_key_file.clone();
    anyhow::ensure!(key.is_file(), "no audit signing key at {}", key.display());
    let open = samblik_gateway::server::audit_store_opener(&audit)?;
    let mut options = samblik_gateway::server::audit_writer_options(&audit, "");
    options.retention = None;
    options.acknowledge_break = Some(Acknowledgement { by, reason });
    let chain = options.chain.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let signer = CheckpointSigner::load_or_create(&key)?;
        AuditLog::start_with(open, signer, options)?.close();
        Ok(())
    })
    .await??;
    println!("chain {chain}: the break is acknowledged in a signed record; the gateway may start");
    Ok(())
}

async fn prune_audit(
    audit: samblik_gateway::config::AuditConfig,
    older_than_days: Option<u32>,
) -> anyhow::Result<()> {
    use samblik_audit::{AuditLog, CheckpointSigner};
    let days = older_than_days.unwrap_or(audit.retention_days);
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
    let key = audit.signing_key_file.clone();
    // A new key could not sign on for the old checkpoints: never create one here.
    anyhow::ensure!(key.is_file(), "no audit signing key at {}", key.display());
    let open = samblik_gateway::server::audit_store_opener(&audit)?;
    let mut options = samblik_gateway::server::audit_writer_options(&audit, "");
    // Prune once, now, with the cutoff given here.
    options.retention = None;
    let chain = options.chain.clone();
    let log = tokio::task::spawn_blocking(move || -> anyhow::Result<AuditLog> {
        let signer = CheckpointSigner::load_or_create(&key)?;
        Ok(AuditLog::start_with(open, signer, options)?)
    })
    .await??;
    let mut result = Ok(());
    loop {
        match log.prune(cutoff, "samblik audit prune").await {
            Ok(Some(report)) => {
                println!(
                    "chain {}: pruned records {}..={} ({} records older than {}); prune record at seq {}",
                    report.chain,
                    report.from_seq,
                    report.through_seq,
                    report.records,
                    report.cutoff,
                    report.record_seq
                );
                if !report.more {
                    break;
                }
            }
            Ok(None) => {
                println!(
                    "chain {chain}: no records older than {} up to a signed checkpoint; nothing pruned",
                    cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                break;
            }
            Err(e) => {
                result = Err(anyhow::Error::new(e).context(format!("cannot prune chain {chain}")));
                break;
            }
        }
    }
    // Stopping writes the signed clean-stop record.
    tokio::task::spawn_blocking(move || log.close()).await?;
    result
}

/// How long a stopping server waits for calls in flight before it closes what is left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `server` until it ends; once `shutdown` is cancelled it gets [`SHUTDOWN_GRACE`] to finish
/// the calls in flight, so an idle or stuck client cannot hold the process open.
async fn with_grace<E>(
    server: impl Future<Output = Result<(), E>>,
    shutdown: &CancellationToken,
) -> Result<(), E> {
    tokio::select! {
        result = server => result,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "grace period over; closing the remaining connections");
            Ok(())
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo {
            dir,
            seed,
            citizens,
            addr,
            panel_addr,
            insecure,
        } => {
            let options = DemoOptions {
                dir,
                seed,
                citizens,
                addr,
                panel_addr,
                insecure,
            };
            let shutdown = shutdown_on_signal();
            with_grace(demo::run(options, shutdown.clone()), &shutdown).await
        }
        Command::Synth {
            seed,
            citizens,
            out,
        } => {
            let started = std::time::Instant::now();
            let data = samblik_synth::generate(&SynthConfig::new(seed, citizens))?;
            store::write(&out, &data)?;
            println!(
                "{}: {} citizens, {} caseworkers, {} cases written to {} in {:.1} s",
                data.municipality.name,
                data.citizens.len(),
                data.caseworkers.len(),
                data.cases.len(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Source {
            kind,
            data,
            listen,
            tls_cert,
            tls_key,
            client_ca,
            insecure,
        } => {
            let source =
                Arc::new(ReferenceSource::load(&data, kind).with_context(|| {
                    format!("cannot load the {kind} data from {}", data.display())
                })?);
            // The TLS files are loaded before the port is bound: a bad one fails first.
            let tls = match (tls_cert, tls_key, client_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(
                    samblik_gateway::tls::server_tls(&TlsConfig {
                        client_certs: ClientAuth::Required,
                        client_ca_file: Some(ca),
                        ..TlsConfig::new(cert, key)
                    })
                    .context("cannot load the source's TLS files")?,
                ),
                _ if insecure => None,
                // clap refuses this already; never fall back to plaintext.
                _ => anyhow::bail!(
                    "give --tls-cert, --tls-key and --client-ca, or --insecure for plaintext"
                ),
            };
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            // Scripts and tests read this line to learn the port when listening on port 0.
            println!("samblik source {kind} listening on {addr}");
            let shutdown = shutdown_on_signal();
            let stop = shutdown.clone().cancelled_owned();
            match tls {
                Some(tls) => {
                    tracing::info!(source = %kind, addr = %addr, "source listening (mutual TLS)");
                    let server = samblik_adapters::server::serve_tls(source, listener, tls, stop);
                    with_grace(server, &shutdown).await?;
                }
                None => {
                    tracing::warn!(source = %kind, addr = %addr, "source listening in PLAINTEXT (--insecure): anyone who reaches this port can read citizens' cases");
                    let server = samblik_adapters::server::serve(source, listener, stop);
                    with_grace(server, &shutdown).await?;
                }
            }
            Ok(())
        }
        Command::Token {
            dir,
            user,
            ttl_secs,
        } => {
            println!(
                "{}",
                demo::token_for(&dir, &user, Duration::from_secs(ttl_secs))?
            );
            Ok(())
        }
        Command::Lookup {
            gateway,
            cpr,
            purpose,
            sources,
            break_glass,
        } => {
            let response = crate::client::lookup(
                &gateway.addr,
                &gateway.tls(),
                &gateway.token,
                samblik_proto::v1::LookupRequest {
                    cpr,
                    purpose: purpose as i32,
                    sources,
                    break_glass_reason: break_glass.unwrap_or_default(),
                },
                gateway.timeout(),
            )
            .await
            .map_err(status_error)?;
            print!("{}", crate::client::render(&response));
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Check { config, file },
        } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => demo::demo_config(
                    std::path::Path::new("."),
                    "127.0.0.1:0".parse()?,
                    std::path::Path::new("demo.pub.pem"),
                    Department::ALL
                        .iter()
                        .map(|d| {
                            samblik_gateway::config::SourceConfig::new(d.id(), d.display_name(), "")
                        })
                        .collect(),
                ),
            };
            if file.is_some() {
                config.policy.file = file;
            }
            let policy = samblik_gateway::disclosure::DisclosurePolicy::from_config(&config)?;
            println!("policy {} is valid", policy.version());
            for id in policy.rule_ids() {
                println!("  rule {id}");
            }
            Ok(())
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    gateway,
                    cpr,
                    purpose,
                    caller_id,
                    caller_department,
                    roles,
                    break_glass,
                },
        } => {
            let channel = crate::client::connect(&gateway.addr, &gateway.tls()).await?;
            let mut client =
                samblik_proto::v1::policy_service_client::PolicyServiceClient::new(channel);
            let request = crate::client::authorized(
                samblik_proto::v1::ExplainRequest {
                    cpr,
                    purpose: purpose as i32,
                    caller_id,
                    caller_department,
                    roles,
                    break_glass,
                },
                &gateway.token,
                gateway.timeout(),
            )?;
            let response = client
                .explain(request)
                .await
                .map_err(|s| status_error(s.into()))?
                .into_inner();
            print!("{}", crate::client::render_explanation(&response));
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { dir, config },
        } => match (dir, config) {
            (Some(dir), _) => {
                let db = dir.join(demo::AUDIT_DB_FILE);
                anyhow::ensure!(db.is_file(), "no audit log at {}", db.display());
                let keys = Arc::new(samblik_audit::AtRestKeys::load(
                    &dir.join(demo::AUDIT_DATA_KEY_FILE),
                )?);
                let open = move || -> Result<Box<dyn samblik_audit::AuditStore>, _> {
                    Ok(Box::new(
                        samblik_audit::sqlite::SqliteStore::open_read_only(&db, keys)?,
                    ))
                };
                // A demo directory from before the witness has none.
                let witness = dir.join(demo::AUDIT_WITNESS_FILE);
                verify_audit(
                    open,
                    &dir.join(demo::AUDIT_KEY_FILE),
                    witness.is_file().then_some(witness.as_path()),
                )
            }
            (None, Some(config)) => {
                let config = Config::load(&config)?;
                let open = samblik_gateway::server::audit_store_reader(&config.audit)?;
                verify_audit(
                    open,
                    &config.audit.signing_key_file,
                    config.audit.witness_file.as_deref(),
                )
            }
            (None, None) => anyhow::bail!("give --dir or --config"),
        },
        Command::Audit {
            command:
                AuditCommand::Prune {
                    dir,
                    config,
                    older_than_days,
                    chain,
                },
        } => {
            let mut audit = audit_config_of(dir, config)?;
            if let Some(chain) = chain {
                // A writer on a misspelt chain would start a new one: prune only what exists.
                let open = samblik_gateway::server::audit_store_opener(&audit)?;
                let known = tokio::task::spawn_blocking(move || open()?.chains()).await??;
                anyhow::ensure!(
                    known.contains(&chain),
                    "the audit store has no chain {chain:?} (it has {known:?})"
                );
                audit.chain = chain;
            }
            prune_audit(audit, older_than_days).await
        }
        Command::Audit {
            command:
                AuditCommand::AcknowledgeBreak {
                    dir,
                    config,
                    by,
                    reason,
                },
        } => {
            let audit = audit_config_of(dir, config)?;
            acknowledge_break(audit, by, reason).await
        }
        Command::Audit {
            command: AuditCommand::AddDataKey { dir, config },
        } => {
            let file = audit_config_of(dir, config)?.data_key_file;
            let id = samblik_audit::AtRestKeys::add_data_key(&file)?;
            println!(
                "added data key {id} to {}: it seals from the next start of each gateway given \
                 this file; keep every earlier key in it while anything it sealed is kept",
                file.display()
            );
            Ok(())
        }
        Command::Audit { command } => audit_command(command).await,
        Command::Health {
            addr,
            service,
            tls,
            timeout_ms,
        } => {
            let tls = tls.client_tls();
            let status =
                crate::client::health(&addr, &tls, service, Duration::from_millis(timeout_ms))
                    .await?;
            println!("{}", status.as_str_name());
            anyhow::ensure!(
                status == tonic_health::pb::health_check_response::ServingStatus::Serving,
                "{addr} does not serve: {}",
                status.as_str_name()
            );
            Ok(())
        }
        Command::Serve {
            config,
            audit_chain,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(chain) = audit_chain {
                config.audit.chain = chain;
                config.validate()?;
            }
            // The ports are bound and keys, certificates, endpoints and the policy checked
            // before the audit store is opened: a refused start-up writes nothing to it.
            let listeners = crate::server::Listeners::bind(&config).await?;
            let gateway = crate::server::Gateway::open(
                &config,
                listeners,
                crate::server::PanelSignIn::Configured,
            )?;
            println!("samblik gateway listening on {}", gateway.grpc_addr()?);
            if let Some(addr) = gateway.panel_addr() {
                println!("samblik panel listening on {}", addr?);
            }
            let shutdown = shutdown_on_signal();
            let server = gateway.serve(shutdown.clone());
            with_grace(server, &shutdown).await?;
            Ok(())
        }
    }
}
