//! The long-poll tail: `GET /v1/events?after=&limit=&wait=&types=`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::extract::Query;
use super::reads::Reader;
use super::AppState;
use crate::domain::stream::Position;
use crate::store::notify::{Batch, Next};
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
    /// Every event up to this position was visible to this read (the head of the server
    /// that answered; a replica's trails the primary's).
    as_of_position: i64,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(TailQuery),
    responses((status = 200, body = Page), (status = 400)), security(("bearer" = [])))]
pub async fn tail(
    State(s): State<AppState>,
    Reader(mut source): Reader,
    Query(q): Query<TailQuery>,
) -> Result<Response, ApiError> {
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
    let types = super::stream::read_from(&s, "after", after, q.types.as_deref()).await?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    // Subscribed before any read of its own, so no shared batch sent meanwhile is missed.
    // A client that waits at the shared tail's position (the usual next request of a
    // long-poll loop) is answered from the broadcast without reading the log.
    let (mut follow, shared) = s.log.follow();
    let mut behind = wait == 0 || Position(after) < shared;
    let mut cursor = after;
    loop {
        if behind {
            // The reading server's head, then its page (one connection): every event at
            // or below that head is visible to this read.
            let (head, events) = source
                .page(Position(cursor), limit, types.as_deref())
                .await?;
            let head = head.0;
            let has_more = events.len() as i64 == limit;
            let last = events.last().map_or(cursor, |e| e.position.0);
            let next_after = if has_more { last } else { last.max(head) };
            if !events.is_empty() || Instant::now() >= deadline {
                return Ok(axum::Json(Page {
                    events,
                    next_after,
                    has_more,
                    as_of_position: head,
                })
                .into_response());
            }
            cursor = next_after;
            if s.log.head().0 > cursor {
                // This server trails what the primary announced (a replica): wait until
                // it has more, then read again, rather than skip to the shared tail.
                let remaining = deadline.saturating_duration_since(Instant::now());
                let mut shutdown = s.shutdown.clone();
                tokio::select! {
                    _ = source.wait_past(Position(cursor), remaining) => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(empty(cursor)),
                }
                continue;
            }
            behind = false;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut shutdown = s.shutdown.clone();
        let next = tokio::select! {
            next = follow.next(Position(cursor), remaining) => next,
            // At shutdown, answer now (empty page) rather than hold the server open.
            _ = shutdown.wait_for(|s| *s) => return Ok(empty(cursor)),
        };
        match next {
            Next::Batch(b) => {
                let taken: Vec<usize> = b
                    .matching(Position(cursor), types.as_deref())
                    .take(limit as usize)
                    .collect();
                let Some(&last) = taken.last() else {
                    cursor = b.to.0;
                    continue;
                };
                let has_more = taken.len() as i64 == limit;
                let next_after = if has_more {
                    b.events[last].position.0
                } else {
                    b.to.0
                };
                return Ok(shared_page(&b, &taken, next_after, has_more));
            }
            Next::Behind => behind = true,
            // A head heard of but not broadcast (the shared tail busy or failing): one
            // read of its own before answering.
            Next::Timeout if s.log.head().0 > cursor => behind = true,
            Next::Timeout => return Ok(empty(cursor)),
            Next::Closed => {
                source.wait_past(Position(cursor), remaining).await;
                behind = true;
            }
        }
    }
}

/// The page of no events.
fn empty(next_after: i64) -> Response {
    axum::Json(Page {
        events: Vec::new(),
        next_after,
        has_more: false,
        as_of_position: next_after,
    })
    .into_response()
}

/// The page of `taken` events of a shared batch, from their JSON serialised once: the
/// bytes `axum::Json(Page { … })` would send.
fn shared_page(batch: &Batch, taken: &[usize], next_after: i64, has_more: bool) -> Response {
    let len: usize = taken.iter().map(|&i| batch.json[i].len() + 1).sum();
    let mut body = String::with_capacity(len + 64);
    body.push_str("{\"events\":[");
    for (n, &i) in taken.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&batch.json[i]);
    }
    // The shared tail read the primary up to `batch.to`.
    body.push_str(&format!(
        "],\"next_after\":{next_after},\"has_more\":{has_more},\"as_of_position\":{}}}",
        batch.to.0
    ));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
