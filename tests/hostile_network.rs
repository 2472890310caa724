//! Hostile clients (issue 13, problems 1, 4 and 6): unfinished requests by the hundred
//! against a service limited to 256 file descriptors, slowloris headers, bodies that never
//! end, idle keep-alives, more connections than the caps, an oversized Bitcart websocket
//! frame, and `/readyz` hammered while the node hangs. The service keeps answering the
//! others and keeps following the node; what it cannot serve it answers 503.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::faults::*;
use common::process::{free_port, wait_healthy, ServiceProcess, NO_ENV};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SOMEONE_ELSE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const UNFINISHED: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";

/// A node, a database and the service in this process with `tune` applied to its settings.
async fn service_with(tune: impl FnOnce(&mut chainledger::config::Config)) -> (Node, Service) {
    let node = Node::start();
    let mut cfg = config(&fresh_database().await, &node);
    tune(&mut cfg);
    let svc = Service::start(cfg).await;
    svc.synced_to(node.height()).await;
    (node, svc)
}

fn addr_of(svc: &Service) -> std::net::SocketAddr {
    svc.base.trim_start_matches("http://").parse().unwrap()
}

/// `n` connections from `source`, each having sent `bytes`; kept open by the caller.
async fn open_many(
    n: usize,
    source: Ipv4Addr,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> Vec<tokio::net::TcpStream> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        // Past the caps the service closes a connection at once: that is not a failure.
        if let Ok(mut s) = connect_from(source, addr).await {
            let _ = send(&mut s, bytes).await;
            open.push(s);
        }
    }
    open
}

