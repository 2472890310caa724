//! The scripts the follower and the mempool watcher match outputs against, loaded from the
//! `addresses` projection and refreshed incrementally by position.
//!
//! Memory holds only a fixed-size key per watched script: the 64-bit [`script_key`] the
//! mempool index uses too, in a sorted `Vec<u64>` (8 bytes a script, 80 MB for ten
//! million) with a table of where each 16-bit prefix starts, plus a small hash set of the
//! keys added since the last merge. Whom a script belongs to (account, address, credit
//! threshold) stays in the database: an output whose key is in the set is a [`Candidate`],
//! and [`Watches::resolve`] looks the candidates' full scripts up in `addresses` (its
//! unique index on `script_pubkey`) — so a key collision costs one lookup that finds
//! nothing, and never credits a script that is not watched. Only the scripts a block or a
//! mempool batch actually pays are looked up.

use std::collections::{HashMap, HashSet};

use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use futures::TryStreamExt;
use sqlx::PgConnection;
use uuid::Uuid;

use super::mempool_index::script_key;
use crate::domain::ledger::{FoundOutput, Watch};
use crate::domain::tracked::inputs_of;
use crate::domain::Sats;

/// Keys added one by one are kept in a hash set until there are this many (or a sixteenth
/// of the sorted keys, if more), then merged into the sorted keys in one pass.
const MERGE_AT: usize = 65_536;
/// The top bits of a key that index [`KeySet::starts`].
const PREFIX_BITS: u32 = 16;
/// More keys than this added between two [`Watches::take_added`] calls are not kept one
/// by one: the mempool index is then matched against the whole set ([`Added::All`]).
const ADDED_MAX: usize = 100_000;

/// A set of 64-bit keys: sorted, with an index of where each prefix starts, plus the
/// recent additions.
#[derive(Default)]
pub struct KeySet {
    sorted: Vec<u64>,
    /// `starts[p]..starts[p + 1]` is the range of `sorted` whose keys have prefix `p`;
    /// empty while `sorted` is.
    starts: Vec<u32>,
    recent: HashSet<u64>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: u64) -> bool {
        if self.recent.contains(&key) {
            return true;
        }
        if self.starts.is_empty() {
            return false;
        }
        let p = (key >> (64 - PREFIX_BITS)) as usize;
        let range = self.starts[p] as usize..self.starts[p + 1] as usize;
        self.sorted[range].binary_search(&key).is_ok()
    }

    /// Adds `keys`: a large batch (the first load) is sorted and merged at once, a few go
    /// to the recent set until it is merged.
    pub fn extend(&mut self, mut keys: Vec<u64>) {
        let threshold = MERGE_AT.max(self.sorted.len() / 16);
        if keys.len() + self.recent.len() <= threshold {
            self.recent.extend(keys);
            return;
        }
        keys.extend(self.recent.drain());
        self.recent.shrink_to_fit();
        keys.sort_unstable();
        keys.dedup();
        if self.sorted.is_empty() {
            self.sorted = keys;
        } else {
            merge(&mut self.sorted, &keys);
        }
        self.index();
    }

    /// Rebuilds `starts` from `sorted`.
    fn index(&mut self) {
        assert!(
            self.sorted.len() < u32::MAX as usize,
            "at most 4 billion watched scripts"
        );
        let buckets = 1usize << PREFIX_BITS;
        self.starts.clear();
        self.starts.reserve_exact(buckets + 1);
        let mut i = 0;
        for p in 0..buckets as u64 {
            self.starts.push(i as u32);
            while i < self.sorted.len() && (self.sorted[i] >> (64 - PREFIX_BITS)) == p {
                i += 1;
            }
        }
        self.starts.push(i as u32);
    }

    /// The bytes the set holds (its vectors' and hash set's capacity).
    pub fn bytes(&self) -> usize {
        self.sorted.capacity() * 8 + self.starts.capacity() * 4 + self.recent.capacity() * 9
    }
}

/// Merges the sorted `add` into the sorted `into`, in place from the back (no second copy
/// of `into`). Keys in both stay twice, which `contains` does not mind.
fn merge(into: &mut Vec<u64>, add: &[u64]) {
    let (n, m) = (into.len(), add.len());
    into.reserve_exact(m);
    into.resize(n + m, 0);
    let (mut i, mut j) = (n, m);
    while j > 0 {
        let k = i + j - 1;
        if i > 0 && into[i - 1] > add[j - 1] {
            into[k] = into[i - 1];
            i -= 1;
        } else {
            into[k] = add[j - 1];
            j -= 1;
        }
    }
}

