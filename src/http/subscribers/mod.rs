//! Webhook subscribers: create (the secret is shown once, here), list, inspect, replay,
//! enable, delete, and the recent delivery attempts. Every change is a journal entry
//! (`projections::cursors::record`) in the same transaction as its effect.
//!
//! A subscriber has a format (`standard`, `cryptoassets`, `ipn`: [`crate::delivery::Format`])
//! and a target: a URL, a command when the operator enabled script handlers, or a Redis
//! stream ([`redis`]).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::reads::Reader;
use super::AppState;
use crate::delivery::operational;
use crate::projections::cursors::{self, Entry};
use crate::store;
use sqlx::PgPool;

mod create;
mod redeliver;
mod redis;
mod rotate;
pub(super) use create::__path_create;
pub use create::{create, create_subscriber, NewSubscriber, Start};
pub(super) use redeliver::{__path_redeliver, redeliver};
pub(super) use rotate::{__path_rotate_secret, rotate_secret};

#[derive(Serialize, ToSchema)]
pub struct SubscriberView {
    id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    /// A Redis stream target; its URL's password is never shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<redis::RedisView>,
    format: String,
    types: Option<Vec<String>>,
    account_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_confirms: Option<i32>,
    /// Every matching event up to this position has been delivered.
    cursor: i64,
    /// Positions between the cursor and the log's head.
    lag: i64,
    /// active, retrying or disabled.
    status: String,
    next_attempt_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    /// Only in the answer to the creation, never shown again: the signing key (standard,
    /// cryptoassets) or the `ipn_auth` secret (ipn).
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl SubscriberView {
    pub fn id(&self) -> Uuid {
        self.id
    }
}

#[derive(Serialize, ToSchema)]
pub struct SubscriberList {
    subscribers: Vec<SubscriberView>,
}

#[utoipa::path(get, path = "/v1/subscribers", tag = "webhooks",
    responses((status = 200, body = SubscriberList)), security(("bearer" = [])))]
pub async fn list(Reader(read): Reader) -> Result<axum::Json<SubscriberList>, ApiError> {
    Ok(axum::Json(SubscriberList {
        subscribers: views(read.pool(), None).await?,
    }))
}

#[utoipa::path(get, path = "/v1/subscribers/{id}", tag = "webhooks",
    responses((status = 200, body = SubscriberView), (status = 404)), security(("bearer" = [])))]
