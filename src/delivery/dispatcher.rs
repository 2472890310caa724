//! The dispatcher: finds the subscribers with work (behind the head, retry due, not
//! idle) and runs one worker per subscriber, at most `workers` at once, each under the
//! subscriber's lease (a session advisory lock), delivering in position order and
//! journaling every attempt, the next request sent while the previous ones' entries wait
//! for their batch (the subscriber's group-commit window).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{watch, Notify, Semaphore};
use uuid::Uuid;

use super::recorder::{Recorder, Window};
use super::render;
use super::subscriber::Subscriber;
use super::transport::Transport;
use super::{DeliveryConfig, GroupCommit};
use crate::domain::stream::Position;
use crate::projections::cursors::{self, CursorState, Entry, Outcome};
use crate::store::{self, notify::LogWatch};
use crate::unit_of_work::UnitOfWork;

/// Deliveries a worker makes before yielding its slot to other subscribers.
const YIELD_AFTER: usize = 500;
/// Events read per query.
const PAGE: i64 = 100;
/// Key space of the delivery leases (two-key session advisory locks): "whk".
const LEASE_CLASS: i32 = 0x0077_686b;

/// Finds due subscribers and runs their workers.
pub struct Dispatcher {
    pool: PgPool,
    log: LogWatch,
    workers: usize,
    credit_confirmations: u32,
    transport: Arc<Transport>,
    recorder: Recorder,
    group_commit: GroupCommit,
    wake: Arc<Notify>,
}

