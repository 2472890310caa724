//! Following the node: [`node`] is the RPC client (blocking calls run off the async
//! runtime), [`follower`] fetches blocks and follows reorgs, [`block`] is where a block
//! is processed (the observation the unit of work records), [`mempool`] watches
//! 0-confirmation deposits, [`watches`] is the set of scripts they match against,
//! [`outgoing`] finds spends of deposits, [`rescan`] reads past blocks for addresses
//! watched with `rescan_from_height`.

pub mod block;
pub mod follower;
pub mod mempool;
pub mod node;
pub mod outgoing;
pub mod rescan;
pub mod watches;

pub use follower::{Follower, FollowerStatus};
pub use node::Node;
