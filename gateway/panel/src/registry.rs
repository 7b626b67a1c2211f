//! Access requests (file one from a withheld case; the owning department's inbox to approve or
//! deny) and the citizen's consents (record, withdraw) — through the gateway's own
//! `AccessRequestService` and `ConsentService`, so every change is validated and audited there.

use super::pages::{
    self, Frame, PanelRef, authorised, csrf_field, notice, purpose_label, tier_label,
};
use super::pages::{Signed, SignedForm};
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{NaiveDate, TimeZone};
use maud::html;
use samblik_gateway::registry_api::RegistryApi;
use samblik_proto::v1::access_request_service_server::AccessRequestService;
use samblik_proto::v1::consent_service_server::ConsentService;
use samblik_proto::v1::{
    self as pb, DecideAccessRequest, FileAccessRequest, ListAccessRequests, ListConsentsRequest,
    Purpose, RecordConsentRequest, RequestState, RequestView, WithdrawConsentRequest,
};
use std::sync::Arc;

pub(super) fn routes() -> Router<PanelRef> {
    Router::new()
        .route("/panel/anmodning", post(file_request))
        .route("/panel/anmodninger", get(requests_page))
        .route("/panel/anmodninger/{id}", post(decide))
        .route(
            "/panel/samtykke/{opslag}",
            get(consents_page).post(record_consent),
        )
        .route(
            "/panel/samtykke/{opslag}/tilbagekald",
            post(withdraw_consent),
        )
}

fn api(panel: &PanelRef) -> RegistryApi {
    RegistryApi::new(Arc::clone(&panel.pipeline))
}

/// The end of a day in Copenhagen as a protobuf time (a grant "until 31.12." includes that day).
fn end_of_day(text: &str) -> Option<prost_types::Timestamp> {
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let local = chrono_tz::Europe::Copenhagen
        .from_local_datetime(&day.and_hms_opt(23, 59, 59)?)
        .earliest()?;
    Some(samblik_gateway::registry_api::timestamp(
        local.with_timezone(&chrono::Utc),
    ))
}

fn start_of_day(text: &str) -> Option<prost_types::Timestamp> {
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let local = chrono_tz::Europe::Copenhagen
        .from_local_datetime(&day.and_hms_opt(0, 0, 0)?)
        .earliest()?;
    Some(samblik_gateway::registry_api::timestamp(
        local.with_timezone(&chrono::Utc),
    ))
}

/// A form about a lookup this session no longer remembers.
fn lookup_gone(frame: &Frame<'_>, title: &str) -> Response {
    pages::refused_page(
        frame,
        title,
        &tonic::Status::not_found(
            "the lookup is no longer in your session; look the citizen up again",
        ),
    )
}

async fn file_request(
    State(panel): State<PanelRef>,
    SignedForm {
        signed: Signed {
            current,
            user,
            csrf,
        },
        form,
    }: SignedForm,
) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    let Some(lookup) = current.lock().lookup(form.get("opslag")).cloned() else {
        return lookup_gone(&frame, "Anmodningen blev ikke sendt");
    };
    let message = FileAccessRequest {
        cpr: lookup.cpr.as_str().to_owned(),
        source_id: form.get("source").to_owned(),
        case_id: form.get("case").to_owned(),
        tier_wanted: form.get("tier").parse().unwrap_or(0),
        purpose: lookup.purpose as i32,
        justification: form.get("begrundelse").trim().to_owned(),
    };
    match api(&panel).file_request(authorised(message, &user)).await {
        Ok(filed) => {
            let filed = filed.into_inner();
            current.lock().notice = Some(format!(
                "Anmodningen om {} i sag {} er sendt til {}. Du kan se svaret her.",
                tier_label(filed.tier_wanted).to_lowercase(),
                filed.case_id,
                filed.owner_department
            ));
            Redirect::to("/panel/anmodninger").into_response()
        }
        Err(status) => pages::refused_page(&frame, "Anmodningen blev ikke sendt", &status),
    }
}

fn state_label(state: i32) -> &'static str {
    match RequestState::try_from(state) {
        Ok(RequestState::Pending) => "Afventer",
        Ok(RequestState::Approved) => "Godkendt",
        Ok(RequestState::Denied) => "Afvist",
        _ => "Ukendt",
    }
}

