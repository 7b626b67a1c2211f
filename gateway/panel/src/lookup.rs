//! The lookup: the form and the fagsystem's deep link, the answer page whose department cards
//! fill in as each source answers (server-sent events over the pipeline's streamed lookup),
//! break-the-glass, and the rendering of a case at its granted tier.

use super::pages::{
    self, Frame, PanelRef, authorised, basis_label, checked_form, csrf_field, date, notice,
    purpose_label, tier_label, withheld_part, withheld_reason,
};
use super::pages::{Signed, SignedForm};
use super::session::{Current, Lookup, SignedIn};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use maud::{Markup, html};
use samblik_gateway::error::Reason;
use samblik_gateway::lookup::BreakGlass;
use samblik_proto::Cpr;
use samblik_proto::v1::{self as pb, LookupRequest, Purpose, SourceResult, SourceStatus};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tracing::Instrument;

pub(super) fn routes() -> Router<PanelRef> {
    Router::new()
        .route("/panel", get(form_or_deep_link))
        .route("/panel/opslag", post(submit))
        .route("/panel/opslag/{id}", get(answer_page))
        .route("/panel/opslag/{id}/bekraeft", post(confirm))
        .route("/panel/opslag/{id}/svar", get(answers))
        .route("/panel/noedadgang", get(break_glass_form).post(break_glass))
}

const CASEWORK_ROLES: &[&str] = &["caseworker", "department-leader"];

#[derive(serde::Deserialize)]
struct DeepLink {
    cpr: Option<String>,
    purpose: Option<String>,
}

/// Never prints the CPR as typed: it is not checked yet, and may not even be one.
impl std::fmt::Debug for DeepLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepLink")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

/// `/panel`: the lookup form; with `?cpr=…&purpose=…` (a fagsystem's link) the lookup itself,
/// after moving the CPR out of the address bar.
async fn form_or_deep_link(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
    headers: HeaderMap,
    Query(link): Query<DeepLink>,
) -> Response {
    // A link must say why: the purpose is recorded with the lookup, so none is ever assumed.
    let deep = link.cpr.as_deref().map(|cpr| {
        (
            Cpr::parse(cpr.trim()),
            link.purpose.as_deref().and_then(Purpose::from_code),
        )
    });
    let signed_in = current.lock().user().cloned();
    let Some(user) = signed_in else {
        // Not signed in: the deep link waits in the session, not in the sign-in URL.
        if let Some((Ok(cpr), Some(purpose))) = deep {
            current.lock().after_sign_in = Some(Lookup {
                cpr,
                purpose,
                break_glass: None,
                started: false,
                needs_confirmation: !trusted_link(&headers, &panel.config.frame_ancestors),
            });
        }
        return super::sign_in_redirect();
    };
    match deep {
        Some((Ok(cpr), Some(purpose))) => {
            let id = current.lock().add_lookup(Lookup {
                cpr,
                purpose,
                break_glass: None,
                started: false,
                needs_confirmation: !trusted_link(&headers, &panel.config.frame_ancestors),
            });
            Redirect::to(&format!("/panel/opslag/{id}")).into_response()
        }
        Some((Err(_), _)) => {
            let csrf = current.lock().csrf.clone();
            form_page(
                &panel,
                &user.caller,
                &csrf,
                Some("CPR-nummeret i linket er ikke gyldigt."),
            )
        }
        Some((Ok(_), None)) => {
            let csrf = current.lock().csrf.clone();
            form_page(
                &panel,
                &user.caller,
                &csrf,
                Some("Linket angiver ikke et gyldigt formål. Vælg formålet her."),
            )
        }
        None => {
            let csrf = current.lock().csrf.clone();
            form_page(&panel, &user.caller, &csrf, None)
        }
    }
}

