//! The lookup panel and the auditor's pages in a real browser: headless Chromium (Debian's
//! package) over WebDriver, against the panel over HTTPS with real sources behind it. Each
//! step saves a screenshot (see `screenshot:` lines in the output, under
//! `target/tmp/panel-screenshots/`).
//!
//! One test walks the whole story, because each step needs the state the one before left:
//! a caseworker looks a citizen up in four departments, asks for more, the owning department
//! approves, the case shows at the new tier; consent is recorded and withdrawn; a department
//! goes down; the auditor finds it all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fantoccini::{Client, Locator};
use samblik_synth::Department;
use samblik_tests::panel::{AUDITOR, Browser, RunningPanel, start_browser, start_panel};
use samblik_tests::{all_department_citizen, caseworker};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(e) => {
            let url = client.current_url().await.map(|u| u.path().to_owned());
            let page = client.source().await.unwrap_or_default();
            panic!("no {css} on {url:?}: {e}\n{page}")
        }
    }
}

/// Opens the panel's page at `path` and waits for `css` on it.
async fn open(
    b: &Browser,
    panel: &RunningPanel,
    path: &str,
    css: &str,
) -> fantoccini::elements::Element {
    b.client
        .goto(&format!("{}{path}", panel.url))
        .await
        .unwrap();
    wait_for(&b.client, css).await
}

async fn sign_in(b: &Browser, panel: &RunningPanel, user: &str) {
    open(b, panel, "/log-ind", &format!("button[data-user='{user}']"))
        .await
        .click()
        .await
        .unwrap();
    // Signed in: the page header names the user and offers to sign out.
    wait_for(&b.client, "form[action='/log-ud'] button").await;
}

async fn sign_out(b: &Browser) {
    wait_for(&b.client, "form[action='/log-ud'] button")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "h1").await;
}

/// Looks `cpr` up through the form and waits until every department has answered or failed.
/// Returns the milliseconds from submitting to the first department card.
async fn look_up(b: &Browser, panel: &RunningPanel, cpr: &str) -> u64 {
    open(b, panel, "/panel", "#cpr")
        .await
        .send_keys(cpr)
        .await
        .unwrap();
    wait_for(&b.client, "#slaa-op").await.click().await.unwrap();
    let root = wait_for(&b.client, "#opslag[data-done='true']").await;
    let url = b.client.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(cpr),
        "the CPR stays out of the address bar: {url}"
    );
    root.attr("data-first-card-ms")
        .await
        .unwrap()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(u64::MAX)
}