async fn requests_page(
    State(panel): State<PanelRef>,
    Signed {
        current,
        user,
        csrf,
    }: Signed,
) -> Response {
    let message = current.lock().notice.take();
    let frame = Frame::new(&panel, &user, &csrf);
    let list = |view: RequestView| {
        let request = authorised(
            ListAccessRequests {
                view: view as i32,
                state: RequestState::Unspecified as i32,
            },
            &user,
        );
        let api = api(&panel);
        async move {
            api.list_requests(request)
                .await
                .map(|r| r.into_inner().requests)
        }
    };
    let inbox = match list(RequestView::Inbox).await {
        Ok(r) => r,
        Err(status) => return pages::refused_page(&frame, "Anmodninger", &status),
    };
    let mine = match list(RequestView::Mine).await {
        Ok(r) => r,
        Err(status) => return pages::refused_page(&frame, "Anmodninger", &status),
    };
    let default_until = (chrono::Local::now().date_naive() + chrono::Days::new(30))
        .format("%Y-%m-%d")
        .to_string();
    let pending = |r: &&pb::AccessRequest| r.state == RequestState::Pending as i32;
    frame.page(
        "Anmodninger",
        html! {
            h1 { "Anmodninger om adgang" }
            @if let Some(m) = &message { (notice("ok", m)) }
            section aria-labelledby="indbakke" {
                h2 id="indbakke" { "Til din forvaltning" }
                p { "Kolleger i andre forvaltninger beder om at se mere af jeres sager. Vurdér, om det er nødvendigt for deres arbejde med borgeren." }
                @if inbox.iter().filter(pending).count() == 0 { p.tom { "Ingen anmodninger venter." } }
                @for r in inbox.iter().filter(pending) {
                    article.anmodning data-request=(r.request_id) {
                        h3 { (r.requester_name) ", " (r.requester_department) " beder om " (tier_label(r.tier_wanted).to_lowercase()) }
                        dl.fakta {
                            dt { "Borger" } dd.cpr { (r.cpr) }
                            dt { "Sag" } dd { (r.case_id) " (" (r.source_id) ")" }
                            dt { "Formål" } dd { (purpose_label(Purpose::try_from(r.purpose).unwrap_or(Purpose::Unspecified))) }
                            dt { "Begrundelse" } dd { (r.justification) }
                            dt { "Sendt" } dd { (pages::time(r.filed_at.as_ref())) }
                        }
                        form.afgoer method="post" action=(format!("/panel/anmodninger/{}", r.request_id)) {
                            (csrf_field(&csrf))
                            fieldset {
                                legend { "Din vurdering" }
                                label for=(format!("niveau-{}", r.request_id)) { "Niveau" }
                                select id=(format!("niveau-{}", r.request_id)) name="tier" {
                                    @for t in 1..=3 {
                                        option value=(t) selected[t == r.tier_wanted] { (t) ": " (tier_label(t)) }
                                    }
                                }
                                label for=(format!("til-{}", r.request_id)) { "Gælder til og med" }
                                input id=(format!("til-{}", r.request_id)) type="date" name="until" value=(default_until);
                                label for=(format!("grund-{}", r.request_id)) { "Begrundelse (skal udfyldes ved afvisning)" }
                                textarea id=(format!("grund-{}", r.request_id)) name="reason" rows="2" {}
                                div.knapper {
                                    button type="submit" name="beslutning" value="godkend" { "Godkend" }
                                    button.sekundaer type="submit" name="beslutning" value="afvis" { "Afvis" }
                                }
                            }
                        }
                    }
                }
                @let decided: Vec<_> = inbox.iter().filter(|r| !pending(r)).take(20).collect();
                @if !decided.is_empty() {
                    h3 { "Afgjort" }
                    (request_table(&decided))
                }
            }
            section aria-labelledby="mine" {
                h2 id="mine" { "Dine anmodninger" }
                @if mine.is_empty() { p.tom { "Du har ikke sendt nogen anmodninger." } }
                @else { (request_table(&mine.iter().collect::<Vec<_>>())) }
            }
        },
    )
}

fn request_table(requests: &[&pb::AccessRequest]) -> maud::Markup {
    html! {
        table.liste {
            thead { tr { th { "Sag" } th { "Fra" } th { "Ønsket" } th { "Status" } th { "Afgjort af" } th { "Gælder til" } th { "Begrundelse" } } }
            tbody {
                @for r in requests {
                    tr data-request=(r.request_id) data-state=(state_label(r.state)) {
                        td { (r.case_id) " (" (r.source_id) ")" }
                        td { (r.requester_name) }
                        td { (tier_label(r.tier_wanted)) }
                        td.state { (state_label(r.state))
                            @if r.state == RequestState::Approved as i32 { ": " (tier_label(r.granted_tier)) } }
                        td { (r.decided_by) }
                        td { (pages::time(r.granted_until.as_ref())) }
                        td { (r.decision_reason) }
                    }
                }
            }
        }
    }
}

