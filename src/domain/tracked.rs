//! What the ledger follows through the chain: deposits (an output paying a watched script)
//! and withdrawals (a transaction spending deposits). Both are a transaction with a place
//! on the chain — unmined, in a block at some height, reorged out, replaced, dropped,
//! final — which the ledger's one state machine moves ([`super::ledger::TrackedTx`]); a
//! deposit adds the credit threshold. Their states are also the data of their events.

use std::collections::BTreeMap;

use bitcoin::{BlockHash, OutPoint, Transaction, Txid};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::amount::Sats;

/// Where a tracked transaction stands (`status` in its events and in `deposits`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Mempool,
    Confirming,
    Credited,
    Final,
    Reorged,
    Dropped,
    Replaced,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Mempool => "mempool",
            Status::Confirming => "confirming",
            Status::Credited => "credited",
            Status::Final => "final",
            Status::Reorged => "reorged",
            Status::Dropped => "dropped",
            Status::Replaced => "replaced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s)).ok()
    }

    /// In the mempool, or put back there by a reorg: replaceable, droppable.
    pub fn is_unconfirmed(self) -> bool {
        matches!(self, Status::Mempool | Status::Reorged)
    }

    /// Statuses the follower keeps re-evaluating every block.
    pub const OPEN: [&'static str; 4] = ["mempool", "confirming", "credited", "reorged"];
}

/// An amount written in BTC with 8 places (`"1.50000000"`), beside its `*_sats` twin.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Btc(pub Sats);

impl Serialize for Btc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_btc_string())
    }
}

impl<'de> Deserialize<'de> for Btc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let sats = s
            .parse::<Decimal>()
            .ok()
            .and_then(|btc| {
                (btc * Decimal::from(100_000_000u64))
                    .trunc()
                    .try_into()
                    .ok()
            })
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a BTC amount")))?;
        Ok(Btc(Sats(sats)))
    }
}

/// The state every deposit event carries (DESIGN.md: "Every deposit event carries").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    pub account_id: Uuid,
    pub address: String,
    pub txid: Txid,
    pub vout: u32,
    pub amount: Btc,
    pub amount_sats: Sats,
    pub confirmations: u32,
    pub block_hash: Option<BlockHash>,
    pub block_height: Option<u32>,
    pub credited: bool,
    pub credit_confirmations: u32,
    pub status: Status,
    /// The outpoints its transaction spends: a transaction spending any of them instead
    /// replaces it.
    #[serde(default)]
    pub inputs: Vec<OutPoint>,
}

impl Deposit {
    pub fn outpoint(&self) -> OutPoint {
        OutPoint::new(self.txid, self.vout)
    }
}

/// Who made a withdrawal: `api` (POST /v1/withdrawals) or `observed` (a spend of a
/// deposit's output made elsewhere).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    Observed,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Observed => "observed",
        }
    }
}

/// An outgoing transaction of an account (DESIGN.md: withdrawals), tracked like a deposit.
/// `amount` is what leaves the account: its outputs spent minus what comes back to its
/// addresses, so the fee is included; `fee` is shown when every input is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub account_id: Uuid,
    pub txid: Txid,
    pub amount: Btc,
    pub amount_sats: Sats,
    pub fee: Option<Btc>,
    pub fee_sats: Option<Sats>,
    pub inputs: Vec<OutPoint>,
    pub confirmations: u32,
    pub block_hash: Option<BlockHash>,
    pub block_height: Option<u32>,
    /// mempool, confirming, final, reorged, dropped or replaced.
    pub status: Status,
    pub source: Source,
}

/// A deposit some transaction spends: whose, and how much.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Spent {
    pub account_id: Uuid,
    pub amount: Sats,
}

impl Withdrawal {
    /// The withdrawal `tx` makes of the deposits it spends (`spent`: the deposits among
    /// its inputs), for `account`, or — `None` — for the account it takes most from (a
    /// withdrawal stream has one account). `None` when it spends nothing of that account.
    /// The fee is known when every input is a deposit. One rule for the API and for
    /// spends observed on the chain.
    pub fn from_spends(
        tx: &Transaction,
        spent: &BTreeMap<OutPoint, Spent>,
        account: Option<Uuid>,
        source: Source,
    ) -> Option<Withdrawal> {
        if tx.is_coinbase() {
            return None;
        }
        let mine: Vec<Spent> = tx
            .input
            .iter()
            .filter_map(|i| spent.get(&i.previous_output).copied())
            .collect();
        let mut per_account: BTreeMap<Uuid, u64> = BTreeMap::new();
        for s in &mine {
            *per_account.entry(s.account_id).or_default() += s.amount.0;
        }
        let (account_id, amount) = match account {
            Some(a) => (a, per_account.get(&a).copied().unwrap_or(0)),
            None => per_account.into_iter().max_by_key(|(_, sats)| *sats)?,
        };
        if amount == 0 {
            return None;
        }
        // Checked: a client's raw transaction may claim outputs summing past u64 (the
        // node refuses it; the sum must not panic first).
        let out_total = tx
            .output
            .iter()
            .try_fold(0u64, |sum, o| sum.checked_add(o.value.to_sat()));
        let fee = (mine.len() == tx.input.len())
            .then(|| {
                mine.iter()
                    .map(|s| s.amount.0)
                    .sum::<u64>()
                    .checked_sub(out_total?)
            })
            .flatten()
            .map(Sats);
        Some(Withdrawal {
            account_id,
            txid: tx.compute_txid(),
            amount: Btc(Sats(amount)),
            amount_sats: Sats(amount),
            fee: fee.map(Btc),
            fee_sats: fee,
            inputs: inputs_of(tx),
            confirmations: 0,
            block_hash: None,
            block_height: None,
            status: Status::Mempool,
            source,
        })
    }
}