impl Dispatcher {
    /// `wake` is notified by API commands (create, replay, enable, delete); `uow`
    /// records the operational events of the journal's changes; `transport` is shared
    /// with the API's redeliveries.
    pub fn new(
        log: LogWatch,
        cfg: &DeliveryConfig,
        uow: UnitOfWork,
        transport: Arc<Transport>,
        wake: Arc<Notify>,
    ) -> Dispatcher {
        let pool = uow.pool().clone();
        Dispatcher {
            recorder: Recorder::start(pool.clone(), uow),
            pool,
            log,
            workers: cfg.workers,
            credit_confirmations: cfg.credit_confirmations,
            group_commit: cfg.group_commit,
            transport,
            wake,
        }
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let busy: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let slots = Arc::new(Semaphore::new(this.workers.max(1)));
        let mut heads = this.log.receiver();
        let mut workers = tokio::task::JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            let mut sleep_for = Duration::from_secs(1);
            match due(&this.pool).await {
                Ok(Due {
                    ready,
                    soonest,
                    idle,
                }) => {
                    if let Err(e) = catch_up(&this.pool, &idle).await {
                        tracing::warn!(error = %e, "cannot move idle subscribers' cursors");
                    }
                    if let Some(at) = soonest {
                        let until = (at - Utc::now()).to_std().unwrap_or_default();
                        sleep_for = sleep_for.min(until);
                    }
                    for id in ready {
                        if !busy.lock().expect("busy set").insert(id) {
                            continue;
                        }
                        let permit = tokio::select! {
                            p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                            _ = stop.changed() => break,
                        };
                        let (this, busy, stop) = (this.clone(), busy.clone(), stop.clone());
                        workers.spawn(async move {
                            let leased = match this.work(id, stop).await {
                                Ok(leased) => leased,
                                Err(e) => {
                                    tracing::warn!(subscriber = %id, error = %e, "delivery worker failed");
                                    true
                                }
                            };
                            busy.lock().expect("busy set").remove(&id);
                            drop(permit);
                            // Look again: events may have come while we delivered. Not when
                            // another instance holds the lease: its work is not ours.
                            if leased {
                                this.wake.notify_one();
                            }
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for due subscribers"),
            }
            while workers.try_join_next().is_some() {}
            heads.mark_unchanged();
            tokio::select! {
                _ = heads.changed() => {}
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
                _ = stop.changed() => {}
            }
        }
        // Workers see `stop` too and finish the request in flight.
        while workers.join_next().await.is_some() {}
    }

    /// One subscriber's delivery session, under its lease; false when another session
    /// (another instance) holds the lease.
    async fn work(&self, id: Uuid, stop: watch::Receiver<bool>) -> anyhow::Result<bool> {
        let mut lease = self.pool.acquire().await?;
        let key = id.as_u64_pair().0 as i32;
        let got = sqlx::query_scalar!("SELECT pg_try_advisory_lock($1, $2)", LEASE_CLASS, key)
            .fetch_one(&mut *lease)
            .await?
            .unwrap_or(false);
        if !got {
            return Ok(false);
        }
        let result = self.deliver(id, stop).await;
        if sqlx::query_scalar!("SELECT pg_advisory_unlock($1, $2)", LEASE_CLASS, key)
            .fetch_one(&mut *lease)
            .await
            .is_err()
        {
            drop(lease.detach()); // closing the session releases the lock
        }
        result.map(|()| true)
    }

    /// Delivers in position order, each request sent while the previous ones' journal
    /// entries wait for their batch (within the group-commit window). A failure, a
    /// replay, enable or delete (a new epoch) or `stop` waits for every entry sent, and the
    /// session goes on from the journaled cursor: nothing after a failing event is sent
    /// before it succeeds.
    async fn deliver(&self, id: Uuid, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(sub) = Subscriber::load(&self.pool, id).await? else {
            return Ok(());
        };
        let read_types = sub.read_types();
        let mut window = Window::new(self.recorder.clone(), id, self.group_commit);
        let mut state = load_state(&self.pool, id).await?;
        let mut delivered = 0;
        'session: loop {
            if let Some(s) = window.drain().await? {
                state = s;
            }
            if *stop.borrow()
                || !matches!(state.status, cursors::ACTIVE | cursors::RETRYING)
                || state.next_attempt_at.is_some_and(|t| t > Utc::now())
                || delivered >= YIELD_AFTER
            {
                return Ok(());
            }
            let epoch = state.epoch;
            // Where the deliveries sent (journaled or not) have got to, and the last one
            // delivered (every request carries it: a receiver proves it missed nothing).
            let mut from = state.cursor;
            let mut previous = last_delivered(&self.pool, id, state.cursor).await?;
            let mut failures = state.failures;
            loop {
                // The head first: an empty read then proves nothing up to it matches.
                let head = store::head(&self.pool).await?;
                let events = store::read_matching(
                    &self.pool,
                    Position(from),
                    PAGE,
                    read_types.as_deref(),
                    sub.account_id,
                    sub.address(),
                )
                .await?;
                if events.is_empty() {
                    if head.0 > from {
                        let position = head.0;
                        window.push(Entry::CaughtUp { epoch, position }).await?;
                    }
                    window.drain().await?;
                    return Ok(());
                }
                // Events the format does not deliver (an IPN's confirmations past
                // max_confirms) are passed over; the cursor moves past a page ending in them.
                let mut passed_to = None;
                for event in &events {
                    let Some(message) =
                        render::render(&self.pool, self.credit_confirmations, &sub, event).await?
                    else {
                        passed_to = Some(event.position.0);
                        continue;
                    };
                    passed_to = None;
                    if let Some(s) = window.room().await? {
                        state = s;
                        if state.epoch != epoch {
                            continue 'session;
                        }
                    }
                    let entry = self
                        .transport
                        .send(&sub, event, message, epoch, failures + 1, previous)
                        .await;
                    let failed = !matches!(
                        entry,
                        Entry::Attempt {
                            outcome: Outcome::Delivered,
                            ..
                        }
                    );
                    window.push(entry).await?;
                    if !failed {
                        previous = event.position.0;
                    }
                    delivered += 1;
                    from = event.position.0;
                    failures = 0;
                    if failed || *stop.borrow() || delivered >= YIELD_AFTER {
                        continue 'session;
                    }
                }
                if let Some(position) = passed_to {
                    window.push(Entry::CaughtUp { epoch, position }).await?;
                    from = position;
                }
            }
        }
    }
}

/// An idle IPN subscriber's cursor is moved past events that do not concern it once it is
/// this many positions behind the head (a journal row each time), not at every append: a
/// shop with one IPN subscription per invoice address would otherwise write one row per
/// subscription per append. A worker that does get work scans at most this far back.
const IDLE_STEP: i64 = 10_000;

/// What the dispatcher does next.
struct Due {
    /// Subscribers with work now.
    ready: Vec<Uuid>,
    /// The soonest future retry.
    soonest: Option<chrono::DateTime<Utc>>,
    /// IPN subscribers with nothing to deliver, far enough behind to be moved to the head.
    idle: Vec<(Uuid, Entry)>,
}

/// Subscribers behind the head. One following a single address (IPN) has work only when
/// one of that address's deposits has an event after its cursor — the `deposits`
/// projection says so in one indexed look-up, read in the same snapshot as the head, so
/// an event at or below that head is never missed; others always get a worker.
async fn due(pool: &PgPool) -> Result<Due, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT c.subscriber_id, c.next_attempt_at, c.epoch, c.cursor, h.position AS head,
                  (s.address IS NOT NULL AND NOT EXISTS (
                      SELECT 1 FROM deposits d
                      WHERE d.address = s.address AND d.last_position > c.cursor)) AS "idle!"
           FROM subscriber_cursors c
           JOIN subscribers s USING (subscriber_id)
           CROSS JOIN log_head h
           WHERE c.status IN ('active', 'retrying') AND c.cursor < h.position
           ORDER BY c.next_attempt_at NULLS FIRST"#
    )
    .fetch_all(pool)
    .await?;
    let now = Utc::now();
    let mut due = Due {
        ready: Vec::new(),
        soonest: None,
        idle: Vec::new(),
    };
    for r in rows {
        if r.idle {
            if r.head - r.cursor >= IDLE_STEP {
                let entry = Entry::CaughtUp {
                    epoch: r.epoch,
                    position: r.head,
                };
                due.idle.push((r.subscriber_id, entry));
            }
            continue;
        }
        match r.next_attempt_at {
            Some(at) if at > now => due.soonest = Some(due.soonest.map_or(at, |s| s.min(at))),
            _ => due.ready.push(r.subscriber_id),
        }
    }
    Ok(due)
}

