//! Withdrawals through the API: broadcast, tracked to final, the credited balance debited
//! at broadcast; a transaction the node refuses is a 4xx with its reason and appends
//! nothing; posting the same transaction twice gives one withdrawal.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn withdrawal_events(svc: &Service, txid: &str) -> Vec<Value> {
    svc.all_events()
        .await
        .into_iter()
        .filter(|e| e["stream"] == format!("withdrawal-{txid}"))
        .collect()
}

/// A node and the service, and an account with one credited deposit of `btc` to a wallet
/// address: (node, service, account, address, deposit txid, its vout).
async fn credited_deposit(btc: &str) -> (Node, Service, String, String, String, u32) {
    let (node, svc) = node_and_service().await;
    credited_deposit_on(node, svc, btc).await
}

async fn credited_deposit_on(
    node: Node,
    svc: Service,
    btc: &str,
) -> (Node, Service, String, String, String, u32) {
    let w = node.new_address("legacy");
    let account = svc.account_watching(&w).await;
    let deposit = node.send(&w, btc);
    node.mine(3);
    svc.synced_to(node.height()).await;
    let sats = (btc.parse::<f64>().unwrap() * 1e8).round() as i64;
    eventually(Duration::from_secs(10), || async {
        (svc.balance(&account).await.0 == sats).then_some(())
    })
    .await;
    let vout = node.vout_paying(&deposit, &w);
    (node, svc, account, w, deposit, vout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_is_broadcast_tracked_to_final_and_debited() {
    let (node, svc, account, w, deposit, vout) = credited_deposit("2").await;
    let elsewhere = node.new_address("legacy");
    let raw = node.signed_spend(&deposit, vout, &elsewhere, 1.9999);
    let (status, created) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": account, "raw_tx": raw}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let txid = created["txid"].as_str().unwrap().to_string();
    assert_eq!(created["amount_sats"], 200_000_000);
    assert_eq!(created["fee_sats"], 10_000);
    assert_eq!(created["status"], "mempool");
    assert!(node.mempool().contains(&txid), "broadcast to the node");
    assert_eq!(
        svc.balance(&account).await,
        (0, 0, 0),
        "debited at broadcast"
    );
    assert_eq!(svc.replayed_balance(&account).await, (0, 0, 0));

    // The same transaction again: the same withdrawal, nothing appended.
    let head = svc.head().await;
    let (status, again) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": account, "raw_tx": raw}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["txid"], txid.as_str());
    assert_eq!(svc.head().await, head);

    // A conflicting spend of the same deposit, paying a higher fee. Each node's policy:
    // Bitcoin SV refuses it (a 422 with its reason, nothing appended); Bitcoin Core's full
    // RBF accepts it, and the first withdrawal is then replaced by it.
    let conflicting = node.signed_spend(&deposit, vout, &elsewhere, 1.9998);
    let (status, e) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": account, "raw_tx": conflicting}),
        )
        .await;
    let txid = if node.core {
        assert_eq!(status, 201, "{e}");
        let replacing = e["txid"].as_str().unwrap().to_string();
        eventually(Duration::from_secs(10), || async {
            let events = withdrawal_events(&svc, &txid).await;
            let last = events.last()?;
            (last["type"] == "withdrawal.replaced"
                && last["data"]["replaced_by"] == replacing.as_str())
            .then_some(())
        })
        .await;
        replacing
    } else {
        assert_eq!(status, 422, "{e}");
        assert_eq!(e["error"]["code"], "broadcast_rejected");
        assert!(e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("raw_tx: the node refused it:"));
        assert_eq!(svc.head().await, head);
        txid
    };

    // Mined, then every confirmation to final (6 in the tests).
    node.mine(6);
    svc.synced_to(node.height()).await;
    let events = eventually(Duration::from_secs(10), || async {
        let events = withdrawal_events(&svc, &txid).await;
        events
            .iter()
            .any(|e| e["type"] == "withdrawal.final")
            .then_some(events)
    })
    .await;
    let kinds: Vec<(&str, u64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["confirmations"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![("withdrawal.broadcast", 0)];
    expected.extend((1..=6).map(|c| ("withdrawal.confirmed", c)));
    expected.push(("withdrawal.final", 6));
    assert_eq!(kinds, expected);
    assert_eq!(svc.balance(&account).await, (0, 0, 0));
    assert_eq!(svc.replayed_balance(&account).await, (0, 0, 0));

    // Bad input names the field.
    for (body, code) in [
        (json!({"account_id": account, "raw_tx": "zz"}), 422),
        (json!({"account_id": account, "raw_tx": "00"}), 422),
        (
            json!({"account_id": uuid::Uuid::new_v4(), "raw_tx": raw}),
            404,
        ),
    ] {
        let (status, e) = svc.post("/v1/withdrawals", body.clone()).await;
        assert_eq!(status, code, "{body}: {e}");
    }
    let other = svc.account_watching(&node.new_address("legacy")).await;
    let (status, e) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": other, "raw_tx": raw}),
        )
        .await;
    assert_eq!(status, 422, "another account's withdrawal: {e}");
    let unrelated = node.send(&elsewhere, "0.5");
    let u_vout = node.vout_paying(&unrelated, &elsewhere);
    let foreign = node.signed_spend(&unrelated, u_vout, &w, 0.4999);
    let (status, e) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": other, "raw_tx": foreign}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spends no deposit"),
        "{e}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_of_a_deposit_made_elsewhere_is_an_observed_withdrawal() {
    let (node, svc, account, _, deposit, vout) = credited_deposit("1").await;
    // The wallet spends the deposit itself, not through the API.
    let raw = node.signed_spend(&deposit, vout, &node.new_address("legacy"), 0.9999);
    let txid: String = node.call("sendrawtransaction", &[json!(raw)]);
    let events = eventually(Duration::from_secs(10), || async {
        let events = withdrawal_events(&svc, &txid).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0]["type"], "withdrawal.broadcast");
    assert_eq!(events[0]["data"]["source"], "observed");
    assert_eq!(events[0]["data"]["account_id"], account.as_str());
    assert_eq!(events[0]["data"]["amount_sats"], 100_000_000);
    assert_eq!(svc.balance(&account).await.0, 0, "debited when seen");

    node.mine(1);
    svc.synced_to(node.height()).await;
    let events = eventually(Duration::from_secs(10), || async {
        let events = withdrawal_events(&svc, &txid).await;
        (events.len() >= 2).then_some(events)
    })
    .await;
    assert_eq!(events[1]["type"], "withdrawal.confirmed");
    assert_eq!(
        events.len(),
        2,
        "one withdrawal, not a second one from the block"
    );
    assert_eq!(
        svc.balance(&account).await,
        svc.replayed_balance(&account).await
    );
    svc.stop().await;
}

/// `POST /v1/withdrawals` in a task of its own; its status code.
fn post_in_background(svc: &Service, body: Value) -> tokio::task::JoinHandle<u16> {
    let (http, base) = (svc.http.clone(), svc.base.clone());
    tokio::spawn(async move {
        let resp = http
            .post(format!("{base}/v1/withdrawals"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    })
}

/// Times a `POST /v1/accounts`.
async fn timed_account(svc: &Service) -> Duration {
    let started = std::time::Instant::now();
    let (status, body) = svc
        .post("/v1/accounts", json!({"label": "meanwhile"}))
        .await;
    assert_eq!(status, 201, "{body}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_in_flight_to_a_hung_node_holds_up_no_other_command() {
    let (node, svc, account, _, deposit, vout) = credited_deposit("2").await;
    let raw = node.signed_spend(&deposit, vout, &node.new_address("legacy"), 1.9999);
    node.signal("STOP");
    let post = post_in_background(&svc, json!({"account_id": account, "raw_tx": raw}));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!post.is_finished(), "the broadcast waits on the hung node");
    for _ in 0..3 {
        let took = timed_account(&svc).await;
        assert!(
            took < Duration::from_secs(1),
            "POST /v1/accounts took {took:?}"
        );
    }
    node.signal("CONT");
    assert_eq!(post.await.unwrap(), 201);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_appends_while_a_broadcast_hangs() {
    let node = Node::start();
    let proxy = common::rpc_proxy::RpcProxy::start(&node).await;
    let mut cfg = config(&fresh_database().await, &node);
    cfg.bitcoind_rpc_url = proxy.url.clone();
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    let (node, svc, account, _, deposit, vout) = credited_deposit_on(node, svc, "2").await;
    let raw = node.signed_spend(&deposit, vout, &node.new_address("legacy"), 1.9999);

    // The node answers everything but the broadcast, which hangs.
    proxy.hold("sendrawtransaction");
    let post = post_in_background(&svc, json!({"account_id": account, "raw_tx": raw}));
    eventually(Duration::from_secs(10), || async {
        (proxy.calls("sendrawtransaction") == 1).then_some(())
    })
    .await;
    let mined = std::time::Instant::now();
    node.mine(1);
    svc.synced_to(node.height()).await;
    let took = mined.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the block reached the log after {took:?}"
    );
    let took = timed_account(&svc).await;
    assert!(
        took < Duration::from_secs(1),
        "POST /v1/accounts took {took:?}"
    );
    assert!(!post.is_finished(), "the broadcast is still held");

    proxy.release();
    assert_eq!(post.await.unwrap(), 201);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_the_api_did_not_record_is_recorded_by_the_watcher_as_the_same_withdrawal() {
    let (node, svc, account, _, deposit, vout) = credited_deposit("1").await;
    let raw = node.signed_spend(&deposit, vout, &node.new_address("legacy"), 0.9999);
    let tx: bitcoin::Transaction =
        bitcoin::consensus::deserialize(&hex::decode(&raw).unwrap()).unwrap();
    let txid = tx.compute_txid().to_string();
    // What POST /v1/withdrawals leaves behind when it dies between the broadcast and the
    // append: the request, and the transaction in the node's mempool.
    let pool = sqlx::PgPool::connect(svc.database_url.as_deref().unwrap())
        .await
        .unwrap();
    sqlx::query("INSERT INTO withdrawal_requests (txid, account_id) VALUES ($1, $2)")
        .bind(&txid)
        .bind(uuid::Uuid::parse_str(&account).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let sent: String = node.call("sendrawtransaction", &[json!(raw)]);
    assert_eq!(sent, txid);
    let events = eventually(Duration::from_secs(10), || async {
        let events = withdrawal_events(&svc, &txid).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0]["type"], "withdrawal.broadcast");
    assert_eq!(events[0]["data"]["source"], "api", "the request names it");
    assert_eq!(events[0]["data"]["account_id"], account.as_str());
    // The client's retry gets the same withdrawal; nothing more is appended.
    let head = svc.head().await;
    let (status, again) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": account, "raw_tx": raw}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["txid"], txid.as_str());
    assert_eq!(svc.head().await, head);
    assert_eq!(withdrawal_events(&svc, &txid).await.len(), 1);
    svc.stop().await;
}
