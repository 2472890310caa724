//! Operational events and redeliveries against real receivers: a subscriber disabled by a
//! failing receiver, enabled, and recovering is told, as `subscriber.*` events, to the
//! subscribers (and tail readers) that name them and to nobody else; an operator's
//! redelivery of one event sends it again, names its predecessor, is journaled and moves
//! no cursor.

mod common;

use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::*;
use serde_json::{json, Value};

async fn subscriber(svc: &Service, id: &str) -> Value {
    let (status, s) = svc.get(&format!("/v1/subscribers/{id}")).await;
    assert_eq!(status, 200, "{s}");
    s
}

async fn status_is(svc: &Service, id: &str, status: &str) {
    eventually(Duration::from_secs(15), || async {
        (subscriber(svc, id).await["status"] == status).then_some(())
    })
    .await;
}

/// The envelopes a receiver was sent, in order.
fn bodies(r: &Receiver) -> Vec<Value> {
    r.received()
        .iter()
        .map(|x| serde_json::from_slice(&x.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_enabled_and_recovered_reach_only_the_readers_that_name_them() {
    let (_node, svc) = node_and_service().await;
    let failing = Receiver::start().await;
    failing.set_mode(Mode::Status(500, None));
    let (sick, _) = svc.subscribe(&failing.url, json!({})).await;
    let ops = Receiver::start().await;
    let (_, _) = svc
        .subscribe(&ops.url, json!({"types": ["subscriber.*"]}))
        .await;
    let everything = Receiver::start().await;
    svc.subscribe(&everything.url, json!({})).await;
    let deposits = Receiver::start().await;
    svc.subscribe(&deposits.url, json!({"types": "account.*,deposit.*"}))
        .await;

    let first = svc.make_events(1).await;
    // The tests' schedule is three attempts: then disabled.
    status_is(&svc, &sick, "disabled").await;
    eventually(Duration::from_secs(10), || async {
        (!ops.delivered().is_empty()).then_some(())
    })
    .await;
    let got = bodies(&ops);
    assert_eq!(got[0]["type"], "subscriber.disabled", "{got:?}");
    assert_eq!(got[0]["stream"], format!("subscriber-{sick}"));
    let d = &got[0]["data"];
    assert_eq!(d["subscriber_id"], sick.as_str());
    assert_eq!(d["position"], first);
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["status_code"], 500);
    assert_eq!(d["cursor"], first - 1);
    assert!(d["reason"].as_str().unwrap().contains("HTTP 500"), "{d}");

    // Enabled with a receiver that fails once more, then works: enabled, then recovered.
    failing.set_mode(Mode::Ok);
    failing.fail_first(1, 0);
    let (status, body) = svc
        .post(&format!("/v1/subscribers/{sick}/enable"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(15), || async {
        (ops.delivered().len() >= 3).then_some(())
    })
    .await;
    let got = bodies(&ops);
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "subscriber.disabled",
            "subscriber.enabled",
            "subscriber.recovered"
        ]
    );
    assert_eq!(got[1]["data"]["cursor"], first - 1);
    assert_eq!(got[2]["data"]["position"], first);
    assert_eq!(got[2]["data"]["failed_attempts"], 1);
    // One stream, versions 0, 1, 2: each recorded once.
    let versions: Vec<i64> = got
        .iter()
        .map(|e| e["stream_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [0, 1, 2]);
    assert_eq!(
        failing.delivered(),
        [first],
        "the event itself, delivered once"
    );

    // A reader without a filter, and one with deposit.*-style filters, never get them.
    let later = svc.make_events(1).await;
    eventually(Duration::from_secs(10), || async {
        (everything.delivered().last() == Some(&later)
            && deposits.delivered().last() == Some(&later))
        .then_some(())
    })
    .await;
    for r in [&everything, &deposits] {
        assert!(
            bodies(r)
                .iter()
                .all(|e| !e["type"].as_str().unwrap().starts_with("subscriber.")),
            "{:?}",
            bodies(r)
        );
    }
    let tail = svc.all_events().await;
    assert!(tail
        .iter()
        .all(|e| !e["type"].as_str().unwrap().starts_with("subscriber.")));
    let (status, page) = svc.get("/v1/events?types=subscriber.*").await;
    assert_eq!(status, 200, "{page}");
    let named: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(named.len(), 3, "{page}");
    // The log holds them all, hash-chained with the rest.
    assert_eq!(tail.len() + 3, svc.head().await as usize);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_sends_one_event_again_names_its_predecessor_and_moves_no_cursor() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    let (id, _) = svc.subscribe(&r.url, json!({})).await;
    let head = svc.make_events(3).await;
    eventually(Duration::from_secs(15), || async {
        (subscriber(&svc, &id).await["cursor"] == head).then_some(())
    })
    .await;
    let before = r.received();
    let second = &before[1];

    let (status, answer) = svc
        .post(
            &format!("/v1/subscribers/{id}/redeliver"),
            json!({"position": second.position}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "delivered");
    assert_eq!(answer["status_code"], 200);
    let again = r.received().last().unwrap().clone();
    assert_eq!(again.position, second.position);
    assert_eq!(
        again.id, second.id,
        "the same webhook-id: receivers dedupe on it"
    );
    assert_eq!(again.body, second.body);
    assert_eq!(again.previous, Some(before[0].position));

    let s = subscriber(&svc, &id).await;
    assert_eq!(
        (s["cursor"].as_i64(), s["status"].as_str()),
        (Some(head), Some("active"))
    );
    let (_, d) = svc.get(&format!("/v1/subscribers/{id}/deliveries")).await;
    let newest = &d["deliveries"][0];
    assert_eq!(newest["redelivery"], true, "{d}");
    assert_eq!(newest["position"], second.position);
    assert_eq!(d["deliveries"][1]["redelivery"], false);

    // A failing receiver: the answer says so; the subscriber is not disabled by it.
    r.set_mode(Mode::Status(410, None));
    let (status, answer) = svc
        .post(
            &format!("/v1/subscribers/{id}/redeliver"),
            json!({"position": head}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["outcome"].as_str(), answer["status_code"].as_i64()),
        (Some("gone"), Some(410))
    );
    assert_eq!(subscriber(&svc, &id).await["status"], "active");
    r.set_mode(Mode::Ok);

    // Bad requests name the field; an unknown subscriber is a 404.
    for (body, says) in [
        (json!({"position": 0}), "position"),
        (json!({"position": head + 1}), "position"),
        (json!({"position": "x"}), "position"),
        (json!({}), "position"),
    ] {
        let (status, e) = svc
            .post(&format!("/v1/subscribers/{id}/redeliver"), body.clone())
            .await;
        assert!((400..500).contains(&status), "{body} → {status} {e}");
        assert!(e.to_string().contains(says), "{body} → {e}");
    }
    let (blocks, _) = svc.subscribe(&r.url, json!({"types": "block.*"})).await;
    let (status, e) = svc
        .post(
            &format!("/v1/subscribers/{blocks}/redeliver"),
            json!({"position": head}),
        )
        .await;
    assert_eq!(status, 422, "an event its filter does not match: {e}");
    assert!(e.to_string().contains("position:"), "{e}");
    let (status, _) = svc
        .post(
            "/v1/subscribers/00000000-0000-0000-0000-000000000000/redeliver",
            json!({"position": 1}),
        )
        .await;
    assert_eq!(status, 404);
    svc.stop().await;
}
