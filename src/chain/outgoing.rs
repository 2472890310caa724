//! Outgoing transactions seen on the chain or in the mempool: a transaction spending an
//! output a deposit received is the account's withdrawal (`Withdrawal::from_spends`, the
//! rule the API uses too). One asked for through the API (`withdrawal_requests`) is that
//! account's, source `api`, whoever records it first; any other is the account's it takes
//! most from, source `observed`.
//!
//! [`Lookup::load`] reads, for a batch of new transactions, the deposits among their
//! inputs, which of them are withdrawals already and which the API asked for — one query
//! each, under the log lock (the unit of work's load step); [`Lookup::withdrawal`] then
//! decides, purely, one transaction at a time, also counting deposits the same
//! observation found earlier (a catch-up batch's earlier blocks).

use std::collections::{BTreeMap, HashSet};

use bitcoin::{OutPoint, Transaction, Txid};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::ledger::FoundOutput;
use crate::domain::tracked::{Source, Spent, Withdrawal};
use crate::projections::read;

/// What deciding the withdrawals of a batch of transactions needs from the projections.
#[derive(Debug, Default)]
pub struct Lookup {
    /// Deposits stored before the observation, among the inputs.
    spent: BTreeMap<OutPoint, Spent>,
    /// Spenders already recorded as withdrawals.
    known: HashSet<Txid>,
    /// Spenders the API asked for: their account.
    requested: BTreeMap<Txid, Uuid>,
}

impl Lookup {
    /// For `txs`, whose batch also found `found` (outputs paying watched scripts, which
    /// later transactions of the batch may spend).
    pub async fn load(
        conn: &mut PgConnection,
        txs: &[&Transaction],
        found: &[FoundOutput],
    ) -> Result<Lookup, sqlx::Error> {
        let inputs: Vec<OutPoint> = txs
            .iter()
            .filter(|t| !t.is_coinbase())
            .flat_map(|t| t.input.iter().map(|i| i.previous_output))
            .collect();
        let spent = read::spent_deposits(conn, &inputs).await?;
        let found: HashSet<OutPoint> = found.iter().map(|f| f.outpoint).collect();
        let spenders: Vec<Txid> = txs
            .iter()
            .filter(|t| {
                !t.is_coinbase()
                    && t.input.iter().any(|i| {
                        spent.contains_key(&i.previous_output) || found.contains(&i.previous_output)
                    })
            })
            .map(|t| t.compute_txid())
            .collect();
        Ok(Lookup {
            known: read::known_withdrawals(conn, &spenders).await?,
            requested: read::withdrawal_requests(conn, &spenders).await?,
            spent,
        })
    }

    /// The withdrawal `tx` is, unless recorded already: of the deposits stored before,
    /// and of `earlier` (deposits found by this observation before `tx`'s block).
    pub fn withdrawal(
        &self,
        tx: &Transaction,
        earlier: &BTreeMap<OutPoint, Spent>,
    ) -> Option<Withdrawal> {
        if tx.is_coinbase() {
            return None;
        }
        let spends_ours = |o: &OutPoint| self.spent.contains_key(o) || earlier.contains_key(o);
        if !tx.input.iter().any(|i| spends_ours(&i.previous_output)) {
            return None;
        }
        let txid = tx.compute_txid();
        if self.known.contains(&txid) {
            return None;
        }
        let mut spent = self.spent.clone();
        for (o, s) in earlier {
            spent.entry(*o).or_insert(*s);
        }
        let (account, source) = match self.requested.get(&txid) {
            Some(account) => (Some(*account), Source::Api),
            None => (None, Source::Observed),
        };
        Withdrawal::from_spends(tx, &spent, account, source)
    }
}

/// The withdrawals `txs` make of deposits stored before, for transactions not recorded
/// as withdrawals yet, each with the index of its transaction in `txs`.
pub async fn find(
    conn: &mut PgConnection,
    txs: &[&Transaction],
) -> Result<Vec<(usize, Withdrawal)>, sqlx::Error> {
    let lookup = Lookup::load(conn, txs, &[]).await?;
    Ok(txs
        .iter()
        .enumerate()
        .filter_map(|(i, t)| lookup.withdrawal(t, &BTreeMap::new()).map(|w| (i, w)))
        .collect())
}
