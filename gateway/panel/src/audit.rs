//! The auditors' pages: search the access log (citizen, caller, department, period, flags) with
//! each record's full detail, the review queue with its audited "reviewed" action, chain
//! verification and CSV export — all through the gateway's own `AuditService`, so the pages'
//! reads are audited like any auditor's.
//!
//! A search names a citizen by CPR, so it is a POST (the CPR never enters a URL); its paging
//! token and filter travel in the next page's form.

use super::pages::{
    self, Form, Frame, PanelRef, authorised, csrf_field, notice, purpose_code_label, tier_label,
};
use super::pages::{Signed, SignedForm};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{NaiveDate, TimeZone};
use futures::StreamExt;
use maud::{Markup, html};
use samblik_gateway::audit_api::AuditApi;
use samblik_proto::v1::audit_service_server::AuditService;
use samblik_proto::v1::{
    AuditEntry, AuditFilter, ExportAuditRequest, ExportFormat, MarkReviewedRequest,
    ReviewQueueRequest, SearchAuditRequest, VerifyAuditRequest,
};
use std::sync::Arc;

const AUDITOR: &[&str] = &["auditor"];
const PAGE_SIZE: u32 = 50;

pub(super) fn routes() -> Router<PanelRef> {
    Router::new()
        .route("/revision", get(search_form))
        .route("/revision/soeg", post(search))
        .route("/revision/eksport", post(export))
        .route("/revision/verificer", post(verify))
        .route("/revision/gennemsyn", get(review_queue).post(mark_reviewed))
}

fn api(panel: &PanelRef) -> AuditApi {
    AuditApi::new(Arc::clone(&panel.pipeline))
}

/// The filter fields, as typed (kept to fill the form again). Its `Debug` leaves out the CPR.
#[derive(Default, Clone)]
struct Fields {
    cpr: String,
    caller: String,
    department: String,
    from: String,
    until: String,
    break_glass: bool,
    denied: bool,
    flagged: bool,
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fields")
            .field("caller", &self.caller)
            .field("department", &self.department)
            .field("from", &self.from)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl Fields {
    fn from_form(form: &Form) -> Self {
        Fields {
            cpr: form.get("cpr").trim().to_owned(),
            caller: form.get("caller").trim().to_owned(),
            department: form.get("department").trim().to_owned(),
            from: form.get("from").to_owned(),
            until: form.get("until").to_owned(),
            break_glass: form.get("break_glass") == "1",
            denied: form.get("denied") == "1",
            flagged: form.get("flagged") == "1",
        }
    }

    fn filter(&self) -> AuditFilter {
        let day = |text: &str, days_after: u64| {
            let d =
                NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()? + chrono::Days::new(days_after);
            let t = chrono_tz::Europe::Copenhagen
                .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
                .earliest()?;
            Some(samblik_gateway::registry_api::timestamp(
                t.with_timezone(&chrono::Utc),
            ))
        };
        AuditFilter {
            cpr: self.cpr.replace('-', ""),
            caller_id: self.caller.clone(),
            department: self.department.clone(),
            from: day(&self.from, 0),
            // "until 22.11." includes that day.
            until: day(&self.until, 1),
            break_glass: self.break_glass,
            denied: self.denied,
            flagged: self.flagged,
        }
    }

    /// The fields as hidden inputs (next page, export).
    fn hidden(&self) -> Markup {
        html! {
            input type="hidden" name="cpr" value=(self.cpr);
            input type="hidden" name="caller" value=(self.caller);
            input type="hidden" name="department" value=(self.department);
            input type="hidden" name="from" value=(self.from);
            input type="hidden" name="until" value=(self.until);
            @if self.break_glass { input type="hidden" name="break_glass" value="1"; }
            @if self.denied { input type="hidden" name="denied" value="1"; }
            @if self.flagged { input type="hidden" name="flagged" value="1"; }
        }
    }
}

fn filter_form(csrf: &str, f: &Fields) -> Markup {
    html! {
        form.soeg method="post" action="/revision/soeg" {
            (csrf_field(csrf))
            div.felter {
                div { label for="cpr" { "Borger (CPR-nummer)" } input id="cpr" name="cpr" type="text" inputmode="numeric" autocomplete="off" value=(f.cpr); }
                div { label for="caller" { "Medarbejder (bruger-id)" } input id="caller" name="caller" type="text" value=(f.caller); }
                div { label for="department" { "Forvaltning" } input id="department" name="department" type="text" value=(f.department); }
                div { label for="from" { "Fra og med" } input id="from" name="from" type="date" value=(f.from); }
                div { label for="until" { "Til og med" } input id="until" name="until" type="date" value=(f.until); }
            }
            fieldset {
                legend { "Kun" }
                label.valg { input type="checkbox" name="break_glass" value="1" checked[f.break_glass]; " nødadgang" }
                label.valg { input type="checkbox" name="denied" value="1" checked[f.denied]; " afviste" }
                label.valg { input type="checkbox" name="flagged" value="1" checked[f.flagged]; " markerede til gennemsyn" }
            }
            button type="submit" id="soeg" { "Søg" }
        }
    }
}

async fn search_form(State(panel): State<PanelRef>, Signed { user, csrf, .. }: Signed) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    if !pages::has_role(&user.caller, AUDITOR) {
        return pages::forbidden(&frame);
    }
    frame.page(
        "Søg i loggen",
        html! {
            h1 { "Søg i adgangsloggen" }
            p.lede { "Hvem har set hvad om hvem, hvornår og med hvilket grundlag. Dine søgninger logges også." }
            (filter_form(&csrf, &Fields::default()))
            (verify_form(&csrf))
        },
    )
}

