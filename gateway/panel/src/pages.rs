//! What every page shares: the layout, the Danish words for the API's codes, form parsing with
//! the CSRF check, and how a refused call becomes a calm message.

use super::Panel;
use super::session::{Current, SignedIn, same_secret};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use samblik_gateway::auth::Caller;
use samblik_proto::v1::{self as pb, Purpose};

/// The purposes a caseworker may look up for, in the order the form offers them.
pub(crate) const PURPOSES: [Purpose; 4] = [
    Purpose::PrepareMeeting,
    Purpose::DraftPlan,
    Purpose::FollowUp,
    Purpose::Coordinate,
];

pub(crate) fn purpose_label(p: Purpose) -> &'static str {
    match p {
        Purpose::PrepareMeeting => "Forberede møde med borgeren",
        Purpose::DraftPlan => "Udarbejde handleplan",
        Purpose::FollowUp => "Opfølgning på indsats",
        Purpose::Coordinate => "Koordinere indsatser",
        Purpose::Unspecified => "Ikke angivet",
    }
}

/// A purpose code as the API writes it (`prepare-meeting`) in words.
pub(crate) fn purpose_code_label(code: &str) -> &str {
    match Purpose::from_code(code) {
        Some(p) => purpose_label(p),
        None => code,
    }
}

pub(crate) fn tier_label(tier: i32) -> &'static str {
    match pb::Tier::try_from(tier) {
        Ok(pb::Tier::Existence) => "Sagen findes",
        Ok(pb::Tier::Selected) => "Udvalgte oplysninger",
        Ok(pb::Tier::Full) => "Fuld sag",
        _ => "Skjult",
    }
}

pub(crate) fn basis_label(kind: &str) -> &'static str {
    match kind {
        "own-department" => "Egen forvaltnings sag",
        "statute" => "Lovhjemmel",
        "consent" => "Borgerens samtykke",
        "grant" => "Godkendt anmodning om adgang",
        "break-the-glass" => "Nødadgang",
        _ => "Andet grundlag",
    }
}

/// Why a part was withheld, in Danish, by the policy's stable code; the policy's own words
/// when the code is one this page does not know.
pub(crate) fn withheld_reason<'a>(code: &str, fallback: &'a str) -> std::borrow::Cow<'a, str> {
    let text = match code {
        "needs-basis" => "kræver borgerens samtykke eller en godkendt anmodning om adgang",
        "break-the-glass-cap" => "et nødopslag viser kun, at sagen findes, og hvem der har den",
        "refused-by-citizen" => {
            "borgeren har frabedt sig, at disse sager deles med din forvaltning"
        }
        "sensitive" => "sagen er følsom og vises kun i den enhed, der har den",
        "address-protection" => "borgeren har navne- og adressebeskyttelse",
        _ => return fallback.into(),
    };
    text.into()
}

pub(crate) fn withheld_part(part: &str) -> &'static str {
    match part {
        "selected" => "Indsatser, mål og situation",
        "full" => "Sagens dokumenter",
        "selected.residence" => "Bopæl",
        _ => "En del af sagen",
    }
}

pub(crate) fn role_label(role: &str) -> &'static str {
    match role {
        "caseworker" => "Sagsbehandler",
        "department-leader" => "Leder",
        "auditor" => "Revisor",
        "admin" => "Databeskyttelse",
        "citizen" => "Borger",
        _ => "Bruger",
    }
}

/// `2026-11-22` as `22.11.2026`; anything else as it is.
pub(crate) fn date(iso: &str) -> String {
    match chrono::NaiveDate::parse_from_str(iso, "%Y-%m-%d") {
        Ok(d) => d.format("%d.%m.%Y").to_string(),
        Err(_) => iso.to_owned(),
    }
}

