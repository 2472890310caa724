//! The event log. [`append`] is how events enter it — called only by the unit of work
//! ([`crate::unit_of_work`]), which holds the append lock from before it reads until it
//! commits: a batch (all events of one observation) in three statements, whatever its
//! size. Positions come from `log_head`, whose row lock the appending transaction holds
//! until it commits, so positions are gapless and in commit order and a reader of
//! `position > cursor` never skips one.

pub mod hash;
pub mod notify;
pub mod replica;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::events::{Event, EventType, SCHEMA_VERSION};
use crate::domain::stream::{event_id, EventAt, NewEvent, Position, StreamName};

/// An event as the log holds it. Serialises as the public envelope; `data` is the JSON
/// the log holds, so the envelope is what it always was.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredEvent {
    pub position: Position,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub stream: StreamName,
    pub stream_version: i32,
    pub recorded_at: DateTime<Utc>,
    pub data: Value,
    #[serde(skip)]
    pub schema_version: i16,
    #[serde(skip)]
    pub metadata: Value,
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    #[serde(skip)]
    pub hash: Vec<u8>,
}

/// A stored event whose data does not fit its type: a log written by something else.
#[derive(Debug, thiserror::Error)]
#[error("position {position} ({kind}): the data does not fit the type: {source}")]
pub struct MalformedEvent {
    pub position: Position,
    pub kind: EventType,
    #[source]
    pub source: serde_json::Error,
}

