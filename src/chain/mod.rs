//! Following the node: [`node`] is the RPC client (blocking calls run off the async
//! runtime), [`follower`] connects blocks and handles reorgs, [`mempool`] watches
//! 0-confirmation deposits, [`watches`] is the set of scripts they match against,
//! [`lookahead`] keeps descriptor accounts' derived addresses watched ahead of use,
//! [`rescan`] reads past blocks for addresses watched with `rescan_from_height`.

pub mod follower;
pub mod lookahead;
pub mod mempool;
pub mod node;
pub mod outgoing;
pub mod rescan;
pub mod watches;

pub use follower::{Follower, FollowerStatus};
pub use node::Node;
