//! The SSE stream: `GET /v1/events/stream?after=&types=`. Each event is one SSE message
//! with `id:` = its position and `data:` = the envelope with `prev`, the position of the
//! event sent before it on this stream (the first's: the `after` or `Last-Event-ID` it
//! resumed from), so a client proves it missed nothing (no `event:` name, so a browser
//! `EventSource`'s `onmessage` sees every one). A reconnecting client's `Last-Event-ID`
//! wins over `after`, so it resumes exactly after the last message it got. Comments keep
//! idle connections alive through proxies. Since `EventSource` cannot send headers, this
//! route also takes the token as `?access_token=`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::extract::Query;
use super::reads::{Reader, Source};
use super::AppState;
use crate::domain::filter::TypeFilter;
use crate::domain::stream::Position;
use crate::store::notify::{Batch, Follow, Next};
use crate::store::{self, StoredEvent};

const PAGE: i64 = 500;
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Start after this position (default 0); `Last-Event-ID` overrides it.
    after: Option<i64>,
    /// Comma list of types; `deposit.*` style wildcards.
    types: Option<String>,
    /// The API token, for clients that cannot send `Authorization` (a browser
    /// `EventSource`); checked by the auth layer. Prefer the header: URLs get logged.
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// The `access_token` query parameter of a GET of this route (RFC 6750 §2.3), if any.
pub fn access_token(req: &axum::extract::Request) -> Option<String> {
    if req.method() != axum::http::Method::GET || !req.uri().path().ends_with("/events/stream") {
        return None;
    }
    url::form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Where a reader of the log (the tail, this stream) starts, checked: `after` (given as
/// `field`) is 0 or a position the log has reached (beyond the head is a 400 naming the
/// head: a client cannot have seen it, and would otherwise wait silently for positions
/// another log holds), and the `types` filter names real types (expanded; `None`: every
/// type).
pub(super) async fn read_from(
    s: &AppState,
    field: &str,
    after: i64,
    types: Option<&str>,
) -> Result<Option<Vec<String>>, ApiError> {
    if after < 0 {
        return Err(ApiError::bad_request(
            "invalid_after",
            format!("{field}: must be 0 or a position"),
        ));
    }
    let filter = TypeFilter::parse(types)
        .map_err(|m| ApiError::bad_request("invalid_types", format!("types: {m}")))?;
    // Up to the head heard of, `after` is a position the log has; past it, ask the log.
    let head = match s.log.head().0 {
        known if after <= known => known,
        _ => store::head(&s.pool).await?.0,
    };
    if after > head {
        return Err(ApiError::bad_request(
            "invalid_after",
            format!("{field}: {after} is beyond the head {head}"),
        ));
    }
    Ok(filter.map(|f| f.expand()))
}

#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(StreamQuery),
    responses((status = 200, content_type = "text/event-stream", description = "SSE: id = position, data = event envelope"),
              (status = 400)),
    security(("bearer" = [])))]
