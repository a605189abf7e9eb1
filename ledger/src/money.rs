//! Exact money: USDC atomic units (6 decimals; `1_000_000` = 1 USDC).
//!
//! [`Amount`] wraps a `u64` and offers only checked arithmetic. The store keeps
//! amounts in signed 64-bit columns, so every amount must also fit in `i64`;
//! [`Amount::MAX`] enforces that at construction. JSON carries amounts as
//! decimal strings and accepts non-negative integers as numbers or strings.

use std::fmt;

use serde::{Serialize, Serializer};

/// An amount of USDC in atomic units (10^-6 USDC). Never negative, never a float.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

/// Why a value could not become an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a whole number of USDC atomic units, not a fraction")]
    Fractional,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {max}", max = Amount::MAX.0)]
    TooLarge,
    #[error("must be a decimal integer (digits only)")]
    NotANumber,
}

impl Amount {
    pub const ZERO: Amount = Amount(0);
    /// The largest amount the store can hold (it uses signed 64-bit columns).
    pub const MAX: Amount = Amount(i64::MAX as u64);

    /// An amount from atomic units, `None` above [`Amount::MAX`].
    pub const fn from_atomic(atomic: u64) -> Option<Amount> {
        if atomic > Amount::MAX.0 {
            None
        } else {
            Some(Amount(atomic))
        }
    }

    pub const fn atomic(self) -> u64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).and_then(Amount::from_atomic)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `self - other`, or zero when `other` is larger.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// The value for a signed 64-bit database column. Never fails: [`Amount::MAX`]
    /// is `i64::MAX`.
    pub fn to_db(self) -> i64 {
        // The constructor keeps `self.0 <= i64::MAX`.
        debug_assert!(self.0 <= i64::MAX as u64);
        self.0 as i64
    }

    /// An amount read from a signed 64-bit database column.
    pub fn from_db(value: i64) -> Result<Amount, AmountError> {
        u64::try_from(value)
            .map(Amount)
            .map_err(|_| AmountError::Negative)
    }

    /// Parses a decimal string of digits, as the API and CLI accept it.
    pub fn parse_decimal(text: &str) -> Result<Amount, AmountError> {
        if text.is_empty() {
            return Err(AmountError::NotANumber);
        }
        if text.starts_with('-') && text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit())
        {
            return Err(AmountError::Negative);
        }
        if text.contains('.') {
            let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            if digits(whole) && digits(frac) && !frac.is_empty() {
                return Err(AmountError::Fractional);
            }
            return Err(AmountError::NotANumber);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotANumber);
        }
        // Any run of digits longer than u64 can hold is simply too large.
        let value: u64 = text.parse().map_err(|_| AmountError::TooLarge)?;
        Amount::from_atomic(value).ok_or(AmountError::TooLarge)
    }

    /// Reads an amount from a JSON value: an integer number or a decimal string.
    ///
    /// A JSON number that is not an integer (`1.5`, `1.0`, `1e6`) is refused;
    /// the float is only looked at to say *why*, never used as the value.
    pub fn from_json(value: &serde_json::Value) -> Result<Amount, AmountError> {
        match value {
            serde_json::Value::String(s) => Amount::parse_decimal(s),
            serde_json::Value::Number(n) => {
                if let Some(atomic) = n.as_u64() {
                    Amount::from_atomic(atomic).ok_or(AmountError::TooLarge)
                } else if n.is_i64() {
                    Err(AmountError::Negative)
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    if f < 0.0 {
                        Err(AmountError::Negative)
                    } else if f >= 9.2e18 {
                        Err(AmountError::TooLarge)
                    } else {
                        Err(AmountError::Fractional)
                    }
                }
            }
            _ => Err(AmountError::NotANumber),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Amounts serialize as decimal strings (`"1000000"`), as the API promises.
impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_digits_and_rejects_everything_else() {
        assert_eq!(Amount::parse_decimal("1000000"), Ok(Amount(1_000_000)));
        assert_eq!(Amount::parse_decimal("0"), Ok(Amount::ZERO));
        assert_eq!(Amount::parse_decimal("-5"), Err(AmountError::Negative));
        assert_eq!(Amount::parse_decimal("1.5"), Err(AmountError::Fractional));
        assert_eq!(Amount::parse_decimal("1e6"), Err(AmountError::NotANumber));
        assert_eq!(Amount::parse_decimal(" 1"), Err(AmountError::NotANumber));
        assert_eq!(Amount::parse_decimal(""), Err(AmountError::NotANumber));
        assert_eq!(
            Amount::parse_decimal("9223372036854775808"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            Amount::parse_decimal("99999999999999999999999"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            Amount::parse_decimal("9223372036854775807"),
            Ok(Amount::MAX)
        );
    }

    #[test]
    fn json_numbers_must_be_integers() {
        let num = |s: &str| Amount::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(num("42"), Ok(Amount(42)));
        assert_eq!(num("\"42\""), Ok(Amount(42)));
        assert_eq!(num("1.5"), Err(AmountError::Fractional));
        assert_eq!(num("1.0"), Err(AmountError::Fractional));
        assert_eq!(num("1e6"), Err(AmountError::Fractional));
        assert_eq!(num("-1"), Err(AmountError::Negative));
        assert_eq!(num("-1.5"), Err(AmountError::Negative));
        assert_eq!(num("18446744073709551616"), Err(AmountError::TooLarge));
        assert_eq!(num("9223372036854775808"), Err(AmountError::TooLarge));
        assert_eq!(num("null"), Err(AmountError::NotANumber));
        assert_eq!(num("true"), Err(AmountError::NotANumber));
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Amount::MAX.checked_add(Amount(1)), None);
        assert_eq!(Amount(1).checked_sub(Amount(2)), None);
        assert_eq!(Amount(5).saturating_sub(Amount(7)), Amount::ZERO);
        assert_eq!(Amount(5).checked_add(Amount(7)), Some(Amount(12)));
        assert_eq!(Amount::from_db(-1), Err(AmountError::Negative));
        assert_eq!(Amount::from_db(Amount::MAX.to_db()), Ok(Amount::MAX));
    }

    #[test]
    fn serializes_as_a_string() {
        let json = serde_json::to_string(&Amount(1_000_000)).unwrap();
        assert_eq!(json, "\"1000000\"");
    }
}
