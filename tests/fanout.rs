//! Fan-out: many SSE streams and long-poll clients on one service, with different type
//! filters, cursors and limits, some slow, some joining late, all get every event they
//! asked for in order, without a gap or a repeat, while events are appended by several
//! writers at once — the shared tail's batches, and the fall-back reads of the clients it
//! cannot serve, together.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

const FILTERS: [Option<&str>; 4] = [
    None,
    Some("account.created"),
    Some("address.*"),
    Some("account.*,address.watched"),
];

fn matches(filter: Option<&str>, kind: &str) -> bool {
    match filter {
        None => true,
        Some(f) => f.split(',').any(|t| {
            t.strip_suffix(".*").map_or(t == kind, |category| {
                kind.split('.').next() == Some(category)
            })
        }),
    }
}

/// What one client was asked to read, and what it got.
struct Client {
    filter: Option<&'static str>,
    after: i64,
    got: Arc<Mutex<Vec<i64>>>,
}

fn types_query(filter: Option<&str>) -> String {
    filter.map_or(String::new(), |f| format!("&types={f}"))
}

/// An SSE stream from `after`; `slow` reads one event every 20 ms.
fn sse(svc: &Service, c: &Client, slow: bool) -> tokio::task::JoinHandle<()> {
    let (http, got) = (svc.http.clone(), c.got.clone());
    let url = format!(
        "{}/v1/events/stream?after={}{}",
        svc.base,
        c.after,
        types_query(c.filter)
    );
    tokio::spawn(async move {
        let resp = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut events = resp.bytes_stream().eventsource();
        while let Some(e) = events.next().await {
            let e = e.expect("well-formed SSE");
            let data: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(data["position"].to_string(), e.id);
            got.lock().unwrap().push(e.id.parse().unwrap());
            if slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}

/// A long-poll loop from `after` with pages of `limit`; `slow` waits 300 ms between
/// requests (so it falls behind the shared tail and reads for itself).
fn long_poll(svc: &Service, c: &Client, limit: u32, slow: bool) -> tokio::task::JoinHandle<()> {
    let (http, got, base) = (svc.http.clone(), c.got.clone(), svc.base.clone());
    let (mut after, types) = (c.after, types_query(c.filter));
    tokio::spawn(async move {
        loop {
            let url = format!("{base}/v1/events?after={after}&limit={limit}&wait=5{types}");
            let resp = http.get(url).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let page: Value = resp.json().await.unwrap();
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= limit as usize);
            let next_after = page["next_after"].as_i64().unwrap();
            assert!(next_after >= after, "next_after never goes back");
            got.lock()
                .unwrap()
                .extend(events.iter().map(|e| e["position"].as_i64().unwrap()));
            if let Some(last) = events.last() {
                assert!(next_after >= last["position"].as_i64().unwrap());
            }
            after = next_after;
            if slow {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    })
}

/// Appends `n` events, alternately `account.created` and `address.watched`.
async fn append(svc: &Service, n: usize) {
    let mut account = None;
    for i in 0..n {
        match (i % 2, &account) {
            (1, Some(id)) => {
                let (status, body) = svc
                    .post(
                        &format!("/v1/accounts/{id}/addresses"),
                        json!({"address": foreign_address()}),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
            }
            _ => {
                let (status, body) = svc.post("/v1/accounts", json!({"label": "fan"})).await;
                assert_eq!(status, 201, "{body}");
                account = Some(body["id"].as_str().unwrap().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_streams_and_long_polls_get_every_event_in_order_without_gaps() {
    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    cfg.http_max_connections_per_ip = Some(2000);
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    append(&svc, 20).await;
    let start = svc.head().await;
    let cursors = [0, start / 2, start - 1, start];

    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let c = Client {
            filter: FILTERS[i % FILTERS.len()],
            after: cursors[(i / FILTERS.len()) % cursors.len()],
            got: Arc::default(),
        };
        let slow = i % 10 == 9;
        tasks.push(if i % 2 == 0 {
            sse(&svc, &c, slow)
        } else {
            long_poll(&svc, &c, [1, 7, 100][i % 3], slow)
        });
        clients.push(c);
    }
    // Three writers at once (commits of several events interleave), and clients joining
    // while they write, at the head as it is then.
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let svc = Service::at(svc.base.clone());
            tokio::spawn(async move { append(&svc, 40).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = svc.head().await;
    for i in 0..40usize {
        let c = Client {
            filter: FILTERS[i % FILTERS.len()],
            after: joined,
            got: Arc::default(),
        };
        tasks.push(if i % 2 == 0 {
            sse(&svc, &c, false)
        } else {
            long_poll(&svc, &c, 100, false)
        });
        clients.push(c);
    }
    for w in writers {
        w.await.unwrap();
    }

    let log = svc.all_events().await;
    let positions: Vec<i64> = log
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, (1..=positions.len() as i64).collect::<Vec<_>>());
    assert_eq!(positions.len() as i64, start + 120);
    let expected = |c: &Client| -> Vec<i64> {
        log.iter()
            .filter(|e| e["position"].as_i64().unwrap() > c.after)
            .filter(|e| matches(c.filter, e["type"].as_str().unwrap()))
            .map(|e| e["position"].as_i64().unwrap())
            .collect()
    };
    eventually(Duration::from_secs(60), || async {
        clients
            .iter()
            .all(|c| c.got.lock().unwrap().len() >= expected(c).len())
            .then_some(())
    })
    .await;
    // A moment for anything extra (a repeat) to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            *c.got.lock().unwrap(),
            expected(c),
            "client {i} (filter {:?}, after {}) got exactly the events after its cursor, in order",
            c.filter,
            c.after
        );
    }
    for t in tasks {
        assert!(!t.is_finished(), "no client stopped on an error");
        t.abort();
    }
}
