//! Webhook subscribers: create (the secret is shown once, here), list, inspect, replay,
//! enable, delete, and the recent delivery attempts. Every change is a journal entry
//! (`projections::cursors::record`) in the same transaction as its effect.
//!
//! A subscriber has a format (`standard`, `cryptoassets`, `ipn`: [`crate::delivery::Format`])
//! and a target: a URL, or a command when the operator enabled script handlers.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::compat::{cryptoassets, ipn};
use crate::delivery::{script, sign, Format};
use crate::domain::events::TypeFilter;
use crate::projections::cursors::{self, Entry};
use crate::store;

#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Types {
    List(Vec<String>),
    Comma(String),
}

#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Start {
    /// `now` (default) or `beginning`.
    Named(String),
    /// Deliver from this position on.
    Position(i64),
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewSubscriber {
    /// http(s) URL; must resolve to public addresses unless WEBHOOK_ALLOW_NETS allows it.
    pub url: Option<String>,
    /// Instead of `url`: a script handler, `["/absolute/path", "arg", …]`, run once per
    /// event (only when the service runs with SCRIPT_HANDLERS=true).
    pub command: Option<Vec<String>>,
    /// `standard` (default), `cryptoassets` (txupdate form) or `ipn` (Crypto IPN).
    pub format: Option<String>,
    /// Event types, exact or `deposit.*` wildcards, as a list or a comma string.
    pub types: Option<Types>,
    /// Only events of this account (chain events carry no account and are skipped).
    pub account_id: Option<Uuid>,
    pub start: Option<Start>,
    /// ipn: the watched address whose deposits are notified (required).
    pub address: Option<String>,
    /// ipn: no notification for a deposit beyond this many confirmations (default 3).
    pub max_confirms: Option<u32>,
    /// ipn: the shared secret sent as `ipn_auth` (default: a random one, shown once).
    pub ipn_auth: Option<String>,
}

/// A subscriber as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct SubscriberView {
    id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
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

#[utoipa::path(post, path = "/v1/subscribers", tag = "webhooks", request_body = NewSubscriber,
    responses((status = 201, body = SubscriberView), (status = 403, description = "script handlers disabled"),
        (status = 422, description = "invalid field")),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<NewSubscriber>,
) -> Result<(StatusCode, axum::Json<SubscriberView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        axum::Json(create_subscriber(&s, body).await?),
    ))
}

