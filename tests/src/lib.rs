//! The end-to-end test harness: a small synthetic municipality, the demo token issuer, real
//! source servers and the real gateway on `127.0.0.1:0`, and a few misbehaving sources.
//!
//! Everything a test starts is stopped when its handle is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod idp;
pub mod netns;
pub mod openloop;
pub mod panel;

pub use samblik_testkit::{
    BLABBING_MESSAGE, Blabbing, Budget, Failing, Hanging, Panicking, Recording, RunningSource,
    Scripted, dead_address, start_blabbing, start_garbage_server, start_source, start_source_on,
    start_source_tls,
};

use samblik::demo::{caseworker_claims, demo_config};
use samblik::tokens::DemoIssuer;
use samblik_adapters::Source;
use samblik_gateway::GatewaySource;
use samblik_gateway::config::{AuthConfig, Config, SourceConfig};
use samblik_gateway::server::Parts;
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::lookup_service_client::LookupServiceClient;
use samblik_proto::v1::{LookupRequest, Purpose};
use samblik_reference::ReferenceSource;
use samblik_synth::store::DepartmentData;
use samblik_synth::{Caseworker, Dataset, Department, SynthConfig};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The synthetic municipality every test shares (generated once per test binary).
pub fn municipality() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| samblik_synth::generate(&SynthConfig::new(7, 4_000)).unwrap())
}

/// The demo token issuer, with its keys in a temporary directory kept for the whole run.
pub fn issuer() -> &'static (tempfile::TempDir, DemoIssuer) {
    static ISSUER: OnceLock<(tempfile::TempDir, DemoIssuer)> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DemoIssuer::load_or_create(dir.path()).unwrap();
        (dir, issuer)
    })
}

/// A caseworker of `department` from the shared municipality.
pub fn caseworker(department: Department) -> &'static Caseworker {
    municipality()
        .caseworkers
        .iter()
        .find(|c| c.department == department)
        .unwrap()
}

/// A valid token for a caseworker of `department`.
pub fn token(department: Department) -> String {
    let claims = caseworker_claims(caseworker(department), &municipality().municipality.code);
    issuer().1.mint(&claims, Duration::from_secs(600)).unwrap()
}

/// A valid token for a demo staff member with `role` (auditor, admin), of no case department.
pub fn staff_token(id: &str, role: &str) -> String {
    let claims = samblik::tokens::TokenClaims {
        sub: id.to_owned(),
        name: format!("Test {role}"),
        department: "administration".to_owned(),
        municipality: municipality().municipality.code.clone(),
        roles: vec![role.to_owned()],
        cpr: None,
    };
    issuer().1.mint(&claims, Duration::from_secs(600)).unwrap()
}

/// A valid token for the citizen `cpr` (role citizen, their CPR in the token).
pub fn citizen_token(cpr: &str) -> String {
    let claims = samblik::demo::citizen_claims(&samblik_proto::Cpr::parse(cpr).unwrap());
    issuer().1.mint(&claims, Duration::from_secs(600)).unwrap()
}

/// `message` with a bearer token.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The departments each citizen has cases in.
pub fn departments_of(cpr: &str) -> BTreeSet<Department> {
    municipality()
        .cases
        .iter()
        .filter(|c| c.cpr == cpr)
        .map(|c| c.department())
        .collect()
}

/// A citizen with cases in all four departments.
pub fn all_department_citizen() -> &'static str {
    municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|cpr| departments_of(cpr).len() == Department::ALL.len())
        .expect("the test municipality has a citizen in all four departments")
}

/// A citizen with no case anywhere.
pub fn citizen_without_cases() -> &'static str {
    citizens_without_cases()[0]
}

/// Every citizen with no case anywhere (there are several), in the dataset's order.
pub fn citizens_without_cases() -> Vec<&'static str> {
    let with_cases: BTreeSet<&str> = municipality()
        .cases
        .iter()
        .map(|c| c.cpr.as_str())
        .collect();
    municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .filter(|cpr| !with_cases.contains(cpr))
        .collect()
}

