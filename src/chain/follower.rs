//! The chain follower: where a block is processed. Each round it compares the node's chain
//! with the stored one; blocks extending the stored tip are connected one per database
//! transaction ([`Follower::observe`]); a stored tip the node no longer has means a reorg:
//! walk back to the fork point (any depth), then disconnect the stored blocks above it and
//! connect the new branch up to one block past the old tip, all in one observation.
//!
//! Only one instance follows the chain: the holder of a session-level advisory lock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bitcoin::Block;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::mempool::MempoolWatcher;
use super::node::Node;
use super::watches::Watches;
use super::{lookahead, outgoing};
use crate::domain::ledger::{BlockRef, Ledger, Withdrawal};
use crate::{metrics, projections, store};

/// `pg_try_advisory_lock` key of the chain leader ("chainled" in ASCII).
const LEADER_LOCK: i64 = 0x6368_6169_6e6c_6564;

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
    /// For deriving look-ahead addresses of descriptor accounts.
    pub network: bitcoin::Network,
    /// How long a mempool deposit may be missing from the mempool, unmined, before it is
    /// `deposit.dropped`.
    pub drop_grace: Duration,
    pub start_height: Option<u32>,
    pub poll_interval: Duration,
}

pub struct Follower {
    pool: PgPool,
    node: Node,
    cfg: FollowerConfig,
    status: Arc<FollowerStatus>,
    watches: Watches,
    mempool: MempoolWatcher,
    /// The stored tip, as committed by the last observation.
    tip: Option<BlockRef>,
}

