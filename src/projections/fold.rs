//! Events → row changes (pure), and the set-based statements that write them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::events as ev;
use crate::domain::ledger::{Deposit, Withdrawal};
use crate::store::StoredEvent;

#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub accounts: Vec<AccountRow>,
    pub account_versions: BTreeMap<Uuid, i32>,
    /// Derived accounts: (indexes watched below, indexes handed out below), the maxima.
    pub account_progress: BTreeMap<Uuid, (i32, i32)>,
    pub addresses: Vec<AddressRow>,
    /// Height → the block now there, or `None` when it was disconnected.
    pub blocks: BTreeMap<i32, Option<BlockRow>>,
    /// (first connected height in this batch, last chain stream version)
    pub chain: Option<(i32, i32)>,
    pub deposits: BTreeMap<(String, i32), DepositRow>,
    pub withdrawals: BTreeMap<String, WithdrawalRow>,
    pub touched_accounts: BTreeSet<Uuid>,
}

#[derive(Debug, PartialEq)]
pub struct AccountRow {
    pub account_id: Uuid,
    pub label: String,
    pub credit_confirmations: i32,
    pub descriptor: Option<String>,
    pub lookahead: Option<i32>,
    pub position: i64,
}

#[derive(Debug, PartialEq)]
pub struct AddressRow {
    pub address: String,
    pub account_id: Uuid,
    pub script_pubkey: Vec<u8>,
    pub index: Option<i32>,
    pub position: i64,
}

#[derive(Debug, PartialEq, Deserialize)]
pub struct BlockRow {
    pub height: i32,
    pub hash: String,
    pub prev_hash: String,
    pub time: i64,
}

#[derive(Debug, PartialEq)]
pub struct DepositRow {
    pub deposit: Deposit,
    pub stream_version: i32,
    /// This batch's first event of the deposit: its `first_position` if the row is new.
    pub first_position: i64,
    pub position: i64,
}

#[derive(Debug, PartialEq)]
pub struct WithdrawalRow {
    pub withdrawal: Withdrawal,
    pub stream_version: i32,
    pub first_position: i64,
    pub position: i64,
}

#[derive(Deserialize)]
struct AccountCreated {
    account_id: Uuid,
    label: String,
    credit_confirmations: i32,
    #[serde(default)]
    descriptor: Option<String>,
    #[serde(default)]
    lookahead: Option<i32>,
}

#[derive(Deserialize)]
struct AddressWatched {
    account_id: Uuid,
    address: String,
    script_pubkey: String,
    /// The derivation index, for accounts with a descriptor.
    #[serde(default)]
    index: Option<i32>,
}

#[derive(Deserialize)]
struct AddressHandedOut {
    account_id: Uuid,
    index: i32,
}

#[derive(Deserialize)]
struct BlockDisconnected {
    height: i32,
}

