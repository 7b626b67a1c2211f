//! The source stack: every source is wrapped once, at start-up, in one stack of tower layers,
//! and every call of it goes through that stack. It carries the deadline and the trace span;
//! resilience, caching and telemetry are further layers here, never code in the pipeline.
//!
//! Deadlines are on tokio's clock, so tests can run them on paused time.

use futures::FutureExt;
use futures::future::BoxFuture;
use samblik_adapters::{CaseQuery, Cause, Source, SourceAnswer, SourceError};
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::SourceStatus;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use tracing::Instrument;

/// One call of a source.
#[derive(Debug, Clone)]
pub struct SourceCall {
    pub query: CaseQuery,
    pub caller: CallerContext,
    /// When the lookup's answer is due: no layer lets the call run past it.
    pub deadline: Instant,
}

/// A source behind its stack.
pub type SourceService = BoxCloneSyncService<SourceCall, SourceAnswer, SourceError>;

/// What the caller is told of a source that gave no answer: its status and a fixed sentence.
/// `SourceError` carries nothing of the department system's own words, and neither does this.
pub fn failure_status(error: &SourceError) -> (SourceStatus, &'static str) {
    match error {
        SourceError::Timeout => (
            SourceStatus::Timeout,
            "the department's system did not answer in time",
        ),
        SourceError::Unavailable(Cause::Fixed(CIRCUIT_OPEN)) => (
            SourceStatus::Unavailable,
            "the department's system failed repeatedly; it is not asked again for a moment",
        ),
        SourceError::Unavailable(Cause::Fixed(BUSY)) => (
            SourceStatus::Unavailable,
            "the department's system is busy with other lookups",
        ),
        SourceError::Unavailable(_) => (
            SourceStatus::Unavailable,
            "the department's system is unavailable",
        ),
        SourceError::Denied(_) => (
            SourceStatus::Denied,
            "the department's system refused the lookup",
        ),
        SourceError::InvalidQuery(_) | SourceError::Failed(_) => {
            (SourceStatus::Error, "the department's system failed")
        }
    }
}

/// Why a call was answered without asking the source: its circuit is open.
pub const CIRCUIT_OPEN: &str = "circuit open";
/// Why a call was answered without asking the source: as many calls as it may have are in flight.
pub const BUSY: &str = "busy";

/// How a source is held back when it fails or is slow (per source, from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resilience {
    /// Calls in flight at once; beyond it a call is answered at once as busy. 0: no limit.
    pub max_concurrent: usize,
    /// Consecutive failures (time-outs, unavailable, failed) that open the circuit. 0: never.
    pub breaker_failures: u32,
    /// How long an open circuit answers at once before it lets one probe call through.
    pub breaker_cool_down: Duration,
    /// The circuit also opens when, of the last this many calls (at most [`MAX_WINDOW`]), at
    /// least `breaker_failure_rate_percent` failed: a source that fails every other call never
    /// fails many in a row. 0: no window.
    pub breaker_window: u32,
    pub breaker_failure_rate_percent: u32,
}

/// The longest failure-rate window: the outcomes are the bits of one `u64`.
pub const MAX_WINDOW: u32 = 64;

impl Resilience {
    /// Neither limit: every call reaches the source.
    pub const NONE: Resilience = Resilience {
        max_concurrent: 0,
        breaker_failures: 0,
        breaker_cool_down: Duration::ZERO,
        breaker_window: 0,
        breaker_failure_rate_percent: 0,
    };
}

/// A source's circuit as health and operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls reach the source.
    Closed,
    /// Calls are answered at once as unavailable.
    Open,
    /// One probe call is let through to see whether the source is back.
    HalfOpen,
}

/// Follows a source's [`CircuitState`]; `None` for a source without a circuit breaker.
pub type CircuitWatch = Option<tokio::sync::watch::Receiver<CircuitState>>;

