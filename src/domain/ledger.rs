//! The ledger's decisions: given the stored state of what an observation touches (the
//! chain stream's version, the tracked deposits and withdrawals) and what was observed
//! (blocks disconnected, blocks connected, transactions in the mempool, a withdrawal
//! broadcast), which events follow. Pure and synchronous: the unit of work loads the
//! state, the caller feeds the observation in, and the unit of work appends what
//! [`Ledger::into_events`] returns.
//!
//! Deposits and withdrawals are one state machine ([`TrackedTx`]): placed in a block,
//! confirmed each block up to finality, reorged out, replaced by a conflicting spend,
//! dropped from the mempool. Only deposits have a credit threshold.
//!
//! One observation is one database transaction: a connected block, or a whole reorg
//! (the disconnected blocks and the new branch's first blocks). Confirmations are
//! settled once, at the end of the observation, against the tip it leaves, so a reorg
//! onto a longer branch never flaps the confirmations of deposits below the fork.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, OutPoint, Txid};
use serde_json::Value;
use uuid::Uuid;

use super::amount::Sats;
use super::events::{BlockConnected, BlockDisconnected, Event, Reorged, Replaced};
use super::stream::{NewEvent, StreamName};
use super::tracked::{Btc, Deposit, Phase, Status, Withdrawal};

/// Whom a watched script belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub account_id: Uuid,
    pub address: String,
    pub credit_confirmations: u32,
}

/// An output paying a watched script.
#[derive(Clone, Debug)]
pub struct FoundOutput {
    pub outpoint: OutPoint,
    pub value: Sats,
    pub watch: Watch,
    /// The outpoints the transaction spends.
    pub inputs: Vec<OutPoint>,
}

/// A block as the chain stream records it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub height: u32,
    pub hash: BlockHash,
    pub prev_hash: BlockHash,
    pub time: u32,
}

/// What an observation starts from, as stored: the chain stream's last version and every
/// tracked transaction the observation may touch.
#[derive(Clone, Debug, Default)]
pub struct LedgerState {
    pub chain_version: Option<i32>,
    pub tracked: Vec<Tracked>,
}

pub struct Ledger {
    final_confirmations: u32,
    chain_version: Option<i32>,
    tracked: BTreeMap<Key, Tracked>,
    /// Deposits first observed in this observation's blocks: they get `deposit.seen`.
    fresh: BTreeSet<Key>,
    metadata: Value,
    events: Vec<NewEvent>,
}

impl Ledger {
    pub fn new(final_confirmations: u32, state: LedgerState, metadata: Value) -> Self {
        let tracked = state.tracked.into_iter().map(|t| (t.tx.key(), t)).collect();
        Ledger {
            final_confirmations,
            chain_version: state.chain_version,
            tracked,
            fresh: BTreeSet::new(),
            metadata,
            events: Vec::new(),
        }
    }

    /// The metadata of the events emitted from now on (a catch-up batch: each block's).
    pub fn set_metadata(&mut self, metadata: Value) {
        self.metadata = metadata;
    }

    /// Events decided so far.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Whether the observation knows this deposit or withdrawal (it was loaded, or
    /// found now).
    pub fn is_tracked(&self, key: &Key) -> bool {
        self.tracked.contains_key(key)
    }

    /// Records `phase` of a tracked transaction as an event at its stream's next version.
    fn emit(&mut self, key: &Key, phase: Phase) {
        let t = self.tracked.get_mut(key).expect("emit for a tracked key");
        let stream = match key {
            Key::Deposit(outpoint) => StreamName::deposit(*outpoint),
            Key::Withdrawal(txid) => StreamName::withdrawal(*txid),
        };
        let expected_version = (t.version >= 0).then_some(t.version);
        t.version += 1;
        self.events.push(NewEvent {
            stream,
            expected_version,
            event: t.tx.event(phase),
            metadata: self.metadata.clone(),
        });
    }

    /// Changes a tracked transaction, then records its new state as `phase`.
    fn step(&mut self, key: &Key, phase: Phase, change: impl FnOnce(&mut TrackedTx)) {
        change(&mut self.tracked.get_mut(key).expect("a tracked key").tx);
        self.emit(key, phase);
    }

