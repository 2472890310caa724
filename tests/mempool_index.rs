//! The mempool index: a new watched address is matched in memory against the transactions
//! already in the mempool, so the node serves no call per transaction for it (counted by a
//! JSON-RPC proxy between the service and the node); the index itself is filled in
//! batches.

mod common;

use std::time::Duration;

use common::rpc_proxy::RpcProxy;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_watched_address_is_matched_against_the_mempool_without_a_call_per_transaction() {
    let node = Node::start();
    // 300 confirmed coins of the wallet, then 300 mempool transactions spending one each
    // (distinct confirmed coins: a chain of unconfirmed change would hit package limits).
    let to: Vec<String> = (0..300).map(|_| node.new_address("legacy")).collect();
    let outputs: serde_json::Map<String, Value> =
        to.iter().map(|a| (a.clone(), json!(0.01))).collect();
    let fanout: String = node.call("sendmany", &[json!(""), Value::Object(outputs)]);
    node.mine(1);

    let later = foreign_address();
    let mut paid_later = String::new();
    for (i, address) in to.iter().enumerate() {
        let vout = node.vout_paying(&fanout, address);
        let dest = if i == 150 {
            later.clone()
        } else {
            foreign_address()
        };
        let raw = node.signed_spend(&fanout, vout, &dest, 0.0099);
        let txid: String = node.call("sendrawtransaction", &[json!(raw)]);
        if i == 150 {
            paid_later = txid;
        }
    }
    assert_eq!(node.mempool().len(), 300);
    // The service starts with the 300 in the mempool: its first poll indexes them.
    let proxy = RpcProxy::start(&node).await;
    let mut cfg = config(&fresh_database().await, &node);
    cfg.bitcoind_rpc_url = proxy.url.clone();
    // The poll is the path under test (with ZMQ the node would push the transactions).
    cfg.bitcoind_zmq = chainledger::chain::zmq::ZmqMode::Off;
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    let account = svc.account_watching(&node.new_address("legacy")).await;
    // The watcher has indexed them all, fetching them in batches.
    eventually(Duration::from_secs(20), || async {
        (proxy.calls("getrawtransaction") >= 300).then_some(())
    })
    .await;
    let batches = proxy.requests("getrawtransaction");
    assert!(
        batches <= 2,
        "300 transactions fetched in {batches} requests"
    );

    let before = proxy.calls("getrawtransaction");
    let (status, body) = svc
        .post(
            &format!("/v1/accounts/{account}/addresses"),
            json!({"address": later}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let seen = eventually(Duration::from_secs(10), || async {
        let events = svc.deposit_events(&paid_later).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(seen[0], ("deposit.seen".to_string(), 0, false));
    let fetched = proxy.calls("getrawtransaction") - before;
    assert!(
        fetched <= 1,
        "watching one address fetched {fetched} mempool transactions (the one paying it at most)"
    );
    svc.stop().await;
}
