//! `POST /v1/subscribers`: a subscriber's target, format, filter and start, checked and
//! created with its first journal entry (also for `/btc_ipn`).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::redis::{self, RedisSpec, RedisView};
use super::SubscriberView;
use crate::compat::{cryptoassets, ipn};
use crate::delivery::{script, sign, Format, RedisTarget};
use crate::domain::filter::TypeFilter;
use crate::http::error::ApiError;
use crate::http::extract::Json;
use crate::http::AppState;
use crate::projections::cursors::{self, Entry};

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
    /// One of `url`, `command` and `redis` is required.
    pub url: Option<String>,
    /// Instead of `url`: a script handler, `["/absolute/path", "arg", …]`, run once per
    /// event (only when the service runs with SCRIPT_HANDLERS=true).
    pub command: Option<Vec<String>>,
    /// Instead of `url`: a Redis stream each event is XADDed to (format standard only).
    pub redis: Option<RedisSpec>,
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
    /// Set by `/btc_ipn` only: create the subscriber only if no live one holds its
    /// (address, url, max_confirms) key (migrations/0008), atomically with the insert.
    #[serde(skip)]
    pub once_per_key: bool,
}

/// A subscriber as the API shows it.
#[utoipa::path(post, path = "/v1/subscribers", tag = "webhooks", request_body = NewSubscriber,
    responses((status = 201, body = SubscriberView), (status = 403, description = "script handlers disabled"),
        (status = 422, description = "invalid field")),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<NewSubscriber>,
) -> Result<(StatusCode, axum::Json<SubscriberView>), ApiError> {
    // `once_per_key` never comes from JSON (serde skip): this always creates one.
    let view = create_subscriber(&s, body).await?.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "no subscriber created without once_per_key"
        ))
    })?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Validates and creates a subscriber (also for `/btc_ipn`); `None` when `once_per_key`
/// found the key held by a live subscriber (nothing was created).
pub async fn create_subscriber(
    s: &AppState,
    mut body: NewSubscriber,
) -> Result<Option<SubscriberView>, ApiError> {
    let (url, command, redis) =
        target(s, body.url.take(), body.command.take(), body.redis.take()).await?;
    let format_name = body.format.as_deref().unwrap_or("standard");
    if !Format::NAMES.contains(&format_name) {
        return Err(ApiError::invalid_field(
            "format",
            format!("must be one of {}", Format::NAMES.join(", ")),
        ));
    }
    let ipn = format_name == "ipn";
    if redis.is_some() && format_name != "standard" {
        return Err(ApiError::invalid_field(
            "redis",
            "only with format standard (cryptoassets and ipn are HTTP forms)",
        ));
    }
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
    let filter = match &body.types {
        None => Ok(None),
        Some(Types::List(list)) => TypeFilter::parse_list(list),
        Some(Types::Comma(comma)) => TypeFilter::parse(Some(comma)),
    }
    .map_err(|e| ApiError::invalid_field("types", e))?;
    let entries: Option<Vec<String>> = filter.as_ref().map(|f| f.entries().to_vec());
    let expanded = filter.map(|f| f.expand());
    if format_name == "cryptoassets"
        && expanded.as_ref().is_some_and(|types| {
            !types
                .iter()
                .any(|t| cryptoassets::TYPES.iter().any(|c| c.as_str() == t))
        })
    {
        return Err(ApiError::invalid_field(
            "types",
            format!(
                "none of these becomes a cryptoassets txupdate ({})",
                cryptoassets::TYPES
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
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
        let address = crate::http::addresses::parse_address(s, address)
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
                                    account_id, address, max_confirms, secret, start_position,
                                    redis_url, redis_stream, redis_maxlen)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
           RETURNING created_at"#,
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
        start,
        redis.as_ref().map(|r| r.url.as_str()),
        redis.as_ref().map(|r| r.stream.as_str()),
        redis.as_ref().and_then(|r| r.maxlen).map(|n| n as i64)
    )
    .fetch_one(&mut *tx)
    .await?;
    let state = cursors::record(&mut tx, &[(id, Entry::Created { start })]).await?;
    if body.once_per_key {
        // Waits for a concurrent holder's transaction, then sees its key: no row.
        let holder = sqlx::query_scalar!(
            r#"INSERT INTO ipn_subscription_keys AS k (address, url, max_confirms, subscriber_id)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (address, url, max_confirms) DO UPDATE
                   SET subscriber_id = EXCLUDED.subscriber_id
                   WHERE EXISTS (SELECT 1 FROM subscriber_cursors c
                                 WHERE c.subscriber_id = k.subscriber_id AND c.status = 'deleted')
               RETURNING subscriber_id"#,
            address,
            url,
            max_confirms,
            id
        )
        .fetch_optional(&mut *tx)
        .await?;
        if holder.is_none() {
            return Ok(None); // the transaction rolls back: nothing was created
        }
    }
    tx.commit().await?;
    s.wake_delivery.notify_one();
    tracing::info!(subscriber = %id, url = url.as_deref().map(crate::redact::redact), command = ?command,
        redis = ?redis, format = format_name, address, cursor = start, "subscriber created");
    let state = &state[0].1;
    Ok(Some(SubscriberView {
        id,
        url,
        command,
        redis: redis
            .as_ref()
            .map(|r| RedisView::of(&r.url, &r.stream, r.maxlen)),
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
    }))
}

/// The one target given, checked: a URL (through the SSRF guard), a command (when script
/// handlers are enabled) or a Redis stream.
async fn target(
    s: &AppState,
    url: Option<String>,
    command: Option<Vec<String>>,
    redis: Option<RedisSpec>,
) -> Result<(Option<String>, Option<Vec<String>>, Option<RedisTarget>), ApiError> {
    match (url, command, redis) {
        (None, None, None) => Err(ApiError::invalid_field(
            "url",
            "required (or command, or redis)",
        )),
        (Some(_), Some(_), _) => Err(ApiError::invalid_field(
            "command",
            "give url or command, not both",
        )),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(ApiError::invalid_field(
            "redis",
            "give one of url, command and redis",
        )),
        (Some(url), None, None) => {
            let url = url.trim();
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
            Ok((Some(url.to_string()), None, None))
        }
        (None, Some(command), None) => {
            if !s.script_handlers {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "script_handlers_disabled",
                    "command: script handlers are disabled on this service (SCRIPT_HANDLERS=true enables them)",
                ));
            }
            script::check_command(&command).map_err(|e| ApiError::invalid_field("command", e))?;
            Ok((None, Some(command), None))
        }
        (None, None, Some(spec)) => Ok((
            None,
            None,
            Some(redis::check(&s.webhook_guard, spec).await?),
        )),
    }
}
