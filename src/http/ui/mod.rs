//! The operator dashboard at `/ui`: three static files embedded in the binary at build
//! time (no Node toolchain, no CDN, works offline). The page asks for the API token, keeps
//! it in the browser's session storage and sends it as a bearer header to the ordinary
//! `/v1` API — the token is never in a URL (the live log reads the SSE stream with
//! `fetch`, which can send headers, not `EventSource`). The files themselves need no token:
//! they hold no data.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Only this origin's own files and API; no inline script, no framing.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
}

#[utoipa::path(get, path = "/ui", tag = "dashboard",
    responses((status = 200, description = "the operator dashboard (it asks for the API token)", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

#[utoipa::path(get, path = "/ui/app.js", tag = "dashboard",
    responses((status = 200, description = "the dashboard's script", content_type = "text/javascript", body = String)))]
pub async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(get, path = "/ui/app.css", tag = "dashboard",
    responses((status = 200, description = "the dashboard's style sheet", content_type = "text/css", body = String)))]
pub async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