/// What a batch of events changes; later events of a stream override earlier ones.
pub fn fold(events: &[StoredEvent]) -> Result<Changes, String> {
    let mut c = Changes::default();
    for e in events {
        let fail = |err: serde_json::Error| format!("position {} ({}): {err}", e.position, e.kind);
        match e.kind.as_str() {
            ev::ACCOUNT_CREATED => {
                let a: AccountCreated = serde_json::from_value(e.data.clone()).map_err(fail)?;
                c.touched_accounts.insert(a.account_id);
                c.account_versions.insert(a.account_id, e.stream_version);
                c.accounts.push(AccountRow {
                    account_id: a.account_id,
                    label: a.label,
                    credit_confirmations: a.credit_confirmations,
                    descriptor: a.descriptor,
                    lookahead: a.lookahead,
                    position: e.position,
                });
            }
            ev::ADDRESS_WATCHED => {
                let a: AddressWatched = serde_json::from_value(e.data.clone()).map_err(fail)?;
                c.account_versions.insert(a.account_id, e.stream_version);
                if let Some(i) = a.index {
                    let p = c.account_progress.entry(a.account_id).or_default();
                    p.0 = p.0.max(i + 1);
                }
                c.addresses.push(AddressRow {
                    address: a.address,
                    account_id: a.account_id,
                    script_pubkey: hex::decode(&a.script_pubkey)
                        .map_err(|x| format!("position {}: {x}", e.position))?,
                    index: a.index,
                    position: e.position,
                });
            }
            ev::ADDRESS_HANDED_OUT => {
                let a: AddressHandedOut = serde_json::from_value(e.data.clone()).map_err(fail)?;
                c.account_versions.insert(a.account_id, e.stream_version);
                let p = c.account_progress.entry(a.account_id).or_default();
                p.1 = p.1.max(a.index + 1);
            }
            ev::BLOCK_CONNECTED => {
                let b: BlockRow = serde_json::from_value(e.data.clone()).map_err(fail)?;
                let start = c.chain.map_or(b.height, |(s, _)| s.min(b.height));
                c.chain = Some((start, e.stream_version));
                c.blocks.insert(b.height, Some(b));
            }
            ev::BLOCK_DISCONNECTED => {
                let b: BlockDisconnected = serde_json::from_value(e.data.clone()).map_err(fail)?;
                let start = c.chain.map_or(b.height, |(s, _)| s);
                c.chain = Some((start, e.stream_version));
                c.blocks.insert(b.height, None);
            }
            kind if kind.starts_with("withdrawal.") => {
                let w: Withdrawal = serde_json::from_value(e.data.clone()).map_err(fail)?;
                c.touched_accounts.insert(w.account_id);
                let first_position = c
                    .withdrawals
                    .get(&w.txid)
                    .map_or(e.position, |r| r.first_position);
                c.withdrawals.insert(
                    w.txid.clone(),
                    WithdrawalRow {
                        withdrawal: w,
                        stream_version: e.stream_version,
                        first_position,
                        position: e.position,
                    },
                );
            }
            kind if kind.starts_with("deposit.") => {
                let d: Deposit = serde_json::from_value(e.data.clone()).map_err(fail)?;
                c.touched_accounts.insert(d.account_id);
                let key = (d.txid.clone(), d.vout as i32);
                // Whether events arrive one observation at a time (live) or thousands at
                // once (a rebuild), the row must come out the same.
                let first_position = c
                    .deposits
                    .get(&key)
                    .map_or(e.position, |r| r.first_position);
                c.deposits.insert(
                    key,
                    DepositRow {
                        deposit: d,
                        stream_version: e.stream_version,
                        first_position,
                        position: e.position,
                    },
                );
            }
            _ => {}
        }
    }
    Ok(c)
}

pub async fn write(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    write_accounts(conn, c).await?;
    write_chain(conn, c).await?;
    write_balances(conn, c).await?;
    write_deposits(conn, c).await?;
    write_withdrawals(conn, c).await
}

