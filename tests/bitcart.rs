//! The Bitcart-compatible endpoint driven by the real, unmodified Bitcart SDK (PyPI
//! `bitcart` 1.18, in .local/bitcart-venv, see tools/install-deps) through
//! tests/bitcart/sdk_client.py: blocks, transactions and payments arrive over polling and
//! over the websocket, a wallet sees only its own payments, and what happened while the
//! client was away arrives when it comes back. Plus the JSON-RPC error contract the SDK
//! depends on (HTTP 200, the id echoed, codes named by /spec).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::NetworkKind;
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const USER: &str = "chainledger";

/// One run of the SDK driver; killed when dropped (the client going away).
struct Driver {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Driver {
    fn start(svc: &Service, mode: &str, xpub: Option<&str>) -> Driver {
        Driver::start_as(svc, TOKEN, mode, xpub)
    }

    fn start_as(svc: &Service, password: &str, mode: &str, xpub: Option<&str>) -> Driver {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".local/bitcart-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run tools/install-deps (it installs the Bitcart SDK there)",
            python.display()
        );
        let mut cmd = Command::new(python);
        cmd.arg(root.join("tests/bitcart/sdk_client.py"))
            .args([&format!("{}/bitcart", svc.base), USER, password, mode])
            .args(xpub)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the SDK driver");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(json!({"unparsed": line}));
                sink.lock().unwrap().push(v);
            }
        });
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut err = err;
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Driver {
            child,
            lines,
            stderr,
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a printed line matching `want`; fails naming `what` and showing all it got.
    async fn wait(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.lines().into_iter().find(&want) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the SDK did not receive {what}; it printed {:#?}\nstderr: {}",
                self.lines(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the driver to exit; its printed lines.
    async fn finish(mut self) -> Vec<Value> {
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < Duration::from_secs(30), "driver hangs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The reader thread may still hold the last line.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.lines()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tpub() -> String {
    let seed: [u8; 32] = rand::random();
    let master = Xpriv::new_master(NetworkKind::Test, &seed).unwrap();
    Xpub::from_priv(&Secp256k1::new(), &master).to_string()
}

/// An xpub account; returns its id.
async fn xpub_account(svc: &Service, xpub: &str) -> String {
    let (status, a) = svc
        .post("/v1/accounts", json!({"label": "shop", "xpub": xpub}))
        .await;
    assert_eq!(status, 201, "{a}");
    a["id"].as_str().unwrap().to_string()
}

/// The account's next address, handed out.
async fn derive(svc: &Service, account: &str) -> String {
    let (status, out) = svc
        .post(
            &format!("/v1/accounts/{account}/addresses"),
            json!({"derive": true}),
        )
        .await;
    assert_eq!(status, 201, "{out}");
    out["address"].as_str().unwrap().to_string()
}

/// Waits until the endpoint has met the client (its cursor exists): from then on nothing
/// for that wallet is missed.
async fn met(pool: &PgPool, wallet: &str) {
    eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM bitcart_cursors WHERE wallet = $1")
            .bind(wallet)
            .fetch_one(pool)
            .await
            .unwrap();
        (n > 0).then_some(())
    })
    .await;
}

fn is(event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == event
}

fn about(v: &Value, txid: &str) -> bool {
    v["tx"] == txid || v["tx_hashes"] == json!([txid])
}

/// The scenario both delivery methods must pass: live events, then events emitted while
/// the client was gone, each block exactly once, and never another wallet's payment.
async fn delivers_and_resumes(mode: &str) {
    let (node, svc) = node_and_service().await;
    let pool = PgPool::connect(svc.database_url.as_deref().unwrap())
        .await
        .unwrap();
    let xpub = tpub();
    let shop = xpub_account(&svc, &xpub).await;
    let first_address = derive(&svc, &shop).await;
    let other_xpub = tpub();
    let other = xpub_account(&svc, &other_xpub).await;
    let other_address = derive(&svc, &other).await;

    let driver = Driver::start(&svc, mode, Some(&xpub));
    met(&pool, &xpub).await;
    let paid = node.send(&first_address, "0.5");
    let other_paid = node.send(&other_address, "0.2");
    let payment = driver
        .wait("new_payment 7 for the mempool deposit", |v| {
            is("new_payment")(v) && about(v, &paid)
        })
        .await;
    assert_eq!(
        payment,
        json!({"event": "new_payment", "wallet": xpub, "address": first_address, "status": 7,
               "status_str": "Unconfirmed", "tx_hashes": [paid], "sent_amount": "0.50000000"})
    );
    driver
        .wait("new_transaction", |v| {
            is("new_transaction")(v) && about(v, &paid)
        })
        .await;
    node.mine(1);
    let h = node.height();
    driver
        .wait("new_block", |v| is("new_block")(v) && v["height"] == h)
        .await;
    driver
        .wait("verified_tx", |v| {
            is("verified_tx")(v) && about(v, &paid) && v["height"] == h
        })
        .await;
    let before = driver.lines();
    drop(driver);

    // While it is away: the deposit reaches 3 confirmations (credited) and a second one
    // arrives.
    let second_address = derive(&svc, &shop).await;
    let second = node.send(&second_address, "0.25");
    node.mine(2);
    svc.synced_to(node.height()).await;
    eventually(Duration::from_secs(30), || async {
        let events = svc.deposit_events(&paid).await;
        events
            .iter()
            .any(|(kind, _, _)| kind == "deposit.credited")
            .then_some(())
    })
    .await;

    let driver = Driver::start(&svc, mode, Some(&xpub));
    for height in [h + 1, h + 2] {
        driver
            .wait("a block mined while away", |v| {
                is("new_block")(v) && v["height"] == height
            })
            .await;
    }
    driver
        .wait("new_payment 3 (credited while away)", |v| {
            is("new_payment")(v) && about(v, &paid) && v["status"] == 3 && v["status_str"] == "Paid"
        })
        .await;
    driver
        .wait("the second deposit's new_transaction", |v| {
            is("new_transaction")(v) && about(v, &second)
        })
        .await;
    driver
        .wait("the second deposit's verified_tx", |v| {
            is("verified_tx")(v) && about(v, &second) && v["height"] == h + 1
        })
        .await;
    let all: Vec<Value> = before.into_iter().chain(driver.lines()).collect();
    assert!(
        !all.iter().any(|v| about(v, &other_paid)),
        "another wallet's payment leaked: {all:#?}"
    );
    let mut heights: Vec<u64> = all
        .iter()
        .filter(|v| is("new_block")(v))
        .map(|v| v["height"].as_u64().unwrap())
        .collect();
    let n = heights.len();
    heights.dedup();
    assert_eq!(heights.len(), n, "a block was announced twice: {all:#?}");
    drop(driver);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_updates_receives_blocks_transactions_and_payments_including_those_while_away() {
    delivers_and_resumes("poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_receives_blocks_transactions_and_payments_including_those_while_away() {
    delivers_and_resumes("ws").await;
}

/// The APIManager sends no xpub: it gets every wallet's events, each frame naming its
/// wallet, and blocks with none; shutting the service down closes open websockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_without_xpub_gets_every_wallet_by_name_and_shutdown_closes_websockets() {
    let (node, svc) = node_and_service().await;
    let pool = PgPool::connect(svc.database_url.as_deref().unwrap())
        .await
        .unwrap();
    let (a, b) = (tpub(), tpub());
    let (account_a, account_b) = (xpub_account(&svc, &a).await, xpub_account(&svc, &b).await);
    let (address_a, address_b) = (
        derive(&svc, &account_a).await,
        derive(&svc, &account_b).await,
    );
    let driver = Driver::start(&svc, "manager-ws", None);
    driver
        .wait("a connection", |v| v["connected"] == true)
        .await;
    met(&pool, "").await;
    let (paid_a, paid_b) = (node.send(&address_a, "0.1"), node.send(&address_b, "0.2"));
    node.mine(1);
    let h = node.height();
    for (txid, wallet) in [(&paid_a, &a), (&paid_b, &b)] {
        driver
            .wait("each wallet's transaction, named", |v| {
                is("new_transaction")(v) && about(v, txid) && v["wallet"] == **wallet
            })
            .await;
    }
    let block = driver
        .wait("new_block", |v| is("new_block")(v) && v["height"] == h)
        .await;
    assert_eq!(block["wallet"], Value::Null, "blocks belong to no wallet");

    drop(driver);

    // A bare websocket that never names a wallet is served too, and shutdown closes it
    // ("going away") rather than leaving it open.
    let mut ws = open_ws(&svc, None).await;
    node.mine(1);
    let block = json!({"updates": [{"event": "new_block", "height": node.height()}],
                       "wallet": null, "currency": "BTC"});
    tokio::time::timeout(Duration::from_secs(15), async {
        // Frames the manager's cursor had not passed yet may come first.
        while let Some(Ok(msg)) = ws.next().await {
            if serde_json::from_str::<Value>(msg.to_text().unwrap()).unwrap() == block {
                return;
            }
        }
        panic!("the websocket ended");
    })
    .await
    .expect("the new block's frame");
    let stopping = tokio::spawn(svc.stop());
    let close = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("shutdown closes the websocket");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    stopping.await.unwrap();
}

/// A raw websocket to `/ws` that names `xpub` at once, if given.
async fn open_ws(
    svc: &Service,
    xpub: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures::SinkExt;
    let mut request = format!("{}/ws", svc.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    let login = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"));
    request
        .headers_mut()
        .insert("authorization", format!("Basic {login}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    if let Some(xpub) = xpub {
        ws.send(Message::Text(json!({"xpub": xpub}).to_string().into()))
            .await
            .unwrap();
    }
    ws
}

/// The next frame holding a `new_block`; its height.
async fn next_block(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> u64 {
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Ok(text) = msg.to_text() {
                if let Ok(frame) = serde_json::from_str::<Value>(text) {
                    if let Some(h) = frame["updates"][0]["height"].as_u64() {
                        return h;
                    }
                }
            }
        }
        panic!("the websocket ended");
    })
    .await
    .expect("a new_block frame")
}

/// The websocket's cursor moves only when the client's pong shows it read the frames: a
/// client gone with frames unread (it read one frame, never the ping after it) gets them
/// again when it reconnects; one that read them does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_when_a_websocket_dies_are_sent_again() {
    let (node, svc) = node_and_service().await;
    let pool = PgPool::connect(svc.database_url.as_deref().unwrap())
        .await
        .unwrap();
    let xpub = tpub();
    xpub_account(&svc, &xpub).await;
    let mut ws = open_ws(&svc, Some(&xpub)).await;
    met(&pool, &xpub).await;
    node.mine(1);
    let first = node.height();
    assert_eq!(next_block(&mut ws).await, first);
    drop(ws); // the ping that followed the frame is never read, never answered

    let mut ws = open_ws(&svc, Some(&xpub)).await;
    assert_eq!(next_block(&mut ws).await, first, "sent again");
    // Reading on answers the ping: the cursor passes the block.
    let cursor = || async {
        sqlx::query_scalar::<_, i64>("SELECT position FROM bitcart_cursors WHERE wallet = $1")
            .bind(&xpub)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let head = svc.head().await;
    tokio::time::timeout(Duration::from_secs(15), async {
        while cursor().await < head {
            // Reading is what sends the pong (tungstenite answers pings as it reads).
            let _ = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
        }
    })
    .await
    .expect("the cursor passes the read block");
    drop(ws);
    let mut ws = open_ws(&svc, Some(&xpub)).await;
    node.mine(1);
    assert_eq!(
        next_block(&mut ws).await,
        first + 1,
        "not the acknowledged one again"
    );
}

/// Raw JSON-RPC: what the SDK needs from every answer.
async fn rpc(svc: &Service, path: &str, password: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = svc
        .http
        .post(format!("{}{path}", svc.base))
        .header("content-type", "text/plain")
        .body(body.to_string());
    if let Some(p) = password {
        req = req.basic_auth(USER, Some(p));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_rpc_bodies_with_http_200_and_the_id_and_spec_names_them() {
    let (node, svc) = node_and_service().await;
    let call = |id: u64, params: Value| {
        json!({"jsonrpc": "2.0", "method": "get_updates", "params": params, "id": id}).to_string()
    };

    for password in [Some("not-the-password-at-all"), None] {
        let (status, r) = rpc(&svc, "/bitcart", password, &call(41, json!({}))).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            r,
            json!({"jsonrpc": "2.0", "id": 41, "error": {"code": -32600, "message": "Unauthorized"}})
        );
    }
    // A text/plain body, the first contact: the cursor starts at the head, so nothing yet.
    let (status, r) = rpc(
        &svc,
        "/bitcart/",
        Some(TOKEN),
        &call(42, json!({"xpub": null})),
    )
    .await;
    assert_eq!(
        (status, &r),
        (200, &json!({"jsonrpc": "2.0", "id": 42, "result": []}))
    );
    node.mine(1);
    svc.synced_to(node.height()).await;
    // Positional arguments ending in the named ones, as the SDK sends them.
    let (_, r) = rpc(
        &svc,
        "/bitcart",
        Some(TOKEN),
        &call(43, json!([{"xpub": null}])),
    )
    .await;
    assert_eq!(
        r["result"],
        json!([{"event": "new_block", "height": node.height()}])
    );
    let (_, r) = rpc(&svc, "/bitcart", Some(TOKEN), &call(44, Value::Null)).await;
    assert_eq!(r["result"], json!([]), "the cursor moved: nothing twice");

    let unknown = tpub();
    let (_, r) = rpc(
        &svc,
        "/bitcart",
        Some(TOKEN),
        &call(45, json!({"xpub": unknown})),
    )
    .await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(45), json!(-32005))
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains(&unknown),
        "{r}"
    );
    let (_, r) = rpc(
        &svc,
        "/bitcart",
        Some(TOKEN),
        r#"{"jsonrpc":"2.0","method":"payto","params":[],"id":"x"}"#,
    )
    .await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!("x"), json!(-32601))
    );
    let (status, r) = rpc(&svc, "/bitcart", Some(TOKEN), "{not json").await;
    assert_eq!(
        (status, r["id"].clone(), r["error"]["code"].clone()),
        (200, Value::Null, json!(-32700))
    );

    for path in ["/bitcart/spec", "/spec"] {
        let spec: Value = svc
            .http
            .get(format!("{}{path}", svc.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(spec["version"].is_string(), "{spec}");
        let exceptions = spec["exceptions"].as_object().unwrap();
        for code in ["-32600", "-32601", "-32700", "-32005"] {
            let e = &exceptions[code];
            assert!(
                e["exc_name"].is_string() && e["docstring"].is_string(),
                "{spec}"
            );
        }
        assert_eq!(exceptions["-32600"]["exc_name"], "UnauthorizedError");
    }

    // The websocket's handshake checks the login too.
    let resp = svc
        .http
        .get(format!("{}/bitcart/ws", svc.base))
        .basic_auth(USER, Some("wrong"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The SDK turns each code into the exception /spec names.
    let sdk = |password: &str, xpub: Option<&str>| Driver::start_as(&svc, password, "once", xpub);
    let out = sdk("not-the-password-at-all", None).finish().await;
    assert_eq!(out[0]["error"], "UnauthorizedError", "{out:?}");
    let out = sdk(TOKEN, Some(&unknown)).finish().await;
    assert_eq!(out[0]["error"], "LoadingWalletError", "{out:?}");
    let out = sdk(TOKEN, None).finish().await;
    assert_eq!(out[0], json!({"result": []}), "{out:?}");
    svc.stop().await;
}
