//! The lookup panel for tests: the three reference sources, the gateway's pipeline and the
//! panel over HTTPS on loopback, signing in through the demo's page of users; and headless
//! Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`).

use crate::{RunningSource, SourceSpec, municipality, reference, start_source, with_own_audit};
use samblik_gateway::LookupPipeline;
use samblik_gateway::demo::{caseworker_claims, demo_panel_config};
use samblik_gateway::panel::{DemoSignIn, DemoSignInUser, Panel, SignIn};
use samblik_synth::Department;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The demo auditor the panel's sign-in page lists.
pub const AUDITOR: &str = "aud-001";

/// The panel with everything behind it; stopped on drop.
#[allow(missing_debug_implementations)]
pub struct RunningPanel {
    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    /// The reference sources, by department (drop one to take it down).
    pub sources: Vec<(Department, RunningSource)>,
    pub pipeline: Arc<LookupPipeline>,
    pub config: samblik_gateway::config::Config,
    pub audit_dir: tempfile::TempDir,
    _pki_dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for RunningPanel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RunningPanel {
    /// Takes `department`'s source down.
    pub fn stop_source(&mut self, department: Department) {
        self.sources.retain(|(d, _)| *d != department);
    }

    /// Everything the panel's audit log holds.
    pub fn audit_records(&self) -> Vec<samblik_audit::AuditRecord> {
        crate::audit_records_in(
            &self
                .audit_dir
                .path()
                .join(samblik_gateway::demo::AUDIT_DB_FILE),
        )
    }

    /// A second panel over the same pipeline, for in-process requests (no socket).
    pub fn router(&self) -> axum::Router {
        Arc::new(new_panel(&self.pipeline, &self.config)).router()
    }
}

/// The demo users the panel lists: one caseworker per department, and the auditor.
pub fn panel_users() -> Vec<DemoSignInUser> {
    let mut users: Vec<DemoSignInUser> = Department::ALL
        .iter()
        .map(|d| {
            let c = crate::caseworker(*d);
            DemoSignInUser {
                id: c.id.clone(),
                name: c.name.clone(),
                role: "caseworker".into(),
                unit: c.unit.clone(),
            }
        })
        .collect();
    users.push(DemoSignInUser {
        id: AUDITOR.into(),
        name: "Test auditor".into(),
        role: "auditor".into(),
        unit: "Intern revision".into(),
    });
    users
}

fn new_panel(pipeline: &Arc<LookupPipeline>, config: &samblik_gateway::config::Config) -> Panel {
    let mint = |user: &str| -> anyhow::Result<String> {
        if user == AUDITOR {
            return Ok(crate::staff_token(AUDITOR, "auditor"));
        }
        let worker = municipality()
            .caseworkers
            .iter()
            .find(|c| c.id == user)
            .ok_or_else(|| anyhow::anyhow!("no such caseworker"))?;
        let claims = caseworker_claims(worker, &municipality().municipality.code);
        Ok(crate::issuer().1.mint(&claims, Duration::from_secs(600))?)
    };
    Panel::new(
        Arc::clone(pipeline),
        config.panel.clone().unwrap(),
        SignIn::Demo(DemoSignIn::new(
            panel_users(),
            Duration::from_secs(600),
            mint,
        )),
    )
    .unwrap()
}

/// Starts the three reference sources, the pipeline and the panel over HTTPS (the demo PKI's
/// gateway certificate).
pub async fn start_panel() -> RunningPanel {
    let mut sources = Vec::new();
    let mut specs = Vec::new();
    for department in Department::ALL {
        let running = start_source(reference(department)).await;
        let mut spec = SourceSpec::at(department.id(), running.addr);
        spec.department = department.display_name().to_owned();
        specs.push(spec);
        sources.push((department, running));
    }
    let (mut config, audit_dir) = with_own_audit(crate::gateway_config(&specs, 3_000));
    let pki_dir = tempfile::tempdir().unwrap();
    let ids: Vec<&str> = Department::ALL.iter().map(|d| d.id()).collect();
    let pki = samblik_gateway::tls::DemoPki::create(pki_dir.path(), &ids).unwrap();
    config.server.tls = Some(samblik_gateway::tls::demo_server_tls(&pki));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    config.panel = Some(demo_panel_config(listener.local_addr().unwrap(), &url));
    config.validate().unwrap();
    let pipeline = Arc::new(samblik_gateway::server::pipeline_from_config(&config).unwrap());
    let panel = Arc::new(new_panel(&pipeline, &config));
    let tls = samblik_gateway::panel::panel_tls(&config).unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        samblik_gateway::panel::serve(panel, listener, tls, 100, shutdown)
            .await
            .unwrap();
    });
    RunningPanel {
        url,
        sources,
        pipeline,
        config,
        audit_dir,
        _pki_dir: pki_dir,
        stop,
    }
}

/// Headless Chromium under chromedriver; both stopped on drop.
#[allow(missing_debug_implementations)]
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    shots: PathBuf,
    step: usize,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver on a free port and a headless Chromium session through it, saving
/// screenshots into `shots`. `None`
/// when Chromium is not installed — unless `SAMBLIK_REQUIRE_BROWSER` is set (the README's
/// test command sets it), when that is a failure: no silent skip in CI.
pub async fn start_browser(shots: PathBuf) -> Option<Browser> {
    let installed = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new("/usr/bin/chromedriver").exists();
    if !installed {
        assert!(
            std::env::var_os("SAMBLIK_REQUIRE_BROWSER").is_none(),
            "SAMBLIK_REQUIRE_BROWSER is set but Debian's chromium and chromium-driver are not installed"
        );
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium chromium-driver)");
        return None;
    }
    let mut driver = Command::new("/usr/bin/chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // chromedriver says which port it took: "... started successfully on port 40279."
    let stdout = driver.stdout.take().unwrap();
    let port = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.split("started successfully on port ")
                .nth(1)
                .map(|p| p.trim_end_matches('.').trim().parse::<u16>().unwrap())
        });
        // Keep draining so chromedriver never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        port
    })
    .await
    .unwrap()
    .expect("chromedriver did not say its port");
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), serde_json::json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1366,900",
                "--lang=da-DK",
            ]
        }),
    );
    let mut connected = None;
    let mut last_error = None;
    for _ in 0..100 {
        match fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(caps.clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        {
            Ok(c) => {
                connected = Some(c);
                break;
            }
            // chromedriver prints its port just before it accepts connections.
            Err(e) => {
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let client = connected.unwrap_or_else(|| {
        panic!("cannot start a Chromium session through chromedriver: {last_error:?}")
    });
    std::fs::create_dir_all(&shots).unwrap();
    Some(Browser {
        client,
        driver,
        shots,
        step: 0,
    })
}

impl Browser {
    /// Saves a screenshot of the page as `NN-name.png` and prints where.
    pub async fn screenshot(&mut self, name: &str) {
        self.step += 1;
        let png = self.client.screenshot().await.unwrap();
        let path = self.shots.join(format!("{:02}-{name}.png", self.step));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}