/// A complete `GET path` on a new connection from `source`: the raw response, read until
/// the service closes.
async fn one_request_from(source: Ipv4Addr, addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let mut s = connect_from(source, addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(send(&mut s, request.as_bytes()).await);
    read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("answered and closed")
}

/// A 503 `too_many_connections` naming the cap `setting`, with `Retry-After: 1`.
fn assert_refused(response: &[u8], setting: &str) {
    let body = assert_error(response, 503, "too_many_connections");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(setting),
        "{body}"
    );
    let text = String::from_utf8_lossy(response).to_ascii_lowercase();
    assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_unfinished_requests_under_a_256_descriptor_limit_leave_the_service_answering_and_following(
) {
    let node = Node::start();
    let db = fresh_database().await;
    // A header timeout longer than the test: only the connection caps protect the service.
    let process = ServiceProcess::spawn_with(
        &db,
        &node,
        free_port(),
        &[("HTTP_HEADER_TIMEOUT_MS", "120000")],
        Some(256),
    );
    let svc = process.client_from(SOMEONE_ELSE);
    wait_healthy(&svc).await;
    svc.synced_to(node.height()).await;

    let held = open_many(300, ATTACKER, process.addr(), UNFINISHED).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    for path in ["/healthz", "/v1/status"] {
        let started = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(1),
            svc.http
                .get(format!("{}{path}", svc.base))
                .bearer_auth(TOKEN)
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer within a second"))
        .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The follower still has descriptors for the node and the database.
    node.mine(1);
    svc.synced_to(node.height()).await;
    // The attacker's next connection is told why, once the flood's own refusals (a
    // second each at most) are done.
    let refused = eventually(Duration::from_secs(5), || async {
        let answer = one_request_from(ATTACKER, process.addr(), "/healthz").await;
        (!answer.is_empty()).then_some(answer)
    })
    .await;
    assert_refused(&refused, "HTTP_MAX_CONNECTIONS_PER_IP");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_sending_a_header_byte_a_second_are_closed_after_the_header_timeout()
{
    let (_node, svc) = service_with(|c| c.http_header_timeout_ms = 2000).await;
    let addr = addr_of(&svc);
    // 50 connections, each sending a long header one byte a second.
    let header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(100)
    );
    let started = Instant::now();
    let loris = (0..50).map(|_| {
        let header = header.clone();
        tokio::spawn(async move {
            let mut s = connect_from(ATTACKER, addr).await.unwrap();
            for byte in header.as_bytes() {
                if !send(&mut s, &[*byte]).await {
                    return Some(Instant::now());
                }
                // A closed connection shows as a read of 0 bytes between two sends.
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::io::AsyncReadExt::read(&mut s, &mut probe),
                )
                .await
                {
                    return Some(Instant::now());
                }
                if started.elapsed() > Duration::from_secs(8) {
                    return None;
                }
            }
            None
        })
    });
    for closed in futures::future::join_all(loris).await {
        let closed = closed
            .unwrap()
            .expect("closed before its header was complete");
        assert!(
            closed - started < Duration::from_secs(5),
            "closed after the 2 s header timeout"
        );
    }
    // Someone else was served all along.
    let (status, _) = svc.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_never_finished_gets_408_within_the_body_timeout() {
    let (_node, svc) = service_with(|c| c.http_body_timeout_ms = 1000).await;
    let head = svc.head().await;
    let mut s = connect_from(ATTACKER, addr_of(&svc)).await.unwrap();
    let request = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"label\":"
    );
    assert!(send(&mut s, request.as_bytes()).await);
    let started = Instant::now();
    let response = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("answered and closed within the body timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_error(&response, 408, "request_timeout");
    assert_eq!(
        svc.head().await,
        head,
        "nothing recorded from half a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_node, svc) = service_with(|c| c.http_idle_timeout_ms = 1000).await;
    let mut s = connect_from(ATTACKER, addr_of(&svc)).await.unwrap();
    assert!(send(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await);
    let response = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("closed once idle");
    assert_eq!(
        status_of(&response),
        Some(200),
        "kept alive, then closed: {}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_sse_streams_outlive_the_header_idle_and_body_timeouts() {
    let (_node, svc) = service_with(|c| {
        c.http_header_timeout_ms = 500;
        c.http_idle_timeout_ms = 500;
        c.http_body_timeout_ms = 500;
    })
    .await;
    let head = svc.head().await;
    let stream = svc
        .http
        .get(format!("{}/v1/events/stream?after={head}", svc.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut stream = stream.bytes_stream();
    let poll = tokio::spawn({
        let (http, base) = (svc.http.clone(), svc.base.clone());
        async move {
            http.get(format!("{base}/v1/events?after={head}&wait=3"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let position = svc.make_events(1).await;
    let page = poll.await.unwrap();
    assert_eq!(page["events"][0]["position"], position, "{page}");
    let mut seen = String::new();
    while !seen.contains(&format!("id: {position}")) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream is still open")
            .expect("not ended")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A request from `source` once the connections just opened are counted: the service
/// accepts them in its own time (on a loaded machine, later than a fixed pause), so until
/// then a new one is rightly still served. The first answer that is not a 200.
async fn refused_once_counted(source: Ipv4Addr, addr: std::net::SocketAddr) -> Vec<u8> {
    eventually(Duration::from_secs(10), || async {
        let answer = one_request_from(source, addr, "/healthz").await;
        (status_of(&answer) != Some(200)).then_some(answer)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_caps_get_503_with_retry_after_and_others_are_served() {
    let (_node, svc) = service_with(|c| {
        c.http_max_connections = Some(8);
        c.http_max_connections_per_ip = Some(4);
    })
    .await;
    let addr = addr_of(&svc);
    // One address holds its share: its next connection is refused, another's is served.
    let first = open_many(4, ATTACKER, addr, b"").await;
    let refused = refused_once_counted(ATTACKER, addr).await;
    assert_refused(&refused, "HTTP_MAX_CONNECTIONS_PER_IP");
    let served = one_request_from(SOMEONE_ELSE, addr, "/healthz").await;
    assert_eq!(status_of(&served), Some(200));
    // The whole service at its cap: everyone's next connection gets 503 and Retry-After.
    let others: Vec<_> = futures::future::join_all(
        (3..7).map(|i| open_many(1, Ipv4Addr::new(127, 0, 0, i), addr, b"")),
    )
    .await;
    let refused = refused_once_counted(Ipv4Addr::new(127, 0, 0, 9), addr).await;
    assert_refused(&refused, "HTTP_MAX_CONNECTIONS)");
    // Connections closed give their places back.
    drop((first, others));
    eventually(Duration::from_secs(5), || async {
        let served = one_request_from(ATTACKER, addr, "/healthz").await;
        (status_of(&served) == Some(200)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bitcart_websocket_frame_over_64_kib_is_refused_and_the_connection_closed() {
    let (_node, svc) = node_and_service().await;
    let mut request = format!("{}/ws", svc.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    let login = base64::engine::general_purpose::STANDARD.encode(format!("chainledger:{TOKEN}"));
    request
        .headers_mut()
        .insert("authorization", format!("Basic {login}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // Not a wallet's name (that would close it as an unknown wallet): only its size is wrong.
    let big = json!({"padding": "x".repeat(65 * 1024)}).to_string();
    ws.send(Message::Text(big.into())).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after a 65 KiB frame"
    );
    let (status, _) = svc.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_readyz_calls_while_the_node_hangs_answer_at_once_without_piling_up_threads() {
    let node = Node::start();
    let db = fresh_database().await;
    let mut process = ServiceProcess::spawn(&db, &node, free_port(), NO_ENV);
    let svc = process.client_from(SOMEONE_ELSE);
    wait_healthy(&svc).await;
    svc.synced_to(node.height()).await;
    assert_eq!(readyz(&svc).await.unwrap().0, 200);
    let threads_before = process.threads();

    let hung = Stopped::stop(&node);
    eventually(Duration::from_secs(10), || async {
        (readyz(&svc).await.unwrap().1["node"] == false).then_some(())
    })
    .await;
    let mut slowest = Duration::ZERO;
    let mut most_threads = 0;
    for _ in 0..30 {
        let calls = (0..20).map(|_| async {
            let started = Instant::now();
            let answer = readyz(&svc).await.expect("/readyz answers");
            (answer, started.elapsed())
        });
        for ((status, body), took) in futures::future::join_all(calls).await {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body, json!({"database": true, "node": false}));
            slowest = slowest.max(took);
        }
        most_threads = most_threads.max(process.threads());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "/readyz took {slowest:?} with the node hung"
    );
    assert!(
        most_threads < 100,
        "{most_threads} threads (from {threads_before}) with the node hung"
    );
    drop(hung);
    eventually(Duration::from_secs(40), || async {
        (readyz(&svc).await.unwrap().0 == 200).then_some(())
    })
    .await;
    assert!(process.alive());
}
