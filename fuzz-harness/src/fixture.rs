//! One gateway, built once per process the way `samblik serve` builds it: a config file loaded
//! with `Config::load`, the pipeline from `server::pipeline_from_config`. Its three sources are
//! gRPC clients of an address nothing listens on; the targets never call them.

use ring::signature::{Ed25519KeyPair, KeyPair};
use samblik_gateway::LookupPipeline;
use samblik_gateway::auth::Authenticator;
use samblik_gateway::config::Config;
use std::sync::OnceLock;

/// The fixture identity provider's issuer, audience and key id.
pub const ISSUER: &str = "https://idp.fuzz.example/realm";
pub const AUDIENCE: &str = "samblik";
pub const KID: &str = "fuzz-1";
/// The leeway the fixture config allows on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// The fixture config's smallest break-the-glass reason.
pub const MIN_REASON: usize = 20;
/// The fixture config's largest request.
pub const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug)]
pub struct Fixture {
    pub config: Config,
    pub pipeline: LookupPipeline,
    pub auth: Authenticator,
    /// Signs the tokens the token target builds; its public half is the config's key.
    pub signer: Ed25519KeyPair,
    /// Keeps the sources' lazy channels' tasks alive.
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

/// The fixture's config file, its paths relative to its folder.
pub fn config_text() -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
max_request_bytes = {MAX_REQUEST_BYTES}

[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_secs = {LEEWAY_SECS}
verified_token_cache = 0
algorithms = ["EdDSA"]

[[auth.keys]]
kid = "{KID}"
algorithm = "EdDSA"
public_key_file = "keys/fuzz.pub.pem"

[auth.claims.role_names]
Sagsbehandler = "caseworker"

[audit]
path = "audit.db"
signing_key_file = "keys/audit.key"
data_key_file = "keys/audit-data.keys"

[[sources]]
id = "child-welfare"
department = "Børne- og Familieafdelingen"
endpoint = "http://127.0.0.1:9"

[[sources]]
id = "jobcenter"
department = "Jobcenter"
endpoint = "http://127.0.0.1:9"

[[sources]]
id = "integration"
department = "Integrationsafdelingen"
endpoint = "http://127.0.0.1:9"

[policy]
break_glass_min_reason = {MIN_REASON}

[[policy.statutes]]
id = "existence-and-contact"
description = "Existence and contact"
max_tier = 1

[[policy.statutes]]
id = "lab-30a-rehabilitation"
description = "Rehabilitation plans"
max_tier = 2
sources = ["jobcenter"]
case_types = ["LAB-30a"]
purposes = ["prepare-meeting", "coordinate", "follow-up"]

[[policy.field_sets]]
source = "child-welfare"
case_types = ["SL-140"]
selected = ["interventions", "goals", "next_follow_up_on"]

[[policy.sensitivity]]
case_types = ["SL-12a"]
flags = ["honour-related-conflict"]
"#
    )
}

/// An Ed25519 public key in PEM (SubjectPublicKeyInfo).
fn public_pem(key: &Ed25519KeyPair) -> String {
    use base64::Engine;
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(key.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

fn build() -> Fixture {
    // A fixed seed: the committed corpora's signed tokens stay valid.
    let signer = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("Ed25519 seed");
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::create_dir_all(dir.path().join("keys")).expect("keys folder");
    std::fs::write(dir.path().join("keys/fuzz.pub.pem"), public_pem(&signer)).expect("key");
    let path = dir.path().join("samblik.toml");
    std::fs::write(&path, config_text()).expect("config");
    let config = Config::load(&path).expect("the fixture config loads");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pipeline = {
        let _entered = runtime.enter();
        samblik_gateway::server::pipeline_from_config(&config).expect("the fixture pipeline")
    };
    let auth = Authenticator::from_config(&config.auth).expect("the fixture authenticator");
    Fixture {
        config,
        pipeline,
        auth,
        signer,
        _runtime: runtime,
        _dir: dir,
    }
}