/// A break-the-glass reason long enough to be accepted.
pub const BREAK_GLASS_REASON: &str =
    "Akut underretning fra skolen; borgeren er ikke tilknyttet min afdeling endnu";

/// A lookup request with a bearer token and an optional client deadline (`grpc-timeout`).
pub fn request(
    cpr: &str,
    purpose: Purpose,
    token: Option<&str>,
    timeout: Option<Duration>,
) -> tonic::Request<LookupRequest> {
    let mut request = tonic::Request::new(LookupRequest {
        cpr: cpr.to_owned(),
        purpose: purpose as i32,
        ..LookupRequest::default()
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// The reference source of `department` over the shared municipality.
pub fn reference(department: Department) -> Arc<dyn Source> {
    Arc::new(ReferenceSource::new(DepartmentData::slice(municipality(), department)).unwrap())
}

/// Where the gateway finds one source.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub id: String,
    pub department: String,
    pub endpoint: String,
    pub timeout_ms: u64,
}

impl SourceSpec {
    pub fn at(id: &str, addr: SocketAddr) -> Self {
        SourceSpec {
            id: id.to_owned(),
            department: format!("Department {id}"),
            endpoint: format!("http://{addr}"),
            timeout_ms: 2_000,
        }
    }

    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }
}

/// The real gateway on a loopback port; stopped on drop.
#[derive(Debug)]
pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The gateway's audit store (SQLite file) and key, in a directory of its own.
    pub audit_dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RunningGateway {
    pub async fn client(&self) -> LookupServiceClient<Channel> {
        LookupServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// The gateway's config for `sources`, trusting the test issuer. Its audit paths are relative
/// placeholders: every `start_*` function gives the gateway an audit directory of its own.
pub fn gateway_config(sources: &[SourceSpec], default_deadline_ms: u64) -> Config {
    let sources = sources
        .iter()
        .map(|s| SourceConfig {
            timeout_ms: s.timeout_ms,
            connect_timeout_ms: 1_000,
            ..SourceConfig::new(&s.id, &s.department, &s.endpoint)
        })
        .collect();
    let mut config = demo_config(
        std::path::Path::new(""),
        "127.0.0.1:0".parse().unwrap(),
        issuer().1.public_key_path(),
        sources,
    );
    config.server.default_deadline_ms = default_deadline_ms;
    // CI machines are slow and shared: keep a generous part of a caller's deadline for the
    // audit write and the answer, so a test's client never gives up first.
    config.server.answer_margin_ms = 1_000;
    config
}

/// Points `config`'s audit log into a fresh directory, which the caller keeps alive.
pub fn with_own_audit(mut config: Config) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    config.audit.path = Some(dir.path().join(samblik::demo::AUDIT_DB_FILE));
    config.audit.postgres_url_env = None;
    config.audit.signing_key_file = dir.path().join(samblik::demo::AUDIT_KEY_FILE);
    config.audit.data_key_file = dir.path().join(samblik::demo::AUDIT_DATA_KEY_FILE);
    config.audit.witness_file = Some(dir.path().join(samblik::demo::AUDIT_WITNESS_FILE));
    (config, dir)
}

/// The request id a reply (an answer's or a refusal's metadata) carries; panics if it has none.
pub fn request_id_of(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("the reply carries its request id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// A refusal's stable reason: its `google.rpc.ErrorInfo`'s, checked to be Samblik's and to name
/// the request id its `x-request-id` header names; panics if it has none.
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "samblik", "{info:?}");
    assert_eq!(
        info.metadata.get("request_id"),
        Some(&request_id_of(status.metadata())),
        "{info:?}"
    );
    info.reason
}

/// Every record of every chain in the SQLite audit store `db`, laid out as the demo's (its data
/// keys in `keys/` beside it).
pub fn audit_records_in(db: &std::path::Path) -> Vec<samblik_audit::AuditRecord> {
    use samblik_audit::AuditStore;
    let mut store =
        samblik_audit::sqlite::SqliteStore::open_read_only(db, demo_data_keys(db)).unwrap();
    let mut records = Vec::new();
    for chain in store.chains().unwrap() {
        for stored in store.records(&chain, 0, usize::MAX).unwrap() {
            records.push(serde_json::from_str(&stored.body).unwrap());
        }
    }
    records
}

/// The data keys of the SQLite audit store `db`, laid out as the demo's.
pub fn demo_data_keys(db: &std::path::Path) -> Arc<samblik_audit::AtRestKeys> {
    let dir = db.parent().unwrap();
    Arc::new(
        samblik_audit::AtRestKeys::load(&dir.join(samblik::demo::AUDIT_DATA_KEY_FILE)).unwrap(),
    )
}

/// The one `Lookup` record among `records`, checked as a request no handler read must be
/// recorded: under `request_id`, outcome invalid, the jobcenter caseworker as the caller,
/// nothing of the message (no citizen, purpose or sources); returns its detail.
pub fn the_unread_lookup(records: Vec<samblik_audit::AuditRecord>, request_id: &str) -> String {
    let lookups: Vec<_> = records
        .into_iter()
        .filter(|r| r.action == samblik_audit::Action::Lookup)
        .collect();
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    let r = &lookups[0];
    assert_eq!(r.request_id, request_id);
    assert_eq!(r.outcome, samblik_audit::Outcome::Invalid);
    assert_eq!(r.actor.caller_id, caseworker(Department::Jobcenter).id);
    assert!(r.cpr.is_none() && r.purpose.is_none() && r.sources.is_empty());
    r.detail.clone().unwrap_or_default()
}

impl RunningGateway {
    /// The audit store's file.
    pub fn audit_db(&self) -> std::path::PathBuf {
        self.audit_dir.path().join(samblik::demo::AUDIT_DB_FILE)
    }

    /// Every record in the gateway's audit log, in chain order.
    pub fn audit_records(&self) -> Vec<samblik_audit::AuditRecord> {
        audit_records_in(&self.audit_db())
    }

    /// The records of one request.
    pub fn audit_records_of(&self, request_id: &str) -> Vec<samblik_audit::AuditRecord> {
        self.audit_records()
            .into_iter()
            .filter(|r| r.request_id == request_id)
            .collect()
    }
}

/// The one way a test starts a gateway: [`gateway_config`] (or a config of the test's own),
/// adjusted, with sources over gRPC or held in the process, wired by [`samblik::server`] exactly
/// as `samblik serve` wires it, on a loopback port, auditing into a directory of its own.
pub struct TestGateway {
    config: Config,
    audit_dir: tempfile::TempDir,
    parts: Parts,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway").finish_non_exhaustive()
    }
}

impl TestGateway {
    /// Over `sources` (gRPC, each at its endpoint), with a 3 s default deadline.
    pub fn over(sources: &[SourceSpec]) -> Self {
        Self::from_config(gateway_config(sources, 3_000))
    }

    /// With `config`, its audit log moved into a directory of its own.
    pub fn from_config(config: Config) -> Self {
        let (config, audit_dir) = with_own_audit(config);
        Self {
            config,
            audit_dir,
            parts: Parts::default(),
        }
    }

    /// Over sources held in this process (trait objects, no network hop to them), each with a
    /// 2 s timeout, named by their department, without bulkhead or circuit breaker.
    pub fn in_process(sources: Vec<(Arc<dyn Source>, &str)>) -> Self {
        Self::in_process_with(sources, samblik_gateway::source_stack::Resilience::NONE)
    }

    /// As [`TestGateway::in_process`], each source behind `resilience` (bulkhead, breaker).
    pub fn in_process_with(
        sources: Vec<(Arc<dyn Source>, &str)>,
        resilience: samblik_gateway::source_stack::Resilience,
    ) -> Self {
        let mut gateway = Self::over(&[]);
        gateway.parts.sources = Some(
            sources
                .into_iter()
                .map(|(source, department)| {
                    GatewaySource::with_resilience(
                        source,
                        department,
                        Duration::from_secs(2),
                        resilience,
                    )
                })
                .collect(),
        );
        gateway
    }

    /// The deadline of callers that send none.
    pub fn deadline_ms(mut self, default_deadline_ms: u64) -> Self {
        self.config.server.default_deadline_ms = default_deadline_ms;
        self
    }

    /// Changes the config (after its audit log got its own directory).
    pub fn adjust(mut self, adjust: impl FnOnce(&mut Config)) -> Self {
        adjust(&mut self.config);
        self
    }

    /// The audit store's durability: `Off` only to measure what the fsync costs.
    pub fn durability(mut self, durability: samblik_audit::Durability) -> Self {
        self.parts.durability = Some(durability);
        self
    }

    /// Audits into the store `open` makes of the gateway's audit file with its data keys (e.g.
    /// a fault-injecting one around it; the registry reads that file too).
    pub fn audited_by(
        mut self,
        open: impl FnOnce(
            &std::path::Path,
            Arc<samblik_audit::AtRestKeys>,
        ) -> Box<dyn samblik_audit::AuditStore>,
    ) -> Self {
        let audit = &self.config.audit;
        let keys =
            Arc::new(samblik_audit::AtRestKeys::load_or_create(&audit.data_key_file).unwrap());
        let store = open(
            audit.path.as_deref().expect("the test's own audit file"),
            keys,
        );
        let signer =
            samblik_audit::CheckpointSigner::load_or_create(&audit.signing_key_file).unwrap();
        let log = samblik_audit::AuditLog::start(
            store,
            signer,
            samblik_audit::WriterOptions::new(audit.chain.clone()),
        )
        .unwrap();
        self.parts.audit = Some(Arc::new(log));
        self
    }

    /// Binds a loopback port, opens the gateway and serves it until the handle is dropped.
    pub async fn start(self) -> RunningGateway {
        let TestGateway {
            mut config,
            audit_dir,
            parts,
        } = self;
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        if parts.sources.is_none() {
            config.validate().unwrap();
        }
        let listeners = samblik::server::Listeners::bind(&config).await.unwrap();
        let gateway = samblik::server::Gateway::open_with(
            &config,
            listeners,
            samblik::server::PanelSignIn::Configured,
            parts,
        )
        .unwrap();
        let addr = gateway.grpc_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(gateway.serve(stop.clone()));
        RunningGateway {
            addr,
            audit_dir,
            stop,
        }
    }
}

/// The gateway with `auth` instead of the demo's, over the in-process jobcenter source;
/// returns the caller contexts every call to that source carried.
pub async fn start_gateway_with_auth(
    auth: AuthConfig,
) -> (RunningGateway, Arc<Mutex<Vec<CallerContext>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source: Arc<dyn Source> = Arc::new(Recording {
        inner: reference(Department::Jobcenter),
        seen: Arc::clone(&seen),
    });
    let gateway = TestGateway::in_process(vec![(source, "Jobcenter")])
        .adjust(|c| c.auth = auth)
        .start()
        .await;
    (gateway, seen)
}

/// The four reference sources and a gateway over them.
pub struct Municipal {
    pub gateway: RunningGateway,
    pub sources: Vec<RunningSource>,
    /// The caller context of every call that reached any source.
    pub seen: Arc<Mutex<Vec<CallerContext>>>,
}

impl Municipal {
    /// How many calls reached any source.
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl std::fmt::Debug for Municipal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Municipal")
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// Starts the four reference sources (recording their calls) and a gateway over them.
pub async fn start_municipal() -> Municipal {
    start_municipal_with(|_| {}).await
}

/// [`start_municipal`] with its gateway config adjusted by `adjust`.
pub async fn start_municipal_with(adjust: impl FnOnce(&mut Config)) -> Municipal {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut sources = Vec::new();
    let mut specs = Vec::new();
    for department in Department::ALL {
        let running = start_source(Arc::new(Recording {
            inner: reference(department),
            seen: Arc::clone(&seen),
        }))
        .await;
        let mut spec = SourceSpec::at(department.id(), running.addr);
        spec.department = department.display_name().to_owned();
        specs.push(spec);
        sources.push(running);
    }
    let mut config = gateway_config(&specs, 3_000);
    adjust(&mut config);
    Municipal {
        gateway: TestGateway::from_config(config).start().await,
        sources,
        seen,
    }
}

/// What is logged on this thread, at the level `samblik serve` logs by default (`info`), while
/// the guard [`CapturedLog::start`] returns is held. A `#[tokio::test]` runs every task it
/// spawns — the gateway's and its sources' — on its own thread, so this is their log.
#[derive(Debug, Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `condition` every 10 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Databases of a benchmark's own on a PostgreSQL server (given by an administrator's URL): each
/// created empty, all dropped when this is.
pub struct ScratchDatabases {
    admin: String,
    tool: &'static str,
    created: Vec<samblik_audit::testing::ScratchDatabase>,
}

impl std::fmt::Debug for ScratchDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The administrator's URL may hold a password: never print it.
        f.debug_struct("ScratchDatabases")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl ScratchDatabases {
    pub fn on(admin: &str, tool: &'static str) -> Self {
        ScratchDatabases {
            admin: admin.to_owned(),
            tool,
            created: Vec::new(),
        }
    }

    /// Creates an empty database for `name` and returns its URL.
    pub fn create(&mut self, name: &str) -> anyhow::Result<String> {
        let database = samblik_audit::testing::ScratchDatabase::create(
            &self.admin,
            &format!("{}_{name}", self.tool),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create a database on the PostgreSQL server given by --postgres: {e}"
            )
        })?;
        let url = database.url().to_owned();
        self.created.push(database);
        Ok(url)
    }
}

