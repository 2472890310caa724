//! The Bitcart-daemon-compatible endpoint, so the unmodified Bitcart SDK (PyPI `bitcart`)
//! receives the log's events: JSON-RPC 2.0 `get_updates` at `POST /bitcart`, the websocket
//! at `GET /bitcart/ws` and the error catalogue at `GET /bitcart/spec`. The SDK joins `/ws`
//! and `/spec` to its URL as absolute paths, which drops `/bitcart`, so both are served at
//! the root too. What an event becomes is [`crate::compat::bitcart`].
//!
//! Unlike the daemon, a client misses nothing: each (Basic-auth user, wallet) has a durable
//! cursor (`bitcart_cursors`), created at the log's head on first contact; a poll returns
//! what follows it and moves it, a websocket moves it once the client's pong to a ping sent
//! after the frames shows they were read, and a reconnecting client resumes from it. A wallet is an xpub: the accounts whose descriptor has that key.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::AppState;
use crate::compat::bitcart::{self as mapping, Page};
use crate::domain::descriptor::AccountDescriptor;
use crate::domain::events::Event;
use crate::domain::stream::{EventAt, Position};
use crate::store::replica::Source;
use crate::store::{self, StoredEvent};

pub(crate) mod ws;
pub use ws::ws;

/// Events read per page; a page's updates are capped at [`MAX_UPDATES`] (the daemon drops
/// past 100 per poll; here the next poll continues where this one stopped).
const READ_LIMIT: i64 = 1000;
const MAX_UPDATES: usize = 1000;
/// How long a new websocket waits for the coin object's `{"xpub": …}` before it serves
/// every wallet (the SDK's APIManager never sends one; a coin object sends it at once).
const WALLET_GRACE: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = super::stream::KEEP_ALIVE;

/// The `/bitcart` credentials (BITCART_USER, BITCART_PASSWORD).
pub struct BasicAuth {
    user: String,
    password: String,
}

impl BasicAuth {
    pub fn new(user: &str, password: &str) -> Self {
        BasicAuth {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// The user name when `headers` carry these credentials; both halves are compared in
    /// constant time, and both always, so timing tells neither.
    fn check(&self, headers: &HeaderMap) -> Option<&str> {
        let encoded = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let user_ok = super::constant_time_eq(user.as_bytes(), self.user.as_bytes());
        let password_ok = super::constant_time_eq(password.as_bytes(), self.password.as_bytes());
        (user_ok & password_ok).then_some(self.user.as_str())
    }
}

/// A JSON-RPC error the SDK can name: `/spec` lists each with its exception class.
struct Code {
    code: i64,
    exc_name: &'static str,
    docstring: &'static str,
}

impl Code {
    const fn new(code: i64, exc_name: &'static str, docstring: &'static str) -> Code {
        Code {
            code,
            exc_name,
            docstring,
        }
    }
}

const PARSE_ERROR: Code = Code::new(-32700, "ParseError", "The request body is not JSON");
const UNAUTHORIZED: Code = Code::new(-32600, "UnauthorizedError", "Unauthorized");
/// JSON-RPC's Invalid Request shares -32600 with the daemon's Unauthorized; the SDK only
/// ever meets the latter.
const INVALID_REQUEST: &Code = &UNAUTHORIZED;
const PROCEDURE_NOT_FOUND: Code =
    Code::new(-32601, "ProcedureNotFoundError", "Procedure not found");
const INVALID_PARAMS: Code = Code::new(-32602, "InvalidParamsError", "Invalid parameters");
const INTERNAL: Code = Code::new(-32603, "InternalError", "Internal error");
/// The daemon's code for a wallet it cannot load.
const UNKNOWN_WALLET: Code = Code::new(
    -32005,
    "LoadingWalletError",
    "Error loading wallet: no account has this xpub",
);
const CODES: [&Code; 6] = [
    &PARSE_ERROR,
    &UNAUTHORIZED,
    &PROCEDURE_NOT_FOUND,
    &INVALID_PARAMS,
    &INTERNAL,
    &UNKNOWN_WALLET,
];

struct RpcError {
    code: &'static Code,
    message: String,
}

impl RpcError {
    fn new(code: &'static Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for RpcError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "bitcart request failed");
        RpcError::new(&INTERNAL, "internal error")
    }
}

/// `GET /bitcart/spec`: the daemon's spec shape, `{"version", "exceptions"}`; the SDK
/// fetches it to name the exception an error code raises.
#[utoipa::path(get, path = "/bitcart/spec", tag = "bitcart",
    responses((status = 200, description = "`{\"version\", \"exceptions\"}`", body = Object)))]
pub async fn spec() -> axum::Json<Value> {
    let exceptions: serde_json::Map<String, Value> = CODES
        .iter()
        .map(|c| {
            (
                c.code.to_string(),
                json!({"exc_name": c.exc_name, "docstring": c.docstring}),
            )
        })
        .collect();
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION"), "exceptions": exceptions}))
}