/// Wraps `source` in the gateway's stack: the trace span outermost (so it sees every layer's
/// outcome, a time-out or an open circuit included), then the bulkhead (a busy answer never
/// counts against the circuit), the circuit breaker, the deadline, and the source.
pub fn stack(source: Arc<dyn Source>, timeout: Duration, resilience: Resilience) -> SourceService {
    stack_watched(source, timeout, resilience).0
}

/// [`stack`], and a watch of its circuit's state.
pub fn stack_watched(
    source: Arc<dyn Source>,
    timeout: Duration,
    resilience: Resilience,
) -> (SourceService, CircuitWatch) {
    let id: Arc<str> = Arc::from(source.id());
    let breaker =
        (resilience.breaker_failures > 0 || resilience.breaker_window > 0).then(|| BreakerLayer {
            source: Arc::clone(&id),
            failures: resilience.breaker_failures,
            cool_down: resilience.breaker_cool_down,
            window: resilience.breaker_window.min(MAX_WINDOW),
            rate_percent: resilience.breaker_failure_rate_percent,
            states: Arc::new(tokio::sync::watch::Sender::new(CircuitState::Closed)),
        });
    let watch = breaker.as_ref().map(|b| b.states.subscribe());
    let service = ServiceBuilder::new()
        .layer(TraceLayer {
            source: Arc::clone(&id),
        })
        .option_layer(
            (resilience.max_concurrent > 0).then(|| BulkheadLayer::new(resilience.max_concurrent)),
        )
        .option_layer(breaker)
        .layer(DeadlineLayer { timeout })
        .service(SourceFn(source));
    (BoxCloneSyncService::new(service), watch)
}

/// At most `limit` calls of the source in flight; one more is answered at once as busy, so a
/// slow department cannot hold every task of the gateway.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    permits: Arc<tokio::sync::Semaphore>,
}

impl BulkheadLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            permits: Arc::clone(&self.permits),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    permits: Arc<tokio::sync::Semaphore>,
}

impl<S> Service<SourceCall> for Bulkhead<S>
where
    S: Service<SourceCall, Response = SourceAnswer, Error = SourceError>,
    S::Future: Send + 'static,
{
    type Response = SourceAnswer;
    type Error = SourceError;
    type Future = BoxFuture<'static, Result<SourceAnswer, SourceError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: SourceCall) -> Self::Future {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                let answer = self.inner.call(call);
                Box::pin(async move {
                    let answer = answer.await;
                    drop(permit);
                    answer
                })
            }
            Err(_) => Box::pin(std::future::ready(Err(SourceError::Unavailable(
                Cause::Fixed(BUSY),
            )))),
        }
    }
}

/// The circuit breaker: after `failures` consecutive failures, or when at least `rate_percent`
/// of the last `window` calls failed, the source is answered at once as unavailable, without a
/// call, for `cool_down`; then one probe call is let through, which closes the circuit on
/// success and opens it again on failure. A refusal (denied, invalid query) is an answer: the
/// source is alive.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    pub source: Arc<str>,
    /// 0: consecutive failures alone never open it.
    pub failures: u32,
    pub cool_down: Duration,
    /// 0: no failure-rate window.
    pub window: u32,
    pub rate_percent: u32,
    /// Where the circuit's state is published (health, operators).
    pub states: Arc<tokio::sync::watch::Sender<CircuitState>>,
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            config: self.clone(),
            state: Arc::new(std::sync::Mutex::new(Circuit::CLOSED)),
        }
    }
}

/// The circuit's state, shared by every clone of the source's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    /// `failures` in a row just now; `recent`'s low `seen` bits are the last calls' outcomes
    /// (1: failed), newest lowest.
    Closed {
        failures: u32,
        recent: u64,
        seen: u32,
    },
    Open {
        since: Instant,
    },
    /// One probe call is in flight.
    Probing,
}

#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    config: BreakerLayer,
    state: Arc<std::sync::Mutex<Circuit>>,
}

