//! Per-subscriber gauges on /metrics (src/gauges.rs), and the example alert rules and
//! Grafana dashboard in docs/monitoring/ naming only metrics the service exposes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::receiver::{Mode, Receiver};
use common::*;

async fn metrics(svc: &Service) -> String {
    svc.http
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name{labels}` (labels as exposed, e.g. `subscriber="…"`).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_has_its_lag_and_status_and_a_deleted_one_leaves() {
    let (_node, svc) = node_and_service().await;
    let healthy = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_mode(Mode::Status(500, None));
    let (ok_id, _) = svc
        .subscribe(&healthy.url, serde_json::json!({"start": "beginning"}))
        .await;
    let (bad_id, _) = svc
        .subscribe(&failing.url, serde_json::json!({"start": "beginning"}))
        .await;
    let head = svc.make_events(20).await;
    // The test schedule is three attempts: then disabled.
    let text = eventually(Duration::from_secs(30), || async {
        let text = metrics(&svc).await;
        let disabled = series(
            &text,
            "chainledger_subscriber_status",
            &[("subscriber", &bad_id), ("status", "disabled")],
        );
        let caught_up = series(
            &text,
            "chainledger_subscriber_lag_positions",
            &[("subscriber", &ok_id)],
        );
        (disabled == Some(1) && caught_up == Some(0)).then_some(text)
    })
    .await;
    let lag = series(
        &text,
        "chainledger_subscriber_lag_positions",
        &[("subscriber", &bad_id)],
    );
    // The head now also holds the `subscriber.disabled` event its disabling appended.
    let now = svc.head().await;
    assert_eq!(now, head + 1);
    assert!(
        lag.unwrap() > 0 && lag.unwrap() <= now,
        "the disabled one lags: {lag:?}"
    );
    for (id, status, want) in [
        (&ok_id, "active", 1),
        (&ok_id, "disabled", 0),
        (&bad_id, "active", 0),
        (&bad_id, "retrying", 0),
    ] {
        assert_eq!(
            series(
                &text,
                "chainledger_subscriber_status",
                &[("subscriber", id), ("status", status)]
            ),
            Some(want),
            "{id} {status}"
        );
    }

    assert_eq!(svc.delete(&format!("/v1/subscribers/{ok_id}")).await, 204);
    eventually(Duration::from_secs(20), || async {
        let text = metrics(&svc).await;
        (!text.contains(&ok_id)).then_some(())
    })
    .await;
    svc.stop().await;
}

/// `chainledger_…` names in a text, without the histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("chainledger_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(name.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_dashboard_name_only_metrics_the_service_exposes() {
    let (_node, svc) = node_and_service().await;
    let r = Receiver::start().await;
    svc.subscribe(&r.url, serde_json::json!({})).await;
    svc.make_events(3).await;
    let exposed = eventually(Duration::from_secs(20), || async {
        let text = metrics(&svc).await;
        text.contains("chainledger_subscriber_status")
            .then_some(text)
    })
    .await;
    let exposed: BTreeSet<String> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    for file in ["prometheus-alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(docs.join(file)).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("the dashboard is JSON");
        }
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{file} names {named:?}");
        let unknown: Vec<&String> = named.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics /metrics lacks: {unknown:?}"
        );
    }
    svc.stop().await;
}