/// A protobuf time in the municipality's local time, e.g. `22.11.2026 14:05`.
pub(crate) fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| {
            t.with_timezone(&chrono_tz::Europe::Copenhagen)
                .format("%d.%m.%Y %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// The pages' shared frame.
pub(crate) struct Frame<'a> {
    pub panel: &'a Panel,
    pub user: Option<&'a Caller>,
    pub csrf: &'a str,
}

impl<'a> Frame<'a> {
    /// The frame of a signed-in user's page.
    pub fn new(panel: &'a Panel, user: &'a SignedIn, csrf: &'a str) -> Self {
        Frame {
            panel,
            user: Some(&user.caller),
            csrf,
        }
    }

    pub fn page(&self, title: &str, body: Markup) -> Response {
        let roles = self.user.map(|u| u.roles.as_slice()).unwrap_or_default();
        let has = |r: &str| roles.iter().any(|x| x == r);
        let markup = html! {
            (DOCTYPE)
            html lang="da" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Samblik" }
                    link rel="stylesheet" href=(super::assets::CSS_PATH);
                    script src=(super::assets::JS_PATH) defer {}
                }
                body {
                    a.skip href="#indhold" { "Spring til indhold" }
                    @if self.panel.is_demo() {
                        div.demo role="note" { "DEMO — alle personer og sager er syntetiske" }
                    }
                    header.top {
                        a.brand href="/" { "Samblik" }
                        span.tagline { "Sager på tværs af forvaltninger" }
                        @if let Some(user) = self.user {
                            nav aria-label="Hovedmenu" {
                                @if has("caseworker") || has("department-leader") {
                                    a href="/panel" { "Opslag" }
                                    a href="/panel/anmodninger" { "Anmodninger" }
                                }
                                @if has("auditor") {
                                    a href="/revision" { "Søg i loggen" }
                                    a href="/revision/gennemsyn" { "Til gennemsyn" }
                                }
                            }
                            div.user {
                                span { (user.name) " · " (user_role(user)) }
                                form method="post" action="/log-ud" {
                                    input type="hidden" name="_csrf" value=(self.csrf);
                                    button.link type="submit" { "Log ud" }
                                }
                            }
                        }
                    }
                    main id="indhold" { (body) }
                }
            }
        };
        markup.into_response()
    }
}

fn user_role(user: &Caller) -> String {
    let mut role = user
        .roles
        .first()
        .map_or("Bruger", |r| role_label(r))
        .to_owned();
    if !user.department.is_empty() {
        role.push_str(", ");
        role.push_str(&user.department);
    }
    role
}

/// The hidden CSRF field every state-changing form carries.
pub(crate) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="_csrf" value=(csrf); }
}

/// An error page of its own, for requests that never reach a handler's page.
pub(crate) fn problem(status: StatusCode, title: &str, text: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="da" {
            head {
                meta charset="utf-8";
                title { (title) " · Samblik" }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
            }
            body { main id="indhold" { h1 { (title) } p { (text) } p { a href="/" { "Til forsiden" } } } }
        }
    };
    (status, markup).into_response()
}

/// A message box: `kind` is `ok`, `info` or `fejl`.
pub(crate) fn notice(kind: &str, text: &str) -> Markup {
    let role = if kind == "fejl" { "alert" } else { "status" };
    html! { div class=(format!("besked {kind}")) role=(role) { (text) } }
}

/// A refused call in words the user can act on; the request id lets support find the log.
pub(crate) fn refusal(status: &tonic::Status) -> String {
    let detail = status.message();
    let lead = match status.code() {
        tonic::Code::Unauthenticated => {
            return "Din adgang er udløbet. Log ind igen.".to_owned();
        }
        tonic::Code::PermissionDenied => "Du har ikke adgang til dette.",
        tonic::Code::InvalidArgument => "Oplysningerne er ikke gyldige.",
        tonic::Code::NotFound => "Det blev ikke fundet.",
        tonic::Code::FailedPrecondition => "Det kan ikke lade sig gøre nu.",
        tonic::Code::Unavailable => {
            "Samblik kan ikke svare lige nu, og intet er vist. Prøv igen om lidt."
        }
        _ => "Der skete en fejl.",
    };
    format!("{lead} ({detail})")
}

