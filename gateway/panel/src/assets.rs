//! The panel's style sheet and script, compiled into the binary: nothing is fetched from a
//! CDN, so the panel works on a municipality's closed network.

use crate::PanelRef;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub(crate) const CSS_PATH: &str = "/static/samblik.css";
pub(crate) const JS_PATH: &str = "/static/samblik.js";

const CSS: &str = include_str!("static/samblik.css");
const JS: &str = include_str!("static/samblik.js");

pub(super) fn routes() -> Router<PanelRef> {
    Router::new()
        .route(
            CSS_PATH,
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            JS_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // No personal data here; a short cache keeps the panel quick without stale releases.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
