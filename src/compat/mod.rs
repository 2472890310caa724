//! What the systems our users come from put on the wire (`../shared/PEERS.md`), derived
//! from our events: pure mappings, no IO. The delivery formats in [`crate::delivery`] and
//! the compatibility endpoints in [`crate::http`] use them.

pub mod bitcart;
pub mod cryptoassets;
pub mod ipn;