pub async fn get_one(
    Reader(read): Reader,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<SubscriberView>, ApiError> {
    one(read.pool(), id).await.map(axum::Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Deliver again from this position on (0 or 1: the whole log), at most the head + 1.
    #[schema(minimum = 0)]
    from_position: i64,
}

#[utoipa::path(post, path = "/v1/subscribers/{id}/replay", tag = "webhooks", request_body = Replay,
    responses((status = 200, body = SubscriberView), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn replay(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<Replay>,
) -> Result<axum::Json<SubscriberView>, ApiError> {
    let head = store::head(&s.pool).await?.0;
    if !(0..=head + 1).contains(&body.from_position) {
        return Err(ApiError::invalid_field(
            "from_position",
            format!("must be between 0 and the head + 1 ({})", head + 1),
        ));
    }
    let position = (body.from_position - 1).max(0);
    command(&s, id, Entry::Replay { position }).await?;
    one(&s.pool, id).await.map(axum::Json)
}

#[utoipa::path(post, path = "/v1/subscribers/{id}/enable", tag = "webhooks",
    responses((status = 200, body = SubscriberView), (status = 404)), security(("bearer" = [])))]
pub async fn enable(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<SubscriberView>, ApiError> {
    command(&s, id, Entry::Enable).await?;
    one(&s.pool, id).await.map(axum::Json)
}

#[utoipa::path(delete, path = "/v1/subscribers/{id}", tag = "webhooks",
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    command(&s, id, Entry::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Journals a command for a live subscriber (404 for an unknown or deleted one) and wakes
/// the dispatcher; an enable of a disabled one is also a `subscriber.enabled` event, in
/// the same transaction.
async fn command(s: &AppState, id: Uuid, entry: Entry) -> Result<(), ApiError> {
    one(&s.pool, id).await?;
    let mut tx = s.pool.begin().await?;
    let entries = [(id, entry.clone())];
    let folds = cursors::record(&mut tx, &entries).await?;
    operational::append(
        &s.unit_of_work,
        &mut tx,
        operational::of_all(&entries, &folds),
    )
    .await?;
    tx.commit().await?;
    s.wake_delivery.notify_one();
    let state = &folds[0].1;
    tracing::info!(subscriber = %id, command = ?entry, cursor = state.cursor,
        status = state.status, "subscriber changed");
    Ok(())
}

async fn one(pool: &PgPool, id: Uuid) -> Result<SubscriberView, ApiError> {
    views(pool, Some(id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("subscriber_not_found", "no such subscriber"))
}

async fn views(pool: &PgPool, id: Option<Uuid>) -> Result<Vec<SubscriberView>, ApiError> {
    let rows = sqlx::query!(
        r#"SELECT s.subscriber_id, s.url, s.command, s.redis_url, s.redis_stream, s.redis_maxlen,
                  s.format, s.address, s.max_confirms,
                  s.types_spec, s.account_id, s.created_at,
                  c.cursor, c.status, c.next_attempt_at,
                  (SELECT position FROM log_head) AS "head!",
                  (SELECT a.error FROM delivery_attempts a
                    WHERE a.subscriber_id = s.subscriber_id AND a.kind = 'attempt'
                    ORDER BY a.n DESC LIMIT 1) AS last_error
           FROM subscribers s JOIN subscriber_cursors c USING (subscriber_id)
           WHERE c.status <> 'deleted' AND ($1::uuid IS NULL OR s.subscriber_id = $1)
           ORDER BY s.created_at, s.subscriber_id"#,
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SubscriberView {
            id: r.subscriber_id,
            url: r.url,
            command: r.command,
            redis: r.redis_url.zip(r.redis_stream).map(|(url, stream)| {
                redis::RedisView::of(&url, &stream, r.redis_maxlen.map(|n| n.max(1) as u64))
            }),
            format: r.format,
            address: r.address,
            max_confirms: r.max_confirms,
            types: r
                .types_spec
                .map(|t| t.split(',').map(String::from).collect()),
            account_id: r.account_id,
            cursor: r.cursor,
            lag: (r.head - r.cursor).max(0),
            status: r.status,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
            secret: None,
        })
        .collect())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// At most 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Attempt {
    position: i64,
    event_id: Uuid,
    attempt: i32,
    /// An operator's redelivery (`POST …/redeliver`): it changed no cursor.
    redelivery: bool,
    /// delivered, failed or gone.
    outcome: String,
    status_code: Option<i32>,
    error: Option<String>,
    latency_ms: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    attempted_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    /// Newest first.
    deliveries: Vec<Attempt>,
}

#[utoipa::path(get, path = "/v1/subscribers/{id}/deliveries", tag = "webhooks",
    params(DeliveriesQuery), responses((status = 200, body = Deliveries), (status = 404)),
    security(("bearer" = [])))]
pub async fn deliveries(
    Reader(read): Reader,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<axum::Json<Deliveries>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit: must be between 1 and 1000",
        ));
    }
    one(read.pool(), id).await?;
    let rows = sqlx::query!(
        r#"SELECT position AS "position!", event_id AS "event_id!", attempt AS "attempt!",
                  outcome AS "outcome!", status_code, error, latency_ms AS "latency_ms!",
                  next_attempt_at, recorded_at, kind = 'redelivery' AS "redelivery!"
           FROM delivery_attempts
           WHERE subscriber_id = $1 AND kind IN ('attempt', 'redelivery')
           ORDER BY n DESC LIMIT $2"#,
        id,
        limit
    )
    .fetch_all(read.pool())
    .await?;
    Ok(axum::Json(Deliveries {
        deliveries: rows
            .into_iter()
            .map(|r| Attempt {
                position: r.position,
                event_id: r.event_id,
                attempt: r.attempt,
                redelivery: r.redelivery,
                outcome: r.outcome,
                status_code: r.status_code,
                error: r.error,
                latency_ms: r.latency_ms,
                next_attempt_at: r.next_attempt_at,
                attempted_at: r.recorded_at,
            })
            .collect(),
    }))
}
