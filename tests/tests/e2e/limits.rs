//! Limits: a client that sends too much, or opens too many calls on one connection, is held back
//! while the gateway keeps serving everybody else; a call the server's request timeout cuts off
//! leaves exactly one audit record.

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
use tonic::Code;
use tower::ServiceExt;

/// The gateway over a hanging source and a prompt one (2 s source timeouts), with `limits`.
async fn start(limits: LimitsConfig, hanging: Arc<Hanging>) -> RunningGateway {
    let hanging: Arc<dyn Source> = hanging;
    TestGateway::in_process(vec![
        (hanging, "Hanging"),
        (reference(Department::Jobcenter), "Jobcenter"),
    ])
    .adjust(|c| c.server.limits = limits)
    .start()
    .await
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
    let gateway = start(limits, Arc::new(Hanging::default())).await;
    let mut c = client(gateway.addr).await;
    let cpr = all_department_citizen();
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
    client(gateway.addr)
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
    let gateway = start(limits, Arc::new(Hanging::default())).await;
    let huge = "7".repeat(64 * 1024);
    let status = client(gateway.addr)
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

    let detail = the_unread_lookup(gateway.audit_records(), id);
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
    let gateway = start(limits, Arc::clone(&hanging)).await;
    let cpr = all_department_citizen();
    let greedy = client(gateway.addr).await;
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
    client(gateway.addr)
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
    let gateway = start(limits, Arc::new(Hanging::default())).await;
    let cpr = all_department_citizen();
    let mut first = client(gateway.addr).await;
    first
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
    // The second connection is not served while the first is open.
    let second = tokio::time::timeout(Duration::from_millis(500), async {
        client(gateway.addr)
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
        client(gateway.addr)
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

/// The gateway's audit records of `Lookup`s, from its audit directory.
fn lookups_in(gateway: &RunningGateway) -> Vec<samblik_audit::AuditRecord> {
    gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.action == samblik_audit::Action::Lookup)
        .collect()
}

/// A server request timeout of a second: longer than any prompt lookup here takes, shorter than
/// the hanging source's 2 s timeout.
fn cut_off_after_a_second() -> LimitsConfig {
    LimitsConfig {
        request_timeout_ms: 1_000,
        ..LimitsConfig::default()
    }
}

#[tokio::test]
async fn a_lookup_cut_off_by_the_request_timeout_before_it_was_read_is_recorded_once() {
    let gateway = start(cut_off_after_a_second(), Arc::new(Hanging::default())).await;
    let addr = gateway.addr;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The headers of a lookup, and a message announced as 100 bytes of which 5 ever arrive:
    // tonic is still reading it when the server's request timeout passes.
    let (mut body, frames) = futures::channel::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    body.try_send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&[
        0, 0, 0, 0, 100, 1, 2, 3, 4, 5,
    ]))))
    .unwrap();
    let request = tonic::codegen::http::Request::post(format!(
        "http://{addr}/samblik.v1.LookupService/Lookup"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header(
        "authorization",
        format!("Bearer {}", token(Department::Jobcenter)),
    )
    .body(tonic::body::Body::new(http_body_util::StreamBody::new(
        frames,
    )))
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), channel.oneshot(request))
        .await
        .expect("the server cut the call off")
        .unwrap();
    let headers = response.headers();
    assert_eq!(
        headers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("1"),
        "not CANCELLED: {headers:?}"
    );
    drop(body);

    // Recorded without waiting (the call was being dropped): poll until it is in the store.
    assert!(
        eventually(Duration::from_secs(10), || !lookups_in(&gateway).is_empty()).await,
        "the cut-off lookup left no record"
    );
    // A lookup answered after it is recorded after it: then nothing more of the first is due.
    let cpr = all_department_citizen();
    client(gateway.addr)
        .await
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
    let lookups = lookups_in(&gateway);
    let cut_off: Vec<_> = lookups.iter().filter(|r| r.cpr.is_none()).collect();
    assert_eq!(cut_off.len(), 1, "{lookups:?}");
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    let record = cut_off[0];
    assert_eq!(record.outcome, samblik_audit::Outcome::Cancelled);
    assert_eq!(record.actor.caller_id, caseworker(Department::Jobcenter).id);
    assert!(record.purpose.is_none() && record.sources.is_empty());
    let detail = record.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("before it was read"), "{detail}");
}

