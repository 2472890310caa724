//! The mempool watcher: `deposit.seen` with 0 confirmations for transactions paying
//! watched scripts before they are mined. Each transaction is fetched once; the cache is
//! dropped when new addresses are watched, so earlier transactions are checked again.

use std::collections::HashSet;

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
}

impl MempoolWatcher {
    pub async fn poll(
        &mut self,
        pool: &PgPool,
        node: &Node,
        watches: &mut Watches,
        final_confirmations: u32,
        network: bitcoin::Network,
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
        let mut found = Vec::new();
        let mut fetched = Vec::new();
        for txid in mempool.into_iter().filter(|t| !self.checked.contains(t)) {
            if let Some(tx) = node.mempool_transaction(txid).await? {
                watches.scan(&tx, &mut found);
            }
            fetched.push(txid);
        }
        if !found.is_empty() {
            let mut tx = pool.begin().await?;
            store::lock(&mut tx).await?;
            let txids: Vec<String> = found.iter().map(|f| f.txid.clone()).collect();
            let loaded = projections::read::deposits_for_observation(&mut tx, &[], &txids).await?;
            let mut ledger = Ledger::new(
                final_confirmations,
                None,
                loaded,
                json!({"source": "mempool"}),
            );
            ledger.seen_in_mempool(found);
            let mut events = ledger.into_events();
            events.extend(super::lookahead::extend_for_deposits(&mut tx, &events, network).await?);
            let stored = store::append(&mut tx, &events).await?;
            projections::apply(&mut tx, &stored).await?;
            tx.commit().await?;
            if !stored.is_empty() {
                tracing::info!(events = stored.len(), "mempool deposits seen");
            }
        }
        // Only now: a failure above leaves them to be checked again next round.
        self.checked.extend(fetched);
        Ok(())
    }
}
