//! A real browser `EventSource` (headless Chromium, installed by tools/install-deps) on the
//! SSE stream, from a page of another origin (CORS_ALLOW_ORIGINS), with the token in the
//! URL as a browser must. The service is then restarted: the browser reconnects on its
//! own with `Last-Event-ID` and continues with no gap and no repeat.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use common::chromium::{chromium, Browser};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_event_source_receives_and_resumes_across_a_restart() {
    // The page's server: serves the page and collects what the page reports.
    let reports: Arc<Mutex<Vec<i64>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());

    let node = Node::start();
    let db = fresh_database().await;
    let mut cfg = config(&db, &node);
    cfg.cors_allow_origins = vec![page_origin.parse().unwrap()];
    let svc = Service::start(cfg.clone()).await;
    svc.synced_to(node.height()).await;
    let head = svc.make_events(3).await;

    let stream_url = format!("{}/v1/events/stream?after=0&access_token={TOKEN}", svc.base);
    let page = format!(
        r#"<!doctype html><html><body><script>
const ids = [];
const es = new EventSource({stream_url:?});
es.onmessage = (m) => {{
  JSON.parse(m.data);
  ids.push(Number(m.lastEventId));
  fetch('/report', {{method: 'POST', body: JSON.stringify(ids)}});
}};
</script></body></html>"#
    );
    let app = axum::Router::new()
        .route("/", get(move || async move { axum::response::Html(page) }))
        .route(
            "/report",
            post({
                let reports = reports.clone();
                move |body: String| async move {
                    let ids: Vec<i64> = serde_json::from_str(&body).unwrap_or_default();
                    let mut r = reports.lock().unwrap();
                    if ids.len() > r.len() {
                        *r = ids;
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let profile =
        std::env::temp_dir().join(format!("chainledger-chromium-{}", uuid::Uuid::new_v4()));
    let _browser = Browser(
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&page_origin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Chromium"),
        profile,
    );
    let reported = |n: i64| {
        let reports = reports.clone();
        async move {
            eventually(Duration::from_secs(60), || async {
                let r = reports.lock().unwrap().clone();
                (r.len() as i64 >= n).then_some(r)
            })
            .await
        }
    };
    assert_eq!(reported(head).await, (1..=head).collect::<Vec<_>>());

    // Restart the service on the same port: the stream ends, EventSource reconnects by
    // itself (retry: 1 s) with Last-Event-ID, to a URL that still says after=0.
    svc.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cfg.listen_addr = svc_addr(&stream_url);
    let svc = Service::start(cfg).await;
    let head2 = svc.make_events(2).await;
    let got = reported(head2).await;
    assert_eq!(got, (1..=head2).collect::<Vec<_>>(), "no gap, no repeat");
    svc.stop().await;
}

fn svc_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.strip_prefix("http://").unwrap();
    rest[..rest.find('/').unwrap()].parse().unwrap()
}
