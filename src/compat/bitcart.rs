//! What a Bitcart daemon would have told the Bitcart SDK about the log's events: the pure
//! mapping from stored events to Bitcart updates (`{"event": name, …fields}`), and how a
//! page of them is capped and cut into websocket frames. The endpoint that serves them is
//! [`crate::http`]'s `bitcart` module.
//!
//! The SDK accepts only four event names (others are dropped as "Invalid event from
//! server"); each update is derived from one event alone, so a replay of the log from any
//! position yields the same updates:
//!
//! | log event | Bitcart update |
//! |---|---|
//! | `block.connected` | `new_block {height}` (global: no wallet) |
//! | `deposit.seen`, `withdrawal.broadcast` | `new_transaction {tx}` |
//! | `deposit.confirmed` / `withdrawal.confirmed` reaching a first confirmation | `verified_tx {tx, height}` |
//! | `deposit.seen`, `deposit.credit_reversed` | `new_payment` status 7 Unconfirmed |
//! | `deposit.credited` | `new_payment` status 3 Paid |
//! | `deposit.dropped`, `deposit.replaced` | `new_payment` status 0 Unpaid |
//!
//! "First confirmation" is `confirmations == 1` (a transaction mined after it was seen, also
//! again after a reorg) or the event right after `seen` (a transaction first seen in a
//! block, or by a rescan, already deeper). `new_payment` describes one deposit: its
//! `tx_hashes` is `[txid]` and `sent_amount` its amount, not a total over the address.

use std::collections::HashSet;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::events;
use crate::store::StoredEvent;

/// The log's event types that yield updates: what the endpoint reads.
pub const SOURCE_TYPES: &[&str] = &[
    events::BLOCK_CONNECTED,
    events::DEPOSIT_SEEN,
    events::DEPOSIT_CONFIRMED,
    events::DEPOSIT_CREDITED,
    events::DEPOSIT_CREDIT_REVERSED,
    events::DEPOSIT_DROPPED,
    events::DEPOSIT_REPLACED,
    events::WITHDRAWAL_BROADCAST,
    events::WITHDRAWAL_CONFIRMED,
];

/// Electrum's payment request statuses (`electrum.invoices`), as the daemon reports them.
const UNPAID: (u8, &str) = (0, "Unpaid");
const PAID: (u8, &str) = (3, "Paid");
const UNCONFIRMED: (u8, &str) = (7, "Unconfirmed");

/// The updates one event yields, in order (none for most).
pub fn updates_of(kind: &str, stream_version: i32, data: &Value) -> Vec<Value> {
    let tx = || data["txid"].clone();
    let first_confirmation = || data["confirmations"].as_u64() == Some(1) || stream_version == 1;
    let verified = || json!({"event": "verified_tx", "tx": tx(), "height": data["block_height"]});
    let payment = |(status, status_str): (u8, &str)| {
        json!({
            "event": "new_payment",
            "address": data["address"],
            "status": status,
            "status_str": status_str,
            "tx_hashes": [tx()],
            "sent_amount": data["amount"],
        })
    };
    match kind {
        events::BLOCK_CONNECTED => vec![json!({"event": "new_block", "height": data["height"]})],
        events::DEPOSIT_SEEN => vec![
            json!({"event": "new_transaction", "tx": tx()}),
            payment(UNCONFIRMED),
        ],
        events::WITHDRAWAL_BROADCAST => vec![json!({"event": "new_transaction", "tx": tx()})],
        events::DEPOSIT_CONFIRMED | events::WITHDRAWAL_CONFIRMED if first_confirmation() => {
            vec![verified()]
        }
        events::DEPOSIT_CREDITED => vec![payment(PAID)],
        events::DEPOSIT_CREDIT_REVERSED => vec![payment(UNCONFIRMED)],
        events::DEPOSIT_DROPPED | events::DEPOSIT_REPLACED => vec![payment(UNPAID)],
        _ => Vec::new(),
    }
}

/// An update and where it came from: the event's position and account (None: global).
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub position: i64,
    pub account: Option<Uuid>,
    pub body: Value,
}

/// The updates of a run of events, at most `max` of them.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub updates: Vec<Update>,
    /// The last event all of whose updates are in: where the reader's cursor may move.
    /// `None` when no event was given.
    pub through: Option<i64>,
    /// Every given event fitted (the cap did not cut the run short).
    pub complete: bool,
}

