//! Read replicas (DATABASE_READ_URL): a real primary, a real streaming standby made with
//! `pg_basebackup -R` (tools/pg standby), and the service as a process reading from the
//! standby. A tail and an SSE client on the standby see every event in order, gapless,
//! while blocks and deposits arrive and across a restart of the standby; a read sent with
//! `chainledger-min-position` sees the write whose position it names; the lag is reported.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::faults::PrivateCluster;
use common::process::{free_port, wait_healthy, ServiceProcess};
use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

/// A primary with a fresh database, its standby, and the service reading from the standby.
/// Fields drop in order: the service first, the primary last.
struct Replicated {
    _process: ServiceProcess,
    svc: Service,
    /// The database on the primary (what the service writes).
    database: String,
    /// The same database on the standby.
    replica_database: String,
    standby: PrivateCluster,
    _primary: PrivateCluster,
}

async fn replicated(node: &Node) -> Replicated {
    let primary = PrivateCluster::start();
    let database = fresh_database_on(&primary.url).await;
    let standby = primary.standby();
    let replica_database = standby.same_database(&database);
    let port = free_port();
    let process = ServiceProcess::spawn(
        &database,
        node,
        port,
        &[("DATABASE_READ_URL", replica_database.as_str())],
    );
    let svc = process.client();
    wait_healthy(&svc).await;
    svc.synced_to(node.height()).await;
    // The replica is used once its watcher found it answering with the primary's log; the
    // tests start once it has replayed everything so far (the schema included).
    eventually(Duration::from_secs(30), || async {
        let (_, s) = svc.get("/v1/status").await;
        let caught_up =
            s["last_position"].as_i64() > Some(0) && s["replica"]["head"] == s["last_position"];
        (s["replica"]["up"] == true && caught_up).then_some(())
    })
    .await;
    Replicated {
        _process: process,
        svc,
        database,
        replica_database,
        standby,
        _primary: primary,
    }
}

/// (position, event id) of every event, read from the primary's table directly.
async fn primary_log(database: &str) -> Vec<(i64, String)> {
    let pool = sqlx::PgPool::connect(database).await.unwrap();
    let rows: Vec<(i64, uuid::Uuid)> =
        sqlx::query_as("SELECT position, event_id FROM events ORDER BY position")
            .fetch_all(&pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(p, id)| (p, id.to_string()))
        .collect()
}

fn position_and_id(e: &Value) -> (i64, String) {
    (
        e["position"].as_i64().unwrap(),
        e["id"].as_str().unwrap().to_string(),
    )
}

