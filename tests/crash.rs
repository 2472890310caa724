//! The service killed with SIGKILL while blocks are being mined, then restarted: every
//! height processed exactly once, no duplicate event, no gap. And killed in the middle of
//! a webhook burst: every event still arrives, in order; what arrives twice is at most the
//! group-commit window of deliveries sent ahead of their journal entries, per kill.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::process::{free_port, wait_healthy, ServiceProcess, NO_ENV};
use common::receiver::Receiver;
use common::*;

/// An account with a fixed id watching `address`, through the unit of work: the same
/// account in every database it is made in.
async fn fixed_account_watching(db: &str, address: &str) {
    use chainledger::domain::account::{self, Account};
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    chainledger::db::migrate(&pool).await.unwrap();
    let id = uuid::Uuid::from_u128(0xcafe);
    let meta = serde_json::json!({"source": "test"});
    let mut events = account::create(id, "fixed".into(), 3, None, &meta).unwrap();
    let script = address
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
        .unwrap()
        .assume_checked()
        .script_pubkey();
    let account = Account {
        id,
        version: 0,
        descriptor: None,
        lookahead: 0,
        watched_to: 0,
        handed_out: 0,
    };
    events.push(account.watch(address.to_string(), script, &meta));
    chainledger::unit_of_work::UnitOfWork::new(pool, bitcoin::Network::Regtest)
        .record(chainledger::unit_of_work::Decided(events))
        .await
        .unwrap();
}

/// The log as the tail shows it, without what depends on when it was written.
fn contents(events: &[serde_json::Value]) -> Vec<(String, String, i64, serde_json::Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["stream"].as_str().unwrap().to_string(),
                e["stream_version"].as_i64().unwrap(),
                e["data"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_killed_mid_batch_resumes_and_writes_what_a_block_at_a_time_follower_writes() {
    let node = Arc::new(Node::start());
    let start = node.height() + 1;
    let address = node.new_address("legacy");
    let (killed_db, reference_db) = (fresh_database().await, fresh_database().await);
    for db in [&killed_db, &reference_db] {
        fixed_account_watching(db, &address).await;
    }
    // 100 blocks, each paying the address, before either service runs.
    for _ in 0..100 {
        node.send(&address, "0.1");
        node.mine(1);
    }
    let tip = node.height();

    // Batches of at most 40 events (a few blocks each), killed three times mid-way.
    let env = [
        ("START_HEIGHT", start.to_string()),
        ("CATCHUP_MAX_EVENTS", "40".to_string()),
    ];
    let port = free_port();
    let pool = sqlx::PgPool::connect(&killed_db).await.unwrap();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM chain_blocks")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    let mut child = ServiceProcess::spawn(&killed_db, &node, port, &env);
    for kill_at in [20, 45, 70] {
        eventually(Duration::from_secs(60), || async {
            (stored().await >= kill_at).then_some(())
        })
        .await;
        child.kill();
        assert!(stored().await < 100, "killed before the catch-up ended");
        child = ServiceProcess::spawn(&killed_db, &node, port, &env);
    }
    let svc = Service::at(format!("http://127.0.0.1:{port}"));
    wait_healthy(&svc).await;
    svc.synced_to(tip).await;
    let events = svc.all_events().await;
    assert_gapless_unique_every_height_once(&events, start, tip);

    // A follower taking one block per observation writes the very same log.
    let mut cfg = config(&reference_db, &node);
    cfg.start_height = Some(start as u32);
    cfg.catchup_max_events = 1;
    let reference = Service::start(cfg).await;
    reference.synced_to(tip).await;
    let expected = reference.all_events().await;
    assert_eq!(
        contents(&events),
        contents(&expected),
        "batched catch-up and one block at a time agree"
    );
    reference.stop().await;
    child.kill();
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
    let mut child = ServiceProcess::spawn(&db, &node, port, NO_ENV);
    let miner = Miner::start(node.clone(), &address, Duration::from_millis(15));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        child.kill();
        child = ServiceProcess::spawn(&db, &node, port, NO_ENV);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    miner.stop();

    let svc = Service::at(format!("http://127.0.0.1:{port}"));
    wait_healthy(&svc).await;
    svc.synced_to(node.height()).await;

    let events = svc.all_events().await;
    let first = events
        .iter()
        .find(|e| e["type"] == "block.connected")
        .and_then(|e| e["data"]["height"].as_u64())
        .unwrap();
    assert_gapless_unique_every_height_once(&events, first, node.height());

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkills_mid_delivery_every_event_arrives_in_order_and_only_in_flight_ones_twice() {
    let node = Node::start();
    let db = fresh_database().await;
    let setup = Service::start(config(&db, &node)).await;
    setup.make_events(300).await;
    setup.stop().await;

    let r = Receiver::start().await;
    r.delay(3); // a burst that lasts about a second
                // Up to WINDOW deliveries ahead of the journal, however long their batch takes.
    const WINDOW: usize = 10;
    let env = [
        ("WEBHOOK_GROUP_COMMIT_ENTRIES", WINDOW.to_string()),
        ("WEBHOOK_GROUP_COMMIT_MS", "1000".to_string()),
    ];
    let port = free_port();
    let mut child = ServiceProcess::spawn(&db, &node, port, &env);
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
        child = ServiceProcess::spawn(&db, &node, port, &env);
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
    // Each step is the next event, or (after a kill) a step back to the oldest delivery
    // not yet journaled: at most WINDOW deliveries are sent again, then in order.
    let mut restarts = Vec::new();
    for w in positions.windows(2) {
        if w[1] != w[0] + 1 {
            let again = w[0] - w[1] + 1;
            assert!(
                (1..=WINDOW as i64).contains(&again),
                "after {} came {}: {positions:?}",
                w[0],
                w[1]
            );
            restarts.push(again);
        }
    }
    assert!(
        restarts.len() <= kills,
        "a redelivery only after a kill: {restarts:?}"
    );
    assert_eq!(positions.first(), Some(&1));
    let mut distinct = positions.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=head).collect::<Vec<_>>(),
        "every event, no gap"
    );
    let again = positions.len() - distinct.len();
    assert!(
        again <= kills * WINDOW,
        "at most the window is delivered again per kill; {again} were ({restarts:?})"
    );
    let mut ids = BTreeMap::new();
    for g in &got {
        let first = ids.entry(g.position).or_insert(&g.id);
        assert_eq!(*first, &g.id, "a redelivery keeps its webhook-id");
    }
    child.kill();
}