/// Moves idle subscribers' cursors, a thousand journal entries per transaction.
async fn catch_up(pool: &PgPool, idle: &[(Uuid, Entry)]) -> Result<(), sqlx::Error> {
    for chunk in idle.chunks(1000) {
        let mut tx = pool.begin().await?;
        cursors::record(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The position of the last event delivered to `id` at or below `cursor` (0: none): after
/// a replay to below it, the one delivered before the replayed ones. Read backwards from
/// the newest journal entry, so it costs a few index rows, not the subscriber's history.
pub async fn last_delivered(pool: &PgPool, id: Uuid, cursor: i64) -> Result<i64, sqlx::Error> {
    let p = sqlx::query_scalar!(
        r#"SELECT position AS "position!" FROM delivery_attempts
           WHERE subscriber_id = $1 AND kind = 'attempt' AND outcome = 'delivered'
             AND position <= $2
           ORDER BY n DESC LIMIT 1"#,
        id,
        cursor
    )
    .fetch_optional(pool)
    .await?;
    Ok(p.unwrap_or(0))
}

pub async fn load_state(pool: &PgPool, id: Uuid) -> Result<CursorState, sqlx::Error> {
    let r = sqlx::query!(
        "SELECT cursor, epoch, status, failures, next_attempt_at, journal_n
         FROM subscriber_cursors WHERE subscriber_id = $1",
        id
    )
    .fetch_one(pool)
    .await?;
    Ok(CursorState {
        subscriber_id: id,
        cursor: r.cursor,
        epoch: r.epoch,
        status: cursors::status_name(&r.status),
        failures: r.failures,
        next_attempt_at: r.next_attempt_at,
        journal_n: r.journal_n,
    })
}
