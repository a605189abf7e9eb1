//! `[http]`: the listeners, body bounds, shutdown and the `/metrics` token.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, within, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    pub workers: usize,
    pub json_body_max_bytes: usize,
    /// A request body must arrive whole within this long (408 otherwise).
    pub body_timeout_ms: u64,
    /// On shutdown, how long requests and calls in flight may take to
    /// finish (each stage), before the store closes.
    pub shutdown_timeout_ms: u64,
    /// A listener of its own for `/metrics`, `/healthz` and `/readyz`
    /// (`ADDRESS:PORT`); empty: `/metrics` is on `bind`.
    pub admin_bind: String,
    /// The bearer token `/metrics` asks for (compared in constant time;
    /// never logged). Unset: `/metrics` is open to whoever reaches it.
    #[serde(default)]
    pub metrics_token: Option<MetricsToken>,
    /// How often the store's gauges (charges and batches by status, paused
    /// chains) are read in the background; a scrape serves the latest read.
    pub metrics_refresh_ms: u64,
}

/// `http.metrics_token`: its `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct MetricsToken(pub String);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

impl HttpSettings {
    /// Checks the section; answers the address to bind.
    pub(super) fn validate(&self) -> Result<SocketAddr, SettingsError> {
        let bind = self.bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "http.bind",
                format!("must be ADDRESS:PORT, got {:?}", self.bind),
            )
        })?;
        within(
            "http.json_body_max_bytes",
            self.json_body_max_bytes,
            1,
            16 * 1024 * 1024,
        )?;
        within("http.body_timeout_ms", self.body_timeout_ms, 1, 600_000)?;
        within(
            "http.shutdown_timeout_ms",
            self.shutdown_timeout_ms,
            1,
            3_600_000,
        )?;
        if !self.admin_bind.is_empty() && self.admin_bind.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.admin_bind",
                format!("must be ADDRESS:PORT or empty, got {:?}", self.admin_bind),
            ));
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.0.len() < 16) {
            return Err(invalid(
                "http.metrics_token",
                "must be at least 16 characters when set",
            ));
        }
        within(
            "http.metrics_refresh_ms",
            self.metrics_refresh_ms,
            100,
            3_600_000,
        )?;
        Ok(bind)
    }
}
