//! An account's addresses: watching one (`address.watched`, with an optional rescan
//! recorded in the same transaction), handing out the next derived one
//! (`address.handed_out`, the window moved), a derived address by index, and an
//! address's totals. The commands are unit-of-work observations.

use axum::extract::State;
use axum::http::StatusCode;
use bitcoin::ScriptBuf;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::accounts::{address_taken, find_account};
use super::error::ApiError;
use super::extract::{Json, Path};
use super::reads::Reader;
use super::AppState;
use crate::domain::account::{Account, HandOutError};
use crate::domain::descriptor::Derived;
use crate::domain::{AddressError, Sats, WatchedAddress};
use crate::projections::read;
use crate::store::StoredEvent;
use crate::unit_of_work::{Decision, Observation, RecordError};

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
    let script_hex = hex::encode(script.as_bytes());
    let recorded = s
        .unit_of_work
        .record(Watch {
            account: id,
            address: address.clone(),
            script,
            rescan_from: body.rescan_from_height,
            network: s.network.bitcoin(),
            pruned_below: s
                .follower
                .prune_height
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(0),
        })
        .await
        .map_err(address_taken)?;
    let rescan = recorded.outcome?.started();
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

/// `address.watched` for an address given to the API, and the rescan asked for.
struct Watch {
    account: Uuid,
    address: String,
    script: ScriptBuf,
    rescan_from: Option<u32>,
    network: bitcoin::Network,
    /// The lowest height the node has blocks of, as the follower last saw (0: all, or
    /// unknown on an instance that does not lead).
    pruned_below: i64,
}

/// What `Watch` reads under the lock: the account, whether the address is taken, and the
/// synced tip (the rescan's last height: the follower handles every later block with the
/// address already watched).
struct WatchState {
    account: Result<Account, ApiError>,
    taken: bool,
    tip: Option<u32>,
}

/// A rescan to record with the address, or the rescan recorded.
enum Rescan {
    None,
    Wanted { from: u32, to: u32 },
    Started(RescanStarted),
}

impl Observation for Watch {
    type State = WatchState;
    type Outcome = Result<Rescan, ApiError>;

    async fn load(&mut self, conn: &mut PgConnection) -> Result<WatchState, RecordError> {
        let account = match read::account(conn, self.account).await? {
            Some(row) => stored_account_of(&row, self.account, self.network),
            None => Err(account_not_found(self.account)),
        };
        let taken = sqlx::query_scalar!(
            "SELECT address FROM addresses WHERE address = $1 OR script_pubkey = $2",
            self.address,
            self.script.as_bytes()
        )
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
        let tip = read::tip(&mut *conn).await?.map(|t| t.height);
        Ok(WatchState {
            account,
            taken,
            tip,
        })
    }

    fn decide(self, state: WatchState) -> Result<Decision<Self::Outcome>, RecordError> {
        let refuse = |e: ApiError| Ok(Decision::new(Vec::new(), Err(e)));
        let account = match state.account {
            Ok(a) => a,
            Err(e) => return refuse(e),
        };
        if state.taken {
            let message = format!("{} is already watched", self.address);
            return refuse(ApiError::conflict("address_taken", message));
        }
        let rescan = match (self.rescan_from, state.tip) {
            (None, _) => Rescan::None,
            (Some(_), None) => {
                return refuse(ApiError::invalid_field(
                    "rescan_from_height",
                    "no block is synced yet",
                ))
            }
            (Some(from), _) if i64::from(from) < self.pruned_below => {
                return refuse(ApiError::invalid_field(
                    "rescan_from_height",
                    format!(
                        "below the node's pruned height {}: it no longer has those blocks",
                        self.pruned_below
                    ),
                ))
            }
            (Some(from), Some(tip)) if from > tip => {
                return refuse(ApiError::invalid_field(
                    "rescan_from_height",
                    format!("above the synced tip ({tip}); later blocks are followed anyway"),
                ))
            }
            (Some(from), Some(to)) => Rescan::Wanted { from, to },
        };
        let event = account.watch(self.address, self.script, &json!({"source": "api"}));
        Ok(Decision::new(vec![event], Ok(rescan)))
    }

