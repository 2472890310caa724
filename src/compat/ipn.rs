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
use serde_json::Value;

use crate::domain::amount::Sats;
use crate::domain::events::{Event, EventType, Subject};
use crate::domain::tracked::Phase;

/// The original's default; subscriptions take 1 up to the finality threshold.
pub const DEFAULT_MAX_CONFIRMS: u32 = 3;

/// The event types an IPN subscriber reads; [`notifies`] decides among them.
pub const TYPES: &[EventType] = &[
    EventType::DepositSeen,
    EventType::DepositConfirmed,
    EventType::DepositReorged,
    EventType::DepositDropped,
    EventType::DepositReplaced,
];

/// Whether this event (at this stream version) is notified to a subscriber with this
/// `max_confirms`.
pub fn notifies(event: &Event, stream_version: i32, max_confirms: u32) -> bool {
    use Phase::{Confirmed, CreditReversed, Credited, Dropped, Final, Reorged, Replaced, Seen};
    match event.subject() {
        Subject::Deposit(d, Seen) => d.confirmations == 0,
        // Version 1 is the first deposit.confirmed when the deposit was first seen in a
        // block (else the one at 1 confirmation, within any max_confirms).
        Subject::Deposit(d, Confirmed) => d.confirmations <= max_confirms || stream_version == 1,
        Subject::Deposit(_, Reorged(_) | Dropped | Replaced(_)) => true,
        Subject::Deposit(_, Credited | CreditReversed | Final)
        | Subject::Withdrawal(..)
        | Subject::Account(_)
        | Subject::Block(_)
        | Subject::BlockDisconnected(_)
        | Subject::Subscriber(_) => false,
    }
}

/// An address's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub confirmed: Sats,
    pub unconfirmed: Sats,
}

/// The totals from the latest event of each of the address's deposits: a dropped or
/// replaced deposit counts nowhere, a final one as confirmed, the rest by their
/// confirmations.
pub fn totals<'a>(latest: impl IntoIterator<Item = &'a Event>, max_confirms: u32) -> Totals {
    let mut t = Totals::default();
    for event in latest {
        match event.subject() {
            Subject::Deposit(_, Phase::Dropped | Phase::Replaced(_)) => {}
            Subject::Deposit(d, Phase::Final) => t.confirmed.0 += d.amount_sats.0,
            Subject::Deposit(d, _) if d.confirmations >= max_confirms => {
                t.confirmed.0 += d.amount_sats.0
            }
            Subject::Deposit(d, _) => t.unconfirmed.0 += d.amount_sats.0,
            _ => {}
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
        // By characters: a receiver's multi-byte text cut mid-character would panic.
        Some(v) => v.to_string().chars().take(80).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tracked::{examples, Deposit};
    use bitcoin::hashes::Hash;
    use serde_json::json;

    fn d(sats: u64, confirmations: u32) -> Deposit {
        examples::deposit(sats, confirmations)
    }

    fn reorged(sats: u64) -> Event {
        Event::DepositReorged(crate::domain::events::Reorged {
            state: d(sats, 0),
            orphaned_block_hash: bitcoin::BlockHash::all_zeros(),
        })
    }

    #[test]
    fn max_confirms_stops_confirmations_beyond_it() {
        assert!(notifies(&Event::DepositSeen(d(1, 0)), 0, 2));
        assert!(notifies(&Event::DepositConfirmed(d(1, 2)), 2, 2));
        assert!(!notifies(&Event::DepositConfirmed(d(1, 3)), 3, 2));
        assert!(notifies(&reorged(1), 4, 2));
        assert!(!notifies(&Event::DepositCredited(d(1, 2)), 3, 2));
    }

    #[test]
    fn a_deposit_first_seen_in_a_block_is_notified_once() {
        // seen (v0) and confirmed (v1) at the same count: the confirmed one is notified,
        // even beyond max_confirms (a rescan finding an old deposit).
        assert!(!notifies(&Event::DepositSeen(d(1, 1)), 0, 2));
        assert!(notifies(&Event::DepositConfirmed(d(1, 1)), 1, 2));
        assert!(!notifies(&Event::DepositSeen(d(1, 9)), 0, 2));
        assert!(notifies(&Event::DepositConfirmed(d(1, 9)), 1, 2));
        assert!(!notifies(&Event::DepositConfirmed(d(1, 10)), 2, 2));
    }

    #[test]
    fn totals_split_at_max_confirms() {
        let latest = [
            Event::DepositSeen(d(100, 0)),
            Event::DepositConfirmed(d(200, 2)),
            Event::DepositConfirmed(d(400, 3)),
            Event::DepositDropped(d(800, 1)),
        ];
        let t = totals(&latest, 3);
        assert_eq!((t.confirmed.0, t.unconfirmed.0), (400, 300));
        assert_eq!(
            totals(&[Event::DepositFinal(d(1000, 15))], 20).confirmed.0,
            1000
        );
        let t = totals(
            &[
                Event::DepositSeen(d(100, 0)),
                Event::DepositConfirmed(d(800, 1)),
            ],
            1,
        );
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
        let long = "é".repeat(100);
        let e = ok(json!({"address": long, "confirmed": "0.01"})).unwrap_err();
        assert!(e.starts_with("address echoed as \"éé"), "{e}");
    }
}