    fn track(&mut self, tx: TrackedTx) -> Key {
        let key = tx.key();
        self.tracked.insert(key, Tracked { tx, version: -1 });
        key
    }

    fn push_chain(&mut self, event: Event) {
        self.events.push(NewEvent {
            stream: StreamName::chain(),
            expected_version: self.chain_version,
            event,
            metadata: self.metadata.clone(),
        });
        self.chain_version = Some(self.chain_version.map_or(0, |v| v + 1));
    }

    /// A withdrawal broadcast through the API or observed: `withdrawal.broadcast`, unless
    /// it is tracked already (a repeat).
    pub fn broadcast(&mut self, w: Withdrawal) {
        if self.is_tracked(&Key::Withdrawal(w.txid)) {
            return;
        }
        let key = self.track(TrackedTx::Withdrawal(w));
        self.emit(&key, Phase::Seen);
    }

    /// A stored block left the active chain: `block.disconnected`, then everything it
    /// confirmed is reorged (`*.reorged`, and `deposit.credit_reversed` if credited).
    pub fn disconnect_block(&mut self, block: &BlockRef) {
        self.push_chain(Event::BlockDisconnected(BlockDisconnected {
            height: block.height,
            hash: block.hash,
        }));
        let hit = self.keys(|t| t.tx.block().map(|(hash, _)| hash) == Some(block.hash));
        for key in hit {
            let t = &mut self.tracked.get_mut(&key).expect("key from the map").tx;
            let was_credited = t.is_credited();
            let place = t.place();
            *place.block_hash = None;
            *place.block_height = None;
            *place.confirmations = 0;
            *place.status = Status::Reorged;
            if let Some((credited, _)) = t.credit() {
                *credited = false;
            }
            self.emit(&key, Phase::Reorged(block.hash));
            if was_credited {
                self.emit(&key, Phase::CreditReversed);
            }
        }
    }

    /// A block joined the active chain with these outputs paying watched scripts.
    /// Confirmation events follow in [`Ledger::settle`].
    pub fn connect_block(&mut self, block: &BlockRef, found: Vec<FoundOutput>) {
        self.push_chain(Event::BlockConnected(BlockConnected {
            height: block.height,
            hash: block.hash,
            prev_hash: block.prev_hash,
            time: block.time,
        }));
        self.found_in_block(block, found);
    }

    /// Outputs found in a block of the active chain — connected now, or an older one a
    /// rescan reads (no chain event then). Deposits already placed in a block are left
    /// alone.
    pub fn found_in_block(&mut self, block: &BlockRef, found: Vec<FoundOutput>) {
        for out in found {
            let key = Key::Deposit(out.outpoint);
            match self.tracked.get_mut(&key) {
                None => {
                    let mut deposit = new_deposit(out, Status::Confirming);
                    deposit.block_hash = Some(block.hash);
                    deposit.block_height = Some(block.height);
                    let key = self.track(TrackedTx::Deposit(deposit));
                    self.fresh.insert(key);
                }
                Some(t) if t.tx.block().is_none() => {
                    let place = t.tx.place();
                    *place.block_hash = Some(block.hash);
                    *place.block_height = Some(block.height);
                }
                // Already confirmed by a block still on the active chain.
                Some(_) => {}
            }
        }
    }

    /// Outputs of a mempool transaction paying watched scripts: `deposit.seen` with 0
    /// confirmations for each one not yet known.
    pub fn seen_in_mempool(&mut self, found: Vec<FoundOutput>) {
        for out in found {
            if self.is_tracked(&Key::Deposit(out.outpoint)) {
                continue;
            }
            let key = self.track(TrackedTx::Deposit(new_deposit(out, Status::Mempool)));
            self.emit(&key, Phase::Seen);
        }
    }

