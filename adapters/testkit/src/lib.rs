//! Sources that misbehave on purpose, and loopback servers for them: for the gateway's tests and
//! for anyone writing an adapter who wants to see how the gateway treats a source that hangs,
//! fails, answers garbage or answers about another citizen.
//!
//! Everything started here runs on `127.0.0.1:0` and stops when its handle is dropped.

// A test kit: a loopback port that cannot be bound fails the test that asked for it, at once.
#![allow(clippy::expect_used)]

use async_trait::async_trait;
use samblik_adapters::{CaseQuery, Health, Source, SourceAnswer, SourceError};
use samblik_proto::source::v1::source_service_server::{SourceService, SourceServiceServer};
use samblik_proto::source::v1::{CallerContext, FindCasesRequest, FindCasesResponse};
use samblik_proto::v1::Case;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A server started on a loopback port; stopped when this is dropped.
#[derive(Debug)]
pub struct RunningSource {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for RunningSource {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `source` over real gRPC (Samblik's source server) on a loopback port.
pub async fn start_source(source: Arc<dyn Source>) -> RunningSource {
    let (listener, _) = loopback().await;
    start_source_on(source, listener)
}

/// Serves `source` over real gRPC on `listener`, bound wherever the caller chose (another
/// network namespace, say).
pub fn start_source_on(source: Arc<dyn Source>, listener: TcpListener) -> RunningSource {
    let addr = listener.local_addr().expect("a bound listener's address");
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move { samblik_adapters::server::serve(source, listener, shutdown).await });
    RunningSource { addr, stop }
}

/// Serves `source` over TLS with `tls` on a loopback port.
pub async fn start_source_tls(
    source: Arc<dyn Source>,
    tls: Arc<samblik_adapters::tls::ReloadingServerConfig>,
) -> RunningSource {
    let (listener, addr) = loopback().await;
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        samblik_adapters::server::serve_tls(source, listener, tls, shutdown).await
    });
    RunningSource { addr, stop }
}

/// A source that never answers. Counts the calls that were started and those whose work was
/// cancelled (the future dropped), so a test can see that nothing is left running.
#[derive(Debug, Default)]
pub struct Hanging {
    pub started: AtomicUsize,
    pub cancelled: Arc<AtomicUsize>,
}

struct OnDrop(Arc<AtomicUsize>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Source for Hanging {
    fn id(&self) -> &str {
        "hanging"
    }

    async fn find_cases(
        &self,
        _query: CaseQuery,
        _caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _guard = OnDrop(Arc::clone(&self.cancelled));
        futures::future::pending::<Result<SourceAnswer, SourceError>>().await
    }

    async fn health(&self) -> Health {
        Health::Serving
    }
}

/// A source that answers with fixed cases, whatever it is asked. With cases of another CPR
/// number than the one asked, it is a source answering about another citizen; with malformed
/// cases, one answering garbage.
#[derive(Debug)]
pub struct Scripted {
    pub cases: Vec<Case>,
}

#[async_trait]
impl Source for Scripted {
    fn id(&self) -> &str {
        "scripted"
    }

    async fn find_cases(
        &self,
        _query: CaseQuery,
        _caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        Ok(SourceAnswer {
            cases: self.cases.clone(),
            as_of: SystemTime::now(),
        })
    }

    async fn health(&self) -> Health {
        Health::Serving
    }
}

/// A source whose every lookup panics, as an in-process adapter with a bug would.
#[derive(Debug)]
pub struct Panicking;

#[async_trait]
impl Source for Panicking {
    fn id(&self) -> &str {
        "panicking"
    }

    #[allow(clippy::panic)]
    async fn find_cases(
        &self,
        _query: CaseQuery,
        _caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        panic!("an adapter's bug")
    }

    async fn health(&self) -> Health {
        Health::Serving
    }
}

/// A source that fails every lookup with `error`.
#[derive(Debug)]
pub struct Failing {
    pub error: SourceError,
}

#[async_trait]
impl Source for Failing {
    fn id(&self) -> &str {
        "failing"
    }

    async fn find_cases(
        &self,
        _query: CaseQuery,
        _caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        Err(self.error.clone())
    }

    async fn health(&self) -> Health {
        Health::NotServing
    }
}

/// Records what every call that reaches `inner` was given: its caller context (`T` is
/// [`CallerContext`], the default), or its [`Budget`].
pub struct Recording<T = CallerContext> {
    pub inner: Arc<dyn Source>,
    pub seen: Arc<Mutex<Vec<T>>>,
}

/// What a [`Recording`] keeps of a call.
pub trait Recorded: Clone + Send + 'static {
    fn of(query: &CaseQuery, caller: &CallerContext) -> Self;
}

impl Recorded for CallerContext {
    fn of(_: &CaseQuery, caller: &CallerContext) -> Self {
        caller.clone()
    }
}

