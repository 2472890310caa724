//! cryptoassets.core's `txupdate` event: one per confirmation change of a deposit
//! (`transaction_type` `deposit`) or a withdrawal (`broadcast`). Its HTTP handler POSTs it
//! as a form (`event_name`, `data` and `xdata` holding the same JSON); its script handler
//! puts it in `CRYPTOASSETS_EVENT_NAME` / `CRYPTOASSETS_EVENT_DATA`.
//!
//! Which of our events are confirmation changes: `deposit.seen` in the mempool (0
//! confirmations), `deposit.confirmed` and `deposit.reorged` (confirmations back to 0), and
//! their withdrawal twins. The others repeat a confirmation count already sent (a deposit
//! first seen in a block has its `deposit.seen` followed by a `deposit.confirmed` at the
//! same count; `*.credited` and `*.final` follow a `*.confirmed` at the same count,
//! `deposit.credit_reversed` follows a `deposit.reorged`) or have no txupdate equivalent
//! (`*.dropped`, `*.replaced`).
//!
//! cryptoassets.core's integer database ids have no counterpart here: `transaction` is the
//! deposit's `txid:vout` (a withdrawal's txid), `network_transaction` the txid, `account`
//! the account's UUID; all stable across replays.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::events::{
    DEPOSIT_CONFIRMED, DEPOSIT_REORGED, DEPOSIT_SEEN, WITHDRAWAL_BROADCAST, WITHDRAWAL_CONFIRMED,
    WITHDRAWAL_REORGED,
};

pub const EVENT_NAME: &str = "txupdate";

/// The event types that become a `txupdate`.
pub const TYPES: &[&str] = &[
    DEPOSIT_SEEN,
    DEPOSIT_CONFIRMED,
    DEPOSIT_REORGED,
    WITHDRAWAL_BROADCAST,
    WITHDRAWAL_CONFIRMED,
    WITHDRAWAL_REORGED,
];

/// The `data` of a txupdate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TxUpdate {
    pub transaction: String,
    pub network_transaction: String,
    pub txid: String,
    pub account: Uuid,
    /// The receiving address of a deposit; null for a withdrawal (its destinations are
    /// not part of our events).
    pub address: Option<String>,
    /// Decimal string, 8 places.
    pub amount: String,
    /// Reached the credit threshold at this confirmation count.
    pub credited: bool,
    pub confirmations: u32,
    /// `deposit` or `broadcast`.
    pub transaction_type: &'static str,
    pub coin_name: &'static str,
}

/// The fields of deposit and withdrawal event data a txupdate needs.
#[derive(Deserialize)]
struct Fields {
    account_id: Uuid,
    txid: String,
    vout: Option<u32>,
    address: Option<String>,
    amount: String,
    confirmations: u32,
    credit_confirmations: Option<u32>,
}

/// The txupdate an event is, or None when it is not a confirmation change (see the
/// module documentation). `credit_confirmations` is the threshold for withdrawals, whose
/// events do not carry their account's.
pub fn txupdate(kind: &str, data: &Value, credit_confirmations: u32) -> Option<TxUpdate> {
    if !TYPES.contains(&kind) {
        return None;
    }
    let f = Fields::deserialize(data).ok()?;
    if kind == DEPOSIT_SEEN && f.confirmations > 0 {
        return None; // the deposit.confirmed right after it says the same
    }
    let deposit = kind.starts_with("deposit.");
    let threshold = f.credit_confirmations.unwrap_or(credit_confirmations);
    Some(TxUpdate {
        transaction: match (deposit, f.vout) {
            (true, Some(vout)) => format!("{}:{vout}", f.txid),
            _ => f.txid.clone(),
        },
        network_transaction: f.txid.clone(),
        txid: f.txid,
        account: f.account_id,
        address: if deposit { f.address } else { None },
        amount: f.amount,
        // A deposit's `deposit.confirmed` at the threshold comes before its
        // `deposit.credited`; cryptoassets.core says credited in that same update.
        credited: f.confirmations >= threshold && f.confirmations > 0,
        confirmations: f.confirmations,
        transaction_type: if deposit { "deposit" } else { "broadcast" },
        coin_name: "btc",
    })
}

