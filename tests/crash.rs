//! The service killed with SIGKILL while blocks are being mined, then restarted: every
//! height processed exactly once, no duplicate event, no gap. And killed in the middle of
//! a webhook burst: every event still arrives, in order, at most the in-flight one twice.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;

/// The service's process; killed (SIGKILL) when dropped, also when a test fails.
struct ServiceProcess(Child);

impl ServiceProcess {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_binary(db: &str, node: &Node, port: u16) -> ServiceProcess {
    ServiceProcess(spawn_child(db, node, port))
}

fn spawn_child(db: &str, node: &Node, port: u16) -> Child {
    Command::new(binary())
        .arg("serve")
        .env("DATABASE_URL", db)
        .env("BITCOIND_RPC_URL", &node.url)
        .env("BITCOIND_RPC_USER", &node.user)
        .env("BITCOIND_RPC_PASSWORD", &node.password)
        .env("NETWORK", "regtest")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("API_TOKEN", TOKEN)
        .env("FINAL_CONFIRMATIONS", "6")
        .env("POLL_INTERVAL_MS", "20")
        .env("WEBHOOK_ALLOW_NETS", "127.0.0.0/8")
        .env("WEBHOOK_RETRY_SCHEDULE", "0s,200ms,400ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the binary")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_mid_sync_every_height_is_processed_once_without_gaps_or_duplicates() {
    let node = Arc::new(Node::start());
    let db = fresh_database().await;
    // An account watching an address that is paid in every block.
    let setup = Service::start(config(&db, &node)).await;
    let address = node.new_address("legacy");
    let account = setup.account_watching(&address).await;
    setup.stop().await;

    let port = free_port();
    let mut child = spawn_binary(&db, &node, port);
    let miner = Miner::start(node.clone(), &address, Duration::from_millis(15));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        child.kill();
        child = spawn_binary(&db, &node, port);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    miner.stop();

    let svc = Service::at(format!("http://127.0.0.1:{port}"));
    wait_healthy(&svc).await;
    svc.synced_to(node.height()).await;

    let events = svc.all_events().await;
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "positions are gapless"
    );
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "no duplicate event id");

    let heights: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "block.connected")
        .map(|e| e["data"]["height"].as_u64().unwrap())
        .collect();
    let first = heights[0];
    assert_eq!(
        heights,
        (first..=node.height()).collect::<Vec<_>>(),
        "every height exactly once, in order"
    );

    // Every deposit stream: versions 0.. without holes, confirmations never going back.
    let mut streams: BTreeMap<&str, Vec<&serde_json::Value>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["stream"].as_str().unwrap().starts_with("deposit-"))
    {
        streams
            .entry(e["stream"].as_str().unwrap())
            .or_default()
            .push(e);
    }
    assert!(streams.len() > 5, "deposits were made during the kills");
    for (stream, evs) in &streams {
        let versions: Vec<i64> = evs
            .iter()
            .map(|e| e["stream_version"].as_i64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (0..evs.len() as i64).collect::<Vec<_>>(),
            "{stream}"
        );
        let confirmed: Vec<u64> = evs
            .iter()
            .filter(|e| e["type"] == "deposit.confirmed")
            .map(|e| e["data"]["confirmations"].as_u64().unwrap())
            .collect();
        assert!(
            confirmed.windows(2).all(|w| w[1] == w[0] + 1),
            "{stream}: {confirmed:?}"
        );
    }
    assert_eq!(
        svc.balance(&account).await,
        svc.replayed_balance(&account).await
    );
    child.kill();
}

async fn wait_healthy(svc: &Service) {
    eventually(Duration::from_secs(30), || async {
        let r = svc
            .http
            .get(format!("{}/healthz", svc.base))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_mid_delivery_every_event_arrives_in_order_and_only_in_flight_ones_twice() {
    let node = Node::start();
    let db = fresh_database().await;
    let setup = Service::start(config(&db, &node)).await;
    setup.make_events(300).await;
    setup.stop().await;

    let r = Receiver::start().await;
    r.delay(3); // a burst that lasts about a second
    let port = free_port();
    let mut child = spawn_binary(&db, &node, port);
    let svc = Service::at(format!("http://127.0.0.1:{port}"));
    wait_healthy(&svc).await;
    svc.subscribe(&r.url, serde_json::json!({"start": "beginning"}))
        .await;
    let kills = 3;
    for k in 1..=kills {
        eventually(Duration::from_secs(30), || async {
            (r.received().len() >= k * 60).then_some(())
        })
        .await;
        child.kill();
        child = spawn_binary(&db, &node, port);
        wait_healthy(&svc).await;
    }
    let head = svc.head().await;
    eventually(Duration::from_secs(60), || async {
        (r.delivered().last() == Some(&head)).then_some(())
    })
    .await;

    let got = r.received();
    let positions: Vec<i64> = got.iter().map(|g| g.position).collect();
    assert!(got.iter().all(|g| g.answered == 200));
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "in order: {positions:?}"
    );
    let mut distinct = positions.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=head).collect::<Vec<_>>(),
        "every event, no gap"
    );
    let twice = positions.len() - distinct.len();
    assert!(
        twice <= kills,
        "only the event in flight at each kill may arrive twice; {twice} did"
    );
    for w in got.windows(2).filter(|w| w[0].position == w[1].position) {
        assert_eq!(w[0].id, w[1].id, "a redelivery keeps its webhook-id");
    }
    child.kill();
}
