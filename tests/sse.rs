//! The SSE stream read with an off-the-shelf SSE parser (`eventsource-stream`, which
//! follows the WHATWG EventSource parsing rules): ids are positions, a reconnect with
//! `Last-Event-ID` resumes with no gap, filters apply, bad input is a 400.

mod common;

use std::time::Duration;

use common::*;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use serde_json::Value;

async fn open(
    svc: &Service,
    query: &str,
    last_event_id: Option<&str>,
) -> impl Stream<Item = Event> + Unpin {
    let mut req = svc
        .http
        .get(format!("{}/v1/events/stream{query}", svc.base))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .map(|e| e.expect("well-formed SSE")),
    )
}

async fn next(stream: &mut (impl Stream<Item = Event> + Unpin)) -> (i64, Value) {
    let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream stays open");
    assert_eq!(
        e.event, "message",
        "unnamed, so EventSource.onmessage gets it"
    );
    let data: Value = serde_json::from_str(&e.data).unwrap();
    let id: i64 = e.id.parse().unwrap();
    assert_eq!(data["position"].as_i64(), Some(id));
    (id, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_with_last_event_id_resumes_without_a_gap() {
    let (_node, svc) = node_and_service().await;
    let head = svc.make_events(6).await;

    let mut first = open(&svc, "?after=0", None).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut first).await.0);
    }
    drop(first); // disconnected after position N
    let n = *seen.last().unwrap();

    // Reconnect as EventSource does: the URL it was opened with, plus Last-Event-ID.
    let mut second = open(&svc, "?after=0", Some(&n.to_string())).await;
    while seen.len() < head as usize {
        seen.push(next(&mut second).await.0);
    }
    assert_eq!(
        seen,
        (1..=head).collect::<Vec<_>>(),
        "N+1 onward, no gap, no repeat"
    );

    // Live: an event appended now arrives on the open stream.
    let live = svc.make_events(1).await;
    assert_eq!(next(&mut second).await.0, live);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_applies_the_type_filter_and_refuses_bad_input() {
    let (_node, svc) = node_and_service().await;
    let head = svc.make_events(3).await;
    let mut stream = open(&svc, "?types=account.*", None).await;
    let (id, e) = next(&mut stream).await;
    assert_eq!(e["type"], "account.created");
    assert_eq!(id, head - 2);

    for (query, code) in [
        ("?types=nope.*", "invalid_types"),
        ("?after=-3", "invalid_after"),
        ("?since=1", "invalid_query"),
    ] {
        let (status, body) = svc.get(&format!("/v1/events/stream{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code);
    }
    let resp = svc
        .http
        .get(format!("{}/v1/events/stream", svc.base))
        .bearer_auth(TOKEN)
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = svc
        .http
        .get(format!("{}/v1/events/stream", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the stream needs the token too");
    // As a browser EventSource must: the token in the URL, no headers at all.
    let resp = reqwest::get(format!(
        "{}/v1/events/stream?after={}&access_token={TOKEN}",
        svc.base,
        head - 1
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let mut browserlike = Box::pin(resp.bytes_stream().eventsource().map(|e| e.unwrap()));
    assert_eq!(next(&mut browserlike).await.0, head);
    let resp = reqwest::get(format!(
        "{}/v1/events/stream?access_token=wrong-token-0123456789",
        svc.base
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::get(format!("{}/v1/events?access_token={TOKEN}", svc.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "only the stream takes a query token");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_names_the_one_sent_before_it() {
    let (_node, svc) = node_and_service().await;
    let start = svc.make_events(2).await;
    // From the middle, filtered: the first names where the client resumed, each later
    // one the message before it, across the read-for-itself and shared-tail paths.
    let mut stream = open(&svc, &format!("?after={}&types=account.*", start - 1), None).await;
    let mut prev = start - 1;
    let (id, data) = next(&mut stream).await;
    assert_eq!(data["prev"], prev, "{data}");
    prev = id;
    svc.make_events(3).await;
    for _ in 0..3 {
        let (id, data) = next(&mut stream).await;
        assert_eq!(data["prev"], prev, "{data}");
        prev = id;
    }
    let mut resumed = open(&svc, "", Some(&prev.to_string())).await;
    svc.make_events(1).await;
    let (_, data) = next(&mut resumed).await;
    assert_eq!(
        data["prev"], prev,
        "Last-Event-ID is the first message's prev"
    );
    svc.stop().await;
}
