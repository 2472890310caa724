//! The mempool watcher: `deposit.seen` with 0 confirmations for transactions paying
//! watched scripts before they are mined; `*.replaced` when a new mempool transaction
//! spends what an unconfirmed deposit's or withdrawal's transaction spent
//! (replace-by-fee); observed withdrawals (spends of deposits made elsewhere, or one the
//! API broadcast and had not recorded yet); and `*.dropped` when a transaction has been
//! missing from the mempool, unmined, for the grace period. Each transaction is fetched
//! once, outside the log lock; the cache is dropped when new addresses are watched, so
//! earlier transactions are checked again.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bitcoin::{OutPoint, Transaction, Txid};
use serde_json::json;
use sqlx::PgConnection;

use super::node::Node;
use super::outgoing;
use super::watches::Watches;
use crate::domain::ledger::Key;
use crate::domain::ledger::{FoundOutput, Ledger, LedgerState};
use crate::domain::tracked::Withdrawal;
use crate::projections::read;
use crate::unit_of_work::{Decision, Observation, RecordError, UnitOfWork};

#[derive(Default)]
pub struct MempoolWatcher {
    checked: HashSet<Txid>,
    /// Unconfirmed deposits and withdrawals not in the mempool, since when (reset on a
    /// restart: the grace period then starts again, which only delays `*.dropped`).
    missing_since: HashMap<Key, Instant>,
}

impl MempoolWatcher {
    pub async fn poll(
        &mut self,
        log: &UnitOfWork,
        node: &Node,
        watches: &mut Watches,
        final_confirmations: u32,
        drop_grace: Duration,
    ) -> anyhow::Result<()> {
        let pool = log.pool();
        if watches.refresh(&mut *pool.acquire().await?).await? {
            self.checked.clear();
        }
        if watches.is_empty() {
            return Ok(());
        }
        let mempool = node.raw_mempool().await?;
        let current: HashSet<Txid> = mempool.iter().copied().collect();
        self.checked.retain(|t| current.contains(t));
        let unconfirmed = read::unconfirmed(pool).await?;
        let spent_by_tracked: HashSet<OutPoint> = unconfirmed
            .iter()
            .flat_map(|(_, inputs)| inputs.iter().copied())
            .collect();
        let mut found = Vec::new();
        let mut fetched = Vec::new();
        let mut spends = Vec::new();
        let mut new_txs = Vec::new();
        for txid in mempool.into_iter().filter(|t| !self.checked.contains(t)) {
            if let Some(tx) = node.mempool_transaction(txid).await? {
                watches.scan(&tx, &mut found);
                for input in &tx.input {
                    if spent_by_tracked.contains(&input.previous_output) {
                        spends.push((txid, input.previous_output));
                    }
                }
                new_txs.push(tx);
            }
            fetched.push(txid);
        }
        // Spends of deposits: looked up here first, so the usual poll (nothing of ours)
        // takes no lock; the observation looks again under it.
        let spending: Vec<Transaction> = if new_txs.is_empty() {
            Vec::new()
        } else {
            let refs: Vec<&Transaction> = new_txs.iter().collect();
            let mut conn = pool.acquire().await?;
            outgoing::find(&mut conn, &refs)
                .await?
                .into_iter()
                .map(|(i, _)| new_txs[i].clone())
                .collect()
        };
        // Transactions that left the mempool unmined, past the grace period.
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut missing = HashMap::new();
        for (key, _) in &unconfirmed {
            let txid = match key {
                Key::Deposit(o) => o.txid,
                Key::Withdrawal(t) => *t,
            };
            if current.contains(&txid) {
                continue;
            }
            let since = self.missing_since.get(key).copied().unwrap_or(now);
            if now.duration_since(since) >= drop_grace {
                dropped.push(*key);
            } else {
                missing.insert(*key, since);
            }
        }
        self.missing_since = missing;
        if !found.is_empty() || !spends.is_empty() || !dropped.is_empty() || !spending.is_empty() {
            let (replaced, gone) = (spends.len(), dropped.len());
            let recorded = log
                .record(MempoolObservation {
                    found,
                    spends,
                    dropped,
                    spending,
                    final_confirmations,
                })
                .await?;
            if !recorded.events.is_empty() {
                tracing::info!(
                    events = recorded.events.len(),
                    replaced,
                    dropped = gone,
                    "mempool observed"
                );
            }
        }
        // Only now: a failure above leaves them to be checked again next round.
        self.checked.extend(fetched);
        Ok(())
    }
}

/// What one poll of the mempool saw, recorded as one observation.
struct MempoolObservation {
    found: Vec<FoundOutput>,
    /// (spender, outpoint): new transactions spending what a tracked one spent.
    spends: Vec<(Txid, OutPoint)>,
    dropped: Vec<Key>,
    /// New transactions spending deposits (withdrawals, unless recorded meanwhile).
    spending: Vec<Transaction>,
    final_confirmations: u32,
}

impl Observation for MempoolObservation {
    type State = (LedgerState, Vec<Withdrawal>);
    type Outcome = ();

    async fn load(&mut self, conn: &mut PgConnection) -> Result<Self::State, RecordError> {
        let refs: Vec<&Transaction> = self.spending.iter().collect();
        let observed: Vec<Withdrawal> = outgoing::find(conn, &refs)
            .await?
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        let txids: Vec<Txid> = self.found.iter().map(|f| f.outpoint.txid).collect();
        let ledger = read::ledger_state(conn, &[], &txids, &[]).await?;
        Ok((ledger, observed))
    }

    fn decide(self, (state, observed): Self::State) -> Result<Decision<()>, RecordError> {
        let mut ledger = Ledger::new(
            self.final_confirmations,
            state,
            json!({"source": "mempool"}),
        );
        ledger.seen_in_mempool(self.found);
        for w in observed {
            ledger.broadcast(w);
        }
        for (spender, outpoint) in self.spends {
            ledger.spent(spender, outpoint);
        }
        ledger.dropped(&self.dropped);
        Ok(Decision::new(ledger.into_events(), ()))
    }
}
