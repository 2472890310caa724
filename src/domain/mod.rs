//! Pure types and decisions: no IO, no database, no clock. The unit of work loads what a
//! decision needs, calls into these modules, and appends what they return.
//!
//! - [`events`]: the event catalogue, one enum of every type with its data.
//! - [`stream`]: positions, stream names, event ids, [`stream::NewEvent`].
//! - [`tracked`]: deposits and withdrawals, one state machine's elements.
//! - [`ledger`]: which events an observed block, reorg, mempool or broadcast yields.
//! - [`fork`]: where the stored chain and the node's part.
//! - [`account`]: account commands and look-ahead windows; [`descriptor`] derives addresses.
//! - [`filter`], [`amount`], [`address`]: `types=` filters, satoshis, watched addresses.

pub mod account;
pub mod address;
pub mod amount;
pub mod descriptor;
pub mod events;
pub mod filter;
pub mod fork;
pub mod ledger;
pub mod stream;
pub mod tracked;

pub use address::{AddressError, WatchedAddress};
pub use amount::Sats;
