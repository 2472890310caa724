//! How the log addresses events: [`Position`] (gapless, in commit order), [`StreamName`]
//! (EventStore-style `category-id`) with its version, the deterministic event id, and
//! [`NewEvent`], what a decision hands the store to append.

use std::fmt;

use bitcoin::{OutPoint, Txid};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::events::Event;

/// An event's place in the log: 1, 2, 3, … without gaps, in commit order; 0 is "before
/// the first event".
#[derive(
    Copy,
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct Position(pub i64);

impl Position {
    pub const START: Position = Position(0);

    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stream of the log: `chain`, `account-<uuid>`, `deposit-<txid>:<vout>`,
/// `withdrawal-<txid>`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct StreamName(String);

impl StreamName {
    pub fn chain() -> StreamName {
        StreamName("chain".into())
    }

    pub fn account(id: Uuid) -> StreamName {
        StreamName(format!("account-{id}"))
    }

    pub fn deposit(outpoint: OutPoint) -> StreamName {
        StreamName(format!("deposit-{outpoint}"))
    }

    pub fn withdrawal(txid: Txid) -> StreamName {
        StreamName(format!("withdrawal-{txid}"))
    }

    /// A subscriber's operational events.
    pub fn subscriber(id: Uuid) -> StreamName {
        StreamName(format!("subscriber-{id}"))
    }

    /// A name as stored (no check: the log holds what it holds).
    pub fn from_stored(name: String) -> StreamName {
        StreamName(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Namespace of the deterministic event ids (UUIDv5 of "<stream>/<version>").
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c1e_43c9_5f0b_4b8e_9d2a_2f61_c0de_1ed9);

/// The id of the event at `version` of `stream`: a repeated append after a crash has the
/// same id, so it is a conflict, never a duplicate. It is also the webhook-id.
pub fn event_id(stream: &StreamName, version: i32) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{}/{version}", stream.0).as_bytes(),
    )
}

/// An event not yet in the log. `expected_version` is the stream's current last version
/// (`None`: the stream must not exist yet); the store refuses the append otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub stream: StreamName,
    pub expected_version: Option<i32>,
    pub event: Event,
    pub metadata: Value,
}

/// A typed event with its place in the log: what folds and mappings read.
#[derive(Clone, Copy, Debug)]
pub struct EventAt<'a> {
    pub position: Position,
    pub stream_version: i32,
    pub event: &'a Event,
}

impl NewEvent {
    pub fn stream_version(&self) -> i32 {
        self.expected_version.map_or(0, |v| v + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    #[test]
    fn event_ids_are_deterministic_per_stream_version() {
        let chain = StreamName::chain();
        assert_eq!(event_id(&chain, 3), event_id(&chain, 3));
        assert_ne!(event_id(&chain, 3), event_id(&chain, 4));
        let deposit = StreamName::deposit(OutPoint::new(Txid::all_zeros(), 0));
        assert_ne!(event_id(&chain, 3), event_id(&deposit, 3));
        assert_eq!(
            deposit.as_str(),
            format!("deposit-{}:0", "0".repeat(64)),
            "txid:vout, as OutPoint is written"
        );
    }
}
