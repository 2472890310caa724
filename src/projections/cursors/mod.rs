//! Subscriber cursors: the fold of the `delivery_attempts` journal. [`apply`] is pure and
//! is the only place the rules live; [`record`] appends journal entries and writes the
//! folded state in one transaction, so a rebuild (folding every entry by subscriber and
//! `n`) reproduces the live table exactly.
//!
//! Concurrency: the delivery worker and the API's commands (replay, enable, delete) both
//! write through [`record`], which locks the subscriber's cursor row before numbering the
//! entry. A worker's attempt carries the epoch it read; replay/enable/delete bump the
//! epoch, so an attempt that raced a replay is journaled but changes nothing.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

mod rows;
use rows::Journal;
pub use rows::JournalRow;

pub const ACTIVE: &str = "active";
pub const RETRYING: &str = "retrying";
pub const DISABLED: &str = "disabled";
pub const DELETED: &str = "deleted";

/// One subscriber's cursor row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorState {
    pub subscriber_id: Uuid,
    pub cursor: i64,
    pub epoch: i32,
    pub status: &'static str,
    pub failures: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub journal_n: i32,
}

impl CursorState {
    pub fn new(subscriber_id: Uuid) -> CursorState {
        CursorState {
            subscriber_id,
            cursor: 0,
            epoch: 0,
            status: ACTIVE,
            failures: 0,
            next_attempt_at: None,
            journal_n: 0,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
    /// 410 Gone: the receiver asks never to be called again.
    Gone,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Gone => "gone",
        }
    }
}

/// What happened; each becomes one journal row.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Created {
        start: i64,
    },
    Attempt {
        epoch: i32,
        position: i64,
        event_id: Uuid,
        attempt: i32,
        status_code: Option<u16>,
        error: Option<String>,
        latency_ms: i32,
        outcome: Outcome,
        /// For a failure: when to try again; `None` when the schedule is spent.
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// Nothing after the cursor up to `position` matches the subscriber's filter.
    CaughtUp {
        epoch: i32,
        position: i64,
    },
    Replay {
        position: i64,
    },
    Enable,
    Delete,
    /// An operator's delivery of one event again (`POST …/redeliver`), an
    /// [`Entry::Attempt`]: journaled, it changes nothing.
    Redelivery(Box<Entry>),
}

impl Entry {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Entry::Created { .. } => "created",
            Entry::Attempt { .. } => "attempt",
            Entry::CaughtUp { .. } => "caught_up",
            Entry::Replay { .. } => "replay",
            Entry::Enable => "enable",
            Entry::Delete => "delete",
            Entry::Redelivery(_) => "redelivery",
        }
    }

    pub(super) fn redelivery_if(self, redelivery: bool) -> Entry {
        match redelivery {
            true => Entry::Redelivery(Box::new(self)),
            false => self,
        }
    }
}

/// The fold: the state after `entry`. Deleted subscribers stay deleted.
pub fn apply(state: &CursorState, entry: &Entry) -> CursorState {
    let mut s = state.clone();
    s.journal_n += 1;
    if s.status == DELETED {
        return s;
    }
    match entry {
        Entry::Redelivery(_) => {}
        Entry::Created { start } => {
            s.cursor = *start;
        }
        Entry::Attempt {
            epoch,
            position,
            attempt,
            outcome,
            next_attempt_at,
            ..
        } if *epoch == s.epoch => match outcome {
            Outcome::Delivered => {
                s.cursor = s.cursor.max(*position);
                s.status = ACTIVE;
                s.failures = 0;
                s.next_attempt_at = None;
            }
            Outcome::Failed => {
                s.failures = *attempt;
                s.next_attempt_at = *next_attempt_at;
                s.status = if next_attempt_at.is_some() {
                    RETRYING
                } else {
                    DISABLED
                };
            }
            Outcome::Gone => {
                s.failures = *attempt;
                s.next_attempt_at = None;
                s.status = DISABLED;
            }
        },
        Entry::Attempt { .. } => {}
        Entry::CaughtUp { epoch, position } if *epoch == s.epoch => {
            s.cursor = s.cursor.max(*position);
        }
        Entry::CaughtUp { .. } => {}
        Entry::Replay { position } => {
            s.epoch += 1;
            s.cursor = *position;
            s.failures = 0;
            s.next_attempt_at = None;
            if s.status == RETRYING {
                s.status = ACTIVE;
            }
        }
        Entry::Enable => {
            s.epoch += 1;
            s.failures = 0;
            s.next_attempt_at = None;
            s.status = ACTIVE;
        }
        Entry::Delete => {
            s.epoch += 1;
            s.status = DELETED;
            s.next_attempt_at = None;
        }
    }
    s
}

