//! The HTTP API (DESIGN.md "HTTP API"): `/healthz`, `/readyz`, `/metrics`, `/openapi.json`
//! without auth; every `/v1` route behind the bearer token. Commands are observations
//! recorded by the unit of work (events and projections in one transaction); queries read
//! the projections.

mod account_list;
mod accounts;
mod addresses;
mod audit;
mod bitcart;
mod catch_panic;
mod deposits;
pub mod error;
mod events;
mod extract;
mod ipn;
mod openapi;
pub mod reads;
pub mod server;
mod status;
mod stream;
mod subscribers;
mod text;
mod ui;
mod withdrawals;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use crate::chain::{FollowerStatus, Node};
use crate::config::NetworkName;
use crate::store::notify::LogWatch;
pub use bitcart::BasicAuth;
use error::ApiError;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    /// The primary: commands, and every read not in [`AppState::read_pool`]'s routes.
    pub pool: PgPool,
    /// Where the replica-served routes read (DATABASE_READ_URL, else the primary): the
    /// ones [`router`] wraps in [`reads::choose`], and Bitcart's event reads.
    pub read_pool: crate::store::replica::ReadPool,
    /// Where the commands record their events.
    pub unit_of_work: crate::unit_of_work::UnitOfWork,
    pub node: Node,
    pub network: NetworkName,
    pub api_token: Arc<str>,
    pub credit_confirmations: u32,
    pub final_confirmations: u32,
    pub log: LogWatch,
    pub follower: Arc<FollowerStatus>,
    /// BITCOIND_ZMQ, for `/v1/status`.
    pub zmq_mode: crate::chain::zmq::ZmqMode,
    /// Refuses webhook URLs on non-public addresses (WEBHOOK_ALLOW_NETS aside).
    pub webhook_guard: Arc<crate::delivery::Guard>,
    /// Tells the webhook dispatcher a subscriber changed (created, replayed, enabled).
    pub wake_delivery: Arc<tokio::sync::Notify>,
    /// Sends one event to one subscriber: the dispatcher's, shared for redeliveries.
    pub transport: Arc<crate::delivery::transport::Transport>,
    /// Subscribers may be commands (SCRIPT_HANDLERS).
    pub script_handlers: bool,
    /// The `/btc` and `/btc_ipn` endpoints' own token (IPN_TOKEN), and the `ipn_auth` of
    /// subscriptions they make (IPN_AUTH).
    pub ipn_token: Option<Arc<str>>,
    pub ipn_auth: Option<Arc<str>>,
    /// Tells the rescanner a rescan was requested.
    pub wake_rescans: Arc<tokio::sync::Notify>,
    /// Origins allowed cross-origin (CORS); empty: no CORS headers.
    pub cors_allow_origins: Vec<axum::http::HeaderValue>,
    /// The Basic-auth credentials of the Bitcart-compatible endpoint.
    pub bitcart_auth: Arc<BasicAuth>,
    /// Becomes true at shutdown: open streams and long polls end so the server can stop.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Every route [`router`] serves, as (OpenAPI path, method): the OpenAPI document's unit
/// test checks each is documented. Keep it beside the router.
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/btc", "get"),
    ("/btc", "post"),
    ("/btc_ipn", "get"),
    ("/btc_ipn", "post"),
    ("/bitcart", "post"),
    ("/bitcart/", "post"),
    ("/bitcart/ws", "get"),
    ("/ws", "get"),
    ("/bitcart/spec", "get"),
    ("/spec", "get"),
    ("/ui", "get"),
    ("/ui/", "get"),
    ("/ui/app.js", "get"),
    ("/ui/app.css", "get"),
    ("/v1/status", "get"),
    ("/v1/accounts", "post"),
    ("/v1/accounts", "get"),
    ("/v1/accounts/{id}", "get"),
    ("/v1/accounts/{id}/balance", "get"),
    ("/v1/accounts/{id}/addresses", "post"),
    ("/v1/accounts/{id}/addresses/{index}", "get"),
    ("/v1/addresses/{address}", "get"),
    ("/v1/withdrawals", "post"),
    ("/v1/deposits", "get"),
    ("/v1/deposits/{txid}/{vout}", "get"),
    ("/v1/events", "get"),
    ("/v1/events/stream", "get"),
    ("/v1/audit/export", "get"),
    ("/v1/subscribers", "post"),
    ("/v1/subscribers", "get"),
    ("/v1/subscribers/{id}", "get"),
    ("/v1/subscribers/{id}", "delete"),
    ("/v1/subscribers/{id}/replay", "post"),
    ("/v1/subscribers/{id}/enable", "post"),
    ("/v1/subscribers/{id}/rotate-secret", "post"),
    ("/v1/subscribers/{id}/redeliver", "post"),
    ("/v1/subscribers/{id}/deliveries", "get"),
];

