//! Rebuilding projections from their sources while the service runs.
//!
//! 1. Fresh tables are created from the current definitions in the schema
//!    `projections_rebuild`, on a connection whose `search_path` puts it first, so the very
//!    code the service folds with live ([`super::apply`], [`cursors::apply`]) writes there.
//! 2. The log (or the delivery journal) is replayed into them in pages, without locks.
//! 3. Balances are checked against an independent SQL aggregate over the log at that point.
//! 4. In one transaction: the append lock (and the journal's table locks) are taken, the
//!    few events that arrived meanwhile are folded, the rebuilt tables are compared with
//!    the live ones (digest per table, differing keys), and — unless verifying only or the
//!    balance check failed — the live tables are replaced by the rebuilt ones. Appenders
//!    wait for that transaction and then write to the new tables.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::cursors::{self, CursorState, JournalRow};
use super::{Definition, Source};
use crate::store::{self, StoredEvent};
use futures::StreamExt;

/// Serialises rebuilds: the service's start-up check and the operator's tool.
pub const STARTUP_LOCK: i64 = 0x6368_6169_6e72_6562; // "chainreb"
pub const SCHEMA: &str = "projections_rebuild";
const PAGE: i64 = 20000;
const SHOW_KEYS: usize = 20;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Replace the live tables when the balance check holds.
    Swap,
    /// Report differences only.
    VerifyOnly,
}

/// How progress is shown: a bar on a terminal, log lines otherwise.
pub enum Progress {
    Bar,
    Log,
}

impl Progress {
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Log
        }
    }
}

/// A live table compared with its rebuilt twin.
#[derive(Debug)]
pub struct TableDiff {
    pub table: &'static str,
    /// `None` when the live table is missing.
    pub live_digest: Option<String>,
    pub rebuilt_digest: String,
    /// Keys of rows that differ (present on one side only, or different), the first few.
    pub keys: Vec<String>,
    pub more: bool,
}

impl TableDiff {
    pub fn identical(&self) -> bool {
        self.live_digest.as_deref() == Some(self.rebuilt_digest.as_str())
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Events and journal entries folded.
    pub replayed: u64,
    /// The log position the rebuilt tables are at.
    pub position: i64,
    pub tables: Vec<TableDiff>,
    /// Accounts whose rebuilt balance differs from the aggregate over the log.
    pub balance_mismatches: Vec<String>,
    /// Accounts the balance check covered.
    pub balance_accounts: i64,
    pub swapped: bool,
    pub seconds: f64,
}

impl Report {
    /// Whether the live tables matched the log (nothing to repair) and the rebuild held.
    pub fn clean(&self) -> bool {
        self.balance_mismatches.is_empty() && self.tables.iter().all(TableDiff::identical)
    }
}

/// Why `def` must be rebuilt before serving, if it must.
pub async fn needs_rebuild(
    pool: &PgPool,
    def: &Definition,
) -> Result<Option<&'static str>, sqlx::Error> {
    let stored = sqlx::query_scalar!(
        "SELECT version FROM projection_versions WHERE name = $1",
        def.name
    )
    .fetch_optional(pool)
    .await?;
    match stored {
        None => return Ok(Some("no recorded version (new projection or database)")),
        Some(v) if v != def.version() => return Ok(Some("its definition changed")),
        Some(_) => {}
    }
    for (table, _) in def.tables {
        if !exists(pool, "public", table).await? {
            return Ok(Some("a table of it is missing"));
        }
    }
    Ok(None)
}