/// The HTTP handler's body: `application/x-www-form-urlencoded` with `event_name`, `data`
/// and `xdata` (cryptoassets.core sends the JSON twice under both names).
pub fn form(update: &TxUpdate) -> String {
    let json = serde_json::to_string(update).expect("a txupdate serialises");
    serde_urlencoded::to_string([
        ("event_name", EVENT_NAME),
        ("data", json.as_str()),
        ("xdata", json.as_str()),
    ])
    .expect("strings encode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deposit(confirmations: u32) -> Value {
        json!({"account_id": "6f1c5c43-5c1e-4b4e-9a39-2b1f0a8b7e10", "address": "mzBc4XEFSdzCDcTxAgf6EZXgsZWpztRhef",
               "txid": "ab".repeat(32), "vout": 1, "amount": "1.50000000", "amount_sats": 150_000_000u64,
               "confirmations": confirmations, "block_hash": null, "block_height": null,
               "credited": false, "credit_confirmations": 3, "status": "confirming", "inputs": []})
    }

    #[test]
    fn deposit_updates_say_credited_at_the_threshold() {
        let u = txupdate(DEPOSIT_CONFIRMED, &deposit(2), 6).unwrap();
        assert!(!u.credited);
        assert_eq!(u.transaction, format!("{}:1", "ab".repeat(32)));
        assert_eq!(u.network_transaction, "ab".repeat(32));
        assert_eq!(u.amount, "1.50000000");
        assert_eq!(u.transaction_type, "deposit");
        assert_eq!(u.coin_name, "btc");
        assert!(
            txupdate(DEPOSIT_CONFIRMED, &deposit(3), 6)
                .unwrap()
                .credited
        );
        assert!(!txupdate(DEPOSIT_SEEN, &deposit(0), 6).unwrap().credited);
        assert!(txupdate("deposit.credited", &deposit(3), 6).is_none());
        // First seen in a block: the deposit.confirmed after it is the one update.
        assert!(txupdate(DEPOSIT_SEEN, &deposit(2), 6).is_none());
        assert!(txupdate("deposit.final", &deposit(15), 6).is_none());
        assert!(txupdate("block.connected", &json!({"height": 1}), 6).is_none());
    }

    #[test]
    fn withdrawals_are_broadcasts() {
        let w = json!({"account_id": "6f1c5c43-5c1e-4b4e-9a39-2b1f0a8b7e10", "txid": "cd".repeat(32),
                       "amount": "0.25000000", "amount_sats": 25_000_000u64, "fee": null, "fee_sats": null,
                       "inputs": [], "confirmations": 2, "block_hash": null, "block_height": null,
                       "status": "confirming", "source": "api"});
        let u = txupdate(WITHDRAWAL_CONFIRMED, &w, 2).unwrap();
        assert_eq!(u.transaction_type, "broadcast");
        assert_eq!(u.transaction, "cd".repeat(32));
        assert_eq!(u.address, None);
        assert!(u.credited);
    }

    #[test]
    fn the_form_carries_the_json_twice() {
        let u = txupdate(DEPOSIT_SEEN, &deposit(0), 3).unwrap();
        let fields: Vec<(String, String)> = serde_urlencoded::from_str(&form(&u)).unwrap();
        assert_eq!(fields[0], ("event_name".into(), "txupdate".into()));
        assert_eq!(fields[1].0, "data");
        assert_eq!(fields[2].0, "xdata");
        assert_eq!(fields[1].1, fields[2].1);
        let data: Value = serde_json::from_str(&fields[1].1).unwrap();
        assert_eq!(data["confirmations"], 0);
        assert_eq!(data["amount"], "1.50000000");
    }
}
