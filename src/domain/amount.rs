//! Amounts: satoshis as an integer newtype; BTC only as a decimal string with 8 places.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Sats(pub u64);

impl Sats {
    /// `150_000_000` → `"1.50000000"`: always 8 places, never a float.
    pub fn to_btc_string(self) -> String {
        Decimal::from_i128_with_scale(i128::from(self.0), 8).to_string()
    }
}

/// A signed amount as a decimal string with 8 places: a balance can go below zero when a
/// withdrawal spends deposits not yet credited.
pub fn signed_btc_string(sats: i64) -> String {
    Decimal::from_i128_with_scale(i128::from(sats), 8).to_string()
}

impl From<bitcoin::Amount> for Sats {
    fn from(a: bitcoin::Amount) -> Self {
        Sats(a.to_sat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btc_strings_have_eight_places() {
        assert_eq!(Sats(150_000_000).to_btc_string(), "1.50000000");
        assert_eq!(Sats(1).to_btc_string(), "0.00000001");
        assert_eq!(Sats(0).to_btc_string(), "0.00000000");
        assert_eq!(
            Sats(2_100_000_000_000_000).to_btc_string(),
            "21000000.00000000"
        );
    }
}