pub async fn stream(
    State(s): State<AppState>,
    Reader(source): Reader,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID: must be a position this stream sent",
                    )
                })?,
        ),
    };
    let (field, after) = match last_event_id {
        Some(id) => ("Last-Event-ID", id),
        None => ("after", q.after.unwrap_or(0)),
    };
    let types = read_from(&s, field, after, q.types.as_deref()).await?;

    // Subscribed before any read of its own, so no shared batch sent meanwhile is missed;
    // a cursor at the shared tail's position needs no read at all.
    let (follow, shared) = s.log.follow();
    let behind = Position(after) < shared;
    let tail = Tail {
        s,
        source,
        cursor: Position(after),
        prev: Position(after),
        types,
        pending: VecDeque::new(),
        sent: false,
        follow,
        behind,
    };
    let events = futures::stream::unfold(tail, |mut t| async move {
        loop {
            if *t.s.shutdown.borrow() {
                return None;
            }
            if let Some(p) = t.pending.pop_front() {
                let (position, data) = match &p {
                    Pending::Read(e) => (
                        e.position,
                        with_prev(
                            &serde_json::to_string(e).expect("an event serialises"),
                            t.prev,
                        ),
                    ),
                    // Serialised once by the shared tail, for every stream.
                    Pending::Shared(b, i) => {
                        (b.events[*i].position, with_prev(&b.json[*i], t.prev))
                    }
                };
                t.prev = position;
                let mut msg = Event::default().id(position.to_string()).data(data);
                if !t.sent {
                    // Tells EventSource to reconnect after 1 s rather than its default 3 s.
                    msg = msg.retry(RECONNECT);
                    t.sent = true;
                }
                return Some((Ok(msg), t));
            }
            if t.behind {
                if let Err(e) = t.read().await {
                    tracing::warn!(error = %e, "SSE stream cannot read the log; closing");
                    return None;
                }
                continue;
            }
            let mut shutdown = t.s.shutdown.clone();
            let next = tokio::select! {
                next = t.follow.next(t.cursor, KEEP_ALIVE) => Some(next),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            if let Some(next) = next {
                t.take(next).await;
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// An envelope's JSON with `"prev": prev` added (the envelope is an object).
fn with_prev(envelope: &str, prev: Position) -> String {
    let body = envelope
        .strip_suffix('}')
        .expect("an envelope is a JSON object");
    format!("{body},\"prev\":{}}}", prev.0)
}

/// An SSE message to send: an event this stream read itself, or one of a shared batch.
enum Pending {
    Read(StoredEvent),
    Shared(Arc<Batch>, usize),
}

struct Tail {
    s: AppState,
    /// The server this stream reads (and waits on) when it reads for itself.
    source: Source,
    /// Every event up to here was queued or filtered out.
    cursor: Position,
    /// The position of the last event sent (at first, where the client resumed).
    prev: Position,
    types: Option<Vec<String>>,
    pending: VecDeque<Pending>,
    sent: bool,
    follow: Follow,
    /// Reads the log for itself until it reaches the head (at the start, and when the
    /// shared tail cannot serve its cursor).
    behind: bool,
}

impl Tail {
    /// One page of the log for this stream alone; at the head, back to the shared tail.
    async fn read(&mut self) -> Result<(), sqlx::Error> {
        // The head before the read, on the same server: nothing up to it that matches is
        // left unread.
        let (head, page) = self
            .source
            .page(self.cursor, PAGE, self.types.as_deref())
            .await?;
        match page.last() {
            Some(last) => {
                self.cursor = last.position;
                self.pending.extend(page.into_iter().map(Pending::Read));
            }
            None => {
                self.cursor = self.cursor.max(head);
                if !self.source.from_replica() {
                    // Back to the replica once it answers again (after a fail-over).
                    self.source = self.s.read_pool.current();
                }
                if self.s.log.head() > self.cursor {
                    // This server trails what the primary announced (a replica): wait
                    // for it rather than skip to the shared tail.
                    self.source.wait_past(self.cursor, KEEP_ALIVE).await;
                } else {
                    self.behind = false;
                }
            }
        }
        Ok(())
    }

    /// What the shared tail gave.
    async fn take(&mut self, next: Next) {
        match next {
            Next::Batch(b) => {
                let matching: Vec<usize> = b.matching(self.cursor, self.types.as_deref()).collect();
                self.pending
                    .extend(matching.into_iter().map(|i| Pending::Shared(b.clone(), i)));
                self.cursor = b.to;
            }
            Next::Behind => self.behind = true,
            // Idle: only a head heard of but not broadcast (the tail busy or failing)
            // makes it read for itself.
            Next::Timeout => self.behind = self.s.log.head() > self.cursor,
            Next::Closed => {
                self.source.wait_past(self.cursor, KEEP_ALIVE).await;
                self.behind = true;
            }
        }
    }
}
