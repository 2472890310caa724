//! The long-poll tail: `GET /v1/events?after=&limit=&wait=&types=`.

use std::time::{Duration, Instant};

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::extract::Query;
use super::reads::Reader;
use super::AppState;
use crate::domain::stream::Position;
use crate::store::StoredEvent;

pub const MAX_LIMIT: i64 = 1000;
pub const MAX_WAIT_SECS: u64 = 30;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// Return events with a position greater than this (default 0: from the first event).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Seconds to wait for a first event when there is none yet (at most 30; default 0).
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
    /// Comma list of types; `deposit.*` style wildcards.
    types: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Page {
    #[schema(value_type = Vec<Object>)]
    events: Vec<StoredEvent>,
    /// Pass as `after` to continue; past the last event, or past the log's head when a
    /// type filter matched nothing more.
    next_after: i64,
    has_more: bool,
    /// The head of the server that answered (a replica's trails the primary's): every
    /// event up to it was visible to this read.
    as_of_position: i64,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(TailQuery),
    responses((status = 200, body = Page), (status = 400)), security(("bearer" = [])))]
pub async fn tail(
    State(s): State<AppState>,
    Reader(mut source): Reader,
    Query(q): Query<TailQuery>,
) -> Result<axum::Json<Page>, ApiError> {
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit: must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(
            "invalid_wait",
            format!("wait: at most {MAX_WAIT_SECS} seconds"),
        ));
    }
    let types = super::stream::read_from(&s, &source, "after", after, q.types.as_deref()).await?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut cursor = after;
    loop {
        // Every event at or below this head is visible to the read that follows.
        let (head, events) = source
            .page(Position(cursor), limit, types.as_deref())
            .await?;
        let head = head.0;
        let has_more = events.len() as i64 == limit;
        let last = events.last().map_or(cursor, |e| e.position.0);
        let next_after = if has_more { last } else { last.max(head) };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !events.is_empty() || remaining.is_zero() {
            return Ok(axum::Json(Page {
                events,
                next_after,
                has_more,
                as_of_position: head,
            }));
        }
        cursor = next_after;
        let mut shutdown = s.shutdown.clone();
        tokio::select! {
            // The server read here passing the cursor (a replica trails the NOTIFY).
            _ = source.wait_past(Position(cursor), remaining) => {}
            // At shutdown, answer now (empty page) rather than hold the server open.
            _ = shutdown.wait_for(|s| *s) => return Ok(axum::Json(Page { events: Vec::new(), next_after, has_more: false, as_of_position: head })),
        }
    }
}
