//! Wakes readers (the long-poll tail, later SSE and delivery workers) the moment an append
//! commits anywhere: every append does `pg_notify` in its transaction, which PostgreSQL
//! delivers only at commit; one LISTEN connection per process fans it out.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::domain::stream::Position;

/// The last committed position this process has heard of.
#[derive(Clone)]
pub struct LogWatch {
    rx: watch::Receiver<Position>,
}

impl LogWatch {
    /// Starts the listener task; it reconnects on its own if the connection drops.
    pub async fn start(pool: PgPool) -> Result<LogWatch, sqlx::Error> {
        let initial = super::head(&pool).await?;
        let (tx, rx) = watch::channel(initial);
        tokio::spawn(async move {
            loop {
                if let Err(e) = listen(&pool, &tx).await {
                    tracing::warn!(error = %e, "event notification listener failed; reconnecting");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(LogWatch { rx })
    }

    /// The head as last heard, to wait on changes.
    pub fn receiver(&self) -> watch::Receiver<Position> {
        self.rx.clone()
    }

    /// Waits until the log's head passes `after` or `timeout` elapses; true if it passed.
    pub async fn wait_past(&self, after: Position, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|head| *head > after))
            .await
            .is_ok_and(|r| r.is_ok())
    }
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
