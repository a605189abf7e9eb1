//! `[studio]`: Studio API keys — the secrets key, JWT and `pk` lifetimes,
//! keys per project.

use serde::Deserialize;

use super::{within, SettingsError};

/// Studio API keys (`/api/v1/apikeys`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudioSettings {
    /// 32-byte master key (hex) sealing `sk` values and keying lookups,
    /// created on first start when missing.
    pub secrets_key_file: String,
    /// Hex master key; only ever from the environment or a private file.
    #[serde(default)]
    pub secrets_key: Option<String>,
    /// How long a JWT from `/apikeys/{id}/token` lives (never past its key).
    pub jwt_ttl_ms: i64,
    /// `ttl` of `GET /apikeys/pk` when none is given, and the most allowed.
    pub pk_ttl_default_s: i64,
    pub pk_ttl_max_s: i64,
    /// Keys one project may hold.
    pub keys_per_project_max: u32,
    pub name_max_chars: usize,
}

impl StudioSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        within("studio.jwt_ttl_ms", self.jwt_ttl_ms, 1, i64::MAX)?;
        within("studio.pk_ttl_max_s", self.pk_ttl_max_s, 1, 365 * 86_400)?;
        within(
            "studio.pk_ttl_default_s",
            self.pk_ttl_default_s,
            1,
            self.pk_ttl_max_s,
        )?;
        within(
            "studio.keys_per_project_max",
            self.keys_per_project_max,
            1,
            u32::MAX,
        )?;
        within("studio.name_max_chars", self.name_max_chars, 1, usize::MAX)
    }
}