    /// Re-evaluates everything tracked in a block against the observation's tip:
    /// `deposit.seen` for fresh deposits, `*.confirmed` for each changed count, a
    /// deposit's `deposit.credited` / `deposit.credit_reversed` at its threshold, and
    /// `*.final` at finality.
    pub fn settle(&mut self, tip_height: u32) {
        let keys: Vec<Key> = self.tracked.keys().copied().collect();
        for key in keys {
            let fresh = self.fresh.contains(&key);
            let t = &mut self.tracked.get_mut(&key).expect("key from the map").tx;
            let Some((_, height)) = t.block() else {
                continue;
            };
            if t.status() == Status::Final && !fresh {
                continue;
            }
            let confirmations = (tip_height + 1).saturating_sub(height);
            let place = t.place();
            let changed = confirmations != *place.confirmations;
            *place.confirmations = confirmations;
            let credit = t
                .credit()
                .map(|(credited, threshold)| (*credited, threshold));
            if fresh {
                self.emit(&key, Phase::Seen);
            }
            if fresh || changed {
                self.step(&key, Phase::Confirmed, |t| {
                    *t.place().status = if t.is_credited() {
                        Status::Credited
                    } else {
                        Status::Confirming
                    }
                });
            }
            match credit {
                Some((false, threshold)) if confirmations >= threshold => {
                    self.step(&key, Phase::Credited, |t| {
                        *t.credit().expect("a deposit").0 = true;
                        *t.place().status = Status::Credited;
                    });
                }
                Some((true, threshold)) if confirmations < threshold => {
                    self.step(&key, Phase::CreditReversed, |t| {
                        *t.credit().expect("a deposit").0 = false;
                        *t.place().status = Status::Confirming;
                    });
                }
                _ => {}
            }
            if confirmations >= self.final_confirmations {
                self.step(&key, Phase::Final, |t| *t.place().status = Status::Final);
            }
        }
        self.fresh.clear();
    }

    /// The outpoints spent by tracked transactions not (or no longer) in a block: a
    /// transaction spending one of them, other than their own, replaces them.
    pub fn unconfirmed_inputs(&self) -> HashSet<OutPoint> {
        self.tracked
            .values()
            .filter(|t| t.tx.block().is_none() && t.tx.status().is_unconfirmed())
            .flat_map(|t| t.tx.inputs().iter().copied())
            .collect()
    }

    /// Transaction `spender`, in `block`, spends `outpoint`: a withdrawal it is gets the
    /// block (confirmations follow in [`Ledger::settle`]); anything else it replaces.
    pub fn spent_in_block(&mut self, spender: Txid, outpoint: OutPoint, block: &BlockRef) {
        if let Some(t) = self.tracked.get_mut(&Key::Withdrawal(spender)) {
            if t.tx.block().is_none() {
                let place = t.tx.place();
                *place.block_hash = Some(block.hash);
                *place.block_height = Some(block.height);
            }
        }
        self.spent(spender, outpoint);
    }

    /// Transaction `spender` (in a block, or in the mempool as a replacement) spends
    /// `outpoint`: whatever unconfirmed transaction of ours spent it too is replaced
    /// (after `*.reorged` when a reorg put it back first).
    pub fn spent(&mut self, spender: Txid, outpoint: OutPoint) {
        let hit = self.keys(|t| {
            t.tx.txid() != spender
                && t.tx.block().is_none()
                && t.tx.status().is_unconfirmed()
                && t.tx.inputs().contains(&outpoint)
        });
        for key in hit {
            let t = &mut self.tracked.get_mut(&key).expect("key from the map").tx;
            let was_credited = t.is_credited();
            let place = t.place();
            *place.status = Status::Replaced;
            *place.confirmations = 0;
            if let Some((credited, _)) = t.credit() {
                *credited = false;
            }
            if was_credited {
                self.emit(&key, Phase::CreditReversed);
            }
            self.emit(&key, Phase::Replaced(spender));
            self.fresh.remove(&key);
        }
    }

    /// Tracked transactions that left the mempool unmined (past the grace period):
    /// `*.dropped`.
    pub fn dropped(&mut self, keys: &[Key]) {
        for key in keys {
            let Some(t) = self.tracked.get_mut(key) else {
                continue;
            };
            if t.tx.block().is_some() || !t.tx.status().is_unconfirmed() {
                continue;
            }
            *t.tx.place().status = Status::Dropped;
            self.emit(key, Phase::Dropped);
        }
    }

