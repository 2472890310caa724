//! The mempool watcher: `deposit.seen` with 0 confirmations for transactions paying
//! watched scripts before they are mined; `*.replaced` when a new mempool transaction
//! spends what an unconfirmed deposit's or withdrawal's transaction spent
//! (replace-by-fee); observed withdrawals (spends of deposits made elsewhere, or one the
//! API broadcast and had not recorded yet); and `*.dropped` when a transaction has been
//! missing from the mempool, unmined, for the grace period.
//!
//! Transactions arrive two ways: pushed by the node over ZMQ (`rawtx`: no RPC at all), and
//! by the poll, which lists the mempool, forgets what left it and fetches what is new in
//! JSON-RPC batches. Every transaction seen is kept in the [`MempoolIndex`]; when new
//! addresses are watched, the index says which transactions already there pay them, and
//! only those are fetched again. Everything is fetched outside the log lock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bitcoin::{OutPoint, Transaction, Txid};
use serde_json::json;
use sqlx::PgConnection;

use super::mempool_index::MempoolIndex;
use super::node::Node;
use super::outgoing;
use super::watches::{Added, Watches};
use crate::domain::ledger::{FoundOutput, Key, Ledger, LedgerState};
use crate::domain::tracked::Withdrawal;
use crate::projections::read;
use crate::unit_of_work::{Decision, Observation, RecordError, UnitOfWork};

#[derive(Default)]
pub struct MempoolWatcher {
    index: MempoolIndex,
    /// Unconfirmed deposits and withdrawals not in the mempool, since when (reset on a
    /// restart: the grace period then starts again, which only delays `*.dropped`).
    missing_since: HashMap<Key, Instant>,
}

/// What the mempool part of a follower round needs.
pub struct MempoolContext<'a> {
    pub unit_of_work: &'a UnitOfWork,
    pub node: &'a Node,
    pub watches: &'a mut Watches,
    pub final_confirmations: u32,
    pub drop_grace: Duration,
}

impl MempoolWatcher {
    /// The transactions indexed, and the bytes the index holds.
    pub fn indexed(&self) -> (usize, usize) {
        (self.index.len(), self.index.bytes())
    }

    /// A poll: the mempool listed, what left it forgotten, what is new fetched (batched),
    /// the transactions already indexed that pay newly watched scripts fetched again, and
    /// drops decided.
    pub async fn poll(&mut self, cx: MempoolContext<'_>) -> anyhow::Result<()> {
        let pool = cx.unit_of_work.pool();
        cx.watches.refresh(&mut *pool.acquire().await?).await?;
        if cx.watches.is_empty() {
            return Ok(());
        }
        let mempool = cx.node.raw_mempool().await?;
        let current: HashSet<Txid> = mempool.iter().copied().collect();
        self.index.retain(|t| current.contains(t));
        let mut fetch = self.paying_added(cx.watches);
        fetch.extend(mempool.into_iter().filter(|t| !self.index.contains(t)));
        let fetched = cx.node.mempool_transactions(&fetch).await?;
        let txs: Vec<Transaction> = fetched.into_iter().flatten().collect();
        let unconfirmed = read::unconfirmed(pool).await?;
        let dropped = self.dropped(&unconfirmed, &current, cx.drop_grace);
        self.observe(cx, txs, unconfirmed, dropped).await
    }

    /// Transactions the node pushed (ZMQ `rawtx`): no RPC.
    pub async fn pushed(
        &mut self,
        cx: MempoolContext<'_>,
        txs: Vec<Transaction>,
    ) -> anyhow::Result<()> {
        let pool = cx.unit_of_work.pool();
        cx.watches.refresh(&mut *pool.acquire().await?).await?;
        let fresh: Vec<Transaction> = txs
            .into_iter()
            .filter(|t| !t.is_coinbase() && !self.index.contains(&t.compute_txid()))
            .collect();
        let mut txs = fresh;
        // Scripts watched since the last poll: the index may hold payments to them.
        let again = self.paying_added(cx.watches);
        txs.extend(
            cx.node
                .mempool_transactions(&again)
                .await?
                .into_iter()
                .flatten(),
        );
        let unconfirmed = read::unconfirmed(pool).await?;
        self.observe(cx, txs, unconfirmed, Vec::new()).await
    }

