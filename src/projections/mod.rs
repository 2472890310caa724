//! Projections: the read models of `projections/*.sql`, folded from events by [`apply`]
//! inside the transaction that appended them (the unit of work's), so they never lag or
//! lead the log. Folding is pure (typed events → row changes, [`fold`]) and the writes
//! ([`write`]) are a handful of set-based statements per batch, never one per event.
//! Replaying the whole log through [`apply`] rebuilds every table to the same rows.

pub mod cursors;
mod fold;
pub mod read;
pub mod rebuild;
mod write;

use sqlx::{PgConnection, PgPool};

use crate::domain::stream::{EventAt, Position};

pub use fold::{fold, Changes};

/// Where a projection's facts come from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The event log, folded by [`apply`].
    Log,
    /// The `delivery_attempts` journal, folded by [`cursors::apply`].
    DeliveryJournal,
}

/// A projection: one file of `projections/`, its tables (with the key that orders them)
/// and its source. Its version is a hash of its SQL, so changing the file is what makes
/// the service rebuild it.
#[derive(Debug)]
pub struct Definition {
    pub name: &'static str,
    pub sql: &'static str,
    /// (table, key columns) in creation order.
    pub tables: &'static [(&'static str, &'static [&'static str])],
    pub source: Source,
}

impl Definition {
    pub fn version(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.sql.as_bytes())[..8])
    }

    pub fn find(name: &str) -> Option<&'static Definition> {
        DEFINITIONS.iter().find(|d| d.name == name)
    }
}

/// Every projection, in the order they are created.
pub const DEFINITIONS: &[Definition] = &[
    Definition {
        name: "ledger",
        sql: include_str!("../../projections/0001_ledger.sql"),
        tables: &[
            ("projection_checkpoints", &["name"]),
            ("accounts", &["account_id"]),
            ("addresses", &["address"]),
            ("chain_blocks", &["height"]),
            ("chain_state", &["singleton"]),
            ("deposits", &["txid", "vout"]),
            ("withdrawals", &["txid"]),
            ("balances", &["account_id"]),
        ],
        source: Source::Log,
    },
    Definition {
        name: "subscriber_cursors",
        sql: include_str!("../../projections/0002_delivery.sql"),
        tables: &[("subscriber_cursors", &["subscriber_id"])],
        source: Source::DeliveryJournal,
    },
];

/// The checkpoint names [`apply`] writes (the parts of the ledger projection).
pub const NAMES: &[&str] = &[
    "accounts",
    "addresses",
    "chain",
    "deposits",
    "withdrawals",
    "balances",
];

/// Brings every projection to its current definition: a projection whose version differs
/// from the one its live tables were built with, or whose tables are missing, is rebuilt
/// from its source (and swapped in) before the service serves it.
pub async fn ensure_tables(pool: &PgPool) -> anyhow::Result<()> {
    // One instance at a time: others wait, then find everything current.
    let mut guard = pool.acquire().await?;
    sqlx::query!("SELECT pg_advisory_lock($1)", rebuild::STARTUP_LOCK)
        .execute(&mut *guard)
        .await?;
    let result = async {
        for def in DEFINITIONS {
            if let Some(why) = rebuild::needs_rebuild(pool, def).await? {
                tracing::info!(projection = def.name, version = %def.version(), why, "rebuilding the projection before serving it");
                let report = rebuild::rebuild(pool, &[def], rebuild::Mode::Swap, false, &rebuild::Progress::Log).await?;
                tracing::info!(projection = def.name, events = report.replayed, "projection rebuilt");
            }
        }
        Ok(())
    }
    .await;
    sqlx::query_scalar!("SELECT pg_advisory_unlock($1)", rebuild::STARTUP_LOCK)
        .fetch_one(&mut *guard)
        .await?;
    result
}

/// Folds `events` (contiguous, in position order) into every projection.
pub async fn apply(conn: &mut PgConnection, events: &[EventAt<'_>]) -> Result<(), sqlx::Error> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let changes = fold(events.iter().copied());
    write::write(conn, &changes).await?;
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    sqlx::query!(
        "INSERT INTO projection_checkpoints (name, position) SELECT UNNEST($1::text[]), $2
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
        &names,
        last.position.0
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The position every projection has folded up to (0 before the first event).
pub async fn checkpoint(conn: &mut PgConnection) -> Result<Position, sqlx::Error> {
    let p = sqlx::query_scalar!("SELECT min(position) FROM projection_checkpoints")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Position(p.unwrap_or(0)))
}
