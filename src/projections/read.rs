//! Reads of the deposit projection shared by the follower and the HTTP API.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ledger::{Deposit, DepositStatus, Tracked, TrackedWithdrawal, Withdrawal};
use crate::domain::Sats;

struct Row {
    txid: String,
    vout: i32,
    account_id: Uuid,
    address: String,
    amount_sats: i64,
    confirmations: i32,
    block_hash: Option<String>,
    block_height: Option<i32>,
    credited: bool,
    credit_confirmations: i32,
    status: String,
    stream_version: i32,
    /// Comma-separated outpoints.
    inputs: String,
}

impl Row {
    fn into_tracked(self) -> Tracked {
        let sats = Sats(self.amount_sats as u64);
        Tracked {
            deposit: Deposit {
                account_id: self.account_id,
                address: self.address,
                txid: self.txid,
                vout: self.vout as u32,
                amount: sats.to_btc_string(),
                amount_sats: sats.0,
                confirmations: self.confirmations as u32,
                block_hash: self.block_hash,
                block_height: self.block_height.map(|h| h as u32),
                credited: self.credited,
                credit_confirmations: self.credit_confirmations as u32,
                status: DepositStatus::parse(&self.status).unwrap_or(DepositStatus::Mempool),
                inputs: self
                    .inputs
                    .split(',')
                    .filter(|i| !i.is_empty())
                    .map(String::from)
                    .collect(),
            },
            version: self.stream_version,
        }
    }
}

/// Every deposit an observation may touch: the open ones, those confirmed by a block being
/// disconnected (even final ones), and those of transactions found in it.
pub async fn deposits_for_observation(
    conn: &mut PgConnection,
    disconnected: &[String],
    txids: &[String],
) -> Result<Vec<Tracked>, sqlx::Error> {
    let open: Vec<String> = DepositStatus::OPEN.iter().map(|s| s.to_string()).collect();
    let rows = sqlx::query_as!(
        Row,
        "SELECT txid, vout, account_id, address, amount_sats, confirmations, block_hash, block_height,
                credited, credit_confirmations, status, stream_version, inputs
         FROM deposits
         WHERE status = ANY($1) OR block_hash = ANY($2) OR txid = ANY($3)",
        &open,
        disconnected,
        txids
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(Row::into_tracked).collect())
}

/// Open withdrawals (not final, dropped or replaced) and those confirmed by a block being
/// disconnected.
pub async fn withdrawals_for_observation(
    conn: &mut PgConnection,
    disconnected: &[String],
) -> Result<Vec<TrackedWithdrawal>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT txid, account_id, amount_sats, fee_sats, inputs, confirmations, block_hash,
                block_height, status, source, stream_version
         FROM withdrawals
         WHERE status NOT IN ('final', 'dropped', 'replaced') OR block_hash = ANY($1)",
        disconnected
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TrackedWithdrawal {
            withdrawal: Withdrawal {
                account_id: r.account_id,
                txid: r.txid,
                amount: Sats(r.amount_sats as u64).to_btc_string(),
                amount_sats: r.amount_sats as u64,
                fee: r.fee_sats.map(|f| Sats(f as u64).to_btc_string()),
                fee_sats: r.fee_sats.map(|f| f as u64),
                inputs: split_inputs(&r.inputs),
                confirmations: r.confirmations as u32,
                block_hash: r.block_hash,
                block_height: r.block_height.map(|h| h as u32),
                status: DepositStatus::parse(&r.status).unwrap_or(DepositStatus::Mempool),
                source: r.source,
            },
            version: r.stream_version,
        })
        .collect())
}

/// Withdrawals in the mempool or put back there by a reorg: (txid, inputs).
pub async fn unconfirmed_withdrawals(
    pool: &sqlx::PgPool,
) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
    let rows =
        sqlx::query!("SELECT txid, inputs FROM withdrawals WHERE status IN ('mempool', 'reorged')")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.txid, split_inputs(&r.inputs)))
        .collect())
}

fn split_inputs(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|i| !i.is_empty())
        .map(String::from)
        .collect()
}

/// Deposits in the mempool or put back there by a reorg: (txid, vout, inputs).
pub async fn unconfirmed_deposits(
    pool: &sqlx::PgPool,
) -> Result<Vec<(String, u32, Vec<String>)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT txid, vout, inputs FROM deposits WHERE status IN ('mempool', 'reorged')"
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let inputs = r
                .inputs
                .split(',')
                .filter(|i| !i.is_empty())
                .map(String::from)
                .collect();
            (r.txid, r.vout as u32, inputs)
        })
        .collect())
}

pub async fn deposit(
    conn: &mut PgConnection,
    txid: &str,
    vout: i32,
) -> Result<Option<Deposit>, sqlx::Error> {
    let row = sqlx::query_as!(
        Row,
        "SELECT txid, vout, account_id, address, amount_sats, confirmations, block_hash, block_height,
                credited, credit_confirmations, status, stream_version, inputs
         FROM deposits WHERE txid = $1 AND vout = $2",
        txid,
        vout
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.into_tracked().deposit))
}

/// Deposits of an account and/or address, newest first.
pub async fn deposits(
    conn: &mut PgConnection,
    account_id: Option<Uuid>,
    address: Option<&str>,
    limit: i64,
) -> Result<Vec<Deposit>, sqlx::Error> {
    let rows = sqlx::query_as!(
        Row,
        "SELECT txid, vout, account_id, address, amount_sats, confirmations, block_hash, block_height,
                credited, credit_confirmations, status, stream_version, inputs
         FROM deposits
         WHERE ($1::uuid IS NULL OR account_id = $1) AND ($2::text IS NULL OR address = $2)
         ORDER BY first_position DESC
         LIMIT $3",
        account_id,
        address,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.into_tracked().deposit).collect())
}
