//! Reorgs made with `invalidateblock`, then a longer competing branch mined on top: the
//! compensating events appear, credits are reversed, the deposit re-confirms on the new
//! branch, and the balance always equals a replay of the log.

mod common;

use std::time::Duration;

use common::*;

async fn assert_balance(svc: &Service, account: &str, want: (i64, i64, i64)) {
    assert_eq!(svc.balance(account).await, want, "projected balance");
    assert_eq!(
        svc.replayed_balance(account).await,
        want,
        "replayed balance"
    );
}

async fn wait_for_event(svc: &Service, txid: &str, kind: &str, count: usize) {
    eventually(Duration::from_secs(20), || async {
        let n = svc
            .deposit_events(txid)
            .await
            .iter()
            .filter(|(k, _, _)| k == kind)
            .count();
        (n >= count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_of_depth_one_is_compensated_and_the_deposit_reconfirms() {
    let (node, svc) = node_and_service().await;
    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    let txid = node.send(&address, "2");
    let mined = node.mine(1);
    svc.synced_to(node.height()).await;
    assert_balance(&svc, &account, (0, 200_000_000, 0)).await;

    node.invalidate(&mined[0]);
    wait_for_event(&svc, &txid, "deposit.reorged", 1).await;
    assert_balance(&svc, &account, (0, 0, 200_000_000)).await;

    node.mine(2);
    svc.synced_to(node.height()).await;
    assert_balance(&svc, &account, (0, 200_000_000, 0)).await;

    let kinds: Vec<(String, u64)> = svc
        .deposit_events(&txid)
        .await
        .into_iter()
        .map(|(k, c, _)| (k, c))
        .collect();
    // deposit.seen first (with 0 or 1 confirmations: the mempool watcher may or may not
    // see the transaction before it is mined), then every change.
    assert_eq!(kinds[0].0, "deposit.seen");
    let rest: Vec<(&str, u64)> = kinds[1..].iter().map(|(k, c)| (k.as_str(), *c)).collect();
    assert_eq!(
        rest,
        vec![
            ("deposit.confirmed", 1),
            ("deposit.reorged", 0),
            ("deposit.confirmed", 1),
            ("deposit.confirmed", 2)
        ]
    );

    let chain: Vec<String> = svc
        .all_events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "block.disconnected")
        .map(|e| e["data"]["hash"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(chain, vec![mined[0].clone()]);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_of_depth_three_reverses_a_credit_and_the_balance_returns() {
    let (node, svc) = node_and_service().await;
    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    let txid = node.send(&address, "1");
    let first = node.mine(1)[0].clone();
    node.mine(2);
    svc.synced_to(node.height()).await;
    assert_balance(&svc, &account, (100_000_000, 0, 0)).await;
    let tip_before = node.height();

    node.invalidate(&first);
    assert_eq!(node.height(), tip_before - 3);
    wait_for_event(&svc, &txid, "deposit.credit_reversed", 1).await;
    svc.synced_to(node.height()).await;
    assert_balance(&svc, &account, (0, 0, 100_000_000)).await;

    // The competing branch: longer than the old one; the deposit is mined again.
    node.mine(4);
    svc.synced_to(node.height()).await;
    assert_balance(&svc, &account, (100_000_000, 0, 0)).await;

    let events = svc.deposit_events(&txid).await;
    let after_credit: Vec<&str> = events
        .iter()
        .map(|(k, _, _)| k.as_str())
        .skip_while(|k| *k != "deposit.credited")
        .collect();
    assert_eq!(
        after_credit,
        vec![
            "deposit.credited",
            "deposit.reorged",
            "deposit.credit_reversed",
            "deposit.confirmed",
            "deposit.confirmed",
            "deposit.confirmed",
            "deposit.credited",
            "deposit.confirmed",
        ]
    );
    let disconnected = svc
        .all_events()
        .await
        .into_iter()
        .filter(|e| e["type"] == "block.disconnected")
        .count();
    assert_eq!(disconnected, 3);
    svc.stop().await;
}
