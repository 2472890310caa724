//! Redis Streams as a target: each event is `XADD`ed to the subscriber's stream with the
//! entry id `<position>-1`, so the stream's ids are the log's positions. Redis refuses an
//! id not above its stream's top item; such a refusal is a repeat of an event already in
//! the stream (a crash between the XADD and its journal entry, a timeout whose command
//! did run) and counts as delivered: every event is in the stream once, in order. The
//! stream therefore belongs to its subscriber: entries added by anything else with higher
//! ids would make ours count as delivered unwritten.
//!
//! The host is resolved through the SSRF guard on every connection (as the HTTP client
//! does) and the connection made to the checked address. Connections are multiplexed and
//! kept per URL (at most [`MAX_CONNECTIONS`]); one that fails is dropped and the next
//! attempt connects afresh. Connecting and every command are bounded by the delivery
//! timeout. A URL's password never reaches an error, a log line or the journal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use super::ssrf::Guard;
use super::subscriber::RedisTarget;
use crate::store::StoredEvent;

/// Targets (URLs) with a connection kept open.
const MAX_CONNECTIONS: usize = 256;

/// What Redis answers an XADD whose id is not above the stream's top item.
const ID_NOT_ABOVE_TOP: &str = "equal or smaller than the target stream top item";

/// How an XADD went.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    New,
    /// Refused as not above the stream's top: the event is in the stream already.
    AlreadyThere,
}

/// The connections to Redis targets.
pub struct Streams {
    guard: Arc<Guard>,
    timeout: Duration,
    connections: Mutex<HashMap<String, MultiplexedConnection>>,
}

impl Streams {
    pub fn new(guard: Arc<Guard>, timeout: Duration) -> Streams {
        Streams {
            guard,
            timeout,
            connections: Mutex::default(),
        }
    }

    /// XADDs `event` (its envelope `body`) with the previous delivered position `prev`;
    /// the error is redacted.
    pub async fn add(
        &self,
        target: &RedisTarget,
        event: &StoredEvent,
        body: &str,
        prev: i64,
    ) -> Result<Added, String> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&target.stream);
        if let Some(n) = target.maxlen {
            xadd.arg("MAXLEN").arg("~").arg(n);
        }
        xadd.arg(entry_id(event.position.0))
            .arg("type")
            .arg(event.kind.as_str())
            .arg("position")
            .arg(event.position.0)
            .arg("prev")
            .arg(prev)
            .arg("id")
            .arg(event.id.to_string())
            .arg("data")
            .arg(body);
        let mut conn = self
            .connection(&target.url)
            .await
            .map_err(|e| hide(&e, &target.url))?;
        match xadd.query_async::<String>(&mut conn).await {
            Ok(_) => Ok(Added::New),
            Err(e) if e.to_string().contains(ID_NOT_ABOVE_TOP) => Ok(Added::AlreadyThere),
            Err(e) => {
                self.connections
                    .lock()
                    .expect("connections")
                    .remove(&target.url);
                Err(hide(&format!("XADD failed: {}", describe(&e)), &target.url))
            }
        }
    }

    /// The cached connection to `url`, or a new one to the address the guard checked.
    async fn connection(&self, url: &str) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.connections.lock().expect("connections").get(url) {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = async {
            let (info, addr) = checked(&self.guard, url).await?;
            let info = info.set_addr(ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()));
            let client = redis::Client::open(info).map_err(|e| describe(&e))?;
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {}", describe(&e)))
        };
        let conn = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| format!("cannot connect: timed out after {:?}", self.timeout))??;
        let mut connections = self.connections.lock().expect("connections");
        if connections.len() >= MAX_CONNECTIONS {
            // Any one: a target still in use connects again on its next delivery.
            if let Some(k) = connections.keys().next().cloned() {
                connections.remove(&k);
            }
        }
        connections.insert(url.to_string(), conn.clone());
        Ok(conn)
    }
}

/// The stream entry id of the event at `position`.
pub fn entry_id(position: i64) -> String {
    format!("{position}-1")
}

/// Checks a Redis URL as a subscriber is created: its syntax, and the guard's verdict on
/// every address its host resolves to now. The error names no password.
pub async fn check_url(guard: &Guard, url: &str) -> Result<(), String> {
    checked(guard, url)
        .await
        .map(|_| ())
        .map_err(|e| hide(&e, url))
}

/// The URL's connection settings and the (first) address its host resolves to, every one
/// of them permitted by the guard.
async fn checked(guard: &Guard, raw: &str) -> Result<(ConnectionInfo, SocketAddr), String> {
    let parsed = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "redis" => {}
        "rediss" => {
            return Err("rediss:// (TLS) is not supported; give a redis:// URL".into());
        }
        other => return Err(format!("scheme `{other}` is not redis")),
    }
    if parsed.fragment().is_some() {
        return Err("a redis URL has no #fragment".into());
    }
    let info = raw.into_connection_info().map_err(|e| describe(&e))?;
    let (host, port) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        _ => return Err("not a TCP redis URL".into()),
    };
    let addrs = guard.resolve(&host).await?;
    let addr = SocketAddr::new(addrs[0].ip(), port);
    Ok((info, addr))
}

/// A Redis error in a line: its kind and detail.
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    }
}

/// `text` without the password of `url`, wherever it appears (redact() finds it in URLs;
/// a client error quoting it bare would escape that).
fn hide(text: &str, url: &str) -> String {
    let mut text = crate::redact::redact(text);
    if let Some(password) = url::Url::parse(url).ok().and_then(|u| {
        u.password()
            .map(|p| percent_decode(p).unwrap_or_else(|| p.to_string()))
    }) {
        if !password.is_empty() {
            text = text.replace(&password, crate::redact::REDACTED);
        }
    }
    text
}

fn percent_decode(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("p={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_hidden_even_when_quoted_bare() {
        let url = "redis://u:s3cr%40t@127.0.0.1:6379/0";
        let shown = hide(
            "auth failed for s3cr@t at redis://u:s3cr%40t@127.0.0.1",
            url,
        );
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
    }

    #[tokio::test]
    async fn only_plain_redis_urls_to_permitted_hosts_pass() {
        let guard = Guard::default();
        for (url, why) in [
            ("redis://127.0.0.1:6379", "not a public address"),
            ("rediss://example.com", "TLS"),
            ("http://example.com", "not redis"),
            ("redis://:pw@10.0.0.1/0", "not a public address"),
        ] {
            let e = check_url(&guard, url).await.unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        let loopback = Guard::new(Guard::parse_nets("127.0.0.0/8").unwrap());
        check_url(&loopback, "redis://:pw@127.0.0.1:1/2")
            .await
            .unwrap();
    }
}
