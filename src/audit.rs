//! The audit trail: exporting the log (JSON Lines or CSV, with positions, ids, streams,
//! types, data, timestamps and the hash chain) in pages of constant size, and verifying a
//! log — in the database or in an exported file — without trusting whoever holds it: the
//! hash chain recomputed, positions gapless, every id the one its stream and version
//! determine, and unique. Every export ends with a [`Trailer`] (its event count, last
//! position and last hash), without which a file is reported truncated.

use std::collections::HashSet;
use std::io::BufRead;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::stream::{event_id, StreamName};
use crate::store::hash::{self, Hashed, GENESIS};

mod export;
pub use export::{export, Export, Trailer, CSV_TRAILER};

/// Events read per query while exporting or verifying.
pub const PAGE: i64 = 2000;

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    /// From a file name: `.csv` is CSV, anything else JSON Lines.
    pub fn of_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

/// One exported event: every field the hash covers, and the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Record {
    pub position: i64,
    pub id: Uuid,
    pub stream: String,
    pub stream_version: i32,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub schema_version: i16,
    #[serde(with = "micros")]
    pub recorded_at: DateTime<Utc>,
    pub data: Value,
    pub metadata: Value,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

pub const CSV_HEADER: &[&str] = &[
    "position",
    "id",
    "stream",
    "stream_version",
    "type",
    "schema_version",
    "recorded_at",
    "data",
    "metadata",
    "prev_hash",
    "hash",
];

impl Record {
    /// Appends this record in `format` (one line; CSV quoted as needed).
    pub fn write(&self, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Jsonl => {
                serde_json::to_writer(&mut *out, self).expect("a record serialises");
                out.push(b'\n');
            }
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(out);
                w.write_record([
                    self.position.to_string(),
                    self.id.to_string(),
                    self.stream.clone(),
                    self.stream_version.to_string(),
                    self.kind.clone(),
                    self.schema_version.to_string(),
                    self.recorded_at
                        .to_rfc3339_opts(SecondsFormat::Micros, true),
                    self.data.to_string(),
                    self.metadata.to_string(),
                    hex::encode(&self.prev_hash),
                    hex::encode(&self.hash),
                ])
                .expect("writing to memory");
                w.flush().expect("writing to memory");
            }
        }
    }

    fn from_csv(row: &csv::StringRecord) -> Result<Record, String> {
        let field = |i: usize| {
            row.get(i)
                .ok_or_else(|| format!("missing column {}", CSV_HEADER[i]))
        };
        let parse_err = |what: &str, e: &dyn std::fmt::Display| format!("bad {what}: {e}");
        Ok(Record {
            position: field(0)?.parse().map_err(|e| parse_err("position", &e))?,
            id: field(1)?.parse().map_err(|e| parse_err("id", &e))?,
            stream: field(2)?.to_string(),
            stream_version: field(3)?
                .parse()
                .map_err(|e| parse_err("stream_version", &e))?,
            kind: field(4)?.to_string(),
            schema_version: field(5)?
                .parse()
                .map_err(|e| parse_err("schema_version", &e))?,
            recorded_at: DateTime::parse_from_rfc3339(field(6)?)
                .map_err(|e| parse_err("recorded_at", &e))?
                .with_timezone(&Utc),
            data: serde_json::from_str(field(7)?).map_err(|e| parse_err("data", &e))?,
            metadata: serde_json::from_str(field(8)?).map_err(|e| parse_err("metadata", &e))?,
            prev_hash: hex::decode(field(9)?).map_err(|e| parse_err("prev_hash", &e))?,
            hash: hex::decode(field(10)?).map_err(|e| parse_err("hash", &e))?,
        })
    }
}

/// The header line of a CSV export.
pub fn csv_header() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = csv::Writer::from_writer(&mut out);
    w.write_record(CSV_HEADER).expect("writing to memory");
    w.flush().expect("writing to memory");
    drop(w);
    out
}

/// Up to `limit` records with positions in (after, to].
pub async fn page<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    after: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<Record>, sqlx::Error> {
    sqlx::query_as!(
        Record,
        r#"SELECT position, event_id AS id, stream, stream_version, type AS kind, schema_version,
                  recorded_at, data, metadata, prev_hash, hash
           FROM events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"#,
        after,
        to,
        limit
    )
    .fetch_all(conn)
    .await
}