/// `POST /bitcart`: one JSON-RPC 2.0 request, whatever its Content-Type (the SDK sends
/// text/plain). Every answer is HTTP 200 with the request's `id`: the SDK decodes any
/// body as JSON-RPC and crashes on anything else, a 401 included.
#[utoipa::path(post, path = "/bitcart", tag = "bitcart",
    description = "One JSON-RPC 2.0 request (Bitcart daemon methods), Basic auth (BITCART_USER / BITCART_PASSWORD). Errors, a wrong password included, are JSON-RPC errors in a 200.",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "a JSON-RPC response: `result` or `error`", body = Object)),
    security(("basic" = [])))]
pub async fn rpc(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = match &body {
        Ok(bytes) => serde_json::from_slice::<Value>(bytes)
            .map_err(|e| RpcError::new(&PARSE_ERROR, format!("parse error: {e}"))),
        Err(rejection) => Err(RpcError::new(INVALID_REQUEST, rejection.body_text())),
    };
    let id = request
        .as_ref()
        .ok()
        .and_then(|r| r.get("id").cloned())
        .unwrap_or(Value::Null);
    let outcome = match s.bitcart_auth.check(&headers) {
        None => Err(RpcError::new(&UNAUTHORIZED, "Unauthorized")),
        Some(client) => match request {
            Ok(request) => dispatch(&s, client, &request).await,
            Err(e) => Err(e),
        },
    };
    let body = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id,
                         "error": {"code": e.code.code, "message": e.message}}),
    };
    axum::Json(body).into_response()
}

async fn dispatch(s: &AppState, client: &str, request: &Value) -> Result<Value, RpcError> {
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return Err(RpcError::new(
            INVALID_REQUEST,
            "invalid request: expected an object with a `method` (batches are not supported)",
        ));
    };
    match method {
        "get_updates" => {
            let xpub = xpub_param(request.get("params").unwrap_or(&Value::Null))?;
            get_updates(s, client, xpub).await
        }
        other => Err(RpcError::new(
            &PROCEDURE_NOT_FOUND,
            format!("procedure not found: `{other}` (this endpoint serves get_updates)"),
        )),
    }
}

/// The wallet a request names: `{"xpub": …}`, or positional arguments ending in one (the
/// SDK's `[a, b, {"xpub": …}]`); null, empty or absent: none.
fn xpub_param(params: &Value) -> Result<Option<String>, RpcError> {
    let named = match params {
        Value::Null => return Ok(None),
        Value::Object(_) => params,
        Value::Array(args) => match args.last() {
            Some(last @ Value::Object(_)) => last,
            _ => return Ok(None),
        },
        _ => {
            return Err(RpcError::new(
                &INVALID_PARAMS,
                "params: must be an object or a list",
            ))
        }
    };
    match named.get("xpub") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(x)) if x.trim().is_empty() => Ok(None),
        Some(Value::String(x)) if x.contains('\0') => Err(RpcError::new(
            &INVALID_PARAMS,
            format!("xpub: {}", super::text::NUL_MESSAGE),
        )),
        Some(Value::String(x)) => Ok(Some(x.trim().to_string())),
        Some(_) => Err(RpcError::new(
            &INVALID_PARAMS,
            "xpub: must be a string or null",
        )),
    }
}

/// Whose events a client gets.
enum Wallet {
    /// No xpub named: every account's events and the chain's.
    All,
    /// The events of the accounts deriving from this key, and the chain's.
    Xpub { xpub: String, accounts: Vec<Uuid> },
}

impl Wallet {
    /// An xpub that is no account's key is an error (the daemon would load any wallet; an
    /// account must exist here, and a typo should not pass silently). Read where `read`
    /// reads, and on the primary before refusing (a replica may not have a new account).
    async fn resolve(
        s: &AppState,
        read: &Source,
        xpub: Option<String>,
    ) -> Result<Wallet, RpcError> {
        let Some(xpub) = xpub else {
            return Ok(Wallet::All);
        };
        let accounts = Self::accounts_of(s, read.pool(), &xpub).await?;
        let accounts = if accounts.is_empty() && read.from_replica() {
            Self::accounts_of(s, &s.pool, &xpub).await?
        } else {
            accounts
        };
        if accounts.is_empty() {
            return Err(RpcError::new(
                &UNKNOWN_WALLET,
                format!("no account has the xpub {xpub}: create one with POST /v1/accounts {{\"label\", \"xpub\"}}"),
            ));
        }
        Ok(Wallet::Xpub { xpub, accounts })
    }

