//! Rescans: reading past blocks for an address watched with `rescan_from_height`, in the
//! background, appending the deposits found there with their real confirmation counts.
//!
//! The boundary with the live follower is exact: the rescan's last height is the synced
//! tip read in the transaction that watched the address, and every block after it is
//! processed by the follower with the address already watched. Each block with a find is
//! one short transaction under the log lock (the follower is never held for long); the
//! block must still be the stored chain's block at that height, else it is fetched again.
//! Deposits already known are left alone (and expected versions refuse any duplicate).
//! Progress is stored in `rescans`, so a restart resumes; a session advisory lock per
//! rescan keeps two instances from running the same one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::{Block, OutPoint, ScriptBuf};
use futures::StreamExt;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{watch, Notify};

use super::node::Node;
use crate::domain::ledger::{BlockRef, FoundOutput, Ledger, LedgerState, Watch};
use crate::domain::tracked::inputs_of;
use crate::domain::Sats;
use crate::projections::read;
use crate::store::StoredEvent;
use crate::unit_of_work::{Decision, Observation, RecordError, UnitOfWork};

/// Key space of the rescan locks (two-key advisory locks): "rsc".
const LOCK_CLASS: i32 = 0x0072_7363;
/// Progress is written at least this often while nothing is found.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Blocks fetched from the node ahead of the one being scanned.
const PREFETCH: usize = 6;

pub struct Rescanner {
    pub unit_of_work: UnitOfWork,
    pub pool: PgPool,
    pub node: Node,
    pub final_confirmations: u32,
    pub wake: Arc<Notify>,
}

struct Job {
    id: i64,
    watch: Watch,
    script: ScriptBuf,
    next: u32,
    to: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Stopped (shutdown) or the stored chain is behind this height for now.
    Paused,
    /// A reorg replaced the block since it was read: read the height again.
    Replaced,
}