/// Whether a deep link may start the lookup at once: opened by the user (typed, bookmark,
/// Samblik itself), inside a frame (which CSP allows only for configured fagsystemer), or
/// linked from a configured fagsystem. A link from anywhere else waits for a click, so no
/// other site can make a caseworker's browser look a citizen up in their name.
fn trusted_link(headers: &HeaderMap, fagsystemer: &[String]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("sec-fetch-site") {
        None | Some("none" | "same-origin") => return true,
        Some(_) => {}
    }
    if header("sec-fetch-dest") == Some("iframe") {
        return true;
    }
    header("referer")
        .and_then(|r| r.parse::<http::Uri>().ok())
        .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
        .is_some_and(|origin| {
            fagsystemer
                .iter()
                .any(|f| f.trim_end_matches('/') == origin)
        })
}

fn form_page(
    panel: &super::Panel,
    caller: &samblik_gateway::auth::Caller,
    csrf: &str,
    message: Option<&str>,
) -> Response {
    let frame = Frame {
        panel,
        user: Some(caller),
        csrf,
    };
    if !pages::has_role(caller, CASEWORK_ROLES) {
        return pages::forbidden(&frame);
    }
    frame.page(
        "Opslag",
        html! {
            h1 { "Slå en borger op" }
            @if let Some(m) = message { (notice("fejl", m)) }
            p.lede { "Se borgerens sager i de andre forvaltninger — det, du må se, og hvorfor resten er skjult. Opslaget logges." }
            form.opslag method="post" action="/panel/opslag" {
                (csrf_field(csrf))
                (lookup_fields(None))
                button type="submit" id="slaa-op" { "Slå op" }
            }
            section.noed aria-labelledby="noed-titel" {
                h2 id="noed-titel" { "Nødadgang" }
                p { "Har du ingen sag for borgeren, men er der akut fare for borgerens sikkerhed, kan du bryde glasset. Det kræver en skriftlig begrundelse, viser kun hvem der har sagerne, og gennemses af revisionen." }
                a.knap.advarsel href="/panel/noedadgang" { "Nødadgang …" }
            }
        },
    )
}

/// The CPR and purpose fields of a lookup form.
fn lookup_fields(cpr: Option<&str>) -> Markup {
    html! {
        label for="cpr" { "CPR-nummer" }
        input id="cpr" name="cpr" type="text" inputmode="numeric" autocomplete="off"
            required pattern="[0-9]{6}-?[0-9]{4}" placeholder="DDMMÅÅ-XXXX" value=[cpr]
            aria-describedby="cpr-hjaelp";
        small id="cpr-hjaelp" { "10 cifre, med eller uden bindestreg." }
        label for="purpose" { "Formål" }
        select id="purpose" name="purpose" required {
            @for p in pages::PURPOSES {
                option value=(p.code()) { (purpose_label(p)) }
            }
        }
    }
}

/// The form's lookup: the CPR goes into the session and the browser to the answer page.
async fn submit(
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
    let typed = form.get("cpr").trim();
    let (cpr, purpose) = (Cpr::parse(typed), Purpose::from_code(form.get("purpose")));
    let (Ok(cpr), Some(purpose)) = (cpr.as_ref(), purpose) else {
        let message = if cpr.is_err() { NOT_A_CPR } else { NO_PURPOSE };
        let request = LookupRequest {
            cpr: typed.to_owned(),
            purpose: wire_purpose(form.get("purpose")),
            ..LookupRequest::default()
        };
        let message =
            refuse_invalid_input(&panel, &user, &request, BreakGlass::IfReasonGiven, message).await;
        return form_page(&panel, &user.caller, &csrf, Some(&message));
    };
    let cpr = cpr.clone();
    let id = current.lock().add_lookup(Lookup {
        cpr,
        purpose,
        break_glass: None,
        started: false,
        needs_confirmation: false,
    });
    Redirect::to(&format!("/panel/opslag/{id}")).into_response()
}

const NOT_A_CPR: &str = "Det er ikke et gyldigt CPR-nummer.";
const NO_PURPOSE: &str = "Vælg et formål.";

