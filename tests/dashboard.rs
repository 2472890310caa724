//! The operator dashboard (`/ui`) in a real headless Chromium driven over the Chrome
//! DevTools Protocol: a wrong token is refused, each page renders the service's live data,
//! and actions taken in the page (replay, delete) change the service's state. With
//! CHAINLEDGER_SCREENSHOTS=<dir> it saves a screenshot of each page there (the README's are
//! in docs/screenshots/, made so).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::chromium::{chromium, Browser};
use common::receiver::Receiver;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page of the browser, spoken to over CDP.
struct Page {
    ws: Socket,
    next: u64,
}

impl Page {
    async fn open(browser_port: u16) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!(
                "http://127.0.0.1:{browser_port}/json/new?about:blank"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = target["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Page { ws, next: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("CDP answers")
                .unwrap()
                .unwrap();
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (awaiting a promise), returning its value.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `js` evaluates to true.
    async fn until(&mut self, js: &str) {
        for _ in 0..300 {
            if self.eval(js).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let body = self.eval("document.body.innerText").await;
        panic!("the page never satisfied {js}; it shows:\n{body}");
    }

    async fn screenshot(&mut self, name: &str) {
        let Ok(dir) = std::env::var("CHAINLEDGER_SCREENSHOTS") else {
            return;
        };
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

fn start_browser() -> (Browser, u16) {
    let profile = std::env::temp_dir().join(format!("chainledger-ui-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&profile).unwrap();
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Chromium");
    let browser = Browser(child, profile.clone());
    let port_file = profile.join("DevToolsActivePort");
    for _ in 0..300 {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
        {
            return (browser, port);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("Chromium did not open its DevTools port");
}

/// JavaScript that clicks the element with `id`.
fn click(id: &str) -> String {
    format!("document.getElementById({id:?}).click(), true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_data_refuses_a_wrong_token_and_acts_on_the_service() {
    let (node, svc) = node_and_service().await;
    let address = foreign_address();
    let account = svc.account_watching(&address).await;
    let paying = node.new_address("legacy");
    let other = svc.account_watching(&paying).await;
    node.send(&paying, "0.25");
    node.mine(1);
    svc.synced_to(node.height()).await;
    let receiver = Receiver::start().await;
    let (subscriber, _) = svc
        .subscribe(&receiver.url, json!({"start": "beginning"}))
        .await;
    let head = svc.head().await;
    eventually(Duration::from_secs(20), || async {
        (receiver.delivered().last() == Some(&head)).then_some(())
    })
    .await;
    // A subscriber whose receiver fails until its retries are spent: disabled, and a
    // `subscriber.disabled` event the page shows.
    let failing = Receiver::start().await;
    failing.set_mode(common::receiver::Mode::Status(500, None));
    let (sick, _) = svc
        .subscribe(&failing.url, json!({"start": "beginning"}))
        .await;
    eventually(Duration::from_secs(20), || async {
        let (_, s) = svc.get(&format!("/v1/subscribers/{sick}")).await;
        (s["status"] == "disabled").then_some(())
    })
    .await;

    let (_browser, port) = start_browser();
    let mut page = Page::open(port).await;
    page.call("Page.enable", json!({})).await;
    page.call("Page.navigate", json!({"url": format!("{}/ui", svc.base)}))
        .await;
    page.until("document.readyState === 'complete' && !!document.getElementById('signin-form')")
        .await;
    page.screenshot("signin").await;

    // A wrong token: refused, nothing shown, nothing kept.
    page.eval("document.getElementById('token').value = 'not-the-token-0123456'; document.getElementById('signin-form').requestSubmit(), true").await;
    page.until("document.getElementById('signin-error').textContent.includes('refused') && document.getElementById('tabs').hidden")
        .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('chainledger.token')")
            .await,
        Value::Null
    );

    // The right one: the status page with the service's data.
    page.eval(&format!("document.getElementById('token').value = {TOKEN:?}; document.getElementById('signin-form').requestSubmit(), true")).await;
    let tip = node.height();
    page.until(&format!(
        "(document.querySelector('[data-fact=\"synced tip\"]') || {{}}).textContent === '{tip}'"
    ))
    .await;
    let url = page.eval("location.href").await;
    assert!(
        !url.as_str().unwrap().contains(TOKEN),
        "the token is never in a URL"
    );
    page.screenshot("status").await;

    // The live log: events appended now appear.
    page.eval(&click_tab("log")).await;
    page.until("document.getElementById('log-rows').children.length > 0")
        .await;
    let new_head = svc.make_events(2).await;
    page.until(&format!(
        "!!document.querySelector('#log-rows tr[data-position=\"{new_head}\"]')"
    ))
    .await;
    page.screenshot("log").await;

    // Subscribers: the list, a subscriber's deliveries, then a replay and a delete made in
    // the page, seen by the API.
    page.eval(&click_tab("subscribers")).await;
    page.until(&format!(
        "!!document.querySelector('#subscriber-rows tr[data-id=\"{subscriber}\"]')"
    ))
    .await;
    page.eval(&format!(
        "document.querySelector('#subscriber-rows tr[data-id=\"{subscriber}\"]').click(), true"
    ))
    .await;
    page.until("document.getElementById('delivery-rows').children.length > 0")
        .await;
    page.screenshot("subscribers").await;
    page.eval("document.getElementById('replay-from').value = '1', true")
        .await;
    let deliveries = receiver.delivered().len();
    page.eval(&click("replay")).await;
    page.until("document.getElementById('subscriber-message').textContent === 'replay: done'")
        .await;
    eventually(Duration::from_secs(20), || async {
        (receiver.delivered().len() > deliveries).then_some(())
    })
    .await;
    // Redeliver one event from the deliveries list.
    let redelivered = |r: &Receiver| r.delivered().iter().filter(|p| **p == head).count();
    let before = redelivered(&receiver);
    let button = format!("#delivery-rows button[data-redeliver=\"{head}\"]");
    page.until(&format!("!!document.querySelector('{button}')"))
        .await;
    page.eval(&format!("document.querySelector('{button}').click(), true"))
        .await;
    page.until(&format!(
        "document.getElementById('subscriber-message').textContent === 'redeliver {head}: delivered (HTTP 200)'"
    ))
    .await;
    assert_eq!(redelivered(&receiver), before + 1);
    page.until("[...document.querySelectorAll('#delivery-rows tr')].some((tr) => tr.children[1].textContent === 'redelivery')")
        .await;

    page.eval("window.confirm = () => true, true").await;
    page.eval(&click("rotate")).await;
    page.until("document.getElementById('subscriber-message').textContent.startsWith('new secret (shown once): whsec_')")
        .await;
    page.eval(&click("delete")).await;
    eventually(Duration::from_secs(10), || async {
        let (_, list) = svc.get("/v1/subscribers").await;
        let left = list["subscribers"].as_array()?;
        (left.len() == 1 && left[0]["id"] == sick.as_str()).then_some(())
    })
    .await;

    // The disabled subscriber: its operational event.
    page.until(&format!(
        "!!document.querySelector('#subscriber-rows tr[data-id=\"{sick}\"]')"
    ))
    .await;
    page.eval(&format!(
        "document.querySelector('#subscriber-rows tr[data-id=\"{sick}\"]').click(), true"
    ))
    .await;
    page.until(
        "!!document.querySelector('#operational-rows tr[data-type=\"subscriber.disabled\"]')",
    )
    .await;
    page.screenshot("subscriber-disabled").await;

    // Accounts: balances, then one account's addresses and deposits.
    page.eval(&click_tab("accounts")).await;
    page.until(&format!(
        "!!document.querySelector('#account-rows tr[data-id=\"{other}\"]')"
    ))
    .await;
    assert_eq!(
        page.eval(&format!(
            "document.querySelectorAll('#account-rows tr[data-id=\"{account}\"]').length"
        ))
        .await,
        json!(1)
    );
    page.eval(&format!(
        "document.querySelector('#account-rows tr[data-id=\"{other}\"]').click(), true"
    ))
    .await;
    page.until("document.getElementById('deposit-rows').children.length === 1")
        .await;
    page.screenshot("accounts").await;

    // A phone's width.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    page.eval(&click_tab("status")).await;
    page.until(&format!(
        "(document.querySelector('[data-fact=\"synced tip\"]') || {{}}).textContent === '{tip}'"
    ))
    .await;
    page.screenshot("status-phone").await;
    svc.stop().await;
}

fn click_tab(tab: &str) -> String {
    format!("document.querySelector('#tabs button[data-tab=\"{tab}\"]').click(), true")
}
