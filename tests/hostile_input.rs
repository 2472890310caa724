//! Issue 13 as an attacker and an unlucky operator tried it, against the real service (in
//! this process, or the binary where the process environment matters): inputs a library
//! panics on, text PostgreSQL cannot store, the SSRF guard with proxies in the environment
//! and special-purpose targets, secrets in URLs, racing `/btc_ipn` calls, cut-short audit
//! exports and filters that matched nothing silently. One test per problem.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};

/// `ApiError::invalid_field`'s status.
const INVALID_FIELD: u16 = 422;

/// The error names `field` first, with code `invalid_field`.
fn assert_field_error(status: u16, e: &Value, field: &str) {
    assert_eq!(status, INVALID_FIELD, "{field}: {e}");
    assert_eq!(e["error"]["code"], "invalid_field", "{field}: {e}");
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(&format!("{field}:")), "{field}: {e}");
}

fn tpub() -> String {
    use bitcoin::bip32::{Xpriv, Xpub};
    let seed: [u8; 32] = rand::random();
    let master = Xpriv::new_master(bitcoin::NetworkKind::Test, &seed).unwrap();
    Xpub::from_priv(&bitcoin::secp256k1::Secp256k1::new(), &master).to_string()
}

// Problem 2: a derivation of 255 steps plus `/*` panicked in miniscript.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derivation_deeper_than_bip32_allows_is_a_field_error_not_a_panic() {
    let (_node, svc) = node_and_service().await;
    let xpub = tpub();
    let deep = vec!["0"; 255].join("/") + "/*";
    let (status, e) = svc
        .post(
            "/v1/accounts",
            json!({"label": "deep", "xpub": xpub, "derivation": deep}),
        )
        .await;
    assert_field_error(status, &e, "xpub");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("derivation"),
        "{e}"
    );
    let descriptor = format!("wpkh({xpub}/{deep})");
    let (status, e) = svc
        .post(
            "/v1/accounts",
            json!({"label": "deep", "descriptor": descriptor}),
        )
        .await;
    assert_field_error(status, &e, "descriptor");
    // The deepest allowed path still works, and the service is whole.
    let deepest = vec!["0"; 254].join("/") + "/*";
    let (status, a) = svc
        .post(
            "/v1/accounts",
            json!({"label": "deepest", "xpub": xpub, "derivation": deepest}),
        )
        .await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(svc.get("/v1/status").await.0, 200);
    svc.stop().await;
}

// Problem 7: NUL characters were 500s (and a JSON-RPC -32603 on /bitcart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_by_the_name_of_their_field_everywhere() {
    let (_node, svc) = node_and_service().await;
    let address = foreign_address();
    svc.account_watching(&address).await;
    let receiver = Receiver::start().await;

    let (status, e) = svc.post("/v1/accounts", json!({"label": "a\u{0}b"})).await;
    assert_field_error(status, &e, "label");
    let (status, e) = svc.get("/v1/deposits?address=%00").await;
    assert_field_error(status, &e, "address");
    let (status, e) = svc.get("/btc?address=%00").await;
    assert_field_error(status, &e, "address");
    let (status, e) = svc.get("/v1/addresses/a%00b").await;
    assert_field_error(status, &e, "address");
    let (status, e) = svc
        .post(
            "/v1/subscribers",
            json!({"url": format!("{}\u{0}", receiver.url)}),
        )
        .await;
    assert_field_error(status, &e, "url");
    let (status, e) = svc
        .post(
            "/v1/subscribers",
            json!({"url": receiver.url, "format": "ipn", "address": address, "ipn_auth": "a\u{0}b"}),
        )
        .await;
    assert_field_error(status, &e, "ipn_auth");
    let (status, e) = svc
        .post(
            "/v1/subscribers",
            json!({"url": receiver.url, "types": ["deposit.seen", "\u{0}"]}),
        )
        .await;
    assert_field_error(status, &e, "types[1]");

    let resp = svc
        .http
        .post(format!("{}/btc_ipn", svc.base))
        .bearer_auth(TOKEN)
        .form(&[
            ("address", address.as_str()),
            ("url", receiver.url.as_str()),
            ("ipn_auth", "a\0b"),
        ])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get("chainledger-error")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        (status, resp.text().await.unwrap().as_str()),
        (INVALID_FIELD, "fail")
    );
    assert!(
        reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("ipn_auth:"),
        "{reason:?}"
    );

    let rpc: Value = svc
        .http
        .post(format!("{}/bitcart", svc.base))
        .basic_auth("chainledger", Some(TOKEN))
        .body(
            json!({"jsonrpc": "2.0", "id": 7, "method": "get_updates",
                   "params": {"xpub": "tpub\u{0}x"}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rpc["error"]["code"], -32602, "{rpc}");
    assert!(
        rpc["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("xpub:"),
        "{rpc}"
    );
    svc.stop().await;
}

// Problem 10: these targets passed the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_targets_in_special_purpose_ranges_are_refused_at_creation() {
    let (_node, svc) = node_and_service().await;
    // The test service allows 127.0.0.0/8; none of these is that range.
    for url in [
        "http://[::127.0.0.1]:9/x",
        "http://[::ffff:0:127.0.0.1]:9/x",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
        "http://[100::1]/x",
        "http://192.88.99.1/x",
        "http://100.64.0.1/x",
        "http://[64:ff9b::a00:1]/x",
        "http://[2002:a00:1::1]/x",
        "http://0.0.0.0:9/x",
    ] {
        let (status, e) = svc.post("/v1/subscribers", json!({"url": url})).await;
        assert_field_error(status, &e, "url");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a public address"),
            "{url}: {e}"
        );
    }
    svc.stop().await;
}

