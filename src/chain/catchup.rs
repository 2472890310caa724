//! Catching up: when the follower is more than [`FROM`] blocks behind, the blocks are
//! fetched ahead by a task of their own (heights in JSON-RPC batches of `getblockhash`,
//! then `getblock`) into a bounded queue, while the follower records them several per
//! observation (at most `CATCHUP_MAX_EVENTS` events each, settled block by block, so the
//! log is the one a block-at-a-time follower writes). A block that does not extend the
//! previous one ends the catch-up: the follower's next round finds the reorg.

use std::collections::VecDeque;

use anyhow::Context;
use bitcoin::Block;
use tokio::sync::mpsc;

use super::node::Node;
use crate::domain::ledger::BlockRef;

/// Blocks behind the node from which the follower catches up in batches.
pub const FROM: u32 = 3;
/// Blocks fetched ahead of the one being recorded (bounds the memory they hold).
const AHEAD: usize = 16;
/// Heights per `getblockhash` batch.
const HASHES: u32 = 100;

/// The blocks `from..=to` of the node's active chain, in order, fetched ahead.
pub struct Prefetch {
    rx: mpsc::Receiver<anyhow::Result<(BlockRef, Block)>>,
    task: tokio::task::JoinHandle<()>,
    /// Fetched, not yet recorded (an observation that ended early leaves some).
    pending: VecDeque<(BlockRef, Block)>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prefetch {
    pub fn start(node: Node, from: u32, to: u32) -> Prefetch {
        let (tx, rx) = mpsc::channel(AHEAD);
        let task = tokio::spawn(async move {
            let mut height = from;
            while height <= to {
                let last = to.min(height + HASHES - 1);
                let heights: Vec<u32> = (height..=last).collect();
                let hashes = match node.block_hashes(&heights).await {
                    Ok(h) => h,
                    Err(e) => return drop(tx.send(Err(e)).await),
                };
                for (h, hash) in heights.into_iter().zip(hashes) {
                    let Some(hash) = hash else {
                        return; // the node's chain got shorter: the next round sees it
                    };
                    let fetched = node.block(hash).await.map(|block| {
                        let b = BlockRef {
                            height: h,
                            hash,
                            prev_hash: block.header.prev_blockhash,
                            time: block.header.time,
                        };
                        (b, block)
                    });
                    if tx.send(fetched).await.is_err() {
                        return;
                    }
                }
                height = last + 1;
            }
        });
        Prefetch {
            rx,
            task,
            pending: VecDeque::new(),
        }
    }

    /// Up to `want` blocks (at least one unless the fetch ended): those left over, then
    /// what has arrived, waiting only for the first.
    pub async fn next_batch(&mut self, want: usize) -> anyhow::Result<Vec<(BlockRef, Block)>> {
        if self.pending.is_empty() {
            match self.rx.recv().await {
                Some(fetched) => self
                    .pending
                    .push_back(fetched.context("prefetching blocks")?),
                None => return Ok(Vec::new()),
            }
        }
        while self.pending.len() < want {
            match self.rx.try_recv() {
                Ok(fetched) => self
                    .pending
                    .push_back(fetched.context("prefetching blocks")?),
                Err(_) => break,
            }
        }
        let n = want.min(self.pending.len());
        Ok(self.pending.drain(..n).collect())
    }

    /// Puts back the blocks an observation did not take, in front.
    pub fn give_back(&mut self, blocks: Vec<(BlockRef, Block)>) {
        for b in blocks.into_iter().rev() {
            self.pending.push_front(b);
        }
    }
}

/// How many blocks to offer the next observation: enough for `max_events` at the rate of
/// the last one (at least one, at most [`AHEAD`] + what is pending).
pub fn blocks_for(max_events: usize, events_per_block: usize) -> usize {
    (max_events / events_per_block.max(1)).clamp(1, 4 * AHEAD)
}

/// How many of `blocks` chain onto `prev`, one after another.
pub fn linked_prefix(mut prev: bitcoin::BlockHash, blocks: &[(BlockRef, Block)]) -> usize {
    let mut n = 0;
    for (b, _) in blocks {
        if b.prev_hash != prev {
            break;
        }
        prev = b.hash;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::BlockHash;

    fn block(height: u32, prev: BlockHash) -> (BlockRef, Block) {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&height.to_le_bytes());
        let hash = BlockHash::from_byte_array(bytes);
        let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        (
            BlockRef {
                height,
                hash,
                prev_hash: prev,
                time: 0,
            },
            genesis,
        )
    }

    #[test]
    fn only_blocks_chaining_onto_the_tip_are_taken_and_batches_follow_the_event_rate() {
        let tip = BlockHash::all_zeros();
        let a = block(1, tip);
        let b = block(2, a.0.hash);
        let stray = block(3, tip);
        assert_eq!(linked_prefix(tip, &[a.clone(), b.clone(), stray]), 2);
        assert_eq!(linked_prefix(b.0.hash, &[a]), 0);
        assert_eq!(blocks_for(20_000, 1000), 20);
        assert_eq!(blocks_for(20_000, 0), 4 * AHEAD);
        assert_eq!(blocks_for(10, 1000), 1);
    }
}
