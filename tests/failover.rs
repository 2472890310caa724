//! Several instances against one database: the chain leader lease and its fencing epoch
//! (src/leadership.rs). A killed leader is replaced within the lease; a leader paused
//! (SIGSTOP) past a takeover appends nothing when it wakes and steps down; the log stays
//! gapless with every height connected exactly once; webhooks arrive in order, only the
//! ones in flight twice; a rolling restart of three instances under a stream of deposits
//! loses nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chainledger::leadership::Lease;
use chainledger::unit_of_work::{Decided, RecordError, UnitOfWork};
use common::process::{free_port, wait_healthy, ServiceProcess};
use common::receiver::{assert_every_event_in_order, Receiver};
use common::*;
use serde_json::Value;

const LEASE_MS: u64 = 1000;
const POLL_MS: u64 = 100;

fn env(instance: &str) -> Vec<(&'static str, String)> {
    vec![
        ("INSTANCE_ID", instance.to_string()),
        ("LEADER_LEASE_MS", LEASE_MS.to_string()),
        ("POLL_INTERVAL_MS", POLL_MS.to_string()),
        ("BITCOIND_ZMQ", "off".to_string()),
    ]
}

async fn status(svc: &Service) -> Option<Value> {
    let r = svc
        .http
        .get(format!("{}/v1/status", svc.base))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Waits until `svc` stored `height` or beyond (blocks keep coming).
async fn reached(svc: &Service, height: u64) {
    eventually(Duration::from_secs(30), || async {
        let s = status(svc).await?;
        (s["synced_tip"].as_u64()? >= height).then_some(())
    })
    .await;
}

async fn leads(svc: &Service) -> bool {
    status(svc).await.is_some_and(|s| s["leader"] == true)
}

/// An account creation's events: something to append.
fn account_events() -> Vec<chainledger::domain::stream::NewEvent> {
    let meta = serde_json::json!({"source": "test"});
    chainledger::domain::account::create(uuid::Uuid::new_v4(), "fenced".into(), 3, None, &meta)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_fenced_by_a_lease_that_was_taken_over_fails_and_appends_nothing() {
    let db = fresh_database().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    chainledger::db::migrate(&pool).await.unwrap();
    let base = UnitOfWork::new(pool.clone(), bitcoin::Network::Regtest);
    let length = Duration::from_millis(400);

    let first = Lease::acquire(&pool, "first", length)
        .await
        .unwrap()
        .expect("free");
    assert!(
        Lease::acquire(&pool, "second", length)
            .await
            .unwrap()
            .is_none(),
        "a live lease is not taken"
    );
    let stale = base.fenced(first.fence());
    stale
        .record(Decided(account_events()))
        .await
        .expect("the holder appends");
    let head = chainledger::store::head(&pool).await.unwrap();

    // The first holder stops renewing (as a paused or dead process does); its lease
    // expires and another takes it with the next epoch.
    let fence = first.fence();
    drop(first);
    let second = eventually(Duration::from_secs(10), || async {
        Lease::acquire(&pool, "second", length).await.unwrap()
    })
    .await;
    assert_eq!(second.fence().epoch, fence.epoch + 1);

    match stale.record(Decided(account_events())).await {
        Err(RecordError::Fenced(epoch)) => assert_eq!(epoch, fence.epoch),
        Err(e) => panic!("expected Fenced, got {e}"),
        Ok(_) => panic!("a stale leader appended"),
    }
    assert_eq!(
        chainledger::store::head(&pool).await.unwrap(),
        head,
        "nothing appended"
    );
    base.fenced(second.fence())
        .record(Decided(account_events()))
        .await
        .expect("the new holder appends");
    // Released: taken at once, no waiting for expiry.
    second.release().await;
    let third = Lease::acquire(&pool, "third", length).await.unwrap();
    assert!(third.is_some(), "a released lease is free at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_a_paused_one_steps_down_without_appending() {
    let node = Arc::new(Node::start());
    let db = fresh_database().await;
    let a = ServiceProcess::spawn(&db, &node, free_port(), &env("a"));
    let a_client = a.client();
    wait_healthy(&a_client).await;
    eventually(Duration::from_secs(20), || async {
        leads(&a_client).await.then_some(())
    })
    .await;
    let b = ServiceProcess::spawn(&db, &node, free_port(), &env("b"));
    let b_client = b.client();
    wait_healthy(&b_client).await;
    assert!(!leads(&b_client).await, "one leader at a time");
    let first = node.height();
    let receiver = Receiver::start().await;
    b_client
        .subscribe(&receiver.url, serde_json::json!({"start": "beginning"}))
        .await;

    let miner = Miner::start(node.clone(), &foreign_address(), Duration::from_millis(150));
    reached(&a_client, first + 3).await;

    // The leader dies: the other follows the node within the lease, a quarter of it and
    // a couple of rounds (LEADER_LEASE_MS + 2 × POLL_INTERVAL_MS + 1 s; with the defaults
    // 2 s and 1 s that is within the 2 × POLL_INTERVAL_MS + 1 s = 3 s, see README).
    drop(a);
    let killed = Instant::now();
    eventually(Duration::from_secs(20), || async {
        leads(&b_client).await.then_some(())
    })
    .await;
    let took_over = killed.elapsed();
    let bound = Duration::from_millis(LEASE_MS + 2 * POLL_MS + 1000);
    assert!(
        took_over < bound,
        "took over after {took_over:?}, bound {bound:?}"
    );
    let lease = status(&b_client).await.unwrap()["leader_lease"].clone();
    assert_eq!(lease["holder"], "b");
    let b_epoch = lease["epoch"].as_i64().unwrap();
    reached(&b_client, node.height()).await;

    // The new leader is paused past a takeover by a restarted instance.
    b.signal("STOP");
    let a2 = ServiceProcess::spawn(&db, &node, free_port(), &env("a2"));
    let a2_client = a2.client();
    wait_healthy(&a2_client).await;
    eventually(Duration::from_secs(20), || async {
        leads(&a2_client).await.then_some(())
    })
    .await;
    reached(&a2_client, node.height()).await;
    let lease = status(&a2_client).await.unwrap()["leader_lease"].clone();
    assert_eq!(lease["holder"], "a2");
    assert!(lease["epoch"].as_i64().unwrap() > b_epoch);

    // It wakes: it must not append, and steps down.
    b.signal("CONT");
    eventually(Duration::from_secs(10), || async {
        let s = status(&b_client).await?;
        (s["leader"] == false).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3 * POLL_MS)).await;
    miner.stop();
    let tip = node.height();
    a2_client.synced_to(tip).await;
    assert!(leads(&a2_client).await && !leads(&b_client).await);
    let events = a2_client.all_events().await;
    let start = events
        .iter()
        .find(|e| e["type"] == "block.connected")
        .and_then(|e| e["data"]["height"].as_u64())
        .unwrap();
    assert_gapless_unique_every_height_once(&events, start, tip);
    // Webhooks: every event, in order; each instance that died or paused may have had one
    // delivery in flight (the leases of subscribers move with the instances).
    let head = events.len() as i64;
    eventually(Duration::from_secs(60), || async {
        (receiver.delivered().last() == Some(&head)).then_some(())
    })
    .await;
    assert_every_event_in_order(&receiver.received(), head, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_instances_under_a_stream_of_deposits_loses_nothing() {
    let node = Arc::new(Node::start());
    let db = fresh_database().await;
    let mut instances: Vec<ServiceProcess> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| ServiceProcess::spawn(&db, &node, free_port(), &env(id)))
        .collect();
    let client = instances[0].client();
    for i in &instances {
        wait_healthy(&i.client()).await;
    }
    // Not the node wallet's own address: its later sends would spend the deposits.
    let address = foreign_address();
    let account = client.account_watching(&address).await;
    let receiver = Receiver::start().await;
    client
        .subscribe(&receiver.url, serde_json::json!({"start": "beginning"}))
        .await;
    let miner = Miner::start(node.clone(), &address, Duration::from_millis(100));

    // Each instance in turn: SIGTERM (it releases what it holds), then started again on
    // its port, while deposits keep coming.
    for (k, id) in ["r1b", "r2b", "r3b"].iter().enumerate() {
        let port = instances[k].port;
        instances[k].terminate(Duration::from_secs(20));
        let survivor = instances[(k + 1) % 3].client();
        let before = status(&survivor).await.unwrap()["synced_tip"]
            .as_u64()
            .unwrap();
        reached(&survivor, before + 2).await; // others kept following
        instances[k] = ServiceProcess::spawn(&db, &node, port, &env(id));
        wait_healthy(&instances[k].client()).await;
    }
    let paid = miner.stop();
    let tip = node.height();
    let client = instances[0].client();
    client.synced_to(tip).await;

    let events = client.all_events().await;
    let start = events
        .iter()
        .find(|e| e["type"] == "block.connected")
        .and_then(|e| e["data"]["height"].as_u64())
        .unwrap();
    assert_gapless_unique_every_height_once(&events, start, tip);
    let seen = events
        .iter()
        .filter(|e| e["type"] == "deposit.seen")
        .count();
    assert_eq!(seen, paid, "every deposit of the stream recorded once");
    let (credited, pending, unconfirmed) = client.balance(&account).await;
    assert_eq!(credited + pending + unconfirmed, paid as i64 * 10_000_000);
    assert_eq!(
        (credited, pending, unconfirmed),
        client.replayed_balance(&account).await
    );
    let head = events.len() as i64;
    eventually(Duration::from_secs(60), || async {
        (receiver.delivered().last() == Some(&head)).then_some(())
    })
    .await;
    // A graceful shutdown finishes or abandons its delivery in flight: at most one repeat
    // per restart.
    assert_every_event_in_order(&receiver.received(), head, 3);
    let leaders = {
        let mut n = 0;
        for i in &instances {
            n += usize::from(leads(&i.client()).await);
        }
        n
    };
    assert_eq!(leaders, 1, "one leader after the restarts");
}
