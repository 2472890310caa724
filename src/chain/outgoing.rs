//! Outgoing transactions seen on the chain or in the mempool: a transaction spending an
//! output a deposit received is the account's withdrawal (`Withdrawal::from_spends`, the
//! rule the API uses too). One asked for through the API (`withdrawal_requests`) is that
//! account's, source `api`, whoever records it first; any other is the account's it takes
//! most from, source `observed`. Found by looking the inputs of new transactions up in
//! `deposits`: one query per batch, under the log lock (the unit of work's load step).

use std::collections::BTreeMap;

use bitcoin::{OutPoint, Transaction, Txid};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::tracked::{Source, Withdrawal};
use crate::projections::read;

/// The withdrawals `txs` make of deposits, for transactions not recorded as withdrawals
/// yet, each with the index of its transaction in `txs`.
pub async fn find(
    conn: &mut PgConnection,
    txs: &[&Transaction],
) -> Result<Vec<(usize, Withdrawal)>, sqlx::Error> {
    let inputs: Vec<OutPoint> = txs
        .iter()
        .filter(|t| !t.is_coinbase())
        .flat_map(|t| t.input.iter().map(|i| i.previous_output))
        .collect();
    let spent = read::spent_deposits(conn, &inputs).await?;
    if spent.is_empty() {
        return Ok(Vec::new());
    }
    let spenders: Vec<(usize, Txid)> = txs
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            !t.is_coinbase()
                && t.input
                    .iter()
                    .any(|i| spent.contains_key(&i.previous_output))
        })
        .map(|(i, t)| (i, t.compute_txid()))
        .collect();
    let txids: Vec<Txid> = spenders.iter().map(|(_, t)| *t).collect();
    let known = read::known_withdrawals(conn, &txids).await?;
    let requested: BTreeMap<Txid, Uuid> = read::withdrawal_requests(conn, &txids).await?;
    Ok(spenders
        .into_iter()
        .filter(|(_, txid)| !known.contains(txid))
        .filter_map(|(i, txid)| {
            let (account, source) = match requested.get(&txid) {
                Some(account) => (Some(*account), Source::Api),
                None => (None, Source::Observed),
            };
            Withdrawal::from_spends(txs[i], &spent, account, source).map(|w| (i, w))
        })
        .collect())
}
