//! Bad input gets a 4xx with a clear code, never a 500; auth on every /v1 route; the tail's
//! long-poll wakes on a new event; OpenAPI and metrics are served.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_never_a_500() {
    let node = Node::start();
    let db = fresh_database().await;
    let svc = Service::start(config(&db, &node)).await;
    let http = &svc.http;
    let url = |p: &str| format!("{}{p}", svc.base);

    // Auth: missing and wrong tokens.
    let (s, c) = error_code(http.get(url("/v1/status")).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (401, "unauthorized"));
    let (s, c) = error_code(
        http.get(url("/v1/status"))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "unauthorized"));
    let (s, c) = error_code(
        http.post(url("/v1/accounts"))
            .json(&json!({"label": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, c.as_str()), (401, "unauthorized"));

    let (status, account) = svc.post("/v1/accounts", json!({"label": "alice"})).await;
    assert_eq!(status, 201);
    let id = account["id"].as_str().unwrap();
    let addresses = format!("/v1/accounts/{id}/addresses");

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            &addresses,
            json!({"address": "not-an-address"}),
            400,
            "invalid_address",
        ),
        (
            &addresses,
            json!({"address": "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"}),
            400,
            "invalid_address",
        ),
        (
            &addresses,
            json!({"address": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"}),
            400,
            "invalid_address",
        ),
        (&addresses, json!({"adress": "typo"}), 422, "invalid_body"),
        (&addresses, json!({"address": 12}), 422, "invalid_body"),
        (
            "/v1/accounts/00000000-0000-0000-0000-000000000000/addresses",
            json!({"address": "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"}),
            404,
            "account_not_found",
        ),
        ("/v1/accounts", json!({"label": ""}), 422, "invalid_field"),
        (
            "/v1/accounts",
            json!({"label": "x", "credit_confirmations": 0}),
            422,
            "invalid_field",
        ),
        (
            "/v1/accounts",
            json!({"label": "x", "credit_confirmations": 99}),
            422,
            "invalid_field",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let resp = http
            .post(url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (want_status, want_code.to_string()),
            "{path} {body}"
        );
    }
    let wrong_network = svc
        .post(
            &addresses,
            json!({"address": "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"}),
        )
        .await
        .1;
    assert!(
        wrong_network["error"]["message"]
            .as_str()
            .unwrap()
            .contains("regtest"),
        "{wrong_network}"
    );

    // Duplicate address: 409, on the same account and on another.
    let address = node.new_address("legacy");
    assert_eq!(
        svc.post(&addresses, json!({"address": address})).await.0,
        201
    );
    let (s, body) = svc.post(&addresses, json!({"address": address})).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("address_taken"))
    );
    let other = svc.post("/v1/accounts", json!({"label": "bob"})).await.1;
    let (s, _) = svc
        .post(
            &format!("/v1/accounts/{}/addresses", other["id"].as_str().unwrap()),
            json!({"address": address}),
        )
        .await;
    assert_eq!(s, 409);

    // Malformed JSON, wrong content type, oversized body.
    let resp = http
        .post(url("/v1/accounts"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"label\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, "malformed_json".into()));
    let resp = http
        .post(url("/v1/accounts"))
        .bearer_auth(TOKEN)
        .body("label=x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (415, "unsupported_media_type".into())
    );
    let huge = json!({"label": "x".repeat(70 * 1024)});
    let resp = http
        .post(url("/v1/accounts"))
        .bearer_auth(TOKEN)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (413, "payload_too_large".into()));

    // Queries and paths.
    for (path, want_status, want_code) in [
        ("/v1/accounts/not-a-uuid", 400, "invalid_path"),
        (
            "/v1/accounts/00000000-0000-0000-0000-000000000000/balance",
            404,
            "account_not_found",
        ),
        ("/v1/addresses/nonsense", 400, "invalid_address"),
        (
            "/v1/addresses/mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            404,
            "address_not_found",
        ),
        ("/v1/deposits/xyz/0", 400, "invalid_txid"),
        (
            "/v1/deposits/0000000000000000000000000000000000000000000000000000000000000000/0",
            404,
            "deposit_not_found",
        ),
        ("/v1/events?limit=5000", 400, "invalid_limit"),
        ("/v1/events?limit=abc", 400, "invalid_query"),
        ("/v1/events?wait=31", 400, "invalid_wait"),
        ("/v1/events?after=-1", 400, "invalid_after"),
        ("/v1/events?types=deposit.confirmd", 400, "invalid_types"),
        ("/v1/nope", 404, "not_found"),
    ] {
        let resp = http.get(url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(
            error_code(resp).await,
            (want_status, want_code.to_string()),
            "{path}"
        );
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_long_polls_filters_by_type_and_pages() {
    let (_node, svc) = node_and_service().await;
    let (_, page) = svc.get("/v1/events?after=0&limit=1000").await;
    let head = page["next_after"].as_i64().unwrap();
    assert!(!page["has_more"].as_bool().unwrap());

    // A long poll returns as soon as a matching event commits.
    let waiter = {
        let http = svc.http.clone();
        let url = format!(
            "{}/v1/events?after={head}&wait=20&types=account.*",
            svc.base
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let page: Value = http
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    svc.post("/v1/accounts", json!({"label": "waker"})).await;
    let (page, took) = waiter.await.unwrap();
    assert!(
        took < Duration::from_secs(15),
        "the long poll was not woken"
    );
    assert_eq!(page["events"][0]["type"], "account.created");
    assert_eq!(page["events"][0]["stream_version"], 0);

    // Past the head: a position no client can have seen is refused, naming the head.
    let (status, e) = svc.get(&format!("/v1/events?after={}", head + 100)).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_after"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{} is beyond the head", head + 100)),
        "{e}"
    );

    // Pages of 1 walk every event in order.
    let mut after = 0;
    let mut positions = Vec::new();
    loop {
        let (_, p) = svc.get(&format!("/v1/events?after={after}&limit=1")).await;
        positions.extend(
            p["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["position"].as_i64().unwrap()),
        );
        after = p["next_after"].as_i64().unwrap();
        if !p["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(positions, (1..=positions.len() as i64).collect::<Vec<_>>());

    // Only block events with a type filter; the envelope has every field.
    let (_, blocks) = svc.get("/v1/events?types=block.connected&limit=1000").await;
    let events = blocks["events"].as_array().unwrap();
    assert!(!events.is_empty());
    for e in events {
        assert_eq!(e["type"], "block.connected");
        for field in [
            "position",
            "id",
            "stream",
            "stream_version",
            "recorded_at",
            "data",
        ] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_openapi_and_status_are_served() {
    let (_node, svc) = node_and_service().await;
    let get = |p: &str| svc.http.get(format!("{}{p}", svc.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "chainledger_node_tip_height",
        "chainledger_last_position",
        "chainledger_blocks_processed_total",
        "chainledger_append_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let spec: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    for path in [
        "/v1/accounts",
        "/v1/accounts/{id}/balance",
        "/v1/events",
        "/v1/deposits/{txid}/{vout}",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI spec"
        );
    }
    let (_, status) = svc.get("/v1/status").await;
    assert_eq!(status["network"], "regtest");
    assert_eq!(status["leader"], true);
    assert_eq!(status["node_tip"], status["synced_tip"]);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_to_start_with_a_one_line_reason() {
    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    cfg.api_token = Some("short".into());
    let err = chainledger::app::start(cfg)
        .await
        .err()
        .expect("a short token is refused");
    assert!(err.to_string().contains("API_TOKEN"), "{err}");

    let mut cfg = config(&db, &node);
    cfg.network = chainledger::config::NetworkName::Mainnet;
    let err = chainledger::app::start(cfg)
        .await
        .err()
        .expect("a network mismatch is refused");
    assert!(format!("{err:#}").contains("NETWORK is mainnet"), "{err:#}");

    let mut cfg = config("postgres://nobody@127.0.0.1:1/none", &node);
    cfg.db.database_connect_retries = 2;
    let err = chainledger::app::start(cfg)
        .await
        .err()
        .expect("an unreachable database is refused");
    assert!(
        format!("{err:#}").contains("unreachable after 2 attempts"),
        "{err:#}"
    );
}