fn verify_form(csrf: &str) -> Markup {
    html! {
        section.verificer aria-labelledby="kaede" {
            h2 id="kaede" { "Loggens kæde" }
            p { "Kontrollér, at ingen post er ændret, slettet eller byttet om, og at de signerede kontrolpunkter passer." }
            form method="post" action="/revision/verificer" {
                (csrf_field(csrf))
                button.sekundaer type="submit" id="verificer" { "Kontrollér kæden nu" }
            }
        }
    }
}

async fn search(
    State(panel): State<PanelRef>,
    SignedForm {
        signed: Signed { user, csrf, .. },
        form,
    }: SignedForm,
) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    let fields = Fields::from_form(&form);
    let request = authorised(
        SearchAuditRequest {
            filter: Some(fields.filter()),
            page_size: PAGE_SIZE,
            page_token: form.get("page_token").to_owned(),
        },
        &user,
    );
    let answer = match api(&panel).search(request).await {
        Ok(a) => a.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::Unauthenticated {
                return super::sign_in_redirect();
            }
            return frame.page(
                "Søg i loggen",
                html! {
                    h1 { "Søg i adgangsloggen" }
                    (notice("fejl", &pages::refusal(&status)))
                    (filter_form(&csrf, &fields))
                },
            );
        }
    };
    frame.page(
        "Søgeresultat",
        html! {
            h1 { "Søg i adgangsloggen" }
            (filter_form(&csrf, &fields))
            h2 { "Resultat" }
            @if answer.entries.is_empty() { p.tom { "Ingen poster matcher." } }
            ol.poster {
                @for entry in &answer.entries { li { (entry_detail(entry)) } }
            }
            div.knapper {
                @if !answer.next_page_token.is_empty() {
                    form method="post" action="/revision/soeg" {
                        (csrf_field(&csrf))
                        (fields.hidden())
                        input type="hidden" name="page_token" value=(answer.next_page_token);
                        button.sekundaer type="submit" { "Ældre poster" }
                    }
                }
                form method="post" action="/revision/eksport" {
                    (csrf_field(&csrf))
                    (fields.hidden())
                    button.sekundaer type="submit" id="eksport" { "Hent som CSV" }
                }
            }
        },
    )
}

fn action_label(action: &str) -> &str {
    match action {
        "lookup" | "lookup-stream" => "Opslag",
        "consent-recorded" => "Samtykke registreret",
        "consent-withdrawn" => "Samtykke tilbagekaldt",
        "access-requested" => "Anmodning om adgang",
        "access-decided" => "Anmodning afgjort",
        "consents-listed" => "Samtykker vist",
        "requests-listed" => "Anmodninger vist",
        "policy-explained" => "Politik forklaret",
        "audit-searched" => "Søgning i loggen",
        "audit-exported" => "Eksport af loggen",
        "audit-verified" => "Kontrol af kæden",
        "review-queue-read" => "Gennemsynslisten vist",
        "review-marked" => "Markeret som gennemset",
        "citizen-viewed" => "Borgeren så sin log",
        "audit-maintenance" => "Vedligehold af loggen",
        other => other,
    }
}

fn outcome_label(outcome: &str) -> &str {
    match outcome {
        "answered" => "besvaret",
        "denied" => "afvist",
        "unauthenticated" => "ikke logget ind",
        "invalid" => "ugyldig",
        "cancelled" => "afbrudt",
        "failed" => "fejlede",
        "refused" => "afvist",
        other => other,
    }
}

