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

use serde::Serialize;
use uuid::Uuid;

use crate::domain::events::{Event, EventType, Subject};
use crate::domain::tracked::{Deposit, Phase, Withdrawal};

pub const EVENT_NAME: &str = "txupdate";

/// The event types that become a `txupdate`.
pub const TYPES: &[EventType] = &[
    EventType::DepositSeen,
    EventType::DepositConfirmed,
    EventType::DepositReorged,
    EventType::WithdrawalBroadcast,
    EventType::WithdrawalConfirmed,
    EventType::WithdrawalReorged,
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

/// The txupdate an event is, or None when it is not a confirmation change (see the
/// module documentation). `credit_confirmations` is the threshold for withdrawals, whose
/// events do not carry their account's.
pub fn txupdate(event: &Event, credit_confirmations: u32) -> Option<TxUpdate> {
    use Phase::{Confirmed, CreditReversed, Credited, Dropped, Final, Reorged, Replaced, Seen};
    match event.subject() {
        // A deposit first seen in a block: the deposit.confirmed right after it says the same.
        Subject::Deposit(d, Seen) if d.confirmations > 0 => None,
        Subject::Deposit(d, Seen | Confirmed | Reorged(_)) => Some(of_deposit(d)),
        Subject::Withdrawal(w, Seen | Confirmed | Reorged(_)) => {
            Some(of_withdrawal(w, credit_confirmations))
        }
        Subject::Deposit(_, Credited | CreditReversed | Final | Dropped | Replaced(_))
        | Subject::Withdrawal(_, Credited | CreditReversed | Final | Dropped | Replaced(_))
        | Subject::Account(_)
        | Subject::Block(_)
        | Subject::BlockDisconnected(_)
        | Subject::Subscriber(_) => None,
    }
}

fn of_deposit(d: &Deposit) -> TxUpdate {
    TxUpdate {
        transaction: d.outpoint().to_string(),
        network_transaction: d.txid.to_string(),
        txid: d.txid.to_string(),
        account: d.account_id,
        address: Some(d.address.clone()),
        amount: d.amount.0.to_btc_string(),
        // A deposit's `deposit.confirmed` at the threshold comes before its
        // `deposit.credited`; cryptoassets.core says credited in that same update.
        credited: credited_at(d.confirmations, d.credit_confirmations),
        confirmations: d.confirmations,
        transaction_type: "deposit",
        coin_name: "btc",
    }
}

fn of_withdrawal(w: &Withdrawal, threshold: u32) -> TxUpdate {
    TxUpdate {
        transaction: w.txid.to_string(),
        network_transaction: w.txid.to_string(),
        txid: w.txid.to_string(),
        account: w.account_id,
        address: None,
        amount: w.amount.0.to_btc_string(),
        credited: credited_at(w.confirmations, threshold),
        confirmations: w.confirmations,
        transaction_type: "broadcast",
        coin_name: "btc",
    }
}

fn credited_at(confirmations: u32, threshold: u32) -> bool {
    confirmations >= threshold && confirmations > 0
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
    use crate::domain::events::BlockConnected;
    use crate::domain::tracked::examples;
    use bitcoin::hashes::Hash;
    use bitcoin::{BlockHash, Txid};
    use serde_json::Value;

    fn txid(b: u8) -> Txid {
        Txid::from_byte_array([b; 32])
    }

    fn deposit(confirmations: u32) -> Deposit {
        Deposit {
            account_id: "6f1c5c43-5c1e-4b4e-9a39-2b1f0a8b7e10".parse().unwrap(),
            txid: txid(0xab),
            vout: 1,
            ..examples::deposit(150_000_000, confirmations)
        }
    }

    #[test]
    fn deposit_updates_say_credited_at_the_threshold() {
        let u = txupdate(&Event::DepositConfirmed(deposit(2)), 6).unwrap();
        assert!(!u.credited);
        assert_eq!(u.transaction, format!("{}:1", "ab".repeat(32)));
        assert_eq!(u.network_transaction, "ab".repeat(32));
        assert_eq!(u.amount, "1.50000000");
        assert_eq!(u.transaction_type, "deposit");
        assert_eq!(u.coin_name, "btc");
        assert!(
            txupdate(&Event::DepositConfirmed(deposit(3)), 6)
                .unwrap()
                .credited
        );
        assert!(
            !txupdate(&Event::DepositSeen(deposit(0)), 6)
                .unwrap()
                .credited
        );
        assert!(txupdate(&Event::DepositCredited(deposit(3)), 6).is_none());
        // First seen in a block: the deposit.confirmed after it is the one update.
        assert!(txupdate(&Event::DepositSeen(deposit(2)), 6).is_none());
        assert!(txupdate(&Event::DepositFinal(deposit(15)), 6).is_none());
        let block = Event::BlockConnected(BlockConnected {
            height: 1,
            hash: BlockHash::all_zeros(),
            prev_hash: BlockHash::all_zeros(),
            time: 0,
        });
        assert!(txupdate(&block, 6).is_none());
    }

    #[test]
    fn withdrawals_are_broadcasts() {
        let w = Withdrawal {
            txid: txid(0xcd),
            ..examples::withdrawal(25_000_000, 2)
        };
        let u = txupdate(&Event::WithdrawalConfirmed(w), 2).unwrap();
        assert_eq!(u.transaction_type, "broadcast");
        assert_eq!(u.transaction, "cd".repeat(32));
        assert_eq!(u.address, None);
        assert!(u.credited);
    }

    #[test]
    fn the_form_carries_the_json_twice() {
        let u = txupdate(&Event::DepositSeen(deposit(0)), 3).unwrap();
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