#[tokio::test]
async fn a_lookup_cut_off_by_the_request_timeout_in_its_handler_is_recorded_once() {
    let hanging = Arc::new(Hanging::default());
    let gateway = start(cut_off_after_a_second(), Arc::clone(&hanging)).await;
    let cpr = all_department_citizen();
    // The caller would wait 10 s, the hanging source 2 s: the server's timeout comes first, while
    // the handler waits for the source.
    let status = client(gateway.addr)
        .await
        .lookup(lookup_of("hanging", cpr, Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(hanging.started.load(Ordering::SeqCst), 1);
    assert!(
        eventually(Duration::from_secs(5), || hanging
            .cancelled
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the source call outlived the request"
    );
    // A lookup answered after the cut-off one is recorded after its record.
    let answered = client(gateway.addr)
        .await
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(2)))
        .await
        .unwrap();
    let answered_id = request_id_of(answered.metadata());
    let lookups = lookups_in(&gateway);
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    let cut_off: Vec<_> = lookups
        .iter()
        .filter(|r| r.request_id != answered_id)
        .collect();
    assert_eq!(cut_off.len(), 1, "{lookups:?}");
    // The handler's own record: it knew the citizen and the purpose.
    assert_eq!(cut_off[0].outcome, samblik_audit::Outcome::Cancelled);
    assert_eq!(
        cut_off[0].cpr.as_ref().map(samblik_proto::Cpr::as_str),
        Some(cpr)
    );
    assert!(cut_off[0].purpose.is_some());
}

/// Over `max_concurrent_lookups`, a lookup is refused at once — while the lookups holding the
/// places are still waiting — as `RESOURCE_EXHAUSTED` with reason `OVERLOADED`, and recorded;
/// the places come back when those lookups end.
#[tokio::test]
async fn over_its_lookup_limit_the_gateway_refuses_at_once_and_records_it() {
    let hanging = Arc::new(Hanging::default());
    let limits = LimitsConfig {
        max_concurrent_lookups: 2,
        ..LimitsConfig::default()
    };
    let gateway = start(limits, Arc::clone(&hanging)).await;
    let cpr = all_department_citizen();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                client(addr)
                    .await
                    .lookup(lookup_of("hanging", cpr, Duration::from_secs(10)))
                    .await
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || hanging
            .started
            .load(Ordering::SeqCst)
            == 2)
        .await
    );
    let status = client(gateway.addr)
        .await
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "refused while the places were held, not after queueing"
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason_of(&status), "OVERLOADED");
    let overloaded: Vec<_> = gateway
        .audit_records()
        .into_iter()
        .filter(|r| r.reason.as_deref() == Some("OVERLOADED"))
        .collect();
    assert_eq!(overloaded.len(), 1, "{overloaded:?}");
    assert_eq!(overloaded[0].outcome, samblik_audit::Outcome::Failed);
    assert!(overloaded[0].sources.is_empty(), "no source was asked");

    for h in held {
        h.await.unwrap().unwrap();
    }
    client(gateway.addr)
        .await
        .lookup(lookup_of("jobcenter", cpr, Duration::from_secs(10)))
        .await
        .unwrap();
}

/// One client address may hold `max_connections_per_address` connections: one more is closed
/// before a byte is read, while another address is still served.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    use tokio::io::AsyncReadExt;
    let limits = LimitsConfig {
        max_connections_per_address: 2,
        ..LimitsConfig::default()
    };
    let gateway = start(limits, Arc::new(Hanging::default())).await;
    let addr = gateway.addr;
    let held = [
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut byte))
        .await
        .expect("the third connection is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // From 127.0.0.2 (loopback too), a whole lookup still goes through.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(
            move |_: tonic::codegen::http::Uri| async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind("127.0.0.2:0".parse().unwrap())?;
                let tcp = socket.connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
            },
        ))
        .await
        .unwrap();
    LookupServiceClient::new(channel)
        .lookup(lookup_of(
            "jobcenter",
            all_department_citizen(),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    drop(held);
}

/// A connection that completed the HTTP/2 preface and then sends nothing but PINGs is closed
/// after the idle timeout and gives its slot back. (Every other test here uses its connections
/// under the default timeout, and none is cut off.)
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = LimitsConfig {
        idle_timeout_ms: 600,
        request_timeout_ms: 500,
        ..LimitsConfig::default()
    };
    let hanging: Arc<dyn Source> = Arc::new(Hanging::default());
    let gateway = TestGateway::in_process(vec![
        (hanging, "Hanging"),
        (reference(Department::Jobcenter), "Jobcenter"),
    ])
    .adjust(|c| {
        c.server.limits = limits;
        c.server.max_deadline_ms = 400;
        c.server.default_deadline_ms = 400;
    })
    .start()
    .await;
    let mut idle = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // A PING now and then is housekeeping, not use.
    let ping = b"\0\0\x08\x06\0\0\0\0\0\0\0\0\0\0\0\0\x01";
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 256];
        loop {
            let _ = idle.write_all(ping).await;
            let read = tokio::time::timeout(Duration::from_millis(100), idle.read(&mut buf));
            if let Ok(Ok(0) | Err(_)) = read.await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "not before the idle timeout"
    );
}
