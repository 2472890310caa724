//! The journal's rows both ways: an [`Entry`] as `delivery_attempts` columns (one UNNEST
//! insert per batch), and a stored row back as its entry (a rebuild folds them again).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{CursorState, Entry, Outcome};

/// A journal row as stored, to fold again (a rebuild).
#[derive(sqlx::FromRow)]
pub struct JournalRow {
    pub subscriber_id: Uuid,
    pub n: i32,
    pub kind: String,
    pub epoch: i32,
    pub position: Option<i64>,
    pub event_id: Option<Uuid>,
    pub attempt: Option<i32>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: Option<i32>,
    pub outcome: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl JournalRow {
    /// The entry this row journaled; an error names the row.
    pub fn entry(&self) -> Result<Entry, String> {
        let bad = || {
            format!(
                "journal row {}#{} ({}) is malformed",
                self.subscriber_id, self.n, self.kind
            )
        };
        Ok(match self.kind.as_str() {
            "created" => Entry::Created {
                start: self.position.ok_or_else(bad)?,
            },
            "attempt" | "redelivery" => Entry::Attempt {
                epoch: self.epoch,
                position: self.position.ok_or_else(bad)?,
                event_id: self.event_id.ok_or_else(bad)?,
                attempt: self.attempt.ok_or_else(bad)?,
                status_code: self.status_code.and_then(|c| u16::try_from(c).ok()),
                error: self.error.clone(),
                latency_ms: self.latency_ms.unwrap_or(0),
                outcome: match self.outcome.as_deref() {
                    Some("delivered") => Outcome::Delivered,
                    Some("failed") => Outcome::Failed,
                    Some("gone") => Outcome::Gone,
                    _ => return Err(bad()),
                },
                next_attempt_at: self.next_attempt_at,
            }
            .redelivery_if(self.kind == "redelivery"),
            "caught_up" => Entry::CaughtUp {
                epoch: self.epoch,
                position: self.position.ok_or_else(bad)?,
            },
            "replay" => Entry::Replay {
                position: self.position.ok_or_else(bad)?,
            },
            "enable" => Entry::Enable,
            "delete" => Entry::Delete,
            _ => return Err(bad()),
        })
    }
}

/// Journal rows as UNNEST columns.
#[derive(Default)]
pub(super) struct Journal {
    pub(super) subscriber_id: Vec<Uuid>,
    pub(super) n: Vec<i32>,
    pub(super) kind: Vec<&'static str>,
    pub(super) epoch: Vec<i32>,
    pub(super) position: Vec<Option<i64>>,
    pub(super) event_id: Vec<Option<Uuid>>,
    pub(super) attempt: Vec<Option<i32>>,
    pub(super) status_code: Vec<Option<i32>>,
    pub(super) error: Vec<Option<String>>,
    pub(super) latency_ms: Vec<Option<i32>>,
    pub(super) outcome: Vec<Option<&'static str>>,
    pub(super) next_attempt_at: Vec<Option<DateTime<Utc>>>,
}

impl Journal {
    pub(super) fn push(&mut self, before: &CursorState, after: &CursorState, entry: &Entry) {
        self.subscriber_id.push(after.subscriber_id);
        self.n.push(after.journal_n);
        self.kind.push(entry.kind());
        let (mut epoch, mut position, mut event, mut attempt) = (before.epoch, None, None, None);
        let (mut code, mut error, mut latency, mut outcome, mut next) =
            (None, None, None, None, None);
        let fields = match entry {
            Entry::Redelivery(attempt) => attempt,
            entry => entry,
        };
        match fields {
            Entry::Created { start } => position = Some(*start),
            Entry::Attempt {
                epoch: e,
                position: p,
                event_id,
                attempt: a,
                status_code,
                error: err,
                latency_ms,
                outcome: o,
                next_attempt_at,
            } => {
                epoch = *e;
                position = Some(*p);
                event = Some(*event_id);
                attempt = Some(*a);
                code = status_code.map(i32::from);
                error = err.clone();
                latency = Some(*latency_ms);
                outcome = Some(o.as_str());
                next = *next_attempt_at;
            }
            Entry::CaughtUp {
                epoch: e,
                position: p,
            } => {
                epoch = *e;
                position = Some(*p);
            }
            Entry::Replay { position: p } => position = Some(*p),
            Entry::Enable | Entry::Delete | Entry::Redelivery(_) => {}
        }
        self.epoch.push(epoch);
        self.position.push(position);
        self.event_id.push(event);
        self.attempt.push(attempt);
        self.status_code.push(code);
        self.error.push(error);
        self.latency_ms.push(latency);
        self.outcome.push(outcome);
        self.next_attempt_at.push(next);
    }
}
