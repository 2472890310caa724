//! Where a block is processed: [`BlockObservation`] is the unit-of-work observation of
//! blocks disconnected and connected, fetched beforehand by the follower. Under the log
//! lock it refreshes the watched scripts (so every address watched before this
//! observation is matched in it), scans the blocks, and loads what the ledger needs;
//! the ledger then decides the events: `block.*`, deposits found and confirmed, spends of
//! deposits (observed withdrawals, replacements), and every confirmation change.
//!
//! A reorg is one observation, settled once against the tip it leaves. Blocks extending
//! the tip are each settled at their own height, also when a catch-up puts several in one
//! observation ([`BlockObservation::catch_up`]): the events are the very ones one
//! observation per block would write, so the log does not depend on how far behind the
//! follower was. A catch-up batch ends at `max_events`, and after a block whose deposits
//! move a derived account's look-ahead window (the next block must be scanned with the
//! new addresses watched).

use std::collections::{BTreeMap, HashSet};

use bitcoin::{Block, OutPoint};
use serde_json::json;
use sqlx::PgConnection;

use super::outgoing::Lookup;
use super::watches::Watches;
use crate::domain::ledger::{BlockRef, FoundOutput, Ledger, LedgerState};
use crate::domain::tracked::Spent;
use crate::projections::read;
use crate::unit_of_work::{Decision, Observation, RecordError};

pub struct BlockObservation<'a> {
    pub watches: &'a mut Watches,
    pub disconnect: Vec<BlockRef>,
    pub connect: Vec<(BlockRef, Block)>,
    pub final_confirmations: u32,
    /// Catch-up: blocks are settled one by one and the batch ends at this many events.
    pub max_events: Option<usize>,
}

impl<'a> BlockObservation<'a> {
    /// Blocks extending the stored tip, as many as fit in `max_events`.
    pub fn catch_up(
        watches: &'a mut Watches,
        blocks: Vec<(BlockRef, Block)>,
        final_confirmations: u32,
        max_events: usize,
    ) -> Self {
        BlockObservation {
            watches,
            disconnect: Vec::new(),
            connect: blocks,
            final_confirmations,
            max_events: Some(max_events),
        }
    }
}

/// What the blocks' scan and the projections say, under the lock.
pub struct Loaded {
    ledger: LedgerState,
    found: Vec<Vec<FoundOutput>>,
    spends: Lookup,
    /// Derived addresses among those found whose payment moves their account's window.
    moving: HashSet<String>,
}

/// What the observation left: the new tip, how many of the connected blocks it took, and
/// those it did not (a catch-up batch may end early).
pub struct NewTip {
    pub height: u32,
    pub block: Option<BlockRef>,
    pub connected: usize,
    pub left: Vec<(BlockRef, Block)>,
}

impl Observation for BlockObservation<'_> {
    type State = Loaded;
    type Outcome = NewTip;

    async fn load(&mut self, conn: &mut PgConnection) -> Result<Loaded, RecordError> {
        self.watches.refresh(conn).await?;
        let mut candidates = Vec::with_capacity(self.connect.len());
        for (_, block) in &self.connect {
            let mut in_block = Vec::new();
            for t in &block.txdata {
                self.watches.scan(t, &mut in_block);
            }
            candidates.push(in_block);
        }
        // Whose the candidates are, compared by full script: only what the blocks pay.
        let found = Watches::resolve(conn, candidates).await?;
        let all_found: Vec<FoundOutput> = found.iter().flatten().cloned().collect();
        let txs: Vec<&bitcoin::Transaction> =
            self.connect.iter().flat_map(|(_, b)| &b.txdata).collect();
        let spends = Lookup::load(conn, &txs, &all_found).await?;
        let addresses: Vec<&str> = all_found.iter().map(|f| f.watch.address.as_str()).collect();
        let moving = read::window_movers(conn, &addresses).await?;
        let hashes: Vec<_> = self.disconnect.iter().map(|b| b.hash).collect();
        let txids: Vec<_> = all_found.iter().map(|f| f.outpoint.txid).collect();
        let ledger = read::ledger_state(conn, &hashes, &txids, &[]).await?;
        Ok(Loaded {
            ledger,
            found,
            spends,
            moving,
        })
    }

    fn decide(self, loaded: Loaded) -> Result<Decision<NewTip>, RecordError> {
        let Loaded {
            ledger: state,
            found,
            spends,
            moving,
        } = loaded;
        let metadata = |tip: u32, hash: Option<bitcoin::BlockHash>, disconnected: usize| {
            json!({"source": "follower", "tip_height": tip, "tip_hash": hash,
                   "disconnected": disconnected})
        };
        let reorg_tip = match (self.connect.last(), self.disconnect.last()) {
            (Some((b, _)), _) => (b.height, Some(b.hash)),
            (None, Some(lowest)) => (lowest.height - 1, None),
            (None, None) => unreachable!("an observation of no block"),
        };
        let batch = self.max_events.is_some();
        let first = if batch {
            metadata(self.connect[0].0.height, Some(self.connect[0].0.hash), 0)
        } else {
            metadata(reorg_tip.0, reorg_tip.1, self.disconnect.len())
        };
        let mut ledger = Ledger::new(self.final_confirmations, state, first);
        for b in &self.disconnect {
            ledger.disconnect_block(b);
        }
        // Deposits found in this observation's earlier blocks, which later ones may spend.
        let mut earlier: BTreeMap<OutPoint, Spent> = BTreeMap::new();
        let mut connected = 0;
        for ((b, block), found) in self.connect.iter().zip(found) {
            if batch {
                ledger.set_metadata(metadata(b.height, Some(b.hash), 0));
            }
            let moves_window = found.iter().any(|f| moving.contains(&f.watch.address));
            ledger.connect_block(b, found.clone());
            // Spends of deposits not submitted through the API: observed withdrawals.
            for t in &block.txdata {
                if let Some(w) = spends.withdrawal(t, &earlier) {
                    ledger.broadcast(w);
                }
            }
            record_spends(&mut ledger, b, block);
            earlier.extend(found.into_iter().map(|f| {
                let spent = Spent {
                    account_id: f.watch.account_id,
                    amount: f.value,
                };
                (f.outpoint, spent)
            }));
            connected += 1;
            if batch {
                ledger.settle(b.height);
                let full = self
                    .max_events
                    .is_some_and(|max| ledger.event_count() >= max);
                if full || moves_window {
                    break;
                }
            }
        }
        if !batch {
            ledger.settle(reorg_tip.0);
        }
        let mut blocks = self.connect;
        let left = blocks.split_off(connected);
        let tip = match blocks.last() {
            None => NewTip {
                height: reorg_tip.0,
                block: None,
                connected,
                left,
            },
            Some((b, _)) => NewTip {
                height: b.height,
                block: Some(*b),
                connected,
                left,
            },
        };
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