async fn decide(
    State(panel): State<PanelRef>,
    Path(id): Path<String>,
    SignedForm {
        signed: Signed {
            current,
            user,
            csrf,
        },
        form,
    }: SignedForm,
) -> Response {
    let approve = form.get("beslutning") == "godkend";
    let message = DecideAccessRequest {
        request_id: id,
        approve,
        tier: if approve {
            form.get("tier").parse().unwrap_or(0)
        } else {
            0
        },
        until: if approve {
            end_of_day(form.get("until"))
        } else {
            None
        },
        reason: form.get("reason").trim().to_owned(),
    };
    match api(&panel).decide_request(authorised(message, &user)).await {
        Ok(decided) => {
            let decided = decided.into_inner();
            current.lock().notice = Some(format!(
                "Anmodningen fra {} er {}.",
                decided.requester_name,
                state_label(decided.state).to_lowercase()
            ));
            Redirect::to("/panel/anmodninger").into_response()
        }
        Err(status) => pages::refused_page(
            &Frame::new(&panel, &user, &csrf),
            "Afgørelsen blev ikke gemt",
            &status,
        ),
    }
}

/// The departments a consent can name: the owners of the configured sources, with their names.
fn departments(panel: &PanelRef) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (source, name) in panel.pipeline.sources() {
        let id = panel.pipeline.policy().owner_of(source).unwrap_or(source);
        if !out.iter().any(|(d, _)| d == id) {
            out.push((id.to_owned(), name.to_owned()));
        }
    }
    out
}

