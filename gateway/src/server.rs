//! The gateway's gRPC server: `samblik.v1.LookupService`, the standard health service and
//! server reflection, on one listener.

use crate::auth::{AuthSetupError, Authenticator, Systems};
use crate::config::{AuditConfig, Config, LimitsConfig, SourceConfig};
use crate::context::Credentials;
use crate::disclosure::DisclosurePolicy;
use crate::lookup::{BreakGlass, GatewaySource, LookupLimits, LookupPipeline};
use crate::rpc::{SpanKind, call, client_timeout};
use crate::source_stack::CircuitState;
use samblik_adapters::GrpcSource;
use samblik_adapters::tls::ReloadingServerConfig;
use samblik_audit::postgres::PostgresStore;
use samblik_audit::registry::Registry;
use samblik_audit::sqlite::{Durability, SqliteStore};
use samblik_audit::witness::{Witness, Witnessed};
use samblik_audit::{
    AtRestKeys, AuditError, AuditLog, AuditStore, CheckpointSigner, Retention, WriterOptions,
};
use samblik_proto::v1::access_request_service_server::AccessRequestServiceServer;
use samblik_proto::v1::audit_service_server::AuditServiceServer;
use samblik_proto::v1::consent_service_server::ConsentServiceServer;
use samblik_proto::v1::lookup_service_server::{LookupService, LookupServiceServer};
use samblik_proto::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use samblik_proto::v1::{
    ExplainRequest, ExplainResponse, LookupRequest, LookupResponse, SourceResult,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The health service's name for source `id`'s circuit: SERVING while it is closed, NOT_SERVING
/// while it is open or probing.
pub fn source_health_name(id: &str) -> String {
    format!("samblik.source/{id}")
}

/// The gRPC service name the health service reports for.
pub const LOOKUP_SERVICE_NAME: &str = "samblik.v1.LookupService";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("source {id}: invalid endpoint: {source}")]
    SourceEndpoint {
        id: String,
        source: tonic::transport::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] samblik_adapters::tls::TlsError),
    #[error(transparent)]
    Policy(#[from] crate::config::ConfigError),
}

/// Opens the audit log of a validated config: the store, the signing key, the writer. Fails
/// (and the gateway must not start) if a start-up record cannot be written. Every record is
/// durable before its answer leaves.
pub fn open_audit_log(config: &AuditConfig, policy_version: &str) -> Result<AuditLog, ServerError> {
    open_audit_log_with(config, policy_version, Durability::Full)
}

/// As [`open_audit_log`], with the store's `durability`. `Durability::Off` (no fsync) is for
/// measuring what durability costs — the load benchmark's baseline — and for nothing else. No
/// config file reaches it: `audit.durability` refuses `off` ([`crate::config::AuditDurability`]),
/// and [`pipeline_from_config`], through which every configured gateway starts, opens the log
/// with [`open_audit_log`].
pub fn open_audit_log_with(
    config: &AuditConfig,
    policy_version: &str,
    durability: Durability,
) -> Result<AuditLog, ServerError> {
    if durability == Durability::Off {
        tracing::warn!(
            "audit log without fsync: records can be lost in a crash; for measurement only"
        );
    }
    let signer = audit_signer(config)?;
    let open = store_opener(config, durability)?;
    let options = audit_writer_options(config, policy_version);
    Ok(AuditLog::start_with(open, signer, options)?)
}

/// The checkpoint signing key. A missing key is created only for a store that holds no
/// checkpoint yet (a first start): one deleted beside a store in use must be restored, or whoever
/// could delete it would have the gateway re-key and replace the `.pub` that verification reads.
fn audit_signer(config: &AuditConfig) -> Result<CheckpointSigner, ServerError> {
    let path = config.signing_key_file.clone();
    if path.exists() {
        // A key that is there must read before the store is opened: a bad one refuses
        // start-up with nothing written.
        CheckpointSigner::load_or_create(&path)?;
    }
    // Then, whether it was there or not, it must be the key the store's checkpoints are signed
    // with (a replica given another replica's key is refused here, not found out at the next
    // verification), and it is created only for a store that has none.
    // On a thread of its own: PostgreSQL's blocking client must not run on the async runtime.
    let open = audit_store_opener(config)?;
    let signer = std::thread::spawn(move || {
        let mut store = open()?;
        CheckpointSigner::load_or_create_for(&path, &mut *store)
    })
    .join()
    .map_err(|_| AuditError::Store("the audit signing key check panicked".into()))??;
    Ok(signer)
}

