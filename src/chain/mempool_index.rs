//! The mempool index: for every transaction in the node's mempool, the keys a later match
//! needs, in a compact form — a 64-bit hash of each output script and of each outpoint it
//! spends — so a newly watched address is matched in memory against the transactions
//! already there, and only the few that match are fetched again. A key collision only
//! fetches a transaction that then does not match: the full check is always the
//! transaction's own outputs.
//!
//! Memory: the txid (32 bytes), up to four keys inline in the entry (more spill into one
//! allocation), and the hash map's slot: about 100 bytes for a transaction of up to four
//! inputs and outputs (`tools/bench mempool`). The entries lie in the map's own table, so
//! matching is one pass over contiguous memory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bitcoin::{OutPoint, Script, Transaction, Txid};

/// The compact form of an output script.
pub fn script_key(script: &Script) -> u64 {
    key(script.as_bytes())
}

/// The compact form of an outpoint.
pub fn outpoint_key(outpoint: &OutPoint) -> u64 {
    key(outpoint)
}

fn key(value: impl Hash) -> u64 {
    // SipHash with fixed keys: the same key in every process; a collision costs a fetch.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Keys held inline; a transaction with more spills them into one allocation.
const INLINE: usize = 4;

struct Entry {
    /// The outputs' script keys, then the inputs' outpoint keys: the first `len` here, or
    /// all of them in `spill` when there are more than [`INLINE`].
    inline: [u64; INLINE],
    spill: Option<Box<[u64]>>,
    len: u32,
    outputs: u32,
}

impl Entry {
    fn new(keys: Vec<u64>, outputs: u32) -> Entry {
        let len = keys.len() as u32;
        if keys.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..keys.len()].copy_from_slice(&keys);
            Entry {
                inline,
                spill: None,
                len,
                outputs,
            }
        } else {
            Entry {
                inline: [0; INLINE],
                spill: Some(keys.into_boxed_slice()),
                len,
                outputs,
            }
        }
    }

    fn keys(&self) -> &[u64] {
        match &self.spill {
            Some(keys) => keys,
            None => &self.inline[..self.len as usize],
        }
    }

    fn outputs(&self) -> &[u64] {
        &self.keys()[..self.outputs as usize]
    }

    fn inputs(&self) -> &[u64] {
        &self.keys()[self.outputs as usize..]
    }
}

#[derive(Default)]
pub struct MempoolIndex {
    txs: HashMap<Txid, Entry>,
}

impl MempoolIndex {
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.txs.contains_key(txid)
    }

    /// Indexes `tx` (computing its txid); false if it was indexed already.
    pub fn insert(&mut self, tx: &Transaction) -> bool {
        self.insert_with_txid(tx.compute_txid(), tx)
    }

    pub fn insert_with_txid(&mut self, txid: Txid, tx: &Transaction) -> bool {
        if self.txs.contains_key(&txid) {
            return false;
        }
        let keys: Vec<u64> = tx
            .output
            .iter()
            .map(|o| script_key(&o.script_pubkey))
            .chain(
                tx.input
                    .iter()
                    .filter(|_| !tx.is_coinbase())
                    .map(|i| outpoint_key(&i.previous_output)),
            )
            .collect();
        let outputs = tx.output.len() as u32;
        self.txs.insert(txid, Entry::new(keys, outputs));
        true
    }

    /// Keeps only the transactions for which `keep` holds (those still in the mempool).
    pub fn retain(&mut self, mut keep: impl FnMut(&Txid) -> bool) {
        self.txs.retain(|t, _| keep(t));
        if self.txs.capacity() > 2 * self.txs.len() + 1024 {
            self.txs.shrink_to_fit();
        }
    }

    /// The indexed transactions with an output whose script key is one of `scripts`'.
    pub fn paying(&self, scripts: &[u64]) -> Vec<Txid> {
        self.matching(Entry::outputs, scripts)
    }

    /// The indexed transactions with an output whose script key satisfies `hit` (matching
    /// the whole watch set, after a first load).
    pub fn paying_where(&self, hit: impl Fn(&u64) -> bool) -> Vec<Txid> {
        self.txs
            .iter()
            .filter(|(_, e)| e.outputs().iter().any(&hit))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The indexed transactions spending an outpoint whose key is one of `outpoints`'.
    pub fn spending(&self, outpoints: &[u64]) -> Vec<Txid> {
        self.matching(Entry::inputs, outpoints)
    }

    fn matching(&self, side: impl Fn(&Entry) -> &[u64], wanted: &[u64]) -> Vec<Txid> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let hit: Box<dyn Fn(&u64) -> bool> = if wanted.len() <= 8 {
            Box::new(|k| wanted.contains(k))
        } else {
            let set: std::collections::HashSet<u64> = wanted.iter().copied().collect();
            Box::new(move |k| set.contains(k))
        };
        self.txs
            .iter()
            .filter(|(_, e)| side(e).iter().any(&hit))
            .map(|(t, _)| *t)
            .collect()
    }

    /// The bytes the index holds: the map's slots (entries, inline keys) and spilled keys
    /// (what the allocator adds per spill is not counted).
    pub fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Txid, Entry)>() + 1;
        let keys: usize = self
            .txs
            .values()
            .filter(|e| e.spill.is_some())
            .map(|e| e.len as usize * 8)
            .sum();
        self.txs.capacity() * slot + keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::ScriptBuf;

    use crate::domain::tracked::examples::transaction as tx;

    #[test]
    fn a_newly_watched_script_finds_the_transactions_paying_it_and_nothing_else() {
        let (a, b, c) = (
            ScriptBuf::from_bytes(vec![0x51]),
            ScriptBuf::from_bytes(vec![0x52]),
            ScriptBuf::from_bytes(vec![0x53]),
        );
        let spent = OutPoint::new(Txid::from_byte_array([7; 32]), 1);
        let mut index = MempoolIndex::default();
        let t1 = tx(&[spent], &[a.clone(), b.clone()]);
        let t2 = tx(
            &[OutPoint::new(Txid::from_byte_array([8; 32]), 0)],
            std::slice::from_ref(&b),
        );
        assert!(index.insert(&t1));
        assert!(!index.insert(&t1), "indexed once");
        index.insert(&t2);
        assert_eq!(index.paying(&[script_key(&a)]), [t1.compute_txid()]);
        let mut both = index.paying(&[script_key(&b)]);
        both.sort();
        let mut expected = vec![t1.compute_txid(), t2.compute_txid()];
        expected.sort();
        assert_eq!(both, expected);
        assert!(index.paying(&[script_key(&c)]).is_empty());
        assert_eq!(index.spending(&[outpoint_key(&spent)]), [t1.compute_txid()]);
        assert!(
            index.spending(&[script_key(&a)]).is_empty(),
            "outputs are not inputs"
        );
        index.retain(|t| *t != t1.compute_txid());
        assert!(index.paying(&[script_key(&a)]).is_empty());
        assert_eq!(index.len(), 1);
        assert!(index.bytes() > 0);
    }
}
