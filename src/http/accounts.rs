//! Accounts: `POST /v1/accounts` (through the unit of work: `account.created` and a
//! derived account's first window of `address.watched`), the account and its balance.
//! Its addresses are [`super::addresses`].

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path};
use super::reads::Reader;
use super::AppState;
use crate::domain::account;
use crate::domain::amount::signed_btc_string;
use crate::domain::descriptor::{AccountDescriptor, DEFAULT_LOOKAHEAD, MAX_LOOKAHEAD};
use crate::domain::stream::Position;
use crate::projections::{self, read};
use crate::unit_of_work::{Decided, RecordError};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// 1 to 200 characters, not all white space (which is trimmed off).
    #[schema(min_length = 1, max_length = 200)]
    label: String,
    /// Defaults to CREDIT_CONFIRMATIONS; at most FINAL_CONFIRMATIONS.
    #[schema(minimum = 1)]
    credit_confirmations: Option<u32>,
    /// A BIP32 xpub/tpub: the account derives its addresses (with `derivation`, default
    /// `0/*`, and `script_type`: p2pkh (default), p2wpkh, p2sh-p2wpkh, p2tr).
    xpub: Option<String>,
    derivation: Option<String>,
    script_type: Option<String>,
    /// An output descriptor with one wildcard, e.g. `wpkh(tpub…/0/*)` (instead of `xpub`).
    descriptor: Option<String>,
    /// Derived addresses watched past the highest handed out or paid (default 20; 1 to
    /// 1000).
    #[schema(minimum = 1, maximum = 1000)]
    lookahead: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct Account {
    id: Uuid,
    label: String,
    credit_confirmations: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    descriptor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lookahead: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct AccountWithAddresses {
    id: Uuid,
    label: String,
    credit_confirmations: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    descriptor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lookahead: Option<u32>,
    /// Derived accounts: indexes below this were handed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    handed_out: Option<u32>,
    addresses: Vec<String>,
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = NewAccount,
    responses((status = 201, body = Account), (status = 422, description = "invalid field")),
    security(("bearer" = [])))]
pub async fn create_account(
    State(s): State<AppState>,
    Json(body): Json<NewAccount>,
) -> Result<(StatusCode, axum::Json<Account>), ApiError> {
    // At most 200 characters as sent (the document's maxLength), and not blank once
    // trimmed.
    let label = body.label.trim().to_string();
    if label.is_empty() || body.label.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "label",
            "must be 1 to 200 characters",
        ));
    }
    let credit_confirmations = body.credit_confirmations.unwrap_or(s.credit_confirmations);
    if credit_confirmations == 0 || credit_confirmations > s.final_confirmations {
        return Err(ApiError::invalid_field(
            "credit_confirmations",
            format!(
                "must be between 1 and FINAL_CONFIRMATIONS ({})",
                s.final_confirmations
            ),
        ));
    }
    let network = s.network.bitcoin();
    let descriptor = match (&body.xpub, &body.descriptor) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "descriptor",
                "give xpub or descriptor, not both",
            ))
        }
        (Some(xpub), None) => Some(
            AccountDescriptor::from_xpub(
                xpub,
                body.derivation.as_deref(),
                body.script_type.as_deref(),
                network,
            )
            .map_err(|e| ApiError::invalid_field("xpub", e))?,
        ),
        (None, Some(d)) => Some(
            AccountDescriptor::parse(d, network)
                .map_err(|e| ApiError::invalid_field("descriptor", e))?,
        ),
        (None, None) => {
            if body.derivation.is_some() || body.script_type.is_some() || body.lookahead.is_some() {
                return Err(ApiError::invalid_field(
                    "xpub",
                    "derivation, script_type and lookahead need an xpub or a descriptor",
                ));
            }
            None
        }
    };
    let lookahead = body.lookahead.unwrap_or(DEFAULT_LOOKAHEAD);
    if !(1..=MAX_LOOKAHEAD).contains(&lookahead) {
        return Err(ApiError::invalid_field(
            "lookahead",
            format!("must be between 1 and {MAX_LOOKAHEAD}"),
        ));
    }
    let id = Uuid::new_v4();
    let metadata = json!({"source": "api"});
    let events = account::create(
        id,
        label.clone(),
        credit_confirmations,
        descriptor.as_ref().map(|d| (d, lookahead)),
        &metadata,
    )
    .map_err(|e| ApiError::invalid_field("descriptor", e))?;
    s.unit_of_work
        .record(Decided(events))
        .await
        .map_err(address_taken)?;
    tracing::info!(account_id = %id, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(Account {
            id,
            label,
            credit_confirmations,
            descriptor: descriptor.as_ref().map(|d| d.canonical()),
            lookahead: descriptor.as_ref().map(|_| lookahead),
        }),
    ))
}

/// An account row, or 404 `account_not_found`.
pub(super) async fn find_account(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<read::AccountRow, ApiError> {
    read::account(conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("account_not_found", format!("no account {id}")))
}

/// A unique-key violation on addresses: someone watches that address already.
pub(super) fn address_taken(e: RecordError) -> ApiError {
    if let RecordError::Database(db) = &e {
        if let Some("addresses_pkey") | Some("addresses_script_pubkey_key") =
            db.as_database_error().and_then(|d| d.constraint())
        {
            return ApiError::conflict(
                "address_taken",
                "an address of this request is already watched (by another account)",
            );
        }
    }
    e.into()
}

#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, body = AccountWithAddresses), (status = 404)), security(("bearer" = [])))]
pub async fn get_account(
    Reader(read): Reader,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<AccountWithAddresses>, ApiError> {
    let mut conn = read.pool().acquire().await?;
    let a = find_account(&mut conn, id).await?;
    let addresses = sqlx::query_scalar!(
        "SELECT address FROM addresses WHERE account_id = $1 ORDER BY position",
        id
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(axum::Json(AccountWithAddresses {
        id,
        label: a.label,
        credit_confirmations: a.credit_confirmations as u32,
        handed_out: a.descriptor.as_ref().map(|_| a.handed_out as u32),
        descriptor: a.descriptor,
        lookahead: a.lookahead.map(|l| l as u32),
        addresses,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Balance {
    account_id: Uuid,
    credited: String,
    pending: String,
    unconfirmed: String,
    /// Below zero when withdrawals spent deposits not credited yet.
    credited_sats: i64,
    pending_sats: i64,
    unconfirmed_sats: i64,
    /// The log position the balance reflects.
    #[schema(value_type = i64)]
    as_of_position: Position,
}

#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, body = Balance), (status = 404)), security(("bearer" = [])))]
pub async fn balance(
    Reader(read): Reader,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Balance>, ApiError> {
    let mut tx = read.pool().begin().await?;
    find_account(&mut tx, id).await?;
    let row = sqlx::query!(
        "SELECT credited_sats, pending_sats, unconfirmed_sats FROM balances WHERE account_id = $1",
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let as_of_position = projections::checkpoint(&mut tx).await?;
    let (c, p, u) = row.map_or((0, 0, 0), |r| {
        (r.credited_sats, r.pending_sats, r.unconfirmed_sats)
    });
    Ok(axum::Json(Balance {
        account_id: id,
        credited: signed_btc_string(c),
        pending: signed_btc_string(p),
        unconfirmed: signed_btc_string(u),
        credited_sats: c,
        pending_sats: p,
        unconfirmed_sats: u,
        as_of_position,
    }))
}
