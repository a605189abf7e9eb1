//! `[settlement]`: the settlement mode, its pace and batch size, and the
//! bounds on held-back and unsettled payers.

use serde::Deserialize;

use super::{within, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementSettings {
    pub mode: SettlementMode,
    /// How often recorded charges are settled (each pass settles all of
    /// them, in batches).
    pub interval_ms: u64,
    /// The most charges one batch (one store transaction) settles.
    pub batch_max_charges: i64,
    /// `evm`: the longest a held-back payer waits between two checks of its
    /// funds (the wait doubles from `interval_ms` up to this).
    pub held_back_recheck_max_ms: i64,
    /// `evm`: `tollgate reconcile` fails when a payer has been held back
    /// longer than this (money was served that the chain may never collect).
    pub held_back_alert_ms: i64,
    /// `evm`: the most a payer may owe unsettled plus hold in leases at once
    /// (0: no bound beyond its funds on chain).
    pub payer_unsettled_max_atomic: i64,
}

impl SettlementSettings {
    /// [`SettlementSettings::payer_unsettled_max_atomic`] as an amount
    /// (validated at load: never negative).
    pub fn payer_unsettled_max(&self) -> ledger::Amount {
        u64::try_from(self.payer_unsettled_max_atomic)
            .ok()
            .and_then(ledger::Amount::from_atomic)
            .unwrap_or(ledger::Amount::ZERO)
    }
}

/// How charges settle (docs/settlement.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettlementMode {
    /// Prepaid balances credited by an operator.
    Ledger,
    /// The settlement contract on each key's chain.
    Evm,
}

impl SettlementSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        within("settlement.interval_ms", self.interval_ms, 10, 3_600_000)?;
        within(
            "settlement.batch_max_charges",
            self.batch_max_charges,
            1,
            ledger::store::settlement::LEDGER_BATCH_MAX,
        )?;
        within(
            "settlement.held_back_recheck_max_ms",
            self.held_back_recheck_max_ms,
            10,
            86_400_000,
        )?;
        within(
            "settlement.held_back_alert_ms",
            self.held_back_alert_ms,
            0,
            i64::MAX / 2,
        )?;
        within(
            "settlement.payer_unsettled_max_atomic",
            self.payer_unsettled_max_atomic,
            0,
            i64::MAX,
        )?;
        Ok(())
    }
}
