//! `[workers]`: where the ledger pools run, and how many.

use serde::Deserialize;

use super::{within, SettingsError};

/// The worker pools (docs/queue.md): with RabbitMQ, what records paid calls'
/// charges from the queue.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// `serve` runs the ledger pools itself; `false` leaves them to
    /// `tollgate worker` processes.
    pub in_process: bool,
    /// Ledger pools (consumers) per process.
    pub ledger_pools: usize,
}

impl WorkerSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        within("workers.ledger_pools", self.ledger_pools, 1, 64)
    }
}