impl<S> Breaker<S> {
    /// Whether a call may go through now (and, from an open circuit past its cool-down, makes
    /// it the probe).
    fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            Circuit::Closed { .. } => true,
            Circuit::Open { since } if since.elapsed() >= self.config.cool_down => {
                *state = Circuit::Probing;
                self.config.states.send_replace(CircuitState::HalfOpen);
                true
            }
            Circuit::Open { .. } | Circuit::Probing => false,
        }
    }
}

/// Records a call's outcome in the circuit.
fn settle(state: &std::sync::Mutex<Circuit>, config: &BreakerLayer, failed: bool) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let next = match *state {
        Circuit::Closed {
            failures,
            recent,
            seen,
        } => {
            let closed = Circuit::Closed {
                failures: if failed { failures + 1 } else { 0 },
                recent: (recent << 1) | u64::from(failed),
                seen: (seen + 1).min(MAX_WINDOW),
            };
            if closed.trips(config) {
                Circuit::Open {
                    since: Instant::now(),
                }
            } else {
                closed
            }
        }
        // The probe's outcome decides.
        Circuit::Open { .. } | Circuit::Probing if failed => Circuit::Open {
            since: Instant::now(),
        },
        Circuit::Open { .. } | Circuit::Probing => Circuit::CLOSED,
    };
    if matches!(next, Circuit::Open { .. }) && !matches!(*state, Circuit::Open { .. }) {
        tracing::warn!(source = %config.source, "circuit opened after repeated failures");
    }
    if matches!(next, Circuit::Closed { .. }) && !matches!(*state, Circuit::Closed { .. }) {
        tracing::info!(source = %config.source, "circuit closed: the source answered again");
    }
    let (was, now) = (state.shown(), next.shown());
    *state = next;
    // Only a change is published: most calls leave the circuit as it was, and the watch's lock
    // need not be taken for them.
    if was != now {
        config.states.send_replace(now);
    }
}

impl Circuit {
    const CLOSED: Circuit = Circuit::Closed {
        failures: 0,
        recent: 0,
        seen: 0,
    };

    /// The state as health and operators see it.
    fn shown(&self) -> CircuitState {
        match self {
            Circuit::Closed { .. } => CircuitState::Closed,
            Circuit::Open { .. } => CircuitState::Open,
            Circuit::Probing => CircuitState::HalfOpen,
        }
    }

    /// Whether a closed circuit's record of calls opens it.
    fn trips(&self, config: &BreakerLayer) -> bool {
        let Circuit::Closed {
            failures,
            recent,
            seen,
        } = *self
        else {
            return false;
        };
        let consecutive = config.failures > 0 && failures >= config.failures;
        let rate = config.window > 0 && seen >= config.window && {
            let mask = u64::MAX >> (MAX_WINDOW - config.window);
            (recent & mask).count_ones() * 100 >= config.rate_percent * config.window
        };
        consecutive || rate
    }
}

impl<S> Service<SourceCall> for Breaker<S>
where
    S: Service<SourceCall, Response = SourceAnswer, Error = SourceError>,
    S::Future: Send + 'static,
{
    type Response = SourceAnswer;
    type Error = SourceError;
    type Future = BoxFuture<'static, Result<SourceAnswer, SourceError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: SourceCall) -> Self::Future {
        if !self.admit() {
            return Box::pin(std::future::ready(Err(SourceError::Unavailable(
                Cause::Fixed(CIRCUIT_OPEN),
            ))));
        }
        let answer = self.inner.call(call);
        let state = Arc::clone(&self.state);
        let config = self.config.clone();
        Box::pin(async move {
            let answer = answer.await;
            let failed = matches!(
                answer,
                Err(SourceError::Timeout | SourceError::Unavailable(_) | SourceError::Failed(_))
            );
            settle(&state, &config, failed);
            answer
        })
    }
}

/// The innermost service: the source itself, contained: a source that panics (an in-process
/// adapter's bug) fails as [`SourceError::Failed`] and its department shows ERROR, while the
/// others are served.
#[derive(Clone)]
pub struct SourceFn(pub Arc<dyn Source>);

