//! Events → row changes: pure, no IO. Whether events arrive one observation at a time
//! (live) or thousands at once (a rebuild), the rows come out the same; later events of
//! a stream override earlier ones.

use std::collections::{BTreeMap, BTreeSet};

use bitcoin::{OutPoint, Txid};
use uuid::Uuid;

use crate::domain::events::{
    AccountCreated, AccountEvent, AddressWatched, BlockConnected, Subject,
};
use crate::domain::stream::{EventAt, Position};
use crate::domain::tracked::{Deposit, Withdrawal};

#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub accounts: Vec<(AccountCreated, Position)>,
    pub account_versions: BTreeMap<Uuid, i32>,
    /// Derived accounts: (indexes watched below, indexes handed out below), the maxima.
    pub account_progress: BTreeMap<Uuid, (u32, u32)>,
    pub addresses: Vec<(AddressWatched, Position)>,
    /// Height → the block now there, or `None` when it was disconnected.
    pub blocks: BTreeMap<u32, Option<BlockConnected>>,
    /// (first connected height in this batch, last chain stream version)
    pub chain: Option<(u32, i32)>,
    pub deposits: BTreeMap<OutPoint, Row<Deposit>>,
    pub withdrawals: BTreeMap<Txid, Row<Withdrawal>>,
    pub touched_accounts: BTreeSet<Uuid>,
}

/// The latest state of a tracked transaction's stream in this batch.
#[derive(Debug, PartialEq)]
pub struct Row<T> {
    pub state: T,
    pub stream_version: i32,
    /// This batch's first event of the stream: the row's `first_position` if it is new.
    pub first_position: Position,
    pub position: Position,
}

/// What a batch of events changes.
pub fn fold<'a>(events: impl IntoIterator<Item = EventAt<'a>>) -> Changes {
    let mut c = Changes::default();
    for EventAt {
        position,
        stream_version,
        event,
    } in events
    {
        match event.subject() {
            Subject::Account(AccountEvent::Created(a)) => {
                c.touched_accounts.insert(a.account_id);
                c.account_versions.insert(a.account_id, stream_version);
                c.accounts.push((a.clone(), position));
            }
            Subject::Account(AccountEvent::Watched(a)) => {
                c.account_versions.insert(a.account_id, stream_version);
                if let Some(i) = a.index {
                    let p = c.account_progress.entry(a.account_id).or_default();
                    p.0 = p.0.max(i + 1);
                }
                c.addresses.push((a.clone(), position));
            }
            Subject::Account(AccountEvent::HandedOut(a)) => {
                c.account_versions.insert(a.account_id, stream_version);
                let p = c.account_progress.entry(a.account_id).or_default();
                p.1 = p.1.max(a.index + 1);
            }
            Subject::Block(b) => {
                let start = c.chain.map_or(b.height, |(s, _)| s.min(b.height));
                c.chain = Some((start, stream_version));
                c.blocks.insert(b.height, Some(b.clone()));
            }
            Subject::BlockDisconnected(b) => {
                let start = c.chain.map_or(b.height, |(s, _)| s);
                c.chain = Some((start, stream_version));
                c.blocks.insert(b.height, None);
            }
            Subject::Deposit(d, _) => {
                c.touched_accounts.insert(d.account_id);
                upsert(&mut c.deposits, d.outpoint(), d, stream_version, position);
            }
            Subject::Withdrawal(w, _) => {
                c.touched_accounts.insert(w.account_id);
                upsert(&mut c.withdrawals, w.txid, w, stream_version, position);
            }
            // About deliveries, not the ledger: the delivery journal is their projection.
            Subject::Subscriber(_) => {}
        }
    }
    c
}

fn upsert<K: Ord, T: Clone>(
    rows: &mut BTreeMap<K, Row<T>>,
    key: K,
    state: &T,
    stream_version: i32,
    position: Position,
) {
    let first_position = rows.get(&key).map_or(position, |r| r.first_position);
    rows.insert(
        key,
        Row {
            state: state.clone(),
            stream_version,
            first_position,
            position,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::Event;
    use crate::domain::tracked::examples;
    use bitcoin::hashes::Hash;

    fn deposit(confirmations: u32) -> Deposit {
        Deposit {
            vout: 1,
            ..examples::deposit(5, confirmations)
        }
    }

    #[test]
    fn one_batch_or_one_event_at_a_time_gives_the_same_rows() {
        let events = [
            Event::DepositSeen(deposit(0)),
            Event::DepositConfirmed(deposit(1)),
            Event::DepositConfirmed(deposit(2)),
        ];
        let folded = |from: usize, to: usize| {
            fold((from..to).map(|i| EventAt {
                position: Position(10 + i as i64),
                stream_version: i as i32,
                event: &events[i],
            }))
        };
        let all = folded(0, 3);
        let row = &all.deposits[&OutPoint::new(Txid::all_zeros(), 1)];
        assert_eq!(
            (row.first_position, row.position, row.stream_version),
            (Position(10), Position(12), 2)
        );
        assert_eq!(row.state.confirmations, 2);
        let last = folded(2, 3);
        assert_eq!(
            last.deposits.values().next().unwrap().position,
            Position(12)
        );
    }
}
