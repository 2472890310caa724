//! The chain follower: fetches what the node has and hands it to the unit of work as
//! block observations ([`super::block`], where a block is processed). Each round it
//! compares the node's chain with the stored one; blocks extending the stored tip are
//! connected one per observation; a stored tip the node no longer has means a reorg:
//! the fork point is found by the pure [`fork_point`] over the stored tail and the node's
//! hashes (reading further back until it is found), then the stored blocks above it are
//! disconnected and the new branch connected up to one block past the old tip, all in
//! one observation. Every RPC happens before the observation takes the log lock.
//!
//! Only one instance follows the chain: the holder of a session-level advisory lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bitcoin::Block;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::block::BlockObservation;
use super::mempool::MempoolWatcher;
use super::node::Node;
use super::watches::Watches;
use crate::domain::fork::{fork_point, Fork};
use crate::domain::ledger::BlockRef;
use crate::metrics;
use crate::projections::read;
use crate::unit_of_work::UnitOfWork;

/// `pg_try_advisory_lock` key of the chain leader ("chainled" in ASCII).
const LEADER_LOCK: i64 = 0x6368_6169_6e6c_6564;
/// Stored blocks compared with the node's in a reorg's first step back; each further step
/// reads four times as many, up to [`MAX_TAIL`].
const FIRST_TAIL: i64 = 8;
const MAX_TAIL: i64 = 1000;

/// What the HTTP status route reports about the follower.
#[derive(Debug, Default)]
pub struct FollowerStatus {
    pub leader: AtomicBool,
    /// -1 until known.
    pub node_tip: AtomicI64,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Clone, Debug)]
pub struct FollowerConfig {
    pub final_confirmations: u32,
    /// How long a mempool deposit may be missing from the mempool, unmined, before it is
    /// `deposit.dropped`.
    pub drop_grace: Duration,
    pub start_height: Option<u32>,
    pub poll_interval: Duration,
}

pub struct Follower {
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
        Follower {
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
            let Some(mut lock) = self.become_leader(&mut shutdown).await else {
                return;
            };
            self.tip = None;
            loop {
                let round = self.round().await;
                *self.status.last_error.lock().expect("not poisoned") =
                    round.as_ref().err().map(|e| format!("{e:#}"));
                if let Err(e) = round {
                    tracing::warn!(error = format!("{e:#}"), "follower round failed; retrying");
                    self.tip = None;
                }
                if sqlx::query("SELECT 1").execute(&mut lock).await.is_err() {
                    tracing::warn!("lost the chain leader lock's connection; stepping down");
                    self.status.leader.store(false, Ordering::Relaxed);
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    async fn become_leader(&self, shutdown: &mut watch::Receiver<bool>) -> Option<PgConnection> {
        loop {
            let attempt = async {
                let mut conn = self.pool().acquire().await?.detach();
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(got.then_some(conn))
            };
            match attempt.await {
                Ok(Some(conn)) => {
                    tracing::info!("chain leader: following the node");
                    self.status.leader.store(true, Ordering::Relaxed);
                    return Some(conn);
                }
                Ok(None) => tracing::debug!("another instance is the chain leader"),
                Err(e) => tracing::warn!(error = %e, "failed to try the chain leader lock"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        self.sync().await?;
        self.mempool
            .poll(
                &self.unit_of_work,
                &self.node,
                &mut self.watches,
                self.cfg.final_confirmations,
                self.cfg.drop_grace,
            )
            .await
    }

    /// Brings the stored chain to the node's tip.
    async fn sync(&mut self) -> anyhow::Result<()> {
        let node_tip =
            u32::try_from(self.node.block_count().await?).context("node height out of range")?;
        metrics::record_node_tip(u64::from(node_tip));
        self.status
            .node_tip
            .store(i64::from(node_tip), Ordering::Relaxed);
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
            let Some(next) = self.fetch(tip.height + 1).await? else {
                return Ok(());
            };
            if next.0.prev_hash != tip.hash {
                return self.reorg(tip, node_tip).await;
            }
            self.observe(vec![], vec![next]).await?;
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
        let blocks = connect.len();
        let recorded = self
            .unit_of_work
            .record(BlockObservation {
                watches: &mut self.watches,
                disconnect,
                connect,
                final_confirmations: self.cfg.final_confirmations,
            })
            .await
            .context("failed to record an observation")?;
        tracing::info!(
            events = recorded.events.len(),
            last_position = recorded.events.last().map(|e| e.position.0),
            "block processed"
        );
        metrics::record_blocks(blocks, recorded.outcome.height);
        self.tip = match recorded.outcome.block {
            Some(b) => Some(b),
            None => read::tip(self.pool()).await?,
        };
        Ok(())
    }
}
