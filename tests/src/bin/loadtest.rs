//! Load test: lookups per second through the whole gateway against a bare tonic echo of the same
//! `LookupService`, in one process and one run, and further phases (TLS, audit fsync off, gRPC
//! sources, no token cache). What each phase measures: `docs/load-tools.md`.
//!
//! `cargo run --release -p samblik-tests --bin loadtest -- [--seconds 10] [--concurrency 32]
//! [--connections 4] [--audit-pairs N] [--postgres ADMIN_URL]`
//!
//! `--audit-pairs N` runs only the audit log's two phases (durable, fsync off), alternately, N
//! times each; with `--postgres ADMIN_URL` their gateways write to PostgreSQL.
//!
//! `--open-loop 0.5,2` measures the gateway's capacity, then sends requests at those multiples
//! of it at a fixed rate (to the gateway and to the echo); `--soak-minutes 30` holds half the
//! capacity (`--soak-factor`) for that long, minute by minute, and verifies the audit chain after.
//! `--layers-pairs N` runs the gateway with the source stack's bulkhead and breaker off and on,
//! alternately, N times each.

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
use samblik_tests::openloop::{self, Outcome, Schedule};
use samblik_tests::{
    RunningGateway, ScratchDatabases, SourceSpec, TestGateway, issuer, start_source,
};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Response, Status};

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
    /// Open-loop phases at these multiples of the measured capacity.
    open_loop: Vec<f64>,
    /// A soak of this many minutes at `soak_factor` of the capacity.
    soak_minutes: Option<u64>,
    soak_factor: f64,
    /// The callers' deadline in the open-loop phases.
    deadline: Duration,
    /// Only the source stack's resilience layers off and on, alternately, this many times each.
    layers_pairs: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        concurrency: 32,
        connections: 4,
        audit_pairs: None,
        postgres: None,
        open_loop: Vec::new(),
        soak_minutes: None,
        soak_factor: 0.5,
        deadline: Duration::from_secs(1),
        layers_pairs: None,
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
            "--open-loop" => {
                for factor in value.split(',') {
                    let factor: f64 = factor.trim().parse()?;
                    anyhow::ensure!(
                        factor > 0.0 && factor.is_finite(),
                        "--open-loop takes positive multiples of the capacity, such as 0.5,2"
                    );
                    args.open_loop.push(factor);
                }
            }
            "--soak-minutes" => {
                let minutes: u64 = value.parse()?;
                anyhow::ensure!(minutes > 0, "--soak-minutes needs at least one minute");
                args.soak_minutes = Some(minutes);
            }
            "--soak-factor" => {
                args.soak_factor = value.parse()?;
                anyhow::ensure!(
                    args.soak_factor > 0.0 && args.soak_factor.is_finite(),
                    "--soak-factor must be a positive multiple of the capacity"
                );
            }
            "--deadline-ms" => args.deadline = Duration::from_millis(value.parse()?),
            "--layers-pairs" => {
                let pairs: usize = value.parse()?;
                anyhow::ensure!(pairs > 0, "--layers-pairs needs at least one pair");
                args.layers_pairs = Some(pairs);
            }
            other => anyhow::bail!(
                "unknown flag {other}; use --seconds, --concurrency, --connections, --audit-pairs, --postgres, --open-loop, --soak-minutes, --soak-factor, --deadline-ms, --layers-pairs"
            ),
        }
    }
    anyhow::ensure!(
        args.audit_pairs.is_none() || (args.open_loop.is_empty() && args.soak_minutes.is_none()),
        "--audit-pairs runs only the audit phases: not with --open-loop or --soak-minutes"
    );
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

/// The bare echo, served on a loopback port of its own.
async fn start_echo() -> anyhow::Result<SocketAddr> {
    let echo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LookupServiceServer::new(Echo))
            .serve_with_incoming(TcpIncoming::from(echo_listener).with_nodelay(Some(true))),
    );
    Ok(echo_addr)
}

/// `connections` plaintext connections to `addr`, which open-loop callers share round-robin.
async fn connect_all(addr: SocketAddr, connections: usize) -> anyhow::Result<Arc<Vec<Channel>>> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(Arc::new(channels))
}

