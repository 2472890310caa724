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

use crate::domain::events::{Event, EventType, Subject};
use crate::domain::stream::{EventAt, Position};
use crate::domain::tracked::{Deposit, Phase};

/// The log's event types that yield updates: what the endpoint reads.
pub const SOURCE_TYPES: &[EventType] = &[
    EventType::BlockConnected,
    EventType::DepositSeen,
    EventType::DepositConfirmed,
    EventType::DepositCredited,
    EventType::DepositCreditReversed,
    EventType::DepositDropped,
    EventType::DepositReplaced,
    EventType::WithdrawalBroadcast,
    EventType::WithdrawalConfirmed,
];

/// Electrum's payment request statuses (`electrum.invoices`), as the daemon reports them.
const UNPAID: (u8, &str) = (0, "Unpaid");
const PAID: (u8, &str) = (3, "Paid");
const UNCONFIRMED: (u8, &str) = (7, "Unconfirmed");

fn payment(d: &Deposit, (status, status_str): (u8, &str)) -> Value {
    json!({
        "event": "new_payment",
        "address": d.address,
        "status": status,
        "status_str": status_str,
        "tx_hashes": [d.txid],
        "sent_amount": d.amount,
    })
}

fn verified(txid: bitcoin::Txid, height: Option<u32>) -> Value {
    json!({"event": "verified_tx", "tx": txid, "height": height})
}

/// Whether a confirmation event is a transaction's first: one confirmation (mined after
/// it was seen, also again after a reorg), or the event right after `seen` (first seen
/// deeper in a block).
fn first_confirmation(confirmations: u32, stream_version: i32) -> bool {
    confirmations == 1 || stream_version == 1
}

/// The updates one event yields, in order (none for most).
pub fn updates_of(event: &Event, stream_version: i32) -> Vec<Value> {
    use Phase::{Confirmed, CreditReversed, Credited, Dropped, Final, Reorged, Replaced, Seen};
    match event.subject() {
        Subject::Block(b) => vec![json!({"event": "new_block", "height": b.height})],
        Subject::Deposit(d, Seen) => vec![
            json!({"event": "new_transaction", "tx": d.txid}),
            payment(d, UNCONFIRMED),
        ],
        Subject::Withdrawal(w, Seen) => vec![json!({"event": "new_transaction", "tx": w.txid})],
        Subject::Deposit(d, Confirmed) if first_confirmation(d.confirmations, stream_version) => {
            vec![verified(d.txid, d.block_height)]
        }
        Subject::Withdrawal(w, Confirmed)
            if first_confirmation(w.confirmations, stream_version) =>
        {
            vec![verified(w.txid, w.block_height)]
        }
        Subject::Deposit(d, Credited) => vec![payment(d, PAID)],
        Subject::Deposit(d, CreditReversed) => vec![payment(d, UNCONFIRMED)],
        Subject::Deposit(d, Dropped | Replaced(_)) => vec![payment(d, UNPAID)],
        Subject::Deposit(_, Confirmed | Final | Reorged(_))
        | Subject::Withdrawal(_, Confirmed | Credited | CreditReversed | Final)
        | Subject::Withdrawal(_, Reorged(_) | Dropped | Replaced(_))
        | Subject::Account(_)
        | Subject::BlockDisconnected(_)
        | Subject::Subscriber(_) => Vec::new(),
    }
}

/// An update and where it came from: the event's position and account (None: global).
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub position: Position,
    pub account: Option<Uuid>,
    pub body: Value,
}

/// The updates of a run of events, at most `max` of them.
#[derive(Debug, PartialEq)]
pub struct Page {
    pub updates: Vec<Update>,
    /// The last event all of whose updates are in: where the reader's cursor may move.
    /// `None` when no event was given.
    pub through: Option<Position>,
    /// Every given event fitted (the cap did not cut the run short).
    pub complete: bool,
}