/// What is wrong at a position.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {reason}")]
pub struct Bad {
    pub position: i64,
    pub reason: String,
}

/// Checks records in order. The first one may start anywhere; its `prev_hash` is taken
/// as given unless `expect_prev` says what it must be.
pub struct Verifier {
    prev: Option<(i64, Vec<u8>)>,
    ids: HashSet<Uuid>,
    pub checked: u64,
    pub first: Option<i64>,
}

impl Verifier {
    /// `start`: the position before the first record and its hash, when known (the
    /// genesis for a log checked from position 1).
    pub fn new(start: Option<(i64, Vec<u8>)>) -> Verifier {
        Verifier {
            prev: start,
            ids: HashSet::new(),
            checked: 0,
            first: None,
        }
    }

    pub fn check(&mut self, r: &Record) -> Result<(), Bad> {
        let bad = |reason: String| Bad {
            position: r.position,
            reason,
        };
        if let Some((position, hash)) = &self.prev {
            if r.position != position + 1 {
                return Err(Bad {
                    position: position + 1,
                    reason: format!("missing: the next event present is at {}", r.position),
                });
            }
            if &r.prev_hash != hash {
                return Err(bad("prev_hash is not the previous event's hash".into()));
            }
        } else if r.position == 1 && r.prev_hash != GENESIS {
            return Err(bad(
                "the first event does not chain from the genesis hash".into()
            ));
        }
        if r.id != event_id(&StreamName::from_stored(r.stream.clone()), r.stream_version) {
            return Err(bad(format!(
                "id {} is not the id of {} version {}",
                r.id, r.stream, r.stream_version
            )));
        }
        if !self.ids.insert(r.id) {
            return Err(bad(format!("id {} appears twice", r.id)));
        }
        let computed = hash::event_hash(
            &r.prev_hash,
            &Hashed {
                position: r.position,
                id: r.id,
                stream: &r.stream,
                stream_version: r.stream_version,
                kind: &r.kind,
                schema_version: r.schema_version,
                data: &r.data,
                metadata: &r.metadata,
                recorded_at: r.recorded_at,
            },
        );
        if computed != r.hash {
            return Err(bad(
                "its content does not match its hash (changed after it was appended)".into(),
            ));
        }
        self.first.get_or_insert(r.position);
        self.prev = Some((r.position, r.hash.clone()));
        self.checked += 1;
        Ok(())
    }

    pub fn last(&self) -> Option<(i64, &[u8])> {
        self.prev.as_ref().map(|(p, h)| (*p, h.as_slice()))
    }
}

/// How a verification ended.
#[derive(Debug)]
pub struct Verified {
    pub checked: u64,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub bad: Option<Bad>,
}

/// Verifies the database's log from `from` (1: the whole log, from the genesis hash),
/// then that `log_head` agrees with the last event.
pub async fn verify_db(conn: &mut PgConnection, from: i64) -> anyhow::Result<Verified> {
    let from = from.max(1);
    let start = if from == 1 {
        Some((0, GENESIS.to_vec()))
    } else {
        let prev = page(&mut *conn, from - 2, from - 1, 1).await?;
        prev.into_iter().next().map(|r| (r.position, r.hash))
    };
    let mut v = Verifier::new(start);
    let mut after = from - 1;
    loop {
        let records = page(&mut *conn, after, i64::MAX, PAGE).await?;
        let Some(last) = records.last() else { break };
        after = last.position;
        for r in &records {
            if let Err(bad) = v.check(r) {
                return Ok(Verified {
                    checked: v.checked,
                    first: v.first,
                    last: v.last().map(|l| l.0),
                    bad: Some(bad),
                });
            }
        }
    }
    let head = sqlx::query!("SELECT position, hash FROM log_head")
        .fetch_one(&mut *conn)
        .await?;
    let last = v.last().map(|(p, h)| (p, h.to_vec()));
    let bad = match &last {
        Some((p, h)) if head.position != *p || &head.hash != h => Some(Bad {
            position: head.position,
            reason: format!(
                "log_head says position {} but the last event is at {p}, or its hash differs",
                head.position
            ),
        }),
        None if head.position >= from => Some(Bad {
            position: from,
            reason: format!(
                "log_head says position {} but there is no event from {from} on",
                head.position
            ),
        }),
        _ => None,
    };
    Ok(Verified {
        checked: v.checked,
        first: v.first,
        last: last.map(|l| l.0),
        bad,
    })
}

