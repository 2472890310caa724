//! The Crypto IPN service's notification (repository Binarch00/crypto_gateway): a form POST
//! with `address`, `confirmed`, `unconfirmed` (the address's cumulative totals after the
//! event) and `ipn_auth` (a shared secret), acknowledged only by a 2xx whose JSON body
//! echoes those fields. Its `confirmed` means "at least `max_confirms` confirmations", per
//! subscription; everything else still standing (the mempool included, which the original
//! never read) is `unconfirmed`.
//!
//! An IPN subscriber is notified of every deposit event to its address that changes those
//! totals: `deposit.seen` in the mempool, `deposit.confirmed` up to `max_confirms` (not
//! beyond: the deposit counts as confirmed from there on) and the first one whatever its
//! count (a deposit first seen in a block: its `deposit.seen` is followed by that
//! `deposit.confirmed` at the same count, notified once), `deposit.reorged`,
//! `deposit.dropped`, `deposit.replaced`.

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::domain::amount::Sats;
use crate::domain::events::{
    DEPOSIT_CONFIRMED, DEPOSIT_DROPPED, DEPOSIT_FINAL, DEPOSIT_REORGED, DEPOSIT_REPLACED,
    DEPOSIT_SEEN,
};

/// The original's default; subscriptions take 1 up to the finality threshold.
pub const DEFAULT_MAX_CONFIRMS: u32 = 3;

/// The event types an IPN subscriber reads; [`notifies`] decides among them.
pub const TYPES: &[&str] = &[
    DEPOSIT_SEEN,
    DEPOSIT_CONFIRMED,
    DEPOSIT_REORGED,
    DEPOSIT_DROPPED,
    DEPOSIT_REPLACED,
];

#[derive(Deserialize)]
struct Fields {
    amount_sats: u64,
    confirmations: u32,
}

/// Whether this event (type, stream version, data) is notified to a subscriber with this
/// `max_confirms`.
pub fn notifies(kind: &str, stream_version: i32, data: &Value, max_confirms: u32) -> bool {
    let Ok(f) = Fields::deserialize(data) else {
        return false;
    };
    match kind {
        DEPOSIT_SEEN => f.confirmations == 0,
        // Version 1 is the first deposit.confirmed when the deposit was first seen in a
        // block (else the one at 1 confirmation, within any max_confirms).
        DEPOSIT_CONFIRMED => f.confirmations <= max_confirms || stream_version == 1,
        DEPOSIT_REORGED | DEPOSIT_DROPPED | DEPOSIT_REPLACED => true,
        _ => false,
    }
}

/// An address's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub confirmed: Sats,
    pub unconfirmed: Sats,
}

/// The totals from the latest event of each of the address's deposits (type and data): a
/// dropped or replaced deposit counts nowhere, a final one as confirmed, the rest by
/// their confirmations.
pub fn totals<'a>(
    latest: impl IntoIterator<Item = (&'a str, &'a Value)>,
    max_confirms: u32,
) -> Totals {
    let mut t = Totals::default();
    for (kind, data) in latest {
        if kind == DEPOSIT_DROPPED || kind == DEPOSIT_REPLACED {
            continue;
        }
        let Ok(f) = Fields::deserialize(data) else {
            continue;
        };
        if kind == DEPOSIT_FINAL || f.confirmations >= max_confirms {
            t.confirmed.0 += f.amount_sats;
        } else {
            t.unconfirmed.0 += f.amount_sats;
        }
    }
    t
}

/// One notification as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub address: String,
    pub totals: Totals,
    pub ipn_auth: String,
}

impl Notification {
    /// The form body: amounts as decimal strings with 8 places.
    pub fn form(&self) -> String {
        serde_urlencoded::to_string([
            ("address", self.address.as_str()),
            ("confirmed", &self.totals.confirmed.to_btc_string()),
            ("unconfirmed", &self.totals.unconfirmed.to_btc_string()),
            ("ipn_auth", &self.ipn_auth),
        ])
        .expect("strings encode")
    }

    /// Whether the receiver's answer acknowledges this notification: a JSON object with
    /// the same `address`, `confirmed` and `unconfirmed` (numbers or decimal strings, equal
    /// to 8 places) and, if it echoes `ipn_auth`, the same secret.
    pub fn check_echo(&self, body: &[u8]) -> Result<(), String> {
        let echo: Value = serde_json::from_slice(body)
            .map_err(|_| "the answer is not JSON echoing the notification".to_string())?;
        let Value::Object(echo) = echo else {
            return Err("the answer is not a JSON object echoing the notification".into());
        };
        match echo.get("address") {
            Some(Value::String(a)) if *a == self.address => {}
            other => return Err(format!("address echoed as {}", shown(other))),
        }
        for (name, sent) in [
            ("confirmed", self.totals.confirmed),
            ("unconfirmed", self.totals.unconfirmed),
        ] {
            let got = echo.get(name);
            let sent = Decimal::new(sent.0 as i64, 8);
            if got.and_then(decimal).map(|d| d.round_dp(8)) != Some(sent) {
                return Err(format!("{name} echoed as {}, sent {sent}", shown(got)));
            }
        }
        match echo.get("ipn_auth") {
            None => Ok(()),
            Some(Value::String(a)) if *a == self.ipn_auth => Ok(()),
            Some(_) => Err("ipn_auth echoed wrong".into()),
        }
    }
}

