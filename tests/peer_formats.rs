//! Issue 6, the delivery side: receivers written for cryptoassets.core (its own HTTP
//! listener's decoding, in Python), Crypto IPN receivers (echo acknowledgement, the `/btc`
//! and `/btc_ipn` endpoints) and script handlers get their notifications unchanged.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::*;
use serde_json::{json, Value};

/// A fresh node and the service with script handlers and the IPN settings on.
async fn service_with(script_handlers: bool) -> (Node, Service) {
    let node = Node::start();
    let mut cfg = config(&fresh_database().await, &node);
    cfg.script_handlers = script_handlers;
    cfg.ipn_token = Some(IPN_TOKEN.into());
    cfg.ipn_auth = Some("shared-ipn-secret".into());
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    (node, svc)
}

const IPN_TOKEN: &str = "ipn-token-0123456789";

/// Pays `address`, waits until the deposit is seen in the mempool, then mines `blocks`
/// one by one; returns the txid.
async fn deposit_and_mine(
    node: &Node,
    svc: &Service,
    address: &str,
    btc: &str,
    blocks: u64,
) -> String {
    let txid = node.send(address, btc);
    eventually(Duration::from_secs(20), || async {
        (!svc.deposit_events(&txid).await.is_empty()).then_some(())
    })
    .await;
    for _ in 0..blocks {
        node.mine(1);
        svc.synced_to(node.height()).await;
    }
    txid
}

