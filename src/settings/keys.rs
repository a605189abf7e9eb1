//! `[keys]`: Compose keys' lifetimes, budgets, names and creation rate.

use serde::Deserialize;

use super::{invalid, within, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub default_ttl_ms: i64,
    pub max_ttl_ms: i64,
    pub budget_max_atomic: u64,
    pub max_active_per_wallet: u32,
    pub name_max_chars: usize,
    /// Key creations (`POST /api/keys`) per client address and, apart, per
    /// wallet: a burst, then a sustained rate (429 past it, before the
    /// funding check reads the chain).
    pub create_burst: u32,
    pub create_per_s: u32,
}

impl KeySettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        within("keys.max_ttl_ms", self.max_ttl_ms, 1, i64::MAX)?;
        within(
            "keys.default_ttl_ms",
            self.default_ttl_ms,
            1,
            self.max_ttl_ms,
        )?;
        if ledger::Amount::from_atomic(self.budget_max_atomic).is_none() {
            return Err(invalid(
                "keys.budget_max_atomic",
                "is beyond the largest storable amount",
            ));
        }
        within("keys.create_burst", self.create_burst, 1, 1_000_000)?;
        within("keys.create_per_s", self.create_per_s, 1, 1_000_000)?;
        within(
            "keys.max_active_per_wallet",
            self.max_active_per_wallet,
            1,
            u32::MAX,
        )
    }
}
