//! What the `samblik` command's tests share: child processes stopped on drop, a scratch
//! PostgreSQL database, a lone source and a configured gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SAMBLIK: &str = env!("CARGO_BIN_EXE_samblik");

/// Stops a child process on drop, so a failing test leaves nothing running.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Asks the process to stop (SIGTERM) and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first line the process prints, without its newline (it says where it listens).
    fn first_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().to_owned()
    }
}

/// The start of a gateway config: a plaintext listener on a free port, the demo issuer's key,
/// and one jobcenter source at `source_addr`.
pub fn config_head(issuer: &samblik::tokens::DemoIssuer, source_addr: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
issuer = "{issuer_url}"
audience = "{audience}"
[[auth.keys]]
kid = "{kid}"
algorithm = "ES256"
public_key_file = "{key}"
[[sources]]
id = "jobcenter"
department = "Jobcenter"
endpoint = "http://{source_addr}"
"#,
        issuer_url = samblik::tokens::DEMO_ISSUER,
        audience = samblik::tokens::DEMO_AUDIENCE,
        kid = samblik::tokens::DEMO_KID,
        key = issuer.public_key_path().display(),
    )
}

/// A lone jobcenter source over the synthetic municipality in `data`, in plaintext; returns
/// it with its address, once it listens.
pub fn start_jobcenter_source(data: &Path) -> (Running, String) {
    let mut source = Running(
        Command::new(SAMBLIK)
            .args([
                "source",
                "--kind",
                "jobcenter",
                "--data",
                data.to_str().unwrap(),
                "--insecure",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let line = source.first_line();
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    (source, addr)
}

/// `samblik serve --config config`, its audit store's URL in `SAMBLIK_AUDIT_DATABASE_URL`;
/// returns it with its gRPC address, once it listens.
pub fn start_serve(config: &Path, database_url: &str) -> (Running, String) {
    start_serve_with(config, database_url, &[])
}

/// As [`start_serve`], with `extra` arguments to `samblik serve`.
pub fn start_serve_with(config: &Path, database_url: &str, extra: &[&str]) -> (Running, String) {
    let mut gateway = Running(
        Command::new(SAMBLIK)
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(extra)
            .env("SAMBLIK_AUDIT_DATABASE_URL", database_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let line = gateway.first_line();
    let addr = line
        .strip_prefix("samblik gateway listening on ")
        .unwrap_or_else(|| panic!("the gateway did not start: {line:?}"))
        .to_owned();
    (gateway, addr)
}

/// What a configured gateway with its audit log in PostgreSQL needs around it: a synthetic
/// municipality, a lone jobcenter source over it, the demo issuer, and a config file whose
/// audit store is a fresh database (its URL in `SAMBLIK_AUDIT_DATABASE_URL`).
pub struct PostgresSetup {
    pub dir: tempfile::TempDir,
    pub source: Running,
    pub config: std::path::PathBuf,
    /// The audit store's database.
    pub url: String,
    _database: samblik_audit::testing::ScratchDatabase,
    /// The checkpoint signing key the config names.
    pub signing_key: std::path::PathBuf,
    /// A jobcenter caseworker's token.
    pub token: String,
    /// Citizens with a jobcenter case.
    pub jobcenter_cprs: Vec<String>,
}

/// A [`PostgresSetup`] for test `name`, writing chain `chain`; fails without the test server.
pub fn postgres_setup(name: &str, chain: &str) -> PostgresSetup {
    let admin = samblik_audit::testing::test_postgres_url();
    let database = samblik_audit::testing::ScratchDatabase::create(&admin, name).unwrap();
    let url = database.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let synth = Command::new(SAMBLIK)
        .args(["synth", "--seed", "3", "--citizens", "3000", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(synth.status.success(), "{synth:?}");
    let (source, source_addr) = start_jobcenter_source(&data);
    let issuer = samblik::tokens::DemoIssuer::load_or_create(dir.path()).unwrap();
    let config = dir.path().join("samblik.toml");
    std::fs::write(
        &config,
        format!(
            "{}[audit]\npostgres_url_env = \"SAMBLIK_AUDIT_DATABASE_URL\"\n\
             signing_key_file = \"keys/audit-signing.key\"\n\
             data_key_file = \"keys/audit-data.keys\"\nchain = \"{chain}\"\n",
            config_head(&issuer, &source_addr)
        ),
    )
    .unwrap();
    let caseworkers = samblik_synth::store::read_caseworkers(&data).unwrap();
    let worker = caseworkers
        .iter()
        .find(|w| w.id.starts_with("cw-jobcenter"))
        .unwrap();
    let token = issuer
        .mint(
            &samblik::demo::caseworker_claims(worker, "999"),
            Duration::from_secs(600),
        )
        .unwrap();
    let jobcenter_cprs = samblik_synth::store::read(&data)
        .unwrap()
        .cases
        .iter()
        .filter(|c| c.plan_type.department() == samblik_synth::Department::Jobcenter)
        .map(|c| c.cpr.clone())
        .take(50)
        .collect();
    PostgresSetup {
        signing_key: dir.path().join("keys/audit-signing.key"),
        dir,
        source,
        config,
        url,
        _database: database,
        token,
        jobcenter_cprs,
    }
}
