//! `[auth]`: Sign-In with Ethereum, the signing key, sessions and sign-in
//! rate limits.

use serde::Deserialize;

use super::{list_or_csv, within, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The server's own domains (`host[:port]`): a SIWE message must name
    /// one, and its URI must be on one. Empty: the loopback names of the
    /// bound address (a non-loopback bind must configure them). From the
    /// environment as a comma-separated list.
    #[serde(deserialize_with = "list_or_csv")]
    pub siwe_domains: Vec<String>,
    /// Nonce requests and sign-ins per client address: a burst, then a
    /// sustained rate (429 past it).
    pub sign_in_burst: u32,
    pub sign_in_per_s: u32,
    pub signing_key_file: String,
    /// Hex seed; only ever from the environment or a private config file.
    #[serde(default)]
    pub signing_key: Option<String>,
    pub nonce_ttl_ms: i64,
    pub siwe_issued_at_max_age_ms: i64,
    pub clock_skew_ms: i64,
    pub session_ttl_ms: i64,
}

impl AuthSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        for (name, value) in [
            ("auth.nonce_ttl_ms", self.nonce_ttl_ms),
            (
                "auth.siwe_issued_at_max_age_ms",
                self.siwe_issued_at_max_age_ms,
            ),
            ("auth.clock_skew_ms", self.clock_skew_ms),
            ("auth.session_ttl_ms", self.session_ttl_ms),
        ] {
            within(name, value, 1, i64::MAX)?;
        }
        within("auth.sign_in_burst", self.sign_in_burst, 1, u32::MAX)?;
        within("auth.sign_in_per_s", self.sign_in_per_s, 1, u32::MAX)
    }
}
