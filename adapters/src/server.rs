//! Exposes any [`Source`] as a `samblik.source.v1` gRPC server, with the standard health service
//! and server reflection, so an adapter only implements the trait.

use crate::deadline::deadline_of;
use crate::grpc::SOURCE_SERVICE_NAME;
use crate::{CaseQuery, Source, SourceError};
use samblik_proto::Cpr;
use samblik_proto::source::v1::source_service_server::{SourceService, SourceServiceServer};
use samblik_proto::source::v1::{FindCasesRequest, FindCasesResponse};
use samblik_proto::v1::Tier;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The tonic service around a [`Source`].
#[derive(Clone)]
pub struct SourceGrpc {
    source: Arc<dyn Source>,
}

impl std::fmt::Debug for SourceGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceGrpc")
            .field("source", &self.source.id())
            .finish()
    }
}

impl SourceGrpc {
    pub fn new(source: Arc<dyn Source>) -> Self {
        SourceGrpc { source }
    }

    pub fn into_server(self) -> SourceServiceServer<Self> {
        SourceServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl SourceService for SourceGrpc {
    async fn find_cases(
        &self,
        request: Request<FindCasesRequest>,
    ) -> Result<Response<FindCasesResponse>, Status> {
        let deadline = match request.extensions().get::<Arrived>() {
            Some(arrived) => arrived.deadline,
            // Served by another tonic server, without the stamp: from now, a little late.
            None => deadline_of(request.metadata(), Instant::now()),
        };
        let request = request.into_inner();
        let caller = request.caller.unwrap_or_default();
        let span = tracing::info_span!(
            "find_cases",
            source = %self.source.id(),
            request_id = %caller.request_id,
            caller = %caller.caller_id,
            max_tier = request.max_tier,
            cases = tracing::field::Empty,
        );
        async {
            let cpr =
                Cpr::parse(&request.cpr).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let max_tier = Tier::try_from(request.max_tier)
                .map_err(|_| Status::invalid_argument("max_tier is not a known tier"))?;
            let work = self.source.find_cases(
                CaseQuery {
                    cpr,
                    max_tier,
                    deadline,
                },
                caller,
            );
            let answer = match deadline {
                // Past the caller's deadline nobody waits for the answer: the source's future is
                // dropped, which is how its work stops (sources are cancel-safe by contract).
                Some(deadline) => tokio::time::timeout_at(deadline, work).await.map_err(|_| {
                    tracing::info!("the caller's deadline passed; the lookup was dropped");
                    Status::deadline_exceeded("deadline exceeded")
                })?,
                None => work.await,
            }
            .map_err(error_to_status)?;
            tracing::Span::current().record("cases", answer.cases.len());
            Ok(Response::new(FindCasesResponse {
                cases: answer.cases,
                as_of: Some(answer.as_of.into()),
            }))
        }
        .instrument(span)
        .await
    }
}

fn error_to_status(error: SourceError) -> Status {
    match error {
        SourceError::Unavailable(_) => Status::unavailable("source unavailable"),
        SourceError::Timeout => Status::deadline_exceeded("source timed out"),
        SourceError::Denied(_) => Status::permission_denied("lookup denied"),
        SourceError::InvalidQuery(_) => Status::invalid_argument("invalid query"),
        SourceError::Failed(cause) => {
            tracing::warn!(error = %cause, "source failed");
            Status::internal("source failed")
        }
    }
}

/// Why a source server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// gRPC server reflection over every Samblik proto and the health service, in both versions:
/// grpcurl and older clients still ask `v1alpha`.
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(samblik_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Serves `source` on `listener` until `shutdown` completes: `samblik.source.v1.SourceService`,
/// `grpc.health.v1.Health` (SERVING for the source service) and server reflection. A lookup
/// that comes with a `grpc-timeout` is dropped when it runs out (at most [`MAX_GRPC_TIMEOUT`])
/// and answered DEADLINE_EXCEEDED; one without runs until the source answers.
///
/// [`MAX_GRPC_TIMEOUT`]: crate::MAX_GRPC_TIMEOUT
pub async fn serve(
    source: Arc<dyn Source>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(stamp_arrival))
        .add_routes(routes(source).await?)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// [`serve`] over TLS with `tls` (which should require client certificates: only the gateway
/// may ask a source anything).
pub async fn serve_tls(
    source: Arc<dyn Source>,
    listener: TcpListener,
    tls: Arc<crate::tls::ReloadingServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(stamp_arrival))
        .add_routes(routes(source).await?)
        .serve_with_incoming_shutdown(
            crate::tls::tls_incoming(listener, MAX_SOURCE_CONNECTIONS, tls),
            shutdown,
        )
        .await?;
    Ok(())
}

/// A source serves a handful of gateway replicas; more connections than this wait.
const MAX_SOURCE_CONNECTIONS: usize = 256;

/// When a request's `grpc-timeout` runs out, stamped on it as it arrives.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    deadline: Option<Instant>,
}

/// Stamps every request with its deadline as it arrives. tonic's own `grpc-timeout` timer,
/// outside every layer, starts just after this runs (it calls the service first): the handler
/// ends the call at this deadline, no later than tonic's, and so answers DEADLINE_EXCEEDED
/// itself instead of tonic cutting it off as CANCELLED.
fn stamp_arrival(mut request: Request<()>) -> Result<Request<()>, Status> {
    let deadline = deadline_of(request.metadata(), Instant::now());
    request.extensions_mut().insert(Arrived { deadline });
    Ok(request)
}

/// The services of a source server (health, reflection, the source); see [`serve`].
async fn routes(source: Arc<dyn Source>) -> Result<tonic::service::Routes, ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(SOURCE_SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection_services()?;
    Ok(tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(SourceGrpc::new(source).into_server()))
}