/// The audit data keys ([`AtRestKeys`]) of `config`, created with a fresh index key and data
/// key if the file is missing: a store written with another index key refuses them, so a lost
/// key file is never silently replaced for a store in use.
pub fn audit_keys(config: &AuditConfig) -> Result<Arc<AtRestKeys>, ServerError> {
    Ok(Arc::new(AtRestKeys::load_or_create(&config.data_key_file)?))
}

/// How the configured writer chains, checkpoints and prunes: its retention schedule runs in the
/// writer itself (at start-up, then every `prune_interval_secs`), so a prune is serialised with
/// the records around it and ends with the writer.
pub fn audit_writer_options(config: &AuditConfig, policy_version: &str) -> WriterOptions {
    let mut options = WriterOptions::new(config.chain.clone());
    options.checkpoint_every = config.checkpoint_every;
    options.checkpoint_interval = Duration::from_secs(config.checkpoint_interval_secs);
    options.policy_version = policy_version.to_owned();
    options.retention = (config.prune_interval_secs > 0).then(|| Retention {
        keep: Duration::from_secs(u64::from(config.retention_days) * 86_400),
        every: Duration::from_secs(config.prune_interval_secs),
    });
    options
}

/// How to open the configured audit store, durably. The store is opened by whoever runs the
/// returned function — the audit writer's own thread — because PostgreSQL's blocking client must
/// not run on the async runtime.
pub fn audit_store_opener(
    config: &AuditConfig,
) -> Result<impl FnOnce() -> Result<Box<dyn AuditStore>, AuditError> + Send + 'static, ServerError>
{
    store_opener(config, Durability::Full)
}

/// [`audit_store_opener`] with the store's `durability` ([`open_audit_log_with`]).
fn store_opener(
    config: &AuditConfig,
    durability: Durability,
) -> Result<impl FnOnce() -> Result<Box<dyn AuditStore>, AuditError> + Send + 'static, ServerError>
{
    enum Target {
        Sqlite(std::path::PathBuf, Durability),
        Postgres(String, Durability),
    }
    let target = match (&config.path, &config.postgres_url_env) {
        (Some(path), _) => Target::Sqlite(path.clone(), durability),
        (None, Some(var)) => Target::Postgres(postgres_url(var)?, durability),
        (None, None) => return Err(no_store_configured()),
    };
    let witness = config.witness_file.clone();
    // Read before the store is opened: a bad key file refuses start-up with nothing written.
    let keys = audit_keys(config)?;
    Ok(move || -> Result<Box<dyn AuditStore>, AuditError> {
        let store: Box<dyn AuditStore> = match target {
            Target::Sqlite(path, durability) => {
                Box::new(SqliteStore::open(&path, durability, keys)?)
            }
            Target::Postgres(url, durability) => {
                Box::new(PostgresStore::connect_with(&url, durability, keys)?)
            }
        };
        Ok(match witness {
            Some(path) => Box::new(Witnessed::new(store, Witness::open(&path)?)),
            None => store,
        })
    })
}

/// The PostgreSQL URL in the environment variable `var` (`audit.postgres_url_env`).
fn postgres_url(var: &str) -> Result<String, ServerError> {
    std::env::var(var).map_err(|_| {
        ServerError::Audit(AuditError::Store(format!(
            "audit.postgres_url_env names {var}, which is not set"
        )))
    })
}

fn no_store_configured() -> ServerError {
    ServerError::Audit(AuditError::Store("no audit store configured".into()))
}

/// How to open the configured audit store only to read it (verification): nothing is created
/// or changed — SQLite read-only and never a new file, PostgreSQL in a read-only session and
/// never a schema — so a wrong path or database is an error, not an empty store that verifies.
pub fn audit_store_reader(
    config: &AuditConfig,
) -> Result<impl FnOnce() -> Result<Box<dyn AuditStore>, AuditError> + Send + 'static, ServerError>
{
    enum Source {
        Sqlite(std::path::PathBuf),
        Postgres(String),
    }
    let source = match (&config.path, &config.postgres_url_env) {
        (Some(path), _) => Source::Sqlite(path.clone()),
        (None, Some(var)) => Source::Postgres(postgres_url(var)?),
        (None, None) => return Err(no_store_configured()),
    };
    // Only read, once the store is known to be there: verification never creates a key.
    let key_file = config.data_key_file.clone();
    let keys = move || AtRestKeys::load(&key_file).map(Arc::new);
    Ok(move || -> Result<Box<dyn AuditStore>, AuditError> {
        match source {
            Source::Sqlite(path) => {
                if !path.is_file() {
                    return Err(AuditError::Store(format!(
                        "no audit store at {}",
                        path.display()
                    )));
                }
                Ok(Box::new(SqliteStore::open_read_only(&path, keys()?)?))
            }
            Source::Postgres(url) => Ok(Box::new(PostgresStore::open_read_only(&url, keys()?)?)),
        }
    })
}

