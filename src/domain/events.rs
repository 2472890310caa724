//! The event catalogue (v1): every type an event of the log can have, as one enum
//! ([`Event`]) whose variants carry the type's data, and [`EventType`], the names alone.
//! Both come from one table ([`catalogue!`]), so a new type is a compile error wherever
//! events are matched: the fold, the compatibility mappings, delivery rendering.
//!
//! The data of an event is its variant's payload serialised by serde; reading a stored
//! event back ([`Event::from_data`]) gives the same payload, so appending, hashing and
//! rebuilding see the very JSON the log has always held.

use bitcoin::{BlockHash, ScriptBuf, Txid};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::tracked::{Deposit, Phase, Withdrawal};

pub const SCHEMA_VERSION: i16 = 1;

/// Declares [`EventType`] and [`Event`] from one list of `Variant(Payload) = "name"`.
macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal, )*) => {
        /// An event type of the catalogue, by name (`deposit.confirmed`).
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( $(#[$doc])* $variant, )*
        }

        impl EventType {
            /// Every type, in catalogue order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( EventType::$variant => $name, )*
                }
            }

            pub fn parse(name: &str) -> Option<EventType> {
                match name {
                    $( $name => Some(EventType::$variant), )*
                    _ => None,
                }
            }
        }

        /// An event's type and data.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )*
        }

        impl Event {
            pub fn kind(&self) -> EventType {
                match self {
                    $( Event::$variant(_) => EventType::$variant, )*
                }
            }

            /// The `data` of the event as the log stores it.
            pub fn to_data(&self) -> Value {
                let data = match self {
                    $( Event::$variant(payload) => serde_json::to_value(payload), )*
                };
                data.expect("event data serialises")
            }

            /// The event a stored `(type, data)` pair is.
            pub fn from_data(kind: EventType, data: &Value) -> Result<Event, serde_json::Error> {
                Ok(match kind {
                    $( EventType::$variant => Event::$variant(<$payload>::deserialize(data)?), )*
                })
            }
        }
    };
}

catalogue! {
    AccountCreated(AccountCreated) = "account.created",
    AddressWatched(AddressWatched) = "address.watched",
    /// `{"derive": true}` gave the address out (an addition to DESIGN.md's catalogue).
    AddressHandedOut(AddressHandedOut) = "address.handed_out",
    BlockConnected(BlockConnected) = "block.connected",
    /// A reorg removed the block.
    BlockDisconnected(BlockDisconnected) = "block.disconnected",
    /// The first event of every deposit: 0 confirmations in the mempool, else its count
    /// when first seen in a block.
    DepositSeen(Deposit) = "deposit.seen",
    /// Every change of confirmations up to finality (a decrease too).
    DepositConfirmed(Deposit) = "deposit.confirmed",
    /// The account's credit threshold reached (again after a reversal).
    DepositCredited(Deposit) = "deposit.credited",
    /// FINAL_CONFIRMATIONS reached: no longer tracked.
    DepositFinal(Deposit) = "deposit.final",
    /// Compensating: its block was disconnected.
    DepositReorged(Reorged<Deposit>) = "deposit.reorged",
    /// Compensating: it had been credited and is no longer.
    DepositCreditReversed(Deposit) = "deposit.credit_reversed",
    /// Its transaction left the mempool unmined for the grace period.
    DepositDropped(Deposit) = "deposit.dropped",
    /// A transaction spending one of its transaction's inputs was mined or accepted.
    DepositReplaced(Replaced<Deposit>) = "deposit.replaced",
    /// Broadcast through the API, or seen spending a deposit's output.
    WithdrawalBroadcast(Withdrawal) = "withdrawal.broadcast",
    WithdrawalConfirmed(Withdrawal) = "withdrawal.confirmed",
    WithdrawalFinal(Withdrawal) = "withdrawal.final",
    WithdrawalReorged(Reorged<Withdrawal>) = "withdrawal.reorged",
    WithdrawalDropped(Withdrawal) = "withdrawal.dropped",
    WithdrawalReplaced(Replaced<Withdrawal>) = "withdrawal.replaced",
    /// Operational (delivered only to filters naming it): a subscriber's retries were
    /// spent, or its receiver answered 410 Gone.
    SubscriberDisabled(SubscriberDisabled) = "subscriber.disabled",
    /// Operational: a disabled subscriber was enabled again.
    SubscriberEnabled(SubscriberEnabled) = "subscriber.enabled",
    /// Operational: a delivery succeeded after failed attempts.
    SubscriberRecovered(SubscriberRecovered) = "subscriber.recovered",
}