/// The API's routes and layers. Starts the readiness probe `/readyz` answers from (it
/// ends at shutdown).
pub fn router(state: AppState) -> Router {
    let health = status::Health::start(&state);
    let cors = (!state.cors_allow_origins.is_empty()).then(|| {
        tower_http::cors::CorsLayer::new()
            .allow_origin(state.cors_allow_origins.clone())
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
    });
    // The reads a replica may serve (README "Read replicas"): `replica(Log)` for the log
    // and what folds from it, `replica(NotLogged)` for subscribers' state. Every other
    // route reads and writes the primary.
    use reads::Shows::{Log, NotLogged};
    let replica = |shows| middleware::from_fn_with_state((state.clone(), shows), reads::choose);
    let v1 = Router::new()
        .route("/status", get(status::status))
        .route(
            "/accounts",
            post(accounts::create_account).get(account_list::list),
        )
        .route(
            "/accounts/{id}",
            get(accounts::get_account).route_layer(replica(Log)),
        )
        .route(
            "/accounts/{id}/balance",
            get(accounts::balance).route_layer(replica(Log)),
        )
        .route("/accounts/{id}/addresses", post(addresses::add_address))
        .route(
            "/accounts/{id}/addresses/{index}",
            get(addresses::derived_address).route_layer(replica(Log)),
        )
        .route(
            "/addresses/{address}",
            get(addresses::address_totals).route_layer(replica(Log)),
        )
        .route("/withdrawals", post(withdrawals::create))
        .route("/deposits", get(deposits::list).route_layer(replica(Log)))
        .route(
            "/deposits/{txid}/{vout}",
            get(deposits::get_one).route_layer(replica(Log)),
        )
        .route("/events", get(events::tail).route_layer(replica(Log)))
        .route(
            "/events/stream",
            get(stream::stream).route_layer(replica(Log)),
        )
        .route(
            "/audit/export",
            get(audit::export).route_layer(replica(Log)),
        )
        .route(
            "/subscribers",
            post(subscribers::create).merge(get(subscribers::list).route_layer(replica(NotLogged))),
        )
        .route(
            "/subscribers/{id}",
            get(subscribers::get_one)
                .route_layer(replica(NotLogged))
                .delete(subscribers::delete),
        )
        .route("/subscribers/{id}/replay", post(subscribers::replay))
        .route("/subscribers/{id}/enable", post(subscribers::enable))
        .route(
            "/subscribers/{id}/rotate-secret",
            post(subscribers::rotate_secret),
        )
        .route("/subscribers/{id}/redeliver", post(subscribers::redeliver))
        .route(
            "/subscribers/{id}/deliveries",
            get(subscribers::deliveries).route_layer(replica(NotLogged)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            reads::stamp_position,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // The Crypto IPN service's routes, at the paths its clients use.
    let ipn = Router::new()
        .route(
            "/btc",
            get(ipn::balance)
                .post(ipn::balance)
                .route_layer(replica(Log)),
        )
        .route("/btc_ipn", get(ipn::subscribe).post(ipn::subscribe))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ipn::require_token,
        ));
    let app = Router::new()
        .merge(ipn)
        .route("/healthz", get(status::healthz))
        .route(
            "/readyz",
            get(status::readyz).layer(axum::Extension(health)),
        )
        .route("/metrics", get(status::metrics))
        .route("/openapi.json", get(openapi::spec))
        .merge(ui::routes())
        .nest("/v1", v1)
        // The Bitcart-daemon-compatible endpoint has its own (Basic) auth, so it stays
        // outside /v1. The SDK asks for /ws and /spec at the root whatever its URL's path.
        .route("/bitcart", post(bitcart::rpc))
        .route("/bitcart/", post(bitcart::rpc))
        .route("/bitcart/ws", get(bitcart::ws))
        .route("/ws", get(bitcart::ws))
        .route("/bitcart/spec", get(bitcart::spec))
        .route("/spec", get(bitcart::spec))
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(catch_panic::layer());
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.with_state(state)
}

/// `Authorization: Bearer <API_TOKEN>`, compared in constant time (or, on the SSE stream
/// only, `?access_token=`: a browser `EventSource` cannot set headers).
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let from_query = stream::access_token(&req);
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(from_query.as_deref());
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.api_token.as_bytes()) => {
            next.run(req).await
        }
        other => {
            let message = if other.is_some() {
                "the bearer token is wrong"
            } else {
                "missing `Authorization: Bearer <token>`"
            };
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
