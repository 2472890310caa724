//! Accounts that derive addresses from a tpub or a descriptor: the addresses equal the
//! `bitcoin` crate's own BIP32 derivation, `derive: true` hands out the next unused one,
//! and a payment to a look-ahead address (never handed out here) is caught and moves the
//! window, so a payment further out is caught too.

mod common;

use std::str::FromStr;
use std::time::Duration;

use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Address, CompressedPublicKey, Network, NetworkKind};
use common::*;
use serde_json::json;

fn reference(xpub: &Xpub, chain: u32, index: u32) -> String {
    let path = [
        ChildNumber::from_normal_idx(chain).unwrap(),
        ChildNumber::from_normal_idx(index).unwrap(),
    ];
    let child = xpub.derive_pub(&Secp256k1::new(), &path).unwrap();
    Address::p2pkh(CompressedPublicKey(child.public_key), Network::Regtest).to_string()
}

fn tpub() -> Xpub {
    let seed: [u8; 32] = rand::random();
    let master = Xpriv::new_master(NetworkKind::Test, &seed).unwrap();
    Xpub::from_priv(&Secp256k1::new(), &master)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_addresses_match_bip32_and_look_ahead_payments_are_caught() {
    let (node, svc) = node_and_service().await;
    let xpub = tpub();
    let (status, account) = svc
        .post(
            "/v1/accounts",
            json!({"label": "shop", "xpub": xpub.to_string(), "lookahead": 5}),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let id = account["id"].as_str().unwrap().to_string();
    assert!(account["descriptor"]
        .as_str()
        .unwrap()
        .starts_with(&format!("pkh({xpub}/0/*)#")));

    let (status, a3) = svc.get(&format!("/v1/accounts/{id}/addresses/3")).await;
    assert_eq!(status, 200, "{a3}");
    assert_eq!(a3["address"], reference(&xpub, 0, 3));
    assert_eq!(
        (a3["watched"].as_bool(), a3["handed_out"].as_bool()),
        (Some(true), Some(false))
    );

    for expected in 0..2u32 {
        let (status, out) = svc
            .post(
                &format!("/v1/accounts/{id}/addresses"),
                json!({"derive": true}),
            )
            .await;
        assert_eq!(status, 201, "{out}");
        assert_eq!(out["index"], expected);
        assert_eq!(out["address"], reference(&xpub, 0, expected));
    }

    // Index 4 was never handed out by us (a shop's own front end did): still caught.
    let far = reference(&xpub, 0, 4);
    let txid = node.send(&far, "0.7");
    node.mine(1);
    svc.synced_to(node.height()).await;
    eventually(Duration::from_secs(10), || async {
        (!svc.deposit_events(&txid).await.is_empty()).then_some(())
    })
    .await;
    // The window moved to 4 + 1 + 5: index 9 is watched now, and a payment to it counts.
    let (_, a9) = svc.get(&format!("/v1/accounts/{id}/addresses/9")).await;
    assert_eq!(a9["watched"], true, "{a9}");
    let further = node.send(a9["address"].as_str().unwrap(), "0.3");
    node.mine(1);
    svc.synced_to(node.height()).await;
    eventually(Duration::from_secs(10), || async {
        (!svc.deposit_events(&further).await.is_empty()).then_some(())
    })
    .await;
    let (_, acc) = svc.get(&format!("/v1/accounts/{id}")).await;
    assert_eq!(acc["handed_out"], 2);
    assert_eq!(acc["addresses"].as_array().unwrap().len(), 15, "{acc}");
    let balance = svc.balance(&id).await;
    assert_eq!(balance.1, 100_000_000, "0.7 + 0.3 pending");
    assert_eq!(balance, svc.replayed_balance(&id).await);

    // A descriptor account on the change chain.
    let (status, d) = svc
        .post(
            "/v1/accounts",
            json!({"label": "change", "descriptor": format!("pkh({xpub}/1/*)")}),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    let did = d["id"].as_str().unwrap();
    let (_, a2) = svc.get(&format!("/v1/accounts/{did}/addresses/2")).await;
    assert_eq!(a2["address"], reference(&xpub, 1, 2));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_descriptors_are_refused_naming_the_field() {
    let (_node, svc) = node_and_service().await;
    let mainnet = "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV";
    let tpub = tpub().to_string();
    for (body, field) in [
        (json!({"label": "a", "xpub": mainnet}), "xpub"),
        (json!({"label": "a", "xpub": "tpubnonsense"}), "xpub"),
        (
            json!({"label": "a", "descriptor": "wpkh(nope)"}),
            "descriptor",
        ),
        (
            json!({"label": "a", "descriptor": format!("pkh({tpub}/0)")}),
            "descriptor",
        ),
        (
            json!({"label": "a", "xpub": tpub, "derivation": "0'/*"}),
            "xpub",
        ),
        (
            json!({"label": "a", "xpub": tpub, "lookahead": 0}),
            "lookahead",
        ),
        (json!({"label": "a", "lookahead": 5}), "xpub"),
    ] {
        let (status, e) = svc.post("/v1/accounts", body.clone()).await;
        assert_eq!(status, 422, "{body}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{body}: {e}"
        );
    }
    let (_, plain) = svc.post("/v1/accounts", json!({"label": "plain"})).await;
    let pid = plain["id"].as_str().unwrap();
    let (status, e) = svc
        .post(
            &format!("/v1/accounts/{pid}/addresses"),
            json!({"derive": true}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("derive:"));
    let (status, e) = svc.get(&format!("/v1/accounts/{pid}/addresses/0")).await;
    assert_eq!(status, 422, "{e}");
    assert!(Xpub::from_str(&tpub).is_ok());
    svc.stop().await;
}