impl std::fmt::Debug for SourceFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SourceFn").field(&self.0.id()).finish()
    }
}

impl Service<SourceCall> for SourceFn {
    type Response = SourceAnswer;
    type Error = SourceError;
    type Future = BoxFuture<'static, Result<SourceAnswer, SourceError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: SourceCall) -> Self::Future {
        let source = Arc::clone(&self.0);
        Box::pin(async move {
            let outcome = std::panic::AssertUnwindSafe(source.find_cases(call.query, call.caller))
                .catch_unwind()
                .await;
            outcome.unwrap_or_else(|_| {
                tracing::error!(source = %source.id(), "source panicked");
                Err(SourceError::Failed(Cause::Fixed("the adapter panicked")))
            })
        })
    }
}

/// Ends a call at the source's own timeout or the lookup's deadline, whichever comes first,
/// as [`SourceError::Timeout`]. Dropping the call's future is how the work stops: sources are
/// cancel-safe by contract. The deadline goes down with the call ([`CaseQuery::deadline`]), so a
/// remote source is sent the remaining budget as its `grpc-timeout` and stops when it passes.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    pub timeout: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<SourceCall> for Deadline<S>
where
    S: Service<SourceCall, Response = SourceAnswer, Error = SourceError>,
    S::Future: Send + 'static,
{
    type Response = SourceAnswer;
    type Error = SourceError;
    type Future = BoxFuture<'static, Result<SourceAnswer, SourceError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: SourceCall) -> Self::Future {
        let deadline = call.deadline.min(Instant::now() + self.timeout);
        // The source learns it too: a remote one gets what is left as its `grpc-timeout`.
        call.query.deadline = Some(call.query.deadline.map_or(deadline, |d| d.min(deadline)));
        let answer = self.inner.call(call);
        Box::pin(async move {
            tokio::time::timeout_at(deadline, answer)
                .await
                .unwrap_or(Err(SourceError::Timeout))
        })
    }
}

/// One `source_call` span per call, with the source, the request id, the tier asked for, and
/// the outcome: status, number of cases, time taken. Failures are logged by kind only.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    pub source: Arc<str>,
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            source: Arc::clone(&self.source),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    source: Arc<str>,
}