/// Maps `events` (in position order) to updates, stopping before the event whose updates
/// would pass `max` (an event's updates are never split). A transaction's outputs are
/// separate deposits, so `new_transaction` and `verified_tx` are sent once per account and
/// transaction within a page; a transaction whose outputs straddle two pages can be
/// announced twice.
pub fn page(events: &[EventAt<'_>], max: usize) -> Page {
    let mut updates = Vec::new();
    let mut announced: HashSet<(Option<Uuid>, Value)> = HashSet::new();
    let mut through = None;
    for e in events {
        let account = e.event.account();
        let fresh: Vec<Value> = updates_of(e.event, e.stream_version)
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
    pub through: Position,
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
    use crate::domain::events::{AccountCreated, BlockConnected, BlockDisconnected, Replaced};
    use crate::domain::tracked::{examples, Withdrawal};
    use bitcoin::hashes::Hash;
    use bitcoin::{BlockHash, Txid};

    const ACCOUNT: &str = "5b0c1a4e-0000-4000-8000-000000000001";

    fn txid(b: u8) -> Txid {
        Txid::from_byte_array([b; 32])
    }

    fn deposit(confirmations: u32, credited: bool) -> Deposit {
        Deposit {
            account_id: ACCOUNT.parse().unwrap(),
            address: "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into(),
            txid: txid(0xab),
            block_height: (confirmations > 0).then_some(120),
            credited,
            ..examples::deposit(150_000_000, confirmations)
        }
    }

    fn withdrawal(confirmations: u32) -> Withdrawal {
        Withdrawal {
            account_id: ACCOUNT.parse().unwrap(),
            txid: txid(0xcd),
            block_height: (confirmations > 0).then_some(131),
            ..examples::withdrawal(1, confirmations)
        }
    }

    fn created() -> Event {
        Event::AccountCreated(AccountCreated {
            account_id: ACCOUNT.parse().unwrap(),
            label: "a".into(),
            credit_confirmations: 3,
            descriptor: None,
            lookahead: None,
        })
    }

    fn block(height: u32) -> Event {
        Event::BlockConnected(BlockConnected {
            height,
            hash: BlockHash::all_zeros(),
            prev_hash: BlockHash::all_zeros(),
            time: 1,
        })
    }

    fn names(updates: &[Value]) -> Vec<&str> {
        updates
            .iter()
            .map(|u| u["event"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_deposit_seen_in_the_mempool_then_mined_then_credited() {
        let tx = "ab".repeat(32);
        let seen = updates_of(&Event::DepositSeen(deposit(0, false)), 0);
        assert_eq!(names(&seen), ["new_transaction", "new_payment"]);
        assert_eq!(seen[0], json!({"event": "new_transaction", "tx": tx}));
        assert_eq!(
            seen[1],
            json!({"event": "new_payment", "address": "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
                   "status": 7, "status_str": "Unconfirmed", "tx_hashes": [tx],
                   "sent_amount": "1.50000000"})
        );
        let mined = updates_of(&Event::DepositConfirmed(deposit(1, false)), 1);
        assert_eq!(
            mined,
            [json!({"event": "verified_tx", "tx": tx, "height": 120})]
        );
        assert!(updates_of(&Event::DepositConfirmed(deposit(2, false)), 2).is_empty());
        let credited = updates_of(&Event::DepositCredited(deposit(3, true)), 4);
        assert_eq!(
            (
                credited[0]["status"].clone(),
                credited[0]["status_str"].clone()
            ),
            (json!(3), json!("Paid"))
        );
        assert!(updates_of(&Event::DepositFinal(deposit(6, true)), 9).is_empty());
    }

    #[test]
    fn a_deposit_first_seen_deep_in_a_block_is_verified_by_the_event_after_seen() {
        assert_eq!(
            names(&updates_of(&Event::DepositConfirmed(deposit(5, false)), 1)),
            ["verified_tx"]
        );
        // After a reorg the deposit is mined again: verified again at one confirmation.
        assert_eq!(
            names(&updates_of(&Event::DepositConfirmed(deposit(1, false)), 7)),
            ["verified_tx"]
        );
    }

    #[test]
    fn reversals_and_disappearances_change_the_payment_status() {
        let reversed = updates_of(&Event::DepositCreditReversed(deposit(0, false)), 5);
        assert_eq!(reversed[0]["status"], 7);
        let replaced = Event::DepositReplaced(Replaced {
            state: deposit(0, false),
            replaced_by: txid(9),
        });
        for gone in [Event::DepositDropped(deposit(0, false)), replaced] {
            let gone = updates_of(&gone, 1);
            assert_eq!(
                (gone[0]["status"].clone(), gone[0]["status_str"].clone()),
                (json!(0), json!("Unpaid"))
            );
        }
        let reorged = Event::DepositReorged(crate::domain::events::Reorged {
            state: deposit(0, false),
            orphaned_block_hash: BlockHash::all_zeros(),
        });
        assert!(updates_of(&reorged, 3).is_empty());
    }

    #[test]
    fn blocks_and_withdrawals_map_and_other_events_yield_nothing() {
        assert_eq!(
            updates_of(&block(130), 29),
            [json!({"event": "new_block", "height": 130})]
        );
        let tx = "cd".repeat(32);
        assert_eq!(
            updates_of(&Event::WithdrawalBroadcast(withdrawal(0)), 0),
            [json!({"event": "new_transaction", "tx": tx})]
        );
        assert_eq!(
            names(&updates_of(&Event::WithdrawalConfirmed(withdrawal(1)), 1)),
            ["verified_tx"]
        );
        let created = created();
        let disconnected = Event::BlockDisconnected(BlockDisconnected {
            height: 1,
            hash: BlockHash::all_zeros(),
        });
        for e in [created, disconnected] {
            assert!(updates_of(&e, 0).is_empty(), "{e:?}");
        }
    }

    #[test]
    fn a_page_announces_a_transaction_once_per_account_and_never_splits_an_event() {
        let mut second_output = deposit(0, false);
        second_output.vout = 1;
        let created = created();
        let events = [
            (10, 3, block(120)),
            (11, 0, Event::DepositSeen(deposit(0, false))),
            (12, 0, Event::DepositSeen(second_output)),
            (13, 0, created),
        ];
        let evs: Vec<EventAt<'_>> = events
            .iter()
            .map(|(p, v, e)| EventAt {
                position: Position(*p),
                stream_version: *v,
                event: e,
            })
            .collect();
        let p = page(&evs, 100);
        let got: Vec<(i64, &str)> = p
            .updates
            .iter()
            .map(|u| (u.position.0, u.body["event"].as_str().unwrap()))
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
        assert_eq!((p.through, p.complete), (Some(Position(13)), true));
        assert_eq!(p.updates[0].account, None);
        assert_eq!(
            p.updates[1].account,
            Some(Uuid::parse_str(ACCOUNT).unwrap())
        );

        // A cap of 2 takes the block, not half of the deposit's two updates.
        let capped = page(&evs, 2);
        assert_eq!(
            (capped.updates.len(), capped.through, capped.complete),
            (1, Some(Position(10)), false)
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
            position: Position(position),
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
            .map(|f| (f.wallet.as_deref(), f.updates.len(), f.through.0))
            .collect();
        // b has no xpub: its updates go out with no wallet, like the global ones.
        assert_eq!(shape, [(None, 1, 1), (Some("tpubA"), 2, 2), (None, 2, 4)]);
        assert_eq!(
            got[1].to_json(),
            json!({"updates": [{"event": "x"}, {"event": "x"}], "wallet": "tpubA", "currency": "BTC"})
        );
    }
}
