//! A [`Source`] backed by a remote `samblik.source.v1` adapter.

use crate::deadline::remaining;
use crate::{CaseQuery, Cause, Health, Source, SourceAnswer, SourceError};
use async_trait::async_trait;
use samblik_proto::source::v1::source_service_client::SourceServiceClient;
use samblik_proto::source::v1::{CallerContext, FindCasesRequest, FindCasesResponse};
use std::time::{Duration, SystemTime};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The gRPC service name sources report health for.
pub const SOURCE_SERVICE_NAME: &str = "samblik.source.v1.SourceService";

/// A remote source. The connection is made lazily and re-made after failures, so a source that
/// is down when the gateway starts is picked up when it comes back.
#[derive(Debug, Clone)]
pub struct GrpcSource {
    id: String,
    channel: Channel,
}

impl GrpcSource {
    /// A source at `endpoint` (e.g. `http://127.0.0.1:50061`). Fails only on a malformed URI;
    /// nothing is dialled until the first call.
    pub fn new(
        id: impl Into<String>,
        endpoint: &str,
        connect_timeout: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(GrpcSource {
            id: id.into(),
            channel,
        })
    }

    /// A source at `endpoint` (`https://host:port`) over mutual TLS through `connector`, which
    /// checks the source's certificate and presents the gateway's.
    pub fn with_tls(
        id: impl Into<String>,
        endpoint: &str,
        connect_timeout: Duration,
        connector: crate::tls::TlsConnector,
    ) -> Result<Self, tonic::transport::Error> {
        // The connector does the TLS; tonic must not try (and refuses `https` without its own).
        let plain = match endpoint.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => endpoint.to_owned(),
        };
        let channel = Endpoint::from_shared(plain)?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        Ok(GrpcSource {
            id: id.into(),
            channel,
        })
    }
}

#[async_trait]
impl Source for GrpcSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn find_cases(
        &self,
        query: CaseQuery,
        caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        let mut request = tonic::Request::new(FindCasesRequest {
            cpr: query.cpr.as_str().to_owned(),
            max_tier: query.max_tier as i32,
            caller: Some(caller),
        });
        // The remaining budget goes with the request, so the source stops when the asker stops
        // waiting; taken as late as possible, and truncated by tonic, so never more than is left.
        let sent = tokio::time::Instant::now();
        let timeout = match query.deadline {
            Some(deadline) => Some(remaining(deadline).ok_or(SourceError::Timeout)?),
            None => None,
        };
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let response = SourceServiceClient::new(self.channel.clone())
            .find_cases(request)
            .await
            .map_err(|status| {
                // tonic's channel enforces the `grpc-timeout` it sends too, and ends the call as
                // CANCELLED when it runs out: that is a time-out, not a broken connection. Its
                // timer started after `sent`, so it never fires before `sent + timeout`.
                let expired = timeout.is_some_and(|t| tokio::time::Instant::now() >= sent + t);
                if status.code() == Code::Cancelled && expired {
                    SourceError::Timeout
                } else {
                    status_to_error(status)
                }
            })?
            .into_inner();
        answer_of(response)
    }

    async fn health(&self) -> Health {
        let request = HealthCheckRequest {
            service: SOURCE_SERVICE_NAME.to_owned(),
        };
        match HealthClient::new(self.channel.clone()).check(request).await {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Health::Serving,
            _ => Health::NotServing,
        }
    }
}

/// A source's decoded response as the gateway takes it: it must say when its data was current.
fn answer_of(response: FindCasesResponse) -> Result<SourceAnswer, SourceError> {
    let as_of = response
        .as_of
        .and_then(|t| SystemTime::try_from(t).ok())
        .ok_or(SourceError::Failed(Cause::Fixed(
            "answer without a valid as_of time",
        )))?;
    Ok(SourceAnswer {
        cases: response.cases,
        as_of,
    })
}

/// For the fuzz targets (feature `fuzzing`): a source's response from its bytes on the wire, as
/// the client decodes it (a message that does not decode fails the call as tonic's codec makes
/// it fail: an `INTERNAL` status).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn decode_answer(bytes: &[u8]) -> Result<SourceAnswer, SourceError> {
    use prost::Message;
    FindCasesResponse::decode(bytes)
        .map_err(|e| status_to_error(tonic::Status::internal(e.to_string())))
        .and_then(answer_of)
}

/// The kind of failure a remote source's status means, with its code. The status message is
/// the department system's text and is dropped: it could hold anything, a CPR number included.
fn status_to_error(status: tonic::Status) -> SourceError {
    let cause = Cause::Status(status.code());
    match status.code() {
        // A broken connection (e.g. a peer that does not speak HTTP/2) surfaces as Cancelled.
        Code::Unavailable | Code::Cancelled => SourceError::Unavailable(cause),
        Code::DeadlineExceeded => SourceError::Timeout,
        Code::PermissionDenied | Code::Unauthenticated => SourceError::Denied(cause),
        Code::InvalidArgument => SourceError::InvalidQuery(cause),
        _ => SourceError::Failed(cause),
    }
}
