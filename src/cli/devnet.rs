//! `tollgate devnet [--port N] [--out FILE]`: a local chain to run the
//! `evm` mode on one machine with no outside network. Starts Anvil (chain
//! 43113), deploys mock USDC and the settlement contract (owner and operator:
//! Anvil's account 0; treasury: account 9), mints 1,000 USDC to each of
//! accounts 0–9, approves nothing, and writes a config file that `serve
//! --config FILE` settles on. Runs until interrupted.

use std::path::Path;

use anyhow::Context;
use workers::evm::devnet::{deploy, Anvil, AnvilOptions, DEVNET_CHAIN_ID};

pub async fn devnet(port: u16, out: &Path) -> anyhow::Result<()> {
    let anvil = Anvil::start(&AnvilOptions {
        port,
        ..AnvilOptions::default()
    })
    .await?;
    let deployment = match deploy(&anvil.rpc_url).await {
        Ok(deployment) => deployment,
        Err(error) => {
            anvil.kill();
            return Err(error.into());
        }
    };
    let config = config_toml(&deployment);
    std::fs::write(out, config).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "devnet: Anvil on {} (chain {DEVNET_CHAIN_ID})",
        deployment.rpc_url
    );
    println!("  mock USDC            {:#x}", deployment.usdc);
    println!(
        "  settlement contract  {:#x}",
        deployment.settlement_contract
    );
    println!("  operator (account 0) {:#x}", deployment.operator);
    println!("  treasury (account 9) {:#x}", deployment.treasury);
    println!("  1,000 USDC minted to each of accounts 0-9; nothing approved");
    println!(
        "  config written to {}: tollgate serve --config {}",
        out.display(),
        out.display()
    );
    println!("Ctrl-C stops the chain (its state is not kept).");
    crate::startup::stop_signal().await;
    anvil.stop();
    Ok(())
}

fn config_toml(d: &workers::evm::devnet::Deployment) -> String {
    format!(
        r#"# Written by `tollgate devnet`: settle on the local Anvil chain it started.
# Use with: tollgate serve --config THIS_FILE
#
# DEV ONLY. operator_key below is Anvil's account-0 key, which is public:
# anyone can sign with it. Never use it, or this file, on a real chain; there
# the key comes from TOLLGATE__CHAINS__<ID>__OPERATOR_KEY or operator_key_file.

[store]
# The devnet's own ledger, apart from the embedded default's. Each `tollgate
# devnet` starts a fresh chain: delete this file for a fresh ledger too.
url = "sqlite://data/devnet.db"

[settlement]
mode = "evm"
interval_ms = 500

[chains.{chain}]
name = "devnet"
rpc_url = "{rpc}"
usdc = "{usdc:#x}"
settlement_contract = "{contract:#x}"
treasury = "{treasury:#x}"
operator_key = "0x{key}"
confirmations = 1
batch_max_payers = 100
batch_max_age_ms = 2000
"#,
        chain = DEVNET_CHAIN_ID,
        rpc = d.rpc_url,
        usdc = d.usdc,
        contract = d.settlement_contract,
        treasury = d.treasury,
        key = d.operator_key,
    )
}
