//! The delivery journal's writer: the entries of all workers of this process are
//! group-committed, one transaction per batch; each worker waits for its own entry (and
//! the cursor state it leads to) before its next request.

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::projections::cursors::{self, CursorState, Entry};

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
    Database(Arc<sqlx::Error>),
}

/// Writes journal entries in batches shared by all workers of this process.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    pub fn start(pool: PgPool) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Pending>(1024);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut held = None;
            while rx.recv_many(&mut batch, 512).await > 0 {
                let entries: Vec<(Uuid, Entry)> =
                    batch.iter().map(|(id, e, _)| (*id, e.clone())).collect();
                match write_batch(&pool, &mut held, &entries).await {
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

    pub async fn record(&self, id: Uuid, entry: Entry) -> Result<CursorState, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((id, entry, reply))
            .await
            .map_err(|_| JournalError::Stopped)?;
        answer.await.map_err(|_| JournalError::Stopped)?
    }
}

/// One batch of journal entries in one transaction, on the writer's own connection: kept
/// between batches because every pool acquire first pings the connection (sqlx's
/// `test_before_acquire`), a round trip per batch, which with one or a few subscribers is
/// one of six per delivery. A held connection that fails to begin (closed while idle) is
/// replaced once, as the ping would have done; after any later error the connection's
/// state is unknown, so it is closed rather than returned to the pool.
async fn write_batch(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    entries: &[(Uuid, Entry)],
) -> Result<Vec<CursorState>, sqlx::Error> {
    let reused = held.is_some();
    let mut conn = match held.take() {
        Some(conn) => conn,
        None => pool.acquire().await?,
    };
    if let Err(e) = conn.execute("BEGIN").await {
        drop(conn.detach());
        if !reused {
            return Err(e);
        }
        tracing::debug!(error = %e, "the journal writer's connection failed; a new one");
        conn = pool.acquire().await?;
        conn.execute("BEGIN").await?;
    }
    let states = match cursors::record(&mut conn, entries).await {
        Ok(states) => states,
        Err(e) => {
            drop(conn.detach());
            return Err(e);
        }
    };
    if let Err(e) = conn.execute("COMMIT").await {
        drop(conn.detach());
        return Err(e);
    }
    *held = Some(conn);
    Ok(states)
}
