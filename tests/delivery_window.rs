//! One subscriber's group-commit window (WEBHOOK_GROUP_COMMIT_MS / _ENTRIES): deliveries
//! are sent ahead of their journal entries, yet a failure mid-burst still stops the
//! pipeline at the failing event: nothing after it is sent before it succeeds. (The crash
//! bound of the window is in tests/crash.rs.)

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

/// A receiver answering 200 at once, except 503 to the first `failures` requests for
/// position `fail_at`; it notes (position, status) of every request in arrival order.
#[derive(Clone)]
struct Failing {
    fail_at: i64,
    failures: Arc<Mutex<usize>>,
    got: Arc<Mutex<Vec<(i64, u16)>>>,
}

async fn handle(State(f): State<Failing>, body: Bytes) -> StatusCode {
    let position = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["position"].as_i64())
        .unwrap_or(-1);
    let fail = position == f.fail_at && {
        let mut left = f.failures.lock().unwrap();
        let fail = *left > 0;
        *left = left.saturating_sub(1);
        fail
    };
    let status = if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    f.got.lock().unwrap().push((position, status.as_u16()));
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_burst_stops_the_pipeline_at_the_failing_event() {
    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    cfg.webhook_group_commit_entries = 100;
    cfg.webhook_group_commit_ms = 1000;
    let svc = Service::start(cfg).await;
    let head = svc.make_events(150).await;
    let fail_at = 100;
    assert!(head > fail_at);

    let receiver = Failing {
        fail_at,
        failures: Arc::new(Mutex::new(2)),
        got: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(axum::routing::post(handle))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (id, _) = svc.subscribe(&url, json!({"start": "beginning"})).await;
    eventually(std::time::Duration::from_secs(60), || async {
        let (_, s) = svc.get(&format!("/v1/subscribers/{id}")).await;
        // At or past the head: the recovery appended a `subscriber.recovered` after it,
        // which this subscriber (no filter) passes over.
        (s["cursor"].as_i64() >= Some(head)).then_some(())
    })
    .await;

    let got = receiver.got.lock().unwrap().clone();
    let mut expected: Vec<(i64, u16)> = (1..fail_at).map(|p| (p, 200)).collect();
    expected.extend([(fail_at, 503), (fail_at, 503)]);
    expected.extend((fail_at..=head).map(|p| (p, 200)));
    assert_eq!(
        got, expected,
        "in order, the failing event retried before any later one, nothing twice"
    );
    let (_, s) = svc.get(&format!("/v1/subscribers/{id}")).await;
    assert_eq!(s["status"], "active", "{s}");
    svc.stop().await;
}
