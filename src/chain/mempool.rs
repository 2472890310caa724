//! The mempool watcher: `deposit.seen` with 0 confirmations for transactions paying
//! watched scripts before they are mined; `deposit.replaced` when a new mempool transaction
//! spends what an unconfirmed deposit's transaction spent (replace-by-fee); and
//! `deposit.dropped` when a deposit's transaction has been missing from the mempool,
//! unmined, for the grace period. Each transaction is fetched once; the cache is dropped
//! when new addresses are watched, so earlier transactions are checked again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bitcoin::Txid;
use serde_json::json;
use sqlx::PgPool;

use super::node::Node;
use super::watches::Watches;
use crate::domain::ledger::Ledger;
use crate::{projections, store};

#[derive(Default)]
pub struct MempoolWatcher {
    checked: HashSet<Txid>,
    /// Unconfirmed deposits not in the mempool, since when (reset on a restart: the grace
    /// period then starts again, which only delays `deposit.dropped`).
    missing_since: HashMap<(String, u32), Instant>,
}

impl MempoolWatcher {
    pub async fn poll(
        &mut self,
        pool: &PgPool,
        node: &Node,
        watches: &mut Watches,
        final_confirmations: u32,
        network: bitcoin::Network,
        drop_grace: Duration,
    ) -> anyhow::Result<()> {
        if watches.refresh(&mut *pool.acquire().await?).await? {
            self.checked.clear();
        }
        if watches.is_empty() {
            return Ok(());
        }
        let mempool = node.raw_mempool().await?;
        let current: HashSet<Txid> = mempool.iter().copied().collect();
        self.checked.retain(|t| current.contains(t));
        let mut unconfirmed = projections::read::unconfirmed_deposits(pool).await?;
        // Withdrawals too, keyed apart from deposits' (txid, vout) by u32::MAX.
        unconfirmed.extend(
            projections::read::unconfirmed_withdrawals(pool)
                .await?
                .into_iter()
                .map(|(txid, inputs)| (txid, u32::MAX, inputs)),
        );
        let spent_by_deposits: HashMap<bitcoin::OutPoint, ()> = unconfirmed
            .iter()
            .flat_map(|(_, _, inputs)| inputs.iter().filter_map(|i| i.parse().ok()))
            .map(|op| (op, ()))
            .collect();
        let mut found = Vec::new();
        let mut fetched = Vec::new();
        let mut spends = Vec::new();
        let mut new_txs = Vec::new();
        for txid in mempool.into_iter().filter(|t| !self.checked.contains(t)) {
            if let Some(tx) = node.mempool_transaction(txid).await? {
                watches.scan(&tx, &mut found);
                for input in &tx.input {
                    if spent_by_deposits.contains_key(&input.previous_output) {
                        spends.push((txid.to_string(), input.previous_output.to_string()));
                    }
                }
                new_txs.push(tx);
            }
            fetched.push(txid);
        }
        // Spends of watched outputs not submitted through the API.
        let refs: Vec<&bitcoin::Transaction> = new_txs.iter().collect();
        let observed = if refs.is_empty() {
            Vec::new() // the usual poll: nothing new, no connection taken
        } else {
            super::outgoing::find(&mut *pool.acquire().await?, &refs).await?
        };
        // Deposits whose transaction left the mempool unmined, past the grace period.
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut missing = HashMap::new();
        for (txid, vout, _) in &unconfirmed {
            let in_mempool = txid.parse::<Txid>().is_ok_and(|t| current.contains(&t));
            if in_mempool {
                continue;
            }
            let key = (txid.clone(), *vout);
            let since = self.missing_since.get(&key).copied().unwrap_or(now);
            if now.duration_since(since) >= drop_grace {
                dropped.push(key);
            } else {
                missing.insert(key, since);
            }
        }
        self.missing_since = missing;
        if !found.is_empty() || !spends.is_empty() || !dropped.is_empty() || !observed.is_empty() {
            let mut tx = pool.begin().await?;
            store::lock(&mut tx).await?;
            let mut txids: Vec<String> = found.iter().map(|f| f.txid.clone()).collect();
            txids.extend(dropped.iter().map(|(t, _)| t.clone()));
            let loaded = projections::read::deposits_for_observation(&mut tx, &[], &txids).await?;
            let withdrawals = projections::read::withdrawals_for_observation(&mut tx, &[]).await?;
            let mut ledger = Ledger::new(
                final_confirmations,
                None,
                loaded,
                json!({"source": "mempool"}),
            )
            .with_withdrawals(withdrawals);
            ledger.seen_in_mempool(found);
            for (_, w) in observed {
                ledger.broadcast(w);
            }
            for (spender, outpoint) in &spends {
                ledger.spent(spender, outpoint);
            }
            let (dropped_withdrawals, dropped): (Vec<_>, Vec<_>) =
                dropped.into_iter().partition(|(_, vout)| *vout == u32::MAX);
            ledger.dropped(&dropped);
            ledger.dropped_withdrawals(
                &dropped_withdrawals
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect::<Vec<_>>(),
            );
            let mut events = ledger.into_events();
            events.extend(super::lookahead::extend_for_deposits(&mut tx, &events, network).await?);
            let stored = store::append(&mut tx, &events).await?;
            projections::apply(&mut tx, &stored).await?;
            tx.commit().await?;
            if !stored.is_empty() {
                tracing::info!(
                    events = stored.len(),
                    replaced = spends.len(),
                    dropped = dropped.len(),
                    "mempool observed"
                );
            }
        }
        // Only now: a failure above leaves them to be checked again next round.
        self.checked.extend(fetched);
        Ok(())
    }
}