/// One open-loop lookup on its way.
type PendingLookup = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Arrival `n` of an open-loop run: a lookup with the caller's deadline in `grpc-timeout`,
/// classified by what came back.
fn open_loop_caller(
    channels: Arc<Vec<Channel>>,
    cprs: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
    deadline: Duration,
    check: fn(&LookupResponse) -> bool,
) -> impl Fn(u64) -> PendingLookup {
    move |n| {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let mut client = LookupServiceClient::new(channels[n % channels.len()].clone());
        let mut request = Request::new(LookupRequest {
            cpr: cprs[n.wrapping_mul(args_stride()) % cprs.len()].clone(),
            purpose: Purpose::PrepareMeeting as i32,
            ..LookupRequest::default()
        });
        request.set_timeout(deadline);
        let bearer = format!("Bearer {}", tokens[n % tokens.len()]);
        request.metadata_mut().insert(
            "authorization",
            bearer.parse().unwrap_or_else(|_| unreachable!()),
        );
        Box::pin(async move {
            // The server answers by the deadline or refuses; the client's own limit, at twice
            // the deadline, only keeps a hung server from holding the run open.
            match tokio::time::timeout(deadline * 2, client.lookup(request)).await {
                Err(_) => Outcome::Late,
                Ok(Ok(answer)) if check(answer.get_ref()) => Outcome::Ok,
                Ok(Ok(_)) => Outcome::Failed,
                Ok(Err(status)) => match status.code() {
                    Code::ResourceExhausted => Outcome::Shed,
                    Code::DeadlineExceeded | Code::Cancelled => Outcome::Late,
                    _ => Outcome::Failed,
                },
            }
        })
    }
}

