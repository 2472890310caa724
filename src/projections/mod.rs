//! Projections: the read models of `projections/*.sql`, folded from events by [`apply`]
//! inside the transaction that appended them, so they never lag or lead the log. Folding
//! is pure (events → row changes, [`fold`]) and the writes are a handful of set-based
//! statements per batch, never one per event. Replaying the whole log through [`apply`]
//! rebuilds every table to the same rows.

pub mod cursors;
mod fold;
pub mod read;

use sqlx::{PgConnection, PgPool};

use crate::store::StoredEvent;

pub use fold::{fold, Changes};

/// The read-model definitions, in the order they are created.
pub const DEFINITIONS: &[(&str, &str)] = &[
    (
        "0001_ledger",
        include_str!("../../projections/0001_ledger.sql"),
    ),
    (
        "0002_delivery",
        include_str!("../../projections/0002_delivery.sql"),
    ),
];

/// Every projection this module maintains; each has a checkpoint row.
pub const NAMES: &[&str] = &["accounts", "addresses", "chain", "deposits", "balances"];

/// Creates the projection tables that do not exist yet.
pub async fn ensure_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    for (_, sql) in DEFINITIONS {
        sqlx::raw_sql(sql).execute(pool).await?;
    }
    Ok(())
}

/// Folds `events` (contiguous, in position order) into every projection.
pub async fn apply(conn: &mut PgConnection, events: &[StoredEvent]) -> Result<(), sqlx::Error> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let changes =
        fold(events).map_err(|e| sqlx::Error::Protocol(format!("cannot fold event: {e}")))?;
    fold::write(conn, &changes).await?;
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    sqlx::query!(
        "INSERT INTO projection_checkpoints (name, position) SELECT UNNEST($1::text[]), $2
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
        &names,
        last.position
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The position every projection has folded up to (0 before the first event).
pub async fn checkpoint(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let p = sqlx::query_scalar!("SELECT min(position) FROM projection_checkpoints")
        .fetch_one(&mut *conn)
        .await?;
    Ok(p.unwrap_or(0))
}
