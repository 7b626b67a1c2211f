//! Samblik's sources: where the cases come from.
//!
//! - [`Source`]: the contract every department's adapter fulfils — `id()`, `find_cases()`,
//!   `health()`. Timeouts, tracing and the rest are applied uniformly by the gateway around
//!   every source, never inside one; each call's deadline travels with it
//!   ([`CaseQuery::deadline`]), to a remote source as its `grpc-timeout`.
//! - [`GrpcSource`]: a [`Source`] that calls a remote adapter over `samblik.source.v1`.
//! - [`server`]: exposes any [`Source`] as a `samblik.source.v1` gRPC server (with health and
//!   reflection), so an adapter only has to implement the trait.
//! - The reference sources for child welfare, jobcenter and integration, which stand in for the
//!   adapters that run next to real fagsystemer, are the `samblik-reference` crate.
//! - [`tls`]: rustls for every listener and for the gateway's mutual-TLS connections to
//!   sources, with certificates reloaded from their files on change.

mod deadline;
mod grpc;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use grpc::decode_answer;
pub mod server;
pub mod tls;

pub use deadline::{MAX_GRPC_TIMEOUT, parse_grpc_timeout};
pub use grpc::GrpcSource;

use async_trait::async_trait;
use samblik_proto::Cpr;
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::{Case, Tier};
use std::time::SystemTime;

/// What the gateway asks a source.
#[derive(Debug, Clone)]
pub struct CaseQuery {
    pub cpr: Cpr,
    /// The highest tier the gateway could disclose; a source fills in nothing above it.
    pub max_tier: Tier,
    /// When the asker stops waiting for the answer, on tokio's clock: the earlier of the
    /// source's timeout and the lookup's deadline, as the gateway's stack sets it, or what the
    /// caller's `grpc-timeout` left when a request reached the source server. `None`: no
    /// deadline was given. A source need not watch it (its future is dropped when it passes);
    /// one that asks further, as [`GrpcSource`] does, passes what is left on.
    pub deadline: Option<tokio::time::Instant>,
}

/// A source's answer.
#[derive(Debug, Clone)]
pub struct SourceAnswer {
    /// Every case the department holds for the citizen, filled in up to the asked tier.
    pub cases: Vec<Case>,
    /// When the source's data was current.
    pub as_of: SystemTime,
}

/// Why a source gave no answer: the kind of failure and its [`Cause`]. It never carries the
/// department system's own words (a gRPC status message, an exception text): those could hold
/// anything, a CPR number included, and this error is what the gateway logs. Callers see only
/// the source's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source could not be reached or is not serving.
    #[error("source unavailable ({0})")]
    Unavailable(Cause),
    /// The source's own deadline passed.
    #[error("source timed out")]
    Timeout,
    /// The source refused the lookup.
    #[error("source denied the lookup ({0})")]
    Denied(Cause),
    /// The query was not acceptable to the source.
    #[error("invalid query ({0})")]
    InvalidQuery(Cause),
    /// The source failed, or answered with something that is not a valid answer.
    #[error("source error ({0})")]
    Failed(Cause),
}

/// What may be said about a source's failure, in a log line or to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A remote source answered with this gRPC status code; its message is dropped unread.
    Status(tonic::Code),
    /// A fixed description from the adapter's own code. `'static`, so that it cannot carry
    /// anything of a request or of the department's data.
    Fixed(&'static str),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Status(code) => write!(f, "gRPC status {code:?}"),
            Cause::Fixed(text) => f.write_str(text),
        }
    }
}

/// Whether a source can serve lookups now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Serving,
    NotServing,
}

/// A department's case source. Implementations must be cancel-safe: the gateway drops the
/// future when its deadline passes, and the work must stop then. Behind the source server
/// ([`server`]) the same holds for the caller's `grpc-timeout`: the server drops the future when
/// it passes and answers DEADLINE_EXCEEDED.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The source id, e.g. `jobcenter`; unique within a gateway.
    fn id(&self) -> &str;

    /// The cases of one citizen, up to `query.max_tier`. No case is `Ok` with an empty list;
    /// not being able to tell is an error.
    async fn find_cases(
        &self,
        query: CaseQuery,
        caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError>;

    async fn health(&self) -> Health;
}
