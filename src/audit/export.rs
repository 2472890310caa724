//! Writing an export: the CSV header, the records a page at a time, and the trailer that
//! lets a reader tell a complete export from one cut short.

use std::io::Write;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::{csv_header, page, Format, Record, CSV_HEADER, PAGE};

/// The last line of every export: how many events it holds and the position and hash of
/// the last one, so a file cut short — at a page boundary, where every line is whole and
/// the chain intact — is told from a complete one. JSON Lines:
/// `{"trailer":{"events":N,"last_position":P,"last_hash":"hex"}}`; CSV: a row whose
/// `position` column is `#trailer`, then N, P and the hash, the other columns empty. An
/// empty export's trailer has 0 events and null (empty) position and hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    pub events: u64,
    pub last_position: Option<i64>,
    /// Hex, as the records write hashes.
    pub last_hash: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrailerLine {
    trailer: Trailer,
}

/// The `position` column of a CSV export's trailer row.
pub const CSV_TRAILER: &str = "#trailer";

impl Trailer {
    fn count(&mut self, r: &Record) {
        self.events += 1;
        self.last_position = Some(r.position);
        self.last_hash = Some(hex::encode(&r.hash));
    }

    pub fn write(&self, format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Jsonl => {
                let line = TrailerLine {
                    trailer: self.clone(),
                };
                serde_json::to_writer(&mut *out, &line).expect("a trailer serialises");
                out.push(b'\n');
            }
            Format::Csv => {
                let mut row = vec![
                    CSV_TRAILER.to_string(),
                    self.events.to_string(),
                    self.last_position
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    self.last_hash.clone().unwrap_or_default(),
                ];
                row.resize(CSV_HEADER.len(), String::new());
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(out);
                w.write_record(&row).expect("writing to memory");
                w.flush().expect("writing to memory");
            }
        }
    }

    /// A JSON Lines trailer, or `None` when the line is something else (a record: those
    /// begin with `{"position"`, so records are not parsed twice).
    pub(super) fn from_json(line: &str) -> Option<Result<Trailer, String>> {
        line.trim_start().starts_with(r#"{"trailer""#).then(|| {
            serde_json::from_str::<TrailerLine>(line)
                .map(|t| t.trailer)
                .map_err(|e| format!("unreadable trailer: {e}"))
        })
    }

    pub(super) fn from_csv(row: &csv::StringRecord) -> Result<Trailer, String> {
        let field = |i: usize| row.get(i).unwrap_or("");
        let bad = |e: &dyn std::fmt::Display| format!("unreadable trailer: {e}");
        Ok(Trailer {
            events: field(1).parse().map_err(|e| bad(&e))?,
            last_position: match field(2) {
                "" => None,
                p => Some(p.parse().map_err(|e| bad(&e))?),
            },
            last_hash: Some(field(3).to_string()).filter(|h| !h.is_empty()),
        })
    }
}

/// An export in progress: the CSV header, the log's positions (after, to] a page at a
/// time, then the trailer. The CLI and the HTTP route both write what this yields.
pub struct Export {
    format: Format,
    after: i64,
    to: i64,
    trailer: Trailer,
    stage: Stage,
}

enum Stage {
    Header,
    Pages,
    Trailer,
    Done,
}

impl Export {
    /// Positions [from, to].
    pub fn new(format: Format, from: i64, to: i64) -> Export {
        Export {
            format,
            after: from.max(1) - 1,
            to,
            trailer: Trailer::default(),
            stage: Stage::Header,
        }
    }

    /// The next bytes to write; `None` once the trailer was given.
    pub async fn next_chunk<'c>(
        &mut self,
        conn: impl sqlx::PgExecutor<'c>,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        if let Stage::Header = self.stage {
            self.stage = Stage::Pages;
            if self.format == Format::Csv {
                return Ok(Some(csv_header()));
            }
        }
        if let Stage::Pages = self.stage {
            let records = if self.after < self.to {
                page(conn, self.after, self.to, PAGE).await?
            } else {
                Vec::new()
            };
            match records.last() {
                Some(last) => {
                    self.after = last.position;
                    let mut buf = Vec::with_capacity(records.len() * 600);
                    for r in &records {
                        r.write(self.format, &mut buf);
                        self.trailer.count(r);
                    }
                    return Ok(Some(buf));
                }
                None => self.stage = Stage::Trailer,
            }
        }
        if let Stage::Trailer = self.stage {
            self.stage = Stage::Done;
            let mut buf = Vec::new();
            self.trailer.write(self.format, &mut buf);
            return Ok(Some(buf));
        }
        Ok(None)
    }

    pub fn events(&self) -> u64 {
        self.trailer.events
    }
}

/// Writes the log's positions [from, to] (to: the head when `None`) to `out`, a page at a
/// time, then the trailer; returns the number of events written.
pub async fn export(
    conn: &mut PgConnection,
    format: Format,
    from: i64,
    to: Option<i64>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let to = match to {
        Some(t) => t,
        None => crate::store::head(&mut *conn).await?.0,
    };
    let mut export = Export::new(format, from, to);
    while let Some(chunk) = export.next_chunk(&mut *conn).await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(export.events())
}
