//! `[store]`: the database URL and its connection pool.

use serde::Deserialize;

use super::{invalid, within, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub url: String,
    pub max_connections: u32,
}

impl StoreSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if ledger::store::Backend::of_url(&self.url).is_none() {
            return Err(invalid(
                "store.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        within("store.max_connections", self.max_connections, 1, 1_000)
    }
}
