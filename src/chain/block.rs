//! Where a block is processed: [`BlockObservation`] is the unit-of-work observation of
//! blocks disconnected and connected, fetched beforehand by the follower. Under the log
//! lock it refreshes the watched scripts (so every address watched before this
//! observation is matched in it), scans the blocks, and loads what the ledger needs;
//! the ledger then decides the events: `block.*`, deposits found and confirmed, spends of
//! deposits (observed withdrawals, replacements), and every confirmation change settled
//! against the new tip.

use bitcoin::Block;
use serde_json::json;
use sqlx::PgConnection;

use super::outgoing;
use super::watches::Watches;
use crate::domain::ledger::{BlockRef, FoundOutput, Ledger, LedgerState};
use crate::domain::tracked::Withdrawal;
use crate::projections::read;
use crate::unit_of_work::{Decision, Observation, RecordError};

pub struct BlockObservation<'a> {
    pub watches: &'a mut Watches,
    pub disconnect: Vec<BlockRef>,
    pub connect: Vec<(BlockRef, Block)>,
    pub final_confirmations: u32,
}

/// What the blocks' scan and the projections say, under the lock.
pub struct Loaded {
    ledger: LedgerState,
    found: Vec<Vec<FoundOutput>>,
    /// Spends of deposits not recorded as withdrawals yet, per connected block.
    observed: Vec<Vec<Withdrawal>>,
}

/// The tip the observation leaves.
pub struct NewTip {
    pub height: u32,
    pub block: Option<BlockRef>,
}

impl BlockObservation<'_> {
    fn tip(&self) -> NewTip {
        match (self.connect.last(), self.disconnect.last()) {
            (Some((b, _)), _) => NewTip {
                height: b.height,
                block: Some(*b),
            },
            (None, Some(lowest)) => NewTip {
                height: lowest.height - 1,
                block: None,
            },
            (None, None) => unreachable!("an observation of no block"),
        }
    }
}

impl Observation for BlockObservation<'_> {
    type State = Loaded;
    type Outcome = NewTip;

    async fn load(&mut self, conn: &mut PgConnection) -> Result<Loaded, RecordError> {
        self.watches.refresh(conn).await?;
        let mut found = Vec::with_capacity(self.connect.len());
        let mut found_txids = Vec::new();
        for (_, block) in &self.connect {
            let mut in_block = Vec::new();
            for t in &block.txdata {
                self.watches.scan(t, &mut in_block);
            }
            found_txids.extend(in_block.iter().map(|f| f.outpoint.txid));
            found.push(in_block);
        }
        let txs: Vec<(usize, &bitcoin::Transaction)> = self
            .connect
            .iter()
            .enumerate()
            .flat_map(|(i, (_, block))| block.txdata.iter().map(move |t| (i, t)))
            .collect();
        let all: Vec<&bitcoin::Transaction> = txs.iter().map(|(_, t)| *t).collect();
        let mut observed = vec![Vec::new(); self.connect.len()];
        for (index, w) in outgoing::find(conn, &all).await? {
            observed[txs[index].0].push(w);
        }
        let hashes: Vec<_> = self.disconnect.iter().map(|b| b.hash).collect();
        let ledger = read::ledger_state(conn, &hashes, &found_txids, &[]).await?;
        Ok(Loaded {
            ledger,
            found,
            observed,
        })
    }

    fn decide(self, loaded: Loaded) -> Result<Decision<NewTip>, RecordError> {
        let tip = self.tip();
        let metadata = json!({
            "source": "follower",
            "tip_height": tip.height,
            "tip_hash": tip.block.map(|b| b.hash),
            "disconnected": self.disconnect.len(),
        });
        let mut ledger = Ledger::new(self.final_confirmations, loaded.ledger, metadata);
        for b in &self.disconnect {
            ledger.disconnect_block(b);
        }
        let blocks = self.connect.iter().zip(loaded.found).zip(loaded.observed);
        for (((b, block), found), observed) in blocks {
            ledger.connect_block(b, found);
            for w in observed {
                ledger.broadcast(w);
            }
            record_spends(&mut ledger, b, block);
        }
        ledger.settle(tip.height);
        Ok(Decision::new(ledger.into_events(), tip))
    }
}

/// Transactions of `block` spending what an unconfirmed deposit's or withdrawal's
/// transaction spent: a withdrawal's own transaction is mined; anything else replaces
/// them (a double spend mined instead, maybe on a reorg's new branch).
fn record_spends(ledger: &mut Ledger, b: &BlockRef, block: &Block) {
    let watched = ledger.unconfirmed_inputs();
    if watched.is_empty() {
        return;
    }
    for t in block.txdata.iter().filter(|t| !t.is_coinbase()) {
        let mut txid = None;
        for input in &t.input {
            if watched.contains(&input.previous_output) {
                let spender = *txid.get_or_insert_with(|| t.compute_txid());
                ledger.spent_in_block(spender, input.previous_output, b);
            }
        }
    }
}
