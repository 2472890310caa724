//! Where a webhook is sent: one attempt at one event — an HTTP POST through the SSRF
//! guard's resolver (no redirects), a script handler's run, or an XADD to a Redis stream
//! ([`super::redis`]) — and its outcome as a journal entry (status code, error, latency,
//! when to retry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::render::Message;
use super::subscriber::{Subscriber, Target};
use super::{redis, schedule, script, sign, ssrf, DeliveryConfig};
use crate::metrics;
use crate::projections::cursors::{Entry, Outcome};
use crate::store::StoredEvent;

/// The HTTP client, the Redis connections and the settings every attempt uses.
pub struct Transport {
    cfg: DeliveryConfig,
    client: reqwest::Client,
    streams: redis::Streams,
}

impl Transport {
    /// Without WEBHOOK_PROXY the client connects itself, ignoring HTTP_PROXY, HTTPS_PROXY
    /// and ALL_PROXY, and resolves every target through the guard at connection time. With
    /// it, the client only ever connects to that proxy (the operator's choice, resolved
    /// normally), and [`Transport::post`] resolves and checks the target first.
    pub fn new(cfg: DeliveryConfig) -> reqwest::Result<Transport> {
        let builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none());
        let builder = match &cfg.proxy {
            None => builder
                .no_proxy()
                .dns_resolver(Arc::new(ssrf::GuardedResolver(cfg.guard.clone()))),
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.as_str())?),
        };
        Ok(Transport {
            client: builder.build()?,
            streams: redis::Streams::new(cfg.guard.clone(), cfg.timeout),
            cfg,
        })
    }

    /// The target checked before a request: its syntax (an IP literal by the guard) and,
    /// through a proxy, every address its host resolves to now (the proxy resolves it
    /// again: a name re-pointed between the two is the one gap a proxy leaves).
    async fn checked_target(&self, url: &str) -> Result<reqwest::Url, String> {
        match self.cfg.proxy {
            None => self.cfg.guard.check_url_syntax(url),
            Some(_) => self.cfg.guard.check_url(url).await,
        }
    }

    /// One attempt; its outcome as a journal entry.
    pub async fn send(
        &self,
        sub: &Subscriber,
        event: &StoredEvent,
        message: Message,
        epoch: i32,
        attempt: i32,
        previous: i64,
    ) -> Entry {
        let started = Instant::now();
        let (status_code, error, outcome, retry_after) = match &sub.target {
            Target::Url(url) => self.post(sub, url, event, message, previous).await,
            Target::Command(_) if !self.cfg.script_handlers => {
                let e = "refused: script handlers are disabled (SCRIPT_HANDLERS)".to_string();
                (None, Some(e), Outcome::Failed, None)
            }
            Target::Command(argv) => {
                // The event delivered before this one, as a webhook's header says it.
                let mut env = message.env;
                env.push(("CHAINLEDGER_PREVIOUS_POSITION", previous.to_string()));
                match script::run(argv, &env, self.cfg.timeout).await {
                    Ok(()) => (None, None, Outcome::Delivered, None),
                    Err(e) => (None, Some(e), Outcome::Failed, None),
                }
            }
            Target::Redis(target) => {
                match self
                    .streams
                    .add(target, event, &message.body, previous)
                    .await
                {
                    Ok(added) => {
                        if added == redis::Added::AlreadyThere {
                            // A repeat (a crash or a timeout after Redis took it): the
                            // stream holds it once, so it is delivered.
                            tracing::debug!(
                                position = event.position.0,
                                "already in the stream (its id is not above the top)"
                            );
                        }
                        (None, None, Outcome::Delivered, None)
                    }
                    Err(e) => (None, Some(e), Outcome::Failed, None),
                }
            }
        };
        // The error quotes what a receiver or a script said; a NUL there would make the
        // journal's insert fail (PostgreSQL text cannot hold one) and stall the worker.
        let error = error.map(|e| e.replace('\0', "\u{FFFD}"));
        let latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        metrics::record_delivery(outcome.as_str(), started.elapsed());
        let next_attempt_at = (outcome == Outcome::Failed)
            .then(|| {
                self.cfg
                    .schedule
                    .next_attempt(attempt as usize, Utc::now(), retry_after)
            })
            .flatten();
        if outcome != Outcome::Delivered {
            tracing::info!(error = error.as_deref().unwrap_or(""), next_attempt_at = ?next_attempt_at,
                "delivery failed");
        }
        Entry::Attempt {
            epoch,
            position: event.position.0,
            event_id: event.id,
            attempt,
            status_code,
            error,
            latency_ms,
            outcome,
            next_attempt_at,
        }
    }

    /// One HTTP request: (status code, error, outcome, Retry-After).
    async fn post(
        &self,
        sub: &Subscriber,
        url: &str,
        event: &StoredEvent,
        message: Message,
        previous: i64,
    ) -> HttpOutcome {
        let url = match self.checked_target(url).await {
            Ok(url) => url,
            Err(e) => return (None, Some(format!("refused: {e}")), Outcome::Failed, None),
        };
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static(message.content_type))
            .header(
                USER_AGENT,
                concat!("chainledger/", env!("CARGO_PKG_VERSION")),
            )
            // The event delivered to this subscriber before this one (0: none yet).
            .header("chainledger-previous-position", previous.to_string());
        if message.signed {
            let msg_id = event.id.to_string();
            let now = Utc::now().timestamp();
            let body = message.body.as_bytes();
            let mut signature = sign::sign(&sub.secret, &msg_id, now, body);
            if let Some(previous) = &sub.previous_secret {
                // Standard Webhooks: several signatures, space-separated; a receiver
                // accepts the delivery if any verifies with its secret.
                signature.push(' ');
                signature.push_str(&sign::sign(previous, &msg_id, now, body));
            }
            request = request
                .header("webhook-id", msg_id)
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", signature);
        }
        let resp = match request.body(message.body).send().await {
            Ok(resp) => resp,
            Err(e) => return (None, Some(describe(&e)), Outcome::Failed, None),
        };
        let code = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| schedule::parse_retry_after(v, Utc::now()));
        if code.is_success() {
            let Some(sent) = &message.echo else {
                return (Some(code.as_u16()), None, Outcome::Delivered, None);
            };
            let echoed = match read_limited(resp, MAX_ANSWER).await {
                Ok(body) => sent.check_echo(&body),
                Err(e) => Err(format!("cannot read the answer: {e}")),
            };
            match echoed {
                Ok(()) => (Some(code.as_u16()), None, Outcome::Delivered, None),
                Err(e) => {
                    let e = format!("HTTP {code} without the IPN echo: {e}");
                    (Some(code.as_u16()), Some(e), Outcome::Failed, retry_after)
                }
            }
        } else if code == reqwest::StatusCode::GONE {
            let e = "410 Gone: the receiver unsubscribed; disabled".to_string();
            (Some(code.as_u16()), Some(e), Outcome::Gone, None)
        } else {
            let e = if code.is_redirection() {
                format!("HTTP {code} (redirects are not followed)")
            } else {
                format!("HTTP {code}")
            };
            (Some(code.as_u16()), Some(e), Outcome::Failed, retry_after)
        }
    }
}

/// An HTTP attempt's status code, error, outcome and Retry-After.
type HttpOutcome = (Option<u16>, Option<String>, Outcome, Option<Duration>);

/// Longest answer read from an IPN receiver.
const MAX_ANSWER: usize = 64 * 1024;

async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("longer than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error in a line, with its cause (refused, timed out, guard refused).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    // Journaled and logged: a `?token=` of the target's URL stays out of both.
    crate::redact::redact(&s)
}
