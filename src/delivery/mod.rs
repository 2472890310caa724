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
//! - A subscriber's [`Format`] says what goes on the wire (Standard Webhooks JSON,
//!   cryptoassets.core's txupdate form, a Crypto IPN notification) and its [`Target`] where:
//!   a URL, or a command run once per event ([`script`]).
//! - [`Recorder`] group-commits the journal entries of all workers: one transaction per
//!   batch, each worker waiting for its own entry before the next request; it keeps one
//!   connection for itself.

pub mod schedule;
pub mod script;
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

use crate::compat::{cryptoassets, ipn};
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
    /// Whether subscribers may be commands (SCRIPT_HANDLERS); checked again at each run.
    pub script_handlers: bool,
    /// The credit threshold a withdrawal's txupdate is `credited` at (deposits carry
    /// their account's).
    pub credit_confirmations: u32,
}

/// How a subscriber's events go on the wire (`subscribers.format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Standard Webhooks: the event envelope as JSON, signed.
    Standard,
    /// cryptoassets.core's `txupdate` form ([`cryptoassets`]); only confirmation changes.
    Cryptoassets,
    /// Crypto IPN notifications of one address's totals ([`ipn`]), acknowledged by an echo.
    Ipn { address: String, max_confirms: u32 },
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["standard", "cryptoassets", "ipn"];

    /// The event types this format can deliver (None: all).
    pub fn types(&self) -> Option<&'static [&'static str]> {
        match self {
            Format::Standard => None,
            Format::Cryptoassets => Some(cryptoassets::TYPES),
            Format::Ipn { .. } => Some(ipn::TYPES),
        }
    }
}

/// Where a subscriber's deliveries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Url(String),
    /// A script handler's argv.
    Command(Vec<String>),
}

/// A subscriber as created (the `subscribers` row).
#[derive(Clone)]
pub struct Subscriber {
    pub id: Uuid,
    pub target: Target,
    pub format: Format,
    pub types: Option<Vec<String>>,
    pub account_id: Option<Uuid>,
    /// Signs Standard Webhooks; an IPN subscriber's `ipn_auth`.
    secret: String,
}

impl Subscriber {
    pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<Subscriber>, sqlx::Error> {
        let row = sqlx::query!(
            "SELECT url, command, format, address, max_confirms, types, account_id, secret
             FROM subscribers WHERE subscriber_id = $1",
            id
        )
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|r| Subscriber {
            id,
            target: match (r.url, r.command) {
                (Some(url), _) => Target::Url(url),
                (None, command) => Target::Command(command.unwrap_or_default()),
            },
            format: match (r.format.as_str(), r.address, r.max_confirms) {
                ("ipn", Some(address), Some(m)) => Format::Ipn {
                    address,
                    max_confirms: m.max(0) as u32,
                },
                ("cryptoassets", _, _) => Format::Cryptoassets,
                _ => Format::Standard,
            },
            types: r.types,
            account_id: r.account_id,
            secret: r.secret,
        }))
    }

    /// The types read from the log: the subscriber's filter narrowed to its format's.
    fn read_types(&self) -> Option<Vec<String>> {
        match (self.format.types(), &self.types) {
            (None, types) => types.clone(),
            (Some(only), None) => Some(only.iter().map(|t| t.to_string()).collect()),
            (Some(only), Some(types)) => Some(
                types
                    .iter()
                    .filter(|t| only.contains(&t.as_str()))
                    .cloned()
                    .collect(),
            ),
        }
    }

    fn address(&self) -> Option<&str> {
        match &self.format {
            Format::Ipn { address, .. } => Some(address),
            _ => None,
        }
    }
}

