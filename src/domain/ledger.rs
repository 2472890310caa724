//! The ledger's decisions: given the stored state of the deposits an observation touches
//! and what was observed (blocks disconnected, blocks connected, transactions in the
//! mempool), which events follow. Pure and synchronous: the follower loads the state,
//! feeds the observation in, and appends what [`Ledger::into_events`] returns.
//!
//! One observation is one database transaction: a connected block, or a whole reorg
//! (the disconnected blocks and the new branch's first blocks). Confirmations are
//! settled once, at the end of the observation, against the tip it leaves, so a reorg
//! onto a longer branch never flaps the confirmations of deposits below the fork.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::amount::Sats;
use super::events::{self, NewEvent};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepositStatus {
    Mempool,
    Confirming,
    Credited,
    Final,
    Reorged,
    Dropped,
    Replaced,
}

impl DepositStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DepositStatus::Mempool => "mempool",
            DepositStatus::Confirming => "confirming",
            DepositStatus::Credited => "credited",
            DepositStatus::Final => "final",
            DepositStatus::Reorged => "reorged",
            DepositStatus::Dropped => "dropped",
            DepositStatus::Replaced => "replaced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    /// In the mempool, or put back there by a reorg: replaceable, droppable.
    pub fn is_unconfirmed(self) -> bool {
        matches!(self, DepositStatus::Mempool | DepositStatus::Reorged)
    }

    /// Statuses the follower keeps re-evaluating every block.
    pub const OPEN: [&'static str; 4] = ["mempool", "confirming", "credited", "reorged"];
}

/// The state every deposit event carries (DESIGN.md: "Every deposit event carries").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    pub account_id: Uuid,
    pub address: String,
    pub txid: String,
    pub vout: u32,
    pub amount: String,
    pub amount_sats: u64,
    pub confirmations: u32,
    pub block_hash: Option<String>,
    pub block_height: Option<u32>,
    pub credited: bool,
    pub credit_confirmations: u32,
    pub status: DepositStatus,
    /// The outpoints (`txid:vout`) its transaction spends: a transaction spending any of
    /// them instead replaces it.
    #[serde(default)]
    pub inputs: Vec<String>,
}

/// An outgoing transaction of an account (DESIGN.md: withdrawals), tracked like a deposit.
/// `amount` is what leaves the account: its outputs spent minus what comes back to its
/// addresses, so the fee is included; `fee` is shown when every input is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub account_id: Uuid,
    pub txid: String,
    pub amount: String,
    pub amount_sats: u64,
    pub fee: Option<String>,
    pub fee_sats: Option<u64>,
    pub inputs: Vec<String>,
    pub confirmations: u32,
    pub block_hash: Option<String>,
    pub block_height: Option<u32>,
    /// mempool, confirming, final, reorged, dropped or replaced.
    pub status: DepositStatus,
    /// `api` (POST /v1/withdrawals).
    pub source: String,
}

#[derive(Clone, Debug)]
pub struct TrackedWithdrawal {
    pub withdrawal: Withdrawal,
    pub version: i32,
}

/// A deposit as stored, with the last version of its stream (-1: no event yet).
#[derive(Clone, Debug)]
pub struct Tracked {
    pub deposit: Deposit,
    pub version: i32,
}

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
    pub txid: String,
    pub vout: u32,
    pub value: Sats,
    pub watch: Watch,
    /// The outpoints the transaction spends (`txid:vout`).
    pub inputs: Vec<String>,
}

/// A block as the chain stream records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub height: u32,
    pub hash: String,
    pub prev_hash: String,
    pub time: u32,
}

type Key = (String, u32);

pub struct Ledger {
    final_confirmations: u32,
    chain_version: Option<i32>,
    deposits: BTreeMap<Key, Tracked>,
    /// Deposits first observed in this observation's blocks: they get `deposit.seen`.
    fresh: BTreeSet<Key>,
    withdrawals: BTreeMap<String, TrackedWithdrawal>,
    metadata: Value,
    events: Vec<NewEvent>,
}