/// Validates and creates a subscriber (also for `/btc_ipn`).
pub async fn create_subscriber(
    s: &AppState,
    body: NewSubscriber,
) -> Result<SubscriberView, ApiError> {
    let (url, command) = match (body.url.as_deref().map(str::trim), body.command) {
        (None, None) => return Err(ApiError::invalid_field("url", "required (or command)")),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "command",
                "give url or command, not both",
            ))
        }
        (Some(url), None) => {
            if url.len() > 2000 {
                return Err(ApiError::invalid_field(
                    "url",
                    "longer than 2000 characters",
                ));
            }
            s.webhook_guard
                .check_url(url)
                .await
                .map_err(|e| ApiError::invalid_field("url", e))?;
            (Some(url.to_string()), None)
        }
        (None, Some(command)) => {
            if !s.script_handlers {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "script_handlers_disabled",
                    "command: script handlers are disabled on this service (SCRIPT_HANDLERS=true enables them)",
                ));
            }
            script::check_command(&command).map_err(|e| ApiError::invalid_field("command", e))?;
            (None, Some(command))
        }
    };
    let format_name = body.format.as_deref().unwrap_or("standard");
    if !Format::NAMES.contains(&format_name) {
        return Err(ApiError::invalid_field(
            "format",
            format!("must be one of {}", Format::NAMES.join(", ")),
        ));
    }
    let ipn = format_name == "ipn";
    if !ipn {
        for (field, given) in [
            ("address", body.address.is_some()),
            ("max_confirms", body.max_confirms.is_some()),
            ("ipn_auth", body.ipn_auth.is_some()),
        ] {
            if given {
                return Err(ApiError::invalid_field(field, "only with format ipn"));
            }
        }
    }
    let spec = match &body.types {
        None => None,
        Some(Types::List(list)) => Some(list.join(",")),
        Some(Types::Comma(comma)) => Some(comma.clone()),
    };
    let filter =
        TypeFilter::parse(spec.as_deref()).map_err(|e| ApiError::invalid_field("types", e))?;
    let entries: Option<Vec<String>> = filter.as_ref().map(|_| {
        spec.as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect()
    });
    let expanded = filter.map(|f| f.expand());
    if format_name == "cryptoassets"
        && expanded.as_ref().is_some_and(|types| {
            !types
                .iter()
                .any(|t| cryptoassets::TYPES.contains(&t.as_str()))
        })
    {
        return Err(ApiError::invalid_field(
            "types",
            format!(
                "none of these becomes a cryptoassets txupdate ({})",
                cryptoassets::TYPES.join(", ")
            ),
        ));
    }
    let (address, max_confirms) = if ipn {
        if command.is_some() {
            return Err(ApiError::invalid_field(
                "command",
                "IPN notifications are acknowledged over HTTP: give a url",
            ));
        }
        for (field, given) in [
            ("types", body.types.is_some()),
            ("account_id", body.account_id.is_some()),
        ] {
            if given {
                return Err(ApiError::invalid_field(
                    field,
                    "not with format ipn (it follows one address)",
                ));
            }
        }
        let Some(address) = body.address.as_deref() else {
            return Err(ApiError::invalid_field(
                "address",
                "required with format ipn",
            ));
        };
        let address = super::accounts::parse_address(s, address)
            .map_err(|_| {
                ApiError::invalid_field("address", "not a valid address for this network")
            })?
            .as_string();
        let max_confirms = body.max_confirms.unwrap_or(ipn::DEFAULT_MAX_CONFIRMS);
        if !(1..=s.final_confirmations).contains(&max_confirms) {
            return Err(ApiError::invalid_field(
                "max_confirms",
                format!(
                    "must be between 1 and {} (FINAL_CONFIRMATIONS)",
                    s.final_confirmations
                ),
            ));
        }
        (Some(address), Some(max_confirms as i32))
    } else {
        (None, None)
    };
    let secret = if ipn {
        match body.ipn_auth {
            Some(a) if a.is_empty() || a.len() > 200 => {
                return Err(ApiError::invalid_field(
                    "ipn_auth",
                    "must be 1 to 200 characters",
                ))
            }
            Some(a) => a,
            None => hex::encode(rand::random::<[u8; 16]>()),
        }
    } else {
        sign::new_secret()
    };

    let mut tx = s.pool.begin().await?;
    if let Some(account) = body.account_id {
        let exists = sqlx::query_scalar!(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)",
            account
        )
        .fetch_one(&mut *tx)
        .await?;
        if exists != Some(true) {
            return Err(ApiError::invalid_field("account_id", "no such account"));
        }
    }
    if let Some(address) = &address {
        let watched = sqlx::query_scalar!(
            "SELECT EXISTS (SELECT 1 FROM addresses WHERE address = $1)",
            address
        )
        .fetch_one(&mut *tx)
        .await?;
        if watched != Some(true) {
            return Err(ApiError::invalid_field(
                "address",
                format!("{address} is not watched by any account (add it to one first)"),
            ));
        }
    }
    let head = sqlx::query_scalar!("SELECT position FROM log_head")
        .fetch_one(&mut *tx)
        .await?;
    let start = match &body.start {
        None => head,
        Some(Start::Named(n)) if n == "now" => head,
        Some(Start::Named(n)) if n == "beginning" => 0,
        Some(Start::Position(p)) if (0..=head + 1).contains(p) => (*p - 1).max(0),
        Some(Start::Position(_)) => {
            return Err(ApiError::invalid_field(
                "start",
                format!(
                    "a position must be between 0 and the head + 1 ({})",
                    head + 1
                ),
            ))
        }
        Some(Start::Named(_)) => {
            return Err(ApiError::invalid_field(
                "start",
                "must be \"now\", \"beginning\" or a position",
            ))
        }
    };
    let id = Uuid::new_v4();
    let created_at = sqlx::query_scalar!(
        r#"INSERT INTO subscribers (subscriber_id, url, command, format, types, types_spec,
                                    account_id, address, max_confirms, secret, start_position)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING created_at"#,
        id,
        url,
        command.as_deref(),
        format_name,
        expanded.as_deref(),
        entries.as_ref().map(|e| e.join(",")),
        body.account_id,
        address,
        max_confirms,
        secret,
        start
    )
    .fetch_one(&mut *tx)
    .await?;
    let state = cursors::record(&mut tx, &[(id, Entry::Created { start })]).await?;
    tx.commit().await?;
    s.wake_delivery.notify_one();
    tracing::info!(subscriber = %id, url, command = ?command, format = format_name,
        address, cursor = start, "subscriber created");
    let state = &state[0];
    Ok(SubscriberView {
        id,
        url,
        command,
        format: format_name.to_string(),
        types: entries,
        account_id: body.account_id,
        address,
        max_confirms,
        cursor: state.cursor,
        lag: head - state.cursor,
        status: state.status.to_string(),
        next_attempt_at: None,
        last_error: None,
        created_at,
        secret: Some(secret),
    })
}