    async fn after_append(
        outcome: &mut Self::Outcome,
        conn: &mut PgConnection,
        appended: &[StoredEvent],
    ) -> Result<(), RecordError> {
        let (Ok(Rescan::Wanted { from, to }), Some(e)) = (&*outcome, appended.first()) else {
            return Ok(());
        };
        let (from, to) = (*from, *to);
        let watched = e
            .event()
            .map_err(|e| RecordError::Inconsistent(e.to_string()))?;
        let crate::domain::events::Event::AddressWatched(w) = watched else {
            return Err(RecordError::Inconsistent("not an address.watched".into()));
        };
        let id = sqlx::query_scalar!(
            "INSERT INTO rescans (account_id, address, from_height, to_height, next_height, status)
             VALUES ($1, $2, $3, $4, $3, 'running') RETURNING rescan_id",
            w.account_id,
            w.address,
            from as i32,
            to as i32
        )
        .fetch_one(&mut *conn)
        .await?;
        *outcome = Ok(Rescan::Started(RescanStarted {
            id,
            from_height: from,
            to_height: to,
        }));
        Ok(())
    }
}

impl Rescan {
    fn started(self) -> Option<RescanStarted> {
        match self {
            Rescan::Started(r) => Some(r),
            Rescan::None | Rescan::Wanted { .. } => None,
        }
    }
}

fn account_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("account_not_found", format!("no account {id}"))
}

fn not_derived() -> ApiError {
    ApiError::invalid_field(
        "derive",
        "this account has no xpub or descriptor to derive from",
    )
}

/// The account's state; a stored descriptor that no longer parses is a 500.
fn stored_account_of(
    row: &read::AccountRow,
    id: Uuid,
    network: bitcoin::Network,
) -> Result<Account, ApiError> {
    row.account(id, network)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("account {id}: stored descriptor: {e}")))
}

fn stored_account(s: &AppState, row: &read::AccountRow, id: Uuid) -> Result<Account, ApiError> {
    stored_account_of(row, id, s.network.bitcoin())
}

/// `{"derive": true}`: the next index never handed out; its address is watched (the window
/// moves `lookahead` past it) and `address.handed_out` records it.
async fn hand_out(
    s: &AppState,
    id: Uuid,
) -> Result<(StatusCode, axum::Json<WatchedAddressOut>), ApiError> {
    let recorded = s
        .unit_of_work
        .record(HandOut {
            account: id,
            network: s.network.bitcoin(),
        })
        .await
        .map_err(address_taken)?;
    let derived = recorded.outcome?;
    tracing::info!(account_id = %id, index = derived.index, address = %derived.address, "address handed out");
    Ok((
        StatusCode::CREATED,
        axum::Json(WatchedAddressOut {
            address: derived.address,
            account_id: id,
            script_pubkey: hex::encode(derived.script_pubkey.as_bytes()),
            index: Some(derived.index),
            rescan: None,
        }),
    ))
}

struct HandOut {
    account: Uuid,
    network: bitcoin::Network,
}

impl Observation for HandOut {
    type State = Result<Account, ApiError>;
    type Outcome = Result<Derived, ApiError>;

    async fn load(&mut self, conn: &mut PgConnection) -> Result<Self::State, RecordError> {
        Ok(match read::account(conn, self.account).await? {
            Some(row) => stored_account_of(&row, self.account, self.network),
            None => Err(account_not_found(self.account)),
        })
    }

    fn decide(self, account: Self::State) -> Result<Decision<Self::Outcome>, RecordError> {
        let handed = account.and_then(|a| {
            a.hand_out(&json!({"source": "api"})).map_err(|e| match e {
                HandOutError::NotDerived => not_derived(),
                HandOutError::Descriptor(e) => ApiError::invalid_field("derive", e),
            })
        });
        Ok(match handed {
            Ok((events, derived)) => Decision::new(events, Ok(derived)),
            Err(e) => Decision::new(Vec::new(), Err(e)),
        })
    }
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
    Reader(read): Reader,
    Path((id, index)): Path<(Uuid, u32)>,
) -> Result<axum::Json<DerivedAddress>, ApiError> {
    let mut conn = read.pool().acquire().await?;
    let account = stored_account(&s, &find_account(&mut conn, id).await?, id)?;
    let descriptor = account.descriptor.as_ref().ok_or_else(not_derived)?;
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
    Reader(read): Reader,
    Path(address): Path<String>,
) -> Result<axum::Json<AddressTotals>, ApiError> {
    let address = parse_address(&s, &address)?.as_string();
    let sums = address_sums(read.pool(), &address).await?;
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
pub(super) async fn address_sums(
    pool: &sqlx::PgPool,
    address: &str,
) -> Result<AddressSums, ApiError> {
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
    .fetch_optional(pool)
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
