//! `[leases]`: budget leases — the grace of a silent node, the chunk a
//! top-up takes, how often revocations are polled.

use serde::Deserialize;

use super::{within, SettingsError};

/// Budget leases (docs/leases.md): what each gateway node takes of a key's
/// budget at a time, and how long a silent node's leases last.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// A node that stopped renewing its leases (a crash) for this long has
    /// them taken back by the others.
    pub grace_ms: i64,
    /// A top-up takes this many of the calling request's maximum cost, so a
    /// hot key costs the store one update per this many calls.
    pub chunk_calls: u64,
    /// How often a node looks for keys it leases that were revoked or
    /// superseded through another node.
    pub revocation_poll_ms: u64,
}

impl LeaseSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        within("leases.grace_ms", self.grace_ms, 1_000, 86_400_000)?;
        within("leases.chunk_calls", self.chunk_calls, 1, 1_000_000)?;
        within(
            "leases.revocation_poll_ms",
            self.revocation_poll_ms,
            10,
            60_000,
        )
    }
}