impl Ledger {
    /// `chain_version` is the chain stream's last version; `loaded` every stored deposit the
    /// observation may touch (the open ones, those in disconnected blocks, those found).
    pub fn new(
        final_confirmations: u32,
        chain_version: Option<i32>,
        loaded: Vec<Tracked>,
        metadata: Value,
    ) -> Self {
        let deposits = loaded
            .into_iter()
            .map(|t| ((t.deposit.txid.clone(), t.deposit.vout), t))
            .collect();
        Ledger {
            final_confirmations,
            chain_version,
            deposits,
            fresh: BTreeSet::new(),
            withdrawals: BTreeMap::new(),
            metadata,
            events: Vec::new(),
        }
    }

    /// The stored withdrawals the observation may touch (open ones, those in disconnected
    /// blocks).
    pub fn with_withdrawals(mut self, loaded: Vec<TrackedWithdrawal>) -> Self {
        self.withdrawals = loaded
            .into_iter()
            .map(|t| (t.withdrawal.txid.clone(), t))
            .collect();
        self
    }

    fn emit_withdrawal(&mut self, txid: &str, kind: &'static str, extra: Option<(&str, Value)>) {
        let t = self
            .withdrawals
            .get_mut(txid)
            .expect("emit for a loaded withdrawal");
        let stream = events::withdrawal_stream(&t.withdrawal.txid);
        let e = state_event(
            &t.withdrawal,
            stream,
            &mut t.version,
            kind,
            extra,
            &self.metadata,
        );
        self.events.push(e);
    }

    /// A withdrawal broadcast through the API: `withdrawal.broadcast`.
    pub fn broadcast(&mut self, w: Withdrawal) {
        let txid = w.txid.clone();
        self.withdrawals.insert(
            txid.clone(),
            TrackedWithdrawal {
                withdrawal: w,
                version: -1,
            },
        );
        self.emit_withdrawal(&txid, events::WITHDRAWAL_BROADCAST, None);
    }

    fn push_chain(&mut self, kind: &'static str, data: Value) {
        self.events.push(NewEvent {
            stream: events::CHAIN_STREAM.to_string(),
            expected_version: self.chain_version,
            kind,
            data,
            metadata: self.metadata.clone(),
        });
        self.chain_version = Some(self.chain_version.map_or(0, |v| v + 1));
    }

    fn emit(&mut self, key: &Key, kind: &'static str, extra: Option<(&str, Value)>) {
        let t = self
            .deposits
            .get_mut(key)
            .expect("emit for a loaded deposit");
        let stream = events::deposit_stream(&t.deposit.txid, t.deposit.vout);
        let e = state_event(
            &t.deposit,
            stream,
            &mut t.version,
            kind,
            extra,
            &self.metadata,
        );
        self.events.push(e);
    }