fn flag_label(flag: &str) -> &str {
    match flag {
        samblik_audit::review::BREAK_GLASS => "nødadgang",
        samblik_audit::review::OUTSIDE_HOURS => "uden for arbejdstid",
        samblik_audit::review::MANY_LOOKUPS => "mange opslag",
        samblik_audit::review::MANY_DENIED => "mange afviste opslag",
        other => other,
    }
}

/// One record: a summary line that opens to everything it says.
fn entry_detail(e: &AuditEntry) -> Markup {
    html! {
        details.post data-request=(e.request_id) data-action=(e.action) {
            summary {
                span.tid { (pages::time(e.at.as_ref())) }
                " · " strong { (action_label(&e.action)) } " (" (outcome_label(&e.outcome)) ")"
                " · " (e.caller_name) " (" (e.caller_id) ", " (e.department) ")"
                @if !e.cpr.is_empty() { " · borger " span.cpr { (e.cpr) } }
                @for flag in &e.flags { " " span.flag { (flag_label(flag)) } }
            }
            dl.fakta {
                dt { "Forespørgsel" } dd { code { (e.request_id) } }
                dt { "Kommune" } dd { (e.municipality) }
                @if !e.system.is_empty() { dt { "System" } dd { (e.system) } }
                @if !e.purpose.is_empty() { dt { "Formål" } dd { (purpose_code_label(&e.purpose)) } }
                @if !e.break_glass_reason.is_empty() { dt { "Begrundelse for nødadgang" } dd { (e.break_glass_reason) } }
                @if !e.detail.is_empty() { dt { "Detalje" } dd { (e.detail) } }
                @if !e.reason.is_empty() { dt { "Afvisningsårsag" } dd { code { (e.reason) } } }
                dt { "Politikversion" } dd { code { (e.policy_version) } }
                dt { "Post" } dd { (e.chain) " #" (e.seq) ", hash " code { (e.hash.get(..16).unwrap_or(&e.hash)) "…" } }
            }
            @if !e.sources.is_empty() {
                table.liste.vist {
                    caption { "Hvad der blev vist" }
                    thead { tr { th { "Kilde" } th { "Status" } th { "Sag" } th { "Niveau" } th { "Grundlag" } th { "Regler" } th { "Felter" } } }
                    tbody {
                        @for s in &e.sources {
                            @if s.cases.is_empty() {
                                tr { td { (s.source_id) } td { (s.status) } td colspan="5" { "ingen sager vist" } }
                            }
                            @for c in &s.cases {
                                tr data-case=(c.case_id) {
                                    td { (s.source_id) } td { (s.status) } td { (c.case_id) }
                                    td { (c.tier) ": " (tier_label(c.tier as i32)) }
                                    td { (c.basis) }
                                    td { (c.rule_ids.join(", ")) }
                                    td.felter { (c.fields.join(", ")) }
                                }
                            }
                        }
                    }
                }
            }
            @if !e.change_json.is_empty() {
                p { "Ændring: " code { (e.change_json) } }
            }
        }
    }
}

async fn export(
    State(panel): State<PanelRef>,
    SignedForm {
        signed: Signed { user, csrf, .. },
        form,
    }: SignedForm,
) -> Response {
    let fields = Fields::from_form(&form);
    let request = authorised(
        ExportAuditRequest {
            filter: Some(fields.filter()),
            format: ExportFormat::Csv as i32,
        },
        &user,
    );
    match api(&panel).export(request).await {
        Ok(stream) => {
            // The export's own audit record is durable before the first chunk is produced.
            let body = Body::from_stream(stream.into_inner().map(|chunk| {
                chunk
                    .map(|c| Bytes::from(c.data))
                    .map_err(|status| std::io::Error::other(status.message().to_owned()))
            }));
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"samblik-adgangslog.csv\""),
            );
            response
        }
        Err(status) => pages::refused_page(
            &Frame::new(&panel, &user, &csrf),
            "Eksporten lykkedes ikke",
            &status,
        ),
    }
}