/// The outpoints `tx` spends (none for a coinbase).
pub fn inputs_of(tx: &Transaction) -> Vec<OutPoint> {
    if tx.is_coinbase() {
        return Vec::new();
    }
    tx.input.iter().map(|i| i.previous_output).collect()
}

/// One step of a tracked transaction's life; each is one event, named per kind.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `deposit.seen` / `withdrawal.broadcast`.
    Seen,
    Confirmed,
    /// Deposits only: the credit threshold reached, or lost.
    Credited,
    CreditReversed,
    Final,
    Reorged(BlockHash),
    Dropped,
    Replaced(Txid),
}

/// Deposits and withdrawals for unit tests: an amount and a count, the rest plain.
#[cfg(test)]
pub(crate) mod examples {
    use super::*;
    use bitcoin::hashes::Hash;

    pub fn deposit(sats: u64, confirmations: u32) -> Deposit {
        Deposit {
            account_id: Uuid::nil(),
            address: "mzBc4XEFSdzCDcTxAgf6EZXgsZWpztRhef".into(),
            txid: Txid::all_zeros(),
            vout: 0,
            amount: Btc(Sats(sats)),
            amount_sats: Sats(sats),
            confirmations,
            block_hash: None,
            block_height: None,
            credited: false,
            credit_confirmations: 3,
            status: Status::Confirming,
            inputs: vec![],
        }
    }

    /// A transaction spending `spends` and paying 1000 sats to each of `pays`.
    pub fn transaction(spends: &[OutPoint], pays: &[bitcoin::ScriptBuf]) -> Transaction {
        use bitcoin::{absolute, transaction, Amount, ScriptBuf, Sequence, TxIn, TxOut, Witness};
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: spends
                .iter()
                .map(|o| TxIn {
                    previous_output: *o,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output: pays
                .iter()
                .map(|s| TxOut {
                    value: Amount::from_sat(1000),
                    script_pubkey: s.clone(),
                })
                .collect(),
        }
    }

    pub fn withdrawal(sats: u64, confirmations: u32) -> Withdrawal {
        Withdrawal {
            account_id: Uuid::nil(),
            txid: Txid::all_zeros(),
            amount: Btc(Sats(sats)),
            amount_sats: Sats(sats),
            fee: None,
            fee_sats: None,
            inputs: vec![],
            confirmations,
            block_hash: None,
            block_height: None,
            status: Status::Confirming,
            source: Source::Api,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    fn txid(n: u8) -> Txid {
        Txid::from_byte_array([n; 32])
    }

    fn spending(inputs: &[OutPoint], out_sats: u64) -> Transaction {
        let mut tx = examples::transaction(inputs, &[bitcoin::ScriptBuf::new()]);
        tx.output[0].value = bitcoin::Amount::from_sat(out_sats);
        tx
    }

    #[test]
    fn a_withdrawal_is_what_it_takes_from_one_account_and_the_fee_needs_every_input() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (i1, i2, i3) = (
            OutPoint::new(txid(1), 0),
            OutPoint::new(txid(2), 0),
            OutPoint::new(txid(3), 0),
        );
        let spent: BTreeMap<OutPoint, Spent> = [
            (
                i1,
                Spent {
                    account_id: a,
                    amount: Sats(600),
                },
            ),
            (
                i2,
                Spent {
                    account_id: b,
                    amount: Sats(300),
                },
            ),
        ]
        .into();
        let tx = spending(&[i1, i2], 850);
        let w = Withdrawal::from_spends(&tx, &spent, None, Source::Observed).unwrap();
        assert_eq!(
            (w.account_id, w.amount_sats, w.fee_sats),
            (a, Sats(600), Some(Sats(50)))
        );
        assert_eq!(w.inputs, [i1, i2]);
        let for_b = Withdrawal::from_spends(&tx, &spent, Some(b), Source::Api).unwrap();
        assert_eq!((for_b.amount_sats, for_b.source), (Sats(300), Source::Api));
        assert_eq!(
            Withdrawal::from_spends(&tx, &spent, Some(Uuid::from_u128(9)), Source::Api),
            None,
            "spends nothing of that account"
        );
        let unknown_input = spending(&[i1, i3], 500);
        let w = Withdrawal::from_spends(&unknown_input, &spent, None, Source::Observed).unwrap();
        assert_eq!(
            w.fee_sats, None,
            "an input is not a deposit: the fee is unknown"
        );
        assert_eq!(
            Withdrawal::from_spends(&spending(&[i3], 1), &spent, None, Source::Observed),
            None
        );
        // Outputs claiming more than u64 holds: no fee, and no panic on the sum.
        let mut huge = spending(&[i1, i2], u64::MAX);
        huge.output.push(huge.output[0].clone());
        let w = Withdrawal::from_spends(&huge, &spent, None, Source::Api).unwrap();
        assert_eq!(w.fee_sats, None);
    }

    #[test]
    fn btc_amounts_round_trip_as_eight_place_strings() {
        let v = serde_json::to_value(Btc(Sats(150_000_001))).unwrap();
        assert_eq!(v, "1.50000001");
        assert_eq!(
            serde_json::from_value::<Btc>(v).unwrap(),
            Btc(Sats(150_000_001))
        );
        assert!(serde_json::from_value::<Btc>("x".into()).is_err());
        assert_eq!(Status::parse("reorged"), Some(Status::Reorged));
        assert_eq!(Status::parse("nope"), None);
    }
}