/// Verifies an exported file (JSON Lines or CSV, by extension), streaming it: its records,
/// then its trailer. A file without the trailer, with records after it, or whose trailer
/// disagrees with what precedes it, is reported truncated (an interrupted export leaves
/// whole pages, whose chain alone is intact).
pub fn verify_file(path: &std::path::Path) -> anyhow::Result<Verified> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut v = Verifier::new(None);
    let mut trailer: Option<Trailer> = None;
    let next_position = |v: &Verifier| v.last().map_or(0, |l| l.0 + 1);
    // Each line or row: a record, or the trailer; an error names the position it stops at.
    let mut take = |v: &mut Verifier, item: Result<Item, String>| -> Result<(), Bad> {
        let bad = |reason: String| Bad {
            position: next_position(v),
            reason,
        };
        if trailer.is_some() {
            return Err(bad("the file goes on after its trailer".into()));
        }
        match item.map_err(bad)? {
            Item::Record(r) => v.check(&r),
            Item::Trailer(t) => {
                trailer = Some(t);
                Ok(())
            }
        }
    };
    let outcome: Result<(), Bad> = (|| {
        match Format::of_path(path) {
            Format::Jsonl => {
                for line in file.lines() {
                    let line = line.map_err(|e| Bad {
                        position: next_position(&v),
                        reason: format!("unreadable: {e}"),
                    })?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let item = match Trailer::from_json(&line) {
                        Some(t) => t.map(Item::Trailer),
                        None => serde_json::from_str::<Record>(&line)
                            .map(Item::Record)
                            .map_err(|e| format!("unreadable line: {e}")),
                    };
                    take(&mut v, item)?;
                }
            }
            Format::Csv => {
                let mut reader = csv::Reader::from_reader(file);
                let header_ok = reader
                    .headers()
                    .is_ok_and(|h| h.iter().collect::<Vec<_>>() == CSV_HEADER);
                if !header_ok {
                    return Err(Bad {
                        position: 0,
                        reason: "not a chainledger CSV export: the header differs".into(),
                    });
                }
                for row in reader.records() {
                    let item = row
                        .map_err(|e| format!("unreadable row: {e}"))
                        .and_then(|r| {
                            if r.get(0) == Some(CSV_TRAILER) {
                                Trailer::from_csv(&r).map(Item::Trailer)
                            } else {
                                Record::from_csv(&r)
                                    .map(Item::Record)
                                    .map_err(|e| format!("unreadable row: {e}"))
                            }
                        });
                    take(&mut v, item)?;
                }
            }
        }
        Ok(())
    })();
    let bad = outcome.err().or_else(|| truncation(&v, trailer.as_ref()));
    Ok(Verified {
        checked: v.checked,
        first: v.first,
        last: v.last().map(|l| l.0),
        bad,
    })
}

/// One line or row of an export.
enum Item {
    Record(Record),
    Trailer(Trailer),
}

/// Whether the records read are all the trailer says were written.
fn truncation(v: &Verifier, trailer: Option<&Trailer>) -> Option<Bad> {
    let position = v.last().map_or(0, |l| l.0 + 1);
    let Some(t) = trailer else {
        return Some(Bad {
            position,
            reason: format!(
                "truncated: the export has no trailer line after its {} events (it was cut \
                 short, or it is not a complete chainledger export)",
                v.checked
            ),
        });
    };
    let held = Trailer {
        events: v.checked,
        last_position: v.last().map(|l| l.0),
        last_hash: v.last().map(|l| hex::encode(l.1)),
    };
    (&held != t).then(|| Bad {
        position,
        reason: format!(
            "truncated: the trailer says {} events through position {} but the file holds {} \
             through {} (or the last hash differs)",
            t.events,
            t.last_position.map_or("none".into(), |p| p.to_string()),
            held.events,
            held.last_position.map_or("none".into(), |p| p.to_string()),
        ),
    })
}

mod micros {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