/// Verification of the configured store for the `AuditService.Verify` call: each run opens the
/// store afresh (read-only for SQLite) and reads the checkpoint key's public half.
pub fn audit_verifier(config: &AuditConfig) -> Arc<crate::audit::Verifier> {
    use samblik_audit::checkpoint::{load_verifying_key, public_key_path};
    use samblik_audit::verify::{VerifyError, verify_store};
    let config = config.clone();
    Arc::new(move || {
        let fail = |e: &dyn std::fmt::Display| VerifyError::Store(AuditError::Store(e.to_string()));
        let key =
            load_verifying_key(&public_key_path(&config.signing_key_file)).map_err(|e| fail(&e))?;
        let mut store = audit_store_reader(&config).map_err(|e| fail(&e))?()?;
        verify_store(&mut *store, &key)
    })
}

/// The consent and access-request registry in the configured audit store.
pub fn open_registry(config: &AuditConfig) -> Result<Registry, ServerError> {
    Ok(match (&config.path, &config.postgres_url_env) {
        (Some(path), _) => Registry::sqlite(path, audit_keys(config)?)?,
        (None, Some(var)) => Registry::postgres(&postgres_url(var)?, audit_keys(config)?)?,
        (None, None) => return Err(no_store_configured()),
    })
}

/// What a pipeline is built from besides its config. By default everything comes from the
/// config; an embedding program (or a test) may bring sources held in its own process, or an
/// audit log it opened itself.
#[derive(Debug, Default)]
pub struct Parts {
    /// Sources held in the process instead of the config's `[[sources]]`; the policy is checked
    /// against these.
    pub sources: Option<Vec<GatewaySource>>,
    /// An audit log already open, instead of the config's store.
    pub audit: Option<Arc<AuditLog>>,
    /// The configured store's durability; `Off` only to measure what durability costs
    /// ([`open_audit_log_with`]).
    pub durability: Option<Durability>,
}

/// Builds the lookup pipeline from a validated config: loads and validates the policy, reads
/// the keys, sets up the sources, and only then opens the audit log and the registry — a
/// config refused for a bad key or policy writes nothing to the store.
pub fn pipeline_from_config(config: &Config) -> Result<LookupPipeline, ServerError> {
    pipeline_with(config, Parts::default())
}

/// As [`pipeline_from_config`], with `parts` instead of what the config says.
pub fn pipeline_with(config: &Config, parts: Parts) -> Result<LookupPipeline, ServerError> {
    let built = pipeline_parts(config, parts.sources)?;
    let audit = match parts.audit {
        Some(audit) => audit,
        None => Arc::new(open_audit_log_with(
            &config.audit,
            built.policy.version(),
            parts.durability.unwrap_or(Durability::Full),
        )?),
    };
    build_pipeline(config, audit, built)
}

/// Everything a pipeline is built from but its store: all a config can be refused for.
#[derive(Debug)]
struct PipelineParts {
    policy: Arc<DisclosurePolicy>,
    auth: Authenticator,
    sources: Vec<GatewaySource>,
    systems: Systems,
    access: crate::audit::AuditAccess,
}

/// Loads the policy, the token keys and the sources' TLS files (or takes the sources held in
/// the process); opens no store.
fn pipeline_parts(
    config: &Config,
    in_process: Option<Vec<GatewaySource>>,
) -> Result<PipelineParts, ServerError> {
    let auth = Authenticator::from_config(&config.auth)?;
    let (policy, sources) = match in_process {
        Some(sources) => {
            let listed: Vec<SourceConfig> = sources
                .iter()
                .map(|s| SourceConfig::new(s.id(), s.department(), ""))
                .collect();
            let policy = DisclosurePolicy::from_config_for(config, &listed)?;
            (policy, sources)
        }
        None => (
            DisclosurePolicy::from_config(config)?,
            grpc_sources(config)?,
        ),
    };
    let access = crate::audit::AuditAccess {
        rules: config.audit.review.rules()?,
        citizen_sees_names: config.audit.citizen_sees_names,
        verifier: Some(audit_verifier(&config.audit)),
    };
    Ok(PipelineParts {
        policy: Arc::new(policy),
        auth,
        sources,
        systems: Systems::from_config(config.server.tls.as_ref())?,
        access,
    })
}

