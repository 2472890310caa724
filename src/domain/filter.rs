//! A `types=` filter of the tail, the SSE stream and subscribers: exact names and
//! `category.*` wildcards, checked against the catalogue.

use super::events::EventType;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeFilter {
    types: Vec<EventType>,
    /// The entries as given (trimmed), for display.
    entries: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("unknown event category `{0}`")]
    UnknownCategory(String),
    /// `,,,`, `a,` or `[""]`: an entry that names nothing would silently match nothing.
    #[error("an empty type name (a stray comma, or \"\" in a list): name types like deposit.seen or deposit.*")]
    EmptyEntry,
}

impl TypeFilter {
    /// `None` for an absent or blank parameter (everything); an error names the unknown
    /// entry, and an empty entry between commas is an error.
    pub fn parse(spec: Option<&str>) -> Result<Option<TypeFilter>, FilterError> {
        match spec.filter(|s| !s.trim().is_empty()) {
            None => Ok(None),
            Some(spec) => Self::from_entries(spec.split(',')).map(Some),
        }
    }

    /// A JSON list of entries (each may itself be a comma list): `[]` is everything, an
    /// empty entry is an error.
    pub fn parse_list(list: &[String]) -> Result<Option<TypeFilter>, FilterError> {
        if list.is_empty() {
            return Ok(None);
        }
        Self::from_entries(list.iter().flat_map(|e| e.split(','))).map(Some)
    }

    fn from_entries<'a>(entries: impl Iterator<Item = &'a str>) -> Result<TypeFilter, FilterError> {
        let mut types = Vec::new();
        let mut given = Vec::new();
        for entry in entries.map(str::trim) {
            if entry.is_empty() {
                return Err(FilterError::EmptyEntry);
            }
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
            given.push(entry.to_string());
        }
        types.sort();
        types.dedup();
        Ok(TypeFilter {
            types,
            entries: given,
        })
    }

    /// The entries as given, trimmed.
    pub fn entries(&self) -> &[String] {
        &self.entries
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

    #[test]
    fn an_empty_type_name_is_an_error_not_a_filter_matching_nothing() {
        for spec in [
            ",,,",
            "deposit.seen,",
            ",deposit.seen",
            "deposit.seen,,block.connected",
        ] {
            assert_eq!(
                TypeFilter::parse(Some(spec)),
                Err(FilterError::EmptyEntry),
                "{spec}"
            );
        }
        assert_eq!(
            TypeFilter::parse_list(&["".into()]),
            Err(FilterError::EmptyEntry)
        );
        assert_eq!(
            TypeFilter::parse_list(&["deposit.seen".into(), " ".into()]),
            Err(FilterError::EmptyEntry)
        );
        assert_eq!(TypeFilter::parse_list(&[]), Ok(None));
        let f = TypeFilter::parse_list(&["deposit.seen, block.*".into()])
            .unwrap()
            .unwrap();
        assert_eq!(f.entries(), ["deposit.seen", "block.*"]);
        assert!(f.matches(EventType::BlockDisconnected));
    }
}
