//! The panel's guards, request by request against its router (the browser story is in
//! `panel_browser.rs`): security headers and the session cookie, CSRF and origin checks,
//! the deep link that keeps the CPR out of URLs, a lookup that streams once, a link from an
//! unknown site that waits for a click, break-the-glass, the auditor's export, and sign-in
//! through an OpenID Connect provider's token endpoint over real HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use samblik_audit::{Action, AuditRecord};
use samblik_gateway::auth::PANEL_SYSTEM;
use samblik_synth::Department;
use samblik_tests::idp::{HttpsRequest, TestPki, serve_https};
use samblik_tests::panel::{AUDITOR, RunningPanel, start_panel};
use samblik_tests::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// A browser stand-in: one cookie jar, requests straight into the panel's router.
struct Agent {
    router: axum::Router,
    origin: String,
    cookie: Option<String>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"_csrf\" value=\"")
            .expect("a CSRF field")
            + 20;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

impl Agent {
    /// Opens a lookup of `cpr` (to prepare a meeting) by a deep link, as a case system links to
    /// the panel; returns the session's id for it.
    async fn open_by_link(&mut self, cpr: &str) -> String {
        self.get(&format!("/panel?cpr={cpr}&purpose=prepare-meeting"))
            .await
            .location()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    }

    fn new(panel: &RunningPanel) -> Self {
        Agent {
            router: panel.router(),
            origin: panel.url.clone(),
            cookie: None,
        }
    }

