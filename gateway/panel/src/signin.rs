//! Signing in and out. In production through the municipality's identity provider
//! ([`super::oidc`]); in `samblik demo` on a page that lists the demo users. Either way the
//! result is an access token that the gateway's [`samblik_gateway::auth::Authenticator`] verifies
//! exactly as it verifies a gRPC caller's — the panel has no identity of its own making.

use super::pages::Signed;
use super::pages::{self, Frame, PanelRef, checked_form, csrf_field, notice};
use super::session::{Current, SignedIn};
use super::{Panel, SignIn};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::html;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A demo user on the demo's sign-in page.
#[derive(Debug, Clone)]
pub struct DemoSignInUser {
    pub id: String,
    pub name: String,
    pub role: String,
    pub unit: String,
}

type Mint = Box<dyn Fn(&str) -> anyhow::Result<String> + Send + Sync>;

/// The demo's sign-in: pick a demo user, get a token the demo issuer signs for them.
pub struct DemoSignIn {
    users: Vec<DemoSignInUser>,
    mint: Mint,
    ttl: Duration,
}

impl std::fmt::Debug for DemoSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoSignIn")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl DemoSignIn {
    /// `mint` signs an access token for a user id, valid for `ttl`.
    pub fn new(
        users: Vec<DemoSignInUser>,
        ttl: Duration,
        mint: impl Fn(&str) -> anyhow::Result<String> + Send + Sync + 'static,
    ) -> Self {
        DemoSignIn {
            users,
            mint: Box::new(mint),
            ttl,
        }
    }
}

pub(super) fn routes() -> Router<PanelRef> {
    Router::new()
        .route("/", get(home))
        .route("/log-ind", get(sign_in_page))
        .route("/log-ind/demo", post(demo_sign_in))
        .route("/log-ind/oidc", get(oidc_start))
        .route("/log-ind/retur", get(oidc_return))
        .route("/log-ud", post(sign_out))
}

/// The start page: where the user's role works.
async fn home(State(panel): State<PanelRef>, Signed { user, csrf, .. }: Signed) -> Response {
    let caller = &user.caller;
    if pages::has_role(caller, &["caseworker", "department-leader"]) {
        return Redirect::to("/panel").into_response();
    }
    if pages::has_role(caller, &["auditor"]) {
        return Redirect::to("/revision").into_response();
    }
    Frame {
        panel: &panel,
        user: Some(caller),
        csrf: &csrf,
    }
    .page(
        "Samblik",
        html! {
            h1 { "Velkommen" }
            p { "Din rolle har ingen sider i panelet. Opslag og revision kræver rollen sagsbehandler, leder eller revisor." }
        },
    )
}

async fn sign_in_page(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
) -> Response {
    let (csrf, message) = {
        let mut session = current.lock();
        (session.csrf.clone(), session.notice.take())
    };
    let frame = Frame {
        panel: &panel,
        user: None,
        csrf: &csrf,
    };
    let body = match &panel.sign_in {
        SignIn::Demo(demo) => html! {
            h1 { "Log ind i demoen" }
            @if let Some(m) = &message { (notice("fejl", m)) }
            p { "Vælg en demobruger. I drift logger man ind med kommunens eget login (OpenID Connect); denne side findes kun i " code { "samblik demo" } "." }
            form.brugere method="post" action="/log-ind/demo" {
                (csrf_field(&csrf))
                ul {
                    @for u in &demo.users {
                        li {
                            button type="submit" name="user" value=(u.id) data-user=(u.id) {
                                strong { (u.name) }
                                span { (pages::role_label(&u.role)) " · " (u.unit) }
                            }
                        }
                    }
                }
            }
        },
        SignIn::Oidc(_) => html! {
            h1 { "Log ind" }
            @if let Some(m) = &message { (notice("fejl", m)) }
            p { "Samblik bruger kommunens fælles login." }
            p { a.knap href="/log-ind/oidc" { "Log ind med kommunens login" } }
        },
    };
    frame.page("Log ind", body)
}

