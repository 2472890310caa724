//! Redis Streams as a delivery target, against real `redis-server`s started here
//! (common::redis_server): every event XADDed once, in order, with the entry id
//! `<position>-1`, through SIGKILLs of the service mid-burst and a Redis that goes away
//! and comes back; the subscriber's fields checked, its password never shown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::process::{free_port, wait_healthy, ServiceProcess};
use common::redis_server::{assert_stream_is_the_log, field, RedisServer};
use common::*;
use serde_json::{json, Value};

const STREAM: &str = "chainledger:events";

/// Creates a subscriber delivering every event from the beginning to `url`'s STREAM.
async fn subscribe_redis(svc: &Service, url: &str) -> Value {
    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"redis": {"url": url, "stream": STREAM}, "start": "beginning"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    sub
}

/// Waits until the stream's last entry is the log's head (every event is delivered: the
/// subscriber takes every type).
/// Waits until the stream holds the last event a subscriber without a filter gets (the
/// head may be a later operational `subscriber.*` event, which it does not get).
async fn wait_for_head(svc: &Service, redis: &RedisServer) {
    let events = svc.all_events().await;
    let head = events.last().expect("events")["position"].as_i64().unwrap();
    let last = format!("{head}-1");
    eventually(Duration::from_secs(60), || async {
        let entries = redis.entries(STREAM).await;
        (entries.last().map(|e| &e.0) == Some(&last)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_mid_burst_the_stream_holds_every_event_once_in_order() {
    let redis = RedisServer::start_with(Some("s3cret-pw")).await;
    let node = Arc::new(Node::start());
    let db = fresh_database().await;
    let setup = Service::start(config(&db, &node)).await;
    let address = node.new_address("legacy");
    setup.account_watching(&address).await;
    let backlog = setup.make_events(500).await as usize;
    setup.stop().await;

    // Up to 10 XADDs ahead of their journal entries: a kill leaves some to be sent again.
    let env = [
        ("WEBHOOK_GROUP_COMMIT_ENTRIES", "10"),
        ("WEBHOOK_GROUP_COMMIT_MS", "1000"),
    ];
    let port = free_port();
    let mut child = ServiceProcess::spawn(&db, &node, port, &env);
    let svc = child.client();
    wait_healthy(&svc).await;
    subscribe_redis(&svc, &redis.url()).await;
    // Blocks paying the address keep coming (deposits, confirmations) while it is killed.
    let miner = Miner::start(node.clone(), &address, Duration::from_millis(15));
    let mut seen = 0;
    for _ in 0..3 {
        eventually(Duration::from_secs(30), || async {
            let n = redis.len(STREAM).await;
            (n > seen + 10).then_some(n)
        })
        .await;
        child.kill();
        seen = redis.len(STREAM).await;
        assert!(
            seen < backlog,
            "killed mid-burst ({seen} of {backlog} delivered)"
        );
        child = ServiceProcess::spawn(&db, &node, port, &env);
        wait_healthy(&svc).await;
    }
    miner.stop();
    svc.synced_to(node.height()).await;
    wait_for_head(&svc, &redis).await;

    let log = svc.all_events().await;
    assert!(log.len() > 200, "a burst ({} events)", log.len());
    assert_stream_is_the_log(&redis.entries(STREAM).await, &log);
    child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_back_loses_nothing_and_the_deliveries_list_shows_the_failures() {
    let mut redis = RedisServer::start().await;
    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    // Retried for about ten seconds before giving up.
    cfg.webhook_retry_schedule =
        chainledger::delivery::Schedule::parse(&vec!["300ms"; 30].join(",")).unwrap();
    cfg.webhook_timeout_ms = 1000;
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    let sub = subscribe_redis(&svc, &redis.url()).await;
    let id = sub["id"].as_str().unwrap();
    svc.make_events(3).await;
    wait_for_head(&svc, &redis).await;

    // Shut down (its append-only file kept): refused connections.
    redis.stop();
    svc.make_events(5).await;
    let failed = |error: &'static str| {
        let svc = &svc;
        async move {
            eventually(Duration::from_secs(20), || async {
                let (_, d) = svc.get(&format!("/v1/subscribers/{id}/deliveries")).await;
                d["deliveries"].as_array().unwrap().iter().find_map(|a| {
                    let e = a["error"].as_str().unwrap_or("");
                    (a["outcome"] == "failed" && e.contains(error)).then(|| a.clone())
                })
            })
            .await
        }
    };
    let refused = failed("cannot connect").await;
    assert_eq!(refused["status_code"], Value::Null, "{refused}");
    let (_, view) = svc.get(&format!("/v1/subscribers/{id}")).await;
    assert_eq!(view["status"], "retrying", "{view}");
    redis.restart().await;
    wait_for_head(&svc, &redis).await;

    // Stopped (SIGSTOP): the open connection hangs, the XADD times out, then goes on.
    redis.pause("STOP");
    svc.make_events(4).await;
    failed("timed out").await;
    redis.pause("CONT");
    wait_for_head(&svc, &redis).await;

    let log = svc.all_events().await;
    assert_stream_is_the_log(&redis.entries(STREAM).await, &log);
    let (_, d) = svc
        .get(&format!("/v1/subscribers/{id}/deliveries?limit=1000"))
        .await;
    let attempts = d["deliveries"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "delivered", "newest first: {d}");
    assert!(attempts.iter().all(|a| a["status_code"].is_null()), "{d}");
    // Lag 0 once the cursor passed the `subscriber.recovered` events after the last entry
    // (operational: this subscriber, without a filter, does not get them).
    let view = eventually(Duration::from_secs(10), || async {
        let (_, view) = svc.get(&format!("/v1/subscribers/{id}")).await;
        (view["lag"] == 0).then_some(view)
    })
    .await;
    assert_eq!(view["status"], "active", "{view}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_schedule_disables_and_enable_resumes_from_the_cursor() {
    let mut redis = RedisServer::start().await;
    let (_node, svc) = node_and_service().await;
    let sub = subscribe_redis(&svc, &redis.url()).await;
    let id = sub["id"].as_str().unwrap();
    svc.make_events(2).await;
    wait_for_head(&svc, &redis).await;
    redis.stop();
    svc.make_events(2).await;
    eventually(Duration::from_secs(20), || async {
        let (_, view) = svc.get(&format!("/v1/subscribers/{id}")).await;
        (view["status"] == "disabled").then_some(())
    })
    .await;
    redis.restart().await;
    let (status, _) = svc
        .post(&format!("/v1/subscribers/{id}/enable"), json!({}))
        .await;
    assert_eq!(status, 200);
    wait_for_head(&svc, &redis).await;
    assert_stream_is_the_log(&redis.entries(STREAM).await, &svc.all_events().await);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_adds_nothing_at_or_below_the_streams_last_id_and_maxlen_trims() {
    let redis = RedisServer::start().await;
    let (_node, svc) = node_and_service().await;
    let sub = subscribe_redis(&svc, &redis.url()).await;
    let id = sub["id"].as_str().unwrap();
    svc.make_events(5).await;
    wait_for_head(&svc, &redis).await;
    let before = redis.entries(STREAM).await;
    let (status, _) = svc
        .post(
            &format!("/v1/subscribers/{id}/replay"),
            json!({"from_position": 1}),
        )
        .await;
    assert_eq!(status, 200);
    svc.make_events(1).await;
    wait_for_head(&svc, &redis).await;
    let after = redis.entries(STREAM).await;
    assert_eq!(&after[..before.len()], &before[..], "nothing re-added");
    assert_eq!(after.len(), before.len() + 1);
    // The replayed ones counted as delivered: the new one's prev is the one before it.
    let last = after.last().unwrap();
    let prev = before.last().unwrap();
    assert_eq!(field(last, "prev"), field(prev, "position"));

    // MAXLEN ~ n: Redis trims (approximately, by whole nodes) as entries are added.
    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"redis": {"url": redis.url(), "stream": "short", "maxlen": 1}, "start": "beginning"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["redis"]["maxlen"], 1);
    svc.make_events(300).await;
    let head = svc.head().await;
    eventually(Duration::from_secs(60), || async {
        let e = redis.entries("short").await;
        (e.last().map(|e| e.0.clone()) == Some(format!("{head}-1"))).then_some(e.len())
    })
    .await;
    let kept = redis.entries("short").await.len() as i64;
    assert!(kept < head, "trimmed: {kept} of {head}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_redis_targets_are_refused_naming_the_field_and_the_password_is_never_shown() {
    let redis = RedisServer::start_with(Some("hunter2-redis")).await;
    let (node, svc) = node_and_service().await;
    let ok = redis.url();
    let long = format!("redis://127.0.0.1/{}", "0".repeat(2000));
    for (body, field) in [
        (
            json!({"redis": {"url": "http://127.0.0.1/", "stream": "s"}}),
            "redis.url",
        ),
        (
            json!({"redis": {"url": "rediss://127.0.0.1:6379", "stream": "s"}}),
            "redis.url",
        ),
        (
            json!({"redis": {"url": "redis://", "stream": "s"}}),
            "redis.url",
        ),
        (json!({"redis": {"url": long, "stream": "s"}}), "redis.url"),
        (json!({"redis": {"url": ok, "stream": ""}}), "redis.stream"),
        (
            json!({"redis": {"url": ok, "stream": "s".repeat(201)}}),
            "redis.stream",
        ),
        (
            json!({"redis": {"url": ok, "stream": "s", "maxlen": 0}}),
            "redis.maxlen",
        ),
        (
            json!({"redis": {"url": ok, "stream": "s"}, "format": "cryptoassets"}),
            "redis",
        ),
        (
            json!({"redis": {"url": ok, "stream": "s"}, "url": "http://127.0.0.1/"}),
            "redis",
        ),
    ] {
        let (status, e) = svc.post("/v1/subscribers", body.clone()).await;
        assert_eq!(status, 422, "{body}: {e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{body}: {message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
    let (status, e) = svc
        .post(
            "/v1/subscribers",
            json!({"redis": {"url": ok, "stream": "s", "db": 1}}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field"));

    // Without WEBHOOK_ALLOW_NETS loopback is refused, by address or by name (resolved,
    // never connected to). Private ranges are the unit tests' (src/delivery/redis.rs), so
    // that no broken guard ever sends anything to a private address from here.
    let mut cfg = config(&fresh_database().await, &node);
    cfg.webhook_allow_nets = Vec::new();
    let strict = Service::start(cfg).await;
    for url in [
        ok.as_str(),
        "redis://10.1.2.3:6379",
        "redis://localhost:6379",
    ] {
        let (status, e) = strict
            .post(
                "/v1/subscribers",
                json!({"redis": {"url": url, "stream": "s"}}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("redis.url: ") && message.contains("not a public address"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
    strict.stop().await;

    // Created, shown, delivered, and failing with a wrong password: never the password.
    let sub = subscribe_redis(&svc, &ok).await;
    let id = sub["id"].as_str().unwrap().to_string();
    assert_eq!(sub["redis"]["stream"], STREAM, "{sub}");
    assert!(
        sub["redis"]["url"].as_str().unwrap().contains("<redacted>"),
        "{sub}"
    );
    assert!(sub.get("url").is_none(), "{sub}");
    let wrong = format!("redis://:wrong-hunter2@127.0.0.1:{}", redis.port);
    let (_, bad) = svc
        .post(
            "/v1/subscribers",
            json!({"redis": {"url": wrong, "stream": "x"}, "start": "beginning"}),
        )
        .await;
    let bad_id = bad["id"].as_str().unwrap().to_string();
    svc.make_events(2).await;
    wait_for_head(&svc, &redis).await;
    let failure = eventually(Duration::from_secs(20), || async {
        let (_, v) = svc.get(&format!("/v1/subscribers/{bad_id}")).await;
        v["last_error"].as_str().map(String::from)
    })
    .await;
    assert!(!failure.is_empty());
    let mut shown = vec![sub, bad];
    for path in [
        "/v1/subscribers".to_string(),
        format!("/v1/subscribers/{id}"),
        format!("/v1/subscribers/{bad_id}"),
        format!("/v1/subscribers/{bad_id}/deliveries"),
    ] {
        let (status, body) = svc.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        shown.push(body);
    }
    for body in shown {
        assert!(!body.to_string().contains("hunter2"), "{body}");
    }
    svc.stop().await;
}
