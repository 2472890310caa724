//! Reads of the ledger projection, as domain types: what an observation loads under the
//! log lock (the unit of work's load step) and what the HTTP API shows.

use std::collections::{BTreeMap, HashSet};

use bitcoin::{BlockHash, OutPoint, Txid};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::account::Account;
use crate::domain::descriptor::AccountDescriptor;
use crate::domain::ledger::{BlockRef, LedgerState};
use crate::domain::ledger::{Key, Tracked, TrackedTx};
use crate::domain::tracked::{Btc, Deposit, Source, Spent, Status, Withdrawal};
use crate::domain::Sats;

/// A column the projection wrote from a typed value, parsed back; a failure means the
/// table was written by something else.
fn parsed<T: std::str::FromStr>(column: &'static str, s: &str) -> Result<T, sqlx::Error>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse().map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: Box::new(e),
    })
}

/// Comma-separated outpoints.
fn outpoints(s: &str) -> Result<Vec<OutPoint>, sqlx::Error> {
    s.split(',')
        .filter(|i| !i.is_empty())
        .map(|i| parsed("inputs", i))
        .collect()
}

fn status(s: &str) -> Status {
    Status::parse(s).unwrap_or(Status::Mempool)
}

struct DepositRow {
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

impl DepositRow {
    fn into_tracked(self) -> Result<Tracked, sqlx::Error> {
        let sats = Sats(self.amount_sats as u64);
        let deposit = Deposit {
            account_id: self.account_id,
            address: self.address,
            txid: parsed("txid", &self.txid)?,
            vout: self.vout as u32,
            amount: Btc(sats),
            amount_sats: sats,
            confirmations: self.confirmations as u32,
            block_hash: self
                .block_hash
                .as_deref()
                .map(|h| parsed("block_hash", h))
                .transpose()?,
            block_height: self.block_height.map(|h| h as u32),
            credited: self.credited,
            credit_confirmations: self.credit_confirmations as u32,
            status: status(&self.status),
            inputs: outpoints(&self.inputs)?,
        };
        Ok(Tracked {
            tx: TrackedTx::Deposit(deposit),
            version: self.stream_version,
        })
    }

