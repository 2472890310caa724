//! `POST /v1/subscribers/{id}/rotate-secret` `{"keep_old_for_secs"}`: a new signing secret,
//! shown once in the answer; the old one stays valid for `keep_old_for_secs` (default one
//! day), during which every delivery carries a signature with each, so a receiver can
//! switch to the new secret whenever it likes without one failed verification.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::one;
use crate::delivery::sign;
use crate::http::error::ApiError;
use crate::http::extract::{Json, Path};
use crate::http::AppState;

/// At most a week of two valid secrets.
const MAX_KEEP_SECS: u32 = 7 * 24 * 3600;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old secret stays valid (seconds; default 86400, at most 604800; 0:
    /// not at all).
    #[schema(minimum = 0, maximum = 604800)]
    keep_old_for_secs: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Rotated {
    id: Uuid,
    /// The new signing secret: shown here only, never again.
    secret: String,
    /// Until when deliveries are also signed with the old secret (null: not at all).
    previous_secret_expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(post, path = "/v1/subscribers/{id}/rotate-secret", tag = "webhooks", request_body = Rotate,
    responses((status = 200, body = Rotated), (status = 404), (status = 422, description = "an ipn subscriber (its ipn_auth is sent, not signed with), or keep_old_for_secs too long")),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<Rotate>,
) -> Result<axum::Json<Rotated>, ApiError> {
    let keep = body.keep_old_for_secs.unwrap_or(86_400);
    if keep > MAX_KEEP_SECS {
        return Err(ApiError::invalid_field(
            "keep_old_for_secs",
            format!("at most {MAX_KEEP_SECS} (a week)"),
        ));
    }
    let view = one(&s.pool, id).await?;
    if view.format == "ipn" {
        return Err(ApiError::invalid_field(
            "format",
            "an ipn subscriber's secret is its ipn_auth, sent as is: create a new subscription instead",
        ));
    }
    let secret = sign::new_secret();
    // Appended (subscribers and their secrets are append-only): the newest rotation signs,
    // with its previous secret beside it until `previous_valid_until`.
    let expires = sqlx::query_scalar!(
        r#"INSERT INTO subscriber_secrets
               (subscriber_id, rotation, secret, previous_secret, previous_valid_until)
           SELECT s.subscriber_id, COALESCE(r.rotation, 0) + 1, $2, COALESCE(r.secret, s.secret),
                  now() + $3::float8 * interval '1 second'
           FROM subscribers s
           LEFT JOIN LATERAL (
               SELECT rotation, secret FROM subscriber_secrets x
               WHERE x.subscriber_id = s.subscriber_id ORDER BY rotation DESC LIMIT 1
           ) r ON true
           WHERE s.subscriber_id = $1
           RETURNING previous_valid_until"#,
        id,
        secret,
        f64::from(keep)
    )
    .fetch_one(&s.pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::conflict(
            "concurrent_update",
            "another rotation of this subscriber came first; retry",
        ),
        _ => e.into(),
    })?;
    let expires = (keep > 0).then_some(expires);
    tracing::info!(subscriber = %id, keep_old_for_secs = keep, "subscriber secret rotated");
    s.wake_delivery.notify_one();
    Ok(axum::Json(Rotated {
        id,
        secret,
        previous_secret_expires_at: expires,
    }))
}
