//! Outgoing transactions not submitted through the API: a transaction spending an output
//! a deposit received is the account's withdrawal all the same, `"source": "observed"`.
//! Found by looking the inputs of new transactions (a block's, or the mempool's) up in
//! `deposits`, one query per batch.

use std::collections::{BTreeMap, HashSet};

use bitcoin::Transaction;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ledger::{DepositStatus, Withdrawal};
use crate::domain::Sats;

/// The withdrawals `txs` make of watched outputs, for transactions not already tracked.
/// Each comes with the index of its transaction in `txs`. A transaction spending deposits
/// of several accounts is the withdrawal of the account it takes most from.
pub async fn find(
    conn: &mut PgConnection,
    txs: &[&Transaction],
) -> Result<Vec<(usize, Withdrawal)>, sqlx::Error> {
    let mut txids = Vec::new();
    let mut vouts = Vec::new();
    for t in txs.iter().filter(|t| !t.is_coinbase()) {
        for i in &t.input {
            txids.push(i.previous_output.txid.to_string());
            vouts.push(i.previous_output.vout as i32);
        }
    }
    if txids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query!(
        r#"SELECT d.txid, d.vout, d.account_id, d.amount_sats FROM deposits d
           JOIN UNNEST($1::text[], $2::int[]) AS i(txid, vout) ON d.txid = i.txid AND d.vout = i.vout"#,
        &txids,
        &vouts
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let spent: BTreeMap<(String, u32), (Uuid, i64)> = rows
        .into_iter()
        .map(|r| ((r.txid, r.vout as u32), (r.account_id, r.amount_sats)))
        .collect();
    let mut found = Vec::new();
    for (index, t) in txs.iter().enumerate().filter(|(_, t)| !t.is_coinbase()) {
        let mine: Vec<(Uuid, i64)> = t
            .input
            .iter()
            .filter_map(|i| {
                spent
                    .get(&(i.previous_output.txid.to_string(), i.previous_output.vout))
                    .copied()
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut per_account: BTreeMap<Uuid, i64> = BTreeMap::new();
        for (account, sats) in &mine {
            *per_account.entry(*account).or_default() += sats;
        }
        let (account_id, amount) = per_account
            .into_iter()
            .max_by_key(|(_, sats)| *sats)
            .expect("at least one input is ours");
        let out_total: i64 = t.output.iter().map(|o| o.value.to_sat() as i64).sum();
        let fee = (mine.len() == t.input.len())
            .then(|| mine.iter().map(|(_, s)| s).sum::<i64>() - out_total)
            .filter(|f| *f >= 0)
            .map(|f| f as u64);
        let amount = Sats(amount as u64);
        found.push((
            index,
            Withdrawal {
                account_id,
                txid: t.compute_txid().to_string(),
                amount: amount.to_btc_string(),
                amount_sats: amount.0,
                fee: fee.map(|f| Sats(f).to_btc_string()),
                fee_sats: fee,
                inputs: super::watches::inputs_of(t),
                confirmations: 0,
                block_hash: None,
                block_height: None,
                status: DepositStatus::Mempool,
                source: "observed".into(),
            },
        ));
    }
    // Already tracked (broadcast through the API, or seen before): not again.
    let candidates: Vec<String> = found.iter().map(|(_, w)| w.txid.clone()).collect();
    let known: HashSet<String> = sqlx::query_scalar!(
        "SELECT txid FROM withdrawals WHERE txid = ANY($1)",
        &candidates
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    found.retain(|(_, w)| !known.contains(&w.txid));
    Ok(found)
}