/// Appends `entries` (in order; several may name one subscriber) to the journal and writes
/// the folded cursors inside the caller's transaction: three statements whatever the batch
/// size. Returns each entry's state before and after it, in input order.
pub async fn record(
    tx: &mut PgConnection,
    entries: &[(Uuid, Entry)],
) -> Result<Vec<(CursorState, CursorState)>, sqlx::Error> {
    let mut ids: Vec<Uuid> = entries.iter().map(|(id, _)| *id).collect();
    ids.sort();
    ids.dedup();
    // Row locks in id order (no deadlock between batches); numbering happens under them.
    let rows = sqlx::query!(
        r#"SELECT subscriber_id, cursor, epoch, status, failures, next_attempt_at, journal_n
           FROM subscriber_cursors WHERE subscriber_id = ANY($1)
           ORDER BY subscriber_id FOR UPDATE"#,
        &ids
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut states: std::collections::HashMap<Uuid, CursorState> = rows
        .into_iter()
        .map(|r| {
            (
                r.subscriber_id,
                CursorState {
                    subscriber_id: r.subscriber_id,
                    cursor: r.cursor,
                    epoch: r.epoch,
                    status: status_name(&r.status),
                    failures: r.failures,
                    next_attempt_at: r.next_attempt_at,
                    journal_n: r.journal_n,
                },
            )
        })
        .collect();

    let mut out = Vec::with_capacity(entries.len());
    let mut j = Journal::default();
    for (id, entry) in entries {
        let before = states.remove(id).unwrap_or_else(|| CursorState::new(*id));
        let after = apply(&before, entry);
        j.push(&before, &after, entry);
        states.insert(*id, after.clone());
        out.push((before, after));
    }
    sqlx::query!(
        r#"INSERT INTO delivery_attempts (subscriber_id, n, kind, epoch, position, event_id,
               attempt, status_code, error, latency_ms, outcome, next_attempt_at)
           SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::int[], $5::bigint[],
               $6::uuid[], $7::int[], $8::int[], $9::text[], $10::int[], $11::text[],
               $12::timestamptz[])"#,
        &j.subscriber_id,
        &j.n,
        &j.kind as &[&str],
        &j.epoch,
        &j.position as &[Option<i64>],
        &j.event_id as &[Option<Uuid>],
        &j.attempt as &[Option<i32>],
        &j.status_code as &[Option<i32>],
        &j.error as &[Option<String>],
        &j.latency_ms as &[Option<i32>],
        &j.outcome as &[Option<&str>],
        &j.next_attempt_at as &[Option<DateTime<Utc>>],
    )
    .execute(&mut *tx)
    .await?;
    write(&mut *tx, states.values()).await?;
    Ok(out)
}

