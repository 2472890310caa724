//! Webhook delivery (DESIGN.md "Webhooks"): every subscriber's matching events after its
//! cursor are POSTed in position order, one per request, signed per Standard Webhooks; the
//! cursor advances only after a 2xx. Every attempt is journaled (`delivery_attempts`) and
//! the cursor is the journal's fold (`projections::cursors`), so nothing is lost on a
//! crash: at most the one event in flight per subscriber is delivered again.
//!
//! - [`Dispatcher`] wakes on every commit to the log (LISTEN/NOTIFY), on API commands and
//!   when a retry falls due, and hands due subscribers to at most `workers` tasks.
//! - A worker holds the subscriber's lease (a session advisory lock) while it delivers, so
//!   two service instances never deliver one subscriber concurrently.
//! - [`Recorder`] group-commits the journal entries of all workers: one transaction per
//!   batch, each worker waiting for its own entry before the next request; it keeps one
//!   connection for itself.

pub mod schedule;
pub mod sign;
pub mod ssrf;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use uuid::Uuid;

use crate::metrics;
use crate::projections::cursors::{self, CursorState, Entry, Outcome};
use crate::store::{self, notify::LogWatch, StoredEvent};
pub use schedule::Schedule;
pub use ssrf::Guard;

/// Deliveries a worker makes before yielding its slot to other subscribers.
const YIELD_AFTER: usize = 500;
/// Events read per query.
const PAGE: i64 = 100;
/// Key space of the delivery leases (two-key session advisory locks): "whk".
const LEASE_CLASS: i32 = 0x0077_686b;

#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub schedule: Schedule,
    pub timeout: Duration,
    pub workers: usize,
    pub guard: Arc<Guard>,
}

/// A subscriber as created (the `subscribers` row).
#[derive(Clone)]
pub struct Subscriber {
    pub id: Uuid,
    pub url: String,
    pub types: Option<Vec<String>>,
    pub account_id: Option<Uuid>,
    secret: String,
}

impl Subscriber {
    pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<Subscriber>, sqlx::Error> {
        let row = sqlx::query!(
            "SELECT url, types, account_id, secret FROM subscribers WHERE subscriber_id = $1",
            id
        )
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|r| Subscriber {
            id,
            url: r.url,
            types: r.types,
            account_id: r.account_id,
            secret: r.secret,
        }))
    }
}

/// One journal entry waiting for its batch, and where its resulting state goes.
type Pending = (Uuid, Entry, oneshot::Sender<Result<CursorState, String>>);

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
                        for (_, _, reply) in batch.drain(..) {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        });
        Recorder { tx }
    }

    pub async fn record(&self, id: Uuid, entry: Entry) -> Result<CursorState, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((id, entry, reply))
            .await
            .map_err(|_| "the journal writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the journal writer stopped".to_string())?
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

/// Finds due subscribers and runs their workers.
pub struct Dispatcher {
    pool: PgPool,
    log: LogWatch,
    cfg: DeliveryConfig,
    client: reqwest::Client,
    recorder: Recorder,
    wake: Arc<Notify>,
}