/// One event as this subscriber receives it.
struct Message {
    body: String,
    content_type: &'static str,
    /// Standard Webhooks headers (an IPN's authentication is its `ipn_auth` field).
    signed: bool,
    /// A script handler's environment.
    env: Vec<(&'static str, String)>,
    /// An IPN: what the answer must echo.
    echo: Option<ipn::Notification>,
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

    async fn deliver(&self, id: Uuid, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(sub) = Subscriber::load(&self.pool, id).await? else {
            return Ok(());
        };
        let read_types = sub.read_types();
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
                read_types.as_deref(),
                sub.account_id,
                sub.address(),
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
            // Events the format does not deliver (an IPN's confirmations past max_confirms)
            // are passed over; the cursor moves past a page ending in them.
            let mut passed_to = None;
            for event in &events {
                let Some(message) = self.render(&sub, event).await? else {
                    passed_to = Some(event.position);
                    continue;
                };
                passed_to = None;
                let epoch = state.epoch;
                let entry = self
                    .send(&sub, event, message, epoch, state.failures + 1)
                    .await;
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
            if let Some(position) = passed_to {
                let epoch = state.epoch;
                state = self.record(id, Entry::CaughtUp { epoch, position }).await?;
            }
        }
    }

    /// The event in the subscriber's format; None when the format does not deliver it.
    async fn render(
        &self,
        sub: &Subscriber,
        event: &StoredEvent,
    ) -> anyhow::Result<Option<Message>> {
        let envelope = || serde_json::to_string(event).expect("an event serialises");
        let command = matches!(sub.target, Target::Command(_));
        // The txupdate, when something will use it: the cryptoassets body, or a script's
        // CRYPTOASSETS_* variables.
        let update = (command || sub.format == Format::Cryptoassets)
            .then(|| {
                cryptoassets::txupdate(&event.kind, &event.data, self.cfg.credit_confirmations)
            })
            .flatten();
        let mut message = match &sub.format {
            Format::Standard => Message {
                body: envelope(),
                content_type: "application/json",
                signed: true,
                env: Vec::new(),
                echo: None,
            },
            Format::Cryptoassets => {
                let Some(update) = &update else {
                    return Ok(None);
                };
                Message {
                    body: cryptoassets::form(update),
                    content_type: "application/x-www-form-urlencoded",
                    signed: true,
                    env: Vec::new(),
                    echo: None,
                }
            }
            Format::Ipn {
                address,
                max_confirms,
            } => {
                if !ipn::notifies(
                    &event.kind,
                    event.stream_version,
                    &event.data,
                    *max_confirms,
                ) {
                    return Ok(None);
                }
                let n = ipn::Notification {
                    address: address.clone(),
                    totals: ipn_totals(&self.pool, address, event.position, *max_confirms).await?,
                    ipn_auth: sub.secret.clone(),
                };
                Message {
                    body: n.form(),
                    content_type: "application/x-www-form-urlencoded",
                    signed: false,
                    env: Vec::new(),
                    echo: Some(n),
                }
            }
        };
        if command {
            // A script gets the event in its environment; the standard body is the envelope.
            let data = match sub.format {
                Format::Standard => std::mem::take(&mut message.body),
                _ => envelope(),
            };
            message.env = vec![
                ("CHAINLEDGER_EVENT_NAME", event.kind.clone()),
                ("CHAINLEDGER_EVENT_DATA", data),
            ];
            if let Some(update) = &update {
                let data = serde_json::to_string(update).expect("a txupdate serialises");
                message
                    .env
                    .push(("CRYPTOASSETS_EVENT_NAME", cryptoassets::EVENT_NAME.into()));
                message.env.push(("CRYPTOASSETS_EVENT_DATA", data));
            }
        }
        Ok(Some(message))
    }

    async fn record(&self, id: Uuid, entry: Entry) -> anyhow::Result<CursorState> {
        self.recorder
            .record(id, entry)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// One attempt; its outcome as a journal entry.
    async fn send(
        &self,
        sub: &Subscriber,
        event: &StoredEvent,
        message: Message,
        epoch: i32,
        attempt: i32,
    ) -> Entry {
        let started = Instant::now();
        let (status_code, error, outcome, retry_after) = match &sub.target {
            Target::Url(url) => self.post(sub, url, event, message).await,
            Target::Command(_) if !self.cfg.script_handlers => {
                let e = "refused: script handlers are disabled (SCRIPT_HANDLERS)".to_string();
                (None, Some(e), Outcome::Failed, None)
            }
            Target::Command(argv) => {
                match script::run(argv, &message.env, self.cfg.timeout).await {
                    Ok(()) => (None, None, Outcome::Delivered, None),
                    Err(e) => (None, Some(e), Outcome::Failed, None),
                }
            }
        };
        let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
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

    /// One HTTP request: (status code, error, outcome, Retry-After).
    async fn post(
        &self,
        sub: &Subscriber,
        url: &str,
        event: &StoredEvent,
        message: Message,
    ) -> HttpOutcome {
        let url = match self.cfg.guard.check_url_syntax(url) {
            Ok(url) => url,
            Err(e) => return (None, Some(format!("refused: {e}")), Outcome::Failed, None),
        };
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static(message.content_type))
            .header(
                USER_AGENT,
                concat!("chainledger/", env!("CARGO_PKG_VERSION")),
            );
        if message.signed {
            let msg_id = event.id.to_string();
            let now = Utc::now().timestamp();
            let signature = sign::sign(&sub.secret, &msg_id, now, message.body.as_bytes());
            request = request
                .header("webhook-id", msg_id)
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", signature);
        }
        let resp = match request.body(message.body).send().await {
            Ok(resp) => resp,
            Err(e) => return (None, Some(describe(&e)), Outcome::Failed, None),
        };
        let code = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| schedule::parse_retry_after(v, Utc::now()));
        if code.is_success() {
            let Some(sent) = &message.echo else {
                return (Some(code.as_u16()), None, Outcome::Delivered, None);
            };
            let echoed = match read_limited(resp, MAX_ANSWER).await {
                Ok(body) => sent.check_echo(&body),
                Err(e) => Err(format!("cannot read the answer: {e}")),
            };
            match echoed {
                Ok(()) => (Some(code.as_u16()), None, Outcome::Delivered, None),
                Err(e) => {
                    let e = format!("HTTP {code} without the IPN echo: {e}");
                    (Some(code.as_u16()), Some(e), Outcome::Failed, retry_after)
                }
            }
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
}

/// An HTTP attempt's status code, error, outcome and Retry-After.
type HttpOutcome = (Option<u16>, Option<String>, Outcome, Option<Duration>);

/// Longest answer read from an IPN receiver.
const MAX_ANSWER: usize = 64 * 1024;

async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("longer than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An address's IPN totals as of `position`: the latest event at or before it of each of
/// the address's deposits (the `deposits` projection names them; their streams are read
/// through the log's stream index).
pub async fn ipn_totals(
    pool: &PgPool,
    address: &str,
    position: i64,
    max_confirms: u32,
) -> Result<ipn::Totals, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (e.stream) e.type AS kind, e.data
           FROM deposits d
           JOIN events e ON e.stream = 'deposit-' || d.txid || ':' || d.vout
           WHERE d.address = $1 AND e.position <= $2
           ORDER BY e.stream, e.stream_version DESC"#,
        address,
        position
    )
    .fetch_all(pool)
    .await?;
    Ok(ipn::totals(
        rows.iter().map(|r| (r.kind.as_str(), &r.data)),
        max_confirms,
    ))
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
