//! Accounts' decisions: creating one, watching an address, handing out a derived address,
//! and keeping a derived account's look-ahead window `lookahead` indexes past the highest
//! one handed out or paid. The window only grows, and only by `address.watched` events,
//! so the watched set stays a function of the log.

use bitcoin::ScriptBuf;
use serde_json::Value;
use uuid::Uuid;

use super::descriptor::{AccountDescriptor, Derived, DescriptorError};
use super::events::{AccountCreated, AddressHandedOut, AddressWatched, Event};
use super::stream::{NewEvent, StreamName};

/// An account as stored (the `accounts` projection), with its stream's last version.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: Uuid,
    pub version: i32,
    /// Derived accounts only.
    pub descriptor: Option<AccountDescriptor>,
    pub lookahead: u32,
    /// Indexes below this are watched.
    pub watched_to: u32,
    /// Indexes below this were handed out.
    pub handed_out: u32,
}

/// The events of a new account: `account.created` and, for a derived one, the
/// `address.watched` of its first window.
pub fn create(
    id: Uuid,
    label: String,
    credit_confirmations: u32,
    derived: Option<(&AccountDescriptor, u32)>,
    metadata: &Value,
) -> Result<Vec<NewEvent>, DescriptorError> {
    let created = NewEvent {
        stream: StreamName::account(id),
        expected_version: None,
        event: Event::AccountCreated(AccountCreated {
            account_id: id,
            label,
            credit_confirmations,
            descriptor: derived.map(|(d, _)| d.canonical()),
            lookahead: derived.map(|(_, l)| l),
        }),
        metadata: metadata.clone(),
    };
    let Some((descriptor, lookahead)) = derived else {
        return Ok(vec![created]);
    };
    let account = Account {
        id,
        version: 0,
        descriptor: Some(descriptor.clone()),
        lookahead,
        watched_to: 0,
        handed_out: 0,
    };
    let mut events = vec![created];
    events.extend(account.window_to(lookahead, metadata)?.0);
    Ok(events)
}

impl Account {
    /// `address.watched` for an address given to the API.
    pub fn watch(&self, address: String, script_pubkey: ScriptBuf, metadata: &Value) -> NewEvent {
        NewEvent {
            stream: StreamName::account(self.id),
            expected_version: Some(self.version),
            event: Event::AddressWatched(AddressWatched {
                account_id: self.id,
                address,
                script_pubkey,
                index: None,
            }),
            metadata: metadata.clone(),
        }
    }

    /// `{"derive": true}`: the next index never handed out, with the window moved
    /// `lookahead` past it and `address.handed_out` recording it.
    pub fn hand_out(&self, metadata: &Value) -> Result<(Vec<NewEvent>, Derived), HandOutError> {
        let descriptor = self.descriptor.as_ref().ok_or(HandOutError::NotDerived)?;
        let index = self.handed_out;
        let derived = descriptor.derive(index)?;
        let (mut events, version) = self.window_to(index + 1 + self.lookahead, metadata)?;
        events.push(NewEvent {
            stream: StreamName::account(self.id),
            expected_version: Some(version),
            event: Event::AddressHandedOut(AddressHandedOut {
                account_id: self.id,
                address: derived.address.clone(),
                index,
            }),
            metadata: metadata.clone(),
        });
        Ok((events, derived))
    }

    /// The `address.watched` events that keep the window `lookahead` past `paid_index`,
    /// an index a deposit just paid (none when the window reaches far enough already).
    pub fn extend_window(
        &self,
        paid_index: u32,
        metadata: &Value,
    ) -> Result<Vec<NewEvent>, DescriptorError> {
        Ok(self.window_to(paid_index + 1 + self.lookahead, metadata)?.0)
    }

    /// `address.watched` for the indexes `watched_to..need`, chained on the account's
    /// stream; and the stream's version after them.
    fn window_to(
        &self,
        need: u32,
        metadata: &Value,
    ) -> Result<(Vec<NewEvent>, i32), DescriptorError> {
        let Some(descriptor) = &self.descriptor else {
            return Ok((Vec::new(), self.version));
        };
        let mut version = self.version;
        let mut events = Vec::new();
        for index in self.watched_to..need {
            let d = descriptor.derive(index)?;
            events.push(NewEvent {
                stream: StreamName::account(self.id),
                expected_version: Some(version),
                event: Event::AddressWatched(AddressWatched {
                    account_id: self.id,
                    address: d.address,
                    script_pubkey: d.script_pubkey,
                    index: Some(index),
                }),
                metadata: metadata.clone(),
            });
            version += 1;
        }
        Ok((events, version))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandOutError {
    #[error("this account has no xpub or descriptor to derive from")]
    NotDerived,
    #[error(transparent)]
    Descriptor(#[from] DescriptorError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tpub() -> String {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let master =
            bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[1; 32]).unwrap();
        bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string()
    }

    #[test]
    fn a_derived_account_watches_its_window_and_handing_out_moves_it() {
        let d =
            AccountDescriptor::from_xpub(&tpub(), None, None, bitcoin::Network::Regtest).unwrap();
        let meta = json!({"source": "test"});
        let id = Uuid::nil();
        let created = create(id, "bob".into(), 3, Some((&d, 2)), &meta).unwrap();
        let versions: Vec<Option<i32>> = created.iter().map(|e| e.expected_version).collect();
        assert_eq!(versions, [None, Some(0), Some(1)]);
        let account = Account {
            id,
            version: 2,
            descriptor: Some(d.clone()),
            lookahead: 2,
            watched_to: 2,
            handed_out: 0,
        };
        let (events, derived) = account.hand_out(&meta).unwrap();
        assert_eq!(derived.index, 0);
        // Window to 0 + 1 + 2 = 3: index 2 watched, then handed_out.
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.event.kind().as_str(), e.expected_version))
            .collect();
        assert_eq!(
            kinds,
            [
                ("address.watched", Some(2)),
                ("address.handed_out", Some(3))
            ]
        );
        assert_eq!(
            account.extend_window(0, &meta).unwrap().len(),
            1,
            "index 2 only"
        );
        assert!(account.extend_window(0, &meta).unwrap()[0].expected_version == Some(2));
        let wide = Account {
            watched_to: 3,
            ..account.clone()
        };
        assert!(
            wide.extend_window(0, &meta).unwrap().is_empty(),
            "window far enough"
        );
        assert_eq!(account.extend_window(5, &meta).unwrap().len(), 6);
        let plain = Account {
            descriptor: None,
            ..account
        };
        assert!(matches!(
            plain.hand_out(&meta),
            Err(HandOutError::NotDerived)
        ));
    }
}