/// The config's `[[sources]]`, each a gRPC client (mutual TLS where configured).
fn grpc_sources(config: &Config) -> Result<Vec<GatewaySource>, ServerError> {
    let mut sources = Vec::with_capacity(config.sources.len());
    for s in &config.sources {
        let source = match &s.tls {
            Some(tls) => GrpcSource::with_tls(
                s.id.clone(),
                &s.endpoint,
                s.connect_timeout(),
                crate::tls::source_connector(s, tls)?,
            ),
            None => GrpcSource::new(s.id.clone(), &s.endpoint, s.connect_timeout()),
        }
        .map_err(|source| ServerError::SourceEndpoint {
            id: s.id.clone(),
            source,
        })?;
        sources.push(GatewaySource::with_resilience(
            Arc::new(source),
            s.department.clone(),
            s.timeout(),
            s.resilience(),
        ));
    }
    Ok(sources)
}

fn build_pipeline(
    config: &Config,
    audit: Arc<AuditLog>,
    parts: PipelineParts,
) -> Result<LookupPipeline, ServerError> {
    let registry = open_registry(&config.audit)?;
    Ok(LookupPipeline::new(
        parts.auth,
        parts.sources,
        LookupLimits::from_config(&config.server),
        audit,
        parts.policy,
        registry,
    )
    .with_systems(parts.systems)
    .with_audit_access(parts.access))
}

