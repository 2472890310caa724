//! The Crypto IPN service's HTTP API (PEERS.md), outside `/v1` so its clients keep their
//! URLs: `GET|POST /btc?address=` → the address's totals, and `GET|POST /btc_ipn` with
//! `address`, `url`, `max_confirms` → `success`/`fail`, subscribing `url` to IPN
//! notifications of that address (a subscriber of format `ipn`, delivered and retried like
//! every webhook). Fields come from the query string or a form body. Both routes take the
//! API token or IPN_TOKEN (`Authorization: Bearer …`, or `?token=` for IPN_TOKEN).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use super::reads::Reader;
use super::subscribers::{create_subscriber, NewSubscriber, Start};
use super::AppState;
use crate::compat::ipn;

/// `Authorization: Bearer <API_TOKEN or IPN_TOKEN>`, or `?token=<IPN_TOKEN>`.
pub async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let from_query = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let ipn_token = s.ipn_token.as_deref().map(str::as_bytes);
    let ok = bearer.as_deref().is_some_and(|t| {
        super::constant_time_eq(t.as_bytes(), s.api_token.as_bytes())
            || ipn_token.is_some_and(|i| super::constant_time_eq(t.as_bytes(), i))
    }) || from_query
        .as_deref()
        .is_some_and(|t| ipn_token.is_some_and(|i| super::constant_time_eq(t.as_bytes(), i)));
    if ok {
        return next.run(req).await;
    }
    let message = if bearer.is_some() || from_query.is_some() {
        "the token is wrong"
    } else {
        "missing `Authorization: Bearer <token>` (the API token or IPN_TOKEN) or `?token=<IPN_TOKEN>`"
    };
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response()
}

/// The request's fields: the query string, then a form body (its fields win); a field
/// PostgreSQL could not store is refused by its name.
fn fields(query: Option<String>, body: &Bytes) -> Result<HashMap<String, String>, ApiError> {
    if let Some(q) = &query {
        super::text::check_form(q.as_bytes())?;
    }
    super::text::check_form(body)?;
    let mut fields: HashMap<String, String> = query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    fields.extend(url::form_urlencoded::parse(body).into_owned());
    fields.remove("token");
    Ok(fields)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Totals {
    address: String,
    /// BTC as a JSON number, as the original answers; `*_sats` are exact.
    confirmed: f64,
    unconfirmed: f64,
    confirmed_sats: u64,
    unconfirmed_sats: u64,
}

#[utoipa::path(get, path = "/btc", tag = "crypto-ipn",
    description = "GET with `address` in the query, or POST with it as a form field (the POST is documented from these parameters).",
    params(("address" = String, Query, description = "a watched address")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = Totals), (status = 400), (status = 404)),
    security(("bearer" = [])))]
/// `/btc`: `confirmed` is what the address's deposits credited (their account's credit
/// threshold reached, final included), `unconfirmed` the rest still standing (mempool
/// included).
pub async fn balance(
    State(s): State<AppState>,
    Reader(read): Reader,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<axum::Json<Totals>, ApiError> {
    let fields = fields(query, &body)?;
    let address = fields
        .get("address")
        .ok_or_else(|| ApiError::bad_request("invalid_address", "address: required"))?;
    let address = super::addresses::parse_address(&s, address)?.as_string();
    let sums = super::addresses::address_sums(read.pool(), &address).await?;
    let (confirmed, unconfirmed) = (sums.credited, sums.uncredited);
    Ok(axum::Json(Totals {
        address,
        confirmed: confirmed as f64 / 1e8,
        unconfirmed: unconfirmed as f64 / 1e8,
        confirmed_sats: confirmed,
        unconfirmed_sats: unconfirmed,
    }))
}

#[utoipa::path(get, path = "/btc_ipn", tag = "crypto-ipn",
    description = "GET with the fields in the query, or POST with them in a form body (the POST is documented from these parameters). Answers text `success` or `fail` (the reason in the `chainledger-error` header).",
    params(("address" = String, Query, description = "a watched address"),
           ("url" = String, Query, description = "where IPN notifications go"),
           ("max_confirms" = Option<u32>, Query, description = "default 3"),
           ("ipn_auth" = Option<String>, Query, description = "default IPN_AUTH, else random")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "success", content_type = "text/plain", body = String),
              (status = 400, description = "fail: a field that cannot be read", content_type = "text/plain", body = String),
              (status = 404, description = "fail: the address is not watched", content_type = "text/plain", body = String),
              (status = 422, description = "fail: a field out of range", content_type = "text/plain", body = String)),
    security(("bearer" = [])))]
/// `/btc_ipn`: `success` once `url` is subscribed to the address (again: already
/// subscribed with the same `max_confirms` is a success too, and identical calls racing
/// create one subscriber); else `fail`, with the reason in the `chainledger-error` header
/// and the log.
pub async fn subscribe(
    State(s): State<AppState>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let outcome = match fields(query, &body) {
        Ok(fields) => subscribe_fields(&s, &fields).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => (StatusCode::OK, plain("success")).into_response(),
        Err(e) => {
            let (status, message) = match &e {
                ApiError::Client {
                    status, message, ..
                } => (*status, message.clone()),
                ApiError::Internal(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
                }
            };
            if let ApiError::Internal(e) = &e {
                tracing::error!(error = format!("{e:#}"), "/btc_ipn failed");
            } else {
                tracing::info!(reason = %message, "/btc_ipn refused");
            }
            let mut resp = (status, plain("fail")).into_response();
            // A header value is visible ASCII: anything else (an address echoed back, `…`)
            // becomes `?` rather than losing the header.
            let ascii: String = message
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&ascii) {
                resp.headers_mut().insert("chainledger-error", v);
            }
            resp
        }
    }
}

fn plain(text: &'static str) -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text)
}

async fn subscribe_fields(s: &AppState, fields: &HashMap<String, String>) -> Result<(), ApiError> {
    let need = |name: &str| {
        fields
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::invalid_field(name, "required"))
    };
    let (address, url) = (need("address")?, need("url")?);
    let max_confirms = match fields.get("max_confirms").map(|v| v.trim()) {
        None | Some("") => ipn::DEFAULT_MAX_CONFIRMS,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| ApiError::invalid_field("max_confirms", "must be a whole number"))?,
    };
    let address = super::addresses::parse_address(s, &address)?.as_string();
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscribers s JOIN subscriber_cursors c USING (subscriber_id)
                          WHERE s.format = 'ipn' AND s.address = $1 AND s.url = $2
                            AND s.max_confirms = $3 AND c.status <> 'deleted') AS "exists!""#,
        address,
        url,
        max_confirms as i32
    )
    .fetch_one(&s.pool)
    .await?;
    if exists {
        return Ok(());
    }
    let ipn_auth = fields
        .get("ipn_auth")
        .cloned()
        .or_else(|| s.ipn_auth.as_deref().map(String::from));
    let made = create_subscriber(
        s,
        NewSubscriber {
            url: Some(url),
            format: Some("ipn".into()),
            address: Some(address),
            max_confirms: Some(max_confirms),
            ipn_auth,
            start: Some(Start::Named("now".into())),
            once_per_key: true,
            ..NewSubscriber::default()
        },
    )
    .await?;
    if let Some(view) = made {
        tracing::info!(subscriber = %view.id(), "IPN subscription made through /btc_ipn");
    }
    Ok(())
}
