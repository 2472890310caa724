//! Webhooks against a real receiver: signatures checked by the Standard Webhooks reference
//! implementation (PyPI `standardwebhooks`), retries, isolation, replay, disable/enable,
//! the SSRF guard and the lease between two instances.

mod common;

use std::process::Command;
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::*;
use serde_json::{json, Value};

/// Verifies with the `standardwebhooks` package; Err carries its complaint.
fn python_verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
) -> Result<(), String> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.local/python");
    assert!(
        std::path::Path::new(python)
            .join("standardwebhooks")
            .exists(),
        "standardwebhooks missing in {python}: run tools/install-deps"
    );
    let script = r#"
import sys
from standardwebhooks.webhooks import Webhook
secret, msg_id, ts, sig = sys.argv[1:5]
body = sys.stdin.buffer.read()
Webhook(secret).verify(body, {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": sig})
print("verified")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, secret, id, timestamp, signature])
        .env("PYTHONPATH", python)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn wait_delivered(r: &Receiver, expected: &[i64]) {
    eventually(Duration::from_secs(30), || async {
        let got = r.delivered();
        (got.len() >= expected.len()).then_some(())
    })
    .await;
    assert_eq!(r.delivered(), expected);
}

/// Waits until the subscriber's cursor reached `position`: the receiver has the last
/// event a moment before its attempt is journaled.
async fn caught_up(svc: &Service, id: &str, position: i64) {
    eventually(Duration::from_secs(10), || async {
        (subscriber(svc, id).await["cursor"].as_i64() >= Some(position)).then_some(())
    })
    .await;
}