impl Rescanner {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.round(&stop).await {
                tracing::warn!(error = format!("{e:#}"), "rescan round failed");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn round(&self, stop: &watch::Receiver<bool>) -> anyhow::Result<()> {
        let ids = sqlx::query_scalar!(
            "SELECT rescan_id FROM rescans WHERE status = 'running' ORDER BY rescan_id"
        )
        .fetch_all(&self.pool)
        .await?;
        for id in ids {
            let mut lease = self.pool.acquire().await?;
            let got =
                sqlx::query_scalar!("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, id as i32)
                    .fetch_one(&mut *lease)
                    .await?;
            if got != Some(true) {
                continue; // another instance runs it
            }
            let result = self.run_job(id, stop).await;
            if let Err(e) = &result {
                tracing::warn!(
                    rescan = id,
                    error = format!("{e:#}"),
                    "rescan failed; marked failed"
                );
                sqlx::query!(
                    "UPDATE rescans SET status = 'failed', error = $2, updated_at = now() WHERE rescan_id = $1",
                    id,
                    format!("{e:#}")
                )
                .execute(&self.pool)
                .await?;
            }
            let _ = sqlx::query_scalar!("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, id as i32)
                .fetch_one(&mut *lease)
                .await;
        }
        Ok(())
    }

    async fn load(&self, id: i64) -> anyhow::Result<Option<Job>> {
        let row = sqlx::query!(
            "SELECT r.account_id, r.address, r.next_height, r.to_height, r.status, a.script_pubkey,
                    acc.credit_confirmations
             FROM rescans r JOIN addresses a USING (address) JOIN accounts acc ON acc.account_id = r.account_id
             WHERE r.rescan_id = $1",
            id
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.filter(|r| r.status == "running").map(|r| Job {
            id,
            watch: Watch {
                account_id: r.account_id,
                address: r.address,
                credit_confirmations: r.credit_confirmations as u32,
            },
            script: ScriptBuf::from_bytes(r.script_pubkey),
            next: r.next_height as u32,
            to: r.to_height as u32,
        }))
    }

    async fn run_job(&self, id: i64, stop: &watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(mut job) = self.load(id).await? else {
            return Ok(());
        };
        tracing::info!(rescan = id, address = %job.watch.address, from = job.next, to = job.to, "rescanning");
        let started = Instant::now();
        let mut saved = Instant::now();
        // Up to PREFETCH blocks are read ahead, each in its own task (the RPCs and the
        // decoding run on the blocking pool), and taken in height order; a read that fails
        // fails the rescan only when its turn comes, as before. Whatever is in flight when
        // the job stops is dropped.
        let node = self.node.clone();
        let mut blocks = futures::stream::iter(job.next..=job.to)
            .map(move |height| {
                let node = node.clone();
                tokio::spawn(async move { fetch(&node, height).await })
            })
            .buffered(PREFETCH);
        while job.next <= job.to {
            if *stop.borrow() {
                return Ok(());
            }
            let height = job.next;
            let (b, block) = blocks
                .next()
                .await
                .context("the block reads ended before the rescan")?
                .context("a block read panicked")??;
            debug_assert_eq!(b.height, height);
            let found = scan(&block, &job);
            if !found.is_empty() {
                match self.record(&job, b, found).await? {
                    Outcome::Done => saved = Instant::now(),
                    Outcome::Paused | Outcome::Replaced => return Ok(()),
                }
            } else if saved.elapsed() >= PROGRESS_EVERY {
                self.progress(id, height + 1).await?;
                saved = Instant::now();
            }
            job.next = height + 1;
        }
        sqlx::query!(
            "UPDATE rescans SET next_height = $2, status = 'done', updated_at = now() WHERE rescan_id = $1",
            id,
            job.next as i32
        )
        .execute(&self.pool)
        .await?;
        tracing::info!(
            rescan = id,
            seconds = started.elapsed().as_secs_f64(),
            "rescan done"
        );
        Ok(())
    }

    async fn progress(&self, id: i64, next: u32) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE rescans SET next_height = $2, updated_at = now() WHERE rescan_id = $1",
            id,
            next as i32
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The finds of one block, as one observation: its deposits settled against the
    /// stored tip, appended with the rescan's progress. A block a reorg replaced since it
    /// was read is read again (outside the lock).
    async fn record(
        &self,
        job: &Job,
        mut b: BlockRef,
        mut found: Vec<FoundOutput>,
    ) -> anyhow::Result<Outcome> {
        loop {
            let recorded = self
                .unit_of_work
                .record(RescanBlock {
                    rescan_id: job.id,
                    block: b,
                    found,
                    final_confirmations: self.final_confirmations,
                })
                .await?;
            let (outcome, _, _) = recorded.outcome;
            if outcome != Outcome::Replaced {
                if !recorded.events.is_empty() {
                    tracing::info!(
                        rescan = job.id,
                        height = b.height,
                        events = recorded.events.len(),
                        "rescan found deposits"
                    );
                }
                return Ok(outcome);
            }
            tracing::info!(
                rescan = job.id,
                height = b.height,
                "block replaced during the rescan; fetching it again"
            );
            let (again, block) = fetch(&self.node, b.height).await?;
            (b, found) = (again, scan(&block, job));
        }
    }
}

/// One block's finds of a rescan.
struct RescanBlock {
    rescan_id: i64,
    block: BlockRef,
    found: Vec<FoundOutput>,
    final_confirmations: u32,
}

/// The stored chain around the block, and the deposits found.
struct StoredAt {
    /// The stored chain's hash at the block's height, and its tip.
    hash: Option<bitcoin::BlockHash>,
    tip: Option<u32>,
    ledger: LedgerState,
}

impl Observation for RescanBlock {
    type State = StoredAt;
    type Outcome = (Outcome, i64, u32);

    async fn load(&mut self, conn: &mut PgConnection) -> Result<StoredAt, RecordError> {
        let stored = read::stored_blocks_below(&mut *conn, self.block.height as i32 + 1, 1)
            .await?
            .into_iter()
            .find(|s| s.height == self.block.height);
        let tip = read::tip(&mut *conn).await?.map(|t| t.height);
        let txids: Vec<_> = self.found.iter().map(|f| f.outpoint.txid).collect();
        let ledger = read::ledger_state(conn, &[], &txids, &[]).await?;
        Ok(StoredAt {
            hash: stored.map(|s| s.hash),
            tip,
            ledger,
        })
    }

    fn decide(self, at: StoredAt) -> Result<Decision<Self::Outcome>, RecordError> {
        let done =
            |outcome| Decision::new(Vec::new(), (outcome, self.rescan_id, self.block.height));
        let Some(tip) = at.tip.filter(|t| *t >= self.block.height) else {
            return Ok(done(Outcome::Paused)); // the stored chain is below this height after a reorg
        };
        if at.hash.is_some_and(|h| h != self.block.hash) {
            return Ok(done(Outcome::Replaced));
        }
        let metadata = json!({"source": "rescan", "rescan_id": self.rescan_id,
                              "height": self.block.height, "block_hash": self.block.hash});
        let mut ledger = Ledger::new(self.final_confirmations, at.ledger, metadata);
        ledger.found_in_block(&self.block, self.found);
        ledger.settle(tip);
        Ok(Decision::new(
            ledger.into_events(),
            (Outcome::Done, self.rescan_id, self.block.height),
        ))
    }

    async fn after_append(
        outcome: &mut Self::Outcome,
        conn: &mut PgConnection,
        _appended: &[StoredEvent],
    ) -> Result<(), RecordError> {
        let (outcome, id, height) = *outcome;
        if outcome == Outcome::Done {
            sqlx::query!(
                "UPDATE rescans SET next_height = $2, updated_at = now() WHERE rescan_id = $1",
                id,
                height as i32 + 1
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

async fn fetch(node: &Node, height: u32) -> anyhow::Result<(BlockRef, Block)> {
    let hash = node
        .block_hash(height)
        .await?
        .with_context(|| format!("the node has no block at height {height}"))?;
    let block = match node.block(hash).await {
        Ok(block) => block,
        Err(e) => {
            // A pruned node keeps the headers but not the blocks: say so, with the height.
            if let Ok(info) = node.chain_info().await {
                if let Some(pruned) = info
                    .pruneheight
                    .filter(|p| info.pruned && u64::from(height) < *p)
                {
                    anyhow::bail!(
                        "the node pruned its blocks below height {pruned}: block {height} cannot be read (rescan from {pruned} or later, or from an unpruned node)"
                    );
                }
            }
            return Err(e);
        }
    };
    Ok((
        BlockRef {
            height,
            hash,
            prev_hash: block.header.prev_blockhash,
            time: block.header.time,
        },
        block,
    ))
}

fn scan(block: &Block, job: &Job) -> Vec<FoundOutput> {
    let mut found = Vec::new();
    for t in &block.txdata {
        let mut txid = None;
        for (vout, out) in t.output.iter().enumerate() {
            if out.script_pubkey == job.script {
                let txid = *txid.get_or_insert_with(|| t.compute_txid());
                found.push(FoundOutput {
                    outpoint: OutPoint::new(txid, vout as u32),
                    value: Sats::from(out.value),
                    watch: job.watch.clone(),
                    inputs: inputs_of(t),
                });
            }
        }
    }
    found
}
