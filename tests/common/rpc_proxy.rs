//! A JSON-RPC proxy in front of a regtest node, for tests that must see what the service
//! asks the node: it forwards every request unchanged, counts the methods called (batches
//! included), and can hold back one method's calls until released — a node that hangs on
//! that RPC only.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;
use tokio::sync::watch;

use super::Node;

#[derive(Clone)]
struct Shared {
    node_url: String,
    client: reqwest::Client,
    calls: Arc<Mutex<Vec<String>>>,
    /// HTTP requests (a batch is one), as the methods each carried.
    requests: Arc<Mutex<Vec<Vec<String>>>>,
    /// The method whose calls wait, while set.
    held: watch::Sender<Option<String>>,
}

pub struct RpcProxy {
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl RpcProxy {
    pub async fn start(node: &Node) -> RpcProxy {
        let shared = Shared {
            node_url: node.url.clone(),
            client: reqwest::Client::new(),
            calls: Arc::default(),
            requests: Arc::default(),
            held: watch::Sender::new(None),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RpcProxy { url, shared, task }
    }

    /// How many calls of `method` the node was asked, so far.
    pub fn calls(&self, method: &str) -> usize {
        let calls = self.shared.calls.lock().unwrap();
        calls.iter().filter(|m| *m == method).count()
    }

    /// HTTP requests so far that called `method` (a JSON-RPC batch is one request of
    /// many calls).
    pub fn requests(&self, method: &str) -> usize {
        let requests = self.shared.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.iter().any(|m| m == method))
            .count()
    }

    /// From now on, calls of `method` wait until [`RpcProxy::release`].
    pub fn hold(&self, method: &str) {
        self.shared.held.send_replace(Some(method.to_string()));
    }

    pub fn release(&self) {
        self.shared.held.send_replace(None);
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

/// The methods of a JSON-RPC request or batch.
fn methods(body: &[u8]) -> Vec<String> {
    let name = |v: &Value| v["method"].as_str().unwrap_or_default().to_string();
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(batch)) => batch.iter().map(name).collect(),
        Ok(one) => vec![name(&one)],
        Err(_) => Vec::new(),
    }
}

async fn forward(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let called = methods(&body);
    s.calls.lock().unwrap().extend(called.iter().cloned());
    s.requests.lock().unwrap().push(called.clone());
    let mut held = s.held.subscribe();
    let _ = held
        .wait_for(|h| h.as_ref().is_none_or(|m| !called.contains(m)))
        .await;
    let mut request = s.client.post(&s.node_url).body(body);
    if let Some(auth) = headers.get("authorization") {
        request = request.header("authorization", auth);
    }
    match request.send().await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            (status, resp.bytes().await.unwrap_or_default()).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