/// A form's purpose as the wire carries it: none when the field is empty, and a number no
/// purpose has when it names none, so that the pipeline refuses it as the gRPC API refuses a
/// missing or an unknown purpose.
fn wire_purpose(code: &str) -> i32 {
    match Purpose::from_code(code) {
        Some(p) => p as i32,
        None if code.is_empty() => Purpose::Unspecified as i32,
        None => -1,
    }
}

/// Refuses a lookup whose input a form could not accept (a CPR number it could not read, a
/// purpose it does not know, a break-the-glass reason too short, too long or not plain text),
/// recording it exactly as the gRPC API records the same input: the input goes to the
/// pipeline's lookup, as the panel's lookups do, and its validation refuses it — outcome
/// invalid, the caller named, and the citizen and purpose if it got as far as reading them —
/// before any source is asked. Answers with the form's `message`, or the refusal's when
/// something else stood in the way first (a sign-in that expired, an audit log that cannot be
/// written).
async fn refuse_invalid_input(
    panel: &super::Panel,
    user: &SignedIn,
    request: &LookupRequest,
    break_glass: BreakGlass,
    message: &str,
) -> String {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        samblik_gateway::rpc::span(samblik_gateway::rpc::SpanKind::Lookup, &request_id, "Panel");
    let call = authorised((), user);
    let refused = std::sync::Arc::clone(&panel.pipeline)
        .lookup_stream(
            request_id.clone(),
            &samblik_gateway::context::Credentials::of(&call),
            request,
            break_glass,
            None,
        )
        .instrument(span.clone())
        .await;
    match refused {
        Err(e) => {
            span.in_scope(|| tracing::info!(error = %e, "panel lookup refused"));
            if e.code() == tonic::Code::InvalidArgument {
                message.into()
            } else {
                pages::refusal(&e.to_status(&request_id))
            }
        }
        // The forms read their input as the pipeline does (the purpose through
        // `wire_purpose`, the reason by the pipeline's own rule), so it cannot take what a form
        // could not; were it to, dropping the answers cancels the lookup, and the log records it.
        Ok(_) => message.into(),
    }
}

/// The answer page: a card per department, waiting for its answer.
async fn answer_page(
    State(panel): State<PanelRef>,
    Path(id): Path<String>,
    Signed {
        current,
        user,
        csrf,
    }: Signed,
) -> Response {
    let frame = Frame::new(&panel, &user, &csrf);
    let Some(lookup) = current.lock().lookup(&id).cloned() else {
        return forgotten(&frame);
    };
    let body = html! {
        h1 { "Borgerens sager" }
        dl.opslag-fakta {
            dt { "CPR-nummer" } dd.cpr { (lookup.cpr.as_str()) }
            dt { "Formål" } dd { (purpose_label(lookup.purpose)) }
        }
        @if let Some(reason) = &lookup.break_glass {
            div.besked.noed role="alert" {
                strong { "Nødadgang. " }
                "Opslaget er markeret og gennemses af revisionen. Din begrundelse: “" (reason) "”"
            }
        }
        nav.handlinger aria-label="Handlinger for borgeren" {
            a href=(format!("/panel/samtykke/{id}")) { "Borgerens samtykker" }
            a href="/panel" { "Nyt opslag" }
        }
        @if lookup.started {
            (notice("info", "Dette opslag er allerede vist. Af hensyn til loggen slås borgeren ikke op igen ved genindlæsning — lav et nyt opslag."))
        } @else if lookup.needs_confirmation {
            (notice("info", "Linket kom fra en side, Samblik ikke kender. Bekræft, at du vil slå borgeren op."))
            form method="post" action=(format!("/panel/opslag/{id}/bekraeft")) {
                (csrf_field(&csrf))
                button type="submit" { "Slå borgeren op" }
            }
        } @else {
            div id="opslag" data-stream=(format!("/panel/opslag/{id}/svar")) {
                p id="opslag-status" role="status" aria-live="polite" { "Spørger forvaltningerne …" }
                noscript { p { "Panelet skal bruge JavaScript for at vise svarene, efterhånden som de kommer." } }
                div.kilder {
                    @for (source, department) in panel.pipeline.sources() {
                        section.kilde.venter id=(format!("kilde-{source}")) data-source=(source) aria-busy="true" {
                            header { h2 { (department) } span.status { "Venter på svar …" } }
                        }
                    }
                }
            }
        }
    };
    frame.page("Opslag", body)
}

