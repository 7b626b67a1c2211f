//! `samblik demo`: the whole system on loopback with a synthetic municipality — four reference
//! sources and the gateway, real gRPC between them — and a `demo.json` that tells scripts (and
//! people) where everything is, who the demo users are and which citizens are worth a look.

use crate::pki::DemoPki;
use crate::tokens::{DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID, DemoIssuer, TokenClaims};
use anyhow::Context;
use samblik_gateway::config::{
    AuditConfig, AuditDurability, AuthConfig, ClaimsConfig, Config, KeyAlgorithm, KeyConfig,
    ServerConfig, SourceConfig,
};
use samblik_reference::ReferenceSource;
use samblik_synth::store::{self, DepartmentData};
use samblik_synth::{CaseState, Caseworker, Dataset, Department, PlanType, SynthConfig};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The file the demo writes when everything is listening.
pub const DEMO_FACTS_FILE: &str = "demo.json";
/// The demo's audit log, in its data directory.
pub const AUDIT_DB_FILE: &str = "audit.db";
/// The demo's audit checkpoint key (its public half is `<this>.pub`).
pub const AUDIT_KEY_FILE: &str = "keys/audit-signing.key";
/// The audit data keys: the CPR index's HMAC key and the keys bodies are sealed with.
pub const AUDIT_DATA_KEY_FILE: &str = "keys/audit-data.keys";
/// The audit log's witness of signed checkpoints, in the demo's data directory. In production it
/// belongs where the database's writer cannot rewrite it.
pub const AUDIT_WITNESS_FILE: &str = "witness/audit-checkpoints.jsonl";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    pub seed: u64,
    pub citizens: usize,
    pub addr: SocketAddr,
    /// The lookup panel's address.
    pub panel_addr: SocketAddr,
    /// Plaintext everywhere instead of TLS and mutual TLS (logged as a warning).
    pub insecure: bool,
}