/// The scripts watched since the last [`Watches::take_added`].
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Their keys.
    Keys(Vec<u64>),
    /// Too many to list (the first load): match against the whole set.
    All,
}

impl Default for Added {
    fn default() -> Self {
        Added::Keys(Vec::new())
    }
}

/// An output whose script's key is watched; [`Watches::resolve`] says whose it is, if
/// anyone's.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub outpoint: OutPoint,
    pub value: Sats,
    pub script: ScriptBuf,
    /// The outpoints the transaction spends.
    pub inputs: Vec<OutPoint>,
}

#[derive(Default)]
pub struct Watches {
    keys: KeySet,
    /// Position of the last `address.watched` folded in.
    position: i64,
    added: Added,
}

impl Watches {
    /// Loads the keys of the scripts watched since the last refresh (by whoever
    /// refreshed: the block observation under the log lock, or the mempool watcher); they
    /// wait in [`Watches::take_added`] for the mempool index. Only the scripts are read;
    /// the keys go into one vector sized up front.
    pub async fn refresh(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let new = sqlx::query_scalar!(
            "SELECT count(*) FROM addresses WHERE position > $1",
            self.position
        )
        .fetch_one(&mut *conn)
        .await?
        .unwrap_or(0);
        if new == 0 {
            return Ok(());
        }
        // No ORDER BY (sorting ten million rows would cost more than the read): the
        // statement's snapshot holds every position up to the greatest it returns, since
        // positions commit in order.
        let mut rows = sqlx::query!(
            "SELECT script_pubkey, position FROM addresses WHERE position > $1",
            self.position
        )
        .fetch(&mut *conn);
        let mut keys = Vec::with_capacity(new as usize);
        let mut position = self.position;
        while let Some(r) = rows.try_next().await? {
            position = position.max(r.position);
            keys.push(script_key(bitcoin::Script::from_bytes(&r.script_pubkey)));
        }
        drop(rows);
        self.position = position;
        self.added = match std::mem::take(&mut self.added) {
            Added::Keys(mut added) if added.len() + keys.len() <= ADDED_MAX => {
                added.extend_from_slice(&keys);
                Added::Keys(added)
            }
            _ => Added::All,
        };
        self.keys.extend(keys);
        Ok(())
    }

