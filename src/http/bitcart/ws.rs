//! The Bitcart websocket (`GET /bitcart/ws`): frames of updates from the client's
//! cursor on, then each new one as it commits; the cursor moves once the client's pong to
//! a ping sent after the frames shows it read them. A client's frame or message over
//! 64 KiB ends the websocket.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

use super::{
    advance, claim_cursor, read_batch, xpub_param, xpubs_of, Wallet, KEEP_ALIVE, UNAUTHORIZED,
    UNKNOWN_WALLET, WALLET_GRACE,
};
use crate::compat::bitcart::{self as mapping, Page};
use crate::http::{AppState, MAX_BODY_BYTES};

/// `GET /bitcart/ws`: Basic auth on the upgrade (a refusal is a 401 with a JSON-RPC body:
/// a websocket handshake cannot answer 200).
#[utoipa::path(get, path = "/bitcart/ws", tag = "bitcart",
    description = "The Bitcart event websocket (Basic auth on the upgrade); messages at most 64 KiB.",
    responses((status = 101, description = "switched to the websocket protocol"),
              (status = 400, description = "not a websocket upgrade request", content_type = "text/plain", body = String),
              (status = 401, description = "wrong or missing Basic credentials, as a JSON-RPC error", body = Object),
              (status = 405, description = "not GET", content_type = "text/plain", body = String),
              (status = 426, description = "not a websocket upgrade request", content_type = "text/plain", body = String)),
    security(("basic" = [])))]
pub async fn ws(
    State(s): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(client) = s.bitcart_auth.check(&headers).map(str::to_string) else {
        let body = json!({"jsonrpc": "2.0", "id": null,
                          "error": {"code": UNAUTHORIZED.code, "message": "Unauthorized"}});
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"bitcart\"")],
            axum::Json(body),
        )
            .into_response();
    };
    // A client's message is a wallet's name: as large as an HTTP body at most, so a frame
    // cannot make the service buffer megabytes (tungstenite's defaults: 16/64 MiB).
    let upgrade = upgrade
        .max_frame_size(MAX_BODY_BYTES)
        .max_message_size(MAX_BODY_BYTES);
    upgrade.on_upgrade(move |socket| async move {
        if let Err(e) = serve_socket(s, client, socket).await {
            tracing::info!(error = %e, "bitcart websocket ended");
        }
    })
}

/// What a client's message asks for.
enum Control {
    /// `{"xpub": …}`: serve this wallet (None: every wallet) from now on.
    Wallet(Option<String>),
    Ignore,
    Closed,
}

fn control(msg: Option<Result<Message, axum::Error>>) -> Control {
    match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Control::Closed,
        Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(text.as_str()) {
            Ok(v) if v.get("xpub").is_some() => match xpub_param(&v) {
                Ok(xpub) => Control::Wallet(xpub),
                Err(_) => Control::Ignore,
            },
            _ => Control::Ignore,
        },
        Some(Ok(_)) => Control::Ignore,
    }
}

