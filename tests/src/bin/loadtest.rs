//! Load test: lookups per second through the whole gateway against a bare tonic echo of the same
//! `LookupService`, in one process and one run, and further phases (TLS, audit fsync off, gRPC
//! sources, no token cache). What each phase measures: `docs/load-tools.md`.
//!
//! `cargo run --release -p samblik-tests --bin loadtest -- [--seconds 10] [--concurrency 32]
//! [--connections 4] [--audit-pairs N] [--postgres ADMIN_URL]`
//!
//! `--audit-pairs N` runs only the audit log's two phases (durable, fsync off), alternately, N
//! times each; with `--postgres ADMIN_URL` their gateways write to PostgreSQL.

use anyhow::Context;
use samblik::demo::caseworker_claims;
use samblik::pki::DemoPki;
use samblik_adapters::Source;
use samblik_audit::Durability;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::lookup_service_server::{LookupService, LookupServiceServer};
use samblik_proto::v1::{LookupRequest, LookupResponse, Purpose, SourceResult, SourceStatus};
use samblik_reference::ReferenceSource;
use samblik_synth::store::DepartmentData;
use samblik_synth::{Department, SynthConfig};
use samblik_tests::{
    RunningGateway, ScratchDatabases, SourceSpec, TestGateway, issuer, start_source,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Response, Status};

/// The baseline: a `LookupService` that does nothing but echo.
struct Echo;

#[tonic::async_trait]
impl LookupService for Echo {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        Ok(Response::new(LookupResponse {
            request_id: request.into_inner().cpr,
            sources: Vec::new(),
        }))
    }
    type LookupStreamStream = tokio_stream::Empty<Result<SourceResult, Status>>;
    async fn lookup_stream(
        &self,
        _request: Request<LookupRequest>,
    ) -> Result<Response<Self::LookupStreamStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
}

struct Args {
    seconds: u64,
    concurrency: usize,
    connections: usize,
    /// Only the audit phases, alternately, this many times each.
    audit_pairs: Option<usize>,
    /// The PostgreSQL server (an administrator's URL) the audited gateways write to.
    postgres: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        concurrency: 32,
        connections: 4,
        audit_pairs: None,
        postgres: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--connections" => args.connections = value.parse()?,
            "--audit-pairs" => {
                let pairs: usize = value.parse()?;
                anyhow::ensure!(pairs > 0, "--audit-pairs needs at least one pair");
                args.audit_pairs = Some(pairs);
            }
            "--postgres" => args.postgres = Some(value),
            other => anyhow::bail!(
                "unknown flag {other}; use --seconds, --concurrency, --connections, --audit-pairs, --postgres"
            ),
        }
    }
    anyhow::ensure!(
        args.postgres.is_none() || args.audit_pairs.is_some(),
        "--postgres measures the audit phases only: give --audit-pairs too"
    );
    Ok(args)
}

struct Run {
    lookups: usize,
    failures: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time the whole process (client and servers) spent during the phase.
    cpu: Duration,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.lookups as f64 / self.elapsed.as_secs_f64()
    }
    /// CPU time per answered lookup, client included: what a lookup costs, less disturbed than
    /// the throughput by other work on a shared machine.
    fn cpu_per_lookup(&self) -> Duration {
        self.cpu / u32::try_from(self.lookups.max(1)).unwrap_or(u32::MAX)
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

/// One phase of load on `addr`, over TLS when `tls` is set (long-lived connections: the
/// handshakes are paid once).
async fn drive_over(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
    args: &Args,
    cprs: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
    check: fn(&LookupResponse) -> bool,
) -> anyhow::Result<Run> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint = match &tls {
            Some(tls) => {
                Channel::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?
            }
            None => Channel::from_shared(format!("http://{addr}"))?,
        };
        channels.push(endpoint.connect().await?);
    }
    let stop_at = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let cpu_before = process_cpu_time();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let mut client = LookupServiceClient::new(channels[worker % channels.len()].clone());
        let cprs = Arc::clone(&cprs);
        let token = tokens[worker % tokens.len()].clone();
        workers.spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0usize, 0usize, Vec::new());
            let mut i = worker;
            while Instant::now() < stop_at {
                let mut request = Request::new(LookupRequest {
                    cpr: cprs[i % cprs.len()].clone(),
                    purpose: Purpose::PrepareMeeting as i32,
                    ..LookupRequest::default()
                });
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {token}")
                        .parse()
                        .unwrap_or_else(|_| unreachable!()),
                );
                let t = Instant::now();
                match client.lookup(request).await {
                    Ok(r) if check(r.get_ref()) => ok += 1,
                    _ => failed += 1,
                }
                latencies.push(t.elapsed());
                i += args_stride();
            }
            (ok, failed, latencies)
        });
    }
    let mut run = Run {
        lookups: 0,
        failures: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        cpu: Duration::ZERO,
    };
    while let Some(joined) = workers.join_next().await {
        let (ok, failed, latencies) = joined?;
        run.lookups += ok;
        run.failures += failed;
        run.latencies.extend(latencies);
    }
    run.elapsed = started.elapsed();
    run.cpu = process_cpu_time().saturating_sub(cpu_before);
    Ok(run)
}