    fn keys(&self, pick: impl Fn(&Tracked) -> bool) -> Vec<Key> {
        self.tracked
            .iter()
            .filter(|(_, t)| pick(t))
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn into_events(self) -> Vec<NewEvent> {
        self.events
    }
}

/// A transaction the ledger tracks: a deposit or a withdrawal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackedTx {
    Deposit(Deposit),
    Withdrawal(Withdrawal),
}

impl TrackedTx {
    pub fn key(&self) -> Key {
        match self {
            TrackedTx::Deposit(d) => Key::Deposit(d.outpoint()),
            TrackedTx::Withdrawal(w) => Key::Withdrawal(w.txid),
        }
    }

    pub fn txid(&self) -> Txid {
        match self {
            TrackedTx::Deposit(d) => d.txid,
            TrackedTx::Withdrawal(w) => w.txid,
        }
    }

    /// Its place on the chain, to read and change.
    pub fn place(&mut self) -> Place<'_> {
        match self {
            TrackedTx::Deposit(d) => Place {
                confirmations: &mut d.confirmations,
                block_hash: &mut d.block_hash,
                block_height: &mut d.block_height,
                status: &mut d.status,
            },
            TrackedTx::Withdrawal(w) => Place {
                confirmations: &mut w.confirmations,
                block_hash: &mut w.block_hash,
                block_height: &mut w.block_height,
                status: &mut w.status,
            },
        }
    }

    pub fn status(&self) -> Status {
        match self {
            TrackedTx::Deposit(d) => d.status,
            TrackedTx::Withdrawal(w) => w.status,
        }
    }

    pub fn block(&self) -> Option<(BlockHash, u32)> {
        match self {
            TrackedTx::Deposit(d) => d.block_hash.zip(d.block_height),
            TrackedTx::Withdrawal(w) => w.block_hash.zip(w.block_height),
        }
    }

    pub fn inputs(&self) -> &[OutPoint] {
        match self {
            TrackedTx::Deposit(d) => &d.inputs,
            TrackedTx::Withdrawal(w) => &w.inputs,
        }
    }

    /// A deposit's credit: whether credited, and at how many confirmations. Withdrawals
    /// have none.
    pub fn credit(&mut self) -> Option<(&mut bool, u32)> {
        match self {
            TrackedTx::Deposit(d) => Some((&mut d.credited, d.credit_confirmations)),
            TrackedTx::Withdrawal(_) => None,
        }
    }

    pub fn is_credited(&self) -> bool {
        matches!(self, TrackedTx::Deposit(d) if d.credited)
    }

    /// The event recording `phase`, carrying the state as it is now.
    pub fn event(&self, phase: Phase) -> Event {
        match (self, phase) {
            (TrackedTx::Deposit(d), phase) => {
                let d = d.clone();
                match phase {
                    Phase::Seen => Event::DepositSeen(d),
                    Phase::Confirmed => Event::DepositConfirmed(d),
                    Phase::Credited => Event::DepositCredited(d),
                    Phase::CreditReversed => Event::DepositCreditReversed(d),
                    Phase::Final => Event::DepositFinal(d),
                    Phase::Reorged(orphaned_block_hash) => Event::DepositReorged(Reorged {
                        state: d,
                        orphaned_block_hash,
                    }),
                    Phase::Dropped => Event::DepositDropped(d),
                    Phase::Replaced(replaced_by) => Event::DepositReplaced(Replaced {
                        state: d,
                        replaced_by,
                    }),
                }
            }
            (TrackedTx::Withdrawal(w), phase) => {
                let w = w.clone();
                match phase {
                    Phase::Seen => Event::WithdrawalBroadcast(w),
                    Phase::Confirmed => Event::WithdrawalConfirmed(w),
                    Phase::Credited | Phase::CreditReversed => {
                        unreachable!("withdrawals have no credit threshold")
                    }
                    Phase::Final => Event::WithdrawalFinal(w),
                    Phase::Reorged(orphaned_block_hash) => Event::WithdrawalReorged(Reorged {
                        state: w,
                        orphaned_block_hash,
                    }),
                    Phase::Dropped => Event::WithdrawalDropped(w),
                    Phase::Replaced(replaced_by) => Event::WithdrawalReplaced(Replaced {
                        state: w,
                        replaced_by,
                    }),
                }
            }
        }
    }
}