async fn verify(
    State(panel): State<PanelRef>,
    SignedForm {
        signed: Signed { user, csrf, .. },
        ..
    }: SignedForm,
) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    let answer = match api(&panel)
        .verify(authorised(VerifyAuditRequest {}, &user))
        .await
    {
        Ok(a) => a.into_inner(),
        Err(status) => return pages::refused_page(&frame, "Kontrol af kæden", &status),
    };
    frame.page(
        "Kontrol af kæden",
        html! {
            h1 { "Kontrol af loggens kæde" }
            @if answer.ok {
                div.besked.ok role="status" id="kaede-status" data-ok="true" {
                    "Kæden er hel: ingen post er ændret, slettet eller byttet om."
                }
            } @else {
                div.besked.fejl role="alert" id="kaede-status" data-ok="false" {
                    "Kæden er brudt i " (answer.broken_chain) " ved post #" (answer.broken_seq) ": " (answer.reason)
                }
                @if !answer.further.is_empty() {
                    h2 { "Flere fejl fundet efter den første" }
                    ul id="kaede-flere" {
                        @for b in &answer.further {
                            li { (b.chain) " post #" (b.seq) ": " (b.reason) }
                        }
                        @if answer.unlisted > 0 {
                            li { "… og " (answer.unlisted) " fejl mere" }
                        }
                    }
                }
                @if !answer.chains.is_empty() {
                    p { "Kæderne herunder er hele." }
                }
            }
            table.liste {
                thead { tr { th { "Kæde" } th { "Poster" } th { "Kontrolpunkter" } th { "Seneste hash" } } }
                tbody {
                    @for c in &answer.chains {
                        tr { td { (c.chain) } td { (c.records) } td { (c.checkpoints) } td { code { (c.head_hash.get(..16).unwrap_or(&c.head_hash)) "…" } } }
                    }
                }
            }
            p { a href="/revision" { "Tilbage til søgningen" } }
        },
    )
}

fn kind_label(kind: &str) -> &str {
    flag_label(kind)
}

async fn review_queue(
    State(panel): State<PanelRef>,
    Signed {
        current,
        user,
        csrf,
    }: Signed,
) -> Response {
    let message = current.lock().notice.take();
    let frame = Frame::new(&panel, &user, &csrf);
    let request = authorised(
        ReviewQueueRequest {
            from: None,
            until: None,
            include_reviewed: false,
        },
        &user,
    );
    let items = match api(&panel).review_queue(request).await {
        Ok(a) => a.into_inner().items,
        Err(status) => return pages::refused_page(&frame, "Til gennemsyn", &status),
    };
    frame.page(
        "Til gennemsyn",
        html! {
            h1 { "Til gennemsyn" }
            p.lede { "Nødopslag og usædvanlige mønstre. Markér et punkt som gennemset med en note; markeringen logges." }
            @if let Some(m) = &message { (notice("ok", m)) }
            @if items.is_empty() { p.tom { "Intet venter på gennemsyn." } }
            @for item in &items {
                article.gennemsyn data-key=(item.key) data-kind=(item.kind) {
                    h2 { (kind_label(&item.kind)) " · " (item.caller_id) " (" (item.department) ")" }
                    p { (pages::time(item.at.as_ref()))
                        @if item.count > 1 { " · " (item.count) " opslag" } }
                    p { (item.summary) }
                    form method="post" action="/revision/gennemsyn" {
                        (csrf_field(&csrf))
                        input type="hidden" name="key" value=(item.key);
                        input type="hidden" name="seen_count" value=(item.count);
                        label for=(format!("note-{}", item.key)) { "Note" }
                        input id=(format!("note-{}", item.key)) type="text" name="note" required;
                        button type="submit" { "Markér som gennemset" }
                    }
                }
            }
        },
    )
}

async fn mark_reviewed(
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
    let request = authorised(
        MarkReviewedRequest {
            key: form.get("key").to_owned(),
            note: form.get("note").trim().to_owned(),
            // What the page showed: a window that grew since stays in the queue.
            seen_count: form.get("seen_count").parse().unwrap_or(0),
        },
        &user,
    );
    match api(&panel).mark_reviewed(request).await {
        Ok(_) => {
            current.lock().notice = Some("Punktet er markeret som gennemset.".into());
            Redirect::to("/revision/gennemsyn").into_response()
        }
        Err(status) => pages::refused_page(
            &Frame::new(&panel, &user, &csrf),
            "Markeringen blev ikke gemt",
            &status,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Fields;

    #[test]
    fn the_search_fields_print_without_the_cpr() {
        let fields = Fields {
            cpr: "010190-1234".into(),
            caller: "cw-1".into(),
            ..Fields::default()
        };
        let printed = format!("{fields:?}");
        assert!(!printed.contains("010190-1234"), "{printed}");
        assert!(printed.contains("cw-1"), "{printed}");
    }
}