/// Upserts the withdrawals and debits each account's credited balance by what a
/// withdrawal takes (its amount, the fee included) while it is not dropped or replaced:
/// new contribution minus old, as for deposits.
async fn write_withdrawals(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    if c.withdrawals.is_empty() {
        return Ok(());
    }
    let rows: Vec<&WithdrawalRow> = c.withdrawals.values().collect();
    let w =
        |f: &dyn Fn(&Withdrawal) -> i64| rows.iter().map(|r| f(&r.withdrawal)).collect::<Vec<_>>();
    sqlx::query!(
        r#"WITH new AS (
               SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], $4::bigint[], $5::text[],
                                    $6::int[], $7::text[], $8::int[], $9::text[], $10::text[],
                                    $11::int[], $12::bigint[], $13::bigint[])
                   AS t(txid, account_id, amount_sats, fee_sats, inputs, confirmations, block_hash,
                        block_height, status, source, stream_version, first_position, position)),
           old AS (
               SELECT w.account_id, w.amount_sats, w.status FROM withdrawals w JOIN new USING (txid)),
           upsert AS (
               INSERT INTO withdrawals (txid, account_id, amount_sats, fee_sats, inputs, confirmations,
                                        block_hash, block_height, status, source, stream_version,
                                        first_position, last_position)
               SELECT txid, account_id, amount_sats, fee_sats, inputs, confirmations, block_hash,
                      block_height, status, source, stream_version, first_position, position
               FROM new
               ON CONFLICT (txid) DO UPDATE SET
                   confirmations = EXCLUDED.confirmations, block_hash = EXCLUDED.block_hash,
                   block_height = EXCLUDED.block_height, status = EXCLUDED.status,
                   stream_version = EXCLUDED.stream_version, last_position = EXCLUDED.last_position),
           contributions AS (
               SELECT account_id, -amount_sats AS sats, status FROM new
               UNION ALL
               SELECT account_id, amount_sats, status FROM old),
           delta AS (
               SELECT account_id, sum(sats) FILTER (WHERE status NOT IN ('dropped', 'replaced')) AS credited
               FROM contributions GROUP BY account_id)
           INSERT INTO balances (account_id, credited_sats, pending_sats, unconfirmed_sats)
           SELECT account_id, coalesce(credited, 0), 0, 0 FROM delta
           ON CONFLICT (account_id) DO UPDATE SET
               credited_sats = balances.credited_sats + EXCLUDED.credited_sats"#,
        &rows.iter().map(|r| r.withdrawal.txid.clone()).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.withdrawal.account_id).collect::<Vec<_>>(),
        &w(&|x| x.amount_sats as i64),
        &rows.iter().map(|r| r.withdrawal.fee_sats.map(|f| f as i64)).collect::<Vec<_>>() as &[Option<i64>],
        &rows.iter().map(|r| r.withdrawal.inputs.join(",")).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.withdrawal.confirmations as i32).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.withdrawal.block_hash.clone()).collect::<Vec<_>>() as &[Option<String>],
        &rows.iter().map(|r| r.withdrawal.block_height.map(|h| h as i32)).collect::<Vec<_>>() as &[Option<i32>],
        &rows.iter().map(|r| r.withdrawal.status.as_str().to_string()).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.withdrawal.source.clone()).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.stream_version).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.first_position).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.position).collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_accounts(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    if !c.accounts.is_empty() {
        sqlx::query!(
            "INSERT INTO accounts (account_id, label, credit_confirmations, stream_version, created_position,
                                   descriptor, lookahead)
             SELECT id, label, cc, 0, pos, d, la
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::int[]) AS t(id, label, cc, pos, d, la)",
            &c.accounts.iter().map(|a| a.account_id).collect::<Vec<_>>(),
            &c.accounts.iter().map(|a| a.label.clone()).collect::<Vec<_>>(),
            &c.accounts.iter().map(|a| a.credit_confirmations).collect::<Vec<_>>(),
            &c.accounts.iter().map(|a| a.position).collect::<Vec<_>>(),
            &c.accounts.iter().map(|a| a.descriptor.clone()).collect::<Vec<_>>() as &[Option<String>],
            &c.accounts.iter().map(|a| a.lookahead).collect::<Vec<_>>() as &[Option<i32>],
        )
        .execute(&mut *conn)
        .await?;
    }
    if !c.addresses.is_empty() {
        sqlx::query!(
            "INSERT INTO addresses (address, account_id, script_pubkey, position, derivation_index)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bytea[], $4::bigint[], $5::int[])",
            &c.addresses
                .iter()
                .map(|a| a.address.clone())
                .collect::<Vec<_>>(),
            &c.addresses.iter().map(|a| a.account_id).collect::<Vec<_>>(),
            &c.addresses
                .iter()
                .map(|a| a.script_pubkey.clone())
                .collect::<Vec<_>>(),
            &c.addresses.iter().map(|a| a.position).collect::<Vec<_>>(),
            &c.addresses.iter().map(|a| a.index).collect::<Vec<_>>() as &[Option<i32>],
        )
        .execute(&mut *conn)
        .await?;
    }
    if !c.account_versions.is_empty() {
        sqlx::query!(
            "UPDATE accounts SET stream_version = t.v, watched_to = GREATEST(watched_to, t.w),
                    handed_out = GREATEST(handed_out, t.h)
             FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[]) AS t(id, v, w, h)
             WHERE accounts.account_id = t.id",
            &c.account_versions.keys().copied().collect::<Vec<_>>(),
            &c.account_versions.values().copied().collect::<Vec<_>>(),
            &c.account_versions
                .keys()
                .map(|id| c.account_progress.get(id).map_or(0, |p| p.0))
                .collect::<Vec<_>>(),
            &c.account_versions
                .keys()
                .map(|id| c.account_progress.get(id).map_or(0, |p| p.1))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn write_chain(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    let Some((start, version)) = c.chain else {
        return Ok(());
    };
    let gone: Vec<i32> = c
        .blocks
        .iter()
        .filter(|(_, b)| b.is_none())
        .map(|(h, _)| *h)
        .collect();
    let now: Vec<&BlockRow> = c.blocks.values().flatten().collect();
    sqlx::query!("DELETE FROM chain_blocks WHERE height = ANY($1)", &gone)
        .execute(&mut *conn)
        .await?;
    sqlx::query!(
        "INSERT INTO chain_blocks (height, hash, prev_hash, time)
         SELECT * FROM UNNEST($1::int[], $2::text[], $3::text[], $4::bigint[])
         ON CONFLICT (height) DO UPDATE SET hash = EXCLUDED.hash, prev_hash = EXCLUDED.prev_hash, time = EXCLUDED.time",
        &now.iter().map(|b| b.height).collect::<Vec<_>>(),
        &now.iter().map(|b| b.hash.clone()).collect::<Vec<_>>(),
        &now.iter().map(|b| b.prev_hash.clone()).collect::<Vec<_>>(),
        &now.iter().map(|b| b.time).collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    // The start height is where the first block ever connected; later batches keep it.
    sqlx::query!(
        "INSERT INTO chain_state (start_height, stream_version) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET stream_version = EXCLUDED.stream_version",
        start,
        version
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Upserts the deposits and moves each account's balance by the difference their new
/// states make (new contribution minus old), in one statement: the cost follows the
/// deposits a batch changes, not how many an account has. Where a deposit's amount counts:
/// credited; else pending with 1+ confirmations; else unconfirmed when in the mempool or
/// returned to it by a reorg.
async fn write_deposits(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    if c.deposits.is_empty() {
        return Ok(());
    }
    let rows: Vec<&DepositRow> = c.deposits.values().collect();
    sqlx::query!(
        r#"WITH new AS (
               SELECT * FROM UNNEST($1::text[], $2::int[], $3::uuid[], $4::text[], $5::bigint[], $6::int[],
                                    $7::text[], $8::int[], $9::bool[], $10::int[], $11::text[], $12::int[],
                                    $13::bigint[], $14::bigint[], $15::text[])
                   AS t(txid, vout, account_id, address, amount_sats, confirmations, block_hash,
                        block_height, credited, credit_confirmations, status, stream_version, position,
                        first_position, inputs)),
           old AS (
               SELECT d.account_id, d.amount_sats, d.confirmations, d.credited, d.status
               FROM deposits d JOIN new USING (txid, vout)),
           upsert AS (
               INSERT INTO deposits (txid, vout, account_id, address, amount_sats, confirmations, block_hash,
                                     block_height, credited, credit_confirmations, status, stream_version,
                                     first_position, last_position, inputs)
               SELECT txid, vout, account_id, address, amount_sats, confirmations, block_hash, block_height,
                      credited, credit_confirmations, status, stream_version, first_position, position, inputs
               FROM new
               ON CONFLICT (txid, vout) DO UPDATE SET
                   confirmations = EXCLUDED.confirmations, block_hash = EXCLUDED.block_hash,
                   block_height = EXCLUDED.block_height, credited = EXCLUDED.credited,
                   status = EXCLUDED.status, stream_version = EXCLUDED.stream_version,
                   last_position = EXCLUDED.last_position),
           contributions AS (
               SELECT account_id, 1 AS sign, amount_sats, confirmations, credited, status FROM new
               UNION ALL
               SELECT account_id, -1, amount_sats, confirmations, credited, status FROM old),
           delta AS (
               SELECT account_id,
                      sum(sign * amount_sats) FILTER (WHERE credited) AS credited,
                      sum(sign * amount_sats) FILTER (WHERE NOT credited AND confirmations >= 1) AS pending,
                      sum(sign * amount_sats) FILTER (WHERE confirmations = 0 AND status IN ('mempool', 'reorged')) AS unconfirmed
               FROM contributions GROUP BY account_id)
           INSERT INTO balances (account_id, credited_sats, pending_sats, unconfirmed_sats)
           SELECT account_id, coalesce(credited, 0), coalesce(pending, 0), coalesce(unconfirmed, 0) FROM delta
           ON CONFLICT (account_id) DO UPDATE SET
               credited_sats = balances.credited_sats + EXCLUDED.credited_sats,
               pending_sats = balances.pending_sats + EXCLUDED.pending_sats,
               unconfirmed_sats = balances.unconfirmed_sats + EXCLUDED.unconfirmed_sats"#,
        &col(&rows, |d| d.txid.clone()),
        &col(&rows, |d| d.vout as i32),
        &col(&rows, |d| d.account_id),
        &col(&rows, |d| d.address.clone()),
        &col(&rows, |d| d.amount_sats as i64),
        &col(&rows, |d| d.confirmations as i32),
        &col(&rows, |d| d.block_hash.clone()) as &[Option<String>],
        &col(&rows, |d| d.block_height.map(|h| h as i32)) as &[Option<i32>],
        &col(&rows, |d| d.credited),
        &col(&rows, |d| d.credit_confirmations as i32),
        &col(&rows, |d| d.status.as_str().to_string()),
        &rows.iter().map(|r| r.stream_version).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.position).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.first_position).collect::<Vec<_>>(),
        &col(&rows, |d| d.inputs.join(",")),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn col<T>(rows: &[&DepositRow], f: impl Fn(&Deposit) -> T) -> Vec<T> {
    rows.iter().map(|r| f(&r.deposit)).collect()
}

/// Every account a batch touched has a balance row, zero until a deposit moves it
/// ([`write_deposits`]).
async fn write_balances(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    if c.touched_accounts.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO balances (account_id, credited_sats, pending_sats, unconfirmed_sats)
         SELECT id, 0, 0, 0 FROM UNNEST($1::uuid[]) AS a(id)
         ON CONFLICT (account_id) DO NOTHING",
        &c.touched_accounts.iter().copied().collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
