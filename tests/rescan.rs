//! A rescan from an old height, started while new blocks keep arriving (paying the same
//! address): the past deposits appear with their real confirmation counts, every payment
//! is one deposit exactly once (rescan and follower meet without gap or overlap), and the
//! balance is what was paid.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_finds_past_deposits_while_new_blocks_arrive() {
    let node = Arc::new(Node::start());
    // A key no wallet holds: the node cannot spend what the address receives.
    let address = foreign_address();
    // Payments made before anyone watched the address: (txid, height of its block).
    let mut past = Vec::new();
    let from = node.height() + 1;
    for _ in 0..3 {
        let txid = node.send(&address, "0.2");
        node.mine(3);
        past.push((txid, node.height() - 2));
    }
    node.mine(4);

    let db = fresh_database().await;
    let svc = Service::start(config(&db, &node)).await;
    svc.synced_to(node.height()).await;
    let (_, account) = svc.post("/v1/accounts", json!({"label": "late"})).await;
    let account = account["id"].as_str().unwrap().to_string();

    let before_miner = node.height();
    let miner = Miner::start(node.clone(), &address, Duration::from_millis(40));
    let (status, watched) = svc
        .post(
            &format!("/v1/accounts/{account}/addresses"),
            json!({"address": address, "rescan_from_height": from}),
        )
        .await;
    assert_eq!(status, 201, "{watched}");
    let rescan = watched["rescan"]["id"].as_i64().unwrap();
    assert_eq!(watched["rescan"]["from_height"], from);
    let done: Value = eventually(Duration::from_secs(60), || async {
        let (_, s) = svc.get("/v1/status").await;
        s["rescans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == rescan && r["status"] != "running")
            .cloned()
    })
    .await;
    // At least two blocks arrived while the rescan ran or since: the follower has its share.
    eventually(Duration::from_secs(20), || async {
        (node.height() >= before_miner + 2).then_some(())
    })
    .await;
    let paid = miner.stop();
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        done["next_height"].as_i64(),
        done["to_height"].as_i64().map(|t| t + 1)
    );
    node.mine(1);
    svc.synced_to(node.height()).await;
    let tip = node.height();

    // The past deposits, with the confirmations the chain gives them.
    for (txid, height) in &past {
        let vout = node.vout_paying(txid, &address);
        let (status, d) = svc.get(&format!("/v1/deposits/{txid}/{vout}")).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["block_height"].as_u64(), Some(*height));
        let expected = tip - height + 1;
        let got = d["confirmations"].as_u64().unwrap();
        if d["status"] == "final" {
            assert!(got >= 6 && got <= expected, "{d}");
        } else {
            assert_eq!(got, expected, "{d}");
        }
    }

    // Every payment once: one deposit.seen per stream, and the amounts add up to what the
    // node says the address received.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in svc.all_events().await {
        if e["type"] == "deposit.seen" && e["data"]["address"] == address.as_str() {
            *seen
                .entry(e["stream"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(paid > 0, "blocks arrived during the rescan");
    assert_eq!(seen.len(), past.len() + paid, "every payment, past and new");
    let (credited, pending, unconfirmed) = svc.balance(&account).await;
    assert_eq!(unconfirmed, 0);
    assert_eq!(
        credited + pending,
        past.len() as i64 * 20_000_000 + paid as i64 * 10_000_000
    );
    assert_eq!(
        svc.balance(&account).await,
        svc.replayed_balance(&account).await
    );

    // Bad input names the field.
    let other = node.new_address("legacy");
    let (status, e) = svc
        .post(
            &format!("/v1/accounts/{account}/addresses"),
            json!({"address": other, "rescan_from_height": tip + 10}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("rescan_from_height:"));
    svc.stop().await;
}
