//! The chain follower: fetches what the node has and hands it to the unit of work as
//! block observations ([`super::block`], where a block is processed). It wakes when the
//! node pushes a block or a transaction over ZMQ ([`super::zmq`]), and every
//! `POLL_INTERVAL_MS` in any case (the reconciliation that catches what a lost message
//! missed, and all there is without ZMQ). Each sync compares the node's chain with the
//! stored one; blocks extending the stored tip are connected one per observation, or
//! several per observation when it is behind ([`super::catchup`]); a stored tip the node
//! no longer has means a reorg: the fork point is found by the pure [`fork_point`] over
//! the stored tail and the node's hashes (reading further back until it is found), then
//! the stored blocks above it are disconnected and the new branch connected up to one
//! block past the old tip, all in one observation. Every RPC happens before the
//! observation takes the log lock. Only one instance follows the chain: the holder of the
//! leader lease ([`crate::leadership`]); its unit of work is fenced by the lease's epoch,
//! so once another instance took over, this one's appends fail and it steps down.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitcoin::{Block, Transaction};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use super::block::{BlockObservation, NewTip};
use super::catchup::{self, Prefetch};
use super::mempool::{MempoolContext, MempoolWatcher};
use super::node::Node;
use super::watches::Watches;
use super::zmq::{self, Push, ZmqMode};
use super::FollowerStatus;
use crate::domain::fork::{fork_point, Fork};
use crate::domain::ledger::BlockRef;
use crate::leadership::Lease;
use crate::metrics;
use crate::projections::read;
use crate::unit_of_work::{RecordError, Recorded, UnitOfWork};

/// Stored blocks compared with the node's in a reorg's first step back; each further step
/// reads four times as many, up to [`MAX_TAIL`].
const FIRST_TAIL: i64 = 8;
const MAX_TAIL: i64 = 1000;

/// The mempool watcher's view of the follower, borrowing its fields apart from the
/// watcher itself.
macro_rules! mempool_context {
    ($follower:expr) => {
        MempoolContext {
            unit_of_work: &$follower.unit_of_work,
            node: &$follower.node,
            watches: &mut $follower.watches,
            final_confirmations: $follower.cfg.final_confirmations,
            drop_grace: $follower.cfg.drop_grace,
        }
    };
}

/// Transactions pushed over ZMQ handled together (one observation when they matter).
const PUSHED_BATCH: usize = 1000;

#[derive(Clone, Debug)]
pub struct FollowerConfig {
    pub final_confirmations: u32,
    /// How long a mempool deposit may be missing from the mempool, unmined, before it is
    /// `deposit.dropped`.
    pub drop_grace: Duration,
    pub start_height: Option<u32>,
    pub poll_interval: Duration,
    pub zmq: ZmqMode,
    pub catchup_max_events: usize,
    /// LEADER_LEASE_MS: how long the leader lease lasts unrenewed.
    pub leader_lease: Duration,
}

pub struct Follower {
    /// Unfenced; [`Follower::unit_of_work`] is this, fenced by the lease while leading.
    base: UnitOfWork,
    unit_of_work: UnitOfWork,
    node: Node,
    cfg: FollowerConfig,
    status: Arc<FollowerStatus>,
    watches: Watches,
    mempool: MempoolWatcher,
    /// The stored tip, as committed by the last observation.
    tip: Option<BlockRef>,
}

impl Follower {
    pub fn new(
        unit_of_work: UnitOfWork,
        node: Node,
        cfg: FollowerConfig,
        status: Arc<FollowerStatus>,
    ) -> Self {
        status.node_tip.store(-1, Ordering::Relaxed);
        status.prune_height.store(-1, Ordering::Relaxed);
        Follower {
            base: unit_of_work.clone(),
            unit_of_work,
            node,
            cfg,
            status,
            watches: Watches::default(),
            mempool: MempoolWatcher::default(),
            tip: None,
        }
    }

    fn pool(&self) -> &PgPool {
        self.unit_of_work.pool()
    }

