//! Sick dependencies (issue 13, faults): PostgreSQL restarted on its port while webhooks
//! are being delivered, and the node hung (SIGSTOP) for 20 s. The service process recovers
//! by itself: every event is delivered, in order, the log has no gap, every block is
//! recorded once, and the balance is what a replay of the log gives.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::faults::*;
use common::process::{free_port, wait_healthy, ServiceProcess};
use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Positions 1..=n and `block.connected` once for every height from the first to the last.
fn assert_log_gapless_every_height_once(events: &[Value]) {
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, (1..=events.len() as i64).collect::<Vec<_>>());
    let heights: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "block.connected")
        .map(|e| e["data"]["height"].as_u64().unwrap())
        .collect();
    let first = heights[0];
    assert_eq!(
        heights,
        (first..first + heights.len() as u64).collect::<Vec<_>>(),
        "every height once, in order"
    );
}

/// The service process on `db`, synced, an account watching a fresh address, and a
/// receiver subscribed from the log's beginning: (process, client, address, account,
/// receiver).
async fn watching_and_subscribed(
    db: &str,
    node: &Node,
) -> (ServiceProcess, Service, String, String, Receiver) {
    let process = ServiceProcess::spawn(
        db,
        node,
        free_port(),
        &[
            (
                "WEBHOOK_RETRY_SCHEDULE",
                "0s,200ms,400ms,1s,2s,2s,2s,2s,2s,2s",
            ),
            ("WEBHOOK_TIMEOUT_MS", "2000"),
        ],
    );
    let svc = process.client_from(CLIENT);
    wait_healthy(&svc).await;
    svc.synced_to(node.height()).await;
    let address = foreign_address();
    let account = svc.account_watching(&address).await;
    let r = Receiver::start().await;
    svc.subscribe(&r.url, json!({"start": "beginning"})).await;
    (process, svc, address, account, r)
}

/// By itself, the service process caught up with the node, delivered every event in order
/// and has the balance a replay of its log gives.
async fn assert_recovered(
    process: &mut ServiceProcess,
    svc: &Service,
    node: &Node,
    r: &Receiver,
    account: &str,
) {
    synced_within(svc, node.height(), Duration::from_secs(60)).await;
    let head = svc.head().await;
    eventually(Duration::from_secs(60), || async {
        (r.delivered().last() == Some(&head)).then_some(())
    })
    .await;
    // Each once but for redeliveries of what was in flight at a fault (same webhook-id).
    common::receiver::assert_every_event_in_order(&r.received(), head, usize::MAX);
    assert_log_gapless_every_height_once(&svc.all_events().await);
    assert_eq!(
        svc.balance(account).await,
        svc.replayed_balance(account).await
    );
    assert!(process.alive(), "recovered by itself, not restarted");
}

async fn synced_within(svc: &Service, height: u64, within: Duration) {
    eventually(within, || async {
        let (_, s) = svc.get("/v1/status").await;
        (s["synced_tip"].as_u64() == Some(height)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_on_its_port_mid_delivery_the_service_recovers_and_loses_nothing() {
    let cluster = std::sync::Arc::new(PrivateCluster::start());
    let db = fresh_database_on(&cluster.url).await;
    let node = Node::start();
    let (mut process, svc, address, account, r) = watching_and_subscribed(&db, &node).await;
    r.delay(20); // a slow receiver: the burst below takes seconds
    svc.make_events(120).await;
    eventually(Duration::from_secs(30), || async {
        (r.received().len() >= 30).then_some(())
    })
    .await;

    // Down for 3 s mid-burst; a deposit is mined meanwhile.
    let restarting = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.restart(Duration::from_secs(3)))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.send(&address, "0.5");
    node.mine(1);
    restarting.await.unwrap();
    assert!(
        r.delivered().len() < 120,
        "the restart came before the burst was delivered"
    );
    node.mine(3);
    assert_recovered(&mut process, &svc, &node, &r, &account).await;
    assert_eq!(
        svc.balance(&account).await,
        (50_000_000, 0, 0),
        "credited at 4 confirmations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hung_for_twenty_seconds_the_service_catches_up_by_itself_and_loses_nothing() {
    let node = Node::start();
    let db = fresh_database().await;
    let (mut process, svc, address, account, r) = watching_and_subscribed(&db, &node).await;
    node.send(&address, "0.3");
    node.mine(1);
    svc.synced_to(node.height()).await;

    let hung = Stopped::stop(&node);
    let since = Instant::now();
    // The API keeps recording what needs no node, and says the node is not ready.
    svc.make_events(20).await;
    eventually(Duration::from_secs(10), || async {
        (readyz(&svc).await?.1["node"] == false).then_some(())
    })
    .await;
    let (status, _) = svc.get("/healthz").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(since.elapsed())).await;
    drop(hung);

    node.send(&address, "0.2");
    node.mine(3);
    assert_recovered(&mut process, &svc, &node, &r, &account).await;
    assert_eq!(
        svc.balance(&account).await,
        (50_000_000, 0, 0),
        "0.3 at 4 confirmations and 0.2 at 3, both credited"
    );
    eventually(Duration::from_secs(10), || async {
        (readyz(&svc).await?.0 == 200).then_some(())
    })
    .await;
}