    fn into_deposit(self) -> Result<Deposit, sqlx::Error> {
        match self.into_tracked()?.tx {
            TrackedTx::Deposit(d) => Ok(d),
            TrackedTx::Withdrawal(_) => unreachable!("a deposit row"),
        }
    }
}

/// The chain stream's version and every tracked transaction an observation may touch:
/// the open ones, those confirmed by a block being disconnected (even final ones), the
/// deposits of transactions found in it, and the withdrawals named.
pub async fn ledger_state(
    conn: &mut PgConnection,
    disconnected: &[BlockHash],
    found: &[Txid],
    withdrawals: &[Txid],
) -> Result<LedgerState, sqlx::Error> {
    let chain_version = sqlx::query_scalar!("SELECT stream_version FROM chain_state")
        .fetch_optional(&mut *conn)
        .await?;
    let open: Vec<String> = Status::OPEN.iter().map(|s| s.to_string()).collect();
    let disconnected: Vec<String> = disconnected.iter().map(|h| h.to_string()).collect();
    let found: Vec<String> = found.iter().map(|t| t.to_string()).collect();
    let rows = sqlx::query_as!(
        DepositRow,
        "SELECT txid, vout, account_id, address, amount_sats, confirmations, block_hash, block_height,
                credited, credit_confirmations, status, stream_version, inputs
         FROM deposits
         WHERE status = ANY($1) OR block_hash = ANY($2) OR txid = ANY($3)",
        &open,
        &disconnected,
        &found
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tracked = rows
        .into_iter()
        .map(DepositRow::into_tracked)
        .collect::<Result<Vec<_>, _>>()?;
    let named: Vec<String> = withdrawals.iter().map(|t| t.to_string()).collect();
    let rows = sqlx::query!(
        "SELECT txid, account_id, amount_sats, fee_sats, inputs, confirmations, block_hash,
                block_height, status, source, stream_version
         FROM withdrawals
         WHERE status NOT IN ('final', 'dropped', 'replaced') OR block_hash = ANY($1)
               OR txid = ANY($2)",
        &disconnected,
        &named
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        let amount = Sats(r.amount_sats as u64);
        let fee = r.fee_sats.map(|f| Sats(f as u64));
        let w = Withdrawal {
            account_id: r.account_id,
            txid: parsed("txid", &r.txid)?,
            amount: Btc(amount),
            amount_sats: amount,
            fee: fee.map(Btc),
            fee_sats: fee,
            inputs: outpoints(&r.inputs)?,
            confirmations: r.confirmations as u32,
            block_hash: r
                .block_hash
                .as_deref()
                .map(|h| parsed("block_hash", h))
                .transpose()?,
            block_height: r.block_height.map(|h| h as u32),
            status: status(&r.status),
            source: if r.source == "observed" {
                Source::Observed
            } else {
                Source::Api
            },
        };
        tracked.push(Tracked {
            tx: TrackedTx::Withdrawal(w),
            version: r.stream_version,
        });
    }
    Ok(LedgerState {
        chain_version,
        tracked,
    })
}

/// Deposits and withdrawals in the mempool or put back there by a reorg, with the
/// outpoints their transactions spend: what the mempool watcher checks for replacements
/// and drops.
pub async fn unconfirmed(pool: &sqlx::PgPool) -> Result<Vec<(Key, Vec<OutPoint>)>, sqlx::Error> {
    let deposits = sqlx::query!(
        "SELECT txid, vout, inputs FROM deposits WHERE status IN ('mempool', 'reorged')"
    )
    .fetch_all(pool)
    .await?;
    let withdrawals =
        sqlx::query!("SELECT txid, inputs FROM withdrawals WHERE status IN ('mempool', 'reorged')")
            .fetch_all(pool)
            .await?;
    let mut out = Vec::with_capacity(deposits.len() + withdrawals.len());
    for r in deposits {
        let txid = parsed("txid", &r.txid)?;
        out.push((
            Key::Deposit(OutPoint::new(txid, r.vout as u32)),
            outpoints(&r.inputs)?,
        ));
    }
    for r in withdrawals {
        out.push((
            Key::Withdrawal(parsed("txid", &r.txid)?),
            outpoints(&r.inputs)?,
        ));
    }
    Ok(out)
}

/// The deposits among `spent` (inputs of new transactions): whose, and how much — the
/// material of [`Withdrawal::from_spends`].
pub async fn spent_deposits(
    conn: &mut PgConnection,
    spent: &[OutPoint],
) -> Result<BTreeMap<OutPoint, Spent>, sqlx::Error> {
    if spent.is_empty() {
        return Ok(BTreeMap::new());
    }
    let txids: Vec<String> = spent.iter().map(|o| o.txid.to_string()).collect();
    let vouts: Vec<i32> = spent.iter().map(|o| o.vout as i32).collect();
    let rows = sqlx::query!(
        r#"SELECT d.txid, d.vout, d.account_id, d.amount_sats FROM deposits d
           JOIN UNNEST($1::text[], $2::int[]) AS i(txid, vout) ON d.txid = i.txid AND d.vout = i.vout"#,
        &txids,
        &vouts
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let outpoint = OutPoint::new(parsed("txid", &r.txid)?, r.vout as u32);
            let spent = Spent {
                account_id: r.account_id,
                amount: Sats(r.amount_sats as u64),
            };
            Ok((outpoint, spent))
        })
        .collect()
}

/// Which of `txids` are withdrawals already (of any status).
pub async fn known_withdrawals(
    conn: &mut PgConnection,
    txids: &[Txid],
) -> Result<HashSet<Txid>, sqlx::Error> {
    if txids.is_empty() {
        return Ok(HashSet::new());
    }
    let candidates: Vec<String> = txids.iter().map(|t| t.to_string()).collect();
    let known = sqlx::query_scalar!(
        "SELECT txid FROM withdrawals WHERE txid = ANY($1)",
        &candidates
    )
    .fetch_all(&mut *conn)
    .await?;
    known.iter().map(|t| parsed("txid", t)).collect()
}

pub async fn deposit(
    conn: &mut PgConnection,
    outpoint: OutPoint,
) -> Result<Option<Deposit>, sqlx::Error> {
    let row = sqlx::query_as!(
        DepositRow,
        "SELECT txid, vout, account_id, address, amount_sats, confirmations, block_hash, block_height,
                credited, credit_confirmations, status, stream_version, inputs
         FROM deposits WHERE txid = $1 AND vout = $2",
        outpoint.txid.to_string(),
        outpoint.vout as i32
    )
    .fetch_optional(&mut *conn)
    .await?;
    row.map(DepositRow::into_deposit).transpose()
}

/// Deposits of an account and/or address, newest first.
pub async fn deposits(
    conn: &mut PgConnection,
    account_id: Option<Uuid>,
    address: Option<&str>,
    limit: i64,
) -> Result<Vec<Deposit>, sqlx::Error> {
    let rows = sqlx::query_as!(
        DepositRow,
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
    rows.into_iter().map(DepositRow::into_deposit).collect()
}

/// An account row, as the API shows it and its commands decide on.
pub struct AccountRow {
    pub label: String,
    pub credit_confirmations: i32,
    pub stream_version: i32,
    pub descriptor: Option<String>,
    pub lookahead: Option<i32>,
    pub watched_to: i32,
    pub handed_out: i32,
}

impl AccountRow {
    /// The account's state for a decision; a stored descriptor that no longer parses is
    /// an error of the projection.
    pub fn account(
        &self,
        id: Uuid,
        network: bitcoin::Network,
    ) -> Result<Account, crate::domain::descriptor::DescriptorError> {
        let descriptor = self
            .descriptor
            .as_deref()
            .map(|d| AccountDescriptor::parse(d, network))
            .transpose()?;
        Ok(Account {
            id,
            version: self.stream_version,
            descriptor,
            lookahead: self
                .lookahead
                .map_or(crate::domain::descriptor::DEFAULT_LOOKAHEAD, |l| l as u32),
            watched_to: self.watched_to as u32,
            handed_out: self.handed_out as u32,
        })
    }
}

/// An account row.
pub async fn account(conn: &mut PgConnection, id: Uuid) -> Result<Option<AccountRow>, sqlx::Error> {
    sqlx::query_as!(
        AccountRow,
        "SELECT label, credit_confirmations, stream_version, descriptor, lookahead, watched_to, handed_out
         FROM accounts WHERE account_id = $1",
        id
    )
    .fetch_optional(&mut *conn)
    .await
}

/// The derived accounts among those `paid` addresses belong to, each with the highest
/// derivation index paid: what the look-ahead step extends.
pub async fn paid_derived_accounts(
    conn: &mut PgConnection,
    paid: &[&str],
    network: bitcoin::Network,
) -> Result<Vec<(Account, u32)>, PaidAccountsError> {
    let rows = sqlx::query!(
        r#"SELECT a.account_id, max(a.derivation_index) AS "index!", acc.descriptor AS "descriptor!",
                  acc.lookahead AS "lookahead!", acc.watched_to, acc.stream_version
           FROM addresses a JOIN accounts acc USING (account_id)
           WHERE a.address = ANY($1) AND a.derivation_index IS NOT NULL AND acc.descriptor IS NOT NULL
           GROUP BY a.account_id, acc.descriptor, acc.lookahead, acc.watched_to, acc.stream_version"#,
        paid as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let descriptor = AccountDescriptor::parse(&r.descriptor, network).map_err(|source| {
            PaidAccountsError::Descriptor {
                account: r.account_id,
                source,
            }
        })?;
        let account = Account {
            id: r.account_id,
            version: r.stream_version,
            descriptor: Some(descriptor),
            lookahead: r.lookahead as u32,
            watched_to: r.watched_to as u32,
            handed_out: 0,
        };
        out.push((account, r.index as u32));
    }
    out.sort_by_key(|(a, _)| a.id);
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum PaidAccountsError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("account {account}: stored descriptor: {source}")]
    Descriptor {
        account: Uuid,
        source: crate::domain::descriptor::DescriptorError,
    },
}

/// The derived addresses among `addresses` whose payment moves their account's look-ahead
/// window (the window ends less than `lookahead` past their index).
pub async fn window_movers(
    conn: &mut PgConnection,
    addresses: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    if addresses.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query_scalar!(
        r#"SELECT a.address FROM addresses a JOIN accounts acc USING (account_id)
           WHERE a.address = ANY($1) AND a.derivation_index IS NOT NULL
             AND acc.lookahead IS NOT NULL
             AND a.derivation_index + 1 + acc.lookahead > acc.watched_to"#,
        addresses as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The stored chain's blocks below `below`, highest first, at most `limit`.
pub async fn stored_blocks_below<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    below: i32,
    limit: i64,
) -> Result<Vec<BlockRef>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT height, hash, prev_hash, time FROM chain_blocks WHERE height < $1 ORDER BY height DESC LIMIT $2",
        below,
        limit
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(BlockRef {
                height: r.height as u32,
                hash: parsed("hash", &r.hash)?,
                prev_hash: parsed("prev_hash", &r.prev_hash)?,
                time: r.time as u32,
            })
        })
        .collect()
}

/// The stored tip.
pub async fn tip<'c>(conn: impl sqlx::PgExecutor<'c>) -> Result<Option<BlockRef>, sqlx::Error> {
    Ok(stored_blocks_below(conn, i32::MAX, 1)
        .await?
        .into_iter()
        .next())
}

/// The height the stored chain started at (None before the first block).
pub async fn chain_start<'c>(conn: impl sqlx::PgExecutor<'c>) -> Result<Option<u32>, sqlx::Error> {
    let start = sqlx::query_scalar!("SELECT start_height FROM chain_state")
        .fetch_optional(conn)
        .await?;
    Ok(start.map(|s| s as u32))
}

/// The accounts that asked for `txids` through the API (`withdrawal_requests`).
pub async fn withdrawal_requests(
    conn: &mut PgConnection,
    txids: &[Txid],
) -> Result<BTreeMap<Txid, Uuid>, sqlx::Error> {
    if txids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let wanted: Vec<String> = txids.iter().map(|t| t.to_string()).collect();
    let rows = sqlx::query!(
        "SELECT txid, account_id FROM withdrawal_requests WHERE txid = ANY($1)",
        &wanted
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| Ok((parsed("txid", &r.txid)?, r.account_id)))
        .collect()
}
