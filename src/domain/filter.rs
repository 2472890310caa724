//! A `types=` filter of the tail, the SSE stream and subscribers: exact names and
//! `category.*` wildcards, checked against the catalogue.

use super::events::EventType;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeFilter {
    types: Vec<EventType>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("unknown event category `{0}`")]
    UnknownCategory(String),
}

impl TypeFilter {
    /// `None` for an absent or empty parameter (everything); an error names the unknown entry.
    pub fn parse(spec: Option<&str>) -> Result<Option<TypeFilter>, FilterError> {
        let Some(spec) = spec.filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let mut types = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some(category) = entry.strip_suffix(".*") {
                let matching: Vec<EventType> = EventType::ALL
                    .iter()
                    .copied()
                    .filter(|t| t.category() == category)
                    .collect();
                if matching.is_empty() {
                    return Err(FilterError::UnknownCategory(entry.to_string()));
                }
                types.extend(matching);
            } else {
                types.push(
                    EventType::parse(entry)
                        .ok_or_else(|| FilterError::UnknownType(entry.to_string()))?,
                );
            }
        }
        types.sort();
        types.dedup();
        Ok(Some(TypeFilter { types }))
    }

    pub fn matches(&self, kind: EventType) -> bool {
        self.types.contains(&kind)
    }

    /// The catalogue types this filter admits, by name, in catalogue order (for an
    /// `= ANY($1)` query).
    pub fn expand(&self) -> Vec<String> {
        self.types.iter().map(|t| t.as_str().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filter_expands_wildcards_and_names_unknown_types() {
        let f = TypeFilter::parse(Some("deposit.*, block.connected"))
            .unwrap()
            .unwrap();
        assert!(f.matches(EventType::DepositCreditReversed));
        assert!(f.matches(EventType::BlockConnected));
        assert!(!f.matches(EventType::BlockDisconnected));
        assert_eq!(f.expand().len(), 9);
        assert_eq!(
            TypeFilter::parse(Some("deposit.confirmd")).unwrap_err(),
            FilterError::UnknownType("deposit.confirmd".into())
        );
        assert_eq!(
            TypeFilter::parse(Some("deposit.confirmd"))
                .unwrap_err()
                .to_string(),
            "unknown event type `deposit.confirmd`"
        );
        assert!(TypeFilter::parse(Some("nope.*")).is_err());
        assert_eq!(TypeFilter::parse(Some("")).unwrap(), None);
    }
}
