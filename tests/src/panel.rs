//! The lookup panel for tests: the four reference sources, the gateway's pipeline and the
//! panel over HTTPS on loopback, signing in through the demo's page of users; and headless
//! Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`).

use crate::{RunningSource, SourceSpec, municipality, reference, start_source, with_own_audit};
use samblik::demo::{caseworker_claims, demo_panel_config};
use samblik_gateway::LookupPipeline;
use samblik_panel::{DemoSignIn, DemoSignInUser, Panel, SignIn};
use samblik_synth::Department;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
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
        crate::audit_records_in(&self.audit_dir.path().join(samblik::demo::AUDIT_DB_FILE))
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
    Panel::new(
        Arc::clone(pipeline),
        config.panel.clone().unwrap(),
        demo_sign_in(),
    )
    .unwrap()
}

/// The demo's sign-in page over [`panel_users`], minting the test issuer's tokens.
fn demo_sign_in() -> SignIn {
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
    SignIn::Demo(DemoSignIn::new(
        panel_users(),
        Duration::from_secs(600),
        mint,
    ))
}

/// Starts the four reference sources, the pipeline and the panel over HTTPS (the demo PKI's
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
    let pki = samblik::pki::DemoPki::create(pki_dir.path(), &ids).unwrap();
    config.server.tls = Some(samblik::pki::demo_server_tls(&pki));
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let listeners = samblik::server::Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        panel: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
    };
    let panel_addr = listeners.panel.as_ref().unwrap().local_addr().unwrap();
    let url = format!("https://{panel_addr}");
    config.panel = Some(demo_panel_config(panel_addr, &url));
    config.validate().unwrap();
    // Wired as `samblik demo` wires it: the gRPC API and the panel on one pipeline.
    let gateway = samblik::server::Gateway::open(
        &config,
        listeners,
        samblik::server::PanelSignIn::Given(demo_sign_in()),
    )
    .unwrap();
    let pipeline = Arc::clone(gateway.pipeline());
    let stop = CancellationToken::new();
    tokio::spawn(gateway.serve(stop.clone()));
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
    /// axe-core's source (`tests/a11y`, installed by npm), run on every page the test shows.
    axe: Option<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads a process group of its own, which the Chromium it starts joins:
        // a test that fails before closing its session leaves no browser behind.
        let group = format!("-{}", self.driver.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .is_ok_and(|s| s.success());
        if !killed {
            let _ = self.driver.kill();
        }
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
        .process_group(0)
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
        axe: axe_source(),
    })
}

/// axe-core from `tests/a11y/node_modules` (`npm ci --prefix tests/a11y`, which the README's
/// test command runs). Missing is a failure when `SAMBLIK_REQUIRE_BROWSER` is set.
fn axe_source() -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("a11y/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(source) => Some(source),
        Err(e) => {
            assert!(
                std::env::var_os("SAMBLIK_REQUIRE_BROWSER").is_none(),
                "SAMBLIK_REQUIRE_BROWSER is set but axe-core is not installed ({}: {e}); \
                 run npm ci --prefix tests/a11y",
                path.display()
            );
            eprintln!("SKIPPED accessibility checks: axe-core is not installed ({e})");
            None
        }
    }
}

/// The WCAG 2.1 A and AA rules of axe-core; violations of any of them fail the test.
const AXE_RUN: &str = r#"
const done = arguments[arguments.length - 1];
axe.run(document, {
  runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
  resultTypes: ['violations', 'incomplete'],
}).then(r => done({
  violations: r.violations.map(v => ({
    rule: v.id, help: v.help,
    nodes: v.nodes.map(n => n.target.join(' ') + ' — ' + (n.failureSummary || '')),
  })),
  incomplete: r.incomplete.map(v => ({ rule: v.id, nodes: v.nodes.map(n => n.target.join(' ')) })),
  passes: r.passes.length,
})).catch(e => done({ error: String(e) }));
"#;