/// Upserts cursor rows (also used by a rebuild).
pub async fn write<'a>(
    conn: &mut PgConnection,
    states: impl Iterator<Item = &'a CursorState>,
) -> Result<(), sqlx::Error> {
    let mut id = Vec::new();
    let mut cursor = Vec::new();
    let mut epoch = Vec::new();
    let mut status = Vec::new();
    let mut failures = Vec::new();
    let mut next = Vec::new();
    let mut n = Vec::new();
    for s in states {
        id.push(s.subscriber_id);
        cursor.push(s.cursor);
        epoch.push(s.epoch);
        status.push(s.status);
        failures.push(s.failures);
        next.push(s.next_attempt_at);
        n.push(s.journal_n);
    }
    sqlx::query!(
        r#"INSERT INTO subscriber_cursors
               (subscriber_id, cursor, epoch, status, failures, next_attempt_at, journal_n)
           SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::int[], $4::text[], $5::int[],
               $6::timestamptz[], $7::int[])
           ON CONFLICT (subscriber_id) DO UPDATE SET cursor = EXCLUDED.cursor,
               epoch = EXCLUDED.epoch, status = EXCLUDED.status, failures = EXCLUDED.failures,
               next_attempt_at = EXCLUDED.next_attempt_at, journal_n = EXCLUDED.journal_n"#,
        &id,
        &cursor,
        &epoch,
        &status as &[&str],
        &failures,
        &next as &[Option<DateTime<Utc>>],
        &n,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub fn status_name(s: &str) -> &'static str {
    match s {
        RETRYING => RETRYING,
        DISABLED => DISABLED,
        DELETED => DELETED,
        _ => ACTIVE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(epoch: i32, position: i64, attempt: i32, outcome: Outcome) -> Entry {
        Entry::Attempt {
            epoch,
            position,
            event_id: Uuid::nil(),
            attempt,
            status_code: Some(500),
            error: None,
            latency_ms: 1,
            outcome,
            next_attempt_at: (outcome == Outcome::Failed && attempt < 3).then(Utc::now),
        }
    }

    fn fold(entries: &[Entry]) -> CursorState {
        entries
            .iter()
            .fold(CursorState::new(Uuid::nil()), |s, e| apply(&s, e))
    }

    #[test]
    fn deliveries_advance_failures_retry_then_disable() {
        let s = fold(&[
            Entry::Created { start: 10 },
            attempt(0, 12, 1, Outcome::Delivered),
            attempt(0, 15, 1, Outcome::Failed),
        ]);
        assert_eq!((s.cursor, s.status, s.failures), (12, RETRYING, 1));
        assert!(s.next_attempt_at.is_some());
        let s = apply(&s, &attempt(0, 15, 3, Outcome::Failed));
        assert_eq!(
            (s.cursor, s.status, s.next_attempt_at),
            (12, DISABLED, None)
        );
        let s = apply(&s, &Entry::Enable);
        assert_eq!(
            (s.cursor, s.status, s.epoch, s.failures),
            (12, ACTIVE, 1, 0)
        );
        assert_eq!(s.journal_n, 5);
    }

    #[test]
    fn an_attempt_that_raced_a_replay_changes_nothing() {
        let s = fold(&[
            Entry::Created { start: 0 },
            attempt(0, 50, 1, Outcome::Delivered),
            Entry::Replay { position: 10 },
            attempt(0, 51, 1, Outcome::Delivered),
            attempt(0, 52, 1, Outcome::Gone),
        ]);
        assert_eq!((s.cursor, s.status, s.epoch), (10, ACTIVE, 1));
        let s = apply(&s, &attempt(1, 11, 1, Outcome::Delivered));
        assert_eq!(s.cursor, 11);
    }

    #[test]
    fn a_redelivery_is_journaled_and_changes_nothing() {
        let s = fold(&[
            Entry::Created { start: 4 },
            attempt(0, 3, 1, Outcome::Failed),
        ]);
        let again = Entry::Redelivery(Box::new(attempt(0, 9, 1, Outcome::Delivered)));
        let after = apply(&s, &again);
        assert_eq!(after, CursorState { journal_n: 3, ..s });
        assert_eq!(again.kind(), "redelivery");
    }

    #[test]
    fn gone_disables_and_deleted_is_final() {
        let s = fold(&[Entry::Created { start: 0 }, attempt(0, 3, 1, Outcome::Gone)]);
        assert_eq!(s.status, DISABLED);
        let s = fold(&[Entry::Created { start: 0 }, Entry::Delete, Entry::Enable]);
        assert_eq!((s.status, s.journal_n), (DELETED, 3));
    }
}