fn forgotten(frame: &Frame<'_>) -> Response {
    let mut response = frame.page(
        "Opslaget findes ikke",
        html! {
            h1 { "Opslaget findes ikke længere" }
            p { "Samblik husker kun de seneste opslag i din session. " a href="/panel" { "Lav et nyt opslag." } }
        },
    );
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn confirm(
    Extension(current): Extension<Current>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(refused) = checked_form(&current, &body) {
        return refused;
    }
    if let Some(lookup) = current.lock().lookup_mut(&id) {
        lookup.needs_confirmation = false;
    }
    Redirect::to(&format!("/panel/opslag/{id}")).into_response()
}

#[derive(serde::Serialize)]
struct CardEvent<'a> {
    source: &'a str,
    html: String,
}

#[derive(serde::Serialize)]
struct MessageEvent {
    html: String,
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default())
}

/// The event stream of one lookup: a `kilde` event with each department's card as its audit
/// record is durable, then `faerdig`; or one `afvist` event when the lookup is refused. A
/// lookup streams once: a reconnecting browser is told, not answered again.
async fn answers(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
    Path(id): Path<String>,
) -> Response {
    let (user, csrf) = match pages::signed_in(&current) {
        Ok(u) => u,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let lookup = {
        let mut session = current.lock();
        match session.lookup_mut(&id) {
            Some(l) if !l.started && !l.needs_confirmation => {
                l.started = true;
                Some(l.clone())
            }
            _ => None,
        }
    };
    let Some(lookup) = lookup else {
        let refused = event(
            "afvist",
            &MessageEvent {
                html: pages::fragment(notice(
                    "info",
                    "Dette opslag er allerede vist eller findes ikke længere. Lav et nyt opslag.",
                )),
            },
        );
        return sse(futures::stream::iter([refused])).into_response();
    };
    let request = lookup.request();
    let break_glass = if lookup.break_glass.is_some() {
        BreakGlass::Asked
    } else {
        BreakGlass::IfReasonGiven
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        samblik_gateway::rpc::span(samblik_gateway::rpc::SpanKind::Lookup, &request_id, "Panel");
    let call = authorised((), &user);
    let started = std::time::Instant::now();
    let results = std::sync::Arc::clone(&panel.pipeline)
        .lookup_stream(
            request_id.clone(),
            &samblik_gateway::context::Credentials::of(&call),
            &request,
            break_glass,
            None,
        )
        .instrument(span.clone())
        .await;
    let departments: HashMap<String, String> = panel
        .pipeline
        .sources()
        .map(|(s, d)| (s.to_owned(), d.to_owned()))
        .collect();
    let render = CardContext {
        lookup_id: id,
        csrf,
        can_request: pages::has_role(&user.caller, CASEWORK_ROLES) && lookup.break_glass.is_none(),
    };
    match results {
        Err(e) => {
            let status = e.to_status(&request_id);
            span.in_scope(|| tracing::info!(error = %e, "panel lookup refused"));
            let refused = event(
                "afvist",
                &MessageEvent {
                    html: pages::fragment(refusal(
                        &status,
                        e.reason(),
                        &render.lookup_id,
                        lookup.break_glass.is_some(),
                    )),
                },
            );
            sse(futures::stream::iter([refused])).into_response()
        }
        Ok(rx) => {
            let cards = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |r| match r {
                Ok(result) => {
                    let department = departments
                        .get(&result.source_id)
                        .map_or(result.department.as_str(), String::as_str);
                    event(
                        "kilde",
                        &CardEvent {
                            source: &result.source_id,
                            html: pages::fragment(source_card(&result, department, &render)),
                        },
                    )
                }
                Err(e) => event(
                    "afvist",
                    &MessageEvent {
                        html: pages::fragment(notice(
                            "fejl",
                            &pages::refusal(&e.to_status(&request_id)),
                        )),
                    },
                ),
            });
            let done = futures::stream::once(async move {
                span.in_scope(|| {
                    tracing::info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "panel lookup answered"
                    )
                });
                Event::default().event("faerdig").data("{}")
            });
            sse(cards.chain(done)).into_response()
        }
    }
}