/// User and system CPU time of this process so far (`/proc/self/stat`, in the kernel's
/// USER_HZ ticks of 10 ms); zero where that cannot be read.
fn process_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The gateway over `sources` in this process, served over TLS with the demo's certificates
/// (generated into `dir`); returns it and a client TLS config trusting it.
async fn start_tls_gateway(
    sources: Vec<(Arc<dyn Source>, &str)>,
    dir: &std::path::Path,
) -> anyhow::Result<(RunningGateway, ClientTlsConfig)> {
    let pki = DemoPki::create(dir, &[])?;
    let gateway = TestGateway::in_process(sources)
        .adjust(|c| c.server.tls = Some(samblik::pki::demo_server_tls(&pki)))
        .start()
        .await;
    let client =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca)?));
    Ok((gateway, client))
}

/// The gateway over `sources` in this process, with a token cache of `verified_token_cache`,
/// its audit store at `durability`; with `postgres_url_env`, the audit log and the registry are
/// in the PostgreSQL database whose URL that environment variable holds.
async fn in_process_gateway(
    sources: Vec<(Arc<dyn Source>, &str)>,
    verified_token_cache: u64,
    durability: Durability,
    postgres_url_env: Option<&str>,
) -> RunningGateway {
    TestGateway::in_process(sources)
        .adjust(|c| {
            c.auth.verified_token_cache = verified_token_cache;
            if let Some(var) = postgres_url_env {
                c.audit.path = None;
                c.audit.postgres_url_env = Some(var.to_owned());
            }
        })
        .durability(durability)
        .start()
        .await
}

/// One phase's line of the report.
fn report(name: &str, run: &Run) {
    println!(
        "{name:<28} {:>8.0} lookups/s  p50 {:>6.2} ms  p99 {:>6.2} ms  cpu {:>5.0} µs/lookup  ({} ok, {} failed)",
        run.per_second(),
        run.percentile(0.50).as_secs_f64() * 1e3,
        run.percentile(0.99).as_secs_f64() * 1e3,
        run.cpu_per_lookup().as_secs_f64() * 1e6,
        run.lookups,
        run.failures
    );
}

/// Workers step through the citizens with a stride so they do not ask for the same one.
fn args_stride() -> usize {
    97
}

samblik::global_allocator!();

/// The environment variables that hold the audited gateways' PostgreSQL URLs (a gateway's
/// config names the variable, never the URL). Set, they take the place of `--postgres`.
const POSTGRES_DURABLE_ENV: &str = "SAMBLIK_LOADTEST_AUDIT_URL";
const POSTGRES_NO_FSYNC_ENV: &str = "SAMBLIK_LOADTEST_AUDIT_NO_FSYNC_URL";

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let on_postgres = std::env::var_os(POSTGRES_DURABLE_ENV).is_some();
    anyhow::ensure!(
        !on_postgres || args.audit_pairs.is_some(),
        "{POSTGRES_DURABLE_ENV} is set: the audit phases on PostgreSQL need --audit-pairs"
    );
    if let (Some(admin), false) = (&args.postgres, on_postgres) {
        // A gateway's config names the variable that holds its database's URL, never the URL:
        // create the databases, then run this program again with the variables set.
        let mut databases = ScratchDatabases::on(admin, "loadtest");
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(POSTGRES_DURABLE_ENV, databases.create("durable")?)
            .env(POSTGRES_NO_FSYNC_ENV, databases.create("no_fsync")?)
            .status()?;
        drop(databases);
        anyhow::ensure!(status.success(), "the load test failed: {status}");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, on_postgres))
}

