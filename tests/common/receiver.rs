//! A real HTTP webhook receiver for the tests: records every request (headers, body, what
//! it answered) and answers as the test tells it (succeed, fail, hang, 410, slowly).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Clone, Debug)]
pub enum Mode {
    Ok,
    /// Answer this status (with `Retry-After` when set).
    Status(u16, Option<u64>),
    /// Never answer (until the client gives up).
    Hang,
    /// A Crypto IPN receiver: 200 with the form's `address`, `confirmed`, `unconfirmed`
    /// echoed as JSON (as decimal strings, as its README shows); `wrong` echoes a wrong
    /// `confirmed`.
    IpnEcho {
        wrong: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub position: i64,
    /// `chainledger-previous-position`: the event delivered before this one.
    pub previous: Option<i64>,
    pub answered: u16,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    mode: Mutex<Option<Mode>>,
    /// Fail this many requests (503 with `Retry-After: fail_retry_after`) before `mode`.
    fail_first: AtomicUsize,
    fail_retry_after: AtomicUsize,
    delay_ms: AtomicUsize,
    got: Mutex<Vec<Received>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .fallback(axum::routing::any(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, inner }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap() = Some(mode);
    }

    pub fn fail_first(&self, n: usize, retry_after_secs: usize) {
        self.inner
            .fail_retry_after
            .store(retry_after_secs, Ordering::SeqCst);
        self.inner.fail_first.store(n, Ordering::SeqCst);
    }

    pub fn delay(&self, ms: usize) {
        self.inner.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.got.lock().unwrap().clone()
    }

    /// Positions of the requests answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<i64> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| r.position)
            .collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let failing = inner
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let mode = if failing {
        Mode::Status(
            503,
            Some(inner.fail_retry_after.load(Ordering::SeqCst) as u64),
        )
    } else {
        inner.mode.lock().unwrap().clone().unwrap_or(Mode::Ok)
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let position = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["position"].as_i64())
        .unwrap_or(-1);
    let (answered, response) = match mode {
        Mode::Ok => (200, StatusCode::OK.into_response()),
        Mode::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap();
            let mut resp = (status, "no").into_response();
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            (code, resp)
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (0, StatusCode::OK.into_response())
        }
        Mode::IpnEcho { wrong } => {
            let form: std::collections::HashMap<String, String> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let field = |k: &str| form.get(k).cloned().unwrap_or_default();
            let confirmed = if wrong {
                "21000000".to_string()
            } else {
                field("confirmed")
            };
            let echo = serde_json::json!({"address": field("address"), "confirmed": confirmed,
                                          "unconfirmed": field("unconfirmed")});
            (200, axum::Json(echo).into_response())
        }
    };
    inner.got.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        position,
        previous: header("chainledger-previous-position").parse().ok(),
        answered,
        at: Instant::now(),
    });
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// What at-least-once in order means for one receiver that got `got` of a log whose head
/// is `head`: every position 1..=head answered, each for the first time after every
/// smaller one; a position that goes back is a repeat of one already delivered (a
/// group-commit window sent again after a crash or a failed journal batch, in order), at
/// most `repeats` of them, and a repeat keeps its `webhook-id`.
pub fn assert_every_event_in_order(got: &[Received], head: i64, repeats: usize) {
    let delivered: Vec<&Received> = got
        .iter()
        .filter(|g| (200..300).contains(&g.answered))
        .collect();
    let positions: Vec<i64> = delivered.iter().map(|g| g.position).collect();
    let mut first = std::collections::HashMap::new();
    let mut firsts = Vec::new();
    for g in &delivered {
        match first.get(&g.position) {
            None => {
                assert!(
                    firsts.last().is_none_or(|l| *l < g.position),
                    "in order: {} first delivered after {:?}: {positions:?}",
                    g.position,
                    firsts.last()
                );
                first.insert(g.position, &g.id);
                firsts.push(g.position);
            }
            Some(id) => assert_eq!(*id, &g.id, "a redelivery keeps its webhook-id"),
        }
    }
    assert_eq!(
        firsts,
        (1..=head).collect::<Vec<_>>(),
        "every event, no gap"
    );
    let twice = positions.len() - firsts.len();
    assert!(twice <= repeats, "at most {repeats} repeated; {twice} were");
}
