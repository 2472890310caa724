//! Accounts and their watched addresses: the commands that append `account.created` and
//! `address.watched`, and the balance queries.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path};
use super::AppState;
use crate::chain::lookahead;
use crate::domain::amount::signed_btc_string;
use crate::domain::descriptor::{AccountDescriptor, DEFAULT_LOOKAHEAD, MAX_LOOKAHEAD};
use crate::domain::events::{self, NewEvent};
use crate::domain::{AddressError, Sats, WatchedAddress};
use crate::{projections, store};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    label: String,
    /// Defaults to CREDIT_CONFIRMATIONS; at most FINAL_CONFIRMATIONS.
    credit_confirmations: Option<u32>,
    /// A BIP32 xpub/tpub: the account derives its addresses (with `derivation`, default
    /// `0/*`, and `script_type`: p2pkh (default), p2wpkh, p2sh-p2wpkh, p2tr).
    xpub: Option<String>,
    derivation: Option<String>,
    script_type: Option<String>,
    /// An output descriptor with one wildcard, e.g. `wpkh(tpub…/0/*)` (instead of `xpub`).
    descriptor: Option<String>,
    /// Derived addresses watched past the highest handed out or paid (default 20).
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
    let label = body.label.trim().to_string();
    if label.is_empty() || label.chars().count() > 200 {
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
    let mut data =
        json!({"account_id": id, "label": label, "credit_confirmations": credit_confirmations});
    let mut batch = Vec::new();
    let metadata = json!({"source": "api"});
    if let Some(d) = &descriptor {
        data["descriptor"] = json!(d.canonical());
        data["lookahead"] = json!(lookahead);
    }
    batch.push(NewEvent {
        stream: events::account_stream(id),
        expected_version: None,
        kind: events::ACCOUNT_CREATED,
        data,
        metadata: metadata.clone(),
    });
    if let Some(d) = &descriptor {
        let (window, _) = lookahead::window_events(id, d, 0, lookahead as i32, 0, &metadata)
            .map_err(|e| ApiError::invalid_field("descriptor", e))?;
        batch.extend(window);
    }
    let mut tx = s.pool.begin().await?;
    let stored = store::append(&mut tx, &batch).await?;
    projections::apply(&mut tx, &stored)
        .await
        .map_err(address_taken)?;
    tx.commit().await?;
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

struct AccountRow {
    label: String,
    credit_confirmations: i32,
    stream_version: i32,
    descriptor: Option<String>,
    lookahead: Option<i32>,
    watched_to: i32,
    handed_out: i32,
}

async fn find_account(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<AccountRow, ApiError> {
    let row = if lock {
        sqlx::query_as!(
            AccountRow,
            "SELECT label, credit_confirmations, stream_version, descriptor, lookahead, watched_to, handed_out
             FROM accounts WHERE account_id = $1 FOR UPDATE",
            id
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_as!(
            AccountRow,
            "SELECT label, credit_confirmations, stream_version, descriptor, lookahead, watched_to, handed_out
             FROM accounts WHERE account_id = $1",
            id
        )
            .fetch_optional(&mut *conn)
            .await?
    };
    row.ok_or_else(|| ApiError::not_found("account_not_found", format!("no account {id}")))
}

#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, body = AccountWithAddresses), (status = 404)), security(("bearer" = [])))]
pub async fn get_account(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<AccountWithAddresses>, ApiError> {
    let mut conn = s.pool.acquire().await?;
    let a = find_account(&mut conn, id, false).await?;
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
    as_of_position: i64,
}

#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts", params(("id" = Uuid, Path)),
    responses((status = 200, body = Balance), (status = 404)), security(("bearer" = [])))]
pub async fn balance(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Balance>, ApiError> {
    let mut tx = s.pool.begin().await?;
    find_account(&mut tx, id, false).await?;
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAddress {
    /// The address to watch; or, for an account with a descriptor, `derive`.
    address: Option<String>,
    /// `true`: hand out the account's next unused derived address.
    derive: Option<bool>,
    /// Also read past blocks from this height (up to the synced tip) for deposits to the
    /// address, in the background; progress in `GET /v1/status`.
    rescan_from_height: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct RescanStarted {
    id: i64,
    from_height: u32,
    to_height: u32,
}

#[derive(Serialize, ToSchema)]
pub struct WatchedAddressOut {
    address: String,
    account_id: Uuid,
    script_pubkey: String,
    /// The derivation index, for derived addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    /// The rescan started for `rescan_from_height`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rescan: Option<RescanStarted>,
}

#[utoipa::path(post, path = "/v1/accounts/{id}/addresses", tag = "accounts", params(("id" = Uuid, Path)),
    request_body = NewAddress,
    responses((status = 201, body = WatchedAddressOut), (status = 400, description = "invalid_address"),
              (status = 404, description = "account_not_found"), (status = 409, description = "address_taken")),
    security(("bearer" = [])))]
pub async fn add_address(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<NewAddress>,
) -> Result<(StatusCode, axum::Json<WatchedAddressOut>), ApiError> {
    if body.rescan_from_height.is_some() && body.derive == Some(true) {
        return Err(ApiError::invalid_field(
            "rescan_from_height",
            "rescans are for an address given here, not a derived one",
        ));
    }
    let address = match (body.address.as_deref(), body.derive) {
        (Some(_), Some(true)) => {
            return Err(ApiError::invalid_field(
                "derive",
                "give address or derive, not both",
            ))
        }
        (None, Some(true)) => return hand_out(&s, id).await,
        (Some(a), _) => a,
        (None, _) => {
            return Err(ApiError::invalid_field(
                "address",
                "required (or \"derive\": true)",
            ))
        }
    };
    let parsed = parse_address(&s, address)?;
    let address = parsed.as_string();
    let script = parsed.script_pubkey();
    let mut tx = s.pool.begin().await?;
    // Serialises commands on this account, so the expected version below holds.
    let account = find_account(&mut tx, id, true).await?;
    let taken = sqlx::query_scalar!(
        "SELECT address FROM addresses WHERE address = $1 OR script_pubkey = $2",
        address,
        script.as_bytes()
    )
    .fetch_optional(&mut *tx)
    .await?;
    if taken.is_some() {
        return Err(ApiError::conflict(
            "address_taken",
            format!("{address} is already watched"),
        ));
    }
    let script_hex = hex::encode(script.as_bytes());
    let event = NewEvent {
        stream: events::account_stream(id),
        expected_version: Some(account.stream_version),
        kind: events::ADDRESS_WATCHED,
        data: json!({"account_id": id, "address": address, "script_pubkey": script_hex}),
        metadata: json!({"source": "api"}),
    };
    let stored = store::append(&mut tx, &[event]).await?;
    projections::apply(&mut tx, &stored)
        .await
        .map_err(address_taken)?;
    let rescan = match body.rescan_from_height {
        None => None,
        Some(from) => {
            // Under the log lock the append took: the follower handles every block after
            // this tip with the address watched; the rescan reads the ones up to it.
            let tip = sqlx::query_scalar!("SELECT max(height) FROM chain_blocks")
                .fetch_one(&mut *tx)
                .await?
                .ok_or_else(|| {
                    ApiError::invalid_field("rescan_from_height", "no block is synced yet")
                })? as u32;
            if from > tip {
                return Err(ApiError::invalid_field(
                    "rescan_from_height",
                    format!("above the synced tip ({tip}); later blocks are followed anyway"),
                ));
            }
            let rescan_id = sqlx::query_scalar!(
                "INSERT INTO rescans (account_id, address, from_height, to_height, next_height, status)
                 VALUES ($1, $2, $3, $4, $3, 'running') RETURNING rescan_id",
                id,
                address,
                from as i32,
                tip as i32
            )
            .fetch_one(&mut *tx)
            .await?;
            Some(RescanStarted {
                id: rescan_id,
                from_height: from,
                to_height: tip,
            })
        }
    };
    tx.commit().await?;
    if rescan.is_some() {
        s.wake_rescans.notify_one();
    }
    tracing::info!(account_id = %id, %address, rescan = ?rescan.as_ref().map(|r| r.id), "address watched");
    Ok((
        StatusCode::CREATED,
        axum::Json(WatchedAddressOut {
            address,
            account_id: id,
            script_pubkey: script_hex,
            index: None,
            rescan,
        }),
    ))
}

/// A unique-key violation on addresses: someone watches that address already.
fn address_taken(e: sqlx::Error) -> ApiError {
    match e.as_database_error().and_then(|d| d.constraint()) {
        Some("addresses_pkey") | Some("addresses_script_pubkey_key") => ApiError::conflict(
            "address_taken",
            "an address of this request is already watched (by another account)",
        ),
        _ => e.into(),
    }
}

fn account_descriptor(s: &AppState, a: &AccountRow) -> Result<AccountDescriptor, ApiError> {
    let d = a.descriptor.as_deref().ok_or_else(|| {
        ApiError::invalid_field(
            "derive",
            "this account has no xpub or descriptor to derive from",
        )
    })?;
    AccountDescriptor::parse(d, s.network.bitcoin())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored descriptor: {e}")))
}

/// `{"derive": true}`: the next index never handed out; its address is watched (the window
/// moves `lookahead` past it) and `address.handed_out` records it.
async fn hand_out(
    s: &AppState,
    id: Uuid,
) -> Result<(StatusCode, axum::Json<WatchedAddressOut>), ApiError> {
    let mut tx = s.pool.begin().await?;
    let account = find_account(&mut tx, id, true).await?;
    let descriptor = account_descriptor(s, &account)?;
    let index = account.handed_out;
    let derived = descriptor
        .derive(index as u32)
        .map_err(|e| ApiError::invalid_field("derive", e))?;
    let metadata = json!({"source": "api"});
    let need = index + 1 + account.lookahead.unwrap_or(DEFAULT_LOOKAHEAD as i32);
    let (mut batch, version) = lookahead::window_events(
        id,
        &descriptor,
        account.watched_to,
        need,
        account.stream_version,
        &metadata,
    )
    .map_err(|e| ApiError::invalid_field("derive", e))?;
    batch.push(NewEvent {
        stream: events::account_stream(id),
        expected_version: Some(version),
        kind: events::ADDRESS_HANDED_OUT,
        data: json!({"account_id": id, "address": derived.address, "index": index}),
        metadata,
    });
    let stored = store::append(&mut tx, &batch).await?;
    projections::apply(&mut tx, &stored)
        .await
        .map_err(address_taken)?;
    tx.commit().await?;
    tracing::info!(account_id = %id, index, address = %derived.address, "address handed out");
    Ok((
        StatusCode::CREATED,
        axum::Json(WatchedAddressOut {
            address: derived.address,
            account_id: id,
            script_pubkey: hex::encode(derived.script_pubkey.as_bytes()),
            index: Some(index as u32),
            rescan: None,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct DerivedAddress {
    account_id: Uuid,
    index: u32,
    address: String,
    script_pubkey: String,
    /// In the watched window.
    watched: bool,
    /// Handed out by `{"derive": true}`.
    handed_out: bool,
}

#[utoipa::path(get, path = "/v1/accounts/{id}/addresses/{index}", tag = "accounts",
    params(("id" = Uuid, Path), ("index" = u32, Path)),
    responses((status = 200, body = DerivedAddress), (status = 404), (status = 422)), security(("bearer" = [])))]
pub async fn derived_address(
    State(s): State<AppState>,
    Path((id, index)): Path<(Uuid, u32)>,
) -> Result<axum::Json<DerivedAddress>, ApiError> {
    let mut conn = s.pool.acquire().await?;
    let account = find_account(&mut conn, id, false).await?;
    let descriptor = account_descriptor(&s, &account)?;
    let d = descriptor
        .derive(index)
        .map_err(|e| ApiError::invalid_field("index", e))?;
    Ok(axum::Json(DerivedAddress {
        account_id: id,
        index,
        address: d.address,
        script_pubkey: hex::encode(d.script_pubkey.as_bytes()),
        watched: (index as i64) < account.watched_to as i64,
        handed_out: (index as i64) < account.handed_out as i64,
    }))
}

pub(super) fn parse_address(s: &AppState, address: &str) -> Result<WatchedAddress, ApiError> {
    WatchedAddress::parse(address, s.network.bitcoin()).map_err(|e| {
        let message = match &e {
            AddressError::WrongNetwork { .. } => {
                format!("{e} (this service runs on {})", s.network.as_str())
            }
            AddressError::Invalid(_) => e.to_string(),
        };
        ApiError::bad_request("invalid_address", message)
    })
}

#[derive(Serialize, ToSchema)]
pub struct AddressTotals {
    address: String,
    account_id: Uuid,
    /// Deposits with at least one confirmation.
    confirmed: String,
    /// Deposits in the mempool (or returned to it by a reorg).
    unconfirmed: String,
    credited: String,
    confirmed_sats: u64,
    unconfirmed_sats: u64,
    credited_sats: u64,
}

#[utoipa::path(get, path = "/v1/addresses/{address}", tag = "accounts", params(("address" = String, Path)),
    responses((status = 200, body = AddressTotals), (status = 400), (status = 404)), security(("bearer" = [])))]
pub async fn address_totals(
    State(s): State<AppState>,
    Path(address): Path<String>,
) -> Result<axum::Json<AddressTotals>, ApiError> {
    let address = parse_address(&s, &address)?.as_string();
    let sums = address_sums(&s, &address).await?;
    let (c, u, k) = (sums.confirmed, sums.unconfirmed, sums.credited);
    Ok(axum::Json(AddressTotals {
        address,
        account_id: sums.account_id,
        confirmed: Sats(c).to_btc_string(),
        unconfirmed: Sats(u).to_btc_string(),
        credited: Sats(k).to_btc_string(),
        confirmed_sats: c,
        unconfirmed_sats: u,
        credited_sats: k,
    }))
}

/// What an address's deposits add up to, in sats, by the `deposits` projection.
pub(super) struct AddressSums {
    pub account_id: Uuid,
    /// At least one confirmation.
    pub confirmed: u64,
    /// In the mempool (or returned to it by a reorg).
    pub unconfirmed: u64,
    /// Credited (the account's threshold reached; final ones included).
    pub credited: u64,
    /// Still standing and not credited (mempool included): the Crypto IPN `unconfirmed`.
    pub uncredited: u64,
}

/// [`AddressSums`] of a watched address; 404 `address_not_found` for another.
pub(super) async fn address_sums(s: &AppState, address: &str) -> Result<AddressSums, ApiError> {
    let row = sqlx::query!(
        r#"SELECT a.account_id,
                  coalesce(sum(d.amount_sats) FILTER (WHERE d.confirmations >= 1), 0)::bigint AS "confirmed!",
                  coalesce(sum(d.amount_sats) FILTER (WHERE d.confirmations = 0 AND d.status IN ('mempool', 'reorged')), 0)::bigint AS "unconfirmed!",
                  coalesce(sum(d.amount_sats) FILTER (WHERE d.credited), 0)::bigint AS "credited!",
                  coalesce(sum(d.amount_sats) FILTER (WHERE NOT d.credited AND d.status IN ('mempool', 'confirming', 'reorged')), 0)::bigint AS "uncredited!"
           FROM addresses a LEFT JOIN deposits d ON d.address = a.address
           WHERE a.address = $1
           GROUP BY a.account_id"#,
        address
    )
    .fetch_optional(&s.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("address_not_found", format!("{address} is not watched")))?;
    Ok(AddressSums {
        account_id: row.account_id,
        confirmed: row.confirmed as u64,
        unconfirmed: row.unconfirmed as u64,
        credited: row.credited as u64,
        uncredited: row.uncredited as u64,
    })
}