    /// A stored block left the active chain: `block.disconnected`, then every deposit it
    /// confirmed is `deposit.reorged` (and `deposit.credit_reversed` if it was credited).
    pub fn disconnect_block(&mut self, block: &BlockRef) {
        self.push_chain(
            events::BLOCK_DISCONNECTED,
            json!({"height": block.height, "hash": block.hash}),
        );
        let hit: Vec<Key> = self
            .deposits
            .iter()
            .filter(|(_, t)| t.deposit.block_hash.as_deref() == Some(block.hash.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in hit {
            let t = self.deposits.get_mut(&key).expect("key from the map");
            let d = &mut t.deposit;
            let was_credited = d.credited;
            d.block_hash = None;
            d.block_height = None;
            d.confirmations = 0;
            d.credited = false;
            d.status = DepositStatus::Reorged;
            self.emit(
                &key,
                events::DEPOSIT_REORGED,
                Some(("orphaned_block_hash", Value::String(block.hash.clone()))),
            );
            if was_credited {
                self.emit(&key, events::DEPOSIT_CREDIT_REVERSED, None);
            }
        }
        let hit: Vec<String> = self
            .withdrawals
            .iter()
            .filter(|(_, t)| t.withdrawal.block_hash.as_deref() == Some(block.hash.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        for txid in hit {
            let w = &mut self
                .withdrawals
                .get_mut(&txid)
                .expect("key from the map")
                .withdrawal;
            w.block_hash = None;
            w.block_height = None;
            w.confirmations = 0;
            w.status = DepositStatus::Reorged;
            self.emit_withdrawal(
                &txid,
                events::WITHDRAWAL_REORGED,
                Some(("orphaned_block_hash", Value::String(block.hash.clone()))),
            );
        }
    }

    /// A block joined the active chain with these outputs paying watched scripts.
    /// Confirmation events follow in [`Ledger::settle`].
    pub fn connect_block(&mut self, block: &BlockRef, found: Vec<FoundOutput>) {
        self.push_chain(
            events::BLOCK_CONNECTED,
            json!({"height": block.height, "hash": block.hash, "prev_hash": block.prev_hash, "time": block.time}),
        );
        self.found_in_block(block, found);
    }

    /// Outputs found in a block of the active chain — connected now, or an older one a
    /// rescan reads (no chain event then). Deposits already known there are left alone.
    pub fn found_in_block(&mut self, block: &BlockRef, found: Vec<FoundOutput>) {
        for out in found {
            let key = (out.txid.clone(), out.vout);
            match self.deposits.get_mut(&key) {
                None => {
                    let mut deposit = new_deposit(out, DepositStatus::Confirming);
                    deposit.block_hash = Some(block.hash.clone());
                    deposit.block_height = Some(block.height);
                    self.deposits.insert(
                        key.clone(),
                        Tracked {
                            deposit,
                            version: -1,
                        },
                    );
                    self.fresh.insert(key);
                }
                Some(t) if t.deposit.block_hash.is_none() => {
                    t.deposit.block_hash = Some(block.hash.clone());
                    t.deposit.block_height = Some(block.height);
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
            let key = (out.txid.clone(), out.vout);
            if self.deposits.contains_key(&key) {
                continue;
            }
            let deposit = new_deposit(out, DepositStatus::Mempool);
            self.deposits.insert(
                key.clone(),
                Tracked {
                    deposit,
                    version: -1,
                },
            );
            self.emit(&key, events::DEPOSIT_SEEN, None);
        }
    }

    /// Re-evaluates every tracked deposit in a block against the observation's tip:
    /// `deposit.seen` for fresh ones, `deposit.confirmed` for each changed count, then
    /// `deposit.credited` / `deposit.credit_reversed` at the account's threshold and
    /// `deposit.final` at finality.
    pub fn settle(&mut self, tip_height: u32) {
        let keys: Vec<Key> = self.deposits.keys().cloned().collect();
        for key in keys {
            let fresh = self.fresh.contains(&key);
            let d = &mut self
                .deposits
                .get_mut(&key)
                .expect("key from the map")
                .deposit;
            let Some(height) = d.block_height else {
                continue;
            };
            if d.status == DepositStatus::Final && !fresh {
                continue;
            }
            let confirmations = (tip_height + 1).saturating_sub(height);
            let changed = confirmations != d.confirmations;
            let (threshold, credited) = (d.credit_confirmations, d.credited);
            d.confirmations = confirmations;
            if fresh {
                self.step(&key, events::DEPOSIT_SEEN, |_| {});
            }
            if fresh || changed {
                self.step(&key, events::DEPOSIT_CONFIRMED, |d| {
                    d.status = if d.credited {
                        DepositStatus::Credited
                    } else {
                        DepositStatus::Confirming
                    }
                });
            }
            if confirmations >= threshold && !credited {
                self.step(&key, events::DEPOSIT_CREDITED, |d| {
                    d.credited = true;
                    d.status = DepositStatus::Credited;
                });
            } else if confirmations < threshold && credited {
                self.step(&key, events::DEPOSIT_CREDIT_REVERSED, |d| {
                    d.credited = false;
                    d.status = DepositStatus::Confirming;
                });
            }
            if confirmations >= self.final_confirmations {
                self.step(&key, events::DEPOSIT_FINAL, |d| {
                    d.status = DepositStatus::Final
                });
            }
        }
        self.fresh.clear();
        let txids: Vec<String> = self.withdrawals.keys().cloned().collect();
        for txid in txids {
            let w = &self.withdrawals[&txid].withdrawal;
            let Some(height) = w.block_height else {
                continue;
            };
            if w.status == DepositStatus::Final {
                continue;
            }
            let confirmations = (tip_height + 1).saturating_sub(height);
            if confirmations == w.confirmations && w.status != DepositStatus::Reorged {
                continue;
            }
            self.step_withdrawal(&txid, events::WITHDRAWAL_CONFIRMED, |w| {
                w.confirmations = confirmations;
                w.status = DepositStatus::Confirming;
            });
            if confirmations >= self.final_confirmations {
                self.step_withdrawal(&txid, events::WITHDRAWAL_FINAL, |w| {
                    w.status = DepositStatus::Final
                });
            }
        }
    }

    /// Changes a tracked deposit, then records its new state as a `kind` event.
    fn step(&mut self, key: &Key, kind: &'static str, change: impl FnOnce(&mut Deposit)) {
        change(
            &mut self
                .deposits
                .get_mut(key)
                .expect("a tracked deposit")
                .deposit,
        );
        self.emit(key, kind, None);
    }

    /// [`Ledger::step`] for a tracked withdrawal.
    fn step_withdrawal(
        &mut self,
        txid: &str,
        kind: &'static str,
        change: impl FnOnce(&mut Withdrawal),
    ) {
        change(
            &mut self
                .withdrawals
                .get_mut(txid)
                .expect("a tracked withdrawal")
                .withdrawal,
        );
        self.emit_withdrawal(txid, kind, None);
    }

    /// The outpoints spent by deposits not (or no longer) in a block: a transaction
    /// spending one of them, other than the deposit's own, replaces the deposit.
    pub fn unconfirmed_inputs(&self) -> Vec<String> {
        let deposits = self
            .deposits
            .values()
            .filter(|t| t.deposit.block_hash.is_none() && t.deposit.status.is_unconfirmed())
            .flat_map(|t| t.deposit.inputs.iter().cloned());
        let withdrawals = self
            .withdrawals
            .values()
            .filter(|t| t.withdrawal.block_hash.is_none() && t.withdrawal.status.is_unconfirmed())
            .flat_map(|t| t.withdrawal.inputs.iter().cloned());
        deposits.chain(withdrawals).collect()
    }

    /// Transaction `spender`, in `block`, spends `outpoint`: a withdrawal it is gets the
    /// block (confirmations follow in [`Ledger::settle`]); anything else it replaces.
    pub fn spent_in_block(&mut self, spender: &str, outpoint: &str, block: &BlockRef) {
        if let Some(t) = self.withdrawals.get_mut(spender) {
            if t.withdrawal.block_hash.is_none() {
                t.withdrawal.block_hash = Some(block.hash.clone());
                t.withdrawal.block_height = Some(block.height);
            }
        }
        self.spent(spender, outpoint);
    }

    /// Transaction `spender` (in a block, or in the mempool as a replacement) spends
    /// `outpoint`: every unconfirmed deposit whose transaction spent it is `deposit.replaced`
    /// (after `deposit.reorged` when a reorg put it back first).
    pub fn spent(&mut self, spender: &str, outpoint: &str) {
        let hit: Vec<Key> = self
            .deposits
            .iter()
            .filter(|(_, t)| {
                t.deposit.txid != spender
                    && t.deposit.block_hash.is_none()
                    && t.deposit.status.is_unconfirmed()
                    && t.deposit.inputs.iter().any(|i| i == outpoint)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in hit {
            let t = self.deposits.get_mut(&key).expect("key from the map");
            let was_credited = t.deposit.credited;
            t.deposit.status = DepositStatus::Replaced;
            t.deposit.confirmations = 0;
            t.deposit.credited = false;
            if was_credited {
                self.emit(&key, events::DEPOSIT_CREDIT_REVERSED, None);
            }
            self.emit(
                &key,
                events::DEPOSIT_REPLACED,
                Some(("replaced_by", Value::String(spender.to_string()))),
            );
            self.fresh.remove(&key);
        }
        let hit: Vec<String> = self
            .withdrawals
            .iter()
            .filter(|(txid, t)| {
                txid.as_str() != spender
                    && t.withdrawal.block_hash.is_none()
                    && t.withdrawal.status.is_unconfirmed()
                    && t.withdrawal.inputs.iter().any(|i| i == outpoint)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for txid in hit {
            let w = &mut self
                .withdrawals
                .get_mut(&txid)
                .expect("key from the map")
                .withdrawal;
            w.status = DepositStatus::Replaced;
            w.confirmations = 0;
            self.emit_withdrawal(
                &txid,
                events::WITHDRAWAL_REPLACED,
                Some(("replaced_by", Value::String(spender.to_string()))),
            );
        }
    }

    /// Deposits whose transaction left the mempool unmined (past the grace period):
    /// `deposit.dropped`.
    pub fn dropped(&mut self, keys: &[(String, u32)]) {
        for key in keys {
            let Some(t) = self.deposits.get_mut(key) else {
                continue;
            };
            if t.deposit.block_hash.is_some() || !t.deposit.status.is_unconfirmed() {
                continue;
            }
            t.deposit.status = DepositStatus::Dropped;
            self.emit(key, events::DEPOSIT_DROPPED, None);
        }
    }

    /// Withdrawals whose transaction left the mempool unmined: `withdrawal.dropped`.
    pub fn dropped_withdrawals(&mut self, txids: &[String]) {
        for txid in txids {
            let Some(t) = self.withdrawals.get_mut(txid) else {
                continue;
            };
            if t.withdrawal.block_hash.is_some() || !t.withdrawal.status.is_unconfirmed() {
                continue;
            }
            t.withdrawal.status = DepositStatus::Dropped;
            self.emit_withdrawal(txid, events::WITHDRAWAL_DROPPED, None);
        }
    }

    pub fn into_events(self) -> Vec<NewEvent> {
        self.events
    }
}

/// An event carrying a stream's whole state (plus `extra`), at the version after
/// `version`, which it advances.
fn state_event(
    state: &impl Serialize,
    stream: String,
    version: &mut i32,
    kind: &'static str,
    extra: Option<(&str, Value)>,
    metadata: &Value,
) -> NewEvent {
    let mut data = serde_json::to_value(state).expect("state serialises");
    if let (Some((name, value)), Value::Object(map)) = (extra, &mut data) {
        map.insert(name.to_string(), value);
    }
    let expected_version = (*version >= 0).then_some(*version);
    *version += 1;
    NewEvent {
        stream,
        expected_version,
        kind,
        data,
        metadata: metadata.clone(),
    }
}

fn new_deposit(out: FoundOutput, status: DepositStatus) -> Deposit {
    Deposit {
        account_id: out.watch.account_id,
        address: out.watch.address,
        txid: out.txid,
        vout: out.vout,
        amount: out.value.to_btc_string(),
        amount_sats: out.value.0,
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

    fn watch() -> Watch {
        Watch {
            account_id: Uuid::nil(),
            address: "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn".into(),
            credit_confirmations: 3,
        }
    }

    fn out(txid: &str) -> FoundOutput {
        FoundOutput {
            inputs: vec![format!("{txid}ff:0")],
            txid: txid.into(),
            vout: 0,
            value: Sats(150_000_000),
            watch: watch(),
        }
    }

    fn block(height: u32, tag: &str) -> BlockRef {
        BlockRef {
            height,
            hash: format!("{tag}{height}"),
            prev_hash: format!("{tag}{}", height - 1),
            time: 0,
        }
    }

    /// Runs observations one after another, carrying state as the projections would.
    struct Sim {
        deposits: Vec<Tracked>,
        withdrawals: Vec<TrackedWithdrawal>,
        chain: Option<i32>,
        log: Vec<NewEvent>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                deposits: vec![],
                withdrawals: vec![],
                chain: None,
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
            let mut ledger = Ledger::new(6, self.chain, self.deposits.clone(), Value::Null)
                .with_withdrawals(self.withdrawals.clone());
            f(&mut ledger);
            self.chain = ledger.chain_version;
            self.deposits = ledger.deposits.values().cloned().collect();
            self.withdrawals = ledger.withdrawals.values().cloned().collect();
            let new = ledger.into_events();
            self.log.extend(new.iter().cloned());
            new.iter()
                .filter(|e| !e.stream.starts_with("chain"))
                .map(|e| {
                    (
                        e.kind,
                        e.data["confirmations"].as_u64().unwrap() as u32,
                        e.data["credited"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        }
    }

    #[test]
    fn a_withdrawal_confirms_is_reorged_and_can_be_replaced() {
        let mut sim = Sim::new();
        let w = Withdrawal {
            account_id: Uuid::nil(),
            txid: "ww".into(),
            amount: "1.00000000".into(),
            amount_sats: 100_000_000,
            fee: None,
            fee_sats: None,
            inputs: vec!["dd:0".into()],
            confirmations: 0,
            block_hash: None,
            block_height: None,
            status: DepositStatus::Mempool,
            source: "api".into(),
        };
        assert_eq!(
            sim.observe(|l| l.broadcast(w)),
            vec![("withdrawal.broadcast", 0, false)]
        );
        let b = block(101, "a");
        assert_eq!(
            sim.observe(|l| {
                l.connect_block(&b, vec![]);
                l.spent_in_block("ww", "dd:0", &b);
                l.settle(101)
            }),
            vec![("withdrawal.confirmed", 1, false)]
        );
        assert_eq!(
            sim.observe(|l| l.disconnect_block(&b)),
            vec![("withdrawal.reorged", 0, false)]
        );
        assert_eq!(
            sim.observe(|l| l.spent("xx", "dd:0")),
            vec![("withdrawal.replaced", 0, false)]
        );
        assert_eq!(sim.log.last().unwrap().data["replaced_by"], "xx");
    }

    #[test]
    fn a_conflicting_spend_replaces_only_unconfirmed_deposits_and_drops_are_final() {
        let mut sim = Sim::new();
        sim.observe(|l| l.seen_in_mempool(vec![out("aa"), out("bb")]));
        // The deposit's own transaction spending its input is no conflict.
        assert!(sim.observe(|l| l.spent("aa", "aaff:0")).is_empty());
        assert_eq!(
            sim.observe(|l| l.spent("cc", "aaff:0")),
            vec![("deposit.replaced", 0, false)]
        );
        assert_eq!(sim.log.last().unwrap().data["replaced_by"], "cc");
        assert_eq!(
            sim.observe(|l| l.dropped(&[("bb".into(), 0), ("aa".into(), 0)])),
            vec![("deposit.dropped", 0, false)],
            "a replaced deposit is not dropped as well"
        );
        // Once in a block, a deposit is not replaceable by a mempool spend.
        sim.observe(|l| l.seen_in_mempool(vec![out("dd")]));
        sim.block(101, "a", vec![out("dd")]);
        assert!(sim.observe(|l| l.spent("ee", "ddff:0")).is_empty());
        assert!(sim.observe(|l| l.dropped(&[("dd".into(), 0)])).is_empty());
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
            .filter(|e| e.stream != "chain")
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
        let chain: Vec<&str> = sim
            .log
            .iter()
            .filter(|e| e.stream == "chain")
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            chain,
            ["block.connected"; 3]
                .iter()
                .chain(["block.disconnected"; 3].iter())
                .chain(["block.connected"].iter())
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
}
