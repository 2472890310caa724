//! Liveness, readiness, status and metrics.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use axum::Json;
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::error::ApiError;
use super::AppState;
use crate::{metrics, store};

#[utoipa::path(get, path = "/healthz", tag = "status",
    responses((status = 200, description = "the process is up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// How often the readiness probes run.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How old a probe's good answer may be for `/readyz` to still trust it: a probe that has
/// not come back by then (a hung node) means not ready.
const FRESH_FOR: Duration = Duration::from_secs(3);
/// The database probe gives up after this (dropping a query frees nothing but a pooled
/// connection; the node's calls give up by themselves, see [`crate::chain::node`]).
const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for the first probes right after start.
const FIRST_PROBE: Duration = Duration::from_secs(2);

/// What the readiness probes last found. Each dependency has one probe in flight at most,
/// run in the background, so `/readyz` answers at once and never adds a call to a
/// database or node that is already struggling.
pub struct Health {
    database: watch::Receiver<Option<Checked>>,
    node: watch::Receiver<Option<Checked>>,
}

#[derive(Clone, Copy)]
struct Checked {
    at: Instant,
    ok: bool,
}

impl Health {
    /// Starts the probes; they end at shutdown.
    pub fn start(s: &AppState) -> Arc<Health> {
        let pool = s.pool.clone();
        let database = probe(s.shutdown.clone(), move || {
            let pool = pool.clone();
            async move {
                let query = sqlx::query("SELECT 1").execute(&pool);
                matches!(
                    tokio::time::timeout(DATABASE_TIMEOUT, query).await,
                    Ok(Ok(_))
                )
            }
        });
        let node = s.node.clone();
        let node = probe(s.shutdown.clone(), move || {
            let node = node.clone();
            async move { node.block_count().await.is_ok() }
        });
        Arc::new(Health { database, node })
    }
}

fn probe<F, Fut>(mut shutdown: watch::Receiver<bool>, check: F) -> watch::Receiver<Option<Checked>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let ok = tokio::select! {
                ok = check() => ok,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            tx.send_replace(Some(Checked {
                at: Instant::now(),
                ok,
            }));
            tokio::select! {
                _ = tokio::time::sleep_until(started + PROBE_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
    rx
}

/// Whether the probe's last answer is good and recent (waiting briefly for a first one).
async fn ready(probe: &watch::Receiver<Option<Checked>>) -> bool {
    let mut probe = probe.clone();
    let first = tokio::time::timeout(FIRST_PROBE, probe.wait_for(Option::is_some)).await;
    match first {
        Ok(Ok(checked)) => checked.is_some_and(|c| c.ok && c.at.elapsed() < FRESH_FOR),
        _ => false,
    }
}

#[utoipa::path(get, path = "/readyz", tag = "status",
    responses((status = 200, description = "the database and the node answered their last probe (one a second each, in the background) within 3 s", body = Object,
               example = json!({"database": true, "node": true})),
              (status = 503, description = "the database or the node does not answer (named false)", body = Object,
               example = json!({"database": true, "node": false}))))]
/// 200 when the database and the node answered their last probe, within the last few
/// seconds; else 503 naming which.
pub async fn readyz(Extension(health): Extension<Arc<Health>>) -> impl IntoResponse {
    let (db, node) = tokio::join!(ready(&health.database), ready(&health.node));
    let status = if db && node {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"database": db, "node": node})))
}

#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    network: &'static str,
    /// The node's best height, as last polled.
    node_tip: Option<i64>,
    /// The last height the follower stored.
    synced_tip: Option<i64>,
    last_position: i64,
    /// Whether this instance holds the chain leader lease.
    leader: bool,
    /// This instance's name (INSTANCE_ID).
    instance_id: String,
    /// Who holds the chain leader lease (any instance), since when, with which fencing
    /// epoch; `live` false once it expired unrenewed. Null before any instance led.
    leader_lease: Option<crate::leadership::Holder>,
    last_error: Option<String>,
    /// Rescans running, and the last ten finished.
    rescans: Vec<Rescan>,
    /// The lowest height the node still has blocks of, when it prunes (this instance must
    /// lead to know).
    node_pruned_below: Option<i64>,
    zmq: Zmq,
    /// The read replica (DATABASE_READ_URL); null without one.
    replica: Option<ReplicaView>,
}

/// The read replica as its watcher last polled it.
#[derive(Serialize, ToSchema)]
pub struct ReplicaView {
    /// It answers and its log is the primary's: replica-served routes read it.
    up: bool,
    /// Its log's head (`as_of_position` of what it serves).
    head: i64,
    /// `last_position` − `head`.
    lag_positions: i64,
    /// Why reads go to the primary instead, when they do.
    problem: Option<String>,
}

/// ZMQ push from the node (`BITCOIND_ZMQ`).
#[derive(Serialize, ToSchema)]
pub struct Zmq {
    /// `auto` or `off`.
    mode: &'static str,
    /// A socket to the node is connected.
    connected: bool,
    /// `topic address` subscribed to (empty: polling alone).
    endpoints: Vec<String>,
    messages: u64,
    /// Messages found missing (then reconciled by polling).
    gaps: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Rescan {
    id: i64,
    account_id: uuid::Uuid,
    address: String,
    from_height: i32,
    to_height: i32,
    /// The next block to read.
    next_height: i32,
    /// running, done or failed.
    status: String,
    error: Option<String>,
}

#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, body = Status)), security(("bearer" = [])))]
pub async fn status(State(s): State<AppState>) -> Result<Json<Status>, ApiError> {
    let known = |v: i64| (v >= 0).then_some(v);
    let rescans = sqlx::query_as!(
            Rescan,
            r#"(SELECT rescan_id AS "id!", account_id AS "account_id!", address AS "address!",
                       from_height AS "from_height!", to_height AS "to_height!",
                       next_height AS "next_height!", status AS "status!", error
                FROM rescans WHERE status = 'running')
               UNION ALL
               (SELECT rescan_id, account_id, address, from_height, to_height, next_height, status, error
                FROM rescans WHERE status <> 'running' ORDER BY rescan_id DESC LIMIT 10)"#
        )
        .fetch_all(&s.pool)
        .await?;
    let last_position = store::head(&s.pool).await?.0;
    let replica = s.read_pool.replica_seen().map(|seen| ReplicaView {
        up: seen.up,
        head: seen.head.0,
        lag_positions: (last_position - seen.head.0).max(0),
        problem: seen.problem,
    });
    Ok(Json(Status {
        replica,
        network: s.network.as_str(),
        node_tip: known(s.follower.node_tip.load(Ordering::Relaxed)),
        synced_tip: crate::projections::read::tip(&s.pool)
            .await?
            .map(|b| i64::from(b.height)),
        last_position,
        leader: s.follower.leader.load(Ordering::Relaxed),
        instance_id: s.follower.instance_id.clone(),
        leader_lease: crate::leadership::holder(&s.pool).await?,
        rescans,
        last_error: s.follower.last_error.lock().expect("not poisoned").clone(),
        node_pruned_below: known(s.follower.prune_height.load(Ordering::Relaxed))
            .filter(|p| *p > 0),
        zmq: Zmq {
            mode: s.zmq_mode.as_str(),
            connected: s.follower.zmq.connected.load(Ordering::Relaxed),
            endpoints: s
                .follower
                .zmq
                .endpoints
                .lock()
                .expect("not poisoned")
                .clone(),
            messages: s.follower.zmq.messages.load(Ordering::Relaxed),
            gaps: s.follower.zmq.gaps.load(Ordering::Relaxed),
        },
    }))
}
