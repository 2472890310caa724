//! The event catalogue (v1): type names, the stream naming scheme, the type filter used by
//! the tail, and [`NewEvent`], what the domain hands the store to append.

use serde_json::Value;
use uuid::Uuid;

pub const SCHEMA_VERSION: i16 = 1;

pub const ACCOUNT_CREATED: &str = "account.created";
pub const ADDRESS_WATCHED: &str = "address.watched";
pub const ADDRESS_HANDED_OUT: &str = "address.handed_out";
pub const BLOCK_CONNECTED: &str = "block.connected";
pub const BLOCK_DISCONNECTED: &str = "block.disconnected";
pub const DEPOSIT_SEEN: &str = "deposit.seen";
pub const DEPOSIT_CONFIRMED: &str = "deposit.confirmed";
pub const DEPOSIT_CREDITED: &str = "deposit.credited";
pub const DEPOSIT_FINAL: &str = "deposit.final";
pub const DEPOSIT_REORGED: &str = "deposit.reorged";
pub const DEPOSIT_CREDIT_REVERSED: &str = "deposit.credit_reversed";
pub const DEPOSIT_DROPPED: &str = "deposit.dropped";
pub const DEPOSIT_REPLACED: &str = "deposit.replaced";
pub const WITHDRAWAL_BROADCAST: &str = "withdrawal.broadcast";
pub const WITHDRAWAL_CONFIRMED: &str = "withdrawal.confirmed";
pub const WITHDRAWAL_FINAL: &str = "withdrawal.final";
pub const WITHDRAWAL_REORGED: &str = "withdrawal.reorged";
pub const WITHDRAWAL_DROPPED: &str = "withdrawal.dropped";
pub const WITHDRAWAL_REPLACED: &str = "withdrawal.replaced";

/// Every type a reader may name in a filter.
pub const ALL_TYPES: &[&str] = &[
    ACCOUNT_CREATED,
    ADDRESS_WATCHED,
    ADDRESS_HANDED_OUT,
    BLOCK_CONNECTED,
    BLOCK_DISCONNECTED,
    DEPOSIT_SEEN,
    DEPOSIT_CONFIRMED,
    DEPOSIT_CREDITED,
    DEPOSIT_FINAL,
    DEPOSIT_REORGED,
    DEPOSIT_CREDIT_REVERSED,
    DEPOSIT_DROPPED,
    DEPOSIT_REPLACED,
    WITHDRAWAL_BROADCAST,
    WITHDRAWAL_CONFIRMED,
    WITHDRAWAL_FINAL,
    WITHDRAWAL_REORGED,
    WITHDRAWAL_DROPPED,
    WITHDRAWAL_REPLACED,
];

pub const CHAIN_STREAM: &str = "chain";

pub fn account_stream(id: Uuid) -> String {
    format!("account-{id}")
}

pub fn withdrawal_stream(txid: &str) -> String {
    format!("withdrawal-{txid}")
}

pub fn deposit_stream(txid: &str, vout: u32) -> String {
    format!("deposit-{txid}:{vout}")
}

/// Namespace of the deterministic event ids (UUIDv5 of "<stream>/<version>").
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c1e_43c9_5f0b_4b8e_9d2a_2f61_c0de_1ed9);

pub fn event_id(stream: &str, version: i32) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{stream}/{version}").as_bytes(),
    )
}

/// An event not yet in the log. `expected_version` is the stream's current last version
/// (`None`: the stream must not exist yet); the store refuses the append otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub stream: String,
    pub expected_version: Option<i32>,
    pub kind: &'static str,
    pub data: Value,
    pub metadata: Value,
}

impl NewEvent {
    pub fn stream_version(&self) -> i32 {
        self.expected_version.map_or(0, |v| v + 1)
    }
}

/// A `types=` filter: exact names and `category.*` wildcards, checked against the catalogue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeFilter {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl TypeFilter {
    /// `None` for an absent or empty parameter (everything); an error names the unknown entry.
    pub fn parse(spec: Option<&str>) -> Result<Option<TypeFilter>, String> {
        let Some(spec) = spec.filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let mut filter = TypeFilter::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(category) = entry.strip_suffix(".*") {
                let prefix = format!("{category}.");
                if !ALL_TYPES.iter().any(|t| t.starts_with(&prefix)) {
                    return Err(format!("unknown event category `{entry}`"));
                }
                filter.prefixes.push(prefix);
            } else if ALL_TYPES.contains(&entry) {
                filter.exact.push(entry.to_string());
            } else {
                return Err(format!("unknown event type `{entry}`"));
            }
        }
        Ok(Some(filter))
    }

    pub fn matches(&self, kind: &str) -> bool {
        self.exact.iter().any(|e| e == kind)
            || self.prefixes.iter().any(|p| kind.starts_with(p.as_str()))
    }

    /// The full list of catalogue types this filter admits, for an `= ANY($1)` query.
    pub fn expand(&self) -> Vec<String> {
        ALL_TYPES
            .iter()
            .filter(|t| self.matches(t))
            .map(|t| t.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_per_stream_version() {
        assert_eq!(event_id("chain", 3), event_id("chain", 3));
        assert_ne!(event_id("chain", 3), event_id("chain", 4));
        assert_ne!(event_id("chain", 3), event_id("deposit-ab:0", 3));
    }

    #[test]
    fn type_filter_expands_wildcards_and_names_unknown_types() {
        let f = TypeFilter::parse(Some("deposit.*, block.connected"))
            .unwrap()
            .unwrap();
        assert!(f.matches("deposit.credit_reversed"));
        assert!(f.matches("block.connected"));
        assert!(!f.matches("block.disconnected"));
        assert_eq!(f.expand().len(), 9);
        assert_eq!(
            TypeFilter::parse(Some("deposit.confirmd")).unwrap_err(),
            "unknown event type `deposit.confirmd`"
        );
        assert!(TypeFilter::parse(Some("nope.*")).is_err());
        assert_eq!(TypeFilter::parse(Some("")).unwrap(), None);
    }
}
