//! A deposit's whole life against a real node: mempool → each confirmation → credited →
//! final, one event per confirmation change, balances right at every step.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_is_seen_confirmed_credited_and_final_with_one_event_per_change() {
    let (node, svc) = node_and_service().await;

    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    let txid = node.send(&address, "1.5");
    let vout = node.vout_paying(&txid, &address);

    let seen = eventually(Duration::from_secs(20), || async {
        let (status, d) = svc.get(&format!("/v1/deposits/{txid}/{vout}")).await;
        (status == 200).then_some(d)
    })
    .await;
    assert_eq!(seen["status"], "mempool");
    assert_eq!(seen["amount"], "1.50000000");
    assert_eq!(svc.balance(&account).await, (0, 0, 150_000_000));

    // (credited, pending, unconfirmed) after each block.
    let expected = [
        (0, 150_000_000, 0),
        (0, 150_000_000, 0),
        (150_000_000, 0, 0),
        (150_000_000, 0, 0),
        (150_000_000, 0, 0),
        (150_000_000, 0, 0),
        (150_000_000, 0, 0),
    ];
    for want in expected {
        node.mine(1);
        svc.synced_to(node.height()).await;
        assert_eq!(svc.balance(&account).await, want);
        assert_eq!(svc.replayed_balance(&account).await, want);
    }

    let events = svc.deposit_events(&txid).await;
    let kinds: Vec<(&str, u64)> = events.iter().map(|(k, c, _)| (k.as_str(), *c)).collect();
    assert_eq!(
        kinds,
        vec![
            ("deposit.seen", 0),
            ("deposit.confirmed", 1),
            ("deposit.confirmed", 2),
            ("deposit.confirmed", 3),
            ("deposit.credited", 3),
            ("deposit.confirmed", 4),
            ("deposit.confirmed", 5),
            ("deposit.confirmed", 6),
            ("deposit.final", 6),
        ]
    );
    let (_, d) = svc.get(&format!("/v1/deposits/{txid}/{vout}")).await;
    assert_eq!(d["status"], "final");
    assert_eq!(d["confirmations"], 6);

    let (_, totals) = svc.get(&format!("/v1/addresses/{address}")).await;
    assert_eq!(totals["confirmed"], "1.50000000");
    assert_eq!(totals["credited"], "1.50000000");
    assert_eq!(totals["unconfirmed"], "0.00000000");
    svc.stop().await;
}

/// Every script type the issue names, where the node can pay it: base58 P2PKH everywhere;
/// P2SH-P2WPKH, P2WPKH and P2TR on Bitcoin Core (BITCOIND=/path/to/bitcoind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_to_every_address_type_the_node_can_pay_are_found_in_blocks() {
    let (node, svc) = node_and_service().await;
    let kinds: &[&str] = if node.core {
        &["legacy", "p2sh-segwit", "bech32", "bech32m"]
    } else {
        &["legacy"]
    };
    let mut paid = Vec::new();
    for kind in kinds {
        let address = node.new_address(kind);
        let account = svc.account_watching(&address).await;
        let txid = node.send(&address, "0.25");
        paid.push((account, txid));
    }
    node.mine(1);
    svc.synced_to(node.height()).await;
    for (account, txid) in paid {
        let events = svc.deposit_events(&txid).await;
        assert!(
            events
                .iter()
                .any(|(k, c, _)| k == "deposit.confirmed" && *c == 1),
            "{txid}: {events:?}"
        );
        assert_eq!(svc.balance(&account).await, (0, 25_000_000, 0));
    }
    if !node.core {
        eprintln!(
            "note: segwit and taproot deposits are exercised when BITCOIND names a Bitcoin Core"
        );
    }
    svc.stop().await;
}