/// The chain-facing fields of a tracked transaction, borrowed to change together.
pub struct Place<'a> {
    pub confirmations: &'a mut u32,
    pub block_hash: &'a mut Option<BlockHash>,
    pub block_height: &'a mut Option<u32>,
    pub status: &'a mut Status,
}

/// A tracked transaction as stored, with the last version of its stream (-1: none yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub tx: TrackedTx,
    pub version: i32,
}

/// Which tracked transaction: deposits come before withdrawals, each in the order their
/// txids are written (as hex), so an observation's events come out in a stable order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Deposit(OutPoint),
    Withdrawal(Txid),
}

impl Key {
    fn order(&self) -> (u8, [u8; 32], u32) {
        // A txid is written as its bytes reversed, in hex: comparing the reversed bytes
        // compares the hex strings.
        let written = |t: &Txid| {
            let mut b = t.to_byte_array();
            b.reverse();
            b
        };
        match self {
            Key::Deposit(o) => (0, written(&o.txid), o.vout),
            Key::Withdrawal(t) => (1, written(t), 0),
        }
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order().cmp(&other.order())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn new_deposit(out: FoundOutput, status: Status) -> Deposit {
    Deposit {
        account_id: out.watch.account_id,
        address: out.watch.address,
        txid: out.outpoint.txid,
        vout: out.outpoint.vout,
        amount: Btc(out.value),
        amount_sats: out.value,
        confirmations: 0,
        block_hash: None,
        block_height: None,
        credited: false,
        credit_confirmations: out.watch.credit_confirmations,
        status,
        inputs: out.inputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::EventType;
    use crate::domain::tracked::Source;

    fn watch() -> Watch {
        Watch {
            account_id: Uuid::nil(),
            address: "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into(),
            credit_confirmations: 3,
        }
    }

    /// A txid from a short tag, as readable as the tag.
    fn txid(tag: &str) -> Txid {
        let mut b = [0u8; 32];
        b[..tag.len()].copy_from_slice(tag.as_bytes());
        Txid::from_byte_array(b)
    }

    fn op(tag: &str, vout: u32) -> OutPoint {
        OutPoint::new(txid(tag), vout)
    }

    fn out(tag: &str) -> FoundOutput {
        FoundOutput {
            inputs: vec![op(&format!("{tag}ff"), 0)],
            outpoint: op(tag, 0),
            value: Sats(150_000_000),
            watch: watch(),
        }
    }

    fn hash(tag: &str, height: u32) -> BlockHash {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&height.to_le_bytes());
        b[4..4 + tag.len()].copy_from_slice(tag.as_bytes());
        BlockHash::from_byte_array(b)
    }

    fn block(height: u32, tag: &str) -> BlockRef {
        BlockRef {
            height,
            hash: hash(tag, height),
            prev_hash: hash(tag, height - 1),
            time: 0,
        }
    }

    /// Runs observations one after another, carrying state as the projections would.
    struct Sim {
        state: LedgerState,
        log: Vec<NewEvent>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                state: LedgerState::default(),
                log: vec![],
            }
        }
        /// One block on branch `tag` paying `found`, settled at its height.
        fn block(
            &mut self,
            height: u32,
            tag: &str,
            found: Vec<FoundOutput>,
        ) -> Vec<(&'static str, u32, bool)> {
            self.observe(|l| {
                l.connect_block(&block(height, tag), found);
                l.settle(height)
            })
        }
        fn observe(&mut self, f: impl FnOnce(&mut Ledger)) -> Vec<(&'static str, u32, bool)> {
            let mut ledger = Ledger::new(6, self.state.clone(), Value::Null);
            f(&mut ledger);
            self.state = LedgerState {
                chain_version: ledger.chain_version,
                tracked: ledger.tracked.values().cloned().collect(),
            };
            let new = ledger.into_events();
            self.log.extend(new.iter().cloned());
            new.iter()
                .filter(|e| e.stream != StreamName::chain())
                .map(|e| {
                    let (confirmations, credited) = match (e.event.deposit(), e.event.withdrawal())
                    {
                        (Some(d), _) => (d.confirmations, d.credited),
                        (_, Some(w)) => (w.confirmations, false),
                        _ => unreachable!("only tracked transactions"),
                    };
                    (e.event.kind().as_str(), confirmations, credited)
                })
                .collect()
        }
    }