    async fn accounts_of(s: &AppState, pool: &sqlx::PgPool, xpub: &str) -> sqlx::Result<Vec<Uuid>> {
        // The substring test narrows the scan; the parsed keys decide.
        let rows = sqlx::query!(
            r#"SELECT account_id, descriptor AS "descriptor!" FROM accounts
               WHERE descriptor IS NOT NULL AND strpos(descriptor, $1) > 0"#,
            xpub
        )
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|r| xpubs_of(s, &r.descriptor).iter().any(|x| x == xpub))
            .map(|r| r.account_id)
            .collect())
    }

    /// The cursor's `wallet` column.
    fn key(&self) -> &str {
        match self {
            Wallet::All => "",
            Wallet::Xpub { xpub, .. } => xpub,
        }
    }

    fn accounts(&self) -> Option<&[Uuid]> {
        match self {
            Wallet::All => None,
            Wallet::Xpub { accounts, .. } => Some(accounts),
        }
    }
}

fn xpubs_of(s: &AppState, descriptor: &str) -> Vec<String> {
    AccountDescriptor::parse(descriptor, s.network.bitcoin())
        .map(|d| d.xpubs())
        .unwrap_or_default()
}

/// The client's position for `wallet`, starting at the log's head on first contact; the
/// row stays locked until the caller's transaction ends, so two polls of one cursor take
/// turns instead of both returning the same updates.
async fn claim_cursor(
    conn: &mut PgConnection,
    client: &str,
    wallet: &str,
) -> sqlx::Result<Position> {
    sqlx::query!(
        "INSERT INTO bitcart_cursors (client, wallet, position)
         SELECT $1, $2, position FROM log_head ON CONFLICT DO NOTHING",
        client,
        wallet
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar!(
        "SELECT position FROM bitcart_cursors WHERE client = $1 AND wallet = $2 FOR UPDATE",
        client,
        wallet
    )
    .fetch_one(&mut *conn)
    .await
    .map(Position)
}

/// Never moves a cursor back: two websockets of one client and wallet each advance it.
async fn advance<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    client: &str,
    wallet: &str,
    to: Position,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE bitcart_cursors SET position = GREATEST(position, $3), updated_at = now()
         WHERE client = $1 AND wallet = $2",
        client,
        wallet,
        to.0
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The updates after `cursor`, where the cursor may then move (past events of other
/// wallets and the log's head when nothing more matched), and whether more are waiting.
struct Batch {
    page: Page,
    through: Position,
    more: bool,
}

/// The events parsed; one whose data does not fit its type is passed over (and logged).
fn typed(events: &[StoredEvent]) -> Vec<(&StoredEvent, Event)> {
    events
        .iter()
        .filter_map(|e| match e.event() {
            Ok(typed) => Some((e, typed)),
            Err(err) => {
                tracing::error!(error = %err, "bitcart: event passed over");
                None
            }
        })
        .collect()
}

async fn next_batch(
    conn: &mut PgConnection,
    wallet: &Wallet,
    cursor: Position,
) -> sqlx::Result<Batch> {
    let types: Vec<String> = mapping::SOURCE_TYPES
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    // Every event at or below this head is visible to the read that follows.
    let head = store::head(&mut *conn).await?;
    let events = store::read_for_accounts(
        &mut *conn,
        cursor,
        READ_LIMIT,
        Some(&types),
        wallet.accounts(),
        true,
        None,
    )
    .await?;
    let typed = typed(&events);
    let at: Vec<EventAt<'_>> = typed.iter().map(|(stored, e)| stored.at(e)).collect();
    let page = mapping::page(&at, MAX_UPDATES);
    let more = !page.complete || events.len() as i64 == READ_LIMIT;
    let through = if more {
        page.through.unwrap_or(cursor)
    } else {
        cursor.max(head)
    };
    Ok(Batch {
        page,
        through,
        more,
    })
}

/// [`next_batch`] where `read` reads (the replica's events are a prefix of the primary's,
/// so its batch ends at its own head), retried on the primary if the replica fails.
async fn read_batch(read: &mut Source, wallet: &Wallet, cursor: Position) -> sqlx::Result<Batch> {
    match next_batch(&mut *read.pool().acquire().await?, wallet, cursor).await {
        Err(e) if read.from_replica() => {
            tracing::warn!(error = %e, "bitcart: the read replica failed a read; reading from the primary");
            read.fail_over();
            next_batch(&mut *read.pool().acquire().await?, wallet, cursor).await
        }
        other => other,
    }
}

async fn get_updates(s: &AppState, client: &str, xpub: Option<String>) -> Result<Value, RpcError> {
    let mut read = s.read_pool.current();
    let wallet = Wallet::resolve(s, &read, xpub).await?;
    // The cursor is claimed (and moved) on the primary; the events are read where reads go.
    let mut tx = s.pool.begin().await?;
    let cursor = claim_cursor(&mut tx, client, wallet.key()).await?;
    let batch = read_batch(&mut read, &wallet, cursor).await?;
    if batch.through > cursor {
        advance(&mut *tx, client, wallet.key(), batch.through).await?;
    }
    tx.commit().await?;
    let updates = batch.page.updates.into_iter().map(|u| u.body).collect();
    Ok(Value::Array(updates))
}