impl StoredEvent {
    /// `event` (this event, typed) with its place in the log.
    pub fn at<'a>(&self, event: &'a Event) -> EventAt<'a> {
        EventAt {
            position: self.position,
            stream_version: self.stream_version,
            event,
        }
    }

    /// The typed event.
    pub fn event(&self) -> Result<Event, MalformedEvent> {
        Event::from_data(self.kind, &self.data).map_err(|source| MalformedEvent {
            position: self.position,
            kind: self.kind,
            source,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to one of the streams first (or this batch was already
    /// appended): the caller's view is stale.
    #[error("append conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The notification channel every committed append signals (payload: last position).
pub const CHANNEL: &str = "chainledger_events";

/// Appends `batch` inside the caller's transaction and returns the stored events. Nothing
/// is visible to readers until the caller commits; the caller folds the events into the
/// projections in the same transaction.
pub async fn append(
    conn: &mut PgConnection,
    batch: &[NewEvent],
) -> Result<Vec<StoredEvent>, AppendError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let n = batch.len() as i64;
    // Takes the row lock that serialises appenders until our commit (the unit of work
    // holds it already).
    let head = sqlx::query!(
        "UPDATE log_head SET position = position + $1 RETURNING position, hash",
        n
    )
    .fetch_one(&mut *conn)
    .await?;
    let first = head.position - n + 1;
    let micros = Utc::now().timestamp_micros();
    let recorded_at = DateTime::from_timestamp_micros(micros).expect("now is representable");

    let mut prev_hash = head.hash;
    let mut stored = Vec::with_capacity(batch.len());
    for (i, e) in batch.iter().enumerate() {
        let version = e.stream_version();
        let id = event_id(&e.stream, version);
        let position = Position(first + i as i64);
        let kind = e.event.kind();
        let data = e.event.to_data();
        let hash = hash::event_hash(
            &prev_hash,
            &hash::Hashed {
                position: position.0,
                id,
                stream: e.stream.as_str(),
                stream_version: version,
                kind: kind.as_str(),
                schema_version: SCHEMA_VERSION,
                data: &data,
                metadata: &e.metadata,
                recorded_at,
            },
        );
        stored.push(StoredEvent {
            position,
            id,
            kind,
            stream: e.stream.clone(),
            stream_version: version,
            recorded_at,
            data,
            schema_version: SCHEMA_VERSION,
            metadata: e.metadata.clone(),
            prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        });
    }
    check_expected_versions(conn, batch).await?;

    let cols = Columns::of(&stored);
    let last = stored.last().expect("batch is not empty");
    sqlx::query!(
        r#"WITH inserted AS (
               INSERT INTO events (position, event_id, stream, stream_version, type, schema_version,
                                   data, metadata, recorded_at, prev_hash, hash)
               SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::int[], $5::text[],
                                    $6::smallint[], $7::jsonb[], $8::jsonb[], $9::timestamptz[],
                                    $10::bytea[], $11::bytea[])
           ), head AS (
               UPDATE log_head SET hash = $12
           )
           SELECT pg_notify($13, $14)"#,
        &cols.position,
        &cols.id,
        &cols.stream as &[&str],
        &cols.version,
        &cols.kind as &[&str],
        &cols.schema_version,
        &cols.data as &[&Value],
        &cols.metadata as &[&Value],
        &cols.recorded_at,
        &cols.prev_hash as &[&[u8]],
        &cols.hash as &[&[u8]],
        &last.hash,
        CHANNEL,
        last.position.to_string(),
    )
    .execute(&mut *conn)
    .await
    .map_err(conflict_or_database)?;
    crate::metrics::record_append(stored.len(), last.position.0, started.elapsed());
    Ok(stored)
}

/// The unique (stream, stream_version) index refuses a second writer of the same version;
/// this also refuses a version that skips ahead of the stream (a gap inside a stream).
async fn check_expected_versions(
    conn: &mut PgConnection,
    batch: &[NewEvent],
) -> Result<(), AppendError> {
    let mut streams: Vec<&str> = Vec::new();
    let mut expected: Vec<i32> = Vec::new();
    for e in batch {
        if !streams.contains(&e.stream.as_str()) {
            streams.push(e.stream.as_str());
            expected.push(e.expected_version.unwrap_or(-1));
        }
    }
    let stale = sqlx::query_scalar!(
        r#"SELECT s.stream AS "stream!"
           FROM UNNEST($1::text[], $2::int[]) AS s(stream, expected)
           LEFT JOIN LATERAL (SELECT max(stream_version) AS v FROM events WHERE events.stream = s.stream) cur ON true
           WHERE coalesce(cur.v, -1) <> s.expected
           LIMIT 1"#,
        &streams as &[&str],
        &expected
    )
    .fetch_optional(&mut *conn)
    .await?;
    match stale {
        Some(stream) => Err(AppendError::Conflict(format!(
            "stream {stream} is not at its expected version"
        ))),
        None => Ok(()),
    }
}

fn conflict_or_database(e: sqlx::Error) -> AppendError {
    match e.as_database_error().and_then(|d| d.constraint()) {
        Some("events_stream_version_key") | Some("events_event_id_key") => {
            AppendError::Conflict(e.to_string())
        }
        _ => AppendError::Database(e),
    }
}

/// The batch as one array per column, for UNNEST.
struct Columns<'a> {
    position: Vec<i64>,
    id: Vec<Uuid>,
    stream: Vec<&'a str>,
    version: Vec<i32>,
    kind: Vec<&'static str>,
    schema_version: Vec<i16>,
    data: Vec<&'a Value>,
    metadata: Vec<&'a Value>,
    recorded_at: Vec<DateTime<Utc>>,
    prev_hash: Vec<&'a [u8]>,
    hash: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(events: &'a [StoredEvent]) -> Self {
        Columns {
            position: events.iter().map(|e| e.position.0).collect(),
            id: events.iter().map(|e| e.id).collect(),
            stream: events.iter().map(|e| e.stream.as_str()).collect(),
            version: events.iter().map(|e| e.stream_version).collect(),
            kind: events.iter().map(|e| e.kind.as_str()).collect(),
            schema_version: events.iter().map(|e| e.schema_version).collect(),
            data: events.iter().map(|e| &e.data).collect(),
            metadata: events.iter().map(|e| &e.metadata).collect(),
            recorded_at: events.iter().map(|e| e.recorded_at).collect(),
            prev_hash: events.iter().map(|e| e.prev_hash.as_slice()).collect(),
            hash: events.iter().map(|e| e.hash.as_slice()).collect(),
        }
    }
}

