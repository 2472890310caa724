//! The set-based statements that write a batch's [`Changes`]: a handful per batch, never
//! one per event. The cost follows the rows a batch changes, not how many there are.

use sqlx::PgConnection;

use super::fold::{Changes, Row};
use crate::domain::tracked::{Deposit, Withdrawal};

pub async fn write(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    write_accounts(conn, c).await?;
    write_chain(conn, c).await?;
    write_balances(conn, c).await?;
    write_deposits(conn, c).await?;
    write_withdrawals(conn, c).await
}

/// One column of `rows`, for UNNEST.
fn col<'a, S, T>(rows: &[&'a Row<S>], f: impl Fn(&'a Row<S>) -> T) -> Vec<T> {
    rows.iter().map(|r| f(r)).collect()
}

/// Outpoints as the projection stores them: `txid:vout`, comma-separated.
fn joined(inputs: &[bitcoin::OutPoint]) -> String {
    inputs
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Upserts the withdrawals and debits each account's credited balance by what a
/// withdrawal takes (its amount, the fee included) while it is not dropped or replaced:
/// new contribution minus old, as for deposits.
async fn write_withdrawals(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    if c.withdrawals.is_empty() {
        return Ok(());
    }
    let rows: Vec<&Row<Withdrawal>> = c.withdrawals.values().collect();
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
        &col(&rows, |r| r.state.txid.to_string()),
        &col(&rows, |r| r.state.account_id),
        &col(&rows, |r| r.state.amount_sats.0 as i64),
        &col(&rows, |r| r.state.fee_sats.map(|f| f.0 as i64)) as &[Option<i64>],
        &col(&rows, |r| joined(&r.state.inputs)),
        &col(&rows, |r| r.state.confirmations as i32),
        &col(&rows, |r| r.state.block_hash.map(|h| h.to_string())) as &[Option<String>],
        &col(&rows, |r| r.state.block_height.map(|h| h as i32)) as &[Option<i32>],
        &col(&rows, |r| r.state.status.as_str()) as &[&str],
        &col(&rows, |r| r.state.source.as_str()) as &[&str],
        &col(&rows, |r| r.stream_version),
        &col(&rows, |r| r.first_position.0),
        &col(&rows, |r| r.position.0),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_accounts(conn: &mut PgConnection, c: &Changes) -> Result<(), sqlx::Error> {
    if !c.accounts.is_empty() {
        let a = &c.accounts;
        sqlx::query!(
            "INSERT INTO accounts (account_id, label, credit_confirmations, stream_version, created_position,
                                   descriptor, lookahead)
             SELECT id, label, cc, 0, pos, d, la
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::int[]) AS t(id, label, cc, pos, d, la)",
            &a.iter().map(|(a, _)| a.account_id).collect::<Vec<_>>(),
            &a.iter().map(|(a, _)| a.label.as_str()).collect::<Vec<_>>() as &[&str],
            &a.iter().map(|(a, _)| a.credit_confirmations as i32).collect::<Vec<_>>(),
            &a.iter().map(|(_, p)| p.0).collect::<Vec<_>>(),
            &a.iter().map(|(a, _)| a.descriptor.as_deref()).collect::<Vec<_>>() as &[Option<&str>],
            &a.iter().map(|(a, _)| a.lookahead.map(|l| l as i32)).collect::<Vec<_>>() as &[Option<i32>],
        )
        .execute(&mut *conn)
        .await?;
    }
    if !c.addresses.is_empty() {
        let a = &c.addresses;
        sqlx::query!(
            "INSERT INTO addresses (address, account_id, script_pubkey, position, derivation_index)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bytea[], $4::bigint[], $5::int[])",
            &a.iter()
                .map(|(a, _)| a.address.as_str())
                .collect::<Vec<_>>() as &[&str],
            &a.iter().map(|(a, _)| a.account_id).collect::<Vec<_>>(),
            &a.iter()
                .map(|(a, _)| a.script_pubkey.as_bytes())
                .collect::<Vec<_>>() as &[&[u8]],
            &a.iter().map(|(_, p)| p.0).collect::<Vec<_>>(),
            &a.iter()
                .map(|(a, _)| a.index.map(|i| i as i32))
                .collect::<Vec<_>>() as &[Option<i32>],
        )
        .execute(&mut *conn)
        .await?;
    }
    if !c.account_versions.is_empty() {
        let progress = |id: &uuid::Uuid| c.account_progress.get(id).copied().unwrap_or_default();
        sqlx::query!(
            "UPDATE accounts SET stream_version = t.v, watched_to = GREATEST(watched_to, t.w),
                    handed_out = GREATEST(handed_out, t.h)
             FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[]) AS t(id, v, w, h)
             WHERE accounts.account_id = t.id",
            &c.account_versions.keys().copied().collect::<Vec<_>>(),
            &c.account_versions.values().copied().collect::<Vec<_>>(),
            &c.account_versions
                .keys()
                .map(|id| progress(id).0 as i32)
                .collect::<Vec<_>>(),
            &c.account_versions
                .keys()
                .map(|id| progress(id).1 as i32)
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
        .map(|(h, _)| *h as i32)
        .collect();
    let now: Vec<_> = c.blocks.values().flatten().collect();
    sqlx::query!("DELETE FROM chain_blocks WHERE height = ANY($1)", &gone)
        .execute(&mut *conn)
        .await?;
    sqlx::query!(
        "INSERT INTO chain_blocks (height, hash, prev_hash, time)
         SELECT * FROM UNNEST($1::int[], $2::text[], $3::text[], $4::bigint[])
         ON CONFLICT (height) DO UPDATE SET hash = EXCLUDED.hash, prev_hash = EXCLUDED.prev_hash, time = EXCLUDED.time",
        &now.iter().map(|b| b.height as i32).collect::<Vec<_>>(),
        &now.iter().map(|b| b.hash.to_string()).collect::<Vec<_>>(),
        &now.iter().map(|b| b.prev_hash.to_string()).collect::<Vec<_>>(),
        &now.iter().map(|b| i64::from(b.time)).collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    // The start height is where the first block ever connected; later batches keep it.
    sqlx::query!(
        "INSERT INTO chain_state (start_height, stream_version) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET stream_version = EXCLUDED.stream_version",
        start as i32,
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
    let rows: Vec<&Row<Deposit>> = c.deposits.values().collect();
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
        &col(&rows, |r| r.state.txid.to_string()),
        &col(&rows, |r| r.state.vout as i32),
        &col(&rows, |r| r.state.account_id),
        &col(&rows, |r| r.state.address.as_str()) as &[&str],
        &col(&rows, |r| r.state.amount_sats.0 as i64),
        &col(&rows, |r| r.state.confirmations as i32),
        &col(&rows, |r| r.state.block_hash.map(|h| h.to_string())) as &[Option<String>],
        &col(&rows, |r| r.state.block_height.map(|h| h as i32)) as &[Option<i32>],
        &col(&rows, |r| r.state.credited),
        &col(&rows, |r| r.state.credit_confirmations as i32),
        &col(&rows, |r| r.state.status.as_str()) as &[&str],
        &col(&rows, |r| r.stream_version),
        &col(&rows, |r| r.position.0),
        &col(&rows, |r| r.first_position.0),
        &col(&rows, |r| joined(&r.state.inputs)),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
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
