//! The last line against a panic in a handler (a library asserting on input nobody
//! validated): the client gets the API's 500 `internal error`, the panic is logged, and
//! the connection and the worker survive.

use std::any::Any;

use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;

use super::error::ApiError;

pub type Layer = CatchPanicLayer<fn(Box<dyn Any + Send + 'static>) -> Response>;

pub fn layer() -> Layer {
    CatchPanicLayer::custom(internal_error as fn(Box<dyn Any + Send + 'static>) -> Response)
}

fn internal_error(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::Internal(anyhow::anyhow!("a request handler panicked: {what}")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;

    async fn panics() -> &'static str {
        panic!("cannot derive child of depth 256 or higher")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_the_api_s_500_and_the_server_keeps_serving() {
        let app = Router::new()
            .route("/panics", get(panics))
            .route("/fine", get(|| async { "fine" }))
            .layer(super::layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let resp = client.get(format!("{base}/panics")).send().await.unwrap();
            assert_eq!(resp.status(), 500);
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(
                body,
                serde_json::json!({"error": {"code": "internal", "message": "internal error"}})
            );
        }
        let resp = client.get(format!("{base}/fine")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "fine");
    }
}
