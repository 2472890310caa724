//! Operational events (issue 15): `subscriber.disabled`, `subscriber.enabled` and
//! `subscriber.recovered`, appended to the log in the transaction that journals the change
//! of a subscriber's state, so they are as durable as the change itself and never
//! repeated. [`of`] decides, purely, from a journal entry's fold; [`append`] records them
//! through the unit of work, under the log lock, only when there are any (almost every
//! journal batch has none and takes no log lock).
//!
//! They go to the subscriber's own stream (`subscriber-<id>`) and, like any event, to
//! every reader whose type filter names them; a reader without a filter does not get
//! them ([`EventType::unfiltered`](crate::domain::events::EventType::unfiltered)).

use std::collections::HashMap;

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::events::{Event, SubscriberDisabled, SubscriberEnabled, SubscriberRecovered};
use crate::domain::stream::{NewEvent, StreamName};
use crate::projections::cursors::{CursorState, Entry, Outcome, ACTIVE, DISABLED};
use crate::unit_of_work::{Decision, Observation, RecordError, UnitOfWork};

/// The operational event a journal entry's fold is, if any.
pub fn of(before: &CursorState, after: &CursorState, entry: &Entry) -> Option<Event> {
    let id = after.subscriber_id;
    match entry {
        Entry::Attempt {
            position,
            status_code,
            error,
            outcome,
            attempt,
            ..
        } if before.status != DISABLED && after.status == DISABLED => {
            let why = match outcome {
                Outcome::Gone => "the receiver unsubscribed",
                _ => "the retry schedule is spent",
            };
            let last = error.as_deref().unwrap_or("failed");
            Some(Event::SubscriberDisabled(SubscriberDisabled {
                subscriber_id: id,
                reason: format!("{last} ({why})"),
                cursor: after.cursor,
                position: *position,
                attempts: *attempt,
                status_code: *status_code,
            }))
        }
        Entry::Attempt {
            position,
            outcome: Outcome::Delivered,
            ..
        } if before.failures > 0 && after.failures == 0 && after.status == ACTIVE => {
            Some(Event::SubscriberRecovered(SubscriberRecovered {
                subscriber_id: id,
                position: *position,
                failed_attempts: before.failures,
            }))
        }
        Entry::Enable if before.status == DISABLED && after.status == ACTIVE => {
            Some(Event::SubscriberEnabled(SubscriberEnabled {
                subscriber_id: id,
                cursor: after.cursor,
            }))
        }
        _ => None,
    }
}

/// The operational events of journaled entries and their folds
/// ([`cursors::record`](crate::projections::cursors::record)'s answer), in order.
pub fn of_all(
    entries: &[(Uuid, Entry)],
    folds: &[(CursorState, CursorState)],
) -> Vec<(Uuid, Event)> {
    entries
        .iter()
        .zip(folds)
        .filter_map(|((id, entry), (before, after))| Some((*id, of(before, after, entry)?)))
        .collect()
}

/// Appends `events` inside the caller's transaction (which journaled them), through the
/// unit of work; nothing when there are none.
pub async fn append(
    uow: &UnitOfWork,
    conn: &mut PgConnection,
    events: Vec<(Uuid, Event)>,
) -> Result<(), RecordError> {
    if events.is_empty() {
        return Ok(());
    }
    for (_, e) in &events {
        tracing::info!(event = %e.kind(), data = %e.to_data(), "operational event");
    }
    uow.record_in(conn, Operational(events)).await?;
    Ok(())
}

/// Events about subscribers, each appended to its subscriber's stream.
struct Operational(Vec<(Uuid, Event)>);

impl Observation for Operational {
    /// Each stream's last version.
    type State = HashMap<String, i32>;
    type Outcome = ();

    async fn load(&mut self, conn: &mut PgConnection) -> Result<Self::State, RecordError> {
        let streams: Vec<String> = self
            .0
            .iter()
            .map(|(id, _)| StreamName::subscriber(*id).as_str().to_string())
            .collect();
        let rows = sqlx::query!(
            r#"SELECT stream AS "stream!", max(stream_version) AS "version!"
               FROM events WHERE stream = ANY($1) GROUP BY stream"#,
            &streams
        )
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(|r| (r.stream, r.version)).collect())
    }

    fn decide(self, mut versions: Self::State) -> Result<Decision<()>, RecordError> {
        let events = self
            .0
            .into_iter()
            .map(|(id, event)| {
                let stream = StreamName::subscriber(id);
                let expected_version = versions.get(stream.as_str()).copied();
                versions.insert(
                    stream.as_str().to_string(),
                    expected_version.map_or(0, |v| v + 1),
                );
                NewEvent {
                    stream,
                    expected_version,
                    event,
                    metadata: json!({"source": "delivery"}),
                }
            })
            .collect();
        Ok(Decision::new(events, ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::cursors::apply;
    use chrono::Utc;

    fn attempt(outcome: Outcome, attempt: i32, next: bool) -> Entry {
        Entry::Attempt {
            epoch: 0,
            position: 7,
            event_id: Uuid::nil(),
            attempt,
            status_code: Some(500),
            error: Some("HTTP 500".into()),
            latency_ms: 1,
            outcome,
            next_attempt_at: next.then(Utc::now),
        }
    }

    /// Folds `entries` from a new subscriber's state; the operational events they make.
    fn run(entries: &[Entry]) -> Vec<Event> {
        let mut state = CursorState::new(Uuid::nil());
        let mut out = Vec::new();
        for e in entries {
            let after = apply(&state, e);
            out.extend(of(&state, &after, e));
            state = after;
        }
        out
    }

    #[test]
    fn a_spent_schedule_disables_once_and_an_enable_says_so() {
        let events = run(&[
            attempt(Outcome::Failed, 1, true),
            attempt(Outcome::Failed, 2, false),
            // Journaled after the disable (raced it): no second event.
            attempt(Outcome::Failed, 3, false),
            Entry::Enable,
            Entry::Enable,
        ]);
        assert_eq!(events.len(), 2, "{events:?}");
        let Event::SubscriberDisabled(d) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((d.position, d.attempts, d.status_code), (7, 2, Some(500)));
        assert_eq!(d.reason, "HTTP 500 (the retry schedule is spent)");
        assert!(matches!(events[1], Event::SubscriberEnabled(_)));
    }

    #[test]
    fn the_first_success_after_failures_is_a_recovery() {
        let events = run(&[
            attempt(Outcome::Delivered, 1, false),
            attempt(Outcome::Failed, 1, true),
            attempt(Outcome::Failed, 2, true),
            attempt(Outcome::Delivered, 3, false),
            attempt(Outcome::Delivered, 1, false),
        ]);
        assert_eq!(events.len(), 1, "{events:?}");
        let Event::SubscriberRecovered(r) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((r.position, r.failed_attempts), (7, 2));
    }

    #[test]
    fn gone_disables_and_names_why() {
        let mut e = attempt(Outcome::Gone, 1, false);
        if let Entry::Attempt { error, .. } = &mut e {
            *error = Some("410 Gone".into());
        }
        let events = run(&[e]);
        let [Event::SubscriberDisabled(d)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(d.reason, "410 Gone (the receiver unsubscribed)");
    }
}
