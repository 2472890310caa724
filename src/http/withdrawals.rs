//! `POST /v1/withdrawals {"account_id","raw_tx"}`: broadcasts a signed transaction that
//! spends the account's deposits and tracks it like a deposit (`withdrawal.*`). The
//! account's credited balance is debited by what it spends (`amount`: the account's
//! outputs it spends; change paid back to a watched address arrives as a deposit) until
//! the withdrawal is dropped or replaced. Posting the same transaction again answers the
//! same withdrawal and appends nothing.
//!
//! The broadcast happens before the unit of work, never under the log lock: the request
//! is written to `withdrawal_requests` first, so whoever records the transaction — this
//! handler after the broadcast, or the mempool watcher when it sees it first (a race, or
//! a crash in between) — records the same withdrawal, and the append is idempotent by
//! txid.

use axum::extract::State;
use axum::http::StatusCode;
use bitcoin::{Transaction, Txid};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Json;
use super::AppState;
use crate::domain::ledger::{Ledger, LedgerState};
use crate::domain::stream::StreamName;
use crate::domain::tracked::{inputs_of, Source, Withdrawal};
use crate::projections::read;
use crate::unit_of_work::{Decision, Observation, RecordError};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWithdrawal {
    account_id: Uuid,
    /// The signed transaction, hex.
    raw_tx: String,
}

#[utoipa::path(post, path = "/v1/withdrawals", tag = "withdrawals", request_body = NewWithdrawal,
    responses((status = 201, description = "broadcast; the withdrawal's state"),
              (status = 200, description = "already broadcast: the same withdrawal"),
              (status = 404), (status = 422, description = "invalid raw_tx, or the node refused it")),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Json(body): Json<NewWithdrawal>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let bytes = hex::decode(body.raw_tx.trim())
        .map_err(|_| ApiError::invalid_field("raw_tx", "not hex"))?;
    let tx: Transaction = bitcoin::consensus::deserialize(&bytes)
        .map_err(|e| ApiError::invalid_field("raw_tx", format!("not a transaction: {e}")))?;
    let txid = tx.compute_txid();
    let mut conn = s.pool.acquire().await?;
    if read::account(&mut conn, body.account_id).await?.is_none() {
        return Err(ApiError::not_found(
            "account_not_found",
            format!("no account {}", body.account_id),
        ));
    }
    let spent = read::spent_deposits(&mut conn, &inputs_of(&tx)).await?;
    let withdrawal = Withdrawal::from_spends(&tx, &spent, Some(body.account_id), Source::Api)
        .ok_or_else(|| ApiError::invalid_field("raw_tx", "it spends no deposit of this account"))?;
    if let Some(existing) = recorded(&mut conn, txid).await? {
        return same_account(existing, body.account_id, txid).map(|w| (StatusCode::OK, w));
    }
    let first = sqlx::query_scalar!(
        r#"INSERT INTO withdrawal_requests (txid, account_id) VALUES ($1, $2)
           ON CONFLICT (txid) DO NOTHING RETURNING true AS "first!""#,
        txid.to_string(),
        body.account_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    drop(conn);

    match s.node.send_raw_transaction(tx).await {
        Ok(()) => {}
        Err(Ok(reason)) => {
            tracing::info!(%txid, %reason, "the node refused a withdrawal");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "broadcast_rejected",
                format!("raw_tx: the node refused it: {reason}"),
            ));
        }
        Err(Err(e)) => return Err(ApiError::Internal(e)),
    }

    let amount = withdrawal.amount;
    let recorded_now = s
        .unit_of_work
        .record(Broadcast {
            withdrawal,
            final_confirmations: s.final_confirmations,
        })
        .await?;
    let data = match recorded_now.events.last() {
        Some(e) => {
            tracing::info!(%txid, account_id = %body.account_id, amount = %amount.0.to_btc_string(), "withdrawal broadcast");
            e.data.clone()
        }
        // The mempool watcher recorded it first, from the request: the same withdrawal.
        None => {
            let existing = recorded(&mut *s.pool.acquire().await?, txid)
                .await?
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("withdrawal {txid} vanished")))?;
            same_account(existing, body.account_id, txid)?.0
        }
    };
    let status = if first {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(data)))
}

/// The recorded withdrawal's state for this account; 409 if another account's.
fn same_account(existing: Value, account: Uuid, txid: Txid) -> Result<axum::Json<Value>, ApiError> {
    if existing["account_id"] != json!(account) {
        return Err(ApiError::conflict(
            "withdrawal_of_another_account",
            format!("{txid} was broadcast for another account"),
        ));
    }
    Ok(axum::Json(existing))
}

/// The withdrawal's state as recorded: the data of the last event of its stream.
async fn recorded(conn: &mut PgConnection, txid: Txid) -> Result<Option<Value>, sqlx::Error> {
    let stream = StreamName::withdrawal(txid);
    sqlx::query_scalar!(
        "SELECT data FROM events WHERE stream = $1 ORDER BY stream_version DESC LIMIT 1",
        stream.as_str()
    )
    .fetch_optional(&mut *conn)
    .await
}

/// A withdrawal broadcast by the API, recorded unless it is already.
struct Broadcast {
    withdrawal: Withdrawal,
    final_confirmations: u32,
}

impl Observation for Broadcast {
    type State = LedgerState;
    type Outcome = ();

    async fn load(&mut self, conn: &mut PgConnection) -> Result<LedgerState, RecordError> {
        Ok(read::ledger_state(conn, &[], &[], &[self.withdrawal.txid]).await?)
    }

    fn decide(self, state: LedgerState) -> Result<Decision<()>, RecordError> {
        let mut ledger = Ledger::new(self.final_confirmations, state, json!({"source": "api"}));
        ledger.broadcast(self.withdrawal);
        Ok(Decision::new(ledger.into_events(), ()))
    }
}
