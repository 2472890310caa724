//! The delivery journal's writer: the entries of all workers of this process are
//! group-committed, one transaction per batch, in the order they were submitted. A
//! worker's [`Window`] lets it send its next request while its previous entries wait for
//! their batch, up to its [`GroupCommit`] limits: since one subscriber's entries commit in
//! order, its cursor only ever moves to a position whose earlier deliveries are journaled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{operational, GroupCommit};
use crate::projections::cursors::{self, CursorState, Entry};
use crate::unit_of_work::{RecordError, UnitOfWork};

/// One journal entry waiting for its batch, and where its resulting state goes.
type Pending = (
    Uuid,
    Entry,
    oneshot::Sender<Result<CursorState, JournalError>>,
);

/// Why a journal entry was not written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal writer stopped")]
    Stopped,
    /// The batch's transaction failed (shared by every entry of the batch).
    #[error("cannot journal the delivery: {0}")]
    Database(Arc<RecordError>),
}

/// Writes journal entries in batches shared by all workers of this process.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// `uow` appends the operational events a batch's changes are ([`operational`]).
    pub fn start(pool: PgPool, uow: UnitOfWork) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut held = None;
            while rx.recv_many(&mut batch, 512).await > 0 {
                let entries: Vec<(Uuid, Entry)> =
                    batch.iter().map(|(id, e, _)| (*id, e.clone())).collect();
                match write_batch(&pool, &uow, &mut held, &entries).await {
                    Ok(states) => {
                        for ((_, _, reply), state) in batch.drain(..).zip(states) {
                            let _ = reply.send(Ok(state));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, entries = batch.len(), "cannot journal deliveries");
                        let e = JournalError::Database(Arc::new(e));
                        for (_, _, reply) in batch.drain(..) {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Recorder { tx }
    }

    /// Hands `entry` to the writer; the ticket yields its state once its batch committed.
    pub async fn submit(&self, id: Uuid, entry: Entry) -> Result<Ticket, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((id, entry, reply))
            .await
            .map_err(|_| JournalError::Stopped)?;
        Ok(Ticket(answer))
    }

    /// Journals `entry` and waits for its batch.
    pub async fn record(&self, id: Uuid, entry: Entry) -> Result<CursorState, JournalError> {
        self.submit(id, entry).await?.wait().await
    }
}

/// A submitted journal entry.
pub struct Ticket(oneshot::Receiver<Result<CursorState, JournalError>>);

impl Ticket {
    pub async fn wait(self) -> Result<CursorState, JournalError> {
        self.0.await.map_err(|_| JournalError::Stopped)?
    }
}

/// One subscriber's journal entries submitted and not yet seen committed, oldest first.
pub struct Window {
    recorder: Recorder,
    id: Uuid,
    limits: GroupCommit,
    waiting: VecDeque<(Instant, Ticket)>,
}

impl Window {
    pub fn new(recorder: Recorder, id: Uuid, limits: GroupCommit) -> Window {
        Window {
            recorder,
            id,
            limits,
            waiting: VecDeque::new(),
        }
    }

    /// Journals `entry` without waiting for its batch.
    pub async fn push(&mut self, entry: Entry) -> Result<(), JournalError> {
        let ticket = self.recorder.submit(self.id, entry).await?;
        self.waiting.push_back((Instant::now(), ticket));
        Ok(())
    }

    /// Waits until one more delivery may be sent ahead of the journal: fewer than
    /// `entries` waiting, the oldest for less than `window`. Entries already committed are
    /// taken without waiting. The state after the last entry seen committed, if any.
    pub async fn room(&mut self) -> Result<Option<CursorState>, JournalError> {
        let mut last = None;
        let limits = self.limits;
        loop {
            let full = self.waiting.len() >= limits.entries;
            let Some((at, ticket)) = self.waiting.front_mut() else {
                break;
            };
            let state = if full || at.elapsed() >= limits.window {
                let (_, ticket) = self.waiting.pop_front().expect("a front");
                ticket.wait().await?
            } else {
                match ticket.0.try_recv() {
                    Ok(state) => {
                        self.waiting.pop_front();
                        state?
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(JournalError::Stopped),
                }
            };
            last = Some(state);
        }
        Ok(last)
    }

    /// Waits for every submitted entry; the state after the last, if there was one.
    pub async fn drain(&mut self) -> Result<Option<CursorState>, JournalError> {
        let mut last = None;
        while let Some((_, ticket)) = self.waiting.pop_front() {
            last = Some(ticket.wait().await?);
        }
        Ok(last)
    }

    /// Journals `entry` and waits for it and every entry before it.
    pub async fn record(&mut self, entry: Entry) -> Result<CursorState, JournalError> {
        self.push(entry).await?;
        Ok(self.drain().await?.expect("the entry just pushed"))
    }
}

/// One batch of journal entries in one transaction, with the operational events their
/// changes are (a disabled subscriber, one recovered), on the writer's own connection: kept
/// between batches because every pool acquire first pings the connection (sqlx's
/// `test_before_acquire`), a round trip per batch, which with one or a few subscribers is
/// one of six per delivery. A held connection that fails to begin (closed while idle) is
/// replaced once, as the ping would have done; after any later error the connection's
/// state is unknown, so it is closed rather than returned to the pool.
async fn write_batch(
    pool: &PgPool,
    uow: &UnitOfWork,
    held: &mut Option<PoolConnection<Postgres>>,
    entries: &[(Uuid, Entry)],
) -> Result<Vec<CursorState>, RecordError> {
    let reused = held.is_some();
    let mut conn = match held.take() {
        Some(conn) => conn,
        None => pool.acquire().await?,
    };
    if let Err(e) = conn.execute("BEGIN").await {
        drop(conn.detach());
        if !reused {
            return Err(e.into());
        }
        tracing::debug!(error = %e, "the journal writer's connection failed; a new one");
        conn = pool.acquire().await?;
        conn.execute("BEGIN").await?;
    }
    let folds = match cursors::record(&mut conn, entries).await {
        Ok(folds) => folds,
        Err(e) => {
            drop(conn.detach());
            return Err(e.into());
        }
    };
    let events = operational::of_all(entries, &folds);
    if let Err(e) = operational::append(uow, &mut conn, events).await {
        drop(conn.detach());
        return Err(e);
    }
    if let Err(e) = conn.execute("COMMIT").await {
        drop(conn.detach());
        return Err(e.into());
    }
    *held = Some(conn);
    Ok(folds.into_iter().map(|(_, after)| after).collect())
}
