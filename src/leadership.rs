//! Who follows the chain: the holder of a lease in `chain_leader`, renewed in the
//! background and fenced by an epoch (migration 0009).
//!
//! - [`Lease::acquire`] takes the lease when it is free or expired, incrementing the epoch.
//! - A renewal task extends it every third of `LEADER_LEASE_MS`; when a renewal finds the
//!   epoch gone (another took over) the lease is marked lost.
//! - Every append of the follower runs [`Fence::check`] in its own transaction: the row,
//!   share-locked, must still carry the epoch. A stale leader's append fails with
//!   [`crate::unit_of_work::RecordError::Fenced`] and it steps down; a takeover waits for
//!   an append in flight to commit (the share lock), so the two never interleave.
//!
//! A killed leader's lease expires after at most `LEADER_LEASE_MS`; a paused one (SIGSTOP,
//! a long GC-like stall, a partition) too, since only a running process renews. Shutdown
//! releases the lease at once, so a rolling restart hands over without waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;

/// A held lease; dropping it stops the renewal (it then expires), [`Lease::release`]
/// ends it at once.
pub struct Lease {
    pool: PgPool,
    fence: Arc<Fence>,
    renewal: JoinHandle<()>,
}

/// What an append checks: the epoch this instance was given, and whether a renewal
/// already found it lost.
#[derive(Debug)]
pub struct Fence {
    pub epoch: i64,
    pub holder: String,
    lost: AtomicBool,
}

impl Fence {
    /// True if the lease is still this epoch's, share-locking the row until the
    /// transaction ends (a takeover waits for this transaction).
    pub async fn check(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        if self.lost() {
            return Ok(false);
        }
        let held = sqlx::query_scalar!(
            "SELECT epoch FROM chain_leader WHERE epoch = $1 FOR SHARE",
            self.epoch
        )
        .fetch_optional(conn)
        .await?;
        if held.is_none() {
            self.lost.store(true, Ordering::Relaxed);
        }
        Ok(held.is_some())
    }

    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Lease {
    /// Takes the lease if it is free or expired: `Some` with a new epoch, else `None`.
    pub async fn acquire(
        pool: &PgPool,
        holder: &str,
        length: Duration,
    ) -> Result<Option<Lease>, sqlx::Error> {
        let ms = length.as_millis() as f64;
        let epoch = sqlx::query_scalar!(
            "INSERT INTO chain_leader (singleton, epoch, holder, since, expires_at)
             VALUES (true, 1, $1, now(), now() + $2::float8 * interval '1 millisecond')
             ON CONFLICT (singleton) DO UPDATE
                SET epoch = chain_leader.epoch + 1, holder = EXCLUDED.holder,
                    since = EXCLUDED.since, expires_at = EXCLUDED.expires_at
                WHERE chain_leader.expires_at < now()
             RETURNING epoch",
            holder,
            ms
        )
        .fetch_optional(pool)
        .await?;
        Ok(epoch.map(|epoch| {
            let fence = Arc::new(Fence {
                epoch,
                holder: holder.to_string(),
                lost: AtomicBool::new(false),
            });
            let renewal = tokio::spawn(renew(pool.clone(), fence.clone(), length));
            Lease {
                pool: pool.clone(),
                fence,
                renewal,
            }
        }))
    }

    /// Tries [`Lease::acquire`] every `every` until it succeeds, or `None` at shutdown.
    pub async fn wait(
        pool: &PgPool,
        holder: &str,
        length: Duration,
        every: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Lease> {
        loop {
            match Lease::acquire(pool, holder, length).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => tracing::debug!("another instance is the chain leader"),
                Err(e) => tracing::warn!(error = %e, "failed to try the chain leader lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Ends the lease now (shutdown): another instance may take over at once.
    pub async fn release(self) {
        self.renewal.abort();
        let _ = sqlx::query!(
            "UPDATE chain_leader SET expires_at = now() WHERE epoch = $1",
            self.fence.epoch
        )
        .execute(&self.pool)
        .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Extends the lease every third of its length until it is lost. A renewal that cannot
/// reach the database is retried; if the lease expires meanwhile, the next renewal (or
/// append) finds another epoch and marks it lost.
async fn renew(pool: PgPool, fence: Arc<Fence>, length: Duration) {
    let ms = length.as_millis() as f64;
    loop {
        tokio::time::sleep(length / 3).await;
        let renewed = sqlx::query_scalar!(
            "UPDATE chain_leader SET expires_at = now() + $2::float8 * interval '1 millisecond'
             WHERE epoch = $1 RETURNING epoch",
            fence.epoch,
            ms
        )
        .fetch_optional(&pool)
        .await;
        match renewed {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(epoch = fence.epoch, "the chain leader lease was taken over");
                fence.lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "failed to renew the chain leader lease"),
        }
    }
}

/// Who holds the lease now, as `/v1/status` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Holder {
    pub holder: String,
    pub epoch: i64,
    pub since: chrono::DateTime<chrono::Utc>,
    /// False once `expires_at` passed with no renewal (the leader died or is paused).
    pub live: bool,
}

pub async fn holder(pool: &PgPool) -> Result<Option<Holder>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT holder, epoch, since, expires_at > now() AS "live!" FROM chain_leader"#
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Holder {
        holder: r.holder,
        epoch: r.epoch,
        since: r.since,
        live: r.live,
    }))
}
