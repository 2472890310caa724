//! Deposit queries over the deposit projection.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Path, Query};
use super::reads::Reader;
use crate::domain::tracked::Deposit;
use crate::projections::read;

#[derive(Serialize, ToSchema)]
pub struct DepositOut {
    txid: String,
    vout: u32,
    address: String,
    account_id: Uuid,
    amount: String,
    amount_sats: u64,
    confirmations: u32,
    block_hash: Option<String>,
    block_height: Option<u32>,
    credited: bool,
    /// mempool, confirming, credited, final, reorged, dropped or replaced
    status: String,
}

impl From<Deposit> for DepositOut {
    fn from(d: Deposit) -> Self {
        DepositOut {
            txid: d.txid.to_string(),
            vout: d.vout,
            address: d.address,
            account_id: d.account_id,
            amount: d.amount.0.to_btc_string(),
            amount_sats: d.amount_sats.0,
            confirmations: d.confirmations,
            block_hash: d.block_hash.map(|h| h.to_string()),
            block_height: d.block_height,
            credited: d.credited,
            status: d.status.as_str().to_string(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    account_id: Option<Uuid>,
    address: Option<String>,
    /// At most 1000; default 100. Newest first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/deposits", tag = "deposits", params(ListQuery),
    responses((status = 200, body = [DepositOut])), security(("bearer" = [])))]
pub async fn list(
    Reader(read): Reader,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Vec<DepositOut>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit: must be between 1 and 1000",
        ));
    }
    let mut conn = read.pool().acquire().await?;
    let deposits = read::deposits(&mut conn, q.account_id, q.address.as_deref(), limit).await?;
    Ok(axum::Json(
        deposits.into_iter().map(DepositOut::from).collect(),
    ))
}

#[utoipa::path(get, path = "/v1/deposits/{txid}/{vout}", tag = "deposits",
    params(("txid" = String, Path), ("vout" = u32, Path)),
    responses((status = 200, body = DepositOut), (status = 400), (status = 404)), security(("bearer" = [])))]
pub async fn get_one(
    Reader(read): Reader,
    Path((txid, vout)): Path<(String, u32)>,
) -> Result<axum::Json<DepositOut>, ApiError> {
    let txid: bitcoin::Txid = Some(txid.to_ascii_lowercase())
        .filter(|t| t.len() == 64)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_txid", "txid: must be 64 hexadecimal characters")
        })?;
    i32::try_from(vout).map_err(|_| ApiError::bad_request("invalid_vout", "vout: out of range"))?;
    let mut conn = read.pool().acquire().await?;
    let deposit = read::deposit(&mut conn, bitcoin::OutPoint::new(txid, vout))
        .await?
        .ok_or_else(|| {
            ApiError::not_found("deposit_not_found", format!("no deposit {txid}:{vout}"))
        })?;
    Ok(axum::Json(deposit.into()))
}
