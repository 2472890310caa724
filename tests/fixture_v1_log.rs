//! Writes `tests/fixtures/v1-log.sql`: a database (log, projections, delivery journal)
//! written by this version of the code, so later versions can prove that they still
//! verify its hash chain and rebuild it to identical projections
//! (`tests/log_compatibility.rs`). Run by hand, with a fresh database URL:
//!
//!   FIXTURE_DATABASE_URL=postgres://…/empty cargo test --test fixture_v1_log -- --ignored
//!
//! and then `pg_dump --no-owner --no-privileges` of that database into the fixture.
//! Every event type of the v1 catalogue occurs in it.

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use chainledger::chain::lookahead;
use chainledger::domain::descriptor::AccountDescriptor;
use chainledger::domain::events::{self, NewEvent};
use chainledger::domain::ledger::{
    BlockRef, DepositStatus, FoundOutput, Ledger, Watch, Withdrawal,
};
use chainledger::domain::Sats;
use chainledger::projections::cursors::{self, Entry, Outcome};
use chainledger::{projections, store};
use serde_json::json;
use sha2::Digest;
use sqlx::PgPool;
use uuid::Uuid;

const FINAL: u32 = 6;

fn hex32(tag: &str) -> String {
    hex::encode(sha2::Sha256::digest(tag.as_bytes()))
}

fn address(tag: &str) -> (String, String) {
    let secp = Secp256k1::new();
    let key =
        bitcoin::secp256k1::SecretKey::from_slice(&sha2::Sha256::digest(tag.as_bytes())).unwrap();
    let public = bitcoin::CompressedPublicKey(key.public_key(&secp));
    let a = bitcoin::Address::p2pkh(public, bitcoin::Network::Regtest);
    (a.to_string(), hex::encode(a.script_pubkey().as_bytes()))
}

fn block(height: u32, branch: &str) -> BlockRef {
    BlockRef {
        height,
        hash: hex32(&format!("{branch}{height}")),
        prev_hash: if height == 101 || (branch == "b" && height == 103) {
            hex32(&format!("a{}", height - 1))
        } else {
            hex32(&format!("{branch}{}", height - 1))
        },
        time: 1_795_000_000 + height * 600,
    }
}

struct Fixture {
    pool: PgPool,
}

