//! ZMQ push from the node: with polling every 5 s, a mempool deposit and a mined block are
//! in the log within a second; the node restarted (its sockets closed and opened again),
//! ZMQ resumes; with ZMQ off, polling alone delivers everything.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Waits until `/v1/status` says ZMQ is connected; its `zmq` object.
async fn zmq_connected(svc: &Service) -> Value {
    eventually(Duration::from_secs(30), || async {
        let (_, s) = svc.get("/v1/status").await;
        (s["zmq"]["connected"] == true).then(|| s["zmq"].clone())
    })
    .await
}

/// How long until an event of `kind` naming `txid` (or any, without one) is in the log.
async fn time_until(svc: &Service, kind: &str, txid: Option<&str>, since: Instant) -> Duration {
    eventually(Duration::from_secs(10), || async {
        let found = svc.all_events().await.iter().any(|e| {
            e["type"] == kind && txid.is_none_or(|t| e["data"]["txid"].as_str() == Some(t))
        });
        found.then(|| since.elapsed())
    })
    .await
}

async fn slow_polling_service(node: &Node) -> Service {
    let mut cfg = config(&fresh_database().await, node);
    cfg.poll_interval_ms = 5000;
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_zmq_a_mempool_deposit_and_a_block_reach_the_log_within_a_second() {
    let node = Node::start();
    let svc = slow_polling_service(&node).await;
    let zmq = zmq_connected(&svc).await;
    assert_eq!(zmq["mode"], "auto");
    let endpoints: Vec<&str> = zmq["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        endpoints.iter().any(|e| e.starts_with("hashblock ")),
        "{endpoints:?}"
    );
    assert!(
        endpoints.iter().any(|e| e.starts_with("rawtx ")),
        "{endpoints:?}"
    );

    let address = node.new_address("legacy");
    svc.account_watching(&address).await;
    // The poll runs every 5 s: within a second means the node's push did it.
    let sent = Instant::now();
    let txid = node.send(&address, "0.3");
    let took = time_until(&svc, "deposit.seen", Some(&txid), sent).await;
    assert!(took < Duration::from_secs(1), "deposit.seen after {took:?}");
    let mined = Instant::now();
    node.mine(1);
    let took = time_until(&svc, "deposit.confirmed", Some(&txid), mined).await;
    assert!(
        took < Duration::from_secs(1),
        "deposit.confirmed after {took:?}"
    );
    let metrics = reqwest::get(format!("{}/metrics", svc.base)).await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("chainledger_zmq_connected 1"), "{text}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_node_restarts_zmq_resumes() {
    let node = Node::start();
    let svc = slow_polling_service(&node).await;
    zmq_connected(&svc).await;
    let address = node.new_address("legacy");
    svc.account_watching(&address).await;

    node.restart(&[]);
    // The socket closed with the node and connected again: a block is in the log within a
    // second, not at the next 5 s poll.
    zmq_connected(&svc).await;
    let mined = Instant::now();
    node.mine(1);
    svc.synced_to(node.height()).await;
    let took = mined.elapsed();
    assert!(took < Duration::from_secs(1), "block after {took:?}");
    let sent = Instant::now();
    let txid = node.send(&address, "0.2");
    let took = time_until(&svc, "deposit.seen", Some(&txid), sent).await;
    assert!(took < Duration::from_secs(1), "deposit.seen after {took:?}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_zmq_off_polling_alone_delivers_everything() {
    let node = Node::start();
    let mut cfg = config(&fresh_database().await, &node);
    cfg.bitcoind_zmq = chainledger::chain::zmq::ZmqMode::Off;
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    let (_, status) = svc.get("/v1/status").await;
    assert_eq!(status["zmq"]["mode"], "off");
    assert_eq!(status["zmq"]["connected"], false);
    let address = node.new_address("legacy");
    svc.account_watching(&address).await;
    let txid = node.send(&address, "0.4");
    time_until(&svc, "deposit.seen", Some(&txid), Instant::now()).await;
    node.mine(1);
    time_until(&svc, "deposit.confirmed", Some(&txid), Instant::now()).await;
    svc.synced_to(node.height()).await;
    svc.stop().await;
}