/// Long-polls the tail from 0 until `target` (once set) is reached; every event, and for
/// each page whether the replica served it and whether the standby had been restarted.
async fn tail_client(
    svc: Service,
    target: watch::Receiver<i64>,
    restarted: Arc<AtomicBool>,
) -> (Vec<(i64, String)>, Vec<(bool, bool)>) {
    let (mut after, mut events, mut pages) = (0i64, Vec::new(), Vec::new());
    loop {
        let was_restarted = restarted.load(Ordering::SeqCst);
        let resp = svc
            .http
            .get(format!(
                "{}/v1/events?after={after}&limit=50&wait=1",
                svc.base
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the tail answers through the restart");
        let from_replica = resp.headers()["chainledger-read-from"] == "replica";
        let page: Value = resp.json().await.unwrap();
        pages.push((from_replica, was_restarted));
        let got = page["events"].as_array().unwrap();
        events.extend(got.iter().map(position_and_id));
        assert!(page["as_of_position"].as_i64().unwrap() >= after, "{page}");
        after = page["next_after"].as_i64().unwrap();
        let goal = *target.borrow();
        if goal > 0 && after >= goal {
            return (events, pages);
        }
    }
}

/// Reads the SSE stream from 0 until `target` (once set) is reached, on one connection.
async fn sse_client(svc: Service, target: watch::Receiver<i64>) -> Vec<(i64, String)> {
    let resp = svc
        .http
        .get(format!("{}/v1/events/stream?after=0", svc.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["chainledger-read-from"], "replica");
    let mut stream = Box::pin(resp.bytes_stream().eventsource());
    let mut events = Vec::new();
    loop {
        let goal = *target.borrow();
        if goal > 0 && events.last().is_some_and(|(p, _)| *p >= goal) {
            return events;
        }
        let next = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
        match next {
            Err(_) => continue,
            Ok(None) => panic!("the SSE stream ended after {} events", events.len()),
            Ok(Some(e)) => {
                let e = e.expect("well-formed SSE");
                let data: Value = serde_json::from_str(&e.data).unwrap();
                events.push(position_and_id(&data));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_and_an_sse_client_on_the_standby_see_every_event_in_order_across_its_restart() {
    let node = Arc::new(Node::start());
    let r = replicated(&node).await;
    let address = foreign_address();
    r.svc.account_watching(&address).await;

    let (target_tx, target) = watch::channel(0i64);
    let restarted = Arc::new(AtomicBool::new(false));
    let tail = tokio::spawn(tail_client(
        Service::at(r.svc.base.clone()),
        target.clone(),
        restarted.clone(),
    ));
    let sse = tokio::spawn(sse_client(Service::at(r.svc.base.clone()), target));

    // Blocks and deposits arrive throughout; the standby goes down for a second midway.
    let miner = Miner::start(node.clone(), &address, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let standby = &r.standby;
    tokio::task::block_in_place(|| standby.restart(Duration::from_secs(1)));
    restarted.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let paid = miner.stop();
    assert!(paid >= 4, "deposits arrived: {paid}");
    r.svc.synced_to(node.height()).await;

    let log = primary_log(&r.database).await;
    let head = log.last().unwrap().0;
    assert_eq!(
        log.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    target_tx.send_replace(head);
    let (tailed, pages) = tokio::time::timeout(Duration::from_secs(60), tail)
        .await
        .expect("the tail reaches the head")
        .unwrap();
    let streamed = tokio::time::timeout(Duration::from_secs(60), sse)
        .await
        .expect("the SSE stream reaches the head")
        .unwrap();
    assert_eq!(tailed, log, "the tail saw every event once, in order");
    assert_eq!(
        streamed, log,
        "the SSE stream saw every event once, in order"
    );
    // The replica served the tail before the restart and again after it.
    assert!(
        pages.iter().any(|&(replica, after)| replica && !after),
        "{pages:?}"
    );
    assert!(
        pages.iter().any(|&(replica, after)| replica && after),
        "{pages:?}"
    );
}

/// Pauses the standby's WAL replay (it keeps answering, with an old log) or resumes it.
async fn set_replay(replica_database: &str, paused: bool) {
    let pool = sqlx::PgPool::connect(replica_database).await.unwrap();
    let call = if paused {
        "SELECT pg_wal_replay_pause()::text"
    } else {
        "SELECT pg_wal_replay_resume()::text"
    };
    sqlx::query(call).execute(&pool).await.unwrap();
}

async fn get_with(svc: &Service, path: &str, min_position: Option<&str>) -> (u16, String, Value) {
    let mut req = svc
        .http
        .get(format!("{}{path}", svc.base))
        .bearer_auth(TOKEN);
    if let Some(p) = min_position {
        req = req.header("chainledger-min-position", p);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let from = resp
        .headers()
        .get("chainledger-read-from")
        .map_or("", |v| v.to_str().unwrap())
        .to_string();
    (status, from, resp.json().await.unwrap_or(Value::Null))
}

async fn metric(svc: &Service, name: &str) -> i64 {
    let text = svc
        .http
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_a_post_with_the_min_position_header_sees_the_write_and_lag_is_reported() {
    let node = Node::start();
    let r = replicated(&node).await;
    // A replica that answers but has stopped replaying: it trails the primary for good.
    set_replay(&r.replica_database, true).await;

    let resp = r
        .svc
        .http
        .post(format!("{}/v1/accounts", r.svc.base))
        .bearer_auth(TOKEN)
        .json(&json!({"label": "read your writes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let position = resp.headers()["chainledger-position"]
        .to_str()
        .unwrap()
        .to_string();
    let account: Value = resp.json().await.unwrap();
    let path = format!("/v1/accounts/{}", account["id"].as_str().unwrap());

    // Without the header the replica answers, and has not got the account.
    let (status, from, _) = get_with(&r.svc, &path, None).await;
    assert_eq!((status, from.as_str()), (404, "replica"));
    // With it the replica cannot reach the position in time: the primary answers.
    let (status, from, body) = get_with(&r.svc, &path, Some(&position)).await;
    assert_eq!((status, from.as_str()), (200, "primary"), "{body}");
    assert_eq!(body["label"], "read your writes");
    let (status, _, body) = get_with(&r.svc, "/v1/events?after=0", Some("x")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_min_position");

    // The lag shows in the status and the gauge.
    r.svc.make_events(3).await;
    let head = r.svc.head().await;
    let (_, status) = r.svc.get("/v1/status").await;
    let replica_head = status["replica"]["head"].as_i64().unwrap();
    assert!(replica_head < head, "{status}");
    assert_eq!(
        status["replica"]["lag_positions"].as_i64(),
        Some(head - replica_head),
        "{status}"
    );
    eventually(Duration::from_secs(10), || async {
        (metric(&r.svc, "chainledger_replica_lag_positions").await == head - replica_head)
            .then_some(())
    })
    .await;
    let (_, from, page) = get_with(&r.svc, "/v1/events?after=0&limit=1000", None).await;
    assert_eq!(from, "replica");
    assert_eq!(
        page["as_of_position"].as_i64(),
        Some(replica_head),
        "{page}"
    );

    // Replaying again, the replica catches up and serves the same read itself.
    set_replay(&r.replica_database, false).await;
    let (status, from, body) = get_with(&r.svc, &path, Some(&position)).await;
    assert_eq!((status, from.as_str()), (200, "replica"), "{body}");
    eventually(Duration::from_secs(10), || async {
        let (_, s) = r.svc.get("/v1/status").await;
        (s["replica"]["lag_positions"] == 0 && s["replica"]["head"] == head).then_some(())
    })
    .await;
    let (_, _, page) = get_with(&r.svc, "/v1/events?after=0&limit=1000", None).await;
    assert_eq!(page["as_of_position"].as_i64(), Some(head), "{page}");
    assert_eq!(
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(position_and_id)
            .collect::<Vec<_>>(),
        primary_log(&r.database).await
    );
}