/// Sends `body` as the message of the unary gRPC method `path` on `channel`, byte for byte
/// (no protobuf encoding), with a bearer `token`; answers with the response's bytes.
pub async fn raw_unary(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = match token {
        Some(token) => authed(body, token),
        None => tonic::Request::new(body),
    };
    grpc.unary(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
}

/// A codec that passes messages through as bytes, for requests no generated client would send.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut item = vec![0; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut item);
        Ok(Some(item))
    }
}

/// The first import cycle among the modules of the crate whose sources are in `src`, as the
/// modules along it (the first again at the end), or `None`. A module is a file; it depends on
/// another when it names it through `crate::` or `super::` outside a comment. The crate root
/// only declares and re-exports, and is left out.
pub fn module_cycle(src: &std::path::Path) -> Option<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    files(src, &mut paths);
    let module_of = |path: &std::path::Path| -> String {
        let relative = path.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts
            .last()
            .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
        {
            parts.pop();
        }
        parts.join("::")
    };
    let modules: BTreeSet<String> = paths.iter().map(|p| module_of(p)).collect();
    // The longest module that `path` (segments after `crate::`) lies in.
    let resolve = |segments: &[&str]| -> Option<String> {
        (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| modules.contains(m))
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &paths {
        let from = module_of(path);
        if from.is_empty() {
            continue;
        }
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = from.split("::").collect();
            p.pop();
            p
        };
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
                for (at, _) in code.match_indices(prefix) {
                    if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    let rest = &code[at + prefix.len()..];
                    let mut segments = base.clone();
                    segments.extend(
                        rest.split("::")
                            .map(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')))
                            .map(|mut s| s.next().unwrap_or_default())
                            .take_while(|s| !s.is_empty()),
                    );
                    if let Some(to) = resolve(&segments)
                        && to != from
                        && !to.is_empty()
                    {
                        edges.entry(from.clone()).or_default().insert(to);
                    }
                }
            }
        }
    }
    fn visit(
        module: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|m| m == module) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        stack.push(module.to_owned());
        for next in edges.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    modules
        .iter()
        .find_map(|m| visit(m, &edges, &mut Vec::new(), &mut done))
}