/// One client's websocket: frames of updates from its cursor on, then each new one as it
/// commits (woken by the log's NOTIFY), until it closes or the service shuts down.
async fn serve_socket(s: AppState, client: String, mut socket: WebSocket) -> anyhow::Result<()> {
    // A coin object names its wallet first thing; waiting briefly for that keeps it from
    // being sent (and moving the cursor of) every wallet's events in the meantime.
    let mut xpub = match tokio::time::timeout(WALLET_GRACE, socket.recv()).await {
        Err(_) => None,
        Ok(msg) => match control(msg) {
            Control::Closed => return Ok(()),
            Control::Wallet(xpub) => xpub,
            Control::Ignore => None,
        },
    };
    let mut shutdown = s.shutdown.clone();
    'wallet: loop {
        let wallet = match Wallet::resolve(&s, &s.read_pool.current(), xpub.take()).await {
            Ok(w) => w,
            Err(e) if e.code.code == UNKNOWN_WALLET.code => {
                return close(socket, close_code::POLICY, &e.message).await
            }
            Err(e) => return close(socket, close_code::ERROR, &e.message).await,
        };
        let key = wallet.key().to_string();
        let mut cursor = claim_cursor(&mut *s.pool.acquire().await?, &client, &key).await?;
        let mut labels: HashMap<Uuid, Option<String>> = HashMap::new();
        loop {
            if *shutdown.borrow() {
                return close(socket, close_code::AWAY, "the service is shutting down").await;
            }
            // Events are read where reads go; the cursor is the primary's. Connections go
            // back before sending: a slow client must not hold one.
            let mut read = s.read_pool.current();
            let batch = read_batch(&mut read, &wallet, cursor).await?;
            let frames = match &wallet {
                Wallet::Xpub { xpub, .. } => {
                    mapping::frames(batch.page.updates, |_| Some(xpub.clone()))
                }
                Wallet::All => {
                    let mut conn = read.pool().acquire().await?;
                    label_accounts(&s, &mut conn, &batch.page, &mut labels).await?;
                    mapping::frames(batch.page.updates, |a| labels.get(&a).cloned().flatten())
                }
            };
            let mut sent_through = None;
            for frame in frames {
                let text = frame.to_json().to_string();
                socket.send(Message::Text(text.into())).await?;
                sent_through = Some(frame.through);
            }
            // The cursor moves once the client's websocket has read the frames: its pong
            // to a ping sent after them. A connection that dies with frames in flight
            // leaves the cursor before them, so the reconnecting client gets them again.
            if let Some(through) = sent_through {
                match confirm(&mut socket).await? {
                    Confirmed::Yes(pending) => {
                        advance(&s.pool, &client, &key, through).await?;
                        cursor = through;
                        if let Some(named) = pending {
                            xpub = named;
                            continue 'wallet;
                        }
                    }
                    Confirmed::Closed => return Ok(()),
                    Confirmed::TimedOut => {
                        return close(
                            socket,
                            close_code::AWAY,
                            "no pong: the frames are sent again on reconnect",
                        )
                        .await
                    }
                }
            }
            // Past events of other wallets, or with no update, up to the head.
            if batch.through > cursor {
                advance(&s.pool, &client, &key, batch.through).await?;
                cursor = batch.through;
            }
            if batch.more {
                continue;
            }
            tokio::select! {
                // The server read here passing the cursor (a replica trails the NOTIFY).
                woken = read.wait_past(cursor, KEEP_ALIVE) => {
                    if !woken {
                        socket.send(Message::Ping(Bytes::new())).await?;
                    }
                }
                msg = socket.recv() => match control(msg) {
                    Control::Closed => return Ok(()),
                    Control::Wallet(named) => {
                        xpub = named;
                        continue 'wallet;
                    }
                    Control::Ignore => {}
                },
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => {}
            }
        }
    }
}

/// How long a client may take to answer the ping that confirms its frames.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

enum Confirmed {
    /// The client read the frames; and a wallet it named meanwhile (`Some(None)`: all).
    Yes(Option<Option<String>>),
    Closed,
    TimedOut,
}

/// Sends a ping and waits for its pong (websocket clients answer pings by themselves, the
/// SDK's aiohttp included): frames are read in order, so the pong means every frame sent
/// before the ping was read.
async fn confirm(socket: &mut WebSocket) -> anyhow::Result<Confirmed> {
    let token = Bytes::from(Uuid::new_v4().as_bytes().to_vec());
    socket.send(Message::Ping(token.clone())).await?;
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    let mut named = None;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => return Ok(Confirmed::TimedOut),
            Ok(msg) => msg,
        };
        match msg {
            Some(Ok(Message::Pong(payload))) if payload == token => {
                return Ok(Confirmed::Yes(named))
            }
            Some(Ok(Message::Pong(_))) | Some(Ok(Message::Ping(_))) => {}
            other => match control(other) {
                Control::Closed => return Ok(Confirmed::Closed),
                Control::Wallet(xpub) => named = Some(xpub),
                Control::Ignore => {}
            },
        }
    }
}

/// Names the wallet (the account's first xpub, None without one) of every account in
/// `page` not named yet; account keys never change, so the names are kept.
async fn label_accounts(
    s: &AppState,
    conn: &mut PgConnection,
    page: &Page,
    labels: &mut HashMap<Uuid, Option<String>>,
) -> sqlx::Result<()> {
    let mut missing: Vec<Uuid> = page
        .updates
        .iter()
        .filter_map(|u| u.account)
        .filter(|a| !labels.contains_key(a))
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query!(
        "SELECT account_id, descriptor FROM accounts WHERE account_id = ANY($1)",
        &missing
    )
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        let first = r
            .descriptor
            .and_then(|d| xpubs_of(s, &d).into_iter().next());
        labels.insert(r.account_id, first);
    }
    Ok(())
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) -> anyhow::Result<()> {
    // A close reason is at most 123 bytes.
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await?;
    Ok(())
}