impl<S> Service<SourceCall> for Trace<S>
where
    S: Service<SourceCall, Response = SourceAnswer, Error = SourceError>,
    S::Future: Send + 'static,
{
    type Response = SourceAnswer;
    type Error = SourceError;
    type Future = BoxFuture<'static, Result<SourceAnswer, SourceError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SourceError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: SourceCall) -> Self::Future {
        let span = tracing::info_span!(
            "source_call",
            source = %self.source,
            request_id = %call.caller.request_id,
            max_tier = call.query.max_tier as i32,
            status = tracing::field::Empty,
            cases = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        let source = Arc::clone(&self.source);
        let started = Instant::now();
        let answer = {
            let _entered = span.enter();
            self.inner.call(call)
        };
        Box::pin(
            async move {
                let outcome = answer.await;
                let span = tracing::Span::current();
                match &outcome {
                    Ok(answer) => {
                        span.record("status", SourceStatus::Ok.as_str_name());
                        span.record("cases", answer.cases.len());
                    }
                    Err(error) => {
                        span.record("status", failure_status(error).0.as_str_name());
                        // The kind and the gRPC status code only: `SourceError` carries nothing
                        // of the department system's own message.
                        tracing::warn!(source = %source, error = %error, "source lookup failed");
                    }
                }
                span.record("elapsed_ms", started.elapsed().as_millis() as u64);
                outcome
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use async_trait::async_trait;
    use samblik_adapters::Health;
    use samblik_proto::Cpr;
    use samblik_proto::v1::Tier;
    use std::time::SystemTime;
    use tower::ServiceExt;

    /// Answers after `delay` (on tokio's clock), or never.
    struct Slow {
        delay: Option<Duration>,
    }

    #[async_trait]
    impl Source for Slow {
        fn id(&self) -> &str {
            "slow"
        }

        async fn find_cases(
            &self,
            _: CaseQuery,
            _: CallerContext,
        ) -> Result<SourceAnswer, SourceError> {
            match self.delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending::<()>().await,
            }
            Ok(SourceAnswer {
                cases: Vec::new(),
                as_of: SystemTime::UNIX_EPOCH,
            })
        }

        async fn health(&self) -> Health {
            Health::Serving
        }
    }

    fn call(deadline: Duration) -> SourceCall {
        SourceCall {
            query: CaseQuery {
                cpr: Cpr::parse("0101901234").unwrap(),
                max_tier: Tier::Existence,
                deadline: None,
            },
            caller: CallerContext::default(),
            deadline: Instant::now() + deadline,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_source_times_out_at_its_own_timeout() {
        let stack = stack(
            Arc::new(Slow { delay: None }),
            Duration::from_secs(2),
            Resilience::NONE,
        );
        let started = Instant::now();
        let outcome = stack.oneshot(call(Duration::from_secs(10))).await;
        assert_eq!(outcome.unwrap_err(), SourceError::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lookups_deadline_wins_when_it_comes_first() {
        let stack = stack(
            Arc::new(Slow { delay: None }),
            Duration::from_secs(2),
            Resilience::NONE,
        );
        let started = Instant::now();
        let outcome = stack.oneshot(call(Duration::from_millis(700))).await;
        assert_eq!(outcome.unwrap_err(), SourceError::Timeout);
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_through() {
        let stack = stack(
            Arc::new(Slow {
                delay: Some(Duration::from_millis(1_999)),
            }),
            Duration::from_secs(2),
            Resilience::NONE,
        );
        let answer = stack.oneshot(call(Duration::from_secs(10))).await.unwrap();
        assert!(answer.cases.is_empty());
    }

    /// Answers at once, keeping the deadline each call was given.
    #[derive(Default)]
    struct Deadlines(std::sync::Mutex<Vec<Option<Instant>>>);

    #[async_trait]
    impl Source for Deadlines {
        fn id(&self) -> &str {
            "deadlines"
        }

        async fn find_cases(
            &self,
            query: CaseQuery,
            _: CallerContext,
        ) -> Result<SourceAnswer, SourceError> {
            self.0.lock().unwrap().push(query.deadline);
            Ok(SourceAnswer {
                cases: Vec::new(),
                as_of: SystemTime::UNIX_EPOCH,
            })
        }

        async fn health(&self) -> Health {
            Health::Serving
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_source_is_given_the_earlier_of_its_timeout_and_the_lookups_deadline() {
        let source = Arc::new(Deadlines::default());
        let stack = stack(source.clone(), Duration::from_secs(2), Resilience::NONE);
        let now = Instant::now();
        stack
            .clone()
            .oneshot(call(Duration::from_secs(10)))
            .await
            .unwrap();
        stack
            .oneshot(call(Duration::from_millis(700)))
            .await
            .unwrap();
        assert_eq!(
            *source.0.lock().unwrap(),
            [
                Some(now + Duration::from_secs(2)),
                Some(now + Duration::from_millis(700))
            ]
        );
    }

    struct Panicking;

    #[async_trait]
    impl Source for Panicking {
        fn id(&self) -> &str {
            "panicking"
        }

        async fn find_cases(
            &self,
            _: CaseQuery,
            _: CallerContext,
        ) -> Result<SourceAnswer, SourceError> {
            panic!("an adapter's bug")
        }

        async fn health(&self) -> Health {
            Health::Serving
        }
    }

    #[tokio::test]
    async fn a_panicking_source_fails_as_an_error_and_the_stack_goes_on() {
        let stack = stack(
            Arc::new(Panicking),
            Duration::from_secs(2),
            Resilience::NONE,
        );
        for _ in 0..2 {
            let outcome = stack.clone().oneshot(call(Duration::from_secs(10))).await;
            assert_eq!(
                outcome.unwrap_err(),
                SourceError::Failed(Cause::Fixed("the adapter panicked"))
            );
        }
    }

    /// Answers with `outcome` (on/off), counting the calls that reached it.
    struct Flaky {
        failing: std::sync::atomic::AtomicBool,
        denying: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Flaky {
        fn new() -> Arc<Self> {
            Arc::new(Flaky {
                failing: true.into(),
                denying: false.into(),
                calls: 0.into(),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Source for Flaky {
        fn id(&self) -> &str {
            "flaky"
        }

        async fn find_cases(
            &self,
            _: CaseQuery,
            _: CallerContext,
        ) -> Result<SourceAnswer, SourceError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.denying.load(SeqCst) {
                return Err(SourceError::Denied(Cause::Fixed("no")));
            }
            if self.failing.load(SeqCst) {
                return Err(SourceError::Unavailable(Cause::Fixed("down")));
            }
            Ok(SourceAnswer {
                cases: Vec::new(),
                as_of: SystemTime::UNIX_EPOCH,
            })
        }

        async fn health(&self) -> Health {
            Health::Serving
        }
    }

    const BREAKER: Resilience = Resilience {
        max_concurrent: 0,
        breaker_failures: 3,
        breaker_cool_down: Duration::from_secs(10),
        breaker_window: 0,
        breaker_failure_rate_percent: 0,
    };

    /// A source that fails every other call never fails three in a row; half of the last ten
    /// calls failing opens its circuit, and the state is published as it changes.
    #[tokio::test(start_paused = true)]
    async fn a_failure_rate_over_the_window_opens_the_circuit_and_its_state_is_watched() {
        let flaky = Flaky::new();
        let resilience = Resilience {
            breaker_window: 10,
            breaker_failure_rate_percent: 50,
            ..BREAKER
        };
        let (stack, watch) = stack_watched(flaky.clone(), Duration::from_secs(2), resilience);
        let mut watch = watch.unwrap();
        assert_eq!(*watch.borrow_and_update(), CircuitState::Closed);
        let ask = || stack.clone().oneshot(call(Duration::from_secs(5)));
        let open = SourceError::Unavailable(Cause::Fixed(CIRCUIT_OPEN));
        let alternate = |i: usize| {
            flaky
                .failing
                .store(i.is_multiple_of(2), std::sync::atomic::Ordering::SeqCst);
        };
        // Nine calls, five failed: not yet a whole window.
        for i in 0..9 {
            alternate(i);
            assert_ne!(ask().await.err(), Some(open.clone()), "call {i}");
        }
        assert!(!watch.has_changed().unwrap());
        // The tenth succeeds, but five of the ten failed: open.
        alternate(9);
        ask().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), CircuitState::Open);
        assert_eq!(ask().await.unwrap_err(), open);
        assert_eq!(flaky.calls(), 10);
        // After the cool-down one probe goes through; it succeeds, and the window starts afresh.
        tokio::time::advance(Duration::from_secs(10)).await;
        ask().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), CircuitState::Closed);
        for i in 0..4 {
            alternate(i);
            assert_ne!(ask().await.err(), Some(open.clone()));
        }
        assert_eq!(*watch.borrow(), CircuitState::Closed);
    }

    #[test]
    fn the_window_counts_only_its_own_calls() {
        let config = BreakerLayer {
            source: Arc::from("s"),
            failures: 0,
            cool_down: Duration::from_secs(1),
            window: 4,
            rate_percent: 75,
            states: Arc::new(tokio::sync::watch::Sender::new(CircuitState::Closed)),
        };
        let closed = |recent: u64, seen: u32| Circuit::Closed {
            failures: 0,
            recent,
            seen,
        };
        // Three of the last four failed (older failures beyond the window do not count).
        assert!(closed(0b1111_0111, 8).trips(&config));
        assert!(!closed(0b1111_0011, 8).trips(&config));
        assert!(!closed(0b0111, 3).trips(&config), "not a whole window yet");
        let full = BreakerLayer {
            window: MAX_WINDOW,
            rate_percent: 100,
            ..config
        };
        assert!(closed(u64::MAX, MAX_WINDOW).trips(&full));
        assert!(!closed(u64::MAX - 1, MAX_WINDOW).trips(&full));
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() {
        let flaky = Flaky::new();
        let stack = stack(flaky.clone(), Duration::from_secs(2), BREAKER);
        let ask = || stack.clone().oneshot(call(Duration::from_secs(5)));
        let down = SourceError::Unavailable(Cause::Fixed("down"));
        let open = SourceError::Unavailable(Cause::Fixed(CIRCUIT_OPEN));
        for _ in 0..3 {
            assert_eq!(ask().await.unwrap_err(), down);
        }
        assert_eq!(flaky.calls(), 3);
        // Open: answered at once, the source not asked.
        assert_eq!(ask().await.unwrap_err(), open);
        assert_eq!(flaky.calls(), 3);
        assert_eq!(failure_status(&open).0, SourceStatus::Unavailable);
        // After the cool-down one probe goes through; it fails, and the circuit opens again.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(ask().await.unwrap_err(), down);
        assert_eq!(ask().await.unwrap_err(), open);
        assert_eq!(flaky.calls(), 4);
        // The next probe succeeds and closes it.
        tokio::time::advance(Duration::from_secs(10)).await;
        flaky
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        ask().await.unwrap();
        ask().await.unwrap();
        assert_eq!(flaky.calls(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_source_is_alive_and_keeps_its_circuit_closed() {
        let flaky = Flaky::new();
        flaky
            .denying
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let stack = stack(flaky.clone(), Duration::from_secs(2), BREAKER);
        for _ in 0..5 {
            let outcome = stack.clone().oneshot(call(Duration::from_secs(5))).await;
            assert!(
                matches!(outcome, Err(SourceError::Denied(_))),
                "{outcome:?}"
            );
        }
        assert_eq!(flaky.calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_its_bulkhead_a_call_is_busy_at_once_and_time_outs_open_the_circuit() {
        let resilience = Resilience {
            max_concurrent: 1,
            ..BREAKER
        };
        let stack = stack(
            Arc::new(Slow { delay: None }),
            Duration::from_secs(2),
            resilience,
        );
        let first = tokio::spawn(stack.clone().oneshot(call(Duration::from_secs(5))));
        tokio::task::yield_now().await;
        let started = Instant::now();
        let busy = stack.clone().oneshot(call(Duration::from_secs(5))).await;
        assert_eq!(
            busy.unwrap_err(),
            SourceError::Unavailable(Cause::Fixed(BUSY))
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(first.await.unwrap().unwrap_err(), SourceError::Timeout);
        // The permit is back; two more time-outs open the circuit (a busy answer never counted).
        for _ in 0..2 {
            let outcome = stack.clone().oneshot(call(Duration::from_secs(5))).await;
            assert_eq!(outcome.unwrap_err(), SourceError::Timeout);
        }
        let open = stack.clone().oneshot(call(Duration::from_secs(5))).await;
        assert_eq!(
            open.unwrap_err(),
            SourceError::Unavailable(Cause::Fixed(CIRCUIT_OPEN))
        );
    }

    #[test]
    fn every_failure_has_a_status_and_a_fixed_sentence() {
        let cause = Cause::Fixed("test");
        for (error, status) in [
            (SourceError::Timeout, SourceStatus::Timeout),
            (SourceError::Unavailable(cause), SourceStatus::Unavailable),
            (SourceError::Denied(cause), SourceStatus::Denied),
            (SourceError::InvalidQuery(cause), SourceStatus::Error),
            (SourceError::Failed(cause), SourceStatus::Error),
        ] {
            assert_eq!(failure_status(&error).0, status, "{error:?}");
        }
    }
}