/// A JSON number or decimal string as a decimal (Python's `json` writes small floats in
/// exponent form: 1e-05).
fn decimal(v: &Value) -> Option<Decimal> {
    let s = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    s.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(&s).ok())
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None => "missing".into(),
        Some(v) => {
            let mut s = v.to_string();
            s.truncate(80);
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(sats: u64, confirmations: u32) -> Value {
        json!({"amount_sats": sats, "confirmations": confirmations})
    }

    #[test]
    fn max_confirms_stops_confirmations_beyond_it() {
        assert!(notifies(DEPOSIT_SEEN, 0, &d(1, 0), 2));
        assert!(notifies(DEPOSIT_CONFIRMED, 2, &d(1, 2), 2));
        assert!(!notifies(DEPOSIT_CONFIRMED, 3, &d(1, 3), 2));
        assert!(notifies(DEPOSIT_REORGED, 4, &d(1, 0), 2));
        assert!(!notifies("deposit.credited", 3, &d(1, 2), 2));
        assert!(!notifies("block.connected", 0, &json!({"height": 1}), 2));
    }

    #[test]
    fn a_deposit_first_seen_in_a_block_is_notified_once() {
        // seen (v0) and confirmed (v1) at the same count: the confirmed one is notified,
        // even beyond max_confirms (a rescan finding an old deposit).
        assert!(!notifies(DEPOSIT_SEEN, 0, &d(1, 1), 2));
        assert!(notifies(DEPOSIT_CONFIRMED, 1, &d(1, 1), 2));
        assert!(!notifies(DEPOSIT_SEEN, 0, &d(1, 9), 2));
        assert!(notifies(DEPOSIT_CONFIRMED, 1, &d(1, 9), 2));
        assert!(!notifies(DEPOSIT_CONFIRMED, 2, &d(1, 10), 2));
    }

    #[test]
    fn totals_split_at_max_confirms() {
        let (a, b, c, e) = (d(100, 0), d(200, 2), d(400, 3), d(800, 1));
        let latest = [
            (DEPOSIT_SEEN, &a),
            (DEPOSIT_CONFIRMED, &b),
            (DEPOSIT_CONFIRMED, &c),
            (DEPOSIT_DROPPED, &e),
        ];
        let t = totals(latest, 3);
        assert_eq!((t.confirmed.0, t.unconfirmed.0), (400, 300));
        let fin = d(1000, 15);
        assert_eq!(totals([(DEPOSIT_FINAL, &fin)], 20).confirmed.0, 1000);
        let t = totals([(DEPOSIT_SEEN, &a), (DEPOSIT_CONFIRMED, &e)], 1);
        assert_eq!((t.confirmed.0, t.unconfirmed.0), (800, 100));
    }

    #[test]
    fn echoes_in_strings_or_numbers_acknowledge() {
        let n = Notification {
            address: "mzBc4XEFSdzCDcTxAgf6EZXgsZWpztRhef".into(),
            totals: Totals {
                confirmed: Sats(1_000_000),
                unconfirmed: Sats(1_000),
            },
            ipn_auth: "s3cret".into(),
        };
        let form: Vec<(String, String)> = serde_urlencoded::from_str(&n.form()).unwrap();
        assert_eq!(form[1], ("confirmed".into(), "0.01000000".into()));
        let ok = |v: Value| n.check_echo(v.to_string().as_bytes());
        let a = n.address.clone();
        assert!(ok(json!({"address": a, "confirmed": "0.01", "unconfirmed": "0.00001"})).is_ok());
        assert!(ok(
            json!({"address": a, "confirmed": 0.01, "unconfirmed": 1e-5, "ipn_auth": "s3cret"})
        )
        .is_ok());
        assert!(n
            .check_echo(br#"{"address": "mzBc4XEFSdzCDcTxAgf6EZXgsZWpztRhef", "confirmed": 0.01, "unconfirmed": 1e-05}"#)
            .is_ok());
        assert!(ok(json!({"address": a, "confirmed": "0.02", "unconfirmed": "0.00001"})).is_err());
        assert!(
            ok(json!({"address": "x", "confirmed": "0.01", "unconfirmed": "0.00001"})).is_err()
        );
        assert!(ok(json!({"address": a, "confirmed": "0.01"})).is_err());
        assert!(ok(
            json!({"address": a, "confirmed": 0.01, "unconfirmed": 1e-5, "ipn_auth": "no"})
        )
        .is_err());
        assert!(n.check_echo(b"OK").is_err());
    }
}