/// What `demo.json` says.
#[derive(Debug, Clone, Serialize)]
pub struct DemoFacts {
    pub municipality: String,
    pub seed: u64,
    pub data_dir: PathBuf,
    /// The gateway's gRPC address, e.g. `127.0.0.1:50051`.
    pub gateway_addr: SocketAddr,
    /// The same as a URL for gRPC clients, e.g. `https://127.0.0.1:50051`.
    pub gateway_url: String,
    /// The caseworkers' lookup panel and the auditors' pages, e.g. `https://127.0.0.1:8443/`;
    /// its demo sign-in page lists the demo users.
    pub panel_url: String,
    /// The demo CA (PEM) that the gateway's certificate chains to; clients trust it
    /// (`grpcurl -cacert`, `samblik lookup --cacert`). Absent with `--insecure`.
    pub ca_file: Option<PathBuf>,
    /// A sample fagsystem's client certificate and key, for mutual TLS to the gateway.
    pub fagsystem_cert_file: Option<PathBuf>,
    pub fagsystem_key_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    pub sources: Vec<DemoSource>,
    pub users: Vec<DemoUser>,
    pub sample_citizens: Vec<SampleCitizen>,
    /// How to get a token for a demo user.
    pub token_command: String,
    /// A lookup with grpcurl, ready to paste after `TOKEN=$(…token_command…)`.
    pub grpcurl_example: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoSource {
    pub id: String,
    pub department: String,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoUser {
    pub id: String,
    pub name: String,
    pub role: String,
    pub department: String,
    pub unit: String,
    /// CPR numbers of citizens this caseworker holds an open case for.
    pub citizens: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleCitizen {
    /// What makes this citizen interesting: `all-departments`, `two-departments`,
    /// `honour-related-conflict` (an SL § 12 a case beside a jobcenter case: the jobcenter sees
    /// only its own), `no-cases`.
    pub label: String,
    pub cpr: String,
    pub name: String,
    /// The departments with a case for the citizen.
    pub departments: Vec<String>,
}

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = &options.dir;
    let facts_path = dir.join(DEMO_FACTS_FILE);
    if facts_path.exists() {
        std::fs::remove_file(&facts_path)
            .with_context(|| format!("cannot remove the old {}", facts_path.display()))?;
    }
    let data = ensure_data(&options)?;
    let issuer = DemoIssuer::load_or_create(dir).context("cannot set up the demo signing key")?;
    let pki = if options.insecure {
        tracing::warn!(
            "--insecure: the demo gateway and sources speak plaintext; tokens and data cross loopback unencrypted"
        );
        None
    } else {
        let ids: Vec<&str> = Department::ALL.iter().map(|d| d.id()).collect();
        Some(DemoPki::create(dir, &ids).context("cannot create the demo certificates")?)
    };

    let mut tasks = tokio::task::JoinSet::new();
    let mut sources = Vec::new();
    for department in Department::ALL {
        let source = ReferenceSource::new(DepartmentData::slice(&data, department))
            .with_context(|| format!("the {department} data is inconsistent"))?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind a loopback port for a source")?;
        let addr = listener.local_addr()?;
        let stop = shutdown.clone().cancelled_owned();
        let tls = pki
            .as_ref()
            .map(|pki| crate::pki::demo_source_server_tls(pki, department.id()))
            .transpose()?;
        tasks.spawn(async move {
            let source = Arc::new(source);
            match tls {
                Some(tls) => samblik_adapters::server::serve_tls(source, listener, tls, stop).await,
                None => samblik_adapters::server::serve(source, listener, stop).await,
            }
            .map_err(anyhow::Error::from)
        });
        sources.push(DemoSource {
            id: department.id().to_owned(),
            department: department.display_name().to_owned(),
            addr,
        });
    }

    // The demo's ports are bound first: its config names the addresses they got.
    let listeners = crate::server::Listeners {
        grpc: TcpListener::bind(options.addr)
            .await
            .with_context(|| format!("cannot listen on {}", options.addr))?,
        panel: Some(
            TcpListener::bind(options.panel_addr)
                .await
                .with_context(|| format!("cannot listen on {}", options.panel_addr))?,
        ),
    };
    let gateway_addr = listeners.grpc.local_addr()?;
    let panel_addr = listeners
        .panel
        .as_ref()
        .context("the demo has a panel")?
        .local_addr()?;
    let source_configs = sources
        .iter()
        .map(|s| {
            let scheme = if pki.is_some() { "https" } else { "http" };
            SourceConfig {
                timeout_ms: 2_000,
                connect_timeout_ms: 1_000,
                tls: pki.as_ref().map(crate::pki::demo_source_tls),
                ..SourceConfig::new(&s.id, &s.department, &format!("{scheme}://{}", s.addr))
            }
        })
        .collect();
    let panel_url = match pki {
        Some(_) => format!("https://{panel_addr}"),
        None => format!("http://{panel_addr}"),
    };
    let mut config = demo_config(dir, gateway_addr, issuer.public_key_path(), source_configs);
    config.server.tls = pki.as_ref().map(crate::pki::demo_server_tls);
    config.panel = Some(demo_panel_config(panel_addr, &panel_url));
    config.validate()?;

    let facts = demo_facts(
        &options,
        &data,
        gateway_addr,
        &panel_url,
        sources,
        pki.as_ref(),
    );
    // Keys, certificates and endpoints are all checked before anything is announced.
    let gateway = crate::server::Gateway::open(
        &config,
        listeners,
        crate::server::PanelSignIn::Given(samblik_panel::SignIn::Demo(demo_sign_in(dir, &facts))),
    )?;
    let stop = shutdown.clone();
    tasks.spawn(async move { gateway.serve(stop).await.map_err(anyhow::Error::from) });

    write_facts(&facts_path, &facts)?;
    print_welcome(&facts);

    // The demo runs until shutdown, or until any server stops on its own (an error).
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a demo server panicked")?;
        if !shutdown.is_cancelled() {
            shutdown.cancel();
            result.context("a demo server stopped")?;
        }
    }
    Ok(())
}

/// Generates the synthetic municipality unless the directory already has one.
fn ensure_data(options: &DemoOptions) -> anyhow::Result<Dataset> {
    let dir = &options.dir;
    if store::exists(dir) {
        let data = store::read(dir)
            .with_context(|| format!("cannot read the data in {}", dir.display()))?;
        if data.municipality.seed != options.seed {
            tracing::warn!(
                existing_seed = data.municipality.seed,
                requested_seed = options.seed,
                "the data directory already holds data of another seed; using it (delete the directory to regenerate)"
            );
        }
        return Ok(data);
    }
    let data = samblik_synth::generate(&SynthConfig::new(options.seed, options.citizens))?;
    store::write(dir, &data)?;
    tracing::info!(
        cases = data.cases.len(),
        citizens = data.citizens.len(),
        "generated the synthetic municipality"
    );
    Ok(data)
}

/// A gateway config that trusts the demo token issuer, with the demo's limits, auditing into
/// `dir` (the demo's data directory).
pub fn demo_config(
    dir: &Path,
    listen: SocketAddr,
    public_key: &Path,
    sources: Vec<SourceConfig>,
) -> Config {
    Config {
        server: ServerConfig {
            listen,
            default_deadline_ms: 3_000,
            max_deadline_ms: 10_000,
            answer_margin_ms: 250,
            max_request_bytes: 4 * 1024,
            tls: None,
            limits: Default::default(),
        },
        auth: AuthConfig {
            issuer: DEMO_ISSUER.to_owned(),
            audience: DEMO_AUDIENCE.to_owned(),
            leeway_secs: 30,
            verified_token_cache: 10_000,
            keys: vec![KeyConfig {
                kid: DEMO_KID.to_owned(),
                algorithm: KeyAlgorithm::ES256,
                public_key_file: public_key.to_owned(),
            }],
            algorithms: vec![KeyAlgorithm::ES256, KeyAlgorithm::RS256],
            jwks: None,
            claims: ClaimsConfig::default(),
        },
        sources,
        audit: demo_audit_config(dir),
        policy: Default::default(),
        panel: None,
    }
}

/// The demo panel on `addr`: no fagsystem may frame it (the demo has none).
pub fn demo_panel_config(
    addr: SocketAddr,
    public_url: &str,
) -> samblik_gateway::config::PanelConfig {
    samblik_gateway::config::PanelConfig {
        listen: addr,
        public_url: public_url.to_owned(),
        frame_ancestors: Vec::new(),
        session_idle_secs: 30 * 60,
        session_max_secs: 8 * 3600,
        max_sessions: 1_000,
        oidc: None,
    }
}

/// How long a demo sign-in lasts.
const DEMO_SESSION: std::time::Duration = std::time::Duration::from_secs(8 * 3600);

/// The demo's sign-in page: every demo user of `facts`, with tokens the demo issuer signs.
pub fn demo_sign_in(dir: &Path, facts: &DemoFacts) -> samblik_panel::DemoSignIn {
    let users = facts
        .users
        .iter()
        .map(|u| samblik_panel::DemoSignInUser {
            id: u.id.clone(),
            name: u.name.clone(),
            role: u.role.clone(),
            unit: u.unit.clone(),
        })
        .collect();
    let dir = dir.to_owned();
    samblik_panel::DemoSignIn::new(users, DEMO_SESSION, move |user| {
        token_for(&dir, user, DEMO_SESSION)
    })
}

/// The demo's audit log, in its data directory `dir`.
pub fn demo_audit_config(dir: &Path) -> AuditConfig {
    AuditConfig {
        path: Some(dir.join(AUDIT_DB_FILE)),
        postgres_url_env: None,
        signing_key_file: dir.join(AUDIT_KEY_FILE),
        data_key_file: dir.join(AUDIT_DATA_KEY_FILE),
        witness_file: Some(dir.join(AUDIT_WITNESS_FILE)),
        chain: "demo-gateway".to_owned(),
        checkpoint_every: 100,
        checkpoint_interval_secs: 10,
        durability: AuditDurability::Full,
        retention_days: 183,
        prune_interval_secs: 86_400,
        review: Default::default(),
        citizen_sees_names: true,
    }
}

/// The claims of a demo caseworker's token.
pub fn caseworker_claims(caseworker: &Caseworker, municipality_code: &str) -> TokenClaims {
    TokenClaims {
        sub: caseworker.id.clone(),
        name: caseworker.name.clone(),
        department: caseworker.department.id().to_owned(),
        municipality: municipality_code.to_owned(),
        roles: vec!["caseworker".to_owned()],
        cpr: None,
    }
}

/// `samblik token --user citizen:CPR` signs in as that (synthetic) citizen.
pub const CITIZEN_USER_PREFIX: &str = "citizen:";

/// The claims of a citizen's token: role citizen, their own CPR, no department.
pub fn citizen_claims(cpr: &samblik_proto::Cpr) -> TokenClaims {
    TokenClaims {
        sub: format!("citizen-{}", uuid::Uuid::new_v4()),
        name: String::new(),
        department: String::new(),
        municipality: String::new(),
        roles: vec!["citizen".to_owned()],
        cpr: Some(cpr.clone()),
    }
}

/// A demo user who is not a caseworker.
#[derive(Debug, Clone, Copy)]
pub struct DemoStaff {
    pub id: &'static str,
    pub name: &'static str,
    pub role: &'static str,
    pub department: &'static str,
    pub unit: &'static str,
}

/// The demo's data-protection officer (role admin: `samblik policy explain`) and auditor.
pub const DEMO_STAFF: &[DemoStaff] = &[
    DemoStaff {
        id: "dpo-001",
        name: "Dorte Pallesen",
        role: "admin",
        department: "administration",
        unit: "Databeskyttelse og informationssikkerhed",
    },
    DemoStaff {
        id: "aud-001",
        name: "Anders Uhrskov",
        role: "auditor",
        department: "administration",
        unit: "Intern revision",
    },
];

/// Mints a token for demo user `user` from the demo directory `dir`.
pub fn token_for(dir: &Path, user: &str, ttl: std::time::Duration) -> anyhow::Result<String> {
    if let Some(cpr) = user.strip_prefix(CITIZEN_USER_PREFIX) {
        let cpr = samblik_proto::Cpr::parse(cpr)
            .map_err(|e| anyhow::anyhow!("{user:?} does not name a valid CPR number: {e}"))?;
        let issuer =
            DemoIssuer::load(dir).context("no demo signing key; run `samblik demo` first")?;
        return Ok(issuer.mint(&citizen_claims(&cpr), ttl)?);
    }
    if let Some(staff) = DEMO_STAFF.iter().find(|s| s.id == user) {
        let municipality = store::read_municipality(dir).with_context(|| {
            format!(
                "{} holds no demo data; run `samblik demo` first",
                dir.display()
            )
        })?;
        let issuer =
            DemoIssuer::load(dir).context("no demo signing key; run `samblik demo` first")?;
        return Ok(issuer.mint(
            &TokenClaims {
                sub: staff.id.to_owned(),
                name: staff.name.to_owned(),
                department: staff.department.to_owned(),
                municipality: municipality.code.clone(),
                roles: vec![staff.role.to_owned()],
                cpr: None,
            },
            ttl,
        )?);
    }
    let caseworkers = store::read_caseworkers(dir).with_context(|| {
        format!(
            "{} holds no demo data; run `samblik demo --dir {}` first",
            dir.display(),
            dir.display()
        )
    })?;
    let municipality = store::read_municipality(dir)?;
    let caseworker = caseworkers
        .iter()
        .find(|c| c.id == user)
        .with_context(|| format!("no demo user {user:?}; demo.json lists them"))?;
    let issuer = DemoIssuer::load(dir).context("no demo signing key; run `samblik demo` first")?;
    Ok(issuer.mint(&caseworker_claims(caseworker, &municipality.code), ttl)?)
}

fn demo_facts(
    options: &DemoOptions,
    data: &Dataset,
    gateway_addr: SocketAddr,
    panel_url: &str,
    sources: Vec<DemoSource>,
    pki: Option<&DemoPki>,
) -> DemoFacts {
    // Departments per citizen, and each caseworker's citizens with an open case.
    let mut departments: BTreeMap<&str, BTreeSet<Department>> = BTreeMap::new();
    let mut open_by_worker: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for case in &data.cases {
        departments
            .entry(&case.cpr)
            .or_default()
            .insert(case.department());
        if case.state == CaseState::Open {
            open_by_worker
                .entry(&case.responsible)
                .or_default()
                .insert(&case.cpr);
        }
    }
    let sample = |label: &str, cpr: &str| {
        let citizen = data.citizens.iter().find(|c| c.cpr == cpr);
        SampleCitizen {
            label: label.to_owned(),
            cpr: cpr.to_owned(),
            name: citizen.map(|c| c.name.clone()).unwrap_or_default(),
            departments: departments
                .get(cpr)
                .map(|d| d.iter().map(|d| d.id().to_owned()).collect())
                .unwrap_or_default(),
        }
    };
    let protected: BTreeSet<&str> = data
        .citizens
        .iter()
        .filter(|c| c.address_protected)
        .map(|c| c.cpr.as_str())
        .collect();
    let mut samples = Vec::new();
    let everywhere = departments
        .iter()
        .find(|(cpr, d)| d.len() == Department::ALL.len() && !protected.contains(*cpr))
        .map(|(cpr, _)| *cpr);
    if let Some(cpr) = everywhere {
        samples.push(sample("all-departments", cpr));
    }
    if let Some((cpr, _)) = departments.iter().find(|(_, d)| d.len() == 2) {
        samples.push(sample("two-departments", cpr));
    }
    if let Some(case) = data
        .cases
        .iter()
        .find(|c| c.plan_type == PlanType::Sl12a && c.state == CaseState::Open)
    {
        samples.push(sample("honour-related-conflict", &case.cpr));
    }
    if let Some(c) = data
        .citizens
        .iter()
        .find(|c| !departments.contains_key(c.cpr.as_str()) && !c.address_protected)
    {
        samples.push(sample("no-cases", &c.cpr));
    }

    // One caseworker per department: the one responsible for the all-departments citizen's
    // case there, else the one with the most open cases.
    let mut users = Vec::new();
    for department in Department::ALL {
        let from_sample = everywhere.and_then(|cpr| {
            data.cases
                .iter()
                .find(|c| c.cpr == cpr && c.department() == department)
                .map(|c| c.responsible.as_str())
        });
        let busiest = || {
            data.caseworkers
                .iter()
                .filter(|w| w.department == department)
                .max_by_key(|w| open_by_worker.get(w.id.as_str()).map_or(0, BTreeSet::len))
                .map(|w| w.id.as_str())
        };
        let Some(id) = from_sample.or_else(busiest) else {
            continue;
        };
        let Some(worker) = data.caseworkers.iter().find(|w| w.id == id) else {
            continue;
        };
        let mut citizens: Vec<String> = everywhere
            .filter(|cpr| open_by_worker.get(id).is_some_and(|s| s.contains(cpr)))
            .map(str::to_owned)
            .into_iter()
            .collect();
        for cpr in open_by_worker.get(id).into_iter().flatten() {
            if citizens.len() >= 5 {
                break;
            }
            if !citizens.iter().any(|c| c == cpr) {
                citizens.push((*cpr).to_owned());
            }
        }
        users.push(DemoUser {
            id: worker.id.clone(),
            name: worker.name.clone(),
            role: "caseworker".to_owned(),
            department: department.id().to_owned(),
            unit: worker.unit.clone(),
            citizens,
        });
    }

    for staff in DEMO_STAFF {
        users.push(DemoUser {
            id: staff.id.to_owned(),
            name: staff.name.to_owned(),
            role: staff.role.to_owned(),
            department: staff.department.to_owned(),
            unit: staff.unit.to_owned(),
            citizens: Vec::new(),
        });
    }

    let dir = options.dir.display().to_string();
    let example_cpr = samples.first().map(|s| s.cpr.clone()).unwrap_or_default();
    DemoFacts {
        municipality: data.municipality.name.clone(),
        seed: data.municipality.seed,
        data_dir: options.dir.clone(),
        gateway_addr,
        gateway_url: match pki {
            Some(_) => format!("https://{gateway_addr}"),
            None => format!("http://{gateway_addr}"),
        },
        panel_url: format!("{panel_url}/"),
        ca_file: pki.map(|p| p.ca.clone()),
        fagsystem_cert_file: pki.map(|p| p.fagsystem.cert.clone()),
        fagsystem_key_file: pki.map(|p| p.fagsystem.key.clone()),
        issuer: DEMO_ISSUER.to_owned(),
        audience: DEMO_AUDIENCE.to_owned(),
        sources,
        token_command: format!(
            "samblik token --dir {dir} --user {}",
            users.first().map_or("USER", |u| u.id.as_str())
        ),
        grpcurl_example: format!(
            "grpcurl {transport} -H \"authorization: Bearer $TOKEN\" -d '{{\"cpr\":\"{example_cpr}\",\"purpose\":\"PURPOSE_PREPARE_MEETING\"}}' {gateway_addr} samblik.v1.LookupService/Lookup",
            transport = match pki {
                Some(p) => format!("-cacert {}", p.ca.display()),
                None => "-plaintext".to_owned(),
            }
        ),
        users,
        sample_citizens: samples,
    }
}

fn write_facts(path: &Path, facts: &DemoFacts) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(facts)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_welcome(facts: &DemoFacts) {
    let dir = facts.data_dir.display();
    let mut out = String::new();
    out.push_str(&format!(
        "\nSamblik demo — {} (synthetic data, seed {})\n\n",
        facts.municipality, facts.seed
    ));
    match &facts.ca_file {
        Some(ca) => out.push_str(&format!(
            "Gateway (gRPC over TLS, loopback only): {}  (demo CA: {})\n",
            facts.gateway_addr,
            ca.display()
        )),
        None => out.push_str(&format!(
            "Gateway (gRPC, PLAINTEXT — --insecure, loopback only): {}\n",
            facts.gateway_addr
        )),
    }
    for s in &facts.sources {
        out.push_str(&format!(
            "  source {:<14} {}  ({})\n",
            s.id, s.addr, s.department
        ));
    }
    out.push_str(&format!(
        "Lookup panel and auditor pages (sign in as a demo user): {}\n",
        facts.panel_url
    ));
    out.push_str("\nDemo users:\n");
    for u in &facts.users {
        out.push_str(&format!(
            "  {:<22} {} — {} — holds cases for {}\n",
            u.id,
            u.name,
            u.unit,
            u.citizens.join(", ")
        ));
    }
    out.push_str("\nSample citizens:\n");
    for c in &facts.sample_citizens {
        out.push_str(&format!(
            "  {:<16} {}  {}  [{}]\n",
            c.label,
            c.cpr,
            c.name,
            c.departments.join(", ")
        ));
    }
    out.push_str(&format!(
        "\nTry it:\n  TOKEN=$({})\n  {}\n  samblik lookup --addr {}{} --token \"$TOKEN\" --cpr {} --purpose prepare-meeting\n",
        facts.token_command,
        facts.grpcurl_example,
        facts.gateway_url,
        facts
            .ca_file
            .as_ref()
            .map(|ca| format!(" --cacert {}", ca.display()))
            .unwrap_or_default(),
        facts.sample_citizens.first().map_or("CPR", |c| c.cpr.as_str()),
    ));
    out.push_str(&format!(
        "\nThe same facts are in {dir}/{DEMO_FACTS_FILE}. Ctrl-C stops the demo.\n"
    ));
    print!("{out}");
}