async fn demo_sign_in(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
    body: Bytes,
) -> Response {
    let SignIn::Demo(demo) = &panel.sign_in else {
        return pages::problem(StatusCode::NOT_FOUND, "Ikke fundet", "Siden findes ikke.");
    };
    let form = match checked_form(&current, &body) {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let user = form.get("user");
    if !demo.users.iter().any(|u| u.id == user) {
        return back_to_sign_in(&current, "Ukendt demobruger.");
    }
    match (demo.mint)(user) {
        Ok(token) => finish_sign_in(&panel, &current, token, demo.ttl).await,
        Err(e) => {
            tracing::warn!(error = %e, "demo token could not be minted");
            back_to_sign_in(&current, "Demoen kunne ikke logge brugeren ind.")
        }
    }
}

async fn oidc_start(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
) -> Response {
    let SignIn::Oidc(oidc) = &panel.sign_in else {
        return pages::problem(StatusCode::NOT_FOUND, "Ikke fundet", "Siden findes ikke.");
    };
    let (pending, url) = oidc.authorization_url(&panel.config);
    current.lock().oidc = Some(pending);
    Redirect::to(&url).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct OidcReturn {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn oidc_return(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
    Query(answer): Query<OidcReturn>,
) -> Response {
    let SignIn::Oidc(oidc) = &panel.sign_in else {
        return pages::problem(StatusCode::NOT_FOUND, "Ikke fundet", "Siden findes ikke.");
    };
    // The pending sign-in is used once, whatever happens next.
    let pending = current.lock().oidc.take();
    let (Some(pending), Some(code), Some(state)) = (pending, answer.code, answer.state) else {
        if let Some(error) = &answer.error {
            tracing::info!(error = %error, "identity provider refused the sign-in");
        }
        return back_to_sign_in(&current, "Login blev afbrudt. Prøv igen.");
    };
    if !super::session::same_secret(&state, &pending.state) {
        tracing::info!("sign-in answer with a state that does not match the session refused");
        return back_to_sign_in(&current, "Login kunne ikke bekræftes. Prøv igen.");
    }
    match oidc.exchange(&panel.config, &code, &pending.verifier).await {
        Ok(tokens) => {
            finish_sign_in(&panel, &current, tokens.access_token, tokens.expires_in).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "authorisation code exchange failed");
            back_to_sign_in(&current, "Login kunne ikke gennemføres. Prøv igen.")
        }
    }
}

/// Verifies `token` as the gRPC API would, then binds it to a fresh session id.
async fn finish_sign_in(
    panel: &Arc<Panel>,
    current: &Current,
    token: String,
    ttl: Duration,
) -> Response {
    let auth = panel.pipeline.auth();
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Ok(value) = format!("Bearer {token}").parse() {
        metadata.insert("authorization", value);
    }
    auth.refresh_keys_for(&metadata).await;
    let caller = match auth.verify(&token) {
        Ok(caller) => caller,
        Err(e) => {
            tracing::info!(error = %e, "sign-in token refused");
            return back_to_sign_in(current, "Dit login gav ikke adgang til Samblik.");
        }
    };
    let ttl = ttl.min(Duration::from_secs(panel.config.session_max_secs));
    tracing::info!(user = %caller.id, "signed in to the panel");
    let rotated = panel.sessions.rotate(current);
    let next = {
        let mut session = rotated.lock();
        session.user = Some(SignedIn {
            token,
            caller,
            expires: SystemTime::now() + ttl,
        });
        session.oidc = None;
        match session.after_sign_in.take() {
            Some(lookup) => format!("/panel/opslag/{}", session.add_lookup(lookup)),
            None => "/".to_owned(),
        }
    };
    let mut response = Redirect::to(&next).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&panel.sessions.cookie(&rotated.id)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn back_to_sign_in(current: &Current, message: &str) -> Response {
    current.lock().notice = Some(message.to_owned());
    Redirect::to("/log-ind").into_response()
}

async fn sign_out(
    State(panel): State<PanelRef>,
    Extension(current): Extension<Current>,
    body: Bytes,
) -> Response {
    if let Err(refused) = checked_form(&current, &body) {
        return refused;
    }
    panel.sessions.end(&current);
    let mut response = Redirect::to("/log-ind").into_response();
    if let Ok(cookie) = HeaderValue::from_str(&panel.sessions.expired_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}
