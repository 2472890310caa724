//! Following the node (which instance does: [`crate::leadership`]): [`node`] is the RPC client (blocking calls run off the async
//! runtime), [`follower`] fetches blocks and follows reorgs, [`block`] is where a block
//! is processed (the observation the unit of work records), [`mempool`] watches
//! 0-confirmation deposits (with [`mempool_index`], the compact index of the node's
//! mempool), [`watches`] is the set of scripts they match against,
//! [`outgoing`] finds spends of deposits, [`zmq`] takes what the node pushes, [`rescan`] reads past blocks for addresses
//! watched with `rescan_from_height`.

pub mod block;
pub mod catchup;
pub mod follower;
pub mod mempool;
pub mod mempool_index;
pub mod node;
pub mod outgoing;
pub mod rescan;
pub mod watches;
pub mod zmq;

pub use follower::Follower;
pub use node::Node;

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};

/// What the HTTP status route reports about the follower.
#[derive(Debug, Default)]
pub struct FollowerStatus {
    /// This instance's name in the leader lease.
    pub instance_id: String,
    pub leader: AtomicBool,
    /// The lease epoch this instance leads with; 0 when it does not lead.
    pub leader_epoch: AtomicI64,
    /// -1 until known.
    pub node_tip: AtomicI64,
    /// The lowest height the node still has blocks of (0 unpruned); -1 until known.
    pub prune_height: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    pub zmq: Arc<zmq::ZmqStatus>,
}
