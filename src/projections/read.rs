//! Reads of the deposit projection shared by the follower and the HTTP API.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ledger::{Deposit, DepositStatus, Tracked};
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
