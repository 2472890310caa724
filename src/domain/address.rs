//! Watched addresses: parsed once, checked against the configured network, carried with
//! their scriptPubKey (what the follower matches outputs against).

use std::str::FromStr;

use bitcoin::{Address, Network, ScriptBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("`{0}` is not a valid Bitcoin address")]
    Invalid(String),
    #[error("`{address}` is not an address of the {network} network")]
    WrongNetwork { address: String, network: Network },
}

/// An address that parsed and belongs to the service's network.
#[derive(Clone, Debug)]
pub struct WatchedAddress {
    address: Address,
}

impl WatchedAddress {
    pub fn parse(s: &str, network: Network) -> Result<Self, AddressError> {
        let unchecked =
            Address::from_str(s.trim()).map_err(|_| AddressError::Invalid(s.to_string()))?;
        let address =
            unchecked
                .require_network(network)
                .map_err(|_| AddressError::WrongNetwork {
                    address: s.to_string(),
                    network,
                })?;
        Ok(WatchedAddress { address })
    }

    pub fn script_pubkey(&self) -> ScriptBuf {
        self.address.script_pubkey()
    }

    /// The canonical spelling (bech32 lower case), used as the key of the address.
    pub fn as_string(&self) -> String {
        self.address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regtest_accepts_base58_test_prefixes_and_bcrt() {
        let p2pkh = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn";
        assert!(WatchedAddress::parse(p2pkh, Network::Regtest).is_ok());
        let bcrt = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
        assert!(WatchedAddress::parse(bcrt, Network::Regtest).is_ok());
    }

    #[test]
    fn mainnet_address_is_wrong_network_on_regtest() {
        let err = WatchedAddress::parse("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", Network::Regtest)
            .unwrap_err();
        assert!(matches!(err, AddressError::WrongNetwork { .. }));
    }

    #[test]
    fn garbage_is_invalid() {
        let err = WatchedAddress::parse("not-an-address", Network::Regtest).unwrap_err();
        assert_eq!(err, AddressError::Invalid("not-an-address".into()));
    }
}
