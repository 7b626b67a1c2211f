//! The caseworkers' lookup panel and the auditors' pages: server-rendered Danish HTML over
//! HTTPS (axum), on the gateway's own lookup pipeline, policy, registry and audit log.
//!
//! There is no second code path to disclosure. A page acts for its signed-in user by calling
//! the very entry points the gRPC API calls — [`LookupPipeline::lookup_stream`], the consent,
//! access-request and audit services — with the user's access token as the bearer token, so
//! authentication, relation, policy, filtering and audit are the gRPC API's, record for record.
//!
//! What the browser holds is a session cookie; the token, the CSRF token and the CPR numbers
//! being looked up stay on the server (the `session` module). Every state-changing form carries the
//! session's CSRF token and must come from the panel's own origin. Every answer carries a CSP
//! without inline script, `frame-ancestors` limited to the configured fagsystemer, and
//! `no-store`. No URL, query or form content is ever logged: a deep link carries a CPR.

// A handler's early return is a whole page (`Result<_, Response>`): boxing it would buy nothing
// on a path that renders HTML.
#![allow(clippy::result_large_err)]

mod assets;
mod audit;
mod lookup;
mod oidc;
mod pages;
mod registry;
mod session;
mod signin;

pub use oidc::OidcClient;
pub use signin::{DemoSignIn, DemoSignInUser};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use samblik_adapters::tls::{ReloadingServerConfig, plain_incoming, tls_incoming};
use samblik_gateway::config::PanelConfig;
use samblik_gateway::lookup::LookupPipeline;
use session::Sessions;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tracing::Instrument;

/// How users sign in to the panel.
#[derive(Debug)]
pub enum SignIn {
    /// The municipality's identity provider (OpenID Connect, authorisation-code flow + PKCE).
    Oidc(Box<OidcClient>),
    /// The demo's page of demo users. Only `samblik demo` builds this; a config file cannot.
    Demo(DemoSignIn),
}

/// The panel as every handler holds it.
pub(crate) type PanelRef = Arc<Panel>;

/// The panel: its configuration, sessions and the pipeline it acts through.
#[derive(Debug)]
pub struct Panel {
    pipeline: Arc<LookupPipeline>,
    config: PanelConfig,
    sign_in: SignIn,
    sessions: Sessions,
    /// The response headers every answer carries.
    security_headers: Vec<(header::HeaderName, HeaderValue)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    #[error("panel: {0}")]
    Config(String),
    #[error("panel: {0}")]
    Io(#[from] std::io::Error),
}

impl Panel {
    pub fn new(
        pipeline: Arc<LookupPipeline>,
        config: PanelConfig,
        sign_in: SignIn,
    ) -> Result<Self, PanelError> {
        let secure = config.public_url.starts_with("https://");
        let sessions = Sessions::new(
            Duration::from_secs(config.session_idle_secs),
            Duration::from_secs(config.session_max_secs),
            config.max_sessions,
            secure,
        );
        let security_headers = security_headers(&config, secure)?;
        Ok(Panel {
            pipeline,
            config,
            sign_in,
            sessions,
            security_headers,
        })
    }

    fn is_demo(&self) -> bool {
        matches!(self.sign_in, SignIn::Demo(_))
    }

    /// The panel's routes, with sessions, CSRF/origin checks, security headers and a span
    /// per request.
    pub fn router(self: Arc<Self>) -> Router {
        let routes = Router::new()
            .merge(assets::routes())
            .merge(signin::routes())
            .merge(lookup::routes())
            .merge(registry::routes())
            .merge(audit::routes());
        routes
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self),
                session_layer,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self),
                outer_layer,
            ))
            .with_state(self)
    }
}

/// The headers of every answer: no inline script, no framing except by configured
/// fagsystemer, no caching of pages with personal data, no referrer to other sites. (Not
/// `no-referrer`: browsers then send `Origin: null` on forms, and the origin check needs it.)
fn security_headers(
    config: &PanelConfig,
    secure: bool,
) -> Result<Vec<(header::HeaderName, HeaderValue)>, PanelError> {
    let frame_ancestors = if config.frame_ancestors.is_empty() {
        "'none'".to_owned()
    } else {
        config.frame_ancestors.join(" ")
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; \
         frame-ancestors {frame_ancestors}"
    );
    let value = |v: &str| {
        HeaderValue::from_str(v).map_err(|_| PanelError::Config(format!("bad header value {v:?}")))
    };
    let mut headers = vec![
        (header::CONTENT_SECURITY_POLICY, value(&csp)?),
        (header::X_CONTENT_TYPE_OPTIONS, value("nosniff")?),
        (header::REFERRER_POLICY, value("same-origin")?),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            value("same-origin")?,
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            value("camera=(), microphone=(), geolocation=(), payment=()")?,
        ),
    ];
    if config.frame_ancestors.is_empty() {
        headers.push((header::X_FRAME_OPTIONS, value("DENY")?));
    }
    if secure {
        headers.push((
            header::STRICT_TRANSPORT_SECURITY,
            value("max-age=31536000")?,
        ));
    }
    Ok(headers)
}

/// One span per request (method, route template, status, time — never the URL: a deep link
/// carries a CPR), and the security headers on every answer.
async fn outer_layer(State(panel): State<Arc<Panel>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "panel",
        method = %request.method(),
        route = %route,
        status = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let mut response = contained(next.run(request)).await;
        let headers = response.headers_mut();
        for (name, value) in &panel.security_headers {
            headers.insert(name.clone(), value.clone());
        }
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        let span = tracing::Span::current();
        span.record("status", response.status().as_u16());
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "panel request"
        );
        response
    }
    .instrument(span)
    .await
}

