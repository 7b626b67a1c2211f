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

/// Wraps `source` in the gateway's stack: the trace span outermost (so it sees every layer's
/// outcome, a time-out included), then the deadline.
pub fn stack(source: Arc<dyn Source>, timeout: Duration) -> SourceService {
    let id: Arc<str> = Arc::from(source.id());
    let service = ServiceBuilder::new()
        .layer(TraceLayer { source: id })
        .layer(DeadlineLayer { timeout })
        .service(SourceFn(source));
    BoxCloneSyncService::new(service)
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
            let id = source.id().to_owned();
            std::panic::AssertUnwindSafe(source.find_cases(call.query, call.caller))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(source = %id, "source panicked");
                    Err(SourceError::Failed(Cause::Fixed("the adapter panicked")))
                })
        })
    }
}

/// Ends a call at the source's own timeout or the lookup's deadline, whichever comes first,
/// as [`SourceError::Timeout`]. Dropping the call's future is how the work stops: sources are
/// cancel-safe by contract.
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

    fn call(&mut self, call: SourceCall) -> Self::Future {
        let deadline = call.deadline.min(Instant::now() + self.timeout);
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
            },
            caller: CallerContext::default(),
            deadline: Instant::now() + deadline,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_source_times_out_at_its_own_timeout() {
        let stack = stack(Arc::new(Slow { delay: None }), Duration::from_secs(2));
        let started = Instant::now();
        let outcome = stack.oneshot(call(Duration::from_secs(10))).await;
        assert_eq!(outcome.unwrap_err(), SourceError::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lookups_deadline_wins_when_it_comes_first() {
        let stack = stack(Arc::new(Slow { delay: None }), Duration::from_secs(2));
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
        );
        let answer = stack.oneshot(call(Duration::from_secs(10))).await.unwrap();
        assert!(answer.cases.is_empty());
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
        let stack = stack(Arc::new(Panicking), Duration::from_secs(2));
        for _ in 0..2 {
            let outcome = stack.clone().oneshot(call(Duration::from_secs(10))).await;
            assert_eq!(
                outcome.unwrap_err(),
                SourceError::Failed(Cause::Fixed("the adapter panicked"))
            );
        }
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
