//! A subscriber's Redis Streams target as the API takes it (`"redis": {…}` instead of a
//! `url`) and shows it (the URL's password redacted: it is never shown again).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::delivery::{redis, Guard, RedisTarget};
use crate::http::error::ApiError;

/// Longest stream key accepted.
const MAX_STREAM: usize = 200;
/// Largest `maxlen` accepted: a billion entries.
const MAX_MAXLEN: u64 = 1_000_000_000;

/// Each matching event is XADDed to `stream` with the entry id `<position>-1` and the
/// fields `type`, `position`, `prev`, `id` and `data` (the envelope JSON).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://[user[:password]@]host[:port][/db]` (no TLS: `rediss://` is refused); the
    /// host must resolve to public addresses unless WEBHOOK_ALLOW_NETS allows it.
    #[schema(max_length = 2000)]
    url: String,
    /// The stream's key, 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    stream: String,
    /// `XADD … MAXLEN ~ maxlen`: Redis trims the stream to about this many entries.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    maxlen: Option<u64>,
}

/// The Redis target as shown: the URL's password is `<redacted>`.
#[derive(Serialize, ToSchema)]
pub struct RedisView {
    url: String,
    stream: String,
    maxlen: Option<u64>,
}

impl RedisView {
    pub fn of(url: &str, stream: &str, maxlen: Option<u64>) -> RedisView {
        RedisView {
            url: crate::redact::redact_url(url),
            stream: stream.to_string(),
            maxlen,
        }
    }
}

/// Checks the target (`redis.url` through the guard) and returns it.
pub async fn check(guard: &Guard, spec: RedisSpec) -> Result<RedisTarget, ApiError> {
    // The limit applies to the URL as sent, as the OpenAPI document says.
    if spec.url.chars().count() > 2000 {
        return Err(ApiError::invalid_field(
            "redis.url",
            "longer than 2000 characters",
        ));
    }
    let url = spec.url.trim();
    redis::check_url(guard, url)
        .await
        .map_err(|e| ApiError::invalid_field("redis.url", e))?;
    let chars = spec.stream.chars().count();
    if chars == 0 || chars > MAX_STREAM || spec.stream.contains('\0') {
        return Err(ApiError::invalid_field(
            "redis.stream",
            format!("must be 1 to {MAX_STREAM} characters, without NUL"),
        ));
    }
    if spec.maxlen.is_some_and(|n| !(1..=MAX_MAXLEN).contains(&n)) {
        return Err(ApiError::invalid_field(
            "redis.maxlen",
            format!("must be between 1 and {MAX_MAXLEN}"),
        ));
    }
    Ok(RedisTarget {
        url: url.to_string(),
        stream: spec.stream,
        maxlen: spec.maxlen,
    })
}