    #[test]
    fn a_withdrawal_confirms_is_reorged_and_can_be_replaced() {
        let mut sim = Sim::new();
        let w = Withdrawal {
            account_id: Uuid::nil(),
            txid: txid("ww"),
            amount: Btc(Sats(100_000_000)),
            amount_sats: Sats(100_000_000),
            fee: None,
            fee_sats: None,
            inputs: vec![op("dd", 0)],
            confirmations: 0,
            block_hash: None,
            block_height: None,
            status: Status::Mempool,
            source: Source::Api,
        };
        assert_eq!(
            sim.observe(|l| l.broadcast(w.clone())),
            vec![("withdrawal.broadcast", 0, false)]
        );
        assert!(
            sim.observe(|l| l.broadcast(w)).is_empty(),
            "a repeat is recognised by its txid"
        );
        let b = block(101, "a");
        assert_eq!(
            sim.observe(|l| {
                l.connect_block(&b, vec![]);
                l.spent_in_block(txid("ww"), op("dd", 0), &b);
                l.settle(101)
            }),
            vec![("withdrawal.confirmed", 1, false)]
        );
        assert_eq!(
            sim.observe(|l| l.disconnect_block(&b)),
            vec![("withdrawal.reorged", 0, false)]
        );
        assert_eq!(
            sim.observe(|l| l.spent(txid("xx"), op("dd", 0))),
            vec![("withdrawal.replaced", 0, false)]
        );
        match &sim.log.last().unwrap().event {
            Event::WithdrawalReplaced(r) => assert_eq!(r.replaced_by, txid("xx")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_conflicting_spend_replaces_only_unconfirmed_deposits_and_drops_are_final() {
        let mut sim = Sim::new();
        sim.observe(|l| l.seen_in_mempool(vec![out("aa"), out("bb")]));
        // The deposit's own transaction spending its input is no conflict.
        assert!(sim
            .observe(|l| l.spent(txid("aa"), op("aaff", 0)))
            .is_empty());
        assert_eq!(
            sim.observe(|l| l.spent(txid("cc"), op("aaff", 0))),
            vec![("deposit.replaced", 0, false)]
        );
        match &sim.log.last().unwrap().event {
            Event::DepositReplaced(r) => assert_eq!(r.replaced_by, txid("cc")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            sim.observe(|l| l.dropped(&[Key::Deposit(op("bb", 0)), Key::Deposit(op("aa", 0))])),
            vec![("deposit.dropped", 0, false)],
            "a replaced deposit is not dropped as well"
        );
        // Once in a block, a deposit is not replaceable by a mempool spend.
        sim.observe(|l| l.seen_in_mempool(vec![out("dd")]));
        sim.block(101, "a", vec![out("dd")]);
        assert!(sim
            .observe(|l| l.spent(txid("ee"), op("ddff", 0)))
            .is_empty());
        assert!(sim
            .observe(|l| l.dropped(&[Key::Deposit(op("dd", 0))]))
            .is_empty());
    }

    #[test]
    fn a_deposit_life_emits_one_event_per_confirmation_change() {
        let mut sim = Sim::new();
        assert_eq!(
            sim.observe(|l| l.seen_in_mempool(vec![out("aa")])),
            vec![("deposit.seen", 0, false)]
        );
        assert_eq!(
            sim.block(101, "a", vec![out("aa")]),
            vec![("deposit.confirmed", 1, false)]
        );
        assert_eq!(
            sim.block(102, "a", vec![]),
            vec![("deposit.confirmed", 2, false)]
        );
        assert_eq!(
            sim.block(103, "a", vec![]),
            vec![
                ("deposit.confirmed", 3, false),
                ("deposit.credited", 3, true)
            ]
        );
        assert_eq!(
            sim.block(104, "a", vec![]),
            vec![("deposit.confirmed", 4, true)]
        );
        assert_eq!(
            sim.block(105, "a", vec![]),
            vec![("deposit.confirmed", 5, true)]
        );
        assert_eq!(
            sim.block(106, "a", vec![]),
            vec![("deposit.confirmed", 6, true), ("deposit.final", 6, true)]
        );
        assert_eq!(sim.block(107, "a", vec![]), vec![]);
        let versions: Vec<i32> = sim
            .log
            .iter()
            .filter(|e| e.stream != StreamName::chain())
            .map(|e| e.stream_version())
            .collect();
        assert_eq!(versions, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn a_deposit_first_seen_in_a_block_gets_seen_then_confirmed() {
        let mut sim = Sim::new();
        let ev = sim.block(5, "a", vec![out("bb")]);
        assert_eq!(
            ev,
            vec![("deposit.seen", 1, false), ("deposit.confirmed", 1, false)]
        );
    }

    #[test]
    fn a_reorg_of_a_credited_deposit_is_compensated_and_it_reconfirms() {
        let mut sim = Sim::new();
        sim.block(10, "a", vec![out("cc")]);
        for h in 11..=12 {
            sim.block(h, "a", vec![]);
        }
        // invalidateblock at depth 3: the node's tip goes back to 9.
        let ev = sim.observe(|l| {
            for h in (10..=12).rev() {
                l.disconnect_block(&block(h, "a"));
            }
            l.settle(9)
        });
        assert_eq!(
            ev,
            vec![
                ("deposit.reorged", 0, false),
                ("deposit.credit_reversed", 0, false)
            ]
        );
        // A new branch includes the transaction again.
        let ev = sim.block(10, "b", vec![out("cc")]);
        assert_eq!(ev, vec![("deposit.confirmed", 1, false)]);
        let chain: Vec<EventType> = sim
            .log
            .iter()
            .filter(|e| e.stream == StreamName::chain())
            .map(|e| e.event.kind())
            .collect();
        assert_eq!(
            chain,
            [EventType::BlockConnected; 3]
                .iter()
                .chain([EventType::BlockDisconnected; 3].iter())
                .chain([EventType::BlockConnected].iter())
                .copied()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_reorg_onto_a_longer_branch_does_not_flap_deposits_below_the_fork() {
        let mut sim = Sim::new();
        sim.block(10, "a", vec![out("dd")]);
        for h in 11..=12 {
            sim.block(h, "a", vec![]);
        }
        // Tip 12 replaced by 12', 13': one observation.
        let ev = sim.observe(|l| {
            l.disconnect_block(&block(12, "a"));
            l.connect_block(&block(12, "b"), vec![]);
            l.connect_block(&block(13, "b"), vec![]);
            l.settle(13)
        });
        assert_eq!(ev, vec![("deposit.confirmed", 4, true)]);
    }

    #[test]
    fn a_shorter_chain_lowers_confirmations_and_reverses_credit() {
        let mut sim = Sim::new();
        sim.block(10, "a", vec![out("ee")]);
        for h in 11..=12 {
            sim.block(h, "a", vec![]);
        }
        let ev = sim.observe(|l| {
            l.disconnect_block(&block(12, "a"));
            l.settle(11)
        });
        assert_eq!(
            ev,
            vec![
                ("deposit.confirmed", 2, true),
                ("deposit.credit_reversed", 2, false)
            ]
        );
    }
    #[test]
    fn keys_order_deposits_first_then_by_written_txid() {
        let mut low = [0u8; 32];
        low[31] = 1; // written as 01000…: small in hex order
        let mut high = [0u8; 32];
        high[0] = 0xff; // written as …ff
        let (low, high) = (Txid::from_byte_array(low), Txid::from_byte_array(high));
        assert!(low.to_string() > high.to_string());
        assert!(Key::Deposit(OutPoint::new(high, 0)) < Key::Deposit(OutPoint::new(low, 0)));
        assert!(Key::Deposit(OutPoint::new(low, 9)) < Key::Withdrawal(high));
    }
}
