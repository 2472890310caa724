//! Accounts that derive their addresses: an output descriptor with one wildcard
//! (`wpkh(tpub…/0/*)`, parsed and derived by the `miniscript` crate), or a BIP32 xpub/tpub
//! with a derivation template and script type, which is turned into such a descriptor.

use std::str::FromStr;

use bitcoin::{Network, NetworkKind, ScriptBuf};
use miniscript::descriptor::{Descriptor, DescriptorPublicKey, Wildcard};
use miniscript::ForEachKey;

/// Addresses watched beyond the highest one handed out or paid, by default.
pub const DEFAULT_LOOKAHEAD: u32 = 20;
pub const MAX_LOOKAHEAD: u32 = 1000;
/// BIP32 keeps a key's depth in one byte: no key derives deeper than this (miniscript
/// panics past it, so the depth is checked before anything is derived).
pub const MAX_DEPTH: usize = 255;

/// Why a descriptor or xpub cannot serve an account, or an index cannot be derived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DescriptorError(String);

impl From<String> for DescriptorError {
    fn from(message: String) -> Self {
        DescriptorError(message)
    }
}

impl From<&str> for DescriptorError {
    fn from(message: &str) -> Self {
        DescriptorError(message.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct AccountDescriptor {
    desc: Descriptor<DescriptorPublicKey>,
    network: Network,
}

/// One derived address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub index: u32,
    pub address: String,
    pub script_pubkey: ScriptBuf,
}

impl AccountDescriptor {
    /// A descriptor with exactly one wildcard step, non-hardened, over keys of `network`;
    /// a checksum (`#…`), when present, must be right.
    pub fn parse(s: &str, network: Network) -> Result<Self, DescriptorError> {
        let desc = Descriptor::<DescriptorPublicKey>::from_str(s.trim())
            .map_err(|e| format!("not a valid output descriptor: {e}"))?;
        desc.sanity_check()
            .map_err(|e| format!("not a sane descriptor: {e}"))?;
        if desc.is_multipath() {
            return Err("multipath descriptors (<0;1>) are not supported: give one path".into());
        }
        if !desc.has_wildcard() {
            return Err("the descriptor has no wildcard (`/*`) to derive addresses from".into());
        }
        let want = NetworkKind::from(network);
        let mut wrong = None;
        let mut hardened = false;
        let mut too_deep = None;
        desc.for_each_key(|k| {
            if let DescriptorPublicKey::XPub(x) = k {
                if x.xkey.network != want {
                    wrong = Some(x.xkey.to_string());
                }
                let steps = x.derivation_path.len() + usize::from(x.wildcard != Wildcard::None);
                if usize::from(x.xkey.depth) + steps > MAX_DEPTH {
                    too_deep = Some((x.xkey.depth, steps));
                }
                hardened |= x.wildcard == Wildcard::Hardened
                    || x.derivation_path.into_iter().any(|c| c.is_hardened());
            }
            true
        });
        if let Some((depth, steps)) = too_deep {
            return Err(format!(
                "derivation: the key is at depth {depth} and the path adds {steps} steps; \
                 BIP32 derives no deeper than {MAX_DEPTH}"
            )
            .into());
        }
        if hardened {
            return Err(
                "hardened steps after a public key cannot be derived without the private key"
                    .into(),
            );
        }
        if let Some(key) = wrong {
            return Err(format!(
                "the key {}… is not for the {network} network (tpub for test networks, xpub for mainnet)",
                &key[..12.min(key.len())]
            )
            .into());
        }
        let this = AccountDescriptor { desc, network };
        this.derive(0)?; // hardened wildcards and address-less scripts fail here
        Ok(this)
    }

    /// An xpub/tpub with a derivation template (default `0/*`: the receive chain) and a
    /// script type: `p2pkh` (default), `p2wpkh`, `p2sh-p2wpkh` or `p2tr`.
    pub fn from_xpub(
        xpub: &str,
        template: Option<&str>,
        script_type: Option<&str>,
        network: Network,
    ) -> Result<Self, DescriptorError> {
        let template = template.unwrap_or("0/*").trim().trim_start_matches("m/");
        if template.is_empty()
            || !template
                .chars()
                .all(|c| c.is_ascii_digit() || c == '/' || c == '*')
            || template.matches('*').count() != 1
            || !template.ends_with('*')
        {
            return Err("derivation: a non-hardened path ending in one wildcard, like 0/*".into());
        }
        // Only base58 here: the key is pasted into a descriptor, whose syntax (`)`, `,`,
        // `[origin]`) must not come from this field.
        let xpub = xpub.trim();
        if xpub.is_empty() || !xpub.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("not a base58 extended public key (xpub…, tpub…)".into());
        }
        let key = format!("{xpub}/{template}");
        let spec = match script_type.unwrap_or("p2pkh") {
            "p2pkh" => format!("pkh({key})"),
            "p2wpkh" => format!("wpkh({key})"),
            "p2sh-p2wpkh" => format!("sh(wpkh({key}))"),
            "p2tr" => format!("tr({key})"),
            other => {
                return Err(format!(
                    "script_type: `{other}` is not one of p2pkh, p2wpkh, p2sh-p2wpkh, p2tr"
                )
                .into())
            }
        };
        Self::parse(&spec, network)
    }

    /// The extended public keys it derives from (base58, as an xpub/tpub is written), in
    /// the order they appear: how a Bitcart wallet (an xpub) finds its accounts.
    pub fn xpubs(&self) -> Vec<String> {
        let mut keys = Vec::new();
        self.desc.for_each_key(|k| {
            if let DescriptorPublicKey::XPub(x) = k {
                keys.push(x.xkey.to_string());
            }
            true
        });
        keys
    }

    /// The canonical spelling, with its checksum.
    pub fn canonical(&self) -> String {
        self.desc.to_string()
    }

    pub fn derive(&self, index: u32) -> Result<Derived, DescriptorError> {
        if index >= 1 << 31 {
            return Err(format!("index {index} is beyond the non-hardened range").into());
        }
        let definite = self
            .desc
            .at_derivation_index(index)
            .map_err(|e| format!("cannot derive index {index}: {e}"))?;
        let address = definite
            .address(self.network)
            .map_err(|e| format!("the descriptor has no address form: {e}"))?;
        Ok(Derived {
            index,
            address: address.to_string(),
            script_pubkey: address.script_pubkey(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::bip32::{ChildNumber, Xpub};
    use bitcoin::secp256k1::Secp256k1;
    use bitcoin::{Address, CompressedPublicKey};

    // BIP32 test vector 1: the public keys of m/0H/1/2H/2 and m/0H/1/2H/2/1000000000.
    const PARENT: &str = "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV";
    const CHILD: &str = "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy";

    #[test]
    fn derives_what_the_bip32_vectors_and_the_bitcoin_crate_say() {
        let child = Xpub::from_str(CHILD).unwrap();
        let parent = Xpub::from_str(PARENT).unwrap();
        let by_crate = parent
            .derive_pub(
                &Secp256k1::new(),
                &[ChildNumber::from_normal_idx(1_000_000_000).unwrap()],
            )
            .unwrap();
        assert_eq!(by_crate, child, "the bitcoin crate reproduces the vector");
        let key = CompressedPublicKey(child.public_key);
        for (script_type, expected) in [
            ("p2pkh", Address::p2pkh(key, Network::Bitcoin)),
            ("p2wpkh", Address::p2wpkh(&key, Network::Bitcoin)),
            ("p2sh-p2wpkh", Address::p2shwpkh(&key, Network::Bitcoin)),
        ] {
            let d = AccountDescriptor::from_xpub(
                PARENT,
                Some("*"),
                Some(script_type),
                Network::Bitcoin,
            )
            .unwrap();
            assert_eq!(
                d.derive(1_000_000_000).unwrap().address,
                expected.to_string(),
                "{script_type}"
            );
        }
        // The same through a descriptor string, and through a two-step template.
        let d = AccountDescriptor::parse(&format!("wpkh({PARENT}/*)"), Network::Bitcoin).unwrap();
        assert_eq!(
            d.derive(1_000_000_000).unwrap().address,
            Address::p2wpkh(&key, Network::Bitcoin).to_string()
        );
        assert!(
            d.canonical().contains('#'),
            "canonical form carries a checksum"
        );
        let grand = by_crate
            .derive_pub(
                &Secp256k1::new(),
                &[
                    ChildNumber::from_normal_idx(0).unwrap(),
                    ChildNumber::from_normal_idx(5).unwrap(),
                ],
            )
            .unwrap();
        let d = AccountDescriptor::from_xpub(CHILD, Some("0/*"), None, Network::Bitcoin).unwrap();
        assert_eq!(
            d.derive(5).unwrap().address,
            Address::p2pkh(CompressedPublicKey(grand.public_key), Network::Bitcoin).to_string()
        );
    }

    #[test]
    fn refuses_what_cannot_derive_addresses_of_this_network() {
        let err = |r: Result<AccountDescriptor, DescriptorError>| r.unwrap_err().to_string();
        assert!(err(AccountDescriptor::from_xpub(
            PARENT,
            None,
            None,
            Network::Regtest
        ))
        .contains("network"));
        assert!(err(AccountDescriptor::parse(
            &format!("wpkh({PARENT}/0)"),
            Network::Bitcoin
        ))
        .contains("wildcard"));
        assert!(err(AccountDescriptor::parse(
            &format!("wpkh({PARENT}/*')"),
            Network::Bitcoin
        ))
        .contains("hardened"));
        assert!(
            err(AccountDescriptor::parse("wpkh(nonsense)", Network::Bitcoin))
                .contains("descriptor")
        );
        assert!(err(AccountDescriptor::from_xpub(
            PARENT,
            Some("0'/*"),
            None,
            Network::Bitcoin
        ))
        .starts_with("derivation"));
        assert!(err(AccountDescriptor::from_xpub(
            PARENT,
            None,
            Some("p2sh"),
            Network::Bitcoin
        ))
        .starts_with("script_type"));
        let good =
            AccountDescriptor::parse(&format!("wpkh({PARENT}/*)"), Network::Bitcoin).unwrap();
        let canonical = good.canonical();
        let mut bad_sum = canonical.clone();
        bad_sum.pop();
        bad_sum.push(if canonical.ends_with('q') { 'p' } else { 'q' });
        assert!(
            AccountDescriptor::parse(&bad_sum, Network::Bitcoin).is_err(),
            "checksum checked"
        );
        assert!(good.derive(1 << 31).is_err());
        // A key field cannot smuggle in descriptor syntax.
        let smuggled = format!("{PARENT}/0/*),pkh({CHILD}");
        assert!(err(AccountDescriptor::from_xpub(
            &smuggled,
            None,
            None,
            Network::Bitcoin
        ))
        .contains("base58"));
    }

    #[test]
    fn a_path_deeper_than_bip32_allows_is_refused_before_deriving() {
        // PARENT is at depth 4: 250 steps and the wildcard reach 255, one more is too deep.
        let path = |steps: usize| vec!["0"; steps].join("/") + "/*";
        let err = AccountDescriptor::from_xpub(PARENT, Some(&path(251)), None, Network::Bitcoin)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("derivation:") && err.contains("255"),
            "{err}"
        );
        let err =
            AccountDescriptor::parse(&format!("wpkh({PARENT}/{})", path(255)), Network::Bitcoin)
                .unwrap_err();
        assert!(err.to_string().starts_with("derivation:"), "{err}");
        let deepest =
            AccountDescriptor::from_xpub(PARENT, Some(&path(250)), None, Network::Bitcoin).unwrap();
        assert!(deepest.derive(7).is_ok());
    }

    #[test]
    fn names_its_extended_keys_as_written_whatever_the_origin_and_path() {
        let d = AccountDescriptor::parse(
            &format!("sh(wpkh([d34db33f/84h/0h/0h]{CHILD}/0/*))"),
            Network::Bitcoin,
        )
        .unwrap();
        assert_eq!(d.xpubs(), [CHILD]);
        let multi = AccountDescriptor::parse(
            &format!("wsh(sortedmulti(1,{PARENT}/0/*,{CHILD}/0/*))"),
            Network::Bitcoin,
        )
        .unwrap();
        assert_eq!(multi.xpubs(), [PARENT, CHILD]);
    }
}
