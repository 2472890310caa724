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

mod compare;
mod meter;

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::cursors::{self, CursorState, JournalRow};
use super::{Definition, Source};
use crate::domain::events::Event;
use crate::domain::stream::{EventAt, Position};
use crate::store::{self, MalformedEvent, StoredEvent};
pub use compare::TableDiff;
use compare::{check_balances, diff};
use meter::Meter;
pub use meter::Progress;

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
    let total = if from_log { head.0 as u64 } else { 0 } + journal as u64;
    let meter = Meter::new(progress, total);
    if from_log {
        report.replayed += replay_log_pipelined(pool, conn, head, &meter).await?;
        let (mismatches, accounts) = check_balances(conn, head.0).await?;
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
                position = store::hold_appends(&mut tx).await?;
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
        report.position = position.0;
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
    to: Position,
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
        let mut rows = std::pin::pin!(store::read_range(&mut read_conn, Position::START, to));
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
        fold_page(&mut tx, &page).await?;
        tx.commit().await?;
        n += page.len() as u64;
        meter.add(page.len() as u64);
    }
    reader.await?;
    Ok(n)
}

/// Folds a page of stored events: typed first (an event whose data does not fit its type
/// stops the rebuild, naming its position), then through the live code.
async fn fold_page(conn: &mut PgConnection, page: &[StoredEvent]) -> anyhow::Result<()> {
    let typed: Vec<Event> = page
        .iter()
        .map(StoredEvent::event)
        .collect::<Result<_, MalformedEvent>>()?;
    let at: Vec<EventAt<'_>> = page.iter().zip(&typed).map(|(e, t)| e.at(t)).collect();
    super::apply(conn, &at).await?;
    Ok(())
}

/// Folds events in (after, to] into the tables `search_path` finds first.
async fn replay_log(
    conn: &mut PgConnection,
    mut after: Position,
    to: Position,
    meter: &Meter,
) -> anyhow::Result<u64> {
    let mut n = 0;
    while after < to {
        let page = store::read_after(&mut *conn, after, PAGE.min(to.0 - after.0), None).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        let mut tx = conn.begin().await?;
        fold_page(&mut tx, &page).await?;
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