    async fn send(&mut self, mut request: Request<Body>) -> Answer {
        if let Some(cookie) = &self.cookie {
            request
                .headers_mut()
                .insert(header::COOKIE, cookie.parse().unwrap());
        }
        let response = self.router.clone().oneshot(request).await.unwrap();
        if let Some(set) = response.headers().get(header::SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::get(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn post_from(&mut self, origin: &str, path: &str, form: &[(&str, &str)]) -> Answer {
        let body = form
            .iter()
            .fold(
                form_urlencoded::Serializer::new(String::new()),
                |mut s, (k, v)| {
                    s.append_pair(k, v);
                    s
                },
            )
            .finish();
        self.send(
            Request::post(path)
                .header(header::ORIGIN, origin)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = self.origin.clone();
        self.post_from(&origin, path, form).await
    }

    /// Signs in through the demo page; returns where the panel sent the browser next.
    async fn sign_in(&mut self, user: &str) -> String {
        let page = self.get("/log-ind").await;
        let answer = self
            .post("/log-ind/demo", &[("_csrf", &page.csrf()), ("user", user)])
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        answer.location().to_owned()
    }
}

fn caseworker_id(department: Department) -> String {
    caseworker(department).id.clone()
}

/// The panel's audit records of lookups of `cpr`.
fn lookup_records(panel: &RunningPanel, cpr: &str) -> Vec<AuditRecord> {
    panel
        .audit_records()
        .into_iter()
        .filter(|r| {
            r.action == Action::LookupStream
                && r.cpr.as_ref().map(samblik_proto::Cpr::as_str) == Some(cpr)
        })
        .collect()
}

/// Lookup request ids of `cpr` in the panel's audit log.
fn lookups_of(panel: &RunningPanel, cpr: &str) -> BTreeSet<String> {
    lookup_records(panel, cpr)
        .into_iter()
        .map(|r| r.request_id)
        .collect()
}

/// The event names of an event stream's body.
fn events(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect()
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_the_session_cookie_is_locked_down() {
    let panel = start_panel().await;
    let mut agent = Agent::new(&panel);
    let page = agent.get("/log-ind").await;
    assert_eq!(page.status, StatusCode::OK);
    let h = |name: &str| {
        page.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let csp = h("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h("cache-control"), "no-store");
    assert_eq!(h("x-content-type-options"), "nosniff");
    assert_eq!(h("x-frame-options"), "DENY");
    assert!(h("strict-transport-security").starts_with("max-age="));
    assert_eq!(h("referrer-policy"), "same-origin");
    let cookie = h("set-cookie");
    for part in [
        "__Host-samblik=",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    // No inline script anywhere: every script element loads a file from the gateway.
    assert!(
        page.body.matches("<script").count() == page.body.matches("<script src=\"/static/").count()
    );
    assert!(page.body.contains("lang=\"da\""));
    // Assets are served by the gateway itself (no CDN) and may be cached.
    let js = agent.get("/static/samblik.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        js.headers[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .starts_with("public")
    );
}

#[tokio::test]
async fn a_form_without_the_csrf_token_or_from_another_origin_changes_nothing() {
    let panel = start_panel().await;
    let cpr = all_department_citizen();
    let mut agent = Agent::new(&panel);

    // Signing in needs the session's token too.
    let page = agent.get("/log-ind").await;
    let user = caseworker_id(Department::Jobcenter);
    let refused = agent
        .post("/log-ind/demo", &[("_csrf", "forged"), ("user", &user)])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        agent.get("/panel").await.location(),
        "/log-ind",
        "not signed in"
    );

    let csrf_before = page.csrf();
    agent.sign_in(&user).await;
    let lookup = agent
        .get(&format!("/panel?cpr={cpr}&purpose=prepare-meeting"))
        .await;
    let id = lookup.location().rsplit('/').next().unwrap().to_owned();
    let consents = agent.get(&format!("/panel/samtykke/{id}")).await;
    let csrf = consents.csrf();
    assert_ne!(
        csrf, csrf_before,
        "signing in gives the session a new CSRF token"
    );
    let consent = |token: &str| {
        vec![
            ("_csrf", token.to_owned()),
            ("kind", "permit".to_owned()),
            ("from", "child-welfare".to_owned()),
            ("to_any", "1".to_owned()),
            ("max_tier", "2".to_owned()),
            ("purpose", "prepare-meeting".to_owned()),
            ("valid_from", "2026-01-01".to_owned()),
            ("document_ref", "J.nr. 27.12.04-7".to_owned()),
        ]
    };
    let path = format!("/panel/samtykke/{id}");
    for (origin, token) in [
        (panel.url.clone(), String::new()),
        (panel.url.clone(), csrf_before.clone()),
        ("https://evil.example".to_owned(), csrf.clone()),
        ("null".to_owned(), csrf.clone()),
    ] {
        let form = consent(&token);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = agent.post_from(&origin, &path, &form).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{origin} {token}");
    }
    let listed = agent.get(&path).await;
    assert!(
        listed.body.contains("ikke registreret samtykker"),
        "nothing was recorded"
    );

    // The same form with the token, from the panel itself, is recorded.
    let form = consent(&csrf);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let recorded = agent.post(&path, &form).await;
    assert_eq!(recorded.status, StatusCode::SEE_OTHER, "{}", recorded.body);
    assert!(agent.get(&path).await.body.contains("data-active=\"true\""));
}

#[tokio::test]
async fn a_deep_link_without_a_valid_purpose_looks_nothing_up_and_asks_for_one() {
    let panel = start_panel().await;
    let cpr = all_department_citizen();
    let mut agent = Agent::new(&panel);
    agent
        .sign_in(&caseworker_id(Department::ChildWelfare))
        .await;
    for link in [
        format!("/panel?cpr={cpr}"),
        format!("/panel?cpr={cpr}&purpose=curiosity"),
    ] {
        let page = agent.get(&link).await;
        assert_eq!(page.status, StatusCode::OK, "{link}");
        assert!(
            page.body.contains("gyldigt formål"),
            "{link}: {}",
            page.body
        );
    }
    assert!(lookups_of(&panel, cpr).is_empty(), "nothing was looked up");
}

#[tokio::test]
async fn a_deep_link_keeps_the_cpr_out_of_urls_survives_sign_in_and_streams_once() {
    let panel = start_panel().await;
    let cpr = all_department_citizen();
    let mut agent = Agent::new(&panel);

    let link = agent
        .get(&format!("/panel?cpr={cpr}&purpose=follow-up"))
        .await;
    assert_eq!(link.location(), "/log-ind");
    let anonymous = agent.cookie.clone().unwrap();
    let next = agent
        .sign_in(&caseworker_id(Department::ChildWelfare))
        .await;
    assert!(
        next.starts_with("/panel/opslag/") && !next.contains(cpr),
        "{next}"
    );
    assert_ne!(
        agent.cookie.as_ref(),
        Some(&anonymous),
        "a new session id at sign-in"
    );

    let page = agent.get(&next).await;
    assert!(page.body.contains(cpr) && page.body.contains("Opfølgning"));
    assert!(page.body.contains(&format!("data-stream=\"{next}/svar\"")));
    assert!(
        lookups_of(&panel, cpr).is_empty(),
        "the page itself looks nothing up"
    );

    let stream = agent.get(&format!("{next}/svar")).await;
    assert_eq!(
        stream.headers[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    assert_eq!(
        events(&stream.body),
        ["kilde", "kilde", "kilde", "kilde", "faerdig"]
    );
    assert_eq!(lookups_of(&panel, cpr).len(), 1);
    // The audit log names the panel as the calling system.
    let records = lookup_records(&panel, cpr);
    assert!(!records.is_empty());
    for record in records {
        assert_eq!(record.actor.system.as_deref(), Some(PANEL_SYSTEM));
    }

    // A reload (or the browser's reconnect) does not look the citizen up again.
    let again = agent.get(&format!("{next}/svar")).await;
    assert_eq!(events(&again.body), ["afvist"]);
    assert_eq!(lookups_of(&panel, cpr).len(), 1);

    // Another session cannot use this one's lookup.
    let mut other = Agent::new(&panel);
    other.cookie = None;
    other
        .sign_in(&caseworker_id(Department::ChildWelfare))
        .await;
    assert_eq!(other.get(&next).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_link_from_an_unknown_site_waits_for_a_click() {
    let panel = start_panel().await;
    let cpr = all_department_citizen();
    let mut agent = Agent::new(&panel);
    agent.sign_in(&caseworker_id(Department::Jobcenter)).await;
    let link = agent
        .get_with(
            &format!("/panel?cpr={cpr}&purpose=prepare-meeting"),
            &[
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-dest", "document"),
            ],
        )
        .await;
    let page = agent.get(link.location()).await;
    assert!(page.body.contains("/bekraeft") && !page.body.contains("data-stream"));
    let early = agent.get(&format!("{}/svar", link.location())).await;
    assert_eq!(events(&early.body), ["afvist"]);
    assert!(
        lookups_of(&panel, cpr).is_empty(),
        "nothing looked up before the click"
    );

    let confirmed = agent
        .post(
            &format!("{}/bekraeft", link.location()),
            &[("_csrf", &page.csrf())],
        )
        .await;
    assert_eq!(confirmed.location(), link.location());
    let stream = agent.get(&format!("{}/svar", link.location())).await;
    assert_eq!(events(&stream.body).last(), Some(&"faerdig"));
    assert_eq!(lookups_of(&panel, cpr).len(), 1);
}

#[tokio::test]
async fn without_a_relation_the_panel_offers_break_the_glass_with_a_written_reason() {
    let panel = start_panel().await;
    // A citizen with cases, none of them in integration.
    let cpr = municipality()
        .citizens
        .iter()
        .map(|c| c.cpr.as_str())
        .find(|c| {
            let d = departments_of(c);
            !d.is_empty() && !d.contains(&Department::Integration)
        })
        .unwrap();
    let mut agent = Agent::new(&panel);
    agent.sign_in(&caseworker_id(Department::Integration)).await;
    let id = agent.open_by_link(cpr).await;
    let page = agent.get(&format!("/panel/opslag/{id}")).await;
    let refused = agent.get(&format!("/panel/opslag/{id}/svar")).await;
    assert_eq!(events(&refused.body), ["afvist"]);
    assert!(
        refused
            .body
            .contains(&format!("/panel/noedadgang?opslag={id}"))
    );

    let form = agent.get(&format!("/panel/noedadgang?opslag={id}")).await;
    assert!(form.body.contains("Borgeren fra dit opslag") && !form.body.contains(cpr));
    let short = agent
        .post(
            "/panel/noedadgang",
            &[
                ("_csrf", &page.csrf()),
                ("opslag", &id),
                ("purpose", "coordinate"),
                ("begrundelse", "akut"),
            ],
        )
        .await;
    assert_eq!(short.status, StatusCode::OK);
    assert!(
        short.body.contains("mindst"),
        "too short a reason is refused"
    );
    let reason = "Borgeren er meldt savnet, og politiet beder om kontaktpersoner nu.";
    let broke = agent
        .post(
            "/panel/noedadgang",
            &[
                ("_csrf", &page.csrf()),
                ("opslag", &id),
                ("purpose", "coordinate"),
                ("begrundelse", reason),
            ],
        )
        .await;
    let marked = agent.get(broke.location()).await;
    assert!(marked.body.contains("Nødadgang.") && marked.body.contains(reason));
    let stream = agent.get(&format!("{}/svar", broke.location())).await;
    assert_eq!(events(&stream.body).last(), Some(&"faerdig"));
    assert!(
        !stream.body.contains("Anmod om adgang"),
        "no requests from a break-the-glass view"
    );
    assert!(
        !stream.body.contains("data-tier=\\\"2\\\"")
            && !stream.body.contains("data-tier=\\\"3\\\"")
    );
    // Breaking the glass shows cases, not the citizen's consents: that page is a refusal.
    let opslag = broke.location().rsplit('/').next().unwrap();
    let consents = agent.get(&format!("/panel/samtykke/{opslag}")).await;
    assert_eq!(consents.status, StatusCode::OK);
    assert!(
        consents.body.contains("Du har ikke adgang til dette.")
            && consents.body.contains("no open case"),
        "{}",
        consents.body
    );
    assert!(!consents.body.contains("registrer-samtykke"));

    let records = panel.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r.break_glass_reason.as_deref() == Some(reason))
    );
}

#[tokio::test]
async fn an_invalid_cpr_typed_into_a_form_is_refused_and_recorded_as_over_grpc() {
    let panel = start_panel().await;
    let mut agent = Agent::new(&panel);
    agent.sign_in(&caseworker_id(Department::Jobcenter)).await;
    let form = agent.get("/panel").await;
    // Neither is anyone's CPR number: no 32nd day, and too short.
    let (no_date, too_short) = ("3213459876", "12345");
    let refused = agent
        .post(
            "/panel/opslag",
            &[
                ("_csrf", &form.csrf()),
                ("cpr", no_date),
                ("purpose", "prepare-meeting"),
            ],
        )
        .await;
    let glass = agent
        .post(
            "/panel/noedadgang",
            &[
                ("_csrf", &form.csrf()),
                ("cpr", too_short),
                ("purpose", "coordinate"),
                (
                    "begrundelse",
                    "Borgeren er meldt savnet, og politiet beder om kontaktpersoner nu.",
                ),
            ],
        )
        .await;
    // The reply is the form again with the message, as before, and without the input.
    for (page, typed) in [(&refused, no_date), (&glass, too_short)] {
        assert_eq!(page.status, StatusCode::OK, "{typed}");
        assert!(
            page.body.contains("Det er ikke et gyldigt CPR-nummer."),
            "{typed}: {}",
            page.body
        );
        assert!(!page.body.contains(typed), "{typed} shown again");
    }
    // One record each, as the gRPC API writes for the same input: invalid, the caseworker and
    // the panel named, no citizen and nothing asked of any source.
    let lookups: Vec<AuditRecord> = panel
        .audit_records()
        .into_iter()
        .filter(|r| r.action == Action::LookupStream)
        .collect();
    assert_eq!(lookups.len(), 2, "{lookups:?}");
    for record in &lookups {
        assert_eq!(
            record.outcome,
            samblik_audit::Outcome::Invalid,
            "{record:?}"
        );
        assert_eq!(record.actor.caller_id, caseworker_id(Department::Jobcenter));
        assert_eq!(record.actor.system.as_deref(), Some(PANEL_SYSTEM));
        assert!(record.cpr.is_none() && record.purpose.is_none() && record.sources.is_empty());
        let detail = record.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("CPR"), "{detail}");
        assert!(
            !detail.contains(no_date) && !detail.contains(too_short),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn an_invalid_purpose_or_reason_in_a_form_is_refused_and_recorded_as_over_grpc() {
    let panel = start_panel().await;
    let mut agent = Agent::new(&panel);
    agent.sign_in(&caseworker_id(Department::Jobcenter)).await;
    let cpr = municipality().citizens[0].cpr.as_str();
    let reason = "Borgeren er meldt savnet, og politiet beder om kontaktpersoner nu.";
    // A deep link is a GET any site can make: refused as before, and never recorded.
    let link = agent
        .get(&format!("/panel?cpr={cpr}&purpose=look-around"))
        .await;
    assert!(link.body.contains("gyldigt formål"), "{}", link.body);
    let lookups = |panel: &RunningPanel| -> Vec<AuditRecord> {
        panel
            .audit_records()
            .into_iter()
            .filter(|r| r.action == Action::LookupStream)
            .collect()
    };
    assert!(lookups(&panel).is_empty());
    // A lookup of the session to break the glass from (opened by link, not yet looked up).
    let from = agent.open_by_link(cpr).await;
    let form = agent.get("/panel").await;
    let csrf = form.csrf();
    /// Where it is posted, what, the page's message, what the record's detail says, and the
    /// purpose recorded.
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: [Case<'_>; 7] = [
        (
            "/panel/opslag",
            vec![("cpr", cpr), ("purpose", "")],
            "Vælg et formål.",
            "purpose is missing",
            None,
        ),
        (
            "/panel/opslag",
            vec![("cpr", cpr), ("purpose", "look-around")],
            "Vælg et formål.",
            "purpose is not a known purpose",
            None,
        ),
        (
            "/panel/noedadgang",
            vec![
                ("cpr", cpr),
                ("purpose", "unspecified"),
                ("begrundelse", reason),
            ],
            "Vælg et formål.",
            "purpose is not a known purpose",
            None,
        ),
        (
            "/panel/noedadgang",
            vec![
                ("cpr", cpr),
                ("purpose", "coordinate"),
                ("begrundelse", "akut"),
            ],
            "Begrundelsen skal være mindst 20 tegn.",
            "at least 20 characters",
            Some("coordinate"),
        ),
        (
            // Blank: over gRPC no break-the-glass at all, but this form asks for nothing else.
            "/panel/noedadgang",
            vec![
                ("cpr", cpr),
                ("purpose", "coordinate"),
                ("begrundelse", "   "),
            ],
            "Begrundelsen skal være mindst 20 tegn.",
            "at least 20 characters",
            Some("coordinate"),
        ),
        (
            "/panel/noedadgang",
            vec![
                ("opslag", &from),
                ("purpose", "follow-up"),
                ("begrundelse", "akut"),
            ],
            "Begrundelsen skal være mindst 20 tegn.",
            "at least 20 characters",
            Some("follow-up"),
        ),
        (
            "/panel/noedadgang",
            vec![
                ("cpr", cpr),
                ("purpose", "coordinate"),
                (
                    "begrundelse",
                    "Borgeren er meldt savnet,\r\nog politiet beder om kontaktpersoner nu.",
                ),
            ],
            "Begrundelsen skal være almindelig tekst på én linje",
            "plain text on one line",
            Some("coordinate"),
        ),
    ];
    for (done, (path, fields, message, detail, purpose)) in cases.iter().enumerate() {
        let mut posted = vec![("_csrf", csrf.as_str())];
        posted.extend(fields.iter().copied());
        let page = agent.post(path, &posted).await;
        // The form again, with the message, as before.
        assert_eq!(page.status, StatusCode::OK, "{fields:?}");
        assert!(page.body.contains(message), "{fields:?}: {}", page.body);
        // One record more, as the gRPC API writes for the same input: invalid, the caseworker
        // and the panel named, the citizen and the purpose as far as validation read them, and
        // nothing asked of any source.
        let records = lookups(&panel);
        let record = records.last().unwrap();
        assert_eq!(records.len(), done + 1, "{fields:?}: {records:?}");
        assert_eq!(
            record.outcome,
            samblik_audit::Outcome::Invalid,
            "{record:?}"
        );
        assert_eq!(record.actor.caller_id, caseworker_id(Department::Jobcenter));
        assert_eq!(record.actor.system.as_deref(), Some(PANEL_SYSTEM));
        assert_eq!(
            record.cpr.as_ref().map(samblik_proto::Cpr::as_str),
            Some(cpr)
        );
        assert_eq!(record.purpose.as_deref(), *purpose, "{record:?}");
        assert!(record.sources.is_empty() && record.break_glass_reason.is_none());
        let recorded = record.detail.as_deref().unwrap_or_default();
        assert!(recorded.contains(detail), "{fields:?}: {recorded}");
        assert!(!recorded.contains("savnet") && !recorded.contains(cpr));
    }
}

#[tokio::test]
async fn a_break_the_glass_reason_too_long_for_a_request_is_refused_at_the_form_and_recorded() {
    let panel = start_panel().await;
    let mut agent = Agent::new(&panel);
    agent.sign_in(&caseworker_id(Department::Jobcenter)).await;
    let cpr = municipality().citizens[0].cpr.as_str();
    let from = agent.open_by_link(cpr).await;
    let csrf = agent.get("/panel").await.csrf();
    let sentence = "Borgeren er meldt savnet, og politiet beder om kontaktpersoner nu. ";
    // More than the 4 KiB a lookup request may be.
    let long = sentence.repeat(80);
    let lookups = |panel: &RunningPanel| -> Vec<AuditRecord> {
        panel
            .audit_records()
            .into_iter()
            .filter(|r| r.action == Action::LookupStream)
            .collect()
    };
    for (done, citizen) in [("cpr", cpr), ("opslag", from.as_str())].iter().enumerate() {
        let page = agent
            .post(
                "/panel/noedadgang",
                &[
                    ("_csrf", &csrf),
                    *citizen,
                    ("purpose", "coordinate"),
                    ("begrundelse", &long),
                ],
            )
            .await;
        // The form again, with what to fix, not an answer page that will be refused.
        assert_eq!(
            page.status,
            StatusCode::OK,
            "{citizen:?}: {}",
            page.location()
        );
        assert!(
            page.body.contains("Begrundelsen er for lang."),
            "{citizen:?}: {}",
            page.body
        );
        // Recorded as the gRPC API records a request too large: invalid, before validation
        // read the citizen, and without the reason.
        let records = lookups(&panel);
        assert_eq!(records.len(), done + 1, "{citizen:?}: {records:?}");
        let record = records.last().unwrap();
        assert_eq!(record.outcome, samblik_audit::Outcome::Invalid);
        assert_eq!(record.actor.caller_id, caseworker_id(Department::Jobcenter));
        assert_eq!(record.actor.system.as_deref(), Some(PANEL_SYSTEM));
        assert_eq!(
            (
                record.cpr.as_ref().map(samblik_proto::Cpr::as_str),
                record.purpose.as_deref()
            ),
            (None, None)
        );
        assert!(record.sources.is_empty() && record.break_glass_reason.is_none());
        let recorded = record.detail.as_deref().unwrap_or_default();
        assert!(
            recorded.contains("request is larger than 4096 bytes"),
            "{recorded}"
        );
        assert!(!recorded.contains("savnet") && !recorded.contains(cpr));
    }
    // A long reason that fits goes on to the answer page.
    let page = agent
        .post(
            "/panel/noedadgang",
            &[
                ("_csrf", &csrf),
                ("cpr", cpr),
                ("purpose", "coordinate"),
                ("begrundelse", &sentence.repeat(10)),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(page.location().starts_with("/panel/opslag/"));
}

#[tokio::test]
async fn the_auditor_exports_csv_and_a_caseworker_cannot_search_the_log() {
    let panel = start_panel().await;
    let cpr = all_department_citizen();
    let mut worker = Agent::new(&panel);
    worker.sign_in(&caseworker_id(Department::Jobcenter)).await;
    let lookup = worker
        .get(&format!("/panel?cpr={cpr}&purpose=prepare-meeting"))
        .await;
    worker.get(&format!("{}/svar", lookup.location())).await;
    let page = worker.get("/panel").await;
    let refused = worker
        .post("/revision/soeg", &[("_csrf", &page.csrf()), ("cpr", cpr)])
        .await;
    assert!(
        refused.body.contains("Du har ikke adgang"),
        "{}",
        refused.body
    );

    let mut auditor = Agent::new(&panel);
    assert_eq!(auditor.sign_in(AUDITOR).await, "/");
    assert_eq!(auditor.get("/").await.location(), "/revision");
    let search = auditor.get("/revision").await;
    let found = auditor
        .post("/revision/soeg", &[("_csrf", &search.csrf()), ("cpr", cpr)])
        .await;
    assert!(found.body.contains("data-action=\"lookup-stream\""));
    let csv = auditor
        .post(
            "/revision/eksport",
            &[("_csrf", &search.csrf()), ("cpr", cpr)],
        )
        .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(
        csv.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        csv.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert!(csv.body.lines().count() > 3, "{}", csv.body);
    assert!(csv.body.contains("lookup-stream"));
}

/// A token endpoint that trades one code, once, for `token` — if the PKCE verifier matches
/// the challenge the authorisation request carried.
async fn token_endpoint(
    pki: &TestPki,
    challenge: Arc<Mutex<String>>,
    token: String,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let used = Arc::new(Mutex::new(false));
    serve_https(
        pki,
        Arc::new(move |request: HttpsRequest| {
            let form: std::collections::HashMap<String, String> =
                form_urlencoded::parse(&request.body).into_owned().collect();
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()),
            );
            let mut used = used.lock().unwrap();
            let ok = request.path == "/token"
                && form.get("grant_type").map(String::as_str) == Some("authorization_code")
                && form.get("code").map(String::as_str) == Some("code-1")
                && form.get("client_id").map(String::as_str) == Some("samblik-panel")
                && computed == *challenge.lock().unwrap()
                && !*used;
            if !ok {
                return (StatusCode::BAD_REQUEST, br#"{"error":"invalid_grant"}"#.to_vec());
            }
            *used = true;
            let body = serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 600});
            (StatusCode::OK, body.to_string().into_bytes())
        }),
    )
    .await
}

#[tokio::test]
async fn sign_in_through_the_identity_provider_checks_state_and_pkce_and_uses_a_code_once() {
    let panel = start_panel().await;
    let pki = TestPki::new();
    let challenge = Arc::new(Mutex::new(String::new()));
    let (addr, _stop) =
        token_endpoint(&pki, Arc::clone(&challenge), token(Department::Jobcenter)).await;
    let mut config = panel.config.panel.clone().unwrap();
    config.oidc = Some(samblik_gateway::config::OidcConfig {
        authorization_endpoint: "https://idp.sonderaa.example/authorize".into(),
        token_endpoint: format!("https://127.0.0.1:{}/token", addr.port()),
        client_id: "samblik-panel".into(),
        client_secret_env: None,
        scopes: vec!["openid".into()],
        ca_file: Some(pki.ca_file.clone()),
        timeout_ms: 5_000,
    });
    let client = samblik_panel::OidcClient::from_config(config.oidc.as_ref().unwrap()).unwrap();
    let oidc_panel = samblik_panel::Panel::new(
        Arc::clone(&panel.pipeline),
        config,
        samblik_panel::SignIn::Oidc(Box::new(client)),
    )
    .unwrap();
    let mut agent = Agent {
        router: Arc::new(oidc_panel).router(),
        origin: panel.url.clone(),
        cookie: None,
    };

    let sign_in_page = agent.get("/log-ind").await;
    assert!(
        sign_in_page.body.contains("/log-ind/oidc") && !sign_in_page.body.contains("data-user")
    );
    let redirect = agent.get("/log-ind/oidc").await;
    let url = redirect.location().to_owned();
    assert!(
        url.starts_with("https://idp.sonderaa.example/authorize?"),
        "{url}"
    );
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(url.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(
        query["redirect_uri"],
        format!("{}/log-ind/retur", panel.url)
    );
    *challenge.lock().unwrap() = query["code_challenge"].clone();

    // An answer with another state is refused; the code is not even tried.
    let forged = agent.get("/log-ind/retur?code=code-1&state=forged").await;
    assert_eq!(forged.location(), "/log-ind");
    assert_eq!(agent.get("/panel").await.location(), "/log-ind");

    // The real answer: the code is traded (with the PKCE verifier) for an access token.
    let redirect = agent.get("/log-ind/oidc").await;
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(redirect.location().split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    *challenge.lock().unwrap() = query["code_challenge"].clone();
    let back = agent
        .get(&format!(
            "/log-ind/retur?code=code-1&state={}",
            query["state"]
        ))
        .await;
    assert_eq!(back.location(), "/", "{}", back.body);
    let home = agent.get("/panel").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.body.contains(&caseworker(Department::Jobcenter).name));

    // The same code a second time (another browser) gets nowhere.
    let mut replay = Agent {
        router: agent.router.clone(),
        origin: panel.url.clone(),
        cookie: None,
    };
    let redirect = replay.get("/log-ind/oidc").await;
    let query: std::collections::HashMap<String, String> =
        form_urlencoded::parse(redirect.location().split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    let again = replay
        .get(&format!(
            "/log-ind/retur?code=code-1&state={}",
            query["state"]
        ))
        .await;
    assert_eq!(again.location(), "/log-ind");
    assert_eq!(replay.get("/panel").await.location(), "/log-ind");
}

/// Identity text in a token is the issuer's, but still the outside world's. Control and
/// text-direction characters and oversized claims are refused before anything is recorded under
/// them; quotes, markup, commas and letters beyond ASCII are kept exactly, the log verifies, and
/// the auditor's pages show them escaped and the CSV export gives them back exactly.
#[tokio::test]
async fn untrusted_text_in_tokens_is_refused_or_kept_exactly_and_shown_escaped() {
    use samblik_gateway::context::Credentials;
    use samblik_proto::v1::{LookupRequest, Purpose};
    let panel = start_panel().await;
    let cpr = all_department_citizen();
    let worker = caseworker(Department::Jobcenter);
    let code = &municipality().municipality.code;
    let token_of = |name: &str, sub: &str| {
        let mut claims = samblik::demo::caseworker_claims(worker, code);
        claims.name = name.to_owned();
        claims.sub = sub.to_owned();
        issuer()
            .1
            .mint(&claims, std::time::Duration::from_secs(600))
            .unwrap()
    };
    let message = LookupRequest {
        cpr: cpr.to_owned(),
        purpose: Purpose::PrepareMeeting as i32,
        ..LookupRequest::default()
    };
    let lookup = async |token: String, id: &str| {
        let request = authed(message.clone(), &token);
        panel
            .pipeline
            .lookup(id.to_owned(), &Credentials::of(&request), &message, None)
            .await
    };

    let long = "x".repeat(4096);
    let hostile = [
        "Ane\nforged line",
        "Ane\r\n",
        "\u{1b}[2J\u{1b}[31mAne",
        "Ane\u{202E}nerroJ",
        long.as_str(),
    ];
    for (i, text) in hostile.iter().enumerate() {
        for (name, sub) in [(*text, worker.id.as_str()), (worker.name.as_str(), *text)] {
            let refused = lookup(token_of(name, sub), &format!("hostile-{i}"))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{text:?}");
        }
    }
    for r in panel.audit_records() {
        for text in hostile {
            assert!(
                !r.actor.name.contains(text) && !r.actor.caller_id.contains(text),
                "nothing is recorded under a refused identity: {r:?}"
            );
        }
    }

    let odd_name = r#"Ane "Lis" O'Hara <script>alert(1)</script> & Æblø, =1+1"#;
    let odd_sub = r#"cw-"odd",1;<i>"#;
    lookup(token_of(odd_name, odd_sub), "odd-1").await.unwrap();
    let records = panel.audit_records();
    let odd = records
        .iter()
        .find(|r| r.request_id == "odd-1")
        .expect("the lookup is recorded");
    assert_eq!(
        (odd.actor.name.as_str(), odd.actor.caller_id.as_str()),
        (odd_name, odd_sub)
    );

    // `samblik audit verify`'s check.
    let db = panel.audit_dir.path().join(samblik::demo::AUDIT_DB_FILE);
    let key = samblik_audit::checkpoint::load_verifying_key(
        &samblik_audit::checkpoint::public_key_path(&panel.config.audit.signing_key_file),
    )
    .unwrap();
    let mut store =
        samblik_audit::sqlite::SqliteStore::open_read_only(&db, demo_data_keys(&db)).unwrap();
    samblik_audit::verify::verify_store(&mut store, &key).unwrap();

    let mut auditor = Agent::new(&panel);
    auditor.sign_in(AUDITOR).await;
    let search = auditor.get("/revision").await;
    let found = auditor
        .post("/revision/soeg", &[("_csrf", &search.csrf()), ("cpr", cpr)])
        .await;
    assert!(
        found.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        found.body
    );
    assert!(!found.body.contains("<script>alert(1)"));
    assert!(!found.body.contains("<i>"));
    let csv = auditor
        .post(
            "/revision/eksport",
            &[("_csrf", &search.csrf()), ("cpr", cpr)],
        )
        .await;
    let mut rows = csv::Reader::from_reader(csv.body.as_bytes());
    let exact = rows
        .records()
        .map(Result::unwrap)
        .any(|row| row.iter().any(|f| f == odd_name) && row.iter().any(|f| f == odd_sub));
    assert!(exact, "the export gives the name and id back exactly");
}