impl Dispatcher {
    /// `wake` is notified by API commands (create, replay, enable, delete).
    pub fn new(
        pool: PgPool,
        log: LogWatch,
        cfg: DeliveryConfig,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Dispatcher> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(ssrf::GuardedResolver(cfg.guard.clone())))
            .build()?;
        let recorder = Recorder::start(pool.clone());
        Ok(Dispatcher {
            pool,
            log,
            cfg,
            client,
            recorder,
            wake,
        })
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let busy: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let slots = Arc::new(Semaphore::new(this.cfg.workers.max(1)));
        let mut heads = this.log.receiver();
        let mut workers = tokio::task::JoinSet::new();
        loop {
            if *stop.borrow() {
                break;
            }
            let mut sleep_for = Duration::from_secs(1);
            match due(&this.pool).await {
                Ok((ready, soonest)) => {
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

    async fn deliver(&self, id: Uuid, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(sub) = Subscriber::load(&self.pool, id).await? else {
            return Ok(());
        };
        let mut state = load_state(&self.pool, id).await?;
        let mut delivered = 0;
        'session: loop {
            if *stop.borrow()
                || !matches!(state.status, cursors::ACTIVE | cursors::RETRYING)
                || state.next_attempt_at.is_some_and(|t| t > Utc::now())
                || delivered >= YIELD_AFTER
            {
                return Ok(());
            }
            // The head first: an empty read then proves nothing up to it matches.
            let head = store::head(&self.pool).await?;
            let events = store::read_matching(
                &self.pool,
                state.cursor,
                PAGE,
                sub.types.as_deref(),
                sub.account_id,
            )
            .await?;
            if events.is_empty() {
                if head > state.cursor {
                    let epoch = state.epoch;
                    self.record(
                        id,
                        Entry::CaughtUp {
                            epoch,
                            position: head,
                        },
                    )
                    .await?;
                }
                return Ok(());
            }
            for event in &events {
                let epoch = state.epoch;
                let entry = self.send(&sub, event, epoch, state.failures + 1).await;
                let failed = !matches!(
                    entry,
                    Entry::Attempt {
                        outcome: Outcome::Delivered,
                        ..
                    }
                );
                state = self.record(id, entry).await?;
                delivered += 1;
                if failed || state.epoch != epoch || *stop.borrow() {
                    continue 'session;
                }
            }
        }
    }

    async fn record(&self, id: Uuid, entry: Entry) -> anyhow::Result<CursorState> {
        self.recorder
            .record(id, entry)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// One attempt; its outcome as a journal entry.
    async fn send(&self, sub: &Subscriber, event: &StoredEvent, epoch: i32, attempt: i32) -> Entry {
        let body = serde_json::to_vec(event).expect("an event serialises");
        let msg_id = event.id.to_string();
        let now = Utc::now();
        let signature = sign::sign(&sub.secret, &msg_id, now.timestamp(), &body);
        let started = Instant::now();
        let result = match self.cfg.guard.check_url_syntax(&sub.url) {
            Err(e) => Err(format!("refused: {e}")),
            Ok(url) => self
                .client
                .post(url)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header(
                    USER_AGENT,
                    concat!("chainledger/", env!("CARGO_PKG_VERSION")),
                )
                .header("webhook-id", &msg_id)
                .header("webhook-timestamp", now.timestamp().to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .map_err(|e| describe(&e)),
        };
        let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let (status_code, error, outcome, retry_after) = match result {
            Ok(resp) => {
                let code = resp.status();
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| schedule::parse_retry_after(v, Utc::now()));
                if code.is_success() {
                    (Some(code.as_u16()), None, Outcome::Delivered, None)
                } else if code == reqwest::StatusCode::GONE {
                    let e = "410 Gone: the receiver unsubscribed; disabled".to_string();
                    (Some(code.as_u16()), Some(e), Outcome::Gone, None)
                } else {
                    let e = if code.is_redirection() {
                        format!("HTTP {code} (redirects are not followed)")
                    } else {
                        format!("HTTP {code}")
                    };
                    (Some(code.as_u16()), Some(e), Outcome::Failed, retry_after)
                }
            }
            Err(e) => (None, Some(e), Outcome::Failed, None),
        };
        metrics::record_delivery(outcome.as_str(), started.elapsed());
        let next_attempt_at = (outcome == Outcome::Failed)
            .then(|| {
                self.cfg
                    .schedule
                    .next_attempt(attempt as usize, Utc::now(), retry_after)
            })
            .flatten();
        if outcome != Outcome::Delivered {
            tracing::info!(subscriber = %sub.id, position = event.position, attempt,
                error = error.as_deref().unwrap_or(""), next_attempt_at = ?next_attempt_at,
                "delivery failed");
        }
        Entry::Attempt {
            epoch,
            position: event.position,
            event_id: event.id,
            attempt,
            status_code,
            error,
            latency_ms,
            outcome,
            next_attempt_at,
        }
    }
}

/// Subscribers with work now, and the soonest future retry.
async fn due(pool: &PgPool) -> Result<(Vec<Uuid>, Option<chrono::DateTime<Utc>>), sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT subscriber_id, next_attempt_at FROM subscriber_cursors
           WHERE status IN ('active', 'retrying')
             AND cursor < (SELECT position FROM log_head)
           ORDER BY next_attempt_at NULLS FIRST"#
    )
    .fetch_all(pool)
    .await?;
    let now = Utc::now();
    let mut ready = Vec::new();
    let mut soonest = None;
    for r in rows {
        match r.next_attempt_at {
            Some(at) if at > now => {
                soonest = Some(soonest.map_or(at, |s: chrono::DateTime<Utc>| s.min(at)))
            }
            _ => ready.push(r.subscriber_id),
        }
    }
    Ok((ready, soonest))
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

/// A transport error in a line, with its cause (refused, timed out, guard refused).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