impl Fixture {
    async fn append(&self, events: Vec<NewEvent>) {
        let mut tx = self.pool.begin().await.unwrap();
        let stored = store::append(&mut tx, &events).await.unwrap();
        projections::apply(&mut tx, &stored).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn observe(&self, source: &str, f: impl FnOnce(&mut Ledger)) {
        let mut tx = self.pool.begin().await.unwrap();
        store::lock(&mut tx).await.unwrap();
        let loaded = projections::read::deposits_for_observation(&mut tx, &[], &[])
            .await
            .unwrap();
        let withdrawals = projections::read::withdrawals_for_observation(&mut tx, &[])
            .await
            .unwrap();
        let chain: Option<i32> = sqlx::query_scalar("SELECT stream_version FROM chain_state")
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
        let mut ledger = Ledger::new(FINAL, chain, loaded, json!({"source": source}))
            .with_withdrawals(withdrawals);
        f(&mut ledger);
        let mut events = ledger.into_events();
        events.extend(
            lookahead::extend_for_deposits(&mut tx, &events, bitcoin::Network::Regtest)
                .await
                .unwrap(),
        );
        let stored = store::append(&mut tx, &events).await.unwrap();
        projections::apply(&mut tx, &stored).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// Disconnects by hash (the stored deposits of those blocks must be loaded too).
    async fn reorg(&self, disconnect: Vec<BlockRef>, connect: Vec<BlockRef>, tip: u32) {
        let mut tx = self.pool.begin().await.unwrap();
        store::lock(&mut tx).await.unwrap();
        let hashes: Vec<String> = disconnect.iter().map(|b| b.hash.clone()).collect();
        let loaded = projections::read::deposits_for_observation(&mut tx, &hashes, &[])
            .await
            .unwrap();
        let withdrawals = projections::read::withdrawals_for_observation(&mut tx, &hashes)
            .await
            .unwrap();
        let chain: Option<i32> = sqlx::query_scalar("SELECT stream_version FROM chain_state")
            .fetch_optional(&mut *tx)
            .await
            .unwrap();
        let mut ledger = Ledger::new(FINAL, chain, loaded, json!({"source": "follower"}))
            .with_withdrawals(withdrawals);
        for b in &disconnect {
            ledger.disconnect_block(b);
        }
        for b in &connect {
            ledger.connect_block(b, vec![]);
        }
        ledger.settle(tip);
        let events = ledger.into_events();
        let stored = store::append(&mut tx, &events).await.unwrap();
        projections::apply(&mut tx, &stored).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn found(txid: &str, vout: u32, sats: u64, watch: &Watch, inputs: Vec<String>) -> FoundOutput {
    FoundOutput {
        txid: txid.to_string(),
        vout,
        value: Sats(sats),
        watch: watch.clone(),
        inputs,
    }
}

fn withdrawal(account: Uuid, txid: &str, input: &str, sats: u64, source: &str) -> Withdrawal {
    Withdrawal {
        account_id: account,
        txid: txid.to_string(),
        amount: Sats(sats).to_btc_string(),
        amount_sats: sats,
        fee: Some(Sats(1000).to_btc_string()),
        fee_sats: Some(1000),
        inputs: vec![input.to_string()],
        confirmations: 0,
        block_hash: None,
        block_height: None,
        status: DepositStatus::Mempool,
        source: source.to_string(),
    }
}

#[tokio::test]
#[ignore = "writes the v1 fixture; run by hand"]
async fn write_the_v1_fixture() {
    let url = std::env::var("FIXTURE_DATABASE_URL").expect("FIXTURE_DATABASE_URL");
    let pool = PgPool::connect(&url).await.unwrap();
    chainledger::db::migrate(&pool).await.unwrap();
    let fx = Fixture { pool: pool.clone() };
    let api = json!({"source": "api"});

    // Account A: plain, two addresses, credit at 3.
    let a = Uuid::from_u128(0xa11ce);
    let (a1, a1_spk) = address("a1");
    let (a2, a2_spk) = address("a2");
    fx.append(vec![
        NewEvent {
            stream: events::account_stream(a),
            expected_version: None,
            kind: events::ACCOUNT_CREATED,
            data: json!({"account_id": a, "label": "alice", "credit_confirmations": 3}),
            metadata: api.clone(),
        },
        NewEvent {
            stream: events::account_stream(a),
            expected_version: Some(0),
            kind: events::ADDRESS_WATCHED,
            data: json!({"account_id": a, "address": a1, "script_pubkey": a1_spk}),
            metadata: api.clone(),
        },
        NewEvent {
            stream: events::account_stream(a),
            expected_version: Some(1),
            kind: events::ADDRESS_WATCHED,
            data: json!({"account_id": a, "address": a2, "script_pubkey": a2_spk}),
            metadata: api.clone(),
        },
    ])
    .await;

    // Account B: derived (p2wpkh from a tpub), credit at 2, look-ahead 3, index 0 handed out.
    let b = Uuid::from_u128(0xb0b);
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(bitcoin::NetworkKind::Test, &[7u8; 32]).unwrap();
    let tpub = Xpub::from_priv(&secp, &master).to_string();
    let desc = AccountDescriptor::from_xpub(&tpub, None, Some("p2wpkh"), bitcoin::Network::Regtest)
        .unwrap();
    let mut batch = vec![NewEvent {
        stream: events::account_stream(b),
        expected_version: None,
        kind: events::ACCOUNT_CREATED,
        data: json!({"account_id": b, "label": "bob", "credit_confirmations": 2,
                     "descriptor": desc.canonical(), "lookahead": 3}),
        metadata: api.clone(),
    }];
    let (window, version) = lookahead::window_events(b, &desc, 0, 3, 0, &api).unwrap();
    batch.extend(window);
    let b0 = desc.derive(0).unwrap();
    batch.push(NewEvent {
        stream: events::account_stream(b),
        expected_version: Some(version),
        kind: events::ADDRESS_HANDED_OUT,
        data: json!({"account_id": b, "address": b0.address, "index": 0}),
        metadata: api.clone(),
    });
    fx.append(batch).await;

    let wa1 = Watch {
        account_id: a,
        address: a1.clone(),
        credit_confirmations: 3,
    };
    let wa2 = Watch {
        account_id: a,
        address: a2.clone(),
        credit_confirmations: 3,
    };
    let b2 = desc.derive(2).unwrap();
    let wb2 = Watch {
        account_id: b,
        address: b2.address.clone(),
        credit_confirmations: 2,
    };
    let (d1, d2, d3, d4, d5, d6) = (
        hex32("d1"),
        hex32("d2"),
        hex32("d3"),
        hex32("d4"),
        hex32("d5"),
        hex32("d6"),
    );
    let input = |tag: &str| format!("{}:0", hex32(tag));

    // The chain starts at 101.
    fx.observe("follower", |l| {
        l.connect_block(&block(101, "a"), vec![]);
        l.settle(101);
    })
    .await;
    // D1 seen in the mempool.
    fx.observe("mempool", |l| {
        l.seen_in_mempool(vec![found(&d1, 0, 150_000_000, &wa1, vec![input("x1")])]);
    })
    .await;
    // Block 102: D1 mined, D2 first seen in it, D3 pays B's index 2 (look-ahead grows).
    fx.observe("follower", |l| {
        let b102 = block(102, "a");
        l.connect_block(
            &b102,
            vec![
                found(&d1, 0, 150_000_000, &wa1, vec![input("x1")]),
                found(&d2, 1, 70_000_000, &wa2, vec![input("x2")]),
                found(&d3, 0, 20_000_000, &wb2, vec![input("x3")]),
            ],
        );
        l.settle(102);
    })
    .await;
    // Block 103 pays D6, which is credited at 105 and reorged out with 103..105.
    fx.observe("follower", |l| {
        l.connect_block(
            &block(103, "a"),
            vec![found(&d6, 2, 10_000_000, &wa1, vec![input("x6")])],
        );
        l.settle(103);
    })
    .await;
    // D4 seen, then replaced by a conflicting mempool spend; D5 seen, later dropped.
    fx.observe("mempool", |l| {
        l.seen_in_mempool(vec![
            found(&d4, 0, 5_000_000, &wa1, vec![input("x4")]),
            found(&d5, 0, 6_000_000, &wa2, vec![input("x5")]),
        ]);
    })
    .await;
    fx.observe("mempool", |l| l.spent(&hex32("conflict4"), &input("x4")))
        .await;
    // W1 (api) spends D2; W3 (api) spends D3 and is dropped.
    let w1 = hex32("w1");
    let w3 = hex32("w3");
    fx.observe("api", |l| {
        l.broadcast(withdrawal(a, &w1, &format!("{d2}:1"), 70_000_000, "api"))
    })
    .await;
    fx.observe("api", |l| {
        l.broadcast(withdrawal(b, &w3, &format!("{d3}:0"), 20_000_000, "api"))
    })
    .await;
    fx.observe("follower", |l| {
        l.connect_block(&block(104, "a"), vec![]);
        l.settle(104);
    })
    .await;
    fx.observe("follower", |l| {
        let b105 = block(105, "a");
        l.connect_block(&b105, vec![]);
        l.spent_in_block(&w1, &format!("{d2}:1"), &b105);
        l.settle(105);
    })
    .await;
    fx.observe("mempool", |l| l.dropped(&[(d5.clone(), 0)]))
        .await;
    fx.observe("mempool", |l| l.dropped_withdrawals(&[w3.clone()]))
        .await;

    // A reorg of depth 3: 103..105 leave, 103'..106' come; W1 is put back in the mempool,
    // then replaced by a conflicting spend mined in 106'.
    fx.reorg(
        vec![block(105, "a"), block(104, "a"), block(103, "a")],
        vec![block(103, "b"), block(104, "b"), block(105, "b")],
        105,
    )
    .await;
    fx.observe("follower", |l| {
        let b106 = block(106, "b");
        l.connect_block(&b106, vec![]);
        l.spent_in_block(&hex32("conflict-w1"), &format!("{d2}:1"), &b106);
        l.settle(106);
    })
    .await;
    // The chain gets shorter (invalidateblock): confirmations go down.
    fx.reorg(vec![block(106, "b")], vec![], 105).await;

    // W2: observed, mined, final.
    let w2 = hex32("w2");
    fx.observe("mempool", |l| {
        l.broadcast(withdrawal(
            a,
            &w2,
            &format!("{d1}:0"),
            150_000_000,
            "observed",
        ))
    })
    .await;
    for h in 106..=112 {
        fx.observe("follower", |l| {
            let bh = block(h, "c");
            let bh = BlockRef {
                prev_hash: if h == 106 {
                    block(105, "b").hash
                } else {
                    bh.prev_hash
                },
                ..bh
            };
            l.connect_block(&bh, vec![]);
            if h == 106 {
                l.spent_in_block(&w2, &format!("{d1}:0"), &bh);
            }
            l.settle(h);
        })
        .await;
    }

    // The delivery journal: two subscribers, attempts, a replay, an enable, a delete.
    for (n, id) in [Uuid::from_u128(0x5b1), Uuid::from_u128(0x5b2)]
        .into_iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO subscribers (subscriber_id, url, format, secret, start_position)
             VALUES ($1, $2, 'standard', 'whsec_fixture', 0)",
        )
        .bind(id)
        .bind(format!("http://127.0.0.1:9/hook{n}"))
        .execute(&pool)
        .await
        .unwrap();
        let attempt = |position: i64, outcome: Outcome, attempt: i32| Entry::Attempt {
            epoch: 0,
            position,
            event_id: Uuid::nil(),
            attempt,
            status_code: Some(if outcome == Outcome::Delivered {
                200
            } else {
                500
            }),
            error: (outcome != Outcome::Delivered).then(|| "HTTP 500".to_string()),
            latency_ms: 3,
            outcome,
            next_attempt_at: None,
        };
        let mut tx = pool.begin().await.unwrap();
        cursors::record(
            &mut tx,
            &[
                (id, Entry::Created { start: 0 }),
                (id, attempt(1, Outcome::Delivered, 1)),
                (id, attempt(2, Outcome::Failed, 1)),
                (id, Entry::Enable),
                (id, Entry::Replay { position: 1 }),
            ],
        )
        .await
        .unwrap();
        if n == 1 {
            cursors::record(&mut tx, &[(id, Entry::Delete)])
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    let types: Vec<String> = sqlx::query_scalar("SELECT DISTINCT type FROM events ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        types.len(),
        events::ALL_TYPES.len(),
        "every type occurs: {types:?}"
    );
}