async fn card_status(b: &Browser, source: &str) -> String {
    wait_for(&b.client, &format!("#kilde-{source}"))
        .await
        .attr("data-status")
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn tiers(b: &Browser, source: &str) -> Vec<String> {
    let mut tiers = Vec::new();
    for case in b
        .client
        .find_all(Locator::Css(&format!("#kilde-{source} article.sag")))
        .await
        .unwrap()
    {
        tiers.push(case.attr("data-tier").await.unwrap().unwrap_or_default());
    }
    tiers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caseworker_and_an_auditor_work_through_the_panel_in_chromium() {
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("panel-screenshots");
    let Some(mut b) = start_browser(shots).await else {
        return;
    };
    let mut panel = start_panel().await;
    let cpr = all_department_citizen();
    let child_welfare = caseworker(Department::ChildWelfare).id.clone();
    let jobcenter = caseworker(Department::Jobcenter).id.clone();
    let mut first_card_ms = Vec::new();

    // Every page the test shows is checked against WCAG 2.1 AA (axe-core) and for its keyboard
    // focus order as its screenshot is taken, starting with the sign-in page.
    open(&b, &panel, "/log-ind", "button[data-user]").await;
    b.screenshot("sign-in").await;

    // Sign in as a child-welfare caseworker and look up a citizen with cases in all four
    // departments: four department cards, each answered.
    sign_in(&b, &panel, &child_welfare).await;
    b.screenshot("signed-in").await;
    first_card_ms.push(look_up(&b, &panel, cpr).await);
    for source in ["child-welfare", "jobcenter", "integration", "adult-social"] {
        assert_eq!(card_status(&b, source).await, "svaret", "{source}");
    }
    assert!(
        tiers(&b, "child-welfare").await.iter().all(|t| t == "3"),
        "own department in full"
    );
    assert!(
        tiers(&b, "jobcenter").await.iter().all(|t| t == "1"),
        "others at tier 1"
    );
    b.screenshot("four-departments").await;

    // The page weight of a lookup page (document, style sheet, script; no images).
    let weight = b
        .client
        .execute(
            "const nav = performance.getEntriesByType('navigation')[0];
             const parts = performance.getEntriesByType('resource')
               .filter(e => e.name.endsWith('.css') || e.name.endsWith('.js'));
             return [nav, ...parts].reduce((n, e) => n + e.decodedBodySize, 0);",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap();

    // A jobcenter case withholds tier 2: ask for it.
    let case = wait_for(&b.client, "#kilde-jobcenter article.sag:has(details.anmod)").await;
    let case_id = case.attr("data-case").await.unwrap().unwrap();
    let withheld = case
        .find(Locator::Css(".tilbageholdt"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        withheld.contains("samtykke"),
        "the reason is said plainly: {withheld}"
    );
    case.find(Locator::Css("details.anmod summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    case.find(Locator::Css("textarea"))
        .await
        .unwrap()
        .send_keys("Vi holder netværksmøde om familiens samlede plan i næste uge.")
        .await
        .unwrap();
    b.screenshot("request-access").await;
    case.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sent = wait_for(&b.client, ".besked.ok")
        .await
        .text()
        .await
        .unwrap();
    assert!(sent.contains(&case_id), "{sent}");
    sign_out(&b).await;

    // The owning department (jobcenter) approves it in its inbox.
    sign_in(&b, &panel, &jobcenter).await;
    let request = open(&b, &panel, "/panel/anmodninger", "article.anmodning").await;
    b.screenshot("owner-inbox").await;
    request
        .find(Locator::Css("button[value=godkend]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "tr[data-state='Godkendt']").await;
    b.screenshot("approved").await;
    sign_out(&b).await;

    // Back as the requester: the case now shows at tier 2, with its interventions and goals.
    sign_in(&b, &panel, &child_welfare).await;
    first_card_ms.push(look_up(&b, &panel, cpr).await);
    let granted = wait_for(
        &b.client,
        &format!("#kilde-jobcenter article[data-case='{case_id}']"),
    )
    .await;
    assert_eq!(
        granted.attr("data-tier").await.unwrap().as_deref(),
        Some("2")
    );
    let basis = granted
        .find(Locator::Css(".grundlag"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(basis.contains("Godkendt anmodning"), "{basis}");
    granted.find(Locator::Css(".udvalgt")).await.unwrap();
    b.screenshot("approved-case-at-tier-2").await;

    // Consent: integration's data to any department with a case, up to tier 2.
    assert!(tiers(&b, "integration").await.iter().all(|t| t == "1"));
    wait_for(&b.client, "a[href^='/panel/samtykke/']")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "input[name=from][value=integration]")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "input[name=to_any]")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "#document_ref")
        .await
        .send_keys("SBSYS 27.12.04-G01-7-26 dok. 3")
        .await
        .unwrap();
    wait_for(&b.client, "#registrer-samtykke")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "#samtykker tr[data-active='true']").await;
    b.screenshot("consent-recorded").await;
    first_card_ms.push(look_up(&b, &panel, cpr).await);
    assert!(
        tiers(&b, "integration").await.iter().any(|t| t == "2"),
        "the consent lifts integration's cases to tier 2"
    );
    b.screenshot("with-consent").await;

    // Withdrawn: the very next lookup is back at tier 1.
    wait_for(&b.client, "a[href^='/panel/samtykke/']")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "#samtykker tr[data-active='true'] button")
        .await
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "#samtykker tr[data-active='false']").await;
    b.screenshot("consent-withdrawn").await;
    first_card_ms.push(look_up(&b, &panel, cpr).await);
    assert!(tiers(&b, "integration").await.iter().all(|t| t == "1"));

    // A department goes down: its card says so; the others still answer.
    panel.stop_source(Department::Integration);
    first_card_ms.push(look_up(&b, &panel, cpr).await);
    let down = card_status(&b, "integration").await;
    assert!(
        ["utilgaengelig", "timeout", "fejl"].contains(&down.as_str()),
        "integration shows as down, not missing: {down}"
    );
    assert_eq!(card_status(&b, "child-welfare").await, "svaret");
    assert_eq!(card_status(&b, "jobcenter").await, "svaret");
    b.screenshot("integration-down").await;
    open(&b, &panel, "/panel/noedadgang", "textarea").await;
    b.screenshot("break-the-glass-form").await;
    sign_out(&b).await;

    // The auditor finds the lookups, sees what was disclosed and checks the chain.
    sign_in(&b, &panel, AUDITOR).await;
    wait_for(&b.client, "#cpr")
        .await
        .send_keys(cpr)
        .await
        .unwrap();
    wait_for(&b.client, "#soeg").await.click().await.unwrap();
    wait_for(&b.client, "ol.poster").await;
    let lookups = b
        .client
        .find_all(Locator::Css("details.post[data-action='lookup-stream']"))
        .await
        .unwrap();
    let mut requests = std::collections::BTreeSet::new();
    for record in lookups {
        requests.insert(record.attr("data-request").await.unwrap().unwrap());
    }
    // A streamed lookup writes a record per department as it answers, under one request id.
    assert_eq!(
        requests.len(),
        5,
        "every lookup of the citizen is in the log"
    );
    // The lookup after the approval disclosed the case at tier 2, field by field.
    let row = wait_for(
        &b.client,
        &format!("details.post tr[data-case='{case_id}'] td.felter"),
    )
    .await;
    let summaries = b
        .client
        .find_all(Locator::Css("details.post summary"))
        .await
        .unwrap();
    summaries[summaries.len() - 1].click().await.unwrap();
    b.screenshot("auditor-search").await;
    let fields = row.html(true).await.unwrap();
    assert!(
        fields.contains("selected"),
        "the disclosed field paths are listed: {fields}"
    );
    open(&b, &panel, "/revision/gennemsyn", "h1").await;
    b.screenshot("review-queue").await;
    open(&b, &panel, "/revision", "#verificer")
        .await
        .click()
        .await
        .unwrap();
    let status = wait_for(&b.client, "#kaede-status").await;
    assert_eq!(
        status.attr("data-ok").await.unwrap().as_deref(),
        Some("true")
    );
    b.screenshot("chain-verified").await;

    first_card_ms.sort_unstable();
    println!(
        "panel: first department card after submit, {} lookups: median {} ms, max {} ms; lookup page weight {} bytes",
        first_card_ms.len(),
        first_card_ms[first_card_ms.len() / 2],
        first_card_ms[first_card_ms.len() - 1],
        weight
    );
    b.client.clone().close().await.unwrap();
}
