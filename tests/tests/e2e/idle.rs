//! 2,000 idle connections to one gateway: plain TCP ones (half never send a byte, half send the
//! HTTP/2 preface and then nothing), and TLS ones that completed the handshake and the HTTP/2
//! preface and then say nothing, as in the report. While they are all open, a normal
//! caller on a connection of its own is answered within a second; each of them is closed after
//! the idle timeout, not before, and gives its slot back.
//!
//! They come from 127.0.0.2 and up, 50 from each address, under the default cap of 64 per
//! address, as from many clients: what is exercised is the gateway holding 2,000 idle
//! connections, not the per-address cap (`limits::one_address_cannot_take_every_connection`
//! tests that). The gateway is sized for them (`max_connections` 4,096): at the default 1,024
//! the rest would wait in the kernel's backlog, which is that limit doing its job.

use samblik_gateway::config::{Config, LimitsConfig};
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{LookupResponse, Purpose, SourceStatus};
use samblik_synth::Department;
use samblik_tests::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const IDLE: usize = 2_000;
const PER_ADDRESS: usize = 50;
/// The HTTP/2 connection preface and an empty SETTINGS frame: what a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// Connections opened at once; more would overflow the listener's backlog and the kernel would
/// make the rest retry their SYN a second later.
const OPENING_AT_ONCE: usize = 64;

/// One idle test at a time: each holds 4,000 sockets in this process and keeps a core busy.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The gateway's limits for `idle_timeout`: room for every idle connection, and the request
/// time-out and deadlines below the idle timeout, as the config requires.
fn sized_for_idle(config: &mut Config, idle_timeout: Duration) {
    let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap();
    config.server.limits = LimitsConfig {
        max_connections: 4_096,
        idle_timeout_ms: idle_ms,
        request_timeout_ms: 2_000,
        ..LimitsConfig::default()
    };
    config.server.max_deadline_ms = 2_000;
    config.server.default_deadline_ms = 2_000;
}

/// Makes sure this process may hold `needed` open files, raising its soft limit towards the hard
/// one if it must; why not, where it cannot.
fn open_files_for(needed: u64) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= needed) {
        return Ok(());
    }
    if limit.maximum.is_some_and(|hard| hard < needed) {
        return Err(format!(
            "the open-files limit is {:?} and cannot be raised to {needed}",
            limit.maximum
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("cannot raise the open-files limit to {needed}: {e}"))
}

/// The `i`th idle connection's own address: 127.0.0.2 and up, [`PER_ADDRESS`] each.
fn idle_address(i: usize) -> SocketAddr {
    let host = u8::try_from(2 + i / PER_ADDRESS).unwrap();
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0))
}

async fn connect_from(local: SocketAddr, gateway: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(local).unwrap();
    socket.connect(gateway).await.unwrap()
}

/// When each idle connection was opened and when the gateway closed it.
#[derive(Debug)]
struct Idle {
    /// Taken before connecting: the gateway's idle timer cannot start earlier.
    opened: Instant,
    closed: tokio::task::JoinHandle<Instant>,
}

/// Reads (and throws away: the server's SETTINGS, PINGs) until the server closes the connection;
/// when it did. `closed` counts the ones that are.
fn watch(
    mut stream: impl AsyncRead + Unpin + Send + 'static,
    closed: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Instant> {
    let closed = Arc::clone(closed);
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        closed.fetch_add(1, Ordering::SeqCst);
        Instant::now()
    })
}

/// Opens [`IDLE`] connections with `open` (given each one's index), at most
/// [`OPENING_AT_ONCE`] at a time.
async fn open_all<F>(open: impl Fn(usize) -> F) -> Vec<Idle>
where
    F: Future<Output = Idle>,
{
    use futures::StreamExt;
    futures::stream::iter((0..IDLE).map(open))
        .buffer_unordered(OPENING_AT_ONCE)
        .collect()
        .await
}

fn served(answer: &LookupResponse) {
    let jobcenter = &answer.sources[0];
    assert_eq!(jobcenter.status(), SourceStatus::Ok, "{answer:?}");
    assert!(!jobcenter.cases.is_empty());
}

fn lookup_request() -> tonic::Request<samblik_proto::v1::LookupRequest> {
    request(
        all_department_citizen(),
        Purpose::PrepareMeeting,
        Some(&token(Department::Jobcenter)),
        Some(Duration::from_secs(2)),
    )
}