/// A form body: its fields in order (repeated names allowed, e.g. check boxes).
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &Bytes) -> Self {
        Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A state-changing form's guard: the session's CSRF token must be in the form. Returns the
/// signed-in user too, when `signed_in` is asked for.
pub(crate) fn checked_form(current: &Current, body: &Bytes) -> Result<Form, Response> {
    let form = Form::parse(body);
    let csrf = current.lock().csrf.clone();
    if !same_secret(form.get("_csrf"), &csrf) {
        tracing::info!("form without a valid CSRF token refused");
        return Err(problem(
            StatusCode::FORBIDDEN,
            "Formularen er udløbet",
            "Siden var for gammel eller kom ikke fra Samblik. Gå tilbage, genindlæs siden og prøv igen.",
        ));
    }
    Ok(form)
}

/// The signed-in user of a session, or the sign-in page.
pub(crate) fn signed_in(current: &Current) -> Result<(SignedIn, String), Response> {
    let session = current.lock();
    match session.user() {
        Some(user) => Ok((user.clone(), session.csrf.clone())),
        None => Err(super::sign_in_redirect()),
    }
}

/// The largest form body read (axum's own default for `Bytes`).
const MAX_FORM_BYTES: usize = 2 * 1024 * 1024;

/// A handler's signed-in user: the session, its user and CSRF token. Without one the request
/// goes to the sign-in page.
pub(crate) struct Signed {
    pub current: Current,
    pub user: SignedIn,
    pub csrf: String,
}

impl FromRequestParts<PanelRef> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &PanelRef) -> Result<Self, Response> {
        let current = session_of(parts)?;
        let (user, csrf) = signed_in(&current)?;
        Ok(Signed {
            current,
            user,
            csrf,
        })
    }
}

/// A state-changing form of a signed-in user: the CSRF token is checked first (a forged form
/// is refused, signed in or not), then the user as [`Signed`].
pub(crate) struct SignedForm {
    pub signed: Signed,
    pub form: Form,
}

impl FromRequest<PanelRef> for SignedForm {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &PanelRef,
    ) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let current = session_of(&parts)?;
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Formularen er for stor",
                    "Formularen kunne ikke læses.",
                )
            })?;
        let form = checked_form(&current, &body)?;
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        Ok(SignedForm { signed, form })
    }
}

/// The request's session (the session layer always sets one).
fn session_of(parts: &Parts) -> Result<Current, Response> {
    parts
        .extensions
        .get::<Current>()
        .cloned()
        .ok_or_else(super::sign_in_redirect)
}

/// A call to the gateway's own services on `user`'s behalf: their access token in the metadata,
/// as a gRPC client would send it, and the panel's mark ([`samblik_gateway::context::ViaPanel`]), so the
/// audit log names the panel as the calling system.
pub(crate) fn authorised<T>(message: T, user: &SignedIn) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .extensions_mut()
        .insert(samblik_gateway::context::ViaPanel);
    if let Ok(value) = format!("Bearer {}", user.token).parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Whether `user` holds one of `roles`.
pub(crate) fn has_role(user: &Caller, roles: &[&str]) -> bool {
    user.roles.iter().any(|r| roles.contains(&r.as_str()))
}

/// A page telling a signed-in user they lack the role for it.
pub(crate) fn forbidden(frame: &Frame<'_>) -> Response {
    let mut response = frame.page(
        "Ingen adgang",
        html! {
            h1 { "Ingen adgang" }
            p { "Din rolle giver ikke adgang til denne side." }
        },
    );
    *response.status_mut() = StatusCode::FORBIDDEN;
    response
}

/// A page with `title` and a message, for a refused call.
pub(crate) fn refused_page(frame: &Frame<'_>, title: &str, status: &tonic::Status) -> Response {
    if status.code() == tonic::Code::Unauthenticated {
        return super::sign_in_redirect();
    }
    frame.page(
        title,
        html! {
            h1 { (title) }
            (notice("fejl", &refusal(status)))
            p { a href="/" { "Til forsiden" } }
        },
    )
}

/// Raw markup already escaped by maud (for fragments sent over the event stream).
pub(crate) fn fragment(markup: Markup) -> String {
    markup.into_string()
}

pub(crate) use crate::PanelRef;
