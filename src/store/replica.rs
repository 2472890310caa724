//! Reads served by a streaming replica (DATABASE_READ_URL). [`ReadPool`] is the one place
//! that says which server a read uses: the replica while it answers, else the primary.
//!
//! A replica replays the primary's WAL in commit order, so the log it shows is a prefix of
//! the primary's: a reader of `position > cursor` there never sees a hole, only a head
//! that trails. What a standby lacks is LISTEN/NOTIFY: wake-ups still come from the
//! primary ([`LogWatch`]), and one task per process polls the replica's head while it
//! trails the primary's, so a reader woken for a position the replica does not have yet
//! waits on the replica's head ([`Source::wait_past`]) instead of reading nothing and
//! moving on. A reader never moves its cursor past the head of the server it read.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use super::notify::LogWatch;
use super::StoredEvent;
use crate::domain::stream::Position;

/// How long a read that needs a position (`chainledger-min-position`) waits for the
/// replica to reach it before the primary serves it.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);
/// How often the replica's head is polled while it trails the primary's.
const BEHIND_POLL: Duration = Duration::from_millis(10);
/// How often it is polled otherwise (the lag gauge, the replica's health), and retried
/// while down.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// A probe slower than this counts the replica down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the replica's watcher last found.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The replica's head (0 before it first answered).
    pub head: Position,
    /// It answered the last probe, and its log is the primary's.
    pub up: bool,
    /// Why it is not used, when it is not.
    pub problem: Option<String>,
}

#[derive(Clone)]
struct Replica {
    pool: PgPool,
    seen: watch::Receiver<Seen>,
    /// Asks the watcher to probe now (a read failed there).
    probe: Arc<Notify>,
}

/// The servers reads may use.
#[derive(Clone)]
pub struct ReadPool {
    primary: PgPool,
    log: LogWatch,
    replica: Option<Replica>,
}

impl ReadPool {
    /// Every read on the primary.
    pub fn primary_only(primary: PgPool, log: LogWatch) -> ReadPool {
        ReadPool {
            primary,
            log,
            replica: None,
        }
    }

    /// Reads on `replica` while it answers; starts its watcher, which ends at `stop`.
    pub fn with_replica(
        primary: PgPool,
        log: LogWatch,
        replica: PgPool,
        stop: watch::Receiver<bool>,
    ) -> ReadPool {
        let (tx, seen) = watch::channel(Seen::default());
        let probe = Arc::new(Notify::new());
        tokio::spawn(watch_replica(
            Watcher {
                primary: primary.clone(),
                replica: replica.clone(),
                log: log.clone(),
                probe: probe.clone(),
                tx,
            },
            stop,
        ));
        ReadPool {
            primary,
            log,
            replica: Some(Replica {
                pool: replica,
                seen,
                probe,
            }),
        }
    }

    /// The primary, for a read that must see everything committed.
    pub fn primary(&self) -> Source {
        Source {
            primary: self.primary.clone(),
            log: self.log.clone(),
            replica: None,
        }
    }

    /// The replica while it is up, else the primary; no waiting.
    pub fn current(&self) -> Source {
        let replica = self.replica.clone().filter(|r| r.seen.borrow().up);
        Source {
            replica,
            ..self.primary()
        }
    }

    /// The replica once it has reached `min` (waiting up to [`MIN_POSITION_WAIT`]), else
    /// the primary: a read that must show a write whose position the client holds.
    pub async fn reaching(&self, min: Position) -> Source {
        let source = self.current();
        let Some(replica) = &source.replica else {
            return source;
        };
        let mut seen = replica.seen.clone();
        let reached =
            tokio::time::timeout(MIN_POSITION_WAIT, seen.wait_for(|s| !s.up || s.head >= min))
                .await;
        match reached {
            Ok(Ok(s)) if s.up => source,
            _ => self.primary(),
        }
    }

    /// What the replica's watcher last found; `None` without DATABASE_READ_URL.
    pub fn replica_seen(&self) -> Option<Seen> {
        Some(self.replica.as_ref()?.seen.borrow().clone())
    }
}

fn lag(primary: i64, replica: i64) -> i64 {
    (primary - replica).max(0)
}

/// Where one reader reads: a server, and the head it is known to have reached.
#[derive(Clone)]
pub struct Source {
    primary: PgPool,
    log: LogWatch,
    /// Reads go here when set.
    replica: Option<Replica>,
}

impl Source {
    pub fn pool(&self) -> &PgPool {
        self.replica.as_ref().map_or(&self.primary, |r| &r.pool)
    }

    pub fn from_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// The head this server is known to have reached (the replica's as last polled, the
    /// primary's as last heard): what a response served from here reflects at least.
    pub fn known_head(&self) -> Position {
        match &self.replica {
            Some(r) => r.seen.borrow().head,
            None => *self.log.receiver().borrow(),
        }
    }

