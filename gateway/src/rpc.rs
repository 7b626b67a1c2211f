//! How every RPC of the gateway runs: a fresh request id, the request's span, the answer with
//! the request id header, and a refusal turned into its status ([`crate::error`]).

use crate::error::{GatewayError, REQUEST_ID_HEADER};
use futures::FutureExt;
use samblik_adapters::parse_grpc_timeout;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// A request's span: which lookup-side fields it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// `lookup`: a lookup or a policy explanation, with its purpose and relation.
    Lookup,
    /// `api`: a registry or audit call.
    Api,
}

/// The span of request `request_id` to `rpc`; the caller and system are recorded once known.
pub fn span(kind: SpanKind, request_id: &str, rpc: &'static str) -> tracing::Span {
    match kind {
        SpanKind::Lookup => tracing::info_span!(
            "lookup",
            request_id = %request_id,
            rpc,
            system = tracing::field::Empty,
            caller = tracing::field::Empty,
            department = tracing::field::Empty,
            purpose = tracing::field::Empty,
            relation = tracing::field::Empty,
        ),
        SpanKind::Api => tracing::info_span!(
            "api",
            request_id = %request_id,
            rpc,
            system = tracing::field::Empty,
            caller = tracing::field::Empty,
            department = tracing::field::Empty,
        ),
    }
}

/// Runs one RPC: `handle` gets the request id, inside the request's span; its answer leaves
/// with the request id header, its refusal as a status that carries the id too.
pub async fn call<T>(
    kind: SpanKind,
    rpc: &'static str,
    handle: impl AsyncFnOnce(&str) -> Result<T, GatewayError>,
) -> Result<Response<T>, Status> {
    let request_id = uuid::Uuid::new_v4().to_string();
    async {
        let answer = contained(handle(&request_id))
            .await
            .map_err(|e| e.into_status(&request_id))?;
        let mut response = Response::new(answer);
        if let Ok(value) = request_id.parse() {
            response.metadata_mut().insert(REQUEST_ID_HEADER, value);
        }
        Ok(response)
    }
    .instrument(span(kind, &request_id, rpc))
    .await
}

/// Runs `work`, turning a panic in it into [`GatewayError::internal`]: the caller gets INTERNAL
/// with the request id, the request's audit draft records the failure as it unwinds, and the
/// process goes on serving. Nothing of the panic's message is logged or answered: it could hold
/// anything.
pub async fn contained<T>(
    work: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!("request handler panicked; answered INTERNAL");
            Err(GatewayError::internal())
        }
    }
}

/// The caller's deadline, from its `grpc-timeout` header (parsed as the source server does).
pub fn client_timeout<T>(request: &Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}
