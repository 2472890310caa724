//! Liveness, readiness, status and metrics.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::ApiError;
use super::AppState;
use crate::{metrics, store};

#[utoipa::path(get, path = "/healthz", tag = "status",
    responses((status = 200, description = "the process is up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "status",
    responses((status = 200, description = "the database and the node answer", body = Object,
               example = json!({"database": true, "node": true})),
              (status = 503, description = "the database or the node does not answer (named false)", body = Object,
               example = json!({"database": true, "node": false}))))]
/// 200 when both the database and the node answer within two seconds, else 503 naming which.
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let timeout = Duration::from_secs(2);
    let db = matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&s.pool)).await,
        Ok(Ok(_))
    );
    let node = matches!(
        tokio::time::timeout(timeout, s.node.block_count()).await,
        Ok(Ok(_))
    );
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
    Ok(Json(Status {
        network: s.network.as_str(),
        node_tip: known(s.follower.node_tip.load(Ordering::Relaxed)),
        synced_tip: crate::projections::read::tip(&s.pool)
            .await?
            .map(|b| i64::from(b.height)),
        last_position: store::head(&s.pool).await?.0,
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