    /// Waits until this server's head passes `after` (or `timeout`); true if it did. A
    /// replica that goes down meanwhile hands this reader to the primary.
    pub async fn wait_past(&mut self, after: Position, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(replica) = &self.replica {
            let mut seen = replica.seen.clone();
            let waited =
                tokio::time::timeout(timeout, seen.wait_for(|s| !s.up || s.head > after)).await;
            let up = match waited {
                Err(_) => return false,
                Ok(Ok(s)) => s.up,
                Ok(Err(_)) => false,
            };
            if up {
                return true;
            }
            self.fail_over();
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.log.wait_past(after, left).await
    }

    /// The head, then up to `limit` events after `after` (of `types`; `None`: every type
    /// but the operational, what a reader without a filter gets), read on one
    /// connection: every event at or below that head is in the page or after it (behind a
    /// pooler of several replicas, both come from the same server). A failure on the
    /// replica is retried on the primary, which serves this reader from then on.
    pub async fn page(
        &mut self,
        after: Position,
        limit: i64,
        types: Option<&[String]>,
    ) -> Result<(Position, Vec<StoredEvent>), sqlx::Error> {
        match read_page(self.pool(), after, limit, types).await {
            Err(e) if self.replica.is_some() => {
                tracing::warn!(error = %e, "the read replica failed a read; reading from the primary");
                self.fail_over();
                read_page(self.pool(), after, limit, types).await
            }
            other => other,
        }
    }

    /// Reads from the primary from now on, and has the replica probed.
    pub fn fail_over(&mut self) {
        if let Some(r) = self.replica.take() {
            r.probe.notify_one();
        }
    }
}

async fn read_page(
    pool: &PgPool,
    after: Position,
    limit: i64,
    types: Option<&[String]>,
) -> Result<(Position, Vec<StoredEvent>), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let head = super::head(&mut *conn).await?;
    let types = types.unwrap_or(crate::domain::events::EventType::unfiltered());
    let events = super::read_after(&mut *conn, after, limit, Some(types)).await?;
    Ok((head, events))
}

struct Watcher {
    primary: PgPool,
    replica: PgPool,
    log: LogWatch,
    probe: Arc<Notify>,
    tx: watch::Sender<Seen>,
}

/// Polls the replica's head: every [`BEHIND_POLL`] while it trails the primary's head
/// (as LISTEN tells it), else when that head moves or every [`IDLE_POLL`]. Refreshes the
/// lag gauge each time.
async fn watch_replica(w: Watcher, mut stop: watch::Receiver<bool>) {
    let mut primary_head = w.log.receiver();
    // The primary's WAL once this instance migrated it: the replica is not read before it
    // has replayed that far, so every table and column this version reads is there.
    let schema: Option<String> = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&w.primary)
        .await
        .ok();
    // Whether the replica was checked against the primary since it came up.
    let mut checked = false;
    loop {
        let target = *primary_head.borrow_and_update();
        let probed = tokio::time::timeout(PROBE_TIMEOUT, probe(&w, checked, schema.as_deref()))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        let before = w.tx.borrow().clone();
        let pause = match probed {
            Ok(head) => {
                checked = true;
                if !before.up {
                    tracing::info!(
                        head = head.0,
                        "the read replica answers; serving reads from it"
                    );
                }
                w.tx.send_replace(Seen {
                    head,
                    up: true,
                    problem: None,
                });
                crate::metrics::record_replica_lag(lag(target.0, head.0));
                if head < target {
                    BEHIND_POLL
                } else {
                    IDLE_POLL
                }
            }
            Err(problem) => {
                checked = false;
                if before.up || before.problem.as_ref() != Some(&problem) {
                    tracing::warn!(%problem, "the read replica is not used; reading from the primary");
                }
                w.tx.send_modify(|s| {
                    s.up = false;
                    s.problem = Some(problem);
                });
                IDLE_POLL
            }
        };
        let woken_by_appends =
            (pause == IDLE_POLL && w.tx.borrow().up).then_some(&mut primary_head);
        wait(&w, &mut stop, pause, woken_by_appends).await;
        if *stop.borrow() {
            return;
        }
    }
}

/// The replica's head; unless `checked`, also that it may be read: it has replayed the
/// WAL up to `schema` and its log is the primary's.
async fn probe(w: &Watcher, checked: bool, schema: Option<&str>) -> Result<Position, String> {
    let text = |e: sqlx::Error| crate::redact::redact(&e.to_string());
    if checked {
        return super::head(&w.replica).await.map_err(text);
    }
    if let Some(lsn) = schema {
        // NULL on a server that is not a standby: nothing to wait for.
        let replayed: bool =
            sqlx::query_scalar("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, true)")
                .bind(lsn)
                .fetch_one(&w.replica)
                .await
                .map_err(text)?;
        if !replayed {
            return Err(format!(
                "it has not replayed the primary's WAL up to {lsn} (this instance's migrations) yet"
            ));
        }
    }
    let row = sqlx::query!("SELECT position, hash FROM log_head")
        .fetch_one(&w.replica)
        .await
        .map_err(text)?;
    let head = Position(row.position);
    same_log(&w.primary, head, row.hash).await?;
    Ok(head)
}

/// Sleeps `pause`, or less: a probe asked for, an append heard (when given), or `stop`.
async fn wait(
    w: &Watcher,
    stop: &mut watch::Receiver<bool>,
    pause: Duration,
    appends: Option<&mut watch::Receiver<Position>>,
) {
    let appended = async {
        match appends {
            Some(rx) => {
                let _ = rx.changed().await;
            }
            None => futures::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = w.probe.notified() => {}
        _ = appended => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The replica's log ends with the primary's event at that position: a URL naming another
/// database (or another service's) is refused rather than served from.
async fn same_log(primary: &PgPool, head: Position, hash: Vec<u8>) -> Result<(), String> {
    if head.0 == 0 {
        return Ok(());
    }
    let text = |e: sqlx::Error| crate::redact::redact(&e.to_string());
    let mut conn = primary.acquire().await.map_err(text)?;
    let event = super::read_range(&mut conn, Position(head.0 - 1), head)
        .try_next()
        .await
        .map_err(text)?;
    match event {
        Some(e) if e.hash == hash => Ok(()),
        Some(_) => Err(format!(
            "its event at position {} differs from the primary's",
            head.0
        )),
        None => Err(format!(
            "its log reaches position {} and the primary's does not",
            head.0
        )),
    }
}
