//! `[chains.ID]`: one table per chain, and what the `evm` settlement mode
//! builds of it (the chain client's set-up, checked at load).

use ledger::ChainId;
use serde::Deserialize;

use super::{invalid, within, SettingsError};

/// One `[chains.ID]` table. The `evm` mode needs everything but `name`
/// set for each chain (`tollgate devnet` writes such a table).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    pub name: String,
    /// The chain's JSON-RPC endpoint (http/https).
    #[serde(default)]
    pub rpc_url: Option<String>,
    /// The USDC token's address.
    #[serde(default)]
    pub usdc: Option<String>,
    /// The settlement contract (`workers/contracts/TollgateSettlement.sol`).
    #[serde(default)]
    pub settlement_contract: Option<String>,
    /// Where settled USDC goes; must equal the contract's `treasury`.
    #[serde(default)]
    pub treasury: Option<String>,
    /// The operator's private key (hex): only from the environment or a
    /// private file; or `operator_key_file` naming a file that holds it.
    #[serde(default)]
    pub operator_key: Option<String>,
    #[serde(default)]
    pub operator_key_file: Option<String>,
    /// Blocks a receipt needs (its own included) before a batch counts as
    /// settled.
    #[serde(default = "one_u64")]
    pub confirmations: u64,
    /// Blocks a receipt needs (its own included) before its batch is final:
    /// until then the batch is `confirming`, its charges `batched`, and a
    /// reorg that loses the receipt sends the batch again. Unset: the same
    /// as `confirmations` (the default chain, Avalanche, is final once a
    /// block is accepted; set it on chains that reorganise).
    #[serde(default)]
    pub finality_confirmations: Option<u64>,
    /// A batch closes with this many payers …
    #[serde(default = "batch_max_payers_default")]
    pub batch_max_payers: usize,
    /// … or when its oldest charge is this old.
    #[serde(default = "batch_max_age_ms_default")]
    pub batch_max_age_ms: i64,
    /// A settlement transaction not mined in this long is replaced at the
    /// same nonce with higher fees.
    #[serde(default = "replace_after_ms_default")]
    pub replace_after_ms: i64,
    /// Every RPC call is bounded by this.
    #[serde(default = "rpc_timeout_ms_default")]
    pub rpc_timeout_ms: u64,
    /// The block settlement logs are searched from (the contract's
    /// deployment block).
    #[serde(default)]
    pub from_block: u64,
}

impl std::fmt::Debug for ChainSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSettings")
            .field("name", &self.name)
            .field("rpc_url", &self.rpc_url)
            .field("usdc", &self.usdc)
            .field("settlement_contract", &self.settlement_contract)
            .field("treasury", &self.treasury)
            .field(
                "operator_key",
                &self.operator_key.as_ref().map(|_| "<secret>"),
            )
            .field("operator_key_file", &self.operator_key_file)
            .finish_non_exhaustive()
    }
}

fn one_u64() -> u64 {
    1
}
fn batch_max_payers_default() -> usize {
    100
}
fn batch_max_age_ms_default() -> i64 {
    10_000
}
fn replace_after_ms_default() -> i64 {
    30_000
}
fn rpc_timeout_ms_default() -> u64 {
    10_000
}