/// The checks after the lookups: none of `idle` was closed before them (`closed_early` of them
/// were), and each is closed after `idle_timeout` from its opening and not long after.
async fn all_closed_after_the_idle_timeout(
    idle: Vec<Idle>,
    closed_early: usize,
    idle_timeout: Duration,
    what: &str,
) {
    assert_eq!(
        closed_early, 0,
        "{closed_early} idle {what} connections were closed before the lookups were answered: \
         they were not all open at once"
    );
    // Opening, accepting and the timer's turn, on a shared machine: generous, never a gate on
    // how fast the gateway is.
    let slack = Duration::from_secs(5);
    let mut lived = Vec::with_capacity(idle.len());
    for connection in idle {
        let closed = tokio::time::timeout(idle_timeout + slack * 2, connection.closed)
            .await
            .unwrap_or_else(|_| panic!("an idle {what} connection is never closed"))
            .unwrap();
        lived.push(closed - connection.opened);
    }
    lived.sort();
    let (shortest, longest) = (lived[0], lived[lived.len() - 1]);
    eprintln!(
        "{IDLE} idle {what} connections: closed after {shortest:?} to {longest:?} \
         (idle timeout {idle_timeout:?})"
    );
    assert!(
        shortest >= idle_timeout,
        "an idle {what} connection was closed after {shortest:?}, before the idle timeout"
    );
    assert!(
        longest < idle_timeout + slack,
        "an idle {what} connection was closed only after {longest:?}"
    );
}

/// One kind of idle connection: a gateway configured by `configure` and sized for
/// `idle_timeout`; [`IDLE`] connections opened by `open_idle` (given each one's index and the
/// gateway's address) and then left alone; three lookups, each on a new connection of
/// `endpoint`'s, each connected and answered within a second; then every idle connection closed
/// after the idle timeout.
async fn while_idle<S, F>(
    what: &str,
    idle_timeout: Duration,
    configure: impl FnOnce(&mut Config),
    endpoint: impl Fn(SocketAddr) -> Endpoint,
    open_idle: impl Fn(usize, SocketAddr) -> F,
) where
    F: Future<Output = S>,
    S: AsyncRead + Unpin + Send + 'static,
{
    let _one = ONE_AT_A_TIME.lock().await;
    if let Err(why) = open_files_for(16_384) {
        eprintln!("SKIP {IDLE} idle {what} connections: {why}");
        return;
    }
    let gateway = TestGateway::in_process(vec![(reference(Department::Jobcenter), "Jobcenter")])
        .adjust(|c| {
            sized_for_idle(c, idle_timeout);
            configure(c);
        })
        .start()
        .await;
    let addr = gateway.addr;
    let closed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let idle = open_all(|i| {
        let closed = Arc::clone(&closed);
        let stream = open_idle(i, addr);
        async move {
            let opened = Instant::now();
            let stream = stream.await;
            Idle {
                opened,
                closed: watch(stream, &closed),
            }
        }
    })
    .await;
    eprintln!(
        "{IDLE} idle {what} connections opened in {:?}",
        started.elapsed()
    );

    for _ in 0..3 {
        let asked = Instant::now();
        let channel = endpoint(addr).connect().await.unwrap();
        let answer = LookupServiceClient::new(channel)
            .lookup(lookup_request())
            .await
            .unwrap()
            .into_inner();
        let took = asked.elapsed();
        served(&answer);
        assert!(
            took < Duration::from_secs(1),
            "a lookup on a new connection took {took:?} beside {IDLE} idle {what} ones"
        );
        eprintln!("beside {IDLE} idle {what} connections: connected and answered in {took:?}");
    }
    let closed_early = closed.load(Ordering::SeqCst);
    all_closed_after_the_idle_timeout(idle, closed_early, idle_timeout, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_is_answered_within_a_second_while_2000_idle_tcp_connections_are_open() {
    while_idle(
        "TCP",
        Duration::from_secs(8),
        |_| {},
        |addr| Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        |i, addr| async move {
            let mut stream = connect_from(idle_address(i), addr).await;
            // Half of them never send a byte; half open HTTP/2 and then say nothing.
            if i % 2 == 1 {
                stream.write_all(PREFACE).await.unwrap();
            }
            stream
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_is_answered_within_a_second_while_2000_idle_tls_connections_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let pki = samblik::pki::DemoPki::create(dir.path(), &[]).unwrap();
    let connector = tls_connector(&pki.ca);
    let ca = Certificate::from_pem(std::fs::read(&pki.ca).unwrap());
    while_idle(
        "TLS (handshake and HTTP/2 preface done)",
        // 2,000 handshakes, both ends in this process, unoptimised: seconds on two cores, more
        // beside the other tests. Every connection must still be open when the lookups come.
        Duration::from_secs(40),
        |c| c.server.tls = Some(samblik::pki::demo_server_tls(&pki)),
        |addr| {
            Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(ClientTlsConfig::new().ca_certificate(ca.clone()))
                .unwrap()
        },
        |i, addr| {
            let connector = connector.clone();
            async move {
                let tcp = connect_from(idle_address(i), addr).await;
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let mut tls = connector.connect(name, tcp).await.unwrap();
                tls.write_all(PREFACE).await.unwrap();
                tls.flush().await.unwrap();
                tls
            }
        },
    )
    .await;
}

/// A TLS client trusting the CA in `ca_file`, offering HTTP/2 as gRPC clients do.
fn tls_connector(ca_file: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