/// The rest of the request, with a panic in any handler answered as a 500 page that names an
/// error id, logged with that id (never the panic's message, which may hold whatever the handler
/// held); the connection and the process go on serving. A lookup's audit record is durable
/// before the pipeline answers, so a panic after that leaves the record as it is.
async fn contained(rest: impl Future<Output = Response>) -> Response {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(rest).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            let error_id = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(error_id = %error_id, "a panel request panicked; answered 500");
            pages::problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Der opstod en fejl i Samblik",
                &format!(
                    "Siden kunne ikke vises. Prøv igen; sker det igen, så giv driften fejl-id {error_id}."
                ),
            )
        }
    }
}

/// Finds or starts the request's session; refuses a state-changing request that does not come
/// from the panel's own origin (the CSRF token is checked by each form's handler as well).
async fn session_layer(
    State(panel): State<Arc<Panel>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && !same_origin(request.headers(), panel.config.origin())
    {
        tracing::info!("state-changing request from another origin refused");
        return pages::problem(
            StatusCode::FORBIDDEN,
            "Forespørgslen kom ikke fra Samblik",
            "Formularen blev sendt fra en anden side end Samblik og er afvist. Gå til Samblik og prøv igen.",
        );
    }
    let cookies = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    let (current, created) = match panel.sessions.find(cookies) {
        Some(current) => (current, false),
        None => (panel.sessions.create(), true),
    };
    if let Some(user) = current.lock().user() {
        tracing::Span::current().record("user", user.caller.id.as_str());
    }
    request.extensions_mut().insert(current.clone());
    let mut response = next.run(request).await;
    if created
        && !response.headers().contains_key(header::SET_COOKIE)
        && let Ok(cookie) = HeaderValue::from_str(&panel.sessions.cookie(&current.id))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether a state-changing request comes from `origin`: by its `Origin` header, else by the
/// browser's `Sec-Fetch-Site`. A request with neither (not a browser) passes here and still
/// needs the session's CSRF token.
fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    if let Some(o) = headers.get(header::ORIGIN) {
        return o.as_bytes() == origin.as_bytes();
    }
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        Some(site) => site == b"same-origin",
        None => true,
    }
}

/// A listener over the gateway's accepted (TLS) connections, for [`axum::serve`].
struct Incoming<S> {
    connections: tokio_stream::wrappers::ReceiverStream<
        Result<samblik_adapters::tls::Conn<S>, std::io::Error>,
    >,
    addr: SocketAddr,
}

impl<S> axum::serve::Listener for Incoming<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = samblik_adapters::tls::Conn<S>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.connections.next().await {
                Some(Ok(conn)) => return (conn, self.addr),
                Some(Err(e)) => tracing::debug!(error = %e, "panel connection failed"),
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Serves the panel on `listener` until `shutdown` completes: over TLS when `tls` is set (the
/// gRPC port's certificate, without client certificates), at most `max_connections` at once.
pub async fn serve(
    panel: Arc<Panel>,
    listener: TcpListener,
    tls: Option<Arc<ReloadingServerConfig>>,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), PanelError> {
    let addr = listener.local_addr()?;
    let router = panel.router();
    match tls {
        Some(tls) => {
            tracing::info!(addr = %addr, "panel listening (HTTPS)");
            let incoming = Incoming {
                connections: tls_incoming(listener, max_connections, tls),
                addr,
            };
            axum::serve(incoming, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            tracing::warn!(addr = %addr, "panel listening in PLAINTEXT (loopback only)");
            let incoming = Incoming {
                connections: plain_incoming(listener, max_connections),
                addr,
            };
            axum::serve(incoming, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    Ok(())
}

/// The panel's TLS: the gRPC port's certificate and key, no client certificates (browsers
/// sign in with the identity provider instead).
pub fn panel_tls(
    config: &samblik_gateway::config::Config,
) -> Result<Option<Arc<ReloadingServerConfig>>, samblik_adapters::tls::TlsError> {
    config
        .server
        .tls
        .as_ref()
        .map(|tls| {
            samblik_gateway::tls::server_tls(&samblik_gateway::config::TlsConfig {
                client_certs: samblik_gateway::config::ClientAuth::Off,
                client_ca_file: None,
                ..tls.clone()
            })
        })
        .transpose()
}

/// Refuses with a page when the session has no signed-in user: to the sign-in page.
fn sign_in_redirect() -> Response {
    axum::response::Redirect::to("/log-ind").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_with_an_error_id_and_the_rest_go_on() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("a handler that held 0101901234");
                    #[allow(unreachable_code)]
                    "never"
                }),
            )
            .route("/ok", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(|request: Request, next: Next| {
                contained(next.run(request))
            }));
        let get = |path: &str| {
            let request = Request::get(path).body(Body::empty()).unwrap();
            app.clone().oneshot(request)
        };
        let boom = get("/boom").await.unwrap();
        assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(boom.into_body(), 1 << 20)
            .await
            .unwrap();
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("fejl-id "), "{page}");
        assert!(
            !page.contains("0101901234"),
            "the panic's message reached the page"
        );
        // The same service answers the next request.
        let ok = get("/ok").await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