/// Lists the page's tab stops in document order (as sequential focus navigation should visit
/// them: rendered, enabled, one stop per radio group) and focuses the first. Returns how many
/// there are, or an error string for a positive `tabindex` (which reorders focus).
const TAB_STOPS: &str = r#"
const stops = [];
const groups = new Set();
for (const el of document.querySelectorAll(
    'a[href], button, input, select, textarea, summary, [tabindex]')) {
  const tabindex = el.getAttribute('tabindex');
  if (tabindex !== null && parseInt(tabindex, 10) > 0) {
    return 'positive tabindex on ' + el.outerHTML.slice(0, 120);
  }
  if (el.disabled || el.type === 'hidden' || (tabindex !== null && parseInt(tabindex, 10) < 0)) continue;
  if (el.tagName === 'SUMMARY' && el.parentElement.tagName !== 'DETAILS') continue;
  // Not rendered, hidden, or inside a closed <details> (content-visibility: hidden).
  if (!el.checkVisibility({ visibilityProperty: true })) continue;
  if (el.type === 'radio') {
    if (groups.has(el.name)) continue;
    groups.add(el.name);
    const group = [...document.getElementsByName(el.name)].filter(r => r.form === el.form);
    stops.push(group.find(r => r.checked) || group[0]);
    continue;
  }
  stops.push(el);
}
window.__samblikStops = stops;
if (stops.length) stops[0].focus();
return stops.length;
"#;

/// After a Tab: is the focused element the expected stop, and does it show that it has focus?
const FOCUSED: &str = r#"
const el = document.activeElement;
const expected = window.__samblikStops[arguments[0]];
const style = getComputedStyle(el);
const describe = e => e ? (e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
  (e.name ? '[name=' + e.name + ']' : '') + ' "' + (e.textContent || e.value || '').trim().slice(0, 40) + '"') : 'nothing';
return {
  expected: el === expected,
  // A date or time field has a tab stop per part (day, month, year) inside one element.
  within_previous: el === window.__samblikStops[arguments[0] - 1]
    && ['date', 'datetime-local', 'time', 'month', 'week'].includes(el.type),
  focused: describe(el),
  wanted: describe(expected),
  indicator: (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2)
    || style.boxShadow !== 'none',
};
"#;

impl Browser {
    /// Saves a screenshot of the page as `NN-name.png`, prints where, and checks the page's
    /// accessibility (see [`Browser::check_accessibility`]).
    pub async fn screenshot(&mut self, name: &str) {
        self.step += 1;
        let png = self.client.screenshot().await.unwrap();
        let path = self.shots.join(format!("{:02}-{name}.png", self.step));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        self.check_accessibility(name).await;
    }

    /// The page as it is now against WCAG 2.1 AA with axe-core (labels, contrast, names, roles,
    /// language, …), then its keyboard focus order: Tab from the first stop must visit every
    /// tab stop in document order, each with a visible focus indicator. Panics with what is
    /// wrong and where.
    pub async fn check_accessibility(&self, page: &str) {
        let Some(axe) = &self.axe else { return };
        self.client.execute(axe, Vec::new()).await.unwrap();
        let result = self
            .client
            .execute_async(AXE_RUN, Vec::new())
            .await
            .unwrap();
        assert!(result.get("error").is_none(), "axe on {page}: {result}");
        let violations = result["violations"].as_array().cloned().unwrap_or_default();
        assert!(
            violations.is_empty(),
            "WCAG 2.1 AA violations on the {page} page:\n{}",
            serde_json::to_string_pretty(&violations).unwrap()
        );
        // What axe could not decide fails too (a duplicate id, say, leaves a label pointing at
        // two fields) — except contrast it cannot compute (text over a gradient or an image),
        // which is printed for a person to look at.
        for item in result["incomplete"].as_array().into_iter().flatten() {
            assert_eq!(
                item["rule"], "color-contrast",
                "axe needs review on the {page} page: {item}"
            );
            println!("axe on {page}: contrast to check by eye: {item}");
        }
        println!(
            "accessibility: {page}: {} WCAG 2.1 A/AA rules pass, no violations",
            result["passes"]
        );

        let stops = self.client.execute(TAB_STOPS, Vec::new()).await.unwrap();
        let stops = match stops.as_u64() {
            Some(n) => n,
            None => panic!("focus order on the {page} page: {stops}"),
        };
        for i in 1..stops {
            let mut focus = serde_json::Value::Null;
            for _ in 0..4 {
                self.client
                    .active_element()
                    .await
                    .unwrap()
                    .send_keys("\u{e004}")
                    .await
                    .unwrap();
                focus = self
                    .client
                    .execute(FOCUSED, vec![serde_json::json!(i)])
                    .await
                    .unwrap();
                if focus["within_previous"] != serde_json::json!(true) {
                    break;
                }
            }
            assert_eq!(
                focus["expected"],
                serde_json::json!(true),
                "focus order on the {page} page: Tab number {i} focused {} instead of {}",
                focus["focused"],
                focus["wanted"]
            );
            assert_eq!(
                focus["indicator"],
                serde_json::json!(true),
                "no visible focus indicator on the {page} page for {}",
                focus["focused"]
            );
        }
        println!("keyboard: {page}: Tab visits all {stops} stops in order, each visibly focused");
    }
}