impl Follower {
    pub fn new(pool: PgPool, node: Node, cfg: FollowerConfig, status: Arc<FollowerStatus>) -> Self {
        status.node_tip.store(-1, Ordering::Relaxed);
        Follower {
            pool,
            node,
            cfg,
            status,
            watches: Watches::default(),
            mempool: MempoolWatcher::default(),
            tip: None,
        }
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
                let mut conn = self.pool.acquire().await?.detach();
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
                &self.pool,
                &self.node,
                &mut self.watches,
                self.cfg.final_confirmations,
                self.cfg.network,
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
            self.tip = load_tip(&self.pool).await?;
        }
        loop {
            let Some(tip) = self.tip.clone() else {
                let start = match chain_start(&self.pool).await? {
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
                let node_hash = self.node.block_hash(tip.height).await?;
                if node_hash.map(|h| h.to_string()).as_deref() == Some(tip.hash.as_str()) {
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

    /// The stored tip is not on the node's chain: find the fork point by walking back (any
    /// depth), then disconnect above it and connect the new branch in one observation.
    async fn reorg(&mut self, tip: BlockRef, node_tip: u32) -> anyhow::Result<()> {
        let mut disconnect = Vec::new();
        let mut fork: Option<BlockRef> = None;
        let mut below = tip.height as i32 + 1;
        'walk: loop {
            let stored = stored_blocks_below(&self.pool, below, 100).await?;
            if stored.is_empty() {
                break;
            }
            for b in stored {
                below = b.height as i32;
                let on_node = if b.height <= node_tip {
                    self.node.block_hash(b.height).await?
                } else {
                    None
                };
                if on_node.map(|h| h.to_string()).as_deref() == Some(b.hash.as_str()) {
                    fork = Some(b);
                    break 'walk;
                }
                disconnect.push(b);
            }
        }
        let (first_new, mut prev) = match &fork {
            Some(f) => (f.height + 1, Some(f.hash.clone())),
            None => (chain_start(&self.pool).await?.unwrap_or(tip.height), None),
        };
        let mut connect = Vec::new();
        for height in first_new..=node_tip.min(tip.height + 1) {
            let Some((b, block)) = self.fetch(height).await? else {
                break;
            };
            if prev.as_ref().is_some_and(|p| *p != b.prev_hash) {
                anyhow::bail!(
                    "the node's chain changed while following a reorg at height {height}"
                );
            }
            prev = Some(b.hash.clone());
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
            hash: hash.to_string(),
            prev_hash: block.header.prev_blockhash.to_string(),
            time: block.header.time,
        };
        Ok(Some((b, block)))
    }

    /// One observation, one transaction: the events of disconnected and connected blocks,
    /// the projections they touch and so the stored tip commit together.
    async fn observe(
        &mut self,
        disconnect: Vec<BlockRef>,
        connect: Vec<(BlockRef, Block)>,
    ) -> anyhow::Result<()> {
        let new_tip_height = match (connect.last(), disconnect.last()) {
            (Some((b, _)), _) => b.height,
            (None, Some(lowest)) => lowest.height - 1,
            (None, None) => return Ok(()),
        };
        let span = tracing::info_span!(
            "observe",
            height = new_tip_height,
            disconnected = disconnect.len()
        );
        let _enter = span.enter();
        let mut tx = self.pool.begin().await?;
        // Lock first: every address watched before this observation is then visible below.
        store::lock(&mut tx).await?;
        self.watches.refresh(&mut tx).await?;
        let mut found_per_block = Vec::with_capacity(connect.len());
        let mut txids = Vec::new();
        for (_, block) in &connect {
            let mut found = Vec::new();
            for t in &block.txdata {
                self.watches.scan(t, &mut found);
            }
            txids.extend(found.iter().map(|f| f.txid.clone()));
            found_per_block.push(found);
        }
        let hashes: Vec<String> = disconnect.iter().map(|b| b.hash.clone()).collect();
        let loaded = projections::read::deposits_for_observation(&mut tx, &hashes, &txids).await?;
        let withdrawals = projections::read::withdrawals_for_observation(&mut tx, &hashes).await?;
        // Spends of watched outputs not submitted through the API, per connected block.
        let block_txs: Vec<(usize, &bitcoin::Transaction)> = connect
            .iter()
            .enumerate()
            .flat_map(|(i, (_, block))| block.txdata.iter().map(move |t| (i, t)))
            .collect();
        let all_txs: Vec<&bitcoin::Transaction> = block_txs.iter().map(|(_, t)| *t).collect();
        let mut observed: Vec<Vec<Withdrawal>> = vec![Vec::new(); connect.len()];
        for (index, w) in outgoing::find(&mut tx, &all_txs).await? {
            observed[block_txs[index].0].push(w);
        }
        let chain_version = sqlx::query_scalar!("SELECT stream_version FROM chain_state")
            .fetch_optional(&mut *tx)
            .await?;
        let metadata = json!({
            "source": "follower",
            "tip_height": new_tip_height,
            "tip_hash": connect.last().map(|(b, _)| b.hash.clone()),
            "disconnected": disconnect.len(),
        });
        let mut ledger = Ledger::new(
            self.cfg.final_confirmations,
            chain_version,
            loaded,
            metadata,
        )
        .with_withdrawals(withdrawals);
        for b in &disconnect {
            ledger.disconnect_block(b);
        }
        for (((b, block), found), observed) in connect.iter().zip(found_per_block).zip(observed) {
            ledger.connect_block(b, found);
            for w in observed {
                ledger.broadcast(w);
            }
            record_spends(&mut ledger, b, block);
        }
        ledger.settle(new_tip_height);
        let mut events = ledger.into_events();
        let window = lookahead::extend_for_deposits(&mut tx, &events, self.cfg.network).await?;
        events.extend(window);
        let stored = store::append(&mut tx, &events).await?;
        projections::apply(&mut tx, &stored).await?;
        tx.commit()
            .await
            .context("failed to commit an observation")?;

        tracing::info!(
            events = stored.len(),
            last_position = stored.last().map(|e| e.position),
            "block processed"
        );
        metrics::record_blocks(connect.len(), new_tip_height);
        self.tip = match connect.into_iter().last() {
            Some((b, _)) => Some(b),
            None => load_tip(&self.pool).await?,
        };
        Ok(())
    }
}

/// Transactions of `block` spending what an unconfirmed deposit's or withdrawal's
/// transaction spent: a withdrawal's own transaction is mined; anything else replaces
/// them (a double spend mined instead, maybe on a reorg's new branch).
fn record_spends(ledger: &mut Ledger, b: &BlockRef, block: &Block) {
    let watched: std::collections::HashSet<bitcoin::OutPoint> = ledger
        .unconfirmed_inputs()
        .iter()
        .filter_map(|op| op.parse().ok())
        .collect();
    if watched.is_empty() {
        return;
    }
    for t in block.txdata.iter().filter(|t| !t.is_coinbase()) {
        let mut txid = None;
        for input in &t.input {
            if watched.contains(&input.previous_output) {
                let spender = txid.get_or_insert_with(|| t.compute_txid().to_string());
                ledger.spent_in_block(spender, &input.previous_output.to_string(), b);
            }
        }
    }
}

pub async fn load_tip(pool: &PgPool) -> Result<Option<BlockRef>, sqlx::Error> {
    Ok(stored_blocks_below(pool, i32::MAX, 1)
        .await?
        .into_iter()
        .next())
}

async fn chain_start(pool: &PgPool) -> Result<Option<u32>, sqlx::Error> {
    let start = sqlx::query_scalar!("SELECT start_height FROM chain_state")
        .fetch_optional(pool)
        .await?;
    Ok(start.map(|s| s as u32))
}

async fn stored_blocks_below(
    pool: &PgPool,
    below: i32,
    limit: i64,
) -> Result<Vec<BlockRef>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT height, hash, prev_hash, time FROM chain_blocks WHERE height < $1 ORDER BY height DESC LIMIT $2",
        below,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BlockRef {
            height: r.height as u32,
            hash: r.hash,
            prev_hash: r.prev_hash,
            time: r.time as u32,
        })
        .collect())
}