fn sse(
    events: impl futures::Stream<Item = Event> + Send + 'static,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    Sse::new(events.map(Ok)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A refused lookup in words, with the way on where there is one.
fn refusal(
    status: &tonic::Status,
    reason: Reason,
    lookup_id: &str,
    was_break_glass: bool,
) -> Markup {
    html! {
        (notice("fejl", &pages::refusal(status)))
        // Only a refusal for lack of relation is lifted by breaking the glass.
        @if reason == Reason::NoRelation && !was_break_glass {
            p {
                "Du har ingen åben sag for borgeren i din forvaltning. Er borgeren i akut fare, kan du "
                a href=(format!("/panel/noedadgang?opslag={lookup_id}")) { "bryde glasset" }
                "."
            }
        }
    }
}

/// What a card needs besides the answer: the lookup it belongs to and the user's CSRF token
/// for its request-access forms.
struct CardContext {
    lookup_id: String,
    csrf: String,
    can_request: bool,
}

fn status_label(status: SourceStatus) -> (&'static str, &'static str) {
    match status {
        SourceStatus::Ok => ("svaret", "Svaret"),
        SourceStatus::Timeout => ("timeout", "Svarede ikke i tide"),
        SourceStatus::Unavailable => ("utilgaengelig", "Ikke tilgængelig"),
        SourceStatus::Denied => ("afvist", "Afvist"),
        SourceStatus::Error | SourceStatus::Unspecified => ("fejl", "Fejl"),
    }
}

/// One department's card.
fn source_card(result: &SourceResult, department: &str, context: &CardContext) -> Markup {
    let status = SourceStatus::try_from(result.status).unwrap_or(SourceStatus::Unspecified);
    let (status_class, status_text) = status_label(status);
    html! {
        section class=(format!("kilde {status_class}")) id=(format!("kilde-{}", result.source_id))
            data-source=(result.source_id) data-status=(status_class) {
            header {
                h2 { (department) }
                span.status { (status_text) }
                @if let Some(as_of) = &result.as_of {
                    span.asof { "Data pr. " (pages::time(Some(as_of))) }
                }
            }
            @if status == SourceStatus::Ok {
                @if result.cases.is_empty() {
                    p.tom { "Ingen sager at vise." }
                }
                @for case in &result.cases {
                    (case_article(&result.source_id, case, context))
                }
            } @else {
                p.nede { "Forvaltningens system svarede ikke, så dets sager er ikke med i dette opslag. Prøv igen senere, eller kontakt forvaltningen direkte." }
            }
        }
    }
}

fn case_article(source_id: &str, case: &pb::Case, context: &CardContext) -> Markup {
    let existence = case.existence.clone().unwrap_or_default();
    let case_type = existence.case_type.clone().unwrap_or_default();
    let responsible = existence.responsible.clone().unwrap_or_default();
    let disclosure = case.disclosure.clone().unwrap_or_default();
    let open = existence.state == pb::CaseState::Open as i32;
    html! {
        article.sag data-case=(case.case_id) data-tier=(case.tier) {
            header {
                h3 { (case_type.name) " " span.paragraf { (case_type.legal_paragraph) } }
                span class=(format!("niveau niveau-{}", case.tier)) title="Det niveau, du må se" {
                    "Niveau " (case.tier) ": " (tier_label(case.tier))
                }
                span class=(if open { "tilstand aaben" } else { "tilstand lukket" }) {
                    (if open { "Åben" } else { "Lukket" })
                }
            }
            dl.fakta {
                dt { "Åbnet" } dd { (date(&existence.opened_on)) }
                @if !existence.closed_on.is_empty() {
                    dt { "Lukket" } dd { (date(&existence.closed_on)) }
                }
                dt { "Sagsansvarlig" }
                dd.ansvarlig {
                    (responsible.name)
                    @if !responsible.unit.is_empty() { ", " (responsible.unit) }
                    @if !responsible.phone.is_empty() {
                        " · " a href=(format!("tel:{}", responsible.phone.replace(' ', ""))) { "Ring " (responsible.phone) }
                    }
                    @if !responsible.email.is_empty() {
                        " · " a href=(format!("mailto:{}", responsible.email)) { "Skriv " (responsible.email) }
                    }
                }
                dt { "Grundlag" }
                dd.grundlag {
                    (basis_label(&disclosure.basis))
                    @if !disclosure.basis_id.is_empty() { " (" (disclosure.basis_id) ")" }
                }
            }
            @if let Some(selected) = &case.selected {
                (selected_part(selected))
            }
            @if let Some(full) = &case.full {
                (full_part(full))
            }
            @for w in &disclosure.withheld {
                div.tilbageholdt {
                    p {
                        strong { (withheld_part(&w.part)) " er skjult: " }
                        (withheld_reason(&w.code, &w.reason))
                        "."
                    }
                    @if context.can_request && w.code == "needs-basis" {
                        details.anmod {
                            summary { "Anmod om adgang" }
                            form method="post" action="/panel/anmodning" {
                                (csrf_field(&context.csrf))
                                input type="hidden" name="opslag" value=(context.lookup_id);
                                input type="hidden" name="source" value=(source_id);
                                input type="hidden" name="case" value=(case.case_id);
                                input type="hidden" name="tier" value=(w.tier);
                                label for=(format!("begrundelse-{}", case.case_id)) {
                                    "Hvorfor har du brug for " (tier_label(w.tier).to_lowercase()) "?"
                                }
                                textarea id=(format!("begrundelse-{}", case.case_id)) name="begrundelse"
                                    required minlength=(samblik_gateway::registry_api::MIN_JUSTIFICATION) rows="3" {}
                                button type="submit" { "Send anmodning til " (source_id) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn selected_part(selected: &pb::Selected) -> Markup {
    html! {
        div.udvalgt {
            @if !selected.situation.is_empty() {
                h4 { "Situation" } p { (selected.situation) }
            }
            @if !selected.goals.is_empty() {
                h4 { "Mål" }
                ul.maal {
                    @for goal in &selected.goals {
                        li {
                            (goal.description)
                            @if !goal.target_on.is_empty() { span.dato { " — senest " (date(&goal.target_on)) } }
                        }
                    }
                }
            }
            @if !selected.interventions.is_empty() {
                h4 { "Indsatser" }
                (timeline(&selected.interventions))
                ul.indsatser {
                    @for i in &selected.interventions {
                        li {
                            strong { (i.description) }
                            " " span.paragraf { (i.legal_paragraph) }
                            @if !i.provider.is_empty() { " · " (i.provider) }
                            @if !i.scope.is_empty() { " · " (i.scope) }
                            br;
                            span.dato { (date(&i.start_on)) " – " (if i.end_on.is_empty() { "ingen slutdato".to_owned() } else { date(&i.end_on) }) }
                        }
                    }
                }
            }
            @if !selected.next_follow_up_on.is_empty() {
                p { strong { "Næste opfølgning: " } (date(&selected.next_follow_up_on)) }
            }
            @if !selected.assessment_summary.is_empty() {
                h4 { "Vurdering" } p { (selected.assessment_summary) }
            }
            @if !selected.residence.is_empty() {
                p { strong { "Bopæl: " } (selected.residence) }
            }
        }
    }
}

/// The interventions on a small time line: a bar per intervention between its dates (open
/// ones to today), drawn in SVG so no inline style is needed under the CSP.
fn timeline(interventions: &[pb::Intervention]) -> Markup {
    let parse = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    let today = chrono::Local::now().date_naive();
    let spans: Vec<(chrono::NaiveDate, chrono::NaiveDate)> = interventions
        .iter()
        .filter_map(|i| {
            let start = parse(&i.start_on)?;
            let end = parse(&i.end_on).unwrap_or(today).max(start);
            Some((start, end))
        })
        .collect();
    let (Some(first), Some(last)) = (
        spans.iter().map(|s| s.0).min(),
        spans.iter().map(|s| s.1).max(),
    ) else {
        return html! {};
    };
    let days = (last - first).num_days().max(1) as f64;
    let x = |d: chrono::NaiveDate| ((d - first).num_days() as f64 / days * 100.0).clamp(0.0, 100.0);
    let height = spans.len() * 8;
    html! {
        svg.tidslinje viewBox=(format!("0 0 100 {height}")) preserveAspectRatio="none"
            role="img" aria-label=(format!("Tidslinje for indsatserne fra {} til {}", first.format("%d.%m.%Y"), last.format("%d.%m.%Y"))) {
            @for (row, (start, end)) in spans.iter().enumerate() {
                rect x=(format!("{:.2}", x(*start))) y=(row * 8 + 1)
                    width=(format!("{:.2}", (x(*end) - x(*start)).max(1.0))) height="6" rx="1" {}
            }
        }
        p.tidsakse { span { (first.format("%d.%m.%Y")) } span { (last.format("%d.%m.%Y")) } }
    }
}

fn full_part(full: &pb::Full) -> Markup {
    html! {
        div.fuld {
            h4 { "Dokumenter" }
            @if full.documents.is_empty() { p { "Ingen dokumenter." } }
            @for d in &full.documents {
                details.dokument {
                    summary {
                        (d.title) " · " (date(&d.dated_on))
                        @if !d.author.is_empty() { " · " (d.author) }
                    }
                    @if !d.third_party_origin.is_empty() {
                        p.kilde-tredjepart { "Oplysninger fra " (d.third_party_origin) }
                    }
                    p.brødtekst { (d.body) }
                }
            }
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct BreakGlassQuery {
    opslag: Option<String>,
}

/// The deliberate break-the-glass form: a citizen, a purpose, a written reason.
async fn break_glass_form(
    State(panel): State<PanelRef>,
    Query(query): Query<BreakGlassQuery>,
    Signed {
        current,
        user,
        csrf,
    }: Signed,
) -> Response {
    let from_lookup = query
        .opslag
        .as_deref()
        .filter(|id| current.lock().lookup(id).is_some());
    break_glass_page(&panel, &user.caller, &csrf, from_lookup, None)
}

fn break_glass_page(
    panel: &super::Panel,
    caller: &samblik_gateway::auth::Caller,
    csrf: &str,
    from_lookup: Option<&str>,
    message: Option<&str>,
) -> Response {
    let frame = Frame {
        panel,
        user: Some(caller),
        csrf,
    };
    if !pages::has_role(caller, CASEWORK_ROLES) {
        return pages::forbidden(&frame);
    }
    let min = panel.pipeline.policy().break_glass_min_reason();
    frame.page(
        "Nødadgang",
        html! {
            h1 { "Nødadgang (bryd glasset)" }
            div.besked.noed role="note" {
                p { "Brug kun nødadgang, når borgerens sikkerhed er i akut fare og du ikke kan vente på samtykke eller en godkendt anmodning." }
                p { "Du ser kun, at sagerne findes, og hvem der har dem. Opslaget, din begrundelse og dit navn gennemses af revisionen." }
            }
            @if let Some(m) = message { (notice("fejl", m)) }
            form.opslag method="post" action="/panel/noedadgang" {
                (csrf_field(csrf))
                @if let Some(id) = from_lookup {
                    input type="hidden" name="opslag" value=(id);
                    p { "Borgeren fra dit opslag." }
                    label for="purpose" { "Formål" }
                    select id="purpose" name="purpose" required {
                        @for p in pages::PURPOSES { option value=(p.code()) { (purpose_label(p)) } }
                    }
                } @else {
                    (lookup_fields(None))
                }
                label for="begrundelse" { "Begrundelse (mindst " (min) " tegn)" }
                textarea id="begrundelse" name="begrundelse" required minlength=(min) rows="4" {}
                button.advarsel type="submit" id="bryd-glasset" { "Bryd glasset og slå op" }
            }
        },
    )
}

async fn break_glass(
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
    let from_lookup = Some(form.get("opslag")).filter(|s| !s.is_empty());
    let again =
        |message: &str| break_glass_page(&panel, &user.caller, &csrf, from_lookup, Some(message));
    let cpr = match from_lookup {
        Some(id) => {
            let known = current.lock().lookup(id).map(|l| l.cpr.clone());
            // A lookup of this session that is gone (not a CPR number anyone typed).
            let Some(cpr) = known else {
                return again(NOT_A_CPR);
            };
            Ok(cpr)
        }
        None => {
            let typed = form.get("cpr").trim();
            Cpr::parse(typed).map_err(|_| typed)
        }
    };
    let purpose = Purpose::from_code(form.get("purpose"));
    let reason = form.get("begrundelse");
    let checked = panel.pipeline.break_glass_reason(reason, BreakGlass::Asked);
    let lookup = match (&cpr, purpose, checked) {
        (Ok(cpr), Some(purpose), Ok(Some(reason))) => Some(Lookup {
            cpr: cpr.clone(),
            purpose,
            break_glass: Some(reason),
            started: false,
            needs_confirmation: false,
        }),
        _ => None,
    };
    // The answer page asks for it whole: a reason too long for the request is refused here.
    let lookup = lookup.filter(|l| panel.pipeline.request_size(&l.request()).is_ok());
    let Some(lookup) = lookup else {
        let request = LookupRequest {
            cpr: match &cpr {
                Ok(cpr) => cpr.as_str().to_owned(),
                Err(typed) => (*typed).to_owned(),
            },
            purpose: wire_purpose(form.get("purpose")),
            sources: Vec::new(),
            break_glass_reason: reason.to_owned(),
        };
        // In the pipeline's order, so that the message names what it refuses; but for the
        // size, which it checks first: once the CPR number and purpose are valid, only the
        // reason can make the request too large.
        let min = panel.pipeline.policy().break_glass_min_reason();
        let message = if cpr.is_err() {
            NOT_A_CPR.to_owned()
        } else if purpose.is_none() {
            NO_PURPOSE.to_owned()
        } else if reason.trim().chars().count() < min {
            format!("Begrundelsen skal være mindst {min} tegn.")
        } else if panel.pipeline.request_size(&request).is_err() {
            "Begrundelsen er for lang. Skriv den kortere.".to_owned()
        } else {
            "Begrundelsen skal være almindelig tekst på én linje, uden linjeskift.".to_owned()
        };
        return again(
            &refuse_invalid_input(&panel, &user, &request, BreakGlass::Asked, &message).await,
        );
    };
    let id = current.lock().add_lookup(lookup);
    Redirect::to(&format!("/panel/opslag/{id}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::DeepLink;

    #[test]
    fn a_deep_link_prints_without_its_cpr() {
        let link = DeepLink {
            cpr: Some("0101901234".into()),
            purpose: Some("prepare-meeting".into()),
        };
        let printed = format!("{link:?}");
        assert!(!printed.contains("0101901234"), "{printed}");
        assert!(printed.contains("prepare-meeting"), "{printed}");
    }
}
