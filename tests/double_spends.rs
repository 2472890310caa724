//! Double spends built with two regtest nodes that never connect (the SV node has no
//! replace-by-fee): the followed node holds the deposit; the other spends the same coin
//! differently and mines it; its blocks are then submitted to the followed node.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn stream_events(svc: &Service, txid: &str) -> Vec<Value> {
    svc.all_events()
        .await
        .into_iter()
        .filter(|e| e["data"]["txid"].as_str() == Some(txid))
        .collect()
}

/// The service on `a`, synced, with an account watching a fresh address of `a`'s wallet:
/// (service, account, address).
async fn watching(a: &Node) -> (Service, String, String) {
    let db = fresh_database().await;
    let svc = Service::start(config(&db, a)).await;
    svc.synced_to(a.height()).await;
    let w = a.new_address("legacy");
    let account = svc.account_watching(&w).await;
    (svc, account, w)
}

async fn wait_for(svc: &Service, txid: &str, kind: &str) -> Vec<Value> {
    eventually(Duration::from_secs(20), || async {
        let events = stream_events(svc, txid).await;
        events.iter().any(|e| e["type"] == kind).then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mempool_deposit_double_spent_by_a_mined_transaction_is_replaced() {
    let a = Node::start();
    let b = Node::start_unmined();
    let (coin, wif) = a.coin_for_key(1.0);
    a.copy_blocks_to(&b, 1, a.height());
    let (svc, account, w) = watching(&a).await;

    let t1 = a.spend_with_key(&coin, &wif, &w, 0.9999);
    wait_for(&svc, &t1, "deposit.seen").await;
    assert_eq!(svc.balance(&account).await, (0, 0, 99_990_000));

    let elsewhere = b.new_address("legacy");
    let t2 = b.spend_with_key(&coin, &wif, &elsewhere, 0.9998);
    b.mine(1);
    b.copy_blocks_to(&a, a.height() + 1, b.height());
    assert_eq!(a.best_hash(), b.best_hash());
    svc.synced_to(a.height()).await;

    let events = wait_for(&svc, &t1, "deposit.replaced").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["deposit.seen", "deposit.replaced"]);
    assert_eq!(events[1]["data"]["replaced_by"], t2.as_str());
    assert_eq!(events[1]["data"]["status"], "replaced");
    assert_eq!(svc.balance(&account).await, (0, 0, 0), "balance back");
    assert_eq!(svc.replayed_balance(&account).await, (0, 0, 0));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credited_deposit_reorged_out_and_double_spent_on_the_new_branch() {
    let a = Node::start();
    let b = Node::start_unmined();
    let (coin, wif) = a.coin_for_key(1.0);
    let fork = a.height();
    a.copy_blocks_to(&b, 1, fork);
    let (svc, account, w) = watching(&a).await;

    let t1 = a.spend_with_key(&coin, &wif, &w, 0.9999);
    a.mine(3);
    svc.synced_to(a.height()).await;
    wait_for(&svc, &t1, "deposit.credited").await;
    assert_eq!(svc.balance(&account).await, (99_990_000, 0, 0));

    // The other node's branch: the same coin to elsewhere, and two blocks more.
    let elsewhere = b.new_address("legacy");
    let t2 = b.spend_with_key(&coin, &wif, &elsewhere, 0.9998);
    b.mine(5);
    b.copy_blocks_to(&a, fork + 1, fork + 5);
    assert_eq!(a.best_hash(), b.best_hash(), "the followed node reorged");
    svc.synced_to(a.height()).await;

    let events = wait_for(&svc, &t1, "deposit.replaced").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let tail = &kinds[kinds.len() - 3..];
    assert_eq!(
        tail,
        [
            "deposit.reorged",
            "deposit.credit_reversed",
            "deposit.replaced"
        ],
        "{kinds:?}"
    );
    assert_eq!(events.last().unwrap()["data"]["replaced_by"], t2.as_str());
    assert_eq!(svc.balance(&account).await, (0, 0, 0));
    assert_eq!(svc.replayed_balance(&account).await, (0, 0, 0));
    let vout = events[0]["data"]["vout"].as_u64().unwrap();
    let (_, d) = svc.get(&format!("/v1/deposits/{t1}/{vout}")).await;
    assert_eq!(d["status"], "replaced", "{d}");
    svc.stop().await;
}