async fn subscriber(svc: &Service, id: &str) -> Value {
    let (status, s) = svc.get(&format!("/v1/subscribers/{id}")).await;
    assert_eq!(status, 200, "{s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_the_reference_implementation_and_break_on_one_changed_byte() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    let (id, secret) = svc.subscribe(&r.url, json!({})).await;
    assert!(secret.starts_with("whsec_"));
    let head = svc.make_events(2).await;
    wait_delivered(&r, &[head - 1, head]).await;

    for got in r.received() {
        let event: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            got.id,
            event["id"].as_str().unwrap(),
            "webhook-id is the event id"
        );
        assert_eq!(event["type"], "account.created");
        python_verify(&secret, &got.id, &got.timestamp, &got.signature, &got.body)
            .expect("the reference implementation accepts our signature");
        let mut tampered = got.body.clone();
        tampered[10] ^= 1;
        let err = python_verify(&secret, &got.id, &got.timestamp, &got.signature, &tampered)
            .expect_err("one changed byte must fail verification");
        assert!(err.contains("WebhookVerificationError"), "{err}");
    }
    // The secret is shown once.
    caught_up(&svc, &id, head).await;
    let s = subscriber(&svc, &id).await;
    assert!(s.get("secret").is_none(), "{s}");
    assert_eq!(
        (s["status"].as_str(), s["lag"].as_i64()),
        (Some("active"), Some(0))
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_its_first_attempts_gets_every_event_in_order() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    r.fail_first(2, 1); // 503 with Retry-After: 1, twice
    let (id, _) = svc.subscribe(&r.url, json!({"start": "beginning"})).await;
    let head = svc.make_events(5).await;
    let all: Vec<i64> = (1..=head).collect();
    wait_delivered(&r, &all).await;

    let got = r.received();
    assert_eq!(got[0].answered, 503);
    assert_eq!(got[1].answered, 503);
    assert_eq!(got[0].position, 1);
    assert_eq!(
        got[1].position, 1,
        "the failed event is retried before any later one"
    );
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(900),
        "Retry-After: 1 is honoured over the 200 ms schedule"
    );
    caught_up(&svc, &id, head).await;
    let (status, d) = svc.get(&format!("/v1/subscribers/{id}/deliveries")).await;
    assert_eq!(status, 200, "{d}");
    let attempts: Vec<(i64, i64, String, Option<i64>)> = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| {
            (
                a["position"].as_i64().unwrap(),
                a["attempt"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap().to_string(),
                a["status_code"].as_i64(),
            )
        })
        .collect();
    assert_eq!(attempts.len() as i64, head + 2, "{d}");
    assert_eq!(attempts[0], (1, 1, "failed".into(), Some(503)));
    assert_eq!(attempts[1], (1, 2, "failed".into(), Some(503)));
    assert_eq!(attempts[2], (1, 3, "delivered".into(), Some(200)));
    assert_eq!(attempts.last().unwrap().0, head);
    // The recovery is a `subscriber.recovered` event after the head, which this
    // subscriber (no filter) passes over.
    assert_eq!(svc.head().await, head + 1);
    caught_up(&svc, &id, head + 1).await;
    let s = subscriber(&svc, &id).await;
    assert_eq!(
        (s["cursor"].as_i64(), s["status"].as_str()),
        (Some(head + 1), Some("active"))
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_failing_receivers_delay_only_their_own_subscribers() {
    let (_node, svc) = node_and_service().await;
    let (hanging, failing, healthy) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    hanging.set_mode(Mode::Hang);
    failing.set_mode(Mode::Status(500, None));
    let (hang_id, _) = svc.subscribe(&hanging.url, json!({})).await;
    let (fail_id, _) = svc.subscribe(&failing.url, json!({})).await;
    let (ok_id, _) = svc.subscribe(&healthy.url, json!({})).await;
    let mut expected = Vec::new();
    for _ in 0..8 {
        let position = svc.make_events(1).await;
        expected.push(position);
        // Each event reaches the healthy receiver before the next is made: its lag stays
        // at zero while the others hang (2 s timeout) and fail.
        eventually(Duration::from_secs(5), || async {
            (healthy.delivered().last() == Some(&position)).then_some(())
        })
        .await;
    }
    assert_eq!(healthy.delivered(), expected);
    // The receiver has answered; the cursor commits a moment later.
    eventually(Duration::from_secs(5), || async {
        (subscriber(&svc, &ok_id).await["lag"] == 0).then_some(())
    })
    .await;
    assert!(failing.delivered().is_empty() && hanging.delivered().is_empty());
    let failing_sub = subscriber(&svc, &fail_id).await;
    assert_eq!(failing_sub["cursor"].as_i64(), Some(expected[0] - 1));
    assert!(
        failing_sub["last_error"].as_str().unwrap().contains("500"),
        "{failing_sub}"
    );
    let hanging_sub = subscriber(&svc, &hang_id).await;
    assert_eq!(hanging_sub["cursor"].as_i64(), Some(expected[0] - 1));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_from_a_position_and_start_beginning_gets_the_history() {
    let (_node, svc) = node_and_service().await;
    let head = svc.make_events(4).await;
    let r = Receiver::start().await;
    let (id, _) = svc
        .subscribe(
            &r.url,
            json!({"start": "beginning", "types": ["account.*"]}),
        )
        .await;
    let all: Vec<i64> = svc
        .all_events()
        .await
        .iter()
        .filter(|e| e["type"] == "account.created")
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(all.len(), 4);
    wait_delivered(&r, &all).await;

    let (status, s) = svc
        .post(
            &format!("/v1/subscribers/{id}/replay"),
            json!({"from_position": 2}),
        )
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["cursor"], 1);
    let mut again = all.clone();
    again.extend(all.iter().filter(|p| **p >= 2));
    wait_delivered(&r, &again).await;

    // A position start, and a filter that matches nothing after it: the cursor still
    // catches up to the head.
    let later = Receiver::start().await;
    let (later_id, _) = svc
        .subscribe(&later.url, json!({"start": 3, "types": "account.created"}))
        .await;
    let from_3: Vec<i64> = all.iter().copied().filter(|p| *p >= 3).collect();
    wait_delivered(&later, &from_3).await;
    let none = Receiver::start().await;
    let (none_id, _) = svc
        .subscribe(
            &none.url,
            json!({"start": "beginning", "types": "deposit.*"}),
        )
        .await;
    eventually(Duration::from_secs(10), || async {
        (subscriber(&svc, &none_id).await["cursor"] == head).then_some(())
    })
    .await;
    assert!(none.received().is_empty());
    caught_up(&svc, &later_id, head).await;
    assert_eq!(subscriber(&svc, &later_id).await["lag"], 0);

    // Bad input names the field.
    for (body, field) in [
        (json!({"from_position": -1}), "from_position"),
        (json!({"from_position": head + 5}), "from_position"),
    ] {
        let (status, e) = svc
            .post(&format!("/v1/subscribers/{id}/replay"), body)
            .await;
        assert_eq!(status, 422, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{e}"
        );
    }
    for (body, field) in [
        (json!({"url": r.url, "types": "deposit.nope"}), "types"),
        (json!({"url": r.url, "start": "yesterday"}), "start"),
        (
            json!({"url": r.url, "account_id": uuid::Uuid::new_v4()}),
            "account_id",
        ),
        (json!({"url": "not a url"}), "url"),
    ] {
        let (status, e) = svc.post("/v1/subscribers", body).await;
        assert_eq!(status, 422, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(field),
            "{e}"
        );
    }
    assert_eq!(svc.delete(&format!("/v1/subscribers/{id}")).await, 204);
    assert_eq!(svc.get(&format!("/v1/subscribers/{id}")).await.0, 404);
    assert_eq!(svc.delete(&format!("/v1/subscribers/{id}")).await, 404);
    let (_, list) = svc.get("/v1/subscribers").await;
    assert_eq!(list["subscribers"].as_array().unwrap().len(), 2, "{list}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_subscriber_loses_nothing_and_resumes_on_enable() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    r.set_mode(Mode::Status(500, None));
    let (id, _) = svc.subscribe(&r.url, json!({})).await;
    let first = svc.make_events(1).await;
    // The test schedule is 3 attempts (0s, 200ms, 400ms): then disabled.
    eventually(Duration::from_secs(10), || async {
        (subscriber(&svc, &id).await["status"] == "disabled").then_some(())
    })
    .await;
    assert_eq!(r.received().len(), 3);
    let head = svc.make_events(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.received().len(), 3, "a disabled subscriber gets nothing");

    r.set_mode(Mode::Ok);
    let (status, s) = svc
        .post(&format!("/v1/subscribers/{id}/enable"), json!({}))
        .await;
    assert_eq!(status, 200, "{s}");
    // Every event it gets: the tail without a filter (the `subscriber.disabled` and
    // `.enabled` events between them are not among them).
    let expected: Vec<i64> = svc
        .all_events()
        .await
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .filter(|p| *p >= first)
        .collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(*expected.last().unwrap(), head);
    wait_delivered(&r, &expected).await;

    // 410 Gone disables at once, cursor kept.
    r.set_mode(Mode::Status(410, None));
    let gone = svc.make_events(1).await;
    eventually(Duration::from_secs(10), || async {
        (subscriber(&svc, &id).await["status"] == "disabled").then_some(())
    })
    .await;
    assert_eq!(r.received().last().unwrap().answered, 410);
    // Kept: before `gone` (past the `subscriber.enabled` event in between, if the worker
    // read past it before `gone` committed).
    let cursor = subscriber(&svc, &id).await["cursor"].as_i64().unwrap();
    assert!((head..gone).contains(&cursor), "{cursor}");
    r.set_mode(Mode::Ok);
    svc.post(&format!("/v1/subscribers/{id}/enable"), json!({}))
        .await;
    eventually(Duration::from_secs(10), || async {
        (r.delivered().last() == Some(&gone)).then_some(())
    })
    .await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_targets_are_refused_unless_allowed() {
    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    cfg.webhook_allow_nets.clear();
    let svc = Service::start(cfg).await;
    for url in [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/hook",
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
    ] {
        let (status, e) = svc.post("/v1/subscribers", json!({"url": url})).await;
        assert_eq!(status, 422, "{url}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with("url:"),
            "{e}"
        );
    }
    svc.stop().await;
    // The test configuration allows 127.0.0.0/8 and nothing else.
    let svc = Service::start(config(&db, &node)).await;
    let (status, e) = svc
        .post("/v1/subscribers", json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_eq!(status, 201, "{e}");
    let (status, e) = svc
        .post("/v1/subscribers", json!({"url": "http://10.0.0.1/hook"}))
        .await;
    assert_eq!(status, 422, "{e}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_deliver_one_subscriber_concurrently() {
    let node = Node::start();
    let db = fresh_database().await;
    let a = Service::start(config(&db, &node)).await;
    let b = Service::start(config(&db, &node)).await;
    a.synced_to(node.height()).await;
    let r = Receiver::start().await;
    r.delay(5);
    a.subscribe(&r.url, json!({"start": "beginning"})).await;
    let head = a.make_events(40).await;
    wait_delivered(&r, &(1..=head).collect::<Vec<_>>()).await;
    assert_eq!(
        r.max_in_flight(),
        1,
        "one delivery at a time per subscriber"
    );
    let _ = b.head().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_no_longer_allowed_is_refused_at_delivery_time() {
    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    cfg.webhook_allow_nets = chainledger::delivery::Guard::parse_nets("127.0.0.0/8,::1").unwrap();
    let svc = Service::start(cfg).await;
    // Synced first, so no event is appended (and delivered) while loopback is allowed.
    svc.synced_to(node.height()).await;
    let r = Receiver::start().await;
    let by_name = r.url.replace("127.0.0.1", "localhost");
    let (named, _) = svc.subscribe(&by_name, json!({})).await;
    let (literal, _) = svc.subscribe(&r.url, json!({})).await;
    svc.stop().await;

    // The same subscribers, after the operator stopped allowing loopback: what a name
    // re-pointed at a private address looks like from here.
    let mut cfg = config(&db, &node);
    cfg.webhook_allow_nets.clear();
    let svc = Service::start(cfg).await;
    svc.make_events(1).await;
    for id in [&named, &literal] {
        let error = eventually(Duration::from_secs(10), || async {
            let (_, d) = svc.get(&format!("/v1/subscribers/{id}/deliveries")).await;
            d["deliveries"][0]["error"].as_str().map(String::from)
        })
        .await;
        assert!(error.contains("not a public address"), "{error}");
    }
    assert!(r.received().is_empty(), "nothing reached the receiver");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_every_database_connection_being_killed() {
    let (node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    r.delay(2);
    let (id, _) = svc.subscribe(&r.url, json!({"start": "beginning"})).await;
    svc.make_events(40).await;
    eventually(Duration::from_secs(20), || async {
        (r.received().len() >= 10).then_some(())
    })
    .await;
    // Every connection the service holds (pool, listener, leader lock, journal writer).
    let db = svc.database_url.clone().unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        killed.len() >= 3,
        "the service's connections were there: {killed:?}"
    );
    // The service recovers: new events are appended, followed and delivered.
    eventually(Duration::from_secs(30), || async {
        let (status, _) = svc
            .post("/v1/accounts", json!({"label": "after the kill"}))
            .await;
        (status == 201).then_some(())
    })
    .await;
    node.mine(1);
    svc.synced_to(node.height()).await;
    let head = svc.head().await;
    eventually(Duration::from_secs(30), || async {
        (r.delivered().last() == Some(&head)).then_some(())
    })
    .await;
    let got = r.delivered();
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=head).collect::<Vec<_>>(),
        "every event, in order"
    );
    assert!(
        got.len() - distinct.len() <= 1,
        "at most the one in flight twice"
    );
    caught_up(&svc, &id, head).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_old_one_expires() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    let (id, first) = svc.subscribe(&r.url, json!({})).await;
    let last_delivery = |position: i64| {
        let r = &r;
        async move {
            eventually(Duration::from_secs(20), || async {
                r.received()
                    .into_iter()
                    .rev()
                    .find(|g| g.position == position && g.answered == 200)
            })
            .await
        }
    };
    let head = svc.make_events(1).await;
    let got = last_delivery(head).await;
    assert!(!got.signature.contains(' '), "one secret, one signature");
    caught_up(&svc, &id, head).await;

    // Rotated, the old one kept for an hour: every delivery carries both signatures, and
    // the reference verifier accepts it with either secret.
    let (status, rotated) = svc
        .post(
            &format!("/v1/subscribers/{id}/rotate-secret"),
            json!({"keep_old_for_secs": 3600}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let head = svc.make_events(1).await;
    let got = last_delivery(head).await;
    assert_eq!(got.signature.split(' ').count(), 2, "{}", got.signature);
    for secret in [&first, &second] {
        python_verify(secret, &got.id, &got.timestamp, &got.signature, &got.body)
            .expect("either secret verifies during the overlap");
    }
    assert!(
        subscriber(&svc, &id).await.get("secret").is_none(),
        "the new secret is shown once"
    );
    caught_up(&svc, &id, head).await;

    // Rotated again without overlap: only the newest signs; the previous one fails.
    let (status, rotated) = svc
        .post(
            &format!("/v1/subscribers/{id}/rotate-secret"),
            json!({"keep_old_for_secs": 0}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["previous_secret_expires_at"].is_null());
    let third = rotated["secret"].as_str().unwrap().to_string();
    let head = svc.make_events(1).await;
    let got = last_delivery(head).await;
    assert!(!got.signature.contains(' '), "{}", got.signature);
    python_verify(&third, &got.id, &got.timestamp, &got.signature, &got.body)
        .expect("the newest secret verifies");
    python_verify(&second, &got.id, &got.timestamp, &got.signature, &got.body)
        .expect_err("the replaced secret no longer does");

    // Bad input names the field; an unknown subscriber is a 404.
    let (status, body) = svc
        .post(
            &format!("/v1/subscribers/{id}/rotate-secret"),
            json!({"keep_old_for_secs": 10_000_000}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("keep_old_for_secs"));
    let (status, _) = svc
        .post(
            &format!("/v1/subscribers/{}/rotate-secret", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
}

/// The README's receiver check: a delivery whose `chainledger-previous-position` is not the
/// last position the receiver accepted means it missed one.
fn receiver_check(got: &[common::receiver::Received]) -> Result<(), String> {
    let mut last = 0;
    for g in got.iter().filter(|g| g.answered == 200) {
        if g.previous != Some(last) && g.position > last {
            return Err(format!(
                "{} says {:?} came before, we have {last}",
                g.position, g.previous
            ));
        }
        last = last.max(g.position);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_names_the_one_before_it_through_failures_filters_and_replays() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    // A filter (account.created only), so positions skip: `previous` is the previous one
    // *delivered*, not position - 1. Two failures first: a retry repeats its `previous`.
    r.fail_first(2, 0);
    let (id, _) = svc
        .subscribe(
            &r.url,
            json!({"types": ["account.created"], "start": "beginning"}),
        )
        .await;
    let head = svc.make_events(6).await;
    eventually(Duration::from_secs(30), || async {
        (r.delivered().last() == Some(&head)).then_some(())
    })
    .await;
    let got = r.received();
    let delivered: Vec<(i64, Option<i64>)> = got
        .iter()
        .filter(|g| g.answered == 200)
        .map(|g| (g.position, g.previous))
        .collect();
    let mut before = 0;
    for (position, previous) in &delivered {
        assert_eq!(*previous, Some(before), "{delivered:?}");
        before = *position;
    }
    assert!(got
        .iter()
        .filter(|g| g.answered != 200)
        .all(|g| g.previous == Some(0)));
    receiver_check(&got).expect("nothing missed");

    // A replay from the third delivered event: its `previous` is the second's.
    caught_up(&svc, &id, head).await;
    let third = delivered[2].0;
    let (status, _) = svc
        .post(
            &format!("/v1/subscribers/{id}/replay"),
            json!({"from_position": third}),
        )
        .await;
    assert_eq!(status, 200);
    let first_again = eventually(Duration::from_secs(20), || async {
        r.received()
            .into_iter()
            .skip(got.len())
            .find(|g| g.answered == 200)
    })
    .await;
    assert_eq!(
        (first_again.position, first_again.previous),
        (third, Some(delivered[1].0))
    );

    // A receiver that lost a delivery finds out.
    let mut lost = got.clone();
    lost.retain(|g| g.position != delivered[3].0);
    assert!(receiver_check(&lost).is_err());
}