/// Maps `events` (in position order) to updates, stopping before the event whose updates
/// would pass `max` (an event's updates are never split). A transaction's outputs are
/// separate deposits, so `new_transaction` and `verified_tx` are sent once per account and
/// transaction within a page; a transaction whose outputs straddle two pages can be
/// announced twice.
pub fn page(events: &[StoredEvent], max: usize) -> Page {
    let mut updates = Vec::new();
    let mut announced: HashSet<(Option<Uuid>, Value)> = HashSet::new();
    let mut through = None;
    for e in events {
        let account = e.data["account_id"]
            .as_str()
            .and_then(|a| Uuid::parse_str(a).ok());
        let fresh: Vec<Value> = updates_of(&e.kind, e.stream_version, &e.data)
            .into_iter()
            .filter(|u| {
                u["event"] == "new_payment"
                    || u["event"] == "new_block"
                    || announced.insert((account, json!([u["event"], u["tx"]])))
            })
            .collect();
        if updates.len() + fresh.len() > max {
            return Page {
                updates,
                through,
                complete: false,
            };
        }
        updates.extend(fresh.into_iter().map(|body| Update {
            position: e.position,
            account,
            body,
        }));
        through = Some(e.position);
    }
    Page {
        updates,
        through,
        complete: true,
    }
}

/// A websocket message: consecutive updates of one wallet.
#[derive(Debug, PartialEq)]
pub struct Frame {
    pub wallet: Option<String>,
    pub updates: Vec<Value>,
    /// The position of the last event in it: the cursor once it is sent.
    pub through: i64,
}

impl Frame {
    /// The daemon's frame: `{"updates": […], "wallet": xpub or null, "currency": "BTC"}`.
    pub fn to_json(&self) -> Value {
        json!({"updates": self.updates, "wallet": self.wallet, "currency": "BTC"})
    }
}