    /// The scripts watched since the last call: what the mempool index must be matched
    /// against.
    pub fn take_added(&mut self) -> Added {
        std::mem::take(&mut self.added)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a script with this key may be watched.
    pub fn contains_key(&self, key: u64) -> bool {
        self.keys.contains(key)
    }

    /// The scripts watched, and the bytes their keys take.
    pub fn stats(&self) -> (usize, usize) {
        (self.keys.len(), self.keys.bytes())
    }

    /// The outputs of `tx` whose script's key is watched. The txid is computed only on a
    /// match.
    pub fn scan(&self, tx: &Transaction, found: &mut Vec<Candidate>) {
        let mut txid: Option<Txid> = None;
        for (vout, out) in tx.output.iter().enumerate() {
            if self.keys.contains(script_key(&out.script_pubkey)) {
                let txid = *txid.get_or_insert_with(|| tx.compute_txid());
                found.push(Candidate {
                    outpoint: OutPoint::new(txid, vout as u32),
                    value: Sats::from(out.value),
                    script: out.script_pubkey.clone(),
                    inputs: inputs_of(tx),
                });
            }
        }
    }

    /// The candidates paying a watched script — compared in full, by the database — with
    /// whom each belongs to; the others (key collisions) are left out. One query for
    /// every group; the groups (e.g. one per block) keep their order.
    pub async fn resolve(
        conn: &mut PgConnection,
        groups: Vec<Vec<Candidate>>,
    ) -> Result<Vec<Vec<FoundOutput>>, sqlx::Error> {
        let mut scripts: Vec<&[u8]> = groups
            .iter()
            .flatten()
            .map(|c| c.script.as_bytes())
            .collect();
        if scripts.is_empty() {
            return Ok(groups.into_iter().map(|_| Vec::new()).collect());
        }
        scripts.sort_unstable();
        scripts.dedup();
        let rows = sqlx::query!(
            "SELECT a.script_pubkey, a.address, a.account_id, acc.credit_confirmations
             FROM addresses a JOIN accounts acc USING (account_id)
             WHERE a.script_pubkey = ANY($1)",
            &scripts as &[&[u8]]
        )
        .fetch_all(&mut *conn)
        .await?;
        let owners = rows.into_iter().map(|r| {
            (
                r.script_pubkey,
                (r.account_id, r.address, r.credit_confirmations),
            )
        });
        Ok(attach(groups, owners.collect()))
    }
}

/// The candidates whose full script is one of `owners`' (script → account, address,
/// credit confirmations), as found outputs.
fn attach(
    groups: Vec<Vec<Candidate>>,
    owners: HashMap<Vec<u8>, (Uuid, String, i32)>,
) -> Vec<Vec<FoundOutput>> {
    groups
        .into_iter()
        .map(|group| {
            group
                .into_iter()
                .filter_map(|c| {
                    let (account_id, address, credit) = owners.get(c.script.as_bytes())?;
                    Some(FoundOutput {
                        outpoint: c.outpoint,
                        value: c.value,
                        watch: Watch {
                            account_id: *account_id,
                            address: address.clone(),
                            credit_confirmations: *credit as u32,
                        },
                        inputs: c.inputs,
                    })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    use crate::domain::tracked::examples::transaction as tx;

    fn script(i: u32) -> ScriptBuf {
        let mut b = vec![0x76, 0xa9, 0x14];
        b.extend_from_slice(&bitcoin::hashes::hash160::Hash::hash(&i.to_le_bytes())[..]);
        b.extend_from_slice(&[0x88, 0xac]);
        ScriptBuf::from_bytes(b)
    }

    #[test]
    fn a_key_set_holds_exactly_what_was_added_through_merges() {
        let mut set = KeySet::default();
        let all: Vec<u64> = (0..200_000u32).map(|i| script_key(&script(i))).collect();
        // A first load (sorted at once), then additions one by one and in batches that
        // are merged in, with extreme keys.
        set.extend(all[..150_000].to_vec());
        for k in &all[150_000..150_010] {
            set.extend(vec![*k]);
        }
        set.extend(all[150_010..].to_vec());
        set.extend(vec![0, u64::MAX]);
        assert_eq!(set.len(), 200_002);
        for k in all.iter().chain(&[0, u64::MAX]) {
            assert!(set.contains(*k), "{k} was added");
        }
        let absent = (200_000..210_000u32)
            .map(|i| script_key(&script(i)))
            .filter(|k| set.contains(*k))
            .count();
        assert_eq!(absent, 0, "no key that was not added is found");
        assert!(set.bytes() >= 200_000 * 8);
    }

    #[test]
    fn merging_keeps_the_order() {
        let mut into = vec![1, 4, 9, 9, 20];
        merge(&mut into, &[0, 4, 10, 30]);
        assert_eq!(into, [0, 1, 4, 4, 9, 9, 10, 20, 30]);
        let mut empty = Vec::new();
        merge(&mut empty, &[2, 3]);
        assert_eq!(empty, [2, 3]);
    }

    #[test]
    fn a_key_collision_is_a_candidate_that_the_full_script_rejects() {
        let (watched, other) = (script(1), script(2));
        let mut watches = Watches::default();
        // As if `other`'s key collided with a watched script's: it is in the set, but the
        // database knows only `watched`.
        watches
            .keys
            .extend(vec![script_key(&watched), script_key(&other)]);
        let spent = OutPoint::new(Txid::from_byte_array([7; 32]), 0);
        let t = tx(&[spent], &[other.clone(), script(3), watched.clone()]);
        let mut candidates = Vec::new();
        watches.scan(&t, &mut candidates);
        assert_eq!(
            candidates.len(),
            2,
            "both keys match; the unwatched script does not"
        );
        let account = Uuid::new_v4();
        let owners = HashMap::from([(watched.to_bytes(), (account, "addr".to_string(), 3))]);
        let found = attach(vec![candidates], owners);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), 1, "the colliding script is not credited");
        let f = &found[0][0];
        assert_eq!(f.outpoint, OutPoint::new(t.compute_txid(), 2));
        assert_eq!(f.watch.account_id, account);
        assert_eq!(f.watch.credit_confirmations, 3);
        assert_eq!(f.inputs, [spent]);
    }

    #[test]
    fn many_additions_are_reported_as_all() {
        let mut watches = Watches::default();
        assert_eq!(watches.take_added(), Added::Keys(Vec::new()));
        watches.added = Added::All;
        assert_eq!(watches.take_added(), Added::All);
        assert_eq!(watches.take_added(), Added::Keys(Vec::new()), "taken");
    }
}