    /// Follows until `shutdown` turns true. Errors are logged and retried next round.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let Some(lease) = self.become_leader(&mut shutdown).await else {
                return;
            };
            let fence = lease.fence();
            self.unit_of_work = self.base.fenced(fence.clone());
            self.tip = None;
            let (push_tx, mut pushed) = mpsc::channel(zmq::QUEUE);
            let mut subscription = None;
            let mut next_poll = tokio::time::Instant::now();
            loop {
                if subscription.is_none() && self.cfg.zmq == ZmqMode::Auto {
                    subscription = self.subscribe(push_tx.clone()).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next_poll) => {
                        let round = self.round().await;
                        if self.failed(round) {
                            subscription = None; // the node may be another now: ask again
                        }
                        next_poll = tokio::time::Instant::now() + self.cfg.poll_interval;
                    }
                    Some(push) = pushed.recv() => {
                        let handled = self.on_push(push, &mut pushed).await;
                        self.failed(handled);
                    }
                    _ = shutdown.changed() => {
                        lease.release().await;
                        return;
                    }
                }
                if fence.lost() {
                    tracing::warn!(
                        epoch = fence.epoch,
                        "another instance took the chain leader lease over; stepping down"
                    );
                    self.status.leader.store(false, Ordering::Relaxed);
                    self.status.leader_epoch.store(0, Ordering::Relaxed);
                    metrics::record_leader(false, 0);
                    break;
                }
            }
        }
    }

    /// Logs and keeps a round's error for `/v1/status`; true if it failed.
    fn failed(&mut self, round: anyhow::Result<()>) -> bool {
        *self.status.last_error.lock().expect("not poisoned") =
            round.as_ref().err().map(|e| format!("{e:#}"));
        match round {
            Ok(()) => false,
            Err(e) if RecordError::fenced(&e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "an append was fenced off: not the leader any more"
                );
                self.tip = None;
                true
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "follower round failed; retrying");
                self.tip = None;
                true
            }
        }
    }

    /// Subscribes to what the node publishes over ZMQ (nothing: polling alone).
    async fn subscribe(&self, tx: mpsc::Sender<Push>) -> Option<zmq::Subscription> {
        let published = match self.node.zmq_endpoints().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "cannot ask the node about ZMQ");
                return None;
            }
        };
        let subscription = zmq::subscribe(&published, tx, self.status.zmq.clone());
        metrics::record_zmq_enabled(subscription.is_some());
        if subscription.is_none() {
            tracing::info!("the node publishes no ZMQ notifications we use: polling alone");
        }
        subscription
    }

    /// A block: sync now. Transactions: every one already queued, scanned in memory. A
    /// gap: a whole round, as the poll would.
    async fn on_push(
        &mut self,
        first: Push,
        queue: &mut mpsc::Receiver<Push>,
    ) -> anyhow::Result<()> {
        let mut txs: Vec<Transaction> = Vec::new();
        let mut sync = false;
        let mut round = false;
        let mut next = Some(first);
        while let Some(push) = next.take() {
            match push {
                Push::Block(_) => sync = true,
                Push::Tx(tx) => txs.push(*tx),
                Push::Gap => round = true,
            }
            if txs.len() < PUSHED_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if round {
            return self.round().await;
        }
        if sync {
            self.sync().await?;
        }
        if !txs.is_empty() {
            let cx = mempool_context!(self);
            self.mempool.pushed(cx, txs).await?;
        }
        Ok(())
    }

    /// Waits for the leader lease ([`Lease::wait`]), then says so.
    async fn become_leader(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Lease> {
        let every = self.cfg.poll_interval.min(self.cfg.leader_lease / 4);
        let lease = Lease::wait(
            self.pool(),
            &self.status.instance_id,
            self.cfg.leader_lease,
            every,
            shutdown,
        )
        .await?;
        let epoch = lease.fence().epoch;
        tracing::info!(epoch, instance = %self.status.instance_id, "chain leader: following the node");
        self.status.leader.store(true, Ordering::Relaxed);
        self.status.leader_epoch.store(epoch, Ordering::Relaxed);
        metrics::record_leader(true, epoch);
        Some(lease)
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        self.sync().await?;
        let cx = mempool_context!(self);
        self.mempool.poll(cx).await
    }

    /// Brings the stored chain to the node's tip.
    async fn sync(&mut self) -> anyhow::Result<()> {
        let info = self.node.chain_info().await?;
        let node_tip = u32::try_from(info.blocks).context("node height out of range")?;
        metrics::record_node_tip(u64::from(node_tip));
        self.status
            .node_tip
            .store(i64::from(node_tip), Ordering::Relaxed);
        let pruned_below = if info.pruned {
            info.pruneheight.unwrap_or(0)
        } else {
            0
        };
        self.status
            .prune_height
            .store(pruned_below as i64, Ordering::Relaxed);
        if self.tip.is_none() {
            self.tip = read::tip(self.pool()).await?;
        }
        loop {
            let Some(tip) = self.tip else {
                let start = match read::chain_start(self.pool()).await? {
                    Some(start) => start,
                    None => self.cfg.start_height.unwrap_or(node_tip),
                };
                if start > node_tip {
                    return Ok(());
                }
                let Some(first) = self.fetch(start).await? else {
                    return Ok(());
                };
                self.observe(vec![], vec![first]).await?;
                continue;
            };
            if tip.height >= node_tip {
                if self.node.block_hash(tip.height).await? == Some(tip.hash) {
                    return Ok(());
                }
                return self.reorg(tip, node_tip).await;
            }
            if node_tip - tip.height > catchup::FROM {
                self.catch_up(tip, node_tip).await?;
                continue;
            }
            let Some(next) = self.fetch(tip.height + 1).await? else {
                return Ok(());
            };
            if next.0.prev_hash != tip.hash {
                return self.reorg(tip, node_tip).await;
            }
            self.observe(vec![], vec![next]).await?;
        }
    }

    /// Blocks `tip + 1..=to`, fetched ahead, recorded several per observation until one
    /// does not extend the stored tip (a reorg: the caller looks) or the node runs out.
    async fn catch_up(&mut self, tip: BlockRef, to: u32) -> anyhow::Result<()> {
        tracing::info!(from = tip.height + 1, to, "catching up");
        let mut fetched = Prefetch::start(self.node.clone(), tip.height + 1, to);
        let mut prev = tip.hash;
        let mut per_block = 1;
        loop {
            let want = catchup::blocks_for(self.cfg.catchup_max_events, per_block);
            let mut blocks = fetched.next_batch(want).await?;
            if blocks.is_empty() {
                return Ok(());
            }
            // Only blocks that chain onto the tip; the rest is for the caller's reorg check.
            let linked = catchup::linked_prefix(prev, &blocks);
            if linked == 0 {
                return Ok(());
            }
            blocks.truncate(linked);
            let (taken, events) = self.observe_batch(blocks, &mut fetched).await?;
            per_block = events / taken.max(1);
            prev = self.tip.expect("a batch leaves a tip").hash;
        }
    }

    /// The stored tip is not on the node's chain: find the fork point (any depth), then
    /// disconnect above it and connect the new branch in one observation.
    async fn reorg(&mut self, tip: BlockRef, node_tip: u32) -> anyhow::Result<()> {
        let mut disconnect = Vec::new();
        let mut fork = None;
        let mut below = tip.height as i32 + 1;
        let mut want = FIRST_TAIL;
        loop {
            let tail = read::stored_blocks_below(self.pool(), below, want).await?;
            want = (want * 4).min(MAX_TAIL);
            let Some(lowest) = tail.last() else {
                break; // the whole stored chain is off the node's
            };
            below = lowest.height as i32;
            let mut node_hashes = BTreeMap::new();
            for b in tail.iter().filter(|b| b.height <= node_tip) {
                if let Some(hash) = self.node.block_hash(b.height).await? {
                    node_hashes.insert(b.height, hash);
                }
            }
            match fork_point(&tail, &node_hashes) {
                Fork::NoReorg => break,
                Fork::At {
                    common,
                    disconnect: above,
                } => {
                    disconnect.extend(above);
                    fork = Some(common);
                    break;
                }
                Fork::Deeper { disconnect: all } => disconnect.extend(all),
            }
        }
        let (first_new, mut prev) = match &fork {
            Some(f) => (f.height + 1, Some(f.hash)),
            None => (
                read::chain_start(self.pool()).await?.unwrap_or(tip.height),
                None,
            ),
        };
        let mut connect = Vec::new();
        for height in first_new..=node_tip.min(tip.height + 1) {
            let Some((b, block)) = self.fetch(height).await? else {
                break;
            };
            if prev.is_some_and(|p| p != b.prev_hash) {
                anyhow::bail!(
                    "the node's chain changed while following a reorg at height {height}"
                );
            }
            prev = Some(b.hash);
            connect.push((b, block));
        }
        tracing::warn!(
            old_tip = tip.height,
            fork_height = fork.as_ref().map(|f| f.height),
            disconnected = disconnect.len(),
            connected = connect.len(),
            "reorg"
        );
        self.observe(disconnect, connect).await
    }

    async fn fetch(&self, height: u32) -> anyhow::Result<Option<(BlockRef, Block)>> {
        let Some(hash) = self.node.block_hash(height).await? else {
            return Ok(None);
        };
        let block = self.node.block(hash).await?;
        let b = BlockRef {
            height,
            hash,
            prev_hash: block.header.prev_blockhash,
            time: block.header.time,
        };
        Ok(Some((b, block)))
    }

    /// One observation, one transaction: the events of disconnected and connected blocks,
    /// the projections they touch and so the stored tip commit together.
    #[tracing::instrument(name = "block", skip_all, fields(
        height = connect.last().map(|(b, _)| b.height),
        hash = %connect.last().map(|(b, _)| b.hash.to_string()).unwrap_or_default(),
        disconnected = disconnect.len(),
    ))]
    async fn observe(
        &mut self,
        disconnect: Vec<BlockRef>,
        connect: Vec<(BlockRef, Block)>,
    ) -> anyhow::Result<()> {
        if disconnect.is_empty() && connect.is_empty() {
            return Ok(());
        }
        let observation = BlockObservation {
            watches: &mut self.watches,
            disconnect,
            connect,
            final_confirmations: self.cfg.final_confirmations,
            max_events: None,
        };
        let recorded = record(&self.unit_of_work, observation).await?;
        self.moved_to(&recorded).await
    }

    /// Several blocks extending the tip in one observation, as many as fit in
    /// `CATCHUP_MAX_EVENTS`; those it does not take go back to `fetched`. Returns the
    /// blocks taken and the events appended.
    #[tracing::instrument(name = "blocks", skip_all, fields(
        from = blocks.first().map(|(b, _)| b.height),
        offered = blocks.len(),
    ))]
    async fn observe_batch(
        &mut self,
        blocks: Vec<(BlockRef, Block)>,
        fetched: &mut Prefetch,
    ) -> anyhow::Result<(usize, usize)> {
        let observation = BlockObservation::catch_up(
            &mut self.watches,
            blocks,
            self.cfg.final_confirmations,
            self.cfg.catchup_max_events,
        );
        let recorded = record(&self.unit_of_work, observation).await?;
        self.moved_to(&recorded).await?;
        let (taken, events) = (recorded.outcome.connected, recorded.events.len());
        fetched.give_back(recorded.outcome.left);
        Ok((taken, events))
    }

    /// The stored tip after a recorded block observation.
    async fn moved_to(&mut self, recorded: &Recorded<NewTip>) -> anyhow::Result<()> {
        self.tip = match recorded.outcome.block {
            Some(b) => Some(b),
            None => read::tip(self.pool()).await?,
        };
        Ok(())
    }
}

/// Records a block observation.
async fn record(
    unit_of_work: &UnitOfWork,
    observation: BlockObservation<'_>,
) -> anyhow::Result<Recorded<NewTip>> {
    // Outside the log lock: a first load of millions of scripts takes seconds, which the
    // lock would hold up the lease's renewal for; under it, only what was watched since.
    let mut conn = unit_of_work.pool().acquire().await?;
    observation.watches.refresh(&mut conn).await?;
    drop(conn);
    let recorded = unit_of_work
        .record(observation)
        .await
        .context("failed to record an observation")?;
    let tip = &recorded.outcome;
    tracing::info!(
        events = recorded.events.len(),
        last_position = recorded.events.last().map(|e| e.position.0),
        blocks = tip.connected,
        "block processed"
    );
    metrics::record_blocks(tip.connected, tip.height);
    Ok(recorded)
}