async fn run(args: Args, on_postgres: bool) -> anyhow::Result<()> {
    eprintln!("generating the synthetic municipality (43,000 inhabitants)…");
    let data = samblik_synth::generate(&SynthConfig::new(2017, 43_000))?;
    // Citizens with an open jobcenter case: the jobcenter callers below have a relation to each
    // (the policy refuses a lookup without one), and every lookup does real work.
    let mut cprs: Vec<String> = data
        .cases
        .iter()
        .filter(|c| {
            c.department() == Department::Jobcenter && c.state == samblik_synth::CaseState::Open
        })
        .map(|c| c.cpr.clone())
        .collect();
    cprs.sort();
    cprs.dedup();
    let cprs = Arc::new(cprs);
    // One token per jobcenter caseworker: each caller reuses its own, as a fagsystem does.
    let mut tokens = Vec::new();
    for worker in data
        .caseworkers
        .iter()
        .filter(|w| w.department == Department::Jobcenter)
    {
        let claims = caseworker_claims(worker, &data.municipality.code);
        tokens.push(issuer().1.mint(&claims, Duration::from_secs(3600))?);
    }
    anyhow::ensure!(!tokens.is_empty(), "no jobcenter caseworker");
    let tokens = Arc::new(tokens);

    // The same three reference sources, once in this process behind the trait and once each
    // behind its own gRPC server on loopback.
    let mut in_process: Vec<(Arc<dyn Source>, &str)> = Vec::new();
    let mut servers = Vec::new();
    let mut specs = Vec::new();
    for department in Department::ALL {
        let source: Arc<dyn Source> = Arc::new(ReferenceSource::new(DepartmentData::slice(
            &data, department,
        ))?);
        let running = start_source(Arc::clone(&source)).await;
        specs.push(SourceSpec::at(department.id(), running.addr));
        servers.push(running);
        in_process.push((source, department.display_name()));
    }
    let (durable_env, no_fsync_env) = if on_postgres {
        (Some(POSTGRES_DURABLE_ENV), Some(POSTGRES_NO_FSYNC_ENV))
    } else {
        (None, None)
    };
    let gateway =
        in_process_gateway(in_process.clone(), 10_000, Durability::Full, durable_env).await;
    let gateway_no_fsync =
        in_process_gateway(in_process.clone(), 10_000, Durability::Off, no_fsync_env).await;
    let all_ok = |r: &LookupResponse| {
        r.sources.len() == 3 && r.sources.iter().all(|s| s.status() == SourceStatus::Ok)
    };
    // One phase of plain-text load on `addr`, each answer held to `check`.
    let phase = |addr: SocketAddr, check: fn(&LookupResponse) -> bool| {
        drive_over(
            addr,
            None,
            &args,
            Arc::clone(&cprs),
            Arc::clone(&tokens),
            check,
        )
    };
    if let Some(pairs) = args.audit_pairs {
        println!(
            "loadtest ({} allocator): audit phases only, {pairs} pairs of {} s each, {} concurrent callers over {} connections, audit store {}",
            samblik::ALLOCATOR_NAME,
            args.seconds,
            args.concurrency,
            args.connections,
            if on_postgres { "PostgreSQL" } else { "SQLite" },
        );
        let mut ratios = Vec::new();
        for pair in 1..=pairs {
            let on = phase(gateway.addr, all_ok).await?;
            let off = phase(gateway_no_fsync.addr, all_ok).await?;
            report(&format!("{pair}: audit on"), &on);
            report(&format!("{pair}: audit fsync off"), &off);
            ratios.push(on.per_second() / off.per_second());
            println!("{pair}: ratio on / off {:.3}", ratios[ratios.len() - 1]);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "ratio audit fsync on / off (in-process sources), median of {pairs}: {:.3} (range {:.3}–{:.3}; target >= 0.8)",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
        return Ok(());
    }
    let pki_dir = tempfile::tempdir()?;
    let (gateway_tls, client_tls) = start_tls_gateway(in_process.clone(), pki_dir.path()).await?;
    let gateway_uncached = in_process_gateway(in_process, 0, Durability::Full, None).await;
    let gateway_remote = TestGateway::over(&specs).deadline_ms(3_000).start().await;

    let echo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LookupServiceServer::new(Echo))
            .serve_with_incoming(TcpIncoming::from(echo_listener).with_nodelay(Some(true))),
    );

    println!(
        "loadtest ({} allocator): {} s per phase, {} concurrent callers over {} connections, {} citizens with cases",
        samblik::ALLOCATOR_NAME,
        args.seconds,
        args.concurrency,
        args.connections,
        cprs.len()
    );
    let echo = phase(echo_addr, |_| true).await?;
    let full = phase(gateway.addr, all_ok).await?;
    let tls = drive_over(
        gateway_tls.addr,
        Some(client_tls),
        &args,
        Arc::clone(&cprs),
        Arc::clone(&tokens),
        all_ok,
    )
    .await?;
    let remote = phase(gateway_remote.addr, all_ok).await?;
    let no_fsync = phase(gateway_no_fsync.addr, all_ok).await?;
    let uncached = phase(gateway_uncached.addr, all_ok).await?;
    for (name, run) in [
        ("bare tonic echo", &echo),
        ("gateway, in-process sources", &full),
        ("gateway, in-process, TLS", &tls),
        ("gateway, gRPC sources", &remote),
        ("gateway, audit fsync off", &no_fsync),
        ("gateway, no token cache", &uncached),
    ] {
        report(name, run);
    }
    println!(
        "ratio gateway (in-process sources) / echo: {:.3} (target >= 0.3)",
        full.per_second() / echo.per_second()
    );
    println!(
        "ratio gateway TLS / plaintext (in-process sources, long-lived connections): {:.3} (target >= 0.85)",
        tls.per_second() / full.per_second()
    );
    println!(
        "ratio gateway (gRPC sources) / echo: {:.3} (four gRPC calls per lookup instead of one)",
        remote.per_second() / echo.per_second()
    );
    println!(
        "ratio audit fsync on / off (in-process sources): {:.3} (target >= 0.8)",
        full.per_second() / no_fsync.per_second()
    );
    println!(
        "ratio gateway (in-process sources, token cache off) / echo: {:.3}",
        uncached.per_second() / echo.per_second()
    );
    drop((
        gateway,
        gateway_remote,
        gateway_uncached,
        gateway_no_fsync,
        servers,
    ));
    Ok(())
}
