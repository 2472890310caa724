//! Pure types and decisions: no IO, no database, no clock. The chain follower fetches,
//! calls into [`ledger`] and appends what it returns.

pub mod address;
pub mod amount;
pub mod descriptor;
pub mod events;
pub mod ledger;

pub use address::{AddressError, WatchedAddress};
pub use amount::Sats;
