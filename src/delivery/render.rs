//! One event as a subscriber receives it: the Standard Webhooks envelope, cryptoassets.core's
//! txupdate form, a Crypto IPN notification (with the address's totals as of the event),
//! and for a script handler its environment. The mappings themselves are
//! [`crate::compat`]'s; this reads what they need.

use sqlx::PgPool;

use super::subscriber::{Format, Subscriber, Target};
use crate::compat::{cryptoassets, ipn};
use crate::domain::events::{Event, EventType};
use crate::domain::stream::Position;
use crate::store::StoredEvent;

/// One event as this subscriber receives it.
pub struct Message {
    pub body: String,
    pub content_type: &'static str,
    /// Standard Webhooks headers (an IPN's authentication is its `ipn_auth` field).
    pub signed: bool,
    /// A script handler's environment.
    pub env: Vec<(&'static str, String)>,
    /// An IPN: what the answer must echo.
    pub echo: Option<ipn::Notification>,
}

/// The event in the subscriber's format; None when the format does not deliver it (or
/// the event's data does not fit its type, which is logged).
pub async fn render(
    pool: &PgPool,
    credit_confirmations: u32,
    sub: &Subscriber,
    event: &StoredEvent,
) -> Result<Option<Message>, sqlx::Error> {
    let envelope = || serde_json::to_string(event).expect("an event serialises");
    let command = matches!(sub.target, Target::Command(_));
    let typed = if command || sub.format != Format::Standard {
        match event.event() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(subscriber = %sub.id, error = %e, "event passed over");
                return Ok(None);
            }
        }
    } else {
        None
    };
    // The txupdate, when something will use it: the cryptoassets body, or a script's
    // CRYPTOASSETS_* variables.
    let update = typed
        .as_ref()
        .and_then(|e| cryptoassets::txupdate(e, credit_confirmations));
    let mut message = match &sub.format {
        Format::Standard => Message {
            body: envelope(),
            content_type: "application/json",
            signed: true,
            env: Vec::new(),
            echo: None,
        },
        Format::Cryptoassets => {
            let Some(update) = &update else {
                return Ok(None);
            };
            Message {
                body: cryptoassets::form(update),
                content_type: "application/x-www-form-urlencoded",
                signed: true,
                env: Vec::new(),
                echo: None,
            }
        }
        Format::Ipn {
            address,
            max_confirms,
        } => {
            let notified = typed
                .as_ref()
                .is_some_and(|e| ipn::notifies(e, event.stream_version, *max_confirms));
            if !notified {
                return Ok(None);
            }
            let n = ipn::Notification {
                address: address.clone(),
                totals: ipn_totals(pool, address, event.position, *max_confirms).await?,
                ipn_auth: sub.secret.clone(),
            };
            Message {
                body: n.form(),
                content_type: "application/x-www-form-urlencoded",
                signed: false,
                env: Vec::new(),
                echo: Some(n),
            }
        }
    };
    if command {
        // A script gets the event in its environment; the standard body is the envelope.
        let data = match sub.format {
            Format::Standard => std::mem::take(&mut message.body),
            _ => envelope(),
        };
        message.env = vec![
            ("CHAINLEDGER_EVENT_NAME", event.kind.as_str().to_string()),
            ("CHAINLEDGER_EVENT_DATA", data),
        ];
        if let Some(update) = &update {
            let data = serde_json::to_string(update).expect("a txupdate serialises");
            message
                .env
                .push(("CRYPTOASSETS_EVENT_NAME", cryptoassets::EVENT_NAME.into()));
            message.env.push(("CRYPTOASSETS_EVENT_DATA", data));
        }
    }
    Ok(Some(message))
}

/// An address's IPN totals as of `position`: the latest event at or before it of each of
/// the address's deposits (the `deposits` projection names them; their streams are read
/// through the log's stream index).
pub async fn ipn_totals(
    pool: &PgPool,
    address: &str,
    position: Position,
    max_confirms: u32,
) -> Result<ipn::Totals, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (e.stream) e.type AS "kind: EventType", e.data
           FROM deposits d
           JOIN events e ON e.stream = 'deposit-' || d.txid || ':' || d.vout
           WHERE d.address = $1 AND e.position <= $2
           ORDER BY e.stream, e.stream_version DESC"#,
        address,
        position.0
    )
    .fetch_all(pool)
    .await?;
    let latest: Vec<Event> = rows
        .iter()
        .filter_map(|r| Event::from_data(r.kind, &r.data).ok())
        .collect();
    Ok(ipn::totals(&latest, max_confirms))
}
