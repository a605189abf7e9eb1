//! Typed identifiers: keys, sessions, requests, chains and wallet addresses.
//!
//! Ids are opaque strings (UUIDv7, so they sort by creation time). A wallet
//! address is 20 bytes; it parses from `0x`-prefixed hex and, when the text is
//! mixed-case, must carry a valid EIP-55 checksum. It is stored and compared in
//! lower case and displayed with its checksum.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use sha3::{Digest, Keccak256};

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().simple().to_string())
            }

            /// Wraps an id received from outside. Ids are opaque, but they are
            /// bounded: 1 to 64 characters of `[A-Za-z0-9_-]`.
            pub fn parse(text: &str) -> Option<Self> {
                let ok = !text.is_empty()
                    && text.len() <= 64
                    && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                ok.then(|| Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A caller's own request id (`x-request-id`) we carry as a label: 1 to 64
/// characters of letters, digits and `-_.:` — nothing that could forge a
/// log line or carry a secret's worth of text.
pub fn is_client_request_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

opaque_id!(
    /// Identifies one Compose key.
    KeyId
);
opaque_id!(
    /// Identifies one SIWE session.
    SessionId
);
opaque_id!(
    /// Identifies one paid call; a charge is written at most once per request id.
    RequestId
);
opaque_id!(
    /// Identifies one budget lease: what one key actor incarnation on one
    /// gateway node took from its key's budget in the store.
    LeaseId
);
opaque_id!(
    /// Identifies one Studio account.
    AccountId
);
opaque_id!(
    /// Identifies one Studio project (of one account).
    ProjectId
);
opaque_id!(
    /// Identifies one Studio API key.
    ApiKeyId
);

/// An EVM chain id (EIP-155), e.g. 43113 for Avalanche Fuji.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChainId(pub u64);

impl ChainId {
    /// The value for a signed 64-bit database column; `None` if it does not fit.
    pub fn to_db(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 20-byte EVM account address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletAddress([u8; 20]);

/// Why a text is not a wallet address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("must be 0x followed by 40 hexadecimal digits")]
    Format,
    #[error("mixed-case address has an invalid EIP-55 checksum")]
    Checksum,
}

impl WalletAddress {
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lower-case `0x…` hex: the form the store keeps and compares.
    pub fn to_lower_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }

    /// The EIP-55 mixed-case checksum form.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = Keccak256::digest(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl FromStr for WalletAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .ok_or(AddressError::Format)?;
        if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AddressError::Format);
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| AddressError::Format)?;
        let address = WalletAddress(bytes);
        let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
        let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
        if has_lower && has_upper && address.to_checksum()[2..] != *digits {
            return Err(AddressError::Checksum);
        }
        Ok(address)
    }
}

impl fmt::Display for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

/// Addresses serialize in their EIP-55 checksum form.
impl Serialize for WalletAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_request_ids_are_short_and_plain() {
        assert!(is_client_request_id("req-2026_11.29:1"));
        assert!(!is_client_request_id(""));
        assert!(!is_client_request_id(&"a".repeat(65)));
        assert!(!is_client_request_id("two words"));
        assert!(!is_client_request_id("line\nbreak"));
        assert!(!is_client_request_id("{\"level\":\"ERROR\"}"));
    }

    // From EIP-55's own test vectors.
    const CHECKSUMMED: [&str; 4] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ];

    #[test]
    fn eip55_round_trips() {
        for text in CHECKSUMMED {
            let address: WalletAddress = text.parse().unwrap();
            assert_eq!(address.to_checksum(), text);
            let lower: WalletAddress = text.to_lowercase().parse().unwrap();
            assert_eq!(lower, address);
        }
    }

    #[test]
    fn bad_checksum_and_bad_format_are_refused() {
        assert_eq!(
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD".parse::<WalletAddress>(),
            Err(AddressError::Checksum)
        );
        for bad in [
            "",
            "0x",
            "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
            "0x5aaeb6053f3e94c9b9a09f33669435e7ef1bea",
            "0xzzaeb6053f3e94c9b9a09f33669435e7ef1beaed",
        ] {
            assert_eq!(
                bad.parse::<WalletAddress>(),
                Err(AddressError::Format),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_bounded() {
        assert!(KeyId::parse("abc_DEF-123").is_some());
        assert!(KeyId::parse("").is_none());
        assert!(KeyId::parse(&"a".repeat(65)).is_none());
        assert!(KeyId::parse("a/b").is_none());
        let a = KeyId::generate();
        let b = KeyId::generate();
        assert_ne!(a, b);
        assert_eq!(KeyId::parse(a.as_str()), Some(a));
    }
}