impl ChainSettings {
    /// The chain client's set-up for chain `id` in the `evm` mode; an error
    /// names the first missing or bad setting.
    pub fn evm_config(&self, id: ChainId) -> Result<workers::evm::ChainConfig, SettingsError> {
        let table = ChainTable(id);
        let rpc_url = table.required(self.rpc_url.as_deref(), "rpc_url")?;
        if !(rpc_url.starts_with("http://") || rpc_url.starts_with("https://")) {
            return Err(invalid(
                table.setting("rpc_url"),
                "must be an http(s):// URL",
            ));
        }
        let operator_key = self.operator_key(table)?;
        let finality_confirmations = self.checked_finality(table)?;
        let config = workers::evm::ChainConfig {
            chain_id: id.0,
            rpc_url,
            usdc: table.address(self.usdc.as_deref(), "usdc")?,
            settlement_contract: table
                .address(self.settlement_contract.as_deref(), "settlement_contract")?,
            treasury: table.address(self.treasury.as_deref(), "treasury")?,
            operator_key,
            confirmations: self.confirmations,
            finality_confirmations,
            rpc_timeout: std::time::Duration::from_millis(self.rpc_timeout_ms),
            from_block: self.from_block,
        };
        // The key must be a key (checked here, so a typo stops start-up).
        workers::evm::ChainClient::new(config.clone())
            .map_err(|e| invalid(table.setting("operator_key"), e.to_string()))?;
        Ok(config)
    }

    /// The operator's key, from `operator_key` or else `operator_key_file`.
    /// Only processes that settle need it (checked where settlers start); a
    /// gateway reads balances and allowances without it.
    fn operator_key(&self, table: ChainTable) -> Result<Option<String>, SettingsError> {
        Ok(match (&self.operator_key, &self.operator_key_file) {
            (Some(key), _) if !key.trim().is_empty() => Some(key.trim().to_owned()),
            (_, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| {
                        invalid(table.setting("operator_key_file"), format!("{file}: {e}"))
                    })?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        })
    }

    /// Checks the table's counts and durations; answers the confirmations
    /// a receipt needs to be final (never fewer than `confirmations`).
    fn checked_finality(&self, table: ChainTable) -> Result<u64, SettingsError> {
        within(
            &table.setting("confirmations"),
            self.confirmations,
            1,
            1_000,
        )?;
        let finality_confirmations = self.finality_confirmations.unwrap_or(self.confirmations);
        within(
            &table.setting("finality_confirmations"),
            finality_confirmations,
            self.confirmations,
            10_000,
        )?;
        within(
            &table.setting("batch_max_payers"),
            self.batch_max_payers,
            1,
            ledger::store::chain::EVM_BATCH_PAYERS_MAX,
        )?;
        within(
            &table.setting("batch_max_age_ms"),
            self.batch_max_age_ms,
            0,
            86_400_000,
        )?;
        within(
            &table.setting("replace_after_ms"),
            self.replace_after_ms,
            100,
            3_600_000,
        )?;
        within(
            &table.setting("rpc_timeout_ms"),
            self.rpc_timeout_ms,
            100,
            300_000,
        )?;
        Ok(finality_confirmations)
    }
}

/// One `[chains.ID]` table, naming its settings in errors.
#[derive(Debug, Clone, Copy)]
struct ChainTable(ChainId);

impl ChainTable {
    /// `chains.ID.NAME`.
    fn setting(self, name: &str) -> String {
        format!("chains.{}.{name}", self.0 .0)
    }

    /// A value the `evm` mode needs, trimmed.
    fn required(self, value: Option<&str>, name: &str) -> Result<String, SettingsError> {
        value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(
                    self.setting(name),
                    "must be set in the \"evm\" settlement mode",
                )
            })
    }

    /// A required value that must be an address.
    fn address(
        self,
        value: Option<&str>,
        name: &str,
    ) -> Result<workers::evm::Address, SettingsError> {
        let text = self.required(value, name)?;
        text.parse::<workers::evm::Address>()
            .map_err(|_| invalid(self.setting(name), format!("is not an address: {text:?}")))
    }
}

/// A `[chains.ID]` table's name: a chain id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ChainKey(pub ChainId);

impl TryFrom<String> for ChainKey {
    type Error = String;

    fn try_from(id: String) -> Result<ChainKey, String> {
        match id.parse::<u64>() {
            Ok(n) if n > 0 && i64::try_from(n).is_ok() => Ok(ChainKey(ChainId(n))),
            _ => Err(format!(
                "chains.{id}: the table name must be a chain id (a positive integer)"
            )),
        }
    }
}
