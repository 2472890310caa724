//! `POST /v1/subscribers/{id}/redeliver` `{"position"}`: the event at `position` sent to the
//! subscriber once more, now, whatever its cursor and status (the dashboard's "redeliver"
//! button; a disabled subscriber's receiver can be tried before it is enabled). The attempt
//! is journaled as a `redelivery`, which changes no cursor, and answered. The request
//! names the event delivered before it, as every delivery does.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::one;
use crate::delivery::{dispatcher, render, Subscriber};
use crate::domain::stream::Position;
use crate::http::error::ApiError;
use crate::http::extract::{Json, Path};
use crate::http::AppState;
use crate::projections::cursors::{self, Entry};
use crate::store;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeliver {
    /// The event to send again: one the subscriber's filter matches, at most the head.
    #[schema(minimum = 1)]
    position: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Redelivery {
    position: i64,
    event_id: Uuid,
    /// delivered, failed or gone (a 410 answer: the subscriber is not disabled by it).
    outcome: String,
    status_code: Option<u16>,
    error: Option<String>,
    latency_ms: i32,
}

#[utoipa::path(post, path = "/v1/subscribers/{id}/redeliver", tag = "webhooks", request_body = Redeliver,
    responses((status = 200, body = Redelivery, description = "the attempt, whatever its outcome"), (status = 404),
        (status = 422, description = "no event at that position, or not one this subscriber gets")),
    security(("bearer" = [])))]
pub async fn redeliver(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<Redeliver>,
) -> Result<axum::Json<Redelivery>, ApiError> {
    one(&s.pool, id).await?;
    let sub = Subscriber::load(&s.pool, id).await?.ok_or_else(|| {
        ApiError::not_found("subscriber_not_found", format!("no subscriber {id}"))
    })?;
    let position = body.position;
    let head = store::head(&s.pool).await?.0;
    if !(1..=head).contains(&position) {
        return Err(ApiError::invalid_field(
            "position",
            format!("must be between 1 and the head ({head})"),
        ));
    }
    let event = store::read_after(&s.pool, Position(position - 1), 1, None)
        .await?
        .pop()
        .filter(|e| e.position.0 == position && sub.matches(e));
    let Some(event) = event else {
        return Err(ApiError::invalid_field(
            "position",
            "not an event this subscriber gets (its types, account or address)",
        ));
    };
    let Some(message) = render::render(&s.pool, s.credit_confirmations, &sub, &event).await? else {
        return Err(ApiError::invalid_field(
            "position",
            "this subscriber's format does not deliver that event",
        ));
    };
    let state = dispatcher::load_state(&s.pool, id).await?;
    let previous = dispatcher::last_delivered(&s.pool, id, position - 1).await?;
    let attempt = s
        .transport
        .send(&sub, &event, message, state.epoch, 1, previous)
        .await;
    let answer = match &attempt {
        Entry::Attempt {
            status_code,
            error,
            latency_ms,
            outcome,
            ..
        } => Redelivery {
            position,
            event_id: event.id,
            outcome: outcome.as_str().to_string(),
            status_code: *status_code,
            error: error.clone(),
            latency_ms: *latency_ms,
        },
        other => return Err(anyhow::anyhow!("a send gave {other:?}").into()),
    };
    let mut tx = s.pool.begin().await?;
    cursors::record(&mut tx, &[(id, Entry::Redelivery(Box::new(attempt)))]).await?;
    tx.commit().await?;
    tracing::info!(subscriber = %id, position, outcome = %answer.outcome, "event redelivered");
    Ok(axum::Json(answer))
}