#[utoipa::path(get, path = "/v1/subscribers", tag = "webhooks",
    responses((status = 200, body = SubscriberList)), security(("bearer" = [])))]
pub async fn list(State(s): State<AppState>) -> Result<axum::Json<SubscriberList>, ApiError> {
    Ok(axum::Json(SubscriberList {
        subscribers: views(&s, None).await?,
    }))
}

#[utoipa::path(get, path = "/v1/subscribers/{id}", tag = "webhooks",
    responses((status = 200, body = SubscriberView), (status = 404)), security(("bearer" = [])))]
pub async fn get_one(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<SubscriberView>, ApiError> {
    one(&s, id).await.map(axum::Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Deliver again from this position on (0 or 1: the whole log).
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
    let head = store::head(&s.pool).await?;
    if !(0..=head + 1).contains(&body.from_position) {
        return Err(ApiError::invalid_field(
            "from_position",
            format!("must be between 0 and the head + 1 ({})", head + 1),
        ));
    }
    let position = (body.from_position - 1).max(0);
    command(&s, id, Entry::Replay { position }).await?;
    one(&s, id).await.map(axum::Json)
}

#[utoipa::path(post, path = "/v1/subscribers/{id}/enable", tag = "webhooks",
    responses((status = 200, body = SubscriberView), (status = 404)), security(("bearer" = [])))]
pub async fn enable(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<SubscriberView>, ApiError> {
    command(&s, id, Entry::Enable).await?;
    one(&s, id).await.map(axum::Json)
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
/// the dispatcher.
async fn command(s: &AppState, id: Uuid, entry: Entry) -> Result<(), ApiError> {
    one(s, id).await?;
    let mut tx = s.pool.begin().await?;
    let state = cursors::record(&mut tx, &[(id, entry.clone())]).await?;
    tx.commit().await?;
    s.wake_delivery.notify_one();
    tracing::info!(subscriber = %id, command = ?entry, cursor = state[0].cursor,
        status = state[0].status, "subscriber changed");
    Ok(())
}

async fn one(s: &AppState, id: Uuid) -> Result<SubscriberView, ApiError> {
    views(s, Some(id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("subscriber_not_found", "no such subscriber"))
}

async fn views(s: &AppState, id: Option<Uuid>) -> Result<Vec<SubscriberView>, ApiError> {
    let rows = sqlx::query!(
        r#"SELECT s.subscriber_id, s.url, s.command, s.format, s.address, s.max_confirms,
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
    .fetch_all(&s.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| SubscriberView {
            id: r.subscriber_id,
            url: r.url,
            command: r.command,
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
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Attempt {
    position: i64,
    event_id: Uuid,
    attempt: i32,
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
    State(s): State<AppState>,
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
    one(&s, id).await?;
    let rows = sqlx::query!(
        r#"SELECT position AS "position!", event_id AS "event_id!", attempt AS "attempt!",
                  outcome AS "outcome!", status_code, error, latency_ms AS "latency_ms!",
                  next_attempt_at, recorded_at
           FROM delivery_attempts WHERE subscriber_id = $1 AND kind = 'attempt'
           ORDER BY n DESC LIMIT $2"#,
        id,
        limit
    )
    .fetch_all(&s.pool)
    .await?;
    Ok(axum::Json(Deliveries {
        deliveries: rows
            .into_iter()
            .map(|r| Attempt {
                position: r.position,
                event_id: r.event_id,
                attempt: r.attempt,
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