async fn exists<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    schema: &str,
    table: &str,
) -> Result<bool, sqlx::Error> {
    let name = format!("{schema}.{table}");
    let oid = sqlx::query_scalar!(r#"SELECT to_regclass($1)::oid AS "oid""#, name)
        .fetch_one(conn)
        .await?;
    Ok(oid.is_some())
}

/// Rebuilds `defs` (see the module docs). `compare` also compares rebuilt and live tables
/// (a scan of both under the append lock); the service's start-up rebuild of a changed
/// definition skips it. The caller holds [`STARTUP_LOCK`].
pub async fn rebuild(
    pool: &PgPool,
    defs: &[&Definition],
    mode: Mode,
    compare: bool,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; SET search_path TO {SCHEMA}, public"
    ))
    .execute(&mut conn)
    .await?;
    let result = rebuild_on(pool, &mut conn, defs, mode, compare, progress).await;
    // Leave nothing behind (after a swap the schema is empty; after verify-only it holds
    // the rebuilt tables).
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    let mut report = result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn rebuild_on(
    pool: &PgPool,
    conn: &mut PgConnection,
    defs: &[&Definition],
    mode: Mode,
    compare: bool,
    progress: &Progress,
) -> anyhow::Result<Report> {
    for def in defs {
        sqlx::raw_sql(def.sql).execute(&mut *conn).await?;
    }
    let from_log = defs.iter().any(|d| d.source == Source::Log);
    let from_journal = defs.iter().any(|d| d.source == Source::DeliveryJournal);
    let mut report = Report::default();

    // Pass 1, without locks: everything committed so far.
    let head = store::head(&mut *conn).await?;
    let journal = if from_journal {
        sqlx::query_scalar!("SELECT count(*) FROM delivery_attempts")
            .fetch_one(&mut *conn)
            .await?
            .unwrap_or(0)
    } else {
        0
    };
    let total = if from_log { head as u64 } else { 0 } + journal as u64;
    let meter = Meter::new(progress, total);
    if from_log {
        report.replayed += replay_log_pipelined(pool, conn, head, &meter).await?;
        let (mismatches, accounts) = check_balances(conn, head).await?;
        report.balance_mismatches = mismatches;
        report.balance_accounts = accounts;
    }
    if from_journal {
        report.replayed += replay_journal(conn, &meter).await?;
    }
    meter.finish();

    // Pass 2, under the locks appenders take: catch up, compare, swap.
    for attempt in 1.. {
        let mut tx = conn.begin().await?;
        let outcome = async {
            let mut caught_up = 0;
            let mut position = head;
            if from_log {
                position = store::lock(&mut tx).await?;
                caught_up += replay_log(&mut tx, head, position, &Meter::silent()).await?;
            }
            if from_journal {
                if exists(&mut *tx, "public", "subscriber_cursors").await? {
                    sqlx::query!("LOCK TABLE public.subscriber_cursors IN EXCLUSIVE MODE")
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query!("LOCK TABLE delivery_attempts IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
                caught_up += catch_up_journal(&mut tx).await?;
            }
            let mut tables = Vec::new();
            if compare {
                for def in defs {
                    for (table, keys) in def.tables {
                        tables.push(diff(&mut tx, table, keys).await?);
                    }
                }
            }
            Ok::<_, anyhow::Error>((caught_up, position, tables))
        }
        .await;
        let (caught_up, position, tables) = match outcome {
            Ok(v) => v,
            Err(e) if attempt < 5 && is_deadlock(&e) => {
                tracing::warn!(
                    attempt,
                    "rebuild's final step deadlocked with a writer; retrying"
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        report.replayed += caught_up;
        report.position = position;
        report.tables = tables;
        if mode == Mode::VerifyOnly || !report.balance_mismatches.is_empty() {
            tx.rollback().await?;
            return Ok(report);
        }
        for def in defs {
            for (table, _) in def.tables {
                sqlx::raw_sql(&format!(
                    "DROP TABLE IF EXISTS public.{table}; ALTER TABLE {SCHEMA}.{table} SET SCHEMA public"
                ))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query!(
                "INSERT INTO projection_versions (name, version) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, rebuilt_at = now()",
                def.name,
                def.version()
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        report.swapped = true;
        return Ok(report);
    }
    unreachable!("the loop returns")
}

fn is_deadlock(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40P01")
}

/// Folds events in (0, to] into the tables `search_path` finds first, while another
/// connection streams the next pages from the log: reading and folding overlap.
async fn replay_log_pipelined(
    pool: &PgPool,
    conn: &mut PgConnection,
    to: i64,
    meter: &Meter,
) -> anyhow::Result<u64> {
    let (pages, mut received) =
        tokio::sync::mpsc::channel::<Result<Vec<StoredEvent>, sqlx::Error>>(2);
    let pool = pool.clone();
    let reader = tokio::spawn(async move {
        let mut read_conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => return drop(pages.send(Err(e)).await),
        };
        let mut rows = std::pin::pin!(store::read_range(&mut read_conn, 0, to));
        let mut page = Vec::with_capacity(PAGE as usize);
        while let Some(row) = rows.next().await {
            match row {
                Ok(e) => {
                    page.push(e);
                    if page.len() == PAGE as usize
                        && pages.send(Ok(std::mem::take(&mut page))).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => return drop(pages.send(Err(e)).await),
            }
        }
        if !page.is_empty() {
            let _ = pages.send(Ok(page)).await;
        }
    });
    let mut n = 0;
    while let Some(page) = received.recv().await {
        let page = page?;
        let mut tx = conn.begin().await?;
        super::apply(&mut tx, &page).await?;
        tx.commit().await?;
        n += page.len() as u64;
        meter.add(page.len() as u64);
    }
    reader.await?;
    Ok(n)
}

/// Folds events in (after, to] into the tables `search_path` finds first.
async fn replay_log(
    conn: &mut PgConnection,
    mut after: i64,
    to: i64,
    meter: &Meter,
) -> anyhow::Result<u64> {
    let mut n = 0;
    while after < to {
        let page = store::read_after(&mut *conn, after, PAGE.min(to - after), None).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        let mut tx = conn.begin().await?;
        super::apply(&mut tx, &page).await?;
        tx.commit().await?;
        n += page.len() as u64;
        meter.add(page.len() as u64);
    }
    Ok(n)
}

/// Folds the whole delivery journal, subscriber by subscriber, in journal order.
async fn replay_journal(conn: &mut PgConnection, meter: &Meter) -> anyhow::Result<u64> {
    let (mut after_id, mut after_n) = (Uuid::nil(), 0);
    let mut current: Option<CursorState> = None;
    let mut n = 0;
    loop {
        let rows: Vec<JournalRow> = sqlx::query_as(
            "SELECT subscriber_id, n, kind, epoch, position, event_id, attempt, status_code, error,
                    latency_ms, outcome, next_attempt_at
             FROM public.delivery_attempts WHERE (subscriber_id, n) > ($1, $2)
             ORDER BY subscriber_id, n LIMIT $3",
        )
        .bind(after_id)
        .bind(after_n)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else { break };
        (after_id, after_n) = (last.subscriber_id, last.n);
        let mut done = Vec::new();
        for row in &rows {
            let state = match current.take() {
                Some(s) if s.subscriber_id == row.subscriber_id => s,
                Some(s) => {
                    done.push(s);
                    CursorState::new(row.subscriber_id)
                }
                None => CursorState::new(row.subscriber_id),
            };
            let entry = row.entry().map_err(anyhow::Error::msg)?;
            current = Some(cursors::apply(&state, &entry));
        }
        // The last subscriber may continue on the next page; write it too (it is upserted).
        done.extend(current.clone());
        cursors::write(&mut *conn, done.iter()).await?;
        n += rows.len() as u64;
        meter.add(rows.len() as u64);
    }
    Ok(n)
}

/// Folds journal entries newer than each rebuilt cursor (written during pass 1).
async fn catch_up_journal(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let rows: Vec<JournalRow> = sqlx::query_as(&format!(
        "SELECT a.subscriber_id, a.n, a.kind, a.epoch, a.position, a.event_id, a.attempt,
                a.status_code, a.error, a.latency_ms, a.outcome, a.next_attempt_at
         FROM public.delivery_attempts a
         LEFT JOIN {SCHEMA}.subscriber_cursors c USING (subscriber_id)
         WHERE a.n > coalesce(c.journal_n, 0)
         ORDER BY a.subscriber_id, a.n"
    ))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.subscriber_id).collect();
    let mut states: HashMap<Uuid, CursorState> = HashMap::new();
    for id in ids {
        if states.contains_key(&id) {
            continue;
        }
        let state = sqlx::query_as::<_, (i64, i32, String, i32, Option<chrono::DateTime<chrono::Utc>>, i32)>(
            &format!("SELECT cursor, epoch, status, failures, next_attempt_at, journal_n FROM {SCHEMA}.subscriber_cursors WHERE subscriber_id = $1"),
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|(cursor, epoch, status, failures, next_attempt_at, journal_n)| CursorState {
            subscriber_id: id,
            cursor,
            epoch,
            status: cursors::status_name(&status),
            failures,
            next_attempt_at,
            journal_n,
        })
        .unwrap_or_else(|| CursorState::new(id));
        states.insert(id, state);
    }
    for row in &rows {
        let state = &states[&row.subscriber_id];
        let next = cursors::apply(state, &row.entry().map_err(anyhow::Error::msg)?);
        states.insert(row.subscriber_id, next);
    }
    cursors::write(&mut *conn, states.values()).await?;
    Ok(rows.len() as u64)
}

/// Rebuilt balances (at `position`) against an independent aggregate over the log: for
/// each deposit and withdrawal stream its last event's state, summed per account by the
/// documented rules (withdrawals not dropped or replaced debit `credited`).
async fn check_balances(
    conn: &mut PgConnection,
    position: i64,
) -> anyhow::Result<(Vec<String>, i64)> {
    let rows: Vec<(Uuid, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        r#"WITH last AS (
               SELECT DISTINCT ON (stream) data FROM public.events
               WHERE position <= $1 AND stream LIKE 'deposit-%'
               ORDER BY stream, stream_version DESC),
           agg_d AS (
               SELECT (data->>'account_id')::uuid AS account_id,
                 coalesce(sum((data->>'amount_sats')::bigint) FILTER (WHERE (data->>'credited')::boolean), 0) AS credited,
                 coalesce(sum((data->>'amount_sats')::bigint) FILTER (WHERE NOT (data->>'credited')::boolean
                     AND (data->>'confirmations')::int >= 1), 0) AS pending,
                 coalesce(sum((data->>'amount_sats')::bigint) FILTER (WHERE (data->>'confirmations')::int = 0
                     AND data->>'status' IN ('mempool', 'reorged')), 0) AS unconfirmed
               FROM last GROUP BY 1),
           last_w AS (
               SELECT DISTINCT ON (stream) data FROM public.events
               WHERE position <= $1 AND stream LIKE 'withdrawal-%'
               ORDER BY stream, stream_version DESC),
           agg_w AS (
               SELECT (data->>'account_id')::uuid AS account_id,
                 coalesce(sum((data->>'amount_sats')::bigint)
                     FILTER (WHERE data->>'status' NOT IN ('dropped', 'replaced')), 0) AS spent
               FROM last_w GROUP BY 1),
           agg AS (
               SELECT coalesce(d.account_id, w.account_id) AS account_id,
                      coalesce(d.credited, 0) - coalesce(w.spent, 0) AS credited,
                      coalesce(d.pending, 0) AS pending, coalesce(d.unconfirmed, 0) AS unconfirmed
               FROM agg_d d FULL JOIN agg_w w ON d.account_id = w.account_id)
           SELECT coalesce(a.account_id, b.account_id),
                  coalesce(a.credited, 0)::bigint, coalesce(a.pending, 0)::bigint, coalesce(a.unconfirmed, 0)::bigint,
                  coalesce(b.credited_sats, 0), coalesce(b.pending_sats, 0), coalesce(b.unconfirmed_sats, 0)
           FROM agg a FULL JOIN {SCHEMA}.balances b ON a.account_id = b.account_id"#
    ))
    .bind(position)
    .fetch_all(&mut *conn)
    .await?;
    let accounts = rows.len() as i64;
    let mismatches = rows
        .into_iter()
        .filter(|(_, a, b, c, x, y, z)| (a, b, c) != (x, y, z))
        .map(|(id, a, b, c, x, y, z)| {
            format!(
                "{id}: log says credited/pending/unconfirmed {a}/{b}/{c} sats, rebuilt {x}/{y}/{z}"
            )
        })
        .collect();
    Ok((mismatches, accounts))
}

/// Digests of the live and rebuilt table (rows as text, ordered by key) and the keys of
/// the rows that differ.
async fn diff(
    conn: &mut PgConnection,
    table: &'static str,
    keys: &[&str],
) -> anyhow::Result<TableDiff> {
    let order = keys.join(", ");
    let digest = |schema: &str| {
        format!(
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {order}), '')) FROM {schema}.{table} t"
        )
    };
    let rebuilt_digest: String = sqlx::query_scalar(&digest(SCHEMA))
        .fetch_one(&mut *conn)
        .await?;
    if !exists(&mut *conn, "public", table).await? {
        return Ok(TableDiff {
            table,
            live_digest: None,
            rebuilt_digest,
            keys: Vec::new(),
            more: false,
        });
    }
    let live_digest: String = sqlx::query_scalar(&digest("public"))
        .fetch_one(&mut *conn)
        .await?;
    let mut differing = Vec::new();
    if live_digest != rebuilt_digest {
        let key_text = keys
            .iter()
            .map(|k| format!("coalesce(a.{k}, b.{k})::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let join = keys
            .iter()
            .map(|k| format!("a.{k} = b.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        differing = sqlx::query_scalar(&format!(
            "SELECT concat_ws(':', {key_text}) FROM public.{table} a FULL JOIN {SCHEMA}.{table} b ON {join}
             WHERE a::text IS DISTINCT FROM b::text ORDER BY 1 LIMIT {}",
            SHOW_KEYS + 1
        ))
        .fetch_all(&mut *conn)
        .await?;
    }
    let more = differing.len() > SHOW_KEYS;
    differing.truncate(SHOW_KEYS);
    Ok(TableDiff {
        table,
        live_digest: Some(live_digest),
        rebuilt_digest,
        keys: differing,
        more,
    })
}

/// Progress: an indicatif bar (events replayed, rate, ETA) or a log line every 2 s.
struct Meter {
    bar: Option<indicatif::ProgressBar>,
    log: Option<std::sync::Mutex<(Instant, u64, u64)>>,
    started: Instant,
}

impl Meter {
    fn new(progress: &Progress, total: u64) -> Meter {
        let started = Instant::now();
        match progress {
            Progress::Bar => {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} replaying [{bar:40}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                Meter {
                    bar: Some(bar),
                    log: None,
                    started,
                }
            }
            Progress::Log => Meter {
                bar: None,
                log: Some(std::sync::Mutex::new((started, 0, total))),
                started,
            },
        }
    }

    fn silent() -> Meter {
        Meter {
            bar: None,
            log: None,
            started: Instant::now(),
        }
    }

    fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(log) = &self.log {
            let mut l = log.lock().expect("meter");
            l.1 += n;
            if l.0.elapsed() >= Duration::from_secs(2) {
                l.0 = Instant::now();
                let rate = l.1 as f64 / self.started.elapsed().as_secs_f64();
                tracing::info!(
                    replayed = l.1,
                    total = l.2,
                    rate = rate as u64,
                    "rebuilding projections"
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