/// Up to `limit` events after `after`, in position order; `types` (already expanded to
/// exact names) filters by type.
pub async fn read_after<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    after: Position,
    limit: i64,
    types: Option<&[String]>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_matching(conn, after, limit, types, None, None).await
}

/// Every event in (after, to], streamed by one query (a rebuild's read).
pub fn read_range<'c>(
    conn: &'c mut PgConnection,
    after: Position,
    to: Position,
) -> impl futures::Stream<Item = Result<StoredEvent, sqlx::Error>> + 'c {
    sqlx::query_as!(
        StoredEvent,
        r#"SELECT position AS "position: Position", event_id AS id, type AS "kind: EventType",
                  stream AS "stream: StreamName", stream_version, recorded_at,
                  data, schema_version, metadata, prev_hash, hash
           FROM events WHERE position > $1 AND position <= $2 ORDER BY position"#,
        after.0,
        to.0
    )
    .fetch(conn)
}

/// [`read_after`], also filtered to the events whose data names `account` and `address`.
pub async fn read_matching<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    after: Position,
    limit: i64,
    types: Option<&[String]>,
    account: Option<Uuid>,
    address: Option<&str>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let accounts = account.map(|a| [a]);
    read_for_accounts(
        conn,
        after,
        limit,
        types,
        accounts.as_ref().map(|a| &a[..]),
        false,
        address,
    )
    .await
}

/// Up to `limit` events after `after`, in position order: of `types` (already expanded to
/// exact names; `None`: all), naming one of `accounts` in their data (`None`: any), and
/// with `unowned` also those naming no account (the chain's: what a Bitcart wallet sees).
pub async fn read_for_accounts<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    after: Position,
    limit: i64,
    types: Option<&[String]>,
    accounts: Option<&[Uuid]>,
    unowned: bool,
    address: Option<&str>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as!(
        StoredEvent,
        r#"SELECT position AS "position: Position", event_id AS id, type AS "kind: EventType",
                  stream AS "stream: StreamName", stream_version, recorded_at,
                  data, schema_version, metadata, prev_hash, hash
           FROM events
           WHERE position > $1 AND ($2::text[] IS NULL OR type = ANY($2))
             AND ($4::uuid[] IS NULL OR data->>'account_id' = ANY($4::uuid[]::text[])
                  OR ($5 AND NOT data ? 'account_id'))
             AND ($6::text IS NULL OR data->>'address' = $6)
           ORDER BY position
           LIMIT $3"#,
        after.0,
        types as Option<&[String]>,
        limit,
        accounts as Option<&[Uuid]>,
        unowned,
        address
    )
    .fetch_all(conn)
    .await
}

/// The last committed position (0 for an empty log).
pub async fn head<'c>(conn: impl sqlx::PgExecutor<'c>) -> Result<Position, sqlx::Error> {
    let p = sqlx::query_scalar!("SELECT position FROM log_head")
        .fetch_one(conn)
        .await?;
    Ok(Position(p))
}

/// Takes the append lock now rather than at [`append`]: a transaction that must decide
/// on everything committed before it locks first, then reads, then appends. The unit of
/// work's first step.
pub(crate) async fn lock(conn: &mut PgConnection) -> Result<Position, sqlx::Error> {
    let p = sqlx::query_scalar!("SELECT position FROM log_head FOR UPDATE")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Position(p))
}

/// Holds the append lock until the caller's transaction ends, appending nothing: the
/// rebuild's final step, which folds what arrived during its replay and swaps tables
/// while writers wait. Returns the head.
pub(crate) async fn hold_appends(conn: &mut PgConnection) -> Result<Position, sqlx::Error> {
    lock(conn).await
}