/// The time left before a call's deadline as it began (`None`: it came without one). Behind the
/// source server that is what the caller's `grpc-timeout` left: the budget the source was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub Option<Duration>);

impl Recorded for Budget {
    fn of(query: &CaseQuery, _: &CallerContext) -> Self {
        Budget(
            query
                .deadline
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now())),
        )
    }
}

impl<T: Recorded> Recording<T> {
    /// Around `inner`, with nothing seen yet.
    pub fn new(inner: Arc<dyn Source>) -> Self {
        Recording {
            inner,
            seen: Arc::default(),
        }
    }

    /// What the calls so far were given, in order.
    pub fn seen(&self) -> Vec<T> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<T> std::fmt::Debug for Recording<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("source", &self.inner.id())
            .finish()
    }
}

#[async_trait]
impl<T: Recorded> Source for Recording<T> {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn find_cases(
        &self,
        query: CaseQuery,
        caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        let recorded = T::of(&query, &caller);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(recorded);
        self.inner.find_cases(query, caller).await
    }

    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

/// A third-party adapter that refuses every lookup with `code` and a status message naming the
/// citizen it was asked about (it starts with [`BLABBING_MESSAGE`]): words from a department's
/// system that must never reach the gateway's log.
#[derive(Debug)]
pub struct Blabbing {
    pub code: tonic::Code,
}

/// How [`Blabbing`]'s status messages begin.
pub const BLABBING_MESSAGE: &str = "no record of citizen";

#[tonic::async_trait]
impl SourceService for Blabbing {
    async fn find_cases(
        &self,
        request: tonic::Request<FindCasesRequest>,
    ) -> Result<tonic::Response<FindCasesResponse>, tonic::Status> {
        Err(tonic::Status::new(
            self.code,
            format!("{BLABBING_MESSAGE} {}", request.get_ref().cpr),
        ))
    }
}

/// Serves [`Blabbing`] with `code` over real gRPC on a loopback port (its own tonic server,
/// not Samblik's source server: a third party's adapter).
pub async fn start_blabbing(code: tonic::Code) -> RunningSource {
    let (listener, addr) = loopback().await;
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SourceServiceServer::new(Blabbing { code }))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown,
            )
            .await
    });
    RunningSource { addr, stop }
}

/// A TCP server that answers every connection with bytes that are not HTTP/2.
pub async fn start_garbage_server() -> RunningSource {
    let (listener, addr) = loopback().await;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                accepted = listener.accept() => {
                    if let Ok((mut socket, _)) = accepted {
                        let _ = socket.write_all(b"HTTP/1.1 500 Oops\r\n\r\n\x00\xff\xfe garbage").await;
                        let _ = socket.shutdown().await;
                    }
                }
            }
        }
    });
    RunningSource { addr, stop }
}

/// An address on which nothing listens (a port bound and let go at once).
pub async fn dead_address() -> SocketAddr {
    loopback().await.1
}

/// A listener on a free loopback port, and its address.
async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let addr = listener.local_addr().expect("a bound listener's address");
    (listener, addr)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use samblik_proto::Cpr;
    use samblik_proto::v1::Tier;

    fn query() -> CaseQuery {
        CaseQuery {
            cpr: Cpr::parse("0101901234").unwrap(),
            max_tier: Tier::Existence,
            deadline: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_counts_as_cancelled_once_dropped() {
        let hanging = Hanging::default();
        let call = hanging.find_cases(query(), CallerContext::default());
        let outcome = tokio::time::timeout(Duration::from_millis(20), call).await;
        assert!(outcome.is_err(), "a hanging source answered");
        assert_eq!(hanging.started.load(Ordering::SeqCst), 1);
        assert_eq!(hanging.cancelled.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_listens_on_a_dead_address() {
        let addr = dead_address().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_recording_source_keeps_the_time_left_to_each_call() {
        let budgets = Recording::<Budget>::new(Arc::new(Scripted { cases: Vec::new() }));
        let mut asked = query();
        asked.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(300));
        budgets
            .find_cases(asked, CallerContext::default())
            .await
            .unwrap();
        budgets
            .find_cases(query(), CallerContext::default())
            .await
            .unwrap();
        assert_eq!(
            budgets.seen(),
            [Budget(Some(Duration::from_millis(300))), Budget(None)]
        );
    }

    #[tokio::test]
    async fn a_recording_source_keeps_what_it_was_asked() {
        let recording = Recording::<CallerContext>::new(Arc::new(Failing {
            error: SourceError::Timeout,
        }));
        let caller = CallerContext {
            request_id: "r-1".into(),
            ..CallerContext::default()
        };
        let outcome = recording.find_cases(query(), caller).await;
        assert_eq!(outcome.unwrap_err(), SourceError::Timeout);
        assert_eq!(recording.seen()[0].request_id, "r-1");
    }
}
