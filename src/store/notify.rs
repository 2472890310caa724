//! Wakes readers (the long-poll tail, SSE and delivery workers) the moment an append
//! commits anywhere: every append does `pg_notify` in its transaction, which PostgreSQL
//! delivers only at commit; one LISTEN connection per process fans it out.
//!
//! The shared tail: readers waiting at the head do not each read the log after a
//! wake-up. One task reads every new batch of events once, serialises each event once,
//! and broadcasts the batch (an `Arc`) to every waiting reader ([`LogWatch::follow`]),
//! which filters it by type itself. A batch covers a range of positions in full, so a
//! reader whose cursor is inside it misses nothing; a reader that is behind (its cursor
//! before the batch) or lagged the bounded broadcast buffer falls back to reading the
//! log for itself, and then comes back. Nothing is skipped, and memory stays bounded by
//! the buffer ([`BUFFER`] batches of at most [`BATCH`] events).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch};

use super::StoredEvent;
use crate::domain::stream::Position;

/// Events the shared tail reads at a time.
pub const BATCH: i64 = 500;
/// Batches the broadcast keeps for slow readers; one that falls further behind reads for
/// itself.
pub const BUFFER: usize = 32;

/// Every event in `(after, to]`, in order, each with its envelope serialised.
#[derive(Debug)]
pub struct Batch {
    pub after: Position,
    pub to: Position,
    pub events: Vec<StoredEvent>,
    /// `serde_json::to_string` of each of `events`: the same bytes for every reader.
    pub json: Vec<String>,
}

impl Batch {
    /// The indexes of the events after `cursor` of `types` (exact names; `None`: every
    /// type but the operational, what a reader without a filter gets).
    pub fn matching<'a>(
        &'a self,
        cursor: Position,
        types: Option<&'a [String]>,
    ) -> impl Iterator<Item = usize> + 'a {
        self.events
            .iter()
            .enumerate()
            .filter(move |(_, e)| {
                e.position > cursor
                    && match types {
                        None => !e.kind.is_operational(),
                        Some(t) => t.iter().any(|n| n == e.kind.as_str()),
                    }
            })
            .map(|(i, _)| i)
    }
}

/// The last committed position this process has heard of, and the shared tail.
#[derive(Clone)]
pub struct LogWatch {
    rx: watch::Receiver<Position>,
    tail: broadcast::Sender<Arc<Batch>>,
    /// The shared tail's position: every event up to it was broadcast (or passed over
    /// while nobody followed). Its lock also orders a subscription against passing over.
    tail_position: Arc<Mutex<Position>>,
}

/// What a follower of the shared tail gets next.
pub enum Next {
    /// A batch covering the cursor: its events after the cursor are the next ones.
    Batch(Arc<Batch>),
    /// The shared tail cannot serve this cursor (it is behind the batches, or lagged the
    /// buffer): read the log for yourself.
    Behind,
    /// Nothing within the timeout.
    Timeout,
    /// The shared tail has stopped.
    Closed,
}

/// A reader's subscription to the shared tail; take it before reading the log for
/// yourself, so no batch sent meanwhile is missed.
pub struct Follow {
    rx: broadcast::Receiver<Arc<Batch>>,
}

impl Follow {
    /// The next batch with events after `cursor`, or why not, within `timeout`.
    pub async fn next(&mut self, cursor: Position, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Next::Timeout,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Next::Behind,
                Ok(Err(broadcast::error::RecvError::Closed)) => return Next::Closed,
                Ok(Ok(b)) if b.to <= cursor => continue,
                Ok(Ok(b)) if b.after > cursor => return Next::Behind,
                Ok(Ok(b)) => return Next::Batch(b),
            }
        }
    }
}