/// One open-loop run's line of the report.
fn report_open(name: &str, report: &openloop::Report, capacity: f64) {
    let total = report.total();
    println!(
        "{name:<30} offered {:>7.0}/s  goodput {:>7.0}/s ({:>5.1} % of capacity)  ok p50 {:>6.2} p99 {:>6.2} p999 {:>7.2} ms  shed {} (p99 {:.2} ms)  late {}  failed {}  not sent {}",
        report.schedule.rate,
        report.goodput(),
        100.0 * report.goodput() / capacity,
        ms(total.ok_at(0.50)),
        ms(total.ok_at(0.99)),
        ms(total.ok_at(0.999)),
        total.shed.len(),
        ms(total.shed_at(0.99)),
        total.late,
        total.failed,
        total.dropped,
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The gateway's capacity (closed loop), then open-loop runs at `--open-loop` multiples of it,
/// each on the echo and on the gateway, and the soak if asked for.
async fn open_loop_phases(
    args: &Args,
    gateway: RunningGateway,
    cprs: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let echo_addr = start_echo().await?;
    println!(
        "loadtest ({} allocator): open loop, {} s per phase, deadline {} ms, {} connections; capacity from {} closed-loop callers",
        samblik::ALLOCATOR_NAME,
        args.seconds,
        args.deadline.as_millis(),
        args.connections,
        args.concurrency,
    );
    let closed = drive_over(
        gateway.addr,
        None,
        args,
        Arc::clone(&cprs),
        Arc::clone(&tokens),
        all_ok,
    )
    .await?;
    report("gateway, closed loop", &closed);
    let capacity = closed.per_second();
    let gateway_channels = connect_all(gateway.addr, args.connections).await?;
    let echo_channels = connect_all(echo_addr, args.connections).await?;
    let gateway_call = open_loop_caller(
        gateway_channels,
        Arc::clone(&cprs),
        Arc::clone(&tokens),
        args.deadline,
        all_ok,
    );
    let echo_call = open_loop_caller(
        echo_channels,
        Arc::clone(&cprs),
        Arc::clone(&tokens),
        args.deadline,
        |_| true,
    );
    let schedule = |factor: f64, duration: Duration, window: Duration| Schedule {
        rate: factor * capacity,
        duration,
        window,
        deadline: args.deadline,
        max_in_flight: MAX_IN_FLIGHT,
    };
    for &factor in &args.open_loop {
        let seconds = Duration::from_secs(args.seconds);
        let shape = schedule(factor, seconds, seconds);
        let echo = openloop::run(shape, &echo_call, |_| {}).await;
        let (rss_before, _) = openloop::resident_set();
        let served = openloop::run(shape, &gateway_call, |_| {}).await;
        let (rss_after, rss_peak) = openloop::resident_set();
        report_open(&format!("echo @ {factor}x"), &echo, capacity);
        report_open(&format!("gateway @ {factor}x"), &served, capacity);
        println!(
            "  @ {factor}x: p99 added by the gateway over the echo {:.2} ms; RSS {:.0} MiB before, {:.0} MiB after, peak {:.0} MiB; {} open files",
            ms(served.total().ok_at(0.99)) - ms(echo.total().ok_at(0.99)),
            mib(rss_before),
            mib(rss_after),
            mib(rss_peak),
            openloop::open_files(),
        );
    }
    if let Some(minutes) = args.soak_minutes {
        soak(args, &gateway, &gateway_call, capacity, minutes).await?;
    }
    Ok(())
}

/// The soak: `--soak-factor` of the capacity for `minutes`, a line a minute, the first and last
/// five minutes compared, and the audit chain verified after.
async fn soak(
    args: &Args,
    gateway: &RunningGateway,
    call: &impl Fn(u64) -> PendingLookup,
    capacity: f64,
    minutes: u64,
) -> anyhow::Result<()> {
    let shape = Schedule {
        rate: args.soak_factor * capacity,
        duration: Duration::from_secs(minutes * 60),
        window: Duration::from_secs(60),
        deadline: args.deadline,
        max_in_flight: MAX_IN_FLIGHT,
    };
    println!(
        "soak: {minutes} min at {:.0} lookups/s ({} x capacity {capacity:.0}/s)",
        shape.rate, args.soak_factor
    );
    let mut samples = Vec::new();
    let report = openloop::run(shape, call, |minute| {
        let (rss, _) = openloop::resident_set();
        let files = openloop::open_files();
        println!(
            "  minute {:>3}: RSS {:>6.0} MiB, {files} open files",
            minute + 1,
            mib(rss)
        );
        samples.push((rss, files));
    })
    .await;
    for (i, window) in report.windows.iter().enumerate() {
        println!(
            "  minute {:>3}: {:>8} answered, p99 {:>6.2} ms, shed {}, late {}, failed {}, not sent {}",
            i + 1,
            window.ok.len(),
            ms(window.ok_at(0.99)),
            window.shed.len(),
            window.late,
            window.failed,
            window.dropped,
        );
    }
    let n = report.windows.len();
    let edge = n.min(5);
    let (first, last) = (report.span(0..edge), report.span(n - edge..n));
    let mean_rss = |range: std::ops::Range<usize>| {
        let picked = &samples[range];
        picked.iter().map(|(rss, _)| *rss as f64).sum::<f64>() / picked.len().max(1) as f64
    };
    let (rss_first, rss_last) = (mean_rss(0..edge), mean_rss(n - edge..n));
    let (p99_first, p99_last) = (ms(first.ok_at(0.99)), ms(last.ok_at(0.99)));
    println!(
        "soak: first {edge} min RSS {:.0} MiB, p99 {p99_first:.2} ms; last {edge} min RSS {:.0} MiB, p99 {p99_last:.2} ms; RSS growth {:+.1} % (target < 10 %), p99 drift {:+.1} % (target < 20 %); open files {} then {}",
        rss_first / 1048576.0,
        rss_last / 1048576.0,
        100.0 * (rss_last - rss_first) / rss_first,
        100.0 * (p99_last - p99_first) / p99_first,
        samples.first().map_or(0, |s| s.1),
        samples.last().map_or(0, |s| s.1),
    );
    let total = report.total();
    println!(
        "soak: {} answered, {} shed, {} late, {} failed, {} not sent",
        total.ok.len(),
        total.shed.len(),
        total.late,
        total.failed,
        total.dropped
    );
    let dir = gateway.audit_dir.path().to_owned();
    let chains = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
        let key = load_verifying_key(&public_key_path(&dir.join(samblik::demo::AUDIT_KEY_FILE)))?;
        let db = dir.join(samblik::demo::AUDIT_DB_FILE);
        let mut store = samblik_audit::sqlite::SqliteStore::open_read_only(
            &db,
            samblik_tests::demo_data_keys(&db),
        )?;
        Ok(samblik_audit::verify::verify_store(&mut store, &key)?)
    })
    .await??;
    let records: u64 = chains.iter().map(|c| c.records).sum();
    anyhow::ensure!(
        records >= total.ok.len(),
        "the audit log holds {records} records, fewer than the {} lookups answered",
        total.ok.len()
    );
    println!(
        "soak: the audit log verifies: {} chain(s), {records} records",
        chains.len()
    );
    Ok(())
}

