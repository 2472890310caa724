//! Where the stored chain and the node's chain part: the pure half of following a reorg.
//! The follower reads the stored tail and the node's hashes at those heights, and
//! [`fork_point`] says which stored blocks to disconnect, or that it must look further back.

use std::collections::BTreeMap;

use bitcoin::BlockHash;

use super::ledger::BlockRef;

/// What the stored tail says about the node's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fork {
    /// The stored tip is the node's block at its height: nothing to disconnect.
    NoReorg,
    /// `common` is on both chains; `disconnect` are the stored blocks above it, top down.
    At {
        common: BlockRef,
        disconnect: Vec<BlockRef>,
    },
    /// No block of the tail is on the node's chain: when the tail is the whole stored
    /// chain, every stored block goes (the node replaced everything since the start
    /// height); otherwise read a longer tail and ask again.
    Deeper { disconnect: Vec<BlockRef> },
}

/// `stored_tail`: the stored blocks, consecutive heights, in any order; `node_hashes`: the node's active chain at those heights
/// (a height missing from it is above the node's tip). Pure: no IO.
pub fn fork_point(stored_tail: &[BlockRef], node_hashes: &BTreeMap<u32, BlockHash>) -> Fork {
    let mut tail: Vec<BlockRef> = stored_tail.to_vec();
    tail.sort_by_key(|b| std::cmp::Reverse(b.height));
    let mut disconnect = Vec::new();
    for b in tail {
        if node_hashes.get(&b.height) == Some(&b.hash) {
            if disconnect.is_empty() {
                return Fork::NoReorg;
            }
            return Fork::At {
                common: b,
                disconnect,
            };
        }
        disconnect.push(b);
    }
    if disconnect.is_empty() {
        return Fork::NoReorg; // nothing stored
    }
    Fork::Deeper { disconnect }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    /// Fixed headers: branch `a` from height 100 to 110; branch `b` forks after `b_from - 1`.
    fn hash(branch: u8, height: u32) -> BlockHash {
        let mut bytes = [0u8; 32];
        bytes[0] = branch;
        bytes[1..5].copy_from_slice(&height.to_be_bytes());
        BlockHash::from_byte_array(bytes)
    }

    fn header(branch: u8, height: u32, fork_at: u32) -> BlockRef {
        let parent = if height == fork_at { b'a' } else { branch };
        BlockRef {
            height,
            hash: hash(branch, height),
            prev_hash: hash(parent, height - 1),
            time: 1_700_000_000 + height,
        }
    }

    fn stored(range: std::ops::RangeInclusive<u32>) -> Vec<BlockRef> {
        range.map(|h| header(b'a', h, 0)).collect()
    }

    /// The node's chain: branch `a` up to `fork_at - 1`, then branch `b` up to `tip`.
    fn node(fork_at: u32, tip: u32) -> BTreeMap<u32, BlockHash> {
        (100..=tip)
            .map(|h| {
                (
                    h,
                    if h < fork_at {
                        hash(b'a', h)
                    } else {
                        hash(b'b', h)
                    },
                )
            })
            .collect()
    }

    fn heights(blocks: &[BlockRef]) -> Vec<u32> {
        blocks.iter().map(|b| b.height).collect()
    }

    #[test]
    fn no_reorg_when_the_stored_tip_is_the_nodes() {
        assert_eq!(
            fork_point(&stored(100..=110), &node(999, 112)),
            Fork::NoReorg
        );
        assert_eq!(fork_point(&[], &node(999, 112)), Fork::NoReorg);
    }

    #[test]
    fn a_reorg_of_depth_one_disconnects_the_tip() {
        match fork_point(&stored(100..=110), &node(110, 111)) {
            Fork::At { common, disconnect } => {
                assert_eq!(common, header(b'a', 109, 0));
                assert_eq!(heights(&disconnect), [110]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reorg_of_depth_three_disconnects_top_down() {
        // Given in ascending order: the answer is top down all the same.
        match fork_point(&stored(100..=110), &node(108, 110)) {
            Fork::At { common, disconnect } => {
                assert_eq!(common.height, 107);
                assert_eq!(heights(&disconnect), [110, 109, 108]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reorg_deeper_than_the_tail_asks_for_more_or_disconnects_everything() {
        let tail = stored(106..=110);
        match fork_point(&tail, &node(103, 112)) {
            Fork::Deeper { disconnect } => {
                assert_eq!(heights(&disconnect), [110, 109, 108, 107, 106])
            }
            other => panic!("{other:?}"),
        }
        // With a longer tail the fork is found.
        match fork_point(&stored(100..=110), &node(103, 112)) {
            Fork::At { common, disconnect } => {
                assert_eq!(common.height, 102);
                assert_eq!(disconnect.len(), 8);
            }
            other => panic!("{other:?}"),
        }
        // The node replaced everything since the start height.
        assert!(matches!(
            fork_point(&stored(100..=110), &node(100, 112)),
            Fork::Deeper { disconnect } if disconnect.len() == 11
        ));
    }

    #[test]
    fn a_node_that_went_backwards_disconnects_what_it_no_longer_has() {
        // invalidateblock: the node's tip is 107 and its chain is still branch a.
        let node_now: BTreeMap<u32, BlockHash> = (100..=107).map(|h| (h, hash(b'a', h))).collect();
        match fork_point(&stored(100..=110), &node_now) {
            Fork::At { common, disconnect } => {
                assert_eq!(common.height, 107);
                assert_eq!(heights(&disconnect), [110, 109, 108]);
            }
            other => panic!("{other:?}"),
        }
    }
}