    /// The indexed transactions that may pay the scripts watched since the last call.
    fn paying_added(&self, watches: &mut Watches) -> Vec<Txid> {
        match watches.take_added() {
            Added::Keys(keys) => self.index.paying(&keys),
            Added::All => self.index.paying_where(|k| watches.contains_key(*k)),
        }
    }

    /// Unconfirmed deposits and withdrawals missing from the mempool for the grace period.
    fn dropped(
        &mut self,
        unconfirmed: &[(Key, Vec<OutPoint>)],
        current: &HashSet<Txid>,
        grace: Duration,
    ) -> Vec<Key> {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut missing = HashMap::new();
        for &(key, _) in unconfirmed {
            let txid = match key {
                Key::Deposit(o) => o.txid,
                Key::Withdrawal(t) => t,
            };
            if current.contains(&txid) {
                continue;
            }
            let since = self.missing_since.get(&key).copied().unwrap_or(now);
            if now.duration_since(since) >= grace {
                dropped.push(key);
            } else {
                missing.insert(key, since);
            }
        }
        self.missing_since = missing;
        dropped
    }

    /// Indexes `txs` and records what they mean for us, when they mean anything: the
    /// usual batch (nothing of ours) is looked at without taking the log lock.
    async fn observe(
        &mut self,
        cx: MempoolContext<'_>,
        txs: Vec<Transaction>,
        unconfirmed: Vec<(Key, Vec<OutPoint>)>,
        dropped: Vec<Key>,
    ) -> anyhow::Result<()> {
        let mut candidates = Vec::new();
        for tx in &txs {
            self.index.insert(tx);
            cx.watches.scan(tx, &mut candidates);
        }
        let pool = cx.unit_of_work.pool();
        let found = if candidates.is_empty() {
            Vec::new()
        } else {
            let mut conn = pool.acquire().await?;
            let mut found = Watches::resolve(&mut conn, vec![candidates]).await?;
            found.pop().unwrap_or_default()
        };
        let tracked_inputs: HashSet<OutPoint> = unconfirmed
            .into_iter()
            .flat_map(|(_, inputs)| inputs)
            .chain(found.iter().flat_map(|f| f.inputs.iter().copied()))
            .collect();
        // Transactions spending what a tracked one (or one found now) spent: replacements,
        // or the found deposits' own transactions (which the ledger tells apart).
        let conflicting: Vec<Transaction> = txs
            .iter()
            .filter(|t| {
                t.input
                    .iter()
                    .any(|i| tracked_inputs.contains(&i.previous_output))
            })
            .cloned()
            .collect();
        // Spends of deposits (withdrawals): looked up here first; the observation looks
        // again under the lock.
        let spending: Vec<Transaction> = if txs.is_empty() {
            Vec::new()
        } else {
            let refs: Vec<&Transaction> = txs.iter().collect();
            let mut conn = pool.acquire().await?;
            outgoing::find(&mut conn, &refs)
                .await?
                .into_iter()
                .map(|(i, _)| txs[i].clone())
                .collect()
        };
        let own = |t: &Transaction| found.iter().any(|f| f.outpoint.txid == t.compute_txid());
        let conflicts = conflicting.iter().any(|t| !own(t));
        if found.is_empty() && !conflicts && spending.is_empty() && dropped.is_empty() {
            return Ok(());
        }
        let (seen, gone) = (found.len(), dropped.len());
        let recorded = cx
            .unit_of_work
            .record(MempoolObservation {
                found,
                txs: conflicting,
                dropped,
                spending,
                final_confirmations: cx.final_confirmations,
            })
            .await?;
        if !recorded.events.is_empty() {
            tracing::info!(
                events = recorded.events.len(),
                seen,
                dropped = gone,
                "mempool observed"
            );
        }
        Ok(())
    }
}

/// What the mempool showed, recorded as one observation.
struct MempoolObservation {
    found: Vec<FoundOutput>,
    /// New transactions, in arrival order, when one spends what a tracked one spent.
    txs: Vec<Transaction>,
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
        // Replacements, against what is tracked now (deposits seen in this very batch too).
        for tx in &self.txs {
            let tracked = ledger.unconfirmed_inputs();
            let txid = tx.compute_txid();
            for input in tx
                .input
                .iter()
                .filter(|i| tracked.contains(&i.previous_output))
            {
                ledger.spent(txid, input.previous_output);
            }
        }
        ledger.dropped(&self.dropped);
        Ok(Decision::new(ledger.into_events(), ()))
    }
}
