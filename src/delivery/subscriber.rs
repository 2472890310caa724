//! Who is subscribed and how: a subscriber's format (what goes on the wire) and target
//! (where), as created (`subscribers` rows are never updated).

use sqlx::PgPool;
use uuid::Uuid;

use crate::compat::{cryptoassets, ipn};
use crate::domain::events::EventType;
use crate::store::StoredEvent;

/// How a subscriber's events go on the wire (`subscribers.format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Standard Webhooks: the event envelope as JSON, signed.
    Standard,
    /// cryptoassets.core's `txupdate` form ([`cryptoassets`]); only confirmation changes.
    Cryptoassets,
    /// Crypto IPN notifications of one address's totals ([`ipn`]), acknowledged by an echo.
    Ipn { address: String, max_confirms: u32 },
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["standard", "cryptoassets", "ipn"];

    /// The event types this format can deliver (None: all).
    pub fn types(&self) -> Option<&'static [EventType]> {
        match self {
            Format::Standard => None,
            Format::Cryptoassets => Some(cryptoassets::TYPES),
            Format::Ipn { .. } => Some(ipn::TYPES),
        }
    }
}

/// Where a subscriber's deliveries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Url(String),
    /// A script handler's argv.
    Command(Vec<String>),
    /// A Redis stream ([`super::redis`]).
    Redis(RedisTarget),
}

/// A Redis stream each event is XADDed to, with the entry id `<position>-1`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://[user[:password]@]host[:port][/db]`; the password is never logged or shown.
    pub url: String,
    pub stream: String,
    /// `MAXLEN ~ n`: Redis trims the stream to about this many entries.
    pub maxlen: Option<u64>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &crate::redact::redact_url(&self.url))
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .finish()
    }
}

/// A subscriber as created (the `subscribers` row).
#[derive(Clone)]
pub struct Subscriber {
    pub id: Uuid,
    pub target: Target,
    pub format: Format,
    pub types: Option<Vec<String>>,
    pub account_id: Option<Uuid>,
    /// Signs Standard Webhooks; an IPN subscriber's `ipn_auth`.
    pub(super) secret: String,
    /// The secret before the last rotation, while it is still valid: deliveries are signed
    /// with both.
    pub(super) previous_secret: Option<String>,
}

impl Subscriber {
    pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<Subscriber>, sqlx::Error> {
        let row = sqlx::query!(
            r#"SELECT s.url, s.command, s.redis_url, s.redis_stream, s.redis_maxlen, s.format, s.address, s.max_confirms, s.types,
                      s.account_id, COALESCE(r.secret, s.secret) AS "secret!",
                      CASE WHEN r.previous_valid_until > now() THEN r.previous_secret END
                        AS previous_secret
               FROM subscribers s
               LEFT JOIN LATERAL (
                   SELECT secret, previous_secret, previous_valid_until FROM subscriber_secrets x
                   WHERE x.subscriber_id = s.subscriber_id ORDER BY rotation DESC LIMIT 1
               ) r ON true
               WHERE s.subscriber_id = $1"#,
            id
        )
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|r| Subscriber {
            id,
            target: match (r.url, r.redis_url, r.redis_stream) {
                (Some(url), _, _) => Target::Url(url),
                (None, Some(url), Some(stream)) => Target::Redis(RedisTarget {
                    url,
                    stream,
                    maxlen: r.redis_maxlen.map(|n| n.max(1) as u64),
                }),
                _ => Target::Command(r.command.unwrap_or_default()),
            },
            format: match (r.format.as_str(), r.address, r.max_confirms) {
                ("ipn", Some(address), Some(m)) => Format::Ipn {
                    address,
                    max_confirms: m.max(0) as u32,
                },
                ("cryptoassets", _, _) => Format::Cryptoassets,
                _ => Format::Standard,
            },
            types: r.types,
            account_id: r.account_id,
            secret: r.secret,
            previous_secret: r.previous_secret,
        }))
    }

    /// The types read from the log: the subscriber's filter narrowed to its format's;
    /// without a filter, every type but the operational (a filter naming them gets them).
    pub(super) fn read_types(&self) -> Option<Vec<String>> {
        match (self.format.types(), &self.types) {
            (None, None) => Some(EventType::unfiltered().to_vec()),
            (None, types) => types.clone(),
            (Some(only), None) => Some(only.iter().map(|t| t.as_str().to_string()).collect()),
            (Some(only), Some(types)) => Some(
                types
                    .iter()
                    .filter(|t| only.iter().any(|o| o.as_str() == t.as_str()))
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Whether `event` is one this subscriber gets: what [`crate::store::read_matching`]
    /// with its [`Subscriber::read_types`], account and address selects.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        let field = |name: &str| event.data.get(name).and_then(|v| v.as_str());
        self.read_types()
            .is_none_or(|types| types.iter().any(|t| t == event.kind.as_str()))
            && self
                .account_id
                .is_none_or(|a| field("account_id") == Some(a.to_string().as_str()))
            && self.address().is_none_or(|a| field("address") == Some(a))
    }

    pub(super) fn address(&self) -> Option<&str> {
        match &self.format {
            Format::Ipn { address, .. } => Some(address),
            _ => None,
        }
    }
}