/// Serves `pipeline` on `listener` until `shutdown` completes: over TLS when `tls` is set,
/// within `limits`.
pub async fn serve_configured(
    pipeline: Arc<LookupPipeline>,
    listener: TcpListener,
    tls: Option<Arc<ReloadingServerConfig>>,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Serving exactly while the audit log can be written: without it nothing may be disclosed.
    let mut audit_health = pipeline.audit_log().health();
    let reporter = health_reporter.clone();
    tokio::spawn(async move {
        let health_reporter = reporter;
        loop {
            let healthy = *audit_health.borrow_and_update();
            let status = if healthy {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health_reporter
                .set_service_status(LOOKUP_SERVICE_NAME, status)
                .await;
            health_reporter.set_service_status("", status).await;
            if audit_health.changed().await.is_err() {
                // The writer is gone: nothing can be recorded, so nothing may be disclosed.
                let down = tonic_health::ServingStatus::NotServing;
                health_reporter
                    .set_service_status(LOOKUP_SERVICE_NAME, down)
                    .await;
                health_reporter.set_service_status("", down).await;
                break;
            }
        }
    });
    // Each source's circuit under a health service name of its own: an operator (or a probe)
    // sees a department whose circuit is open, and the gateway as a whole stays SERVING — the
    // other departments are still answered.
    for (id, mut circuit) in pipeline.circuits() {
        let reporter = health_reporter.clone();
        tokio::spawn(async move {
            let name = source_health_name(&id);
            loop {
                let status = match *circuit.borrow_and_update() {
                    CircuitState::Closed => tonic_health::ServingStatus::Serving,
                    CircuitState::Open | CircuitState::HalfOpen => {
                        tonic_health::ServingStatus::NotServing
                    }
                };
                reporter.set_service_status(&name, status).await;
                if circuit.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let (reflection_v1, reflection_v1alpha) = samblik_adapters::server::reflection_services()?;
    let audit = Arc::clone(pipeline.audit_log());
    let unread = crate::unread::UnreadAuditLayer::new(Arc::clone(&pipeline));
    let registry = crate::registry_api::RegistryApi::new(Arc::clone(&pipeline));
    let consents = ConsentServiceServer::new(registry.clone())
        .max_decoding_message_size(limits.max_message_bytes);
    let requests = AccessRequestServiceServer::new(registry)
        .max_decoding_message_size(limits.max_message_bytes);
    let audit_api = AuditServiceServer::new(crate::audit_api::AuditApi::new(Arc::clone(&pipeline)))
        .max_decoding_message_size(limits.max_message_bytes);
    let policy = PolicyServiceServer::new(LookupApi {
        pipeline: Arc::clone(&pipeline),
    })
    .max_decoding_message_size(limits.max_message_bytes);
    let lookup = LookupServiceServer::new(LookupApi { pipeline })
        .max_decoding_message_size(limits.max_message_bytes);
    let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(ms(limits.http2_keepalive_interval_ms))
        .http2_keepalive_timeout(ms(limits.http2_keepalive_timeout_ms));
    if let Some(age) = ms(limits.max_connection_age_ms) {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(Duration::from_millis(limits.request_timeout_ms));
    }
    let router = builder
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        // A request tonic refuses before its handler (too large, not decodable) is audited too.
        .layer(unread)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(lookup)
        .add_service(consents)
        .add_service(requests)
        .add_service(policy)
        .add_service(audit_api);
    let addr = listener.local_addr().ok();
    let connections = samblik_adapters::tls::ConnectionLimits {
        max_connections: limits.max_connections,
        max_per_address: limits.max_connections_per_address,
        idle_timeout: ms(limits.idle_timeout_ms),
    };
    match tls {
        Some(tls) => {
            tracing::info!(addr = ?addr, "gateway listening (TLS)");
            let incoming = samblik_adapters::tls::tls_incoming(listener, connections, tls);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        None => {
            tracing::warn!(addr = ?addr, "gateway listening in PLAINTEXT");
            let incoming = samblik_adapters::tls::plain_incoming(listener, connections);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
    }
    // Let the audit writer finish what is queued and sign its head before the process exits.
    if let Ok(log) = Arc::try_unwrap(audit) {
        log.close();
    }
    Ok(())
}

/// The tonic face of the pipeline.
#[derive(Debug, Clone)]
struct LookupApi {
    pipeline: Arc<LookupPipeline>,
}

type SourceResultStream = Pin<Box<dyn Stream<Item = Result<SourceResult, Status>> + Send>>;

#[tonic::async_trait]
impl LookupService for LookupApi {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        call(SpanKind::Lookup, "Lookup", async |request_id| {
            let started = Instant::now();
            let response = self
                .pipeline
                .lookup(
                    request_id.to_owned(),
                    &Credentials::of(&request),
                    request.get_ref(),
                    client_timeout(&request),
                )
                .await?;
            tracing::info!(
                sources = response.sources.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "lookup answered"
            );
            Ok(response)
        })
        .await
    }

    type LookupStreamStream = SourceResultStream;

    async fn lookup_stream(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<Self::LookupStreamStream>, Status> {
        call(SpanKind::Lookup, "LookupStream", async |request_id| {
            let results = Arc::clone(&self.pipeline)
                .lookup_stream(
                    request_id.to_owned(),
                    &Credentials::of(&request),
                    request.get_ref(),
                    BreakGlass::IfReasonGiven,
                    client_timeout(&request),
                )
                .await?;
            let id = request_id.to_owned();
            let stream: SourceResultStream = Box::pin(
                ReceiverStream::new(results).map(move |r| r.map_err(|e| e.into_status(&id))),
            );
            Ok(stream)
        })
        .await
    }
}

#[tonic::async_trait]
impl PolicyService for LookupApi {
    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        call(SpanKind::Lookup, "Explain", async |request_id| {
            let response = self
                .pipeline
                .explain(
                    request_id.to_owned(),
                    &Credentials::of(&request),
                    request.get_ref(),
                )
                .await?;
            tracing::info!(cases = response.cases.len(), "policy explained");
            Ok(response)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_deleted_signing_key_is_not_replaced_while_the_store_holds_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let config: AuditConfig = toml::from_str(&format!(
            "path = {:?}\nsigning_key_file = {:?}\ndata_key_file = {:?}",
            dir.path().join("audit.db"),
            dir.path().join("audit.key"),
            dir.path().join("audit-data.keys"),
        ))
        .unwrap();
        // A first start creates the key.
        open_audit_log(&config, "test").unwrap().close();
        let public = samblik_audit::checkpoint::public_key_path(&config.signing_key_file);
        let signed_with = std::fs::read_to_string(&public).unwrap();

        std::fs::remove_file(&config.signing_key_file).unwrap();
        let err = open_audit_log(&config, "test").unwrap_err().to_string();
        assert!(err.contains("restore the key"), "{err}");
        assert!(!config.signing_key_file.exists(), "a new key was created");
        assert_eq!(std::fs::read_to_string(&public).unwrap(), signed_with);
    }
}
