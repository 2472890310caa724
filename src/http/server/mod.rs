//! The HTTP server's connections (README "Connection limits"): hyper's HTTP/1 on each
//! accepted socket, with what `axum::serve` lacks against hostile or broken clients —
//!
//! - caps: at most `max_connections` sockets served at once and `max_per_ip` from one
//!   client address; one more is answered 503 with `Retry-After` (by a few extra slots,
//!   each held a second at most) or, past those, closed at once. The default cap is fitted
//!   to the file-descriptor limit, so the follower, the database pool and webhook delivery
//!   always have descriptors ([`Limits::resolve`]);
//! - deadlines, kept by a watchdog per connection: the header timeout (from the opening,
//!   or from the first byte of a later request), the idle keep-alive timeout, and a
//!   response stuck behind a client that does not read. While a request is being
//!   answered none applies but the last, so long polls and SSE streams keep their
//!   documented lifetimes;
//! - the body timeout: a request body not complete in time ends its request with 408.
//!
//! A connection's place in the caps is held by its socket, so a websocket, which outlives
//! its HTTP connection, still counts.

mod caps;
mod limits;
mod socket;

use std::convert::Infallible;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service;

use super::error::ApiError;
use caps::{Admission, Caps, Slot};
pub use limits::Limits;
use socket::{Answered, Answering, DeadlineBody, Socket};

/// How long answering 503 may take; the client gets that long to send its request.
const REFUSE_WITHIN: Duration = Duration::from_secs(1);
/// Seconds a refused client is asked to wait (`Retry-After`).
const RETRY_AFTER_SECS: &str = "1";

/// Serves `app` on `listener` until `shutdown` becomes true, then lets the open
/// connections finish (idle ones close at once; streams and long polls end by themselves
/// at shutdown).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = Arc::new(limits);
    let caps = Arc::new(Caps::new(limits.clone()));
    // Every connection task holds a receiver; all dropped = all connections closed.
    let (open_tx, open_rx) = watch::channel(());
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The client gave up before we took it: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors (EMFILE) or memory: the caps should prevent it; wait
                // for some to be released rather than spin.
                if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "failed to accept an HTTP connection");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match caps.admit(peer) {
            Admission::Serve(slot) => {
                let socket = Socket::new(stream, slot);
                let (app, limits, shutdown, open) = (
                    app.clone(),
                    limits.clone(),
                    shutdown.clone(),
                    open_rx.clone(),
                );
                tokio::spawn(async move {
                    serve_connection(socket, app, &limits, shutdown).await;
                    drop(open);
                });
            }
            Admission::Refuse(slot, why) => {
                tokio::spawn(refuse(stream, slot, why));
            }
            Admission::Close => drop(stream),
        }
    }
    drop(open_rx);
    open_tx.closed().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One connection: hyper's HTTP/1 with upgrades (websockets), under the watchdog.
async fn serve_connection(
    socket: Socket,
    app: Router,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = socket.activity.clone();
    let service = {
        let (activity, body_timeout) = (activity.clone(), limits.body_timeout);
        service_fn(move |req: Request<Incoming>| {
            let answering = activity.request_started();
            answer(app.clone(), req, body_timeout, answering)
        })
    };
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        let deadline = activity.deadline(limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = activity.changed.notified() => {}
            _ = sleep_until(deadline) => {
                if activity.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("HTTP connection closed: header, idle or write timeout");
                    return;
                }
            }
            _ = shutdown.wait_for(|s| *s), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One request through the router, its body under the body timeout; the response body
/// holds `answering` until it is sent.
async fn answer(
    mut app: Router,
    req: Request<Incoming>,
    body_timeout: Duration,
    answering: Answering,
) -> Result<Response<Body>, Infallible> {
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(body_timeout)),
            timed_out: timed_out.clone(),
        })
    });
    poll_fn(|cx| <Router as Service<Request<Body>>>::poll_ready(&mut app, cx)).await?;
    let resp = app.call(req).await?;
    let resp = if timed_out.load(Ordering::Relaxed) {
        body_timed_out(body_timeout)
    } else {
        resp
    };
    Ok(resp.map(|body| {
        Body::new(Answered {
            inner: body,
            _answering: answering,
        })
    }))
}

fn body_timed_out(after: Duration) -> Response<Body> {
    let message = format!(
        "the request body did not arrive within {} ms (HTTP_BODY_TIMEOUT_MS)",
        after.as_millis()
    );
    let mut resp =
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message).into_response();
    // The rest of the body may still come: the connection cannot be reused.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A connection over the caps: 503 to its first request, then closed.
async fn refuse(stream: TcpStream, slot: Slot, why: &'static str) {
    let service = service_fn(move |_req: Request<Incoming>| async move {
        let mut resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_connections", why)
            .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        Ok::<_, Infallible>(resp)
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSE_WITHIN, conn).await;
    drop(slot);
}