impl EventType {
    /// Operational types (`subscriber.*`): about the service's deliveries, not the
    /// ledger. A reader without a type filter does not get them; a filter naming them
    /// (exactly or by `subscriber.*`) does.
    pub fn is_operational(self) -> bool {
        self.category() == "subscriber"
    }

    /// The names a reader without a type filter gets: every type but the operational.
    pub fn unfiltered() -> &'static [String] {
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| {
            EventType::ALL
                .iter()
                .filter(|t| !t.is_operational())
                .map(|t| t.as_str().to_string())
                .collect()
        })
    }

    /// The category of a name (`deposit` of `deposit.seen`), for `deposit.*` filters.
    pub fn category(self) -> &'static str {
        self.as_str()
            .split('.')
            .next()
            .expect("names have a category")
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        EventType::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event type `{name}`")))
    }
}

/// Stored as its name (`events.type` is text).
impl sqlx::Type<sqlx::Postgres> for EventType {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for EventType {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let name = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        EventType::parse(name).ok_or_else(|| format!("unknown event type `{name}`").into())
    }
}

/// What an event is about: every variant sorted once, here, so a mapping that cares
/// about some of them matches on this and stays exhaustive without listing the catalogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subject<'a> {
    Account(AccountEvent<'a>),
    Block(&'a BlockConnected),
    BlockDisconnected(&'a BlockDisconnected),
    /// A deposit's state and the step of its life the event records.
    Deposit(&'a Deposit, Phase),
    Withdrawal(&'a Withdrawal, Phase),
    /// An operational event about a subscriber's deliveries.
    Subscriber(SubscriberEvent<'a>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SubscriberEvent<'a> {
    Disabled(&'a SubscriberDisabled),
    Enabled(&'a SubscriberEnabled),
    Recovered(&'a SubscriberRecovered),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AccountEvent<'a> {
    Created(&'a AccountCreated),
    Watched(&'a AddressWatched),
    HandedOut(&'a AddressHandedOut),
}

impl Event {
    pub fn subject(&self) -> Subject<'_> {
        match self {
            Event::AccountCreated(a) => Subject::Account(AccountEvent::Created(a)),
            Event::AddressWatched(a) => Subject::Account(AccountEvent::Watched(a)),
            Event::AddressHandedOut(a) => Subject::Account(AccountEvent::HandedOut(a)),
            Event::BlockConnected(b) => Subject::Block(b),
            Event::BlockDisconnected(b) => Subject::BlockDisconnected(b),
            Event::DepositSeen(d) => Subject::Deposit(d, Phase::Seen),
            Event::DepositConfirmed(d) => Subject::Deposit(d, Phase::Confirmed),
            Event::DepositCredited(d) => Subject::Deposit(d, Phase::Credited),
            Event::DepositFinal(d) => Subject::Deposit(d, Phase::Final),
            Event::DepositReorged(r) => {
                Subject::Deposit(&r.state, Phase::Reorged(r.orphaned_block_hash))
            }
            Event::DepositCreditReversed(d) => Subject::Deposit(d, Phase::CreditReversed),
            Event::DepositDropped(d) => Subject::Deposit(d, Phase::Dropped),
            Event::DepositReplaced(r) => Subject::Deposit(&r.state, Phase::Replaced(r.replaced_by)),
            Event::WithdrawalBroadcast(w) => Subject::Withdrawal(w, Phase::Seen),
            Event::WithdrawalConfirmed(w) => Subject::Withdrawal(w, Phase::Confirmed),
            Event::WithdrawalFinal(w) => Subject::Withdrawal(w, Phase::Final),
            Event::WithdrawalReorged(r) => {
                Subject::Withdrawal(&r.state, Phase::Reorged(r.orphaned_block_hash))
            }
            Event::WithdrawalDropped(w) => Subject::Withdrawal(w, Phase::Dropped),
            Event::WithdrawalReplaced(r) => {
                Subject::Withdrawal(&r.state, Phase::Replaced(r.replaced_by))
            }
            Event::SubscriberDisabled(e) => Subject::Subscriber(SubscriberEvent::Disabled(e)),
            Event::SubscriberEnabled(e) => Subject::Subscriber(SubscriberEvent::Enabled(e)),
            Event::SubscriberRecovered(e) => Subject::Subscriber(SubscriberEvent::Recovered(e)),
        }
    }

    /// The account the event concerns; chain events concern none.
    pub fn account(&self) -> Option<Uuid> {
        match self.subject() {
            Subject::Account(AccountEvent::Created(a)) => Some(a.account_id),
            Subject::Account(AccountEvent::Watched(a)) => Some(a.account_id),
            Subject::Account(AccountEvent::HandedOut(a)) => Some(a.account_id),
            Subject::Block(_) | Subject::BlockDisconnected(_) | Subject::Subscriber(_) => None,
            Subject::Deposit(d, _) => Some(d.account_id),
            Subject::Withdrawal(w, _) => Some(w.account_id),
        }
    }

    /// The deposit's state, for the `deposit.*` types.
    pub fn deposit(&self) -> Option<&Deposit> {
        match self.subject() {
            Subject::Deposit(d, _) => Some(d),
            _ => None,
        }
    }

    /// The withdrawal's state, for the `withdrawal.*` types.
    pub fn withdrawal(&self) -> Option<&Withdrawal> {
        match self.subject() {
            Subject::Withdrawal(w, _) => Some(w),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCreated {
    pub account_id: Uuid,
    pub label: String,
    pub credit_confirmations: u32,
    /// A derived account's canonical descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<String>,
    /// A derived account's look-ahead window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookahead: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressWatched {
    pub account_id: Uuid,
    pub address: String,
    /// Hex in the event's data.
    pub script_pubkey: ScriptBuf,
    /// The derivation index, for a derived account's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressHandedOut {
    pub account_id: Uuid,
    pub address: String,
    pub index: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConnected {
    pub height: u32,
    pub hash: BlockHash,
    pub prev_hash: BlockHash,
    pub time: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDisconnected {
    pub height: u32,
    pub hash: BlockHash,
}

/// `subscriber.disabled`: no more deliveries until it is enabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberDisabled {
    pub subscriber_id: Uuid,
    /// What the last attempt got (`HTTP 500`, `timed out`, `410 Gone: …`), and that the
    /// retry schedule was spent or the receiver unsubscribed.
    pub reason: String,
    /// Every matching event up to here was delivered; an enable goes on after it.
    pub cursor: i64,
    /// The event that could not be delivered.
    pub position: i64,
    /// Failed attempts at that event.
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// `subscriber.enabled`: a disabled subscriber delivers again, after `cursor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberEnabled {
    pub subscriber_id: Uuid,
    pub cursor: i64,
}

/// `subscriber.recovered`: the event at `position` was delivered after `failed_attempts`
/// failed ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberRecovered {
    pub subscriber_id: Uuid,
    pub position: i64,
    pub failed_attempts: i32,
}

/// A tracked transaction's state after its block left the chain, and which block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reorged<T> {
    #[serde(flatten)]
    pub state: T,
    pub orphaned_block_hash: BlockHash,
}

/// A tracked transaction's state once another spending the same input replaced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced<T> {
    #[serde(flatten)]
    pub state: T,
    pub replaced_by: Txid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_unique_name_that_parses_back() {
        let mut names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 22);
        assert!(EventType::SubscriberRecovered.is_operational());
        assert!(!EventType::DepositSeen.is_operational());
        assert_eq!(EventType::unfiltered().len(), 19);
        assert_eq!(EventType::DepositCreditReversed.category(), "deposit");
        assert_eq!(EventType::parse("deposit.confirmd"), None);
    }

    #[test]
    fn optional_fields_are_absent_not_null() {
        let plain = Event::AccountCreated(AccountCreated {
            account_id: Uuid::nil(),
            label: "alice".into(),
            credit_confirmations: 3,
            descriptor: None,
            lookahead: None,
        });
        let data = plain.to_data();
        assert_eq!(
            data,
            serde_json::json!({"account_id": Uuid::nil(), "label": "alice", "credit_confirmations": 3})
        );
        assert_eq!(
            Event::from_data(EventType::AccountCreated, &data).unwrap(),
            plain
        );
        let wrong = Event::from_data(EventType::BlockConnected, &data);
        assert!(wrong.is_err(), "{wrong:?}");
    }
}
