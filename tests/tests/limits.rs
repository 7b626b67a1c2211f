//! Limits: a client that sends too much, or opens too many calls on one connection, is held back
//! while the gateway keeps serving everybody else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use samblik_adapters::Source;
use samblik_gateway::config::LimitsConfig;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{LookupRequest, Purpose};
use samblik_synth::Department;
use samblik_tests::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Code;

/// The gateway over a hanging source and a prompt one (2 s source timeouts), with `limits`.
async fn start(
    limits: LimitsConfig,
    hanging: Arc<Hanging>,
) -> (SocketAddr, DropGuard, tempfile::TempDir) {
    let (config, audit_dir) = with_own_audit(gateway_config(&[], 3_000));
    let hanging: Arc<dyn Source> = hanging;
    let pipeline = in_process_pipeline(
        &config,
        vec![
            (hanging, "Hanging"),
            (reference(Department::Jobcenter), "Jobcenter"),
        ],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        samblik_gateway::server::serve_configured(
            Arc::new(pipeline),
            listener,
            None,
            &limits,
            shutdown,
        )
        .await
        .unwrap();
    });
    (addr, stop.drop_guard(), audit_dir)
}

fn lookup_of(source: &str, cpr: &str, timeout: Duration) -> tonic::Request<LookupRequest> {
    let mut r = request(
        cpr,
        Purpose::PrepareMeeting,
        Some(&token(Department::Jobcenter)),
        Some(timeout),
    );
    r.get_mut().sources = vec![source.to_owned()];
    r
}

async fn client(addr: SocketAddr) -> LookupServiceClient<tonic::transport::Channel> {
    LookupServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_oversized_message_is_refused_unread_and_the_gateway_keeps_serving() {
    let limits = LimitsConfig {
        max_message_bytes: 16 * 1024,
        ..LimitsConfig::default()
    };
    let (addr, _stop, _audit) = start(limits, Arc::new(Hanging::default())).await;
    let mut c = client(addr).await;
    let cpr = three_department_citizen();
    let huge = "1".repeat(64 * 1024);
    let status = c
        .lookup(lookup_of("jobcenter", &huge, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // Between the request limit (4 KiB) and the message limit: read, and refused as invalid.
    let big = "1".repeat(8 * 1024);
    let status = c
        .lookup(lookup_of("jobcenter", &big, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The same connection, and a new one, still work.
    c.lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
    client(addr)
        .await
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_oversized_lookup_is_recorded_unread_with_the_caller_and_nothing_of_the_message() {
    let limits = LimitsConfig {
        max_message_bytes: 16 * 1024,
        ..LimitsConfig::default()
    };
    let (addr, _stop, audit) = start(limits, Arc::new(Hanging::default())).await;
    let huge = "7".repeat(64 * 1024);
    let status = client(addr)
        .await
        .lookup(lookup_of("jobcenter", &huge, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let id = status
        .metadata()
        .get("x-request-id")
        .expect("the refusal carries its record's request id")
        .to_str()
        .unwrap();

    let detail = the_unread_lookup(
        audit_records_in(&audit.path().join(samblik_gateway::demo::AUDIT_DB_FILE)),
        id,
    );
    assert!(detail.contains("larger than the size limit"), "{detail}");
    assert!(!detail.contains("7777"), "{detail}");
}

#[tokio::test]
async fn too_many_streams_on_one_connection_wait_while_other_connections_are_served() {
    let limits = LimitsConfig {
        max_concurrent_streams: 2,
        ..LimitsConfig::default()
    };
    let hanging = Arc::new(Hanging::default());
    let (addr, _stop, _audit) = start(limits, Arc::clone(&hanging)).await;
    let cpr = three_department_citizen();
    let greedy = client(addr).await;
    // Two calls that hang fill the connection's allowance...
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = greedy.clone();
        held.push(tokio::spawn(async move {
            c.lookup(lookup_of("hanging", cpr, Duration::from_secs(5)))
                .await
        }));
    }
    assert!(
        eventually(Duration::from_secs(2), || hanging
            .started
            .load(Ordering::SeqCst)
            == 2)
        .await
    );
    // ...so a third call on the same connection does not get a stream before its deadline,
    // and never reaches a source.
    let mut c = greedy.clone();
    let status = c
        .lookup(lookup_of("jobcenter", cpr, Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(hanging.started.load(Ordering::SeqCst), 2);
    // Another connection is served at once.
    let started = Instant::now();
    client(addr)
        .await
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let limits = LimitsConfig {
        max_connections: 1,
        ..LimitsConfig::default()
    };
    let (addr, _stop, _audit) = start(limits, Arc::new(Hanging::default())).await;
    let cpr = three_department_citizen();
    let mut first = client(addr).await;
    first
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
    // The second connection is not served while the first is open.
    let second = tokio::time::timeout(Duration::from_millis(500), async {
        client(addr)
            .await
            .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
            .await
    })
    .await;
    assert!(
        !matches!(second, Ok(Ok(_))),
        "a second connection was served beyond the limit"
    );
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(3), async {
        client(addr)
            .await
            .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
            .await
    })
    .await;
    assert!(
        matches!(served, Ok(Ok(_))),
        "not served after the first connection closed: {served:?}"
    );
}