/// Cuts updates into frames by wallet: `wallet_of` names an account's wallet; global
/// updates go out with no wallet, as the daemon sends `new_block`. An event's updates share
/// its account, so a frame boundary never falls inside one event.
pub fn frames(updates: Vec<Update>, wallet_of: impl Fn(Uuid) -> Option<String>) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    for u in updates {
        let wallet = u.account.and_then(&wallet_of);
        match frames.last_mut() {
            Some(f) if f.wallet == wallet => {
                f.updates.push(u.body);
                f.through = u.position;
            }
            _ => frames.push(Frame {
                wallet,
                updates: vec![u.body],
                through: u.position,
            }),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "5b0c1a4e-0000-4000-8000-000000000001";

    fn deposit(confirmations: u64, credited: bool) -> Value {
        json!({"account_id": ACCOUNT, "address": "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
               "txid": "ab", "vout": 0, "amount": "1.50000000", "amount_sats": 150_000_000,
               "confirmations": confirmations, "block_height": (confirmations > 0).then_some(120),
               "credited": credited})
    }

    fn stored(position: i64, kind: &str, version: i32, data: Value) -> StoredEvent {
        StoredEvent {
            position,
            id: Uuid::nil(),
            kind: kind.to_string(),
            stream: "s".into(),
            stream_version: version,
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            data,
            schema_version: 1,
            metadata: Value::Null,
            prev_hash: Vec::new(),
            hash: Vec::new(),
        }
    }

    fn names(updates: &[Value]) -> Vec<&str> {
        updates
            .iter()
            .map(|u| u["event"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_deposit_seen_in_the_mempool_then_mined_then_credited() {
        let seen = updates_of(events::DEPOSIT_SEEN, 0, &deposit(0, false));
        assert_eq!(names(&seen), ["new_transaction", "new_payment"]);
        assert_eq!(seen[0], json!({"event": "new_transaction", "tx": "ab"}));
        assert_eq!(
            seen[1],
            json!({"event": "new_payment", "address": "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
                   "status": 7, "status_str": "Unconfirmed", "tx_hashes": ["ab"],
                   "sent_amount": "1.50000000"})
        );
        let mined = updates_of(events::DEPOSIT_CONFIRMED, 1, &deposit(1, false));
        assert_eq!(
            mined,
            [json!({"event": "verified_tx", "tx": "ab", "height": 120})]
        );
        assert!(updates_of(events::DEPOSIT_CONFIRMED, 2, &deposit(2, false)).is_empty());
        let credited = updates_of(events::DEPOSIT_CREDITED, 4, &deposit(3, true));
        assert_eq!(
            (
                credited[0]["status"].clone(),
                credited[0]["status_str"].clone()
            ),
            (json!(3), json!("Paid"))
        );
        assert!(updates_of(events::DEPOSIT_FINAL, 9, &deposit(6, true)).is_empty());
    }

    #[test]
    fn a_deposit_first_seen_deep_in_a_block_is_verified_by_the_event_after_seen() {
        assert_eq!(
            names(&updates_of(
                events::DEPOSIT_CONFIRMED,
                1,
                &deposit(5, false)
            )),
            ["verified_tx"]
        );
        // After a reorg the deposit is mined again: verified again at one confirmation.
        assert_eq!(
            names(&updates_of(
                events::DEPOSIT_CONFIRMED,
                7,
                &deposit(1, false)
            )),
            ["verified_tx"]
        );
    }

    #[test]
    fn reversals_and_disappearances_change_the_payment_status() {
        let reversed = updates_of(events::DEPOSIT_CREDIT_REVERSED, 5, &deposit(0, false));
        assert_eq!(reversed[0]["status"], 7);
        for kind in [events::DEPOSIT_DROPPED, events::DEPOSIT_REPLACED] {
            let gone = updates_of(kind, 1, &deposit(0, false));
            assert_eq!(
                (gone[0]["status"].clone(), gone[0]["status_str"].clone()),
                (json!(0), json!("Unpaid"))
            );
        }
        assert!(updates_of(events::DEPOSIT_REORGED, 3, &deposit(0, false)).is_empty());
    }

    #[test]
    fn blocks_and_withdrawals_map_and_other_events_yield_nothing() {
        let block = json!({"height": 130, "hash": "h", "prev_hash": "p", "time": 1});
        assert_eq!(
            updates_of(events::BLOCK_CONNECTED, 29, &block),
            [json!({"event": "new_block", "height": 130})]
        );
        let w =
            json!({"account_id": ACCOUNT, "txid": "cd", "confirmations": 0, "block_height": null});
        assert_eq!(
            updates_of(events::WITHDRAWAL_BROADCAST, 0, &w),
            [json!({"event": "new_transaction", "tx": "cd"})]
        );
        let w1 =
            json!({"account_id": ACCOUNT, "txid": "cd", "confirmations": 1, "block_height": 131});
        assert_eq!(
            names(&updates_of(events::WITHDRAWAL_CONFIRMED, 1, &w1)),
            ["verified_tx"]
        );
        for kind in [
            events::ACCOUNT_CREATED,
            events::ADDRESS_WATCHED,
            events::BLOCK_DISCONNECTED,
        ] {
            assert!(updates_of(kind, 0, &json!({})).is_empty(), "{kind}");
        }
        for kind in SOURCE_TYPES {
            assert!(events::ALL_TYPES.contains(kind));
        }
    }

    #[test]
    fn a_page_announces_a_transaction_once_per_account_and_never_splits_an_event() {
        let mut second_output = deposit(0, false);
        second_output["vout"] = json!(1);
        let evs = [
            stored(10, events::BLOCK_CONNECTED, 3, json!({"height": 120})),
            stored(11, events::DEPOSIT_SEEN, 0, deposit(0, false)),
            stored(12, events::DEPOSIT_SEEN, 0, second_output),
            stored(
                13,
                events::ACCOUNT_CREATED,
                0,
                json!({"account_id": ACCOUNT}),
            ),
        ];
        let p = page(&evs, 100);
        let got: Vec<(i64, &str)> = p
            .updates
            .iter()
            .map(|u| (u.position, u.body["event"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (10, "new_block"),
                (11, "new_transaction"),
                (11, "new_payment"),
                (12, "new_payment")
            ]
        );
        assert_eq!((p.through, p.complete), (Some(13), true));
        assert_eq!(p.updates[0].account, None);
        assert_eq!(
            p.updates[1].account,
            Some(Uuid::parse_str(ACCOUNT).unwrap())
        );

        // A cap of 2 takes the block, not half of the deposit's two updates.
        let capped = page(&evs, 2);
        assert_eq!(
            (capped.updates.len(), capped.through, capped.complete),
            (1, Some(10), false)
        );
        assert_eq!(
            page(&[], 5),
            Page {
                updates: vec![],
                through: None,
                complete: true
            }
        );
    }

    #[test]
    fn frames_group_consecutive_updates_by_wallet() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let u = |position, account| Update {
            position,
            account,
            body: json!({"event": "x"}),
        };
        let wallet_of = |id: Uuid| (id == a).then(|| "tpubA".to_string());
        let got = frames(
            vec![
                u(1, None),
                u(2, Some(a)),
                u(2, Some(a)),
                u(3, Some(b)),
                u(4, None),
            ],
            wallet_of,
        );
        let shape: Vec<(Option<&str>, usize, i64)> = got
            .iter()
            .map(|f| (f.wallet.as_deref(), f.updates.len(), f.through))
            .collect();
        // b has no xpub: its updates go out with no wallet, like the global ones.
        assert_eq!(shape, [(None, 1, 1), (Some("tpubA"), 2, 2), (None, 2, 4)]);
        assert_eq!(
            got[1].to_json(),
            json!({"updates": [{"event": "x"}, {"event": "x"}], "wallet": "tpubA", "currency": "BTC"})
        );
    }
}