/// A stand-in HTTP proxy: counts connections, records each request line and answers 200.
struct FakeProxy {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeProxy {
    fn start() -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let mut first = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let _ = reader.read_line(&mut first);
                r.lock().unwrap().push(first.trim().to_string());
                let mut line = String::new();
                let mut length = 0usize;
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let _ = reader.take(length as u64).read_to_end(&mut Vec::new());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        FakeProxy {
            url,
            connections,
            requests,
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary serving, killed when dropped.
struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Problem 3: with HTTP_PROXY in the environment, webhooks went through the proxy, and
// the connection-time check resolved the proxy instead of the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_variables_in_the_environment_do_not_carry_webhooks() {
    let node = Node::start();
    let db = fresh_database().await;
    let proxy = FakeProxy::start();
    let port = free_port();
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .env("DATABASE_URL", &db)
        .env("BITCOIND_RPC_URL", &node.url)
        .env("BITCOIND_RPC_USER", &node.user)
        .env("BITCOIND_RPC_PASSWORD", &node.password)
        .env("API_TOKEN", TOKEN)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("WEBHOOK_ALLOW_NETS", "127.0.0.0/8")
        .env("WEBHOOK_RETRY_SCHEDULE", "0s,200ms,400ms")
        .env("RUST_LOG", "warn")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("WEBHOOK_PROXY")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &proxy.url);
    }
    let _binary = Binary(cmd.spawn().unwrap());
    let svc = Service::at(format!("http://127.0.0.1:{port}"));
    eventually(Duration::from_secs(30), || async {
        let r = svc.http.get(format!("{}/healthz", svc.base)).send().await;
        r.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    let receiver = Receiver::start().await;
    svc.subscribe(&receiver.url, json!({"start": "beginning"}))
        .await;
    svc.make_events(1).await;
    eventually(Duration::from_secs(20), || async {
        (!receiver.delivered().is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        0,
        "the proxy of the environment was used: {:?}",
        proxy.requests.lock().unwrap()
    );
}

// Problem 3, with WEBHOOK_PROXY: requests go through it, and a target the guard refuses
// never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_webhook_proxy_each_target_is_checked_before_the_request() {
    let node = Node::start();
    let db = fresh_database().await;
    let proxy = FakeProxy::start();
    let receiver = Receiver::start().await;
    let mut cfg = config(&db, &node);
    cfg.webhook_proxy = Some(proxy.url.clone());
    let svc = Service::start(cfg).await;
    let (id, _) = svc.subscribe(&receiver.url, json!({})).await;
    svc.make_events(1).await;
    eventually(Duration::from_secs(20), || async {
        let seen = proxy.requests.lock().unwrap().clone();
        seen.iter()
            .any(|r| r.starts_with(&format!("POST {} ", receiver.url)))
            .then_some(())
    })
    .await;
    assert!(
        receiver.received().is_empty(),
        "the proxy answered, not the receiver"
    );
    svc.stop().await;

    // The same subscriber, now that the operator allows no private range.
    let mut cfg = config(&db, &node);
    cfg.webhook_proxy = Some(proxy.url.clone());
    cfg.webhook_allow_nets = Vec::new();
    let svc = Service::start(cfg).await;
    let before = proxy.connections.load(Ordering::SeqCst);
    svc.make_events(1).await;
    let error = eventually(Duration::from_secs(20), || async {
        let (_, d) = svc.get(&format!("/v1/subscribers/{id}/deliveries")).await;
        d["deliveries"]
            .as_array()?
            .iter()
            .find_map(|a| a["error"].as_str().filter(|e| e.contains("refused")))
            .map(String::from)
    })
    .await;
    assert!(error.contains("not a public address"), "{error}");
    assert_eq!(proxy.connections.load(Ordering::SeqCst), before);
    svc.stop().await;
}

// Problem 8: credentials in BITCOIND_RPC_URL and DATABASE_URL were logged in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_urls_appear_in_no_log_line_or_refusal() {
    let db = fresh_database().await;
    let separator = if db.contains('?') { '&' } else { '?' };
    let cases = [
        // The database answers; the node (nothing listens on port 1) does not.
        (
            format!("{db}{separator}password=dbsecret1"),
            "http://rpcuser:rpcsecret1@127.0.0.1:1/",
        ),
        // Neither answers.
        (
            "postgres://pguser:dbsecret2@127.0.0.1:1/x?password=dbsecret3".to_string(),
            "http://rpcuser:rpcsecret2@127.0.0.1:1/",
        ),
    ];
    for (database_url, rpc_url) in cases {
        let out = Command::new(binary())
            .arg("serve")
            .env("DATABASE_URL", &database_url)
            .env("DATABASE_CONNECT_RETRIES", "1")
            .env("BITCOIND_RPC_URL", rpc_url)
            .env("BITCOIND_RPC_USER", "u")
            .env("BITCOIND_RPC_PASSWORD", "p")
            .env("API_TOKEN", TOKEN)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let logged = String::from_utf8_lossy(&out.stderr);
        assert!(logged.contains("<redacted>"), "{logged}");
        assert!(logged.contains("chainledger: "), "a refusal line: {logged}");
        for secret in ["dbsecret", "rpcsecret"] {
            assert!(!logged.contains(secret), "{secret} logged: {logged}");
        }
    }
}

async fn btc_ipn(svc: &Service, form: &[(&str, &str)]) -> (u16, String) {
    let r = svc
        .http
        .post(format!("{}/btc_ipn", svc.base))
        .bearer_auth(TOKEN)
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn subscriber_ids(svc: &Service) -> Vec<String> {
    let (status, list) = svc.get("/v1/subscribers").await;
    assert_eq!(status, 200, "{list}");
    list["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "deleted")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

// Problem 5: 30 identical concurrent /btc_ipn calls made up to 19 subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_identical_btc_ipn_calls_make_one_subscriber() {
    let (_node, svc) = node_and_service().await;
    let address = foreign_address();
    svc.account_watching(&address).await;
    let receiver = Receiver::start().await;
    let form = [
        ("address", address.as_str()),
        ("url", receiver.url.as_str()),
        ("max_confirms", "2"),
    ];
    let answers = futures::future::join_all((0..30).map(|_| btc_ipn(&svc, &form))).await;
    for answer in &answers {
        assert_eq!(answer, &(200, "success".to_string()));
    }
    let ids = subscriber_ids(&svc).await;
    assert_eq!(ids.len(), 1, "{ids:?}");

    // Deleted, the subscription can be made again: once more, however many race.
    assert_eq!(
        svc.delete(&format!("/v1/subscribers/{}", ids[0])).await,
        204
    );
    let answers = futures::future::join_all((0..10).map(|_| btc_ipn(&svc, &form))).await;
    assert!(
        answers.iter().all(|a| a == &(200, "success".to_string())),
        "{answers:?}"
    );
    let again = subscriber_ids(&svc).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0], ids[0]);
    svc.stop().await;
}

/// Runs the binary; (succeeded, stdout).
fn tool(db: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

// Problem 9: an export cut at a page boundary verified as intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cut_short_or_with_a_wrong_trailer_is_reported_truncated() {
    let (_node, svc) = node_and_service().await;
    let head = svc.make_events(5).await;
    let db = svc.database_url.clone().unwrap();
    let dir = std::env::temp_dir().join(format!("chainledger-trailer-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for format in ["jsonl", "csv"] {
        let path = dir.join(format!("log.{format}"));
        let p = path.to_str().unwrap();
        let (ok, out) = tool(&db, &["audit-export", "--format", format, "--out", p]);
        assert!(ok, "{out}");
        let (ok, out) = tool(&db, &["verify-log", "--file", p]);
        assert!(ok, "{out}");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let header = usize::from(format == "csv");
        assert_eq!(lines.len(), header + head as usize + 1, "{text}");
        assert!(lines.last().unwrap().contains("trailer"), "{text}");

        let cut = |keep: usize, extra: &str| {
            let mut t = lines[..keep].join("\n") + "\n";
            t.push_str(extra);
            std::fs::write(&path, t).unwrap();
            tool(&db, &["verify-log", "--file", p])
        };
        // Cut before the trailer, and mid-way (whole lines, an intact chain).
        for keep in [lines.len() - 1, header + 2] {
            let (ok, out) = cut(keep, "");
            assert!(!ok, "{format} cut to {keep} lines: {out}");
            assert!(
                out.contains("truncated") && out.contains("no trailer"),
                "{out}"
            );
        }
        // A trailer that disagrees: the last records dropped, the trailer kept.
        let (ok, out) = cut(header + 2, &format!("{}\n", lines.last().unwrap()));
        assert!(!ok, "{out}");
        assert!(
            out.contains("truncated") && out.contains(&format!("{head} events")),
            "{out}"
        );
        // Records after the trailer.
        let (ok, out) = cut(lines.len(), &format!("{}\n", lines[header]));
        assert!(!ok, "{out}");
        assert!(out.contains("after its trailer"), "{out}");
    }
    // Nothing partial is left beside the exports.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
    svc.stop().await;
}

// Problem 11: `types=,,,` matched nothing and moved next_after to the head; `[""]` was
// stored as a filter matching nothing; `after` beyond the head waited silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_type_names_and_after_beyond_the_head_are_refused() {
    let (_node, svc) = node_and_service().await;
    let head = svc.make_events(2).await;
    for path in [
        "/v1/events?types=,,,",
        "/v1/events/stream?types=,,,",
        "/v1/events?types=deposit.seen,",
    ] {
        let (status, e) = svc.get(path).await;
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(e["error"]["code"], "invalid_types", "{path}: {e}");
        assert!(e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("types:"));
    }
    let receiver = Receiver::start().await;
    for types in [json!(",,,"), json!([""]), json!(["deposit.seen", " "])] {
        let (status, e) = svc
            .post(
                "/v1/subscribers",
                json!({"url": receiver.url, "types": types}),
            )
            .await;
        assert_field_error(status, &e, "types");
    }
    let (status, s) = svc
        .post("/v1/subscribers", json!({"url": receiver.url, "types": []}))
        .await;
    assert_eq!((status, &s["types"]), (201, &Value::Null), "{s}");

    let beyond = head + 1000;
    for path in [
        format!("/v1/events?after={beyond}"),
        format!("/v1/events/stream?after={beyond}"),
    ] {
        let (status, e) = svc.get(&path).await;
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(
            e["error"]["message"],
            format!("after: {beyond} is beyond the head {head}"),
            "{path}"
        );
    }
    let resp = svc
        .http
        .get(format!("{}/v1/events/stream", svc.base))
        .bearer_auth(TOKEN)
        .header("last-event-id", beyond.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(
        e["error"]["message"],
        format!("Last-Event-ID: {beyond} is beyond the head {head}")
    );
    let (status, page) = svc.get(&format!("/v1/events?after={head}")).await;
    assert_eq!((status, page["next_after"].as_i64()), (200, Some(head)));
    svc.stop().await;
}