/// cryptoassets.core's listener, run by python3 (tests/compat/cryptoassets_listener.py).
struct Listener {
    child: std::process::Child,
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Listener {
    fn start() -> Listener {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/compat/cryptoassets_listener.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (tools/install-deps installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next().unwrap().unwrap();
        let got: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Listener {
            child,
            url: format!("http://127.0.0.1:{}/", port.trim()),
            got,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cryptoassets_listener_receives_every_confirmation_change_as_txupdate() {
    let (node, svc) = service_with(false).await;
    let listener = Listener::start();
    // A wallet address, so the deposit can be withdrawn below (nothing else spends here).
    let address = node.new_address("legacy");
    let account = svc.account_watching(&address).await;
    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"url": listener.url, "format": "cryptoassets"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["format"], "cryptoassets");

    // Final at 6 in tests: seen (0), then confirmations 1..=6.
    let txid = deposit_and_mine(&node, &svc, &address, "1.25", 6).await;
    let updates = eventually(Duration::from_secs(20), || async {
        let got = listener.events();
        (got.len() >= 7).then_some(got)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        listener.events().len(),
        7,
        "one txupdate per confirmation change"
    );
    let vout = node.vout_paying(&txid, &address);
    for (i, u) in updates.iter().enumerate() {
        assert_eq!(u["event_name"], "txupdate");
        assert_eq!(u["data"], u["xdata"], "data and xdata are the same JSON");
        let d = &u["data"];
        assert_eq!(d["confirmations"], i as u64, "{d}");
        assert_eq!(d["credited"], i >= 3, "credited from the threshold on: {d}");
        assert_eq!(d["txid"], txid.as_str());
        assert_eq!(d["network_transaction"], txid.as_str());
        assert_eq!(d["transaction"], format!("{txid}:{vout}"));
        assert_eq!(d["account"], account.as_str());
        assert_eq!(d["address"], address.as_str());
        assert_eq!(d["amount"], "1.25000000");
        assert_eq!(d["transaction_type"], "deposit");
        assert_eq!(d["coin_name"], "btc");
    }
    // A withdrawal through the API: txupdates of type broadcast, at 0 and 1 confirmations.
    let raw = node.signed_spend(&txid, vout, &foreign_address(), 1.2499);
    let (status, w) = svc
        .post(
            "/v1/withdrawals",
            json!({"account_id": account, "raw_tx": raw}),
        )
        .await;
    assert_eq!(status, 201, "{w}");
    node.mine(1);
    svc.synced_to(node.height()).await;
    let broadcasts = eventually(Duration::from_secs(20), || async {
        let got = listener.events();
        (got.len() >= 9).then_some(got[7..].to_vec())
    })
    .await;
    for (i, u) in broadcasts.iter().enumerate() {
        let d = &u["data"];
        assert_eq!(d["transaction_type"], "broadcast", "{d}");
        assert_eq!(d["txid"], w["txid"]);
        assert_eq!(d["transaction"], w["txid"]);
        assert_eq!(d["confirmations"], i as u64);
        assert_eq!(
            d["amount"], "1.25000000",
            "what left the account, the fee included"
        );
        assert_eq!(d["account"], account.as_str());
    }

    // A format that does not exist, and IPN fields on another format, are named.
    let (status, e) = svc
        .post(
            "/v1/subscribers",
            json!({"url": listener.url, "format": "xml"}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("format:"));
    let (status, e) = svc
        .post(
            "/v1/subscribers",
            json!({"url": listener.url, "format": "cryptoassets", "max_confirms": 2}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("max_confirms:"));
}

/// The form fields of every request a receiver got.
fn forms(r: &Receiver) -> Vec<(u16, Vec<(String, String)>)> {
    r.received()
        .into_iter()
        .map(|x| (x.answered, serde_urlencoded::from_bytes(&x.body).unwrap()))
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    &form.iter().find(|(k, _)| k == name).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipn_receivers_get_each_notification_once_and_a_wrong_echo_keeps_getting_it() {
    let (node, svc) = service_with(false).await;
    let address = foreign_address();
    svc.account_watching(&address).await;
    let good = Receiver::start().await;
    good.set_mode(Mode::IpnEcho { wrong: false });
    let bad = Receiver::start().await;
    bad.set_mode(Mode::IpnEcho { wrong: true });

    // `good` subscribes through /btc_ipn (form POST, IPN token in the query string), `bad`
    // through the API with its own ipn_auth.
    let btc_ipn = |form: Vec<(&'static str, String)>, token: &'static str| {
        let http = svc.http.clone();
        let url = format!("{}/btc_ipn?token={token}", svc.base);
        async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let subscription = vec![
        ("address", address.clone()),
        ("url", good.url.clone()),
        ("max_confirms", "2".to_string()),
    ];
    assert_eq!(
        btc_ipn(subscription.clone(), IPN_TOKEN).await,
        (200, "success".into())
    );
    // Again: still one subscription.
    assert_eq!(
        btc_ipn(subscription.clone(), IPN_TOKEN).await,
        (200, "success".into())
    );
    let (status, _) = btc_ipn(subscription, "wrong-token-0123456789").await;
    assert_eq!(status, 401);
    let unwatched = vec![("address", foreign_address()), ("url", good.url.clone())];
    assert_eq!(btc_ipn(unwatched, IPN_TOKEN).await, (422, "fail".into()));
    let no_url = vec![("address", address.clone())];
    assert_eq!(btc_ipn(no_url, IPN_TOKEN).await, (422, "fail".into()));
    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"url": bad.url, "format": "ipn", "address": address, "max_confirms": 2, "ipn_auth": "bad-secret"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["secret"], "bad-secret");
    let bad_id = sub["id"].as_str().unwrap().to_string();
    let (_, list) = svc.get("/v1/subscribers").await;
    assert_eq!(list["subscribers"].as_array().unwrap().len(), 2, "{list}");

    // Deposit in the mempool, then 4 blocks: notified at 0, 1 and 2 confirmations (2 =
    // max_confirms, from where it counts as confirmed), not at 3 and 4.
    let txid = node.send(&address, "0.5");
    eventually(Duration::from_secs(20), || async {
        (!svc.deposit_events(&txid).await.is_empty()).then_some(())
    })
    .await;
    let (status, t) = svc.get(&format!("/btc?address={address}")).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["confirmed"].as_f64(), t["unconfirmed"].as_f64()),
        (Some(0.0), Some(0.5))
    );
    for _ in 0..4 {
        node.mine(1);
        svc.synced_to(node.height()).await;
    }
    let expected = [
        ("0.00000000", "0.50000000"),
        ("0.00000000", "0.50000000"),
        ("0.50000000", "0.00000000"),
    ];
    let got = eventually(Duration::from_secs(20), || async {
        let got = forms(&good);
        (got.len() >= 3).then_some(got)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        forms(&good).len(),
        3,
        "each notification once: {:?}",
        forms(&good)
    );
    for ((answered, form), (confirmed, unconfirmed)) in got.iter().zip(expected) {
        assert_eq!(*answered, 200);
        assert_eq!(field(form, "address"), address);
        assert_eq!(field(form, "confirmed"), confirmed, "{form:?}");
        assert_eq!(field(form, "unconfirmed"), unconfirmed, "{form:?}");
        assert_eq!(
            field(form, "ipn_auth"),
            "shared-ipn-secret",
            "IPN_AUTH for /btc_ipn"
        );
    }

    // The wrong echo: the first notification again and again, never the next; the
    // schedule (3 attempts in tests) spent, the subscriber is disabled, cursor kept.
    let bad_forms = forms(&bad);
    assert!(bad_forms.len() >= 2, "retried: {bad_forms:?}");
    for (_, form) in &bad_forms {
        assert_eq!(field(form, "unconfirmed"), "0.50000000");
        assert_eq!(field(form, "confirmed"), "0.00000000");
        assert_eq!(field(form, "ipn_auth"), "bad-secret");
    }
    let (_, view) = svc.get(&format!("/v1/subscribers/{bad_id}")).await;
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("echo"),
        "{view}"
    );
    assert_ne!(view["status"], "active", "{view}");

    // /btc: credited now (3 confirmations reached), by GET with either token, or a form POST.
    let (status, t) = svc.get(&format!("/btc?address={address}")).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["confirmed"].as_f64(), t["unconfirmed"].as_f64()),
        (Some(0.5), Some(0.0))
    );
    let r = svc
        .http
        .post(format!("{}/btc", svc.base))
        .bearer_auth(IPN_TOKEN)
        .form(&[("address", address.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["confirmed_sats"],
        50_000_000
    );
    let r = svc
        .http
        .get(format!("{}/btc?address={address}", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, e) = svc.get("/btc?address=nonsense").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_address"))
    );
    let (status, _) = svc
        .get(&format!("/btc?address={}", foreign_address()))
        .await;
    assert_eq!(status, 404);

    // A deposit first seen in a block, 5 deep (found by a rescan): its seen and first
    // confirmed events are one change, notified once; the 6th confirmation reaches
    // max_confirms: notified as confirmed.
    let old = foreign_address();
    let from = node.height() + 1;
    node.send(&old, "0.7");
    node.mine(5);
    svc.synced_to(node.height()).await;
    let (_, a) = svc.post("/v1/accounts", json!({"label": "old"})).await;
    let (status, added) = svc
        .post(
            &format!("/v1/accounts/{}/addresses", a["id"].as_str().unwrap()),
            json!({"address": old, "rescan_from_height": from}),
        )
        .await;
    assert_eq!(status, 201, "{added}");
    let late = Receiver::start().await;
    late.set_mode(Mode::IpnEcho { wrong: false });
    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"url": late.url, "format": "ipn", "address": old, "max_confirms": 6, "start": "beginning"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    eventually(Duration::from_secs(20), || async {
        (!forms(&late).is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(forms(&late).len(), 1, "{:?}", forms(&late));
    node.mine(1);
    svc.synced_to(node.height()).await;
    eventually(Duration::from_secs(20), || async {
        (forms(&late).len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = forms(&late);
    assert_eq!(got.len(), 2, "{got:?}");
    let totals: Vec<_> = got
        .iter()
        .map(|(_, f)| (field(f, "confirmed"), field(f, "unconfirmed")))
        .collect();
    assert_eq!(
        totals,
        [("0.00000000", "0.70000000"), ("0.70000000", "0.00000000")]
    );
}

/// A handler script that records its environment in `dir` and exits with the status in
/// `dir/exit` (0 when absent); each run is one file.
fn handler_script(dir: &std::path::Path) -> String {
    let path = dir.join("handler.sh");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
out="{dir}/run-$(date +%s%N)-$$"
printf '%s\n' "$CHAINLEDGER_EVENT_NAME" "$CHAINLEDGER_EVENT_DATA" "$CRYPTOASSETS_EVENT_NAME" "$CRYPTOASSETS_EVENT_DATA" "$1" "$CHAINLEDGER_PREVIOUS_POSITION" > "$out"
if [ -f "{dir}/exit" ]; then exit "$(cat {dir}/exit)"; fi
exit 0
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// Each run's (event name, event data, cryptoassets name, cryptoassets data, argument,
/// previous position).
fn runs(dir: &std::path::Path) -> Vec<Vec<String>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_handlers_get_the_event_in_their_environment_and_failures_are_retried() {
    let (node, svc) = service_with(true).await;
    let dir = std::env::temp_dir().join(format!("chainledger-handlers-{}", rand::random::<u64>()));
    let (ok_dir, failing_dir) = (dir.join("ok"), dir.join("failing"));
    std::fs::create_dir_all(&ok_dir).unwrap();
    std::fs::create_dir_all(&failing_dir).unwrap();
    let address = foreign_address();
    svc.account_watching(&address).await;

    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"command": [handler_script(&ok_dir), "an argument"], "types": "deposit.seen,deposit.confirmed"}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert!(sub.get("url").is_none());
    std::fs::write(failing_dir.join("exit"), "3").unwrap();
    let (status, failing) = svc
        .post(
            "/v1/subscribers",
            json!({"command": [handler_script(&failing_dir)], "types": "deposit.seen"}),
        )
        .await;
    assert_eq!(status, 201, "{failing}");
    let failing_id = failing["id"].as_str().unwrap().to_string();
    let (status, e) = svc
        .post("/v1/subscribers", json!({"command": ["relative/handler"]}))
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("command:"));

    let txid = deposit_and_mine(&node, &svc, &address, "0.3", 1).await;
    let got = eventually(Duration::from_secs(20), || async {
        let got = runs(&ok_dir);
        (got.len() >= 2).then_some(got)
    })
    .await;
    let seen = &got[0];
    assert_eq!(seen[0], "deposit.seen");
    let envelope: Value = serde_json::from_str(&seen[1]).unwrap();
    assert_eq!(envelope["type"], "deposit.seen");
    assert_eq!(envelope["data"]["txid"], txid.as_str());
    assert!(envelope["position"].as_i64().unwrap() > 0);
    assert_eq!(seen[2], "txupdate");
    let txupdate: Value = serde_json::from_str(&seen[3]).unwrap();
    assert_eq!(
        (
            txupdate["txid"].as_str(),
            txupdate["confirmations"].as_u64()
        ),
        (Some(txid.as_str()), Some(0))
    );
    assert_eq!(seen[4], "an argument");
    assert_eq!(seen[5], "0", "its first event: none before it");
    assert_eq!(got[1][0], "deposit.confirmed");
    assert_eq!(
        got[1][5],
        envelope["position"].to_string(),
        "each run names the event delivered before it"
    );

    // The failing handler: run, failed (exit 3), retried on the schedule until spent.
    let view = eventually(Duration::from_secs(20), || async {
        let (_, v) = svc.get(&format!("/v1/subscribers/{failing_id}")).await;
        (v["status"] == "disabled").then_some(v)
    })
    .await;
    assert!(
        view["last_error"]
            .as_str()
            .unwrap()
            .contains("exit status: 3"),
        "{view}"
    );
    let tries = runs(&failing_dir);
    assert_eq!(tries.len(), 3, "the test schedule's 3 attempts");
    assert!(tries.iter().all(|r| r[0] == "deposit.seen"));
    // Fixed, enabled: it resumes from the same event and succeeds.
    std::fs::remove_file(failing_dir.join("exit")).unwrap();
    let (status, _) = svc
        .post(&format!("/v1/subscribers/{failing_id}/enable"), json!({}))
        .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(20), || async {
        let (_, v) = svc.get(&format!("/v1/subscribers/{failing_id}")).await;
        (v["lag"] == 0 && v["status"] == "active").then_some(())
    })
    .await;
    let tries = runs(&failing_dir);
    assert_eq!(tries.len(), 4);
    assert_eq!(tries[3][0], "deposit.seen");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_handlers_are_refused_unless_enabled() {
    let (_node, svc) = service_with(false).await;
    let (status, e) = svc
        .post("/v1/subscribers", json!({"command": ["/bin/true"]}))
        .await;
    assert_eq!(status, 403, "{e}");
    assert_eq!(e["error"]["code"], "script_handlers_disabled");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("SCRIPT_HANDLERS"));
    let (status, e) = svc.post("/v1/subscribers", json!({})).await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().starts_with("url:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ipn_subscribers_skip_other_events_and_still_get_their_own() {
    let (node, svc) = service_with(false).await;
    let address = foreign_address();
    svc.account_watching(&address).await;
    let r = Receiver::start().await;
    r.set_mode(Mode::IpnEcho { wrong: false });
    let (status, sub) = svc
        .post(
            "/v1/subscribers",
            json!({"url": r.url, "format": "ipn", "address": address}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().unwrap().to_string();

    // More than IDLE_STEP (10,000) events concerning other addresses, in one append: the
    // subscriber gets no worker for them, and its cursor is moved past them in one step.
    let pool = sqlx::PgPool::connect(svc.database_url.as_deref().unwrap())
        .await
        .unwrap();
    let other: Vec<chainledger::domain::stream::NewEvent> = (0..10_050u64)
        .map(|i| {
            use chainledger::domain::tracked::{Btc, Deposit, Status};
            let deposit = Deposit {
                account_id: uuid::Uuid::new_v4(),
                address: foreign_address(),
                txid: format!("{i:064x}").parse().unwrap(),
                vout: 0,
                amount: Btc(chainledger::domain::Sats(1000)),
                amount_sats: chainledger::domain::Sats(1000),
                confirmations: 0,
                block_hash: None,
                block_height: None,
                credited: false,
                credit_confirmations: 3,
                status: Status::Mempool,
                inputs: vec![],
            };
            chainledger::domain::stream::NewEvent {
                stream: chainledger::domain::stream::StreamName::deposit(deposit.outpoint()),
                expected_version: None,
                event: chainledger::domain::events::Event::DepositSeen(deposit),
                metadata: json!({"source": "test"}),
            }
        })
        .collect();
    chainledger::unit_of_work::UnitOfWork::new(pool, bitcoin::Network::Regtest)
        .record(chainledger::unit_of_work::Decided(other))
        .await
        .unwrap();
    let head = svc.head().await;
    eventually(Duration::from_secs(20), || async {
        let (_, v) = svc.get(&format!("/v1/subscribers/{id}")).await;
        (v["cursor"].as_i64() == Some(head)).then_some(())
    })
    .await;
    assert!(r.received().is_empty());

    // Its own deposit still arrives.
    let txid = node.send(&address, "0.5");
    let got = eventually(Duration::from_secs(20), || async {
        let got = forms(&r);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(field(&got[0].1, "unconfirmed"), "0.50000000", "{txid}");
}
