//! Which server a request reads (README "Read replicas"). The routes a replica may serve
//! are the ones [`super::router`] wraps in [`choose`]; each handler reads through the
//! [`Reader`] it was given, every other route reads and writes the primary.
//!
//! Read-your-writes: every command's response (a `/v1` request other than GET, answered
//! 2xx) carries `chainledger-position`, the log's head once it committed. A read sent
//! with `chainledger-min-position: N` is served by the replica once the replica has
//! reached N (waiting up to [`MIN_POSITION_WAIT`]), else by the primary. Subscribers'
//! settings and cursors are not in the log, so a replica's head cannot tell whether it has
//! them: those routes, given the header, read the primary. Every replica-served response
//! carries `chainledger-as-of-position` (the head of the server chosen, at least) and
//! `chainledger-read-from` (`replica` or `primary`).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::domain::stream::Position;
pub use crate::store::replica::{Source, MIN_POSITION_WAIT};

pub const MIN_POSITION: &str = "chainledger-min-position";
pub const POSITION: &str = "chainledger-position";
pub const AS_OF_POSITION: &str = "chainledger-as-of-position";
/// `replica` or `primary`: which server a replica-served route was sent to.
pub const READ_FROM: &str = "chainledger-read-from";

/// What a route shows, for the read-your-writes rule.
#[derive(Clone, Copy)]
pub enum Shows {
    /// The log, or projections folded from it: the replica's head says what it has.
    Log,
    /// State outside the log (subscribers, their cursors and attempts).
    NotLogged,
}

/// The middleware that chooses the server of a replica-served route (its state: what the
/// route shows).
pub async fn choose(
    State((s, shows)): State<(AppState, Shows)>,
    mut req: Request,
    next: Next,
) -> Response {
    let min = match min_position(req.headers()) {
        Ok(min) => min,
        Err(e) => return e.into_response(),
    };
    let source = match (min, shows) {
        (None, _) => s.read_pool.current(),
        (Some(min), Shows::Log) => s.read_pool.reaching(min).await,
        (Some(_), Shows::NotLogged) => s.read_pool.primary(),
    };
    let as_of = source.known_head();
    let from = if source.from_replica() {
        "replica"
    } else {
        "primary"
    };
    req.extensions_mut().insert(Reader(source));
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(AS_OF_POSITION, HeaderValue::from(as_of.0));
    headers.insert(READ_FROM, HeaderValue::from_static(from));
    resp
}

fn min_position(headers: &HeaderMap) -> Result<Option<Position>, ApiError> {
    let Some(v) = headers.get(MIN_POSITION) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|p| *p >= 0)
        .map(|p| Some(Position(p)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_min_position",
                format!("{MIN_POSITION}: must be 0 or a position (a whole number)"),
            )
        })
}

/// Stamps a command's successful response with the log's head after it committed.
pub async fn stamp_position(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let command = req.method() != Method::GET && req.method() != Method::HEAD;
    let mut resp = next.run(req).await;
    if command && resp.status().is_success() {
        match crate::store::head(&s.pool).await {
            Ok(head) => {
                resp.headers_mut()
                    .insert(POSITION, HeaderValue::from(head.0));
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the head for {POSITION}"),
        }
    }
    resp
}

/// The server a replica-served handler reads; the primary on a route not wrapped in
/// [`choose`].
pub struct Reader(pub Source);

impl FromRequestParts<AppState> for Reader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .remove::<Reader>()
            .unwrap_or_else(|| Reader(s.read_pool.primary())))
    }
}

impl Clone for Reader {
    fn clone(&self) -> Self {
        Reader(self.0.clone())
    }
}
