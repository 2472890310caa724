//! `POST /v1/withdrawals {"account_id","raw_tx"}`: broadcasts a signed transaction that
//! spends the account's deposits and tracks it like a deposit (`withdrawal.*`). The
//! account's credited balance is debited by what it spends (`amount`: the account's
//! outputs it spends; change paid back to a watched address arrives as a deposit) until
//! the withdrawal is dropped or replaced. Posting the same transaction again answers the
//! same withdrawal and appends nothing.

use axum::extract::State;
use axum::http::StatusCode;
use bitcoin::Transaction;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Json;
use super::AppState;
use crate::chain::watches::inputs_of;
use crate::domain::ledger::{DepositStatus, Ledger, Withdrawal};
use crate::domain::Sats;
use crate::{projections, store};

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
    let txid = tx.compute_txid().to_string();
    let known = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)",
        body.account_id
    )
    .fetch_one(&s.pool)
    .await?;
    if known != Some(true) {
        return Err(ApiError::not_found(
            "account_not_found",
            format!("no account {}", body.account_id),
        ));
    }
    // What it spends that we know of: deposits (of any account).
    let inputs = inputs_of(&tx);
    let (in_txids, in_vouts): (Vec<String>, Vec<i32>) = tx
        .input
        .iter()
        .map(|i| {
            (
                i.previous_output.txid.to_string(),
                i.previous_output.vout as i32,
            )
        })
        .unzip();
    let spent = sqlx::query!(
        r#"SELECT d.account_id, d.amount_sats FROM deposits d
           JOIN UNNEST($1::text[], $2::int[]) AS i(txid, vout) ON d.txid = i.txid AND d.vout = i.vout"#,
        &in_txids,
        &in_vouts
    )
    .fetch_all(&s.pool)
    .await?;
    let ours: i64 = spent
        .iter()
        .filter(|r| r.account_id == body.account_id)
        .map(|r| r.amount_sats)
        .sum();
    if ours == 0 {
        return Err(ApiError::invalid_field(
            "raw_tx",
            "it spends no deposit of this account",
        ));
    }
    let out_total: i64 = tx.output.iter().map(|o| o.value.to_sat() as i64).sum();
    let fee = (spent.len() == tx.input.len())
        .then(|| spent.iter().map(|r| r.amount_sats).sum::<i64>() - out_total)
        .filter(|f| *f >= 0)
        .map(|f| f as u64);

    // Under the log lock from here: the mempool watcher, which would otherwise record this
    // transaction as an observed withdrawal, waits until ours is appended.
    let mut db = s.pool.begin().await?;
    store::lock(&mut db).await?;
    if let Some(existing) = existing_in(&mut db, &txid).await? {
        if existing["account_id"] != json!(body.account_id) {
            return Err(ApiError::conflict(
                "withdrawal_of_another_account",
                format!("{txid} was broadcast for another account"),
            ));
        }
        return Ok((StatusCode::OK, axum::Json(existing)));
    }
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

    let mut ledger = Ledger::new(
        s.final_confirmations,
        None,
        vec![],
        json!({"source": "api"}),
    );
    let amount = Sats(ours as u64);
    ledger.broadcast(Withdrawal {
        account_id: body.account_id,
        txid: txid.clone(),
        amount: amount.to_btc_string(),
        amount_sats: amount.0,
        fee: fee.map(|f| Sats(f).to_btc_string()),
        fee_sats: fee,
        inputs,
        confirmations: 0,
        block_hash: None,
        block_height: None,
        status: DepositStatus::Mempool,
        source: "api".into(),
    });
    let stored = store::append(&mut db, &ledger.into_events()).await?;
    projections::apply(&mut db, &stored).await?;
    db.commit().await?;
    tracing::info!(%txid, account_id = %body.account_id, amount = %amount.to_btc_string(), "withdrawal broadcast");
    let data = stored.last().map(|e| e.data.clone()).unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, axum::Json(data)))
}

/// The withdrawal's state: the data of the last event of its stream.
async fn existing_in(conn: &mut sqlx::PgConnection, txid: &str) -> Result<Option<Value>, ApiError> {
    let stream = crate::domain::events::withdrawal_stream(txid);
    Ok(sqlx::query_scalar!(
        "SELECT data FROM events WHERE stream = $1 ORDER BY stream_version DESC LIMIT 1",
        stream
    )
    .fetch_optional(&mut *conn)
    .await?)
}
