//! Database connection (with retries at start-up) and schema set-up: the sqlx migrations of
//! `migrations/` (durable tables) and the projection tables of `projections/`.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::{redact_url, DatabaseArgs};

pub static MIGRATOR: Migrator = sqlx::migrate!();

/// TCP keepalives the server sends on every connection of ours: an instance that died
/// without closing its connections (a power cut, a partition) is noticed by PostgreSQL
/// within 10 + 3 × 5 = 25 s, which ends its sessions and frees what they held (row
/// locks of an append in flight, delivery leases). A paused process still answers
/// keepalives from its kernel: the leader lease (`leadership`) and the unit of work's
/// idle-in-transaction timeout cover that case.
const KEEPALIVES: [(&str, &str); 3] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
];

/// Connects, retrying once a second; the error names the (redacted) URL and the last cause.
/// `max_connections` must cover the connections held for long (the follower's leader
/// lease's renewals, the event listener, one per webhook worker, the webhook journal writer) plus the HTTP handlers' share.
pub async fn connect(args: &DatabaseArgs, max_connections: u32) -> anyhow::Result<PgPool> {
    let attempts = args.database_connect_retries.max(1);
    let mut last = None;
    for attempt in 1..=attempts {
        let options = match args.database_url.parse::<PgConnectOptions>() {
            Ok(o) => o.options(KEEPALIVES),
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "DATABASE_URL {} is not a PostgreSQL URL: {e}",
                    redact_url(&args.database_url)
                ))
            }
        };
        match PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(e) => {
                tracing::warn!(attempt, attempts, error = %crate::redact::redact(&e.to_string()),
                    "database not reachable yet");
                last = Some(e);
                if attempt < attempts {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    Err(anyhow::anyhow!(
        "database {} unreachable after {attempts} attempts: {}",
        redact_url(&args.database_url),
        crate::redact::redact(&last.map(|e| e.to_string()).unwrap_or_default())
    ))
}

/// How long a read waits for a connection of the replica's pool before the replica counts
/// as down and the read goes to the primary (README "Read replicas").
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The pool of DATABASE_READ_URL, a streaming replica. Lazy: the service starts while the
/// replica is down (its reads go to the primary until it answers, see
/// [`crate::store::replica`]), and a connection that fails is given up on quickly.
pub fn connect_replica(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = url.parse::<PgConnectOptions>().map_err(|e| {
        anyhow::anyhow!(
            "DATABASE_READ_URL {} is not a PostgreSQL URL: {e}",
            redact_url(url)
        )
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT)
        .connect_lazy_with(options.options(KEEPALIVES)))
}

/// Applies pending migrations and creates missing projection tables.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("failed to apply migrations")?;
    crate::projections::ensure_tables(pool)
        .await
        .context("failed to create projection tables")?;
    Ok(())
}