/// The source stack's resilience layers (bulkhead and circuit breaker at a source's configured
/// defaults) on and off, alternately `pairs` times, over the same in-process sources: what the
/// layers cost when nothing fails.
async fn layers_pairs(
    args: &Args,
    sources: Vec<(Arc<dyn Source>, &str)>,
    pairs: usize,
    cprs: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let defaults =
        samblik_tests::gateway_config(&[SourceSpec::at("x", "127.0.0.1:1".parse()?)], 3_000)
            .sources
            .first()
            .map(|s| s.resilience())
            .context("a source config")?;
    let bare = TestGateway::in_process(sources.clone()).start().await;
    let layered = TestGateway::in_process_with(sources, defaults)
        .start()
        .await;
    println!(
        "loadtest ({} allocator): resilience layers off and on, {pairs} pairs of {} s each, {} concurrent callers over {} connections; layers {defaults:?}",
        samblik::ALLOCATOR_NAME,
        args.seconds,
        args.concurrency,
        args.connections,
    );
    alternate(
        args,
        pairs,
        ("layers on", layered.addr),
        ("layers off", bare.addr),
        cprs,
        tokens,
        "resilience layers on / off (in-process sources)",
        "target >= 0.97",
    )
    .await
}

/// Load on `a` then on `b`, `pairs` times, each answer held to every source OK; prints
/// every pair's ratio a / b and their median: two phases measured seconds apart, many times
/// over, is what a shared machine disturbs least.
#[allow(clippy::too_many_arguments)]
async fn alternate(
    args: &Args,
    pairs: usize,
    (a_name, a): (&str, SocketAddr),
    (b_name, b): (&str, SocketAddr),
    cprs: Arc<Vec<String>>,
    tokens: Arc<Vec<String>>,
    what: &str,
    target: &str,
) -> anyhow::Result<()> {
    let mut ratios = Vec::new();
    let measure = |addr| {
        drive_over(
            addr,
            None,
            args,
            Arc::clone(&cprs),
            Arc::clone(&tokens),
            all_ok,
        )
    };
    for pair in 1..=pairs {
        let first = measure(a).await?;
        let second = measure(b).await?;
        report(&format!("{pair}: {a_name}"), &first);
        report(&format!("{pair}: {b_name}"), &second);
        ratios.push(first.per_second() / second.per_second());
        println!("{pair}: ratio {:.3}", ratios[ratios.len() - 1]);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio {what}, median of {pairs}: {:.3} (range {:.3}–{:.3}; {target})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
    );
    Ok(())
}

/// Requests outstanding beyond which the open-loop driver stops sending (and counts the
/// arrivals it did not send): far above what the gateway admits, so it is the gateway that sheds.
const MAX_IN_FLIGHT: usize = 20_000;

/// A whole answer: every department's source, each OK.
fn all_ok(r: &LookupResponse) -> bool {
    r.sources.len() == Department::ALL.len()
        && r.sources.iter().all(|s| s.status() == SourceStatus::Ok)
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

    // The reference sources, once in this process behind the trait and once each
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
        alternate(
            &args,
            pairs,
            ("audit on", gateway.addr),
            ("audit fsync off", gateway_no_fsync.addr),
            Arc::clone(&cprs),
            Arc::clone(&tokens),
            "audit fsync on / off (in-process sources)",
            "target >= 0.8",
        )
        .await?;
        return Ok(());
    }
    if !args.open_loop.is_empty() || args.soak_minutes.is_some() {
        drop(gateway_no_fsync);
        return open_loop_phases(&args, gateway, cprs, tokens).await;
    }
    if let Some(pairs) = args.layers_pairs {
        drop((gateway, gateway_no_fsync));
        return layers_pairs(&args, in_process, pairs, cprs, tokens).await;
    }
    let pki_dir = tempfile::tempdir()?;
    let (gateway_tls, client_tls) = start_tls_gateway(in_process.clone(), pki_dir.path()).await?;
    let gateway_uncached = in_process_gateway(in_process, 0, Durability::Full, None).await;
    let gateway_remote = TestGateway::over(&specs).deadline_ms(3_000).start().await;

    let echo_addr = start_echo().await?;

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
        "ratio gateway (gRPC sources) / echo: {:.3} (a gRPC call per source per lookup instead of one call)",
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
