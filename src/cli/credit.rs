//! `tollgate credit`: an operator credits a wallet's prepaid balance.

use anyhow::Context;
use ledger::time::now_ms;
use ledger::{Amount, WalletAddress};

use super::pick_chain;
use crate::settings::Settings;
use crate::startup::open_store;

pub async fn credit(
    settings: &Settings,
    address: &str,
    amount: &str,
    chain: Option<u64>,
    note: &str,
) -> anyhow::Result<()> {
    let wallet: WalletAddress = address
        .parse()
        .with_context(|| format!("address {address:?}"))?;
    let amount = Amount::parse_decimal(amount).map_err(|e| anyhow::anyhow!("amount {e}"))?;
    let chain = pick_chain(settings, chain)?;
    let store = open_store(settings).await?;
    let balance = store
        .credit(&wallet, chain, amount, note, now_ms())
        .await
        .map_err(|e| match e {
            ledger::StoreError::AmountOverflow => anyhow::anyhow!(
                "amount must be between 1 and {} and keep the balance storable",
                ledger::store::balances::CREDIT_MAX
            ),
            other => other.into(),
        })?;
    println!(
        "{}",
        serde_json::json!({
            "address": wallet, "chainId": chain, "credited": amount,
            "balance": balance.credited.saturating_sub(balance.debited),
        })
    );
    Ok(())
}