impl LogWatch {
    /// Starts the listener task (it reconnects on its own if the connection drops) and
    /// the shared tail.
    pub async fn start(pool: PgPool) -> Result<LogWatch, sqlx::Error> {
        let initial = super::head(&pool).await?;
        let (tx, rx) = watch::channel(initial);
        let listener_pool = pool.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = listen(&listener_pool, &tx).await {
                    tracing::warn!(error = %e, "event notification listener failed; reconnecting");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (tail, _) = broadcast::channel(BUFFER);
        let tail_position = Arc::new(Mutex::new(initial));
        tokio::spawn(shared_tail(
            pool,
            rx.clone(),
            tail.clone(),
            tail_position.clone(),
        ));
        Ok(LogWatch {
            rx,
            tail,
            tail_position,
        })
    }

    /// The head as last heard, to wait on changes.
    pub fn receiver(&self) -> watch::Receiver<Position> {
        self.rx.clone()
    }

    /// The head as last heard (committed; the log's own head may be further).
    pub fn head(&self) -> Position {
        *self.rx.borrow()
    }

    /// Follows the shared tail from now on, and says where it is: a follower whose
    /// cursor is at or past that position gets every later event from the broadcast
    /// without reading the log first (the next batch starts there at the latest).
    pub fn follow(&self) -> (Follow, Position) {
        let position = self.tail_position.lock().expect("not poisoned");
        let rx = self.tail.subscribe();
        (Follow { rx }, *position)
    }

    /// Waits until the log's head passes `after` or `timeout` elapses; true if it passed.
    pub async fn wait_past(&self, after: Position, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|head| *head > after))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The shared tail: after each wake-up, reads what is new once (in batches of [`BATCH`])
/// and broadcasts it; while nobody follows, it only moves its position.
async fn shared_tail(
    pool: PgPool,
    mut heads: watch::Receiver<Position>,
    tx: broadcast::Sender<Arc<Batch>>,
    position: Arc<Mutex<Position>>,
) {
    let mut cursor = *position.lock().expect("not poisoned");
    loop {
        let head = match heads.wait_for(|h| *h > cursor).await {
            Ok(h) => *h,
            Err(_) => return,
        };
        {
            // Under the lock, so a follower either counts here or sees the new position.
            let mut at = position.lock().expect("not poisoned");
            if tx.receiver_count() == 0 {
                cursor = head;
                *at = cursor;
                continue;
            }
        }
        match read_batch(&pool, cursor).await {
            Ok(Some(batch)) => {
                cursor = batch.to;
                *position.lock().expect("not poisoned") = cursor;
                // No receiver left since the check: nobody needed it.
                let _ = tx.send(Arc::new(batch));
            }
            // Not visible yet (a replica behind the notification): look again shortly.
            Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => {
                tracing::warn!(error = %e, "the shared tail cannot read the log; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The events after `cursor`, up to [`BATCH`]. Positions are gapless and commit in order,
/// so the read holds every position from `cursor` to its last event.
async fn read_batch(pool: &PgPool, cursor: Position) -> Result<Option<Batch>, sqlx::Error> {
    let events = super::read_after(pool, cursor, BATCH, None).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        return Ok(None);
    };
    let json = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("an event serialises"))
        .collect();
    Ok(Some(Batch {
        after: cursor,
        to: last,
        events,
        json,
    }))
}

async fn listen(pool: &PgPool, tx: &watch::Sender<Position>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(super::CHANNEL).await?;
    // Appends that committed while we were (re)connecting.
    tx.send_replace(super::head(pool).await?);
    loop {
        let n = listener.recv().await?;
        if let Ok(position) = n.payload().parse::<i64>().map(Position) {
            tx.send_if_modified(|head| {
                let newer = position > *head;
                if newer {
                    *head = position;
                }
                newer
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(after: i64, to: i64) -> Arc<Batch> {
        Arc::new(Batch {
            after: Position(after),
            to: Position(to),
            events: Vec::new(),
            json: Vec::new(),
        })
    }

    const NOW: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn a_follower_gets_the_batches_covering_its_cursor_and_reads_for_itself_otherwise() {
        let (tx, _) = broadcast::channel(BUFFER);
        let mut f = Follow { rx: tx.subscribe() };
        // Batches it has already read past are passed over; one covering it is served.
        tx.send(batch(0, 5)).unwrap();
        tx.send(batch(5, 9)).unwrap();
        assert!(matches!(f.next(Position(7), NOW).await, Next::Batch(b) if b.to == Position(9)));
        // A batch starting after its cursor would leave a hole: it must read.
        tx.send(batch(12, 15)).unwrap();
        assert!(matches!(f.next(Position(9), NOW).await, Next::Behind));
        assert!(matches!(f.next(Position(15), NOW).await, Next::Timeout));
        // Lagging the buffer: it must read.
        for i in 0..BUFFER as i64 + 1 {
            tx.send(batch(15 + i, 16 + i)).unwrap();
        }
        assert!(matches!(f.next(Position(15), NOW).await, Next::Behind));
        drop(tx);
        // What the buffer kept is the newest batches, contiguous.
        let (mut cursor, mut rest) = (Position(16), 0);
        while let Next::Batch(b) = f.next(cursor, NOW).await {
            cursor = b.to;
            rest += 1;
        }
        assert_eq!(rest, BUFFER, "the buffer is bounded");
        assert_eq!(cursor, Position(16 + BUFFER as i64));
        assert!(matches!(f.next(cursor, NOW).await, Next::Closed));
    }
}