async fn consents_page(
    State(panel): State<PanelRef>,
    Path(opslag): Path<String>,
    Signed {
        current,
        user,
        csrf,
    }: Signed,
) -> Response {
    let (lookup, message) = {
        let mut session = current.lock();
        (session.lookup(&opslag).cloned(), session.notice.take())
    };
    let frame = Frame::new(&panel, &user, &csrf);
    let Some(lookup) = lookup else {
        return lookup_gone(&frame, "Samtykker");
    };
    let request = authorised(
        ListConsentsRequest {
            cpr: lookup.cpr.as_str().to_owned(),
        },
        &user,
    );
    let consents = match api(&panel).list_consents(request).await {
        Ok(r) => r.into_inner().consents,
        Err(status) => return pages::refused_page(&frame, "Samtykker", &status),
    };
    let departments = departments(&panel);
    let name_of = |id: &str| {
        departments
            .iter()
            .find(|(d, _)| d == id)
            .map_or(id.to_owned(), |(_, n)| n.clone())
    };
    let today = chrono::Local::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    frame.page(
        "Samtykker",
        html! {
            h1 { "Borgerens samtykker" }
            p { "CPR-nummer " span.cpr { (lookup.cpr.as_str()) } ". " a href=(format!("/panel/opslag/{opslag}")) { "Tilbage til opslaget" } }
            @if let Some(m) = &message { (notice("ok", m)) }
            @if consents.is_empty() { p.tom { "Der er ikke registreret samtykker for borgeren." } }
            @else {
                table.liste id="samtykker" {
                    thead { tr { th { "Art" } th { "Fra" } th { "Til" } th { "Højst" } th { "Formål" } th { "Gyldig" } th { "Erklæring" } th { "Status" } th {} } }
                    tbody {
                        @for record in &consents {
                            @let c = record.consent.clone().unwrap_or_default();
                            tr data-consent=(c.consent_id) data-active=(record.active) {
                                td { (if c.kind == pb::ConsentKind::Refuse as i32 { "Frabedt" } else { "Samtykke" }) }
                                td { (c.from_departments.iter().map(|d| name_of(d)).collect::<Vec<_>>().join(", ")) }
                                td { @if c.to_any_department_with_case { "Alle forvaltninger med en sag" } @else { (c.to_departments.iter().map(|d| name_of(d)).collect::<Vec<_>>().join(", ")) } }
                                td { @if c.kind == pb::ConsentKind::Permit as i32 { (tier_label(c.max_tier)) } }
                                td { (c.purposes.iter().map(|p| purpose_label(Purpose::try_from(*p).unwrap_or(Purpose::Unspecified))).collect::<Vec<_>>().join(", ")) }
                                td { (pages::time(c.valid_from.as_ref())) " – " (pages::time(c.valid_until.as_ref())) }
                                td { (c.document_ref) }
                                td.state { @if record.active { "Gælder" } @else if record.withdrawn_at.is_some() { "Tilbagekaldt " (pages::time(record.withdrawn_at.as_ref())) } @else { "Gælder ikke nu" } }
                                td {
                                    @if record.withdrawn_at.is_none() {
                                        form method="post" action=(format!("/panel/samtykke/{opslag}/tilbagekald")) {
                                            (csrf_field(&csrf))
                                            input type="hidden" name="consent" value=(c.consent_id);
                                            button.sekundaer type="submit" { "Tilbagekald" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Registrér samtykke" }
            form.samtykke method="post" action=(format!("/panel/samtykke/{opslag}")) {
                (csrf_field(&csrf))
                fieldset {
                    legend { "Art" }
                    label.valg { input type="radio" name="kind" value="permit" checked; " Borgeren giver samtykke til deling" }
                    label.valg { input type="radio" name="kind" value="refuse"; " Borgeren frabeder sig deling (går forud for samtykker)" }
                }
                fieldset {
                    legend { "Oplysninger fra" }
                    @for (id, name) in &departments {
                        label.valg { input type="checkbox" name="from" value=(id); " " (name) }
                    }
                }
                fieldset {
                    legend { "Må deles med" }
                    label.valg { input type="checkbox" name="to_any" value="1"; " Alle forvaltninger, hvor borgeren har en sag" }
                    @for (id, name) in &departments {
                        label.valg { input type="checkbox" name="to" value=(id); " " (name) }
                    }
                }
                label for="max_tier" { "Højst" }
                select id="max_tier" name="max_tier" {
                    @for t in 1..=3 { option value=(t) selected[t == 2] { (t) ": " (tier_label(t)) } }
                }
                fieldset {
                    legend { "Formål" }
                    @for p in pages::PURPOSES {
                        label.valg { input type="checkbox" name="purpose" value=(p.code()) checked; " " (purpose_label(p)) }
                    }
                }
                label for="valid_from" { "Gælder fra" }
                input id="valid_from" type="date" name="valid_from" value=(today) required;
                label for="valid_until" { "Gælder til og med (tom: indtil tilbagekaldelse)" }
                input id="valid_until" type="date" name="valid_until";
                label for="document_ref" { "Reference til den underskrevne erklæring" }
                input id="document_ref" type="text" name="document_ref" required placeholder="fx journalnummer";
                button type="submit" id="registrer-samtykke" { "Registrér" }
            }
        },
    )
}

async fn record_consent(
    State(panel): State<PanelRef>,
    Path(opslag): Path<String>,
    SignedForm {
        signed: Signed {
            current,
            user,
            csrf,
        },
        form,
    }: SignedForm,
) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    let Some(lookup) = current.lock().lookup(&opslag).cloned() else {
        return lookup_gone(&frame, "Samtykket blev ikke registreret");
    };
    let permit = form.get("kind") != "refuse";
    let consent = pb::Consent {
        consent_id: String::new(),
        kind: if permit {
            pb::ConsentKind::Permit
        } else {
            pb::ConsentKind::Refuse
        } as i32,
        from_departments: form.all("from").map(str::to_owned).collect(),
        to_departments: form.all("to").map(str::to_owned).collect(),
        to_any_department_with_case: form.get("to_any") == "1",
        max_tier: if permit {
            form.get("max_tier").parse().unwrap_or(0)
        } else {
            0
        },
        purposes: form
            .all("purpose")
            .filter_map(Purpose::from_code)
            .map(|p| p as i32)
            .collect(),
        valid_from: start_of_day(form.get("valid_from")),
        valid_until: Some(form.get("valid_until"))
            .filter(|s| !s.is_empty())
            .and_then(end_of_day),
        document_ref: form.get("document_ref").trim().to_owned(),
    };
    let request = authorised(
        RecordConsentRequest {
            cpr: lookup.cpr.as_str().to_owned(),
            consent: Some(consent),
        },
        &user,
    );
    match api(&panel).record_consent(request).await {
        Ok(_) => {
            current.lock().notice =
                Some("Samtykket er registreret og gælder fra næste opslag.".into());
            Redirect::to(&format!("/panel/samtykke/{opslag}")).into_response()
        }
        Err(status) => pages::refused_page(&frame, "Samtykket blev ikke registreret", &status),
    }
}

async fn withdraw_consent(
    State(panel): State<PanelRef>,
    Path(opslag): Path<String>,
    SignedForm {
        signed: Signed {
            current,
            user,
            csrf,
        },
        form,
    }: SignedForm,
) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    let Some(lookup) = current.lock().lookup(&opslag).cloned() else {
        return lookup_gone(&frame, "Samtykket blev ikke tilbagekaldt");
    };
    let request = authorised(
        WithdrawConsentRequest {
            cpr: lookup.cpr.as_str().to_owned(),
            consent_id: form.get("consent").to_owned(),
        },
        &user,
    );
    match api(&panel).withdraw_consent(request).await {
        Ok(_) => {
            current.lock().notice =
                Some("Samtykket er tilbagekaldt. Det gælder ikke længere — heller ikke for næste opslag.".into());
            Redirect::to(&format!("/panel/samtykke/{opslag}")).into_response()
        }
        Err(status) => pages::refused_page(&frame, "Samtykket blev ikke tilbagekaldt", &status),
    }
}
