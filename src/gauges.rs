//! Gauges of the database's state, refreshed in the background (every
//! [`REFRESH`]) rather than read per scrape, so `/metrics` — which needs no token — costs
//! the database nothing however often it is fetched: each subscriber's lag and status.
//! Every instance reports the same values (they come from the shared database); alert on
//! `max by (subscriber)`.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts};
use sqlx::PgPool;
use tokio::sync::watch;

/// How often the gauges are read from the database.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The statuses a subscriber can show, each a series of `chainledger_subscriber_status`.
const STATUSES: [&str; 3] = ["active", "retrying", "disabled"];

struct Gauges {
    lag: IntGaugeVec,
    status: IntGaugeVec,
}

static GAUGES: LazyLock<Gauges> = LazyLock::new(|| {
    let vec = |name: &str, help: &str, labels: &[&str]| {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        crate::metrics::registry()
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    };
    Gauges {
        lag: vec(
            "chainledger_subscriber_lag_positions",
            "Positions between a subscriber's cursor and the log's head",
            &["subscriber"],
        ),
        status: vec(
            "chainledger_subscriber_status",
            "1 for a subscriber's current status (active, retrying, disabled), else 0",
            &["subscriber", "status"],
        ),
    }
});

/// Refreshes the gauges until shutdown; a failed read keeps the last values (and is
/// logged).
pub async fn run(pool: PgPool, mut shutdown: watch::Receiver<bool>) {
    let mut shown: HashSet<String> = HashSet::new();
    loop {
        match refresh(&pool, &mut shown).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "cannot refresh the subscriber gauges"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn refresh(pool: &PgPool, shown: &mut HashSet<String>) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT c.subscriber_id, c.cursor, c.status, (SELECT position FROM log_head) AS "head!"
           FROM subscriber_cursors c WHERE c.status <> 'deleted'"#
    )
    .fetch_all(pool)
    .await?;
    let gauges = &*GAUGES;
    let mut now = HashSet::with_capacity(rows.len());
    for r in rows {
        let id = r.subscriber_id.to_string();
        gauges
            .lag
            .with_label_values(&[&id])
            .set((r.head - r.cursor).max(0));
        for status in STATUSES {
            gauges
                .status
                .with_label_values(&[&id, status])
                .set(i64::from(r.status == status));
        }
        now.insert(id);
    }
    // Deleted subscribers leave the exposition.
    for gone in shown.difference(&now) {
        let _ = gauges.lag.remove_label_values(&[gone]);
        for status in STATUSES {
            let _ = gauges.status.remove_label_values(&[gone, status]);
        }
    }
    *shown = now;
    Ok(())
}
