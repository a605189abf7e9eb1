//! `tollgate reconcile [--chain ID] [--json]`: checks that the ledger's books
//! agree with themselves — each wallet's `debited` against its settled
//! charges (invariant 4), each key's `budget_used` against its charges
//! (invariant 3) and its `leased` against its leases, and no key past its
//! limit (invariant 1). Prints every difference and exits non-zero on any.
//! In the `evm` mode it also checks the chain's side (each chain, or the one
//! named): every settled batch against the contract and its receipt, each
//! payer's USDC moved against its settled charges, and no settlement on
//! chain the ledger does not know (`workers::evm::reconcile`).

use anyhow::bail;

use crate::settings::Settings;
use crate::startup::open_store;

pub async fn reconcile(settings: &Settings, chain: Option<u64>, json: bool) -> anyhow::Result<()> {
    let chain = match chain {
        Some(_) => Some(super::pick_chain(settings, chain)?),
        None => None,
    };
    let store = open_store(settings).await?;
    let differences = books(settings, &store, chain).await;
    store.close().await;
    let differences = differences?;
    if json {
        println!("{}", serde_json::json!({ "differences": differences }));
    } else if differences.is_empty() {
        if settings.settlement.mode == crate::settings::SettlementMode::Evm {
            println!("the ledger agrees with itself and with the chain: no differences");
        } else {
            println!("the ledger agrees with itself: no differences");
        }
    } else {
        for d in &differences {
            println!(
                "{}: {} — expected {}, found {}",
                d.check, d.subject, d.expected, d.found
            );
        }
    }
    if !differences.is_empty() {
        bail!("{} difference(s) in the ledger", differences.len());
    }
    Ok(())
}

/// The ledger's own checks, then each chain's (in the `evm` mode).
async fn books(
    settings: &Settings,
    store: &ledger::Store,
    chain: Option<ledger::ChainId>,
) -> anyhow::Result<Vec<ledger::store::settlement::Difference>> {
    let mut differences = store.reconcile_ledger(chain).await?;
    for (id, client) in crate::pools::chain_clients(settings)? {
        if chain.is_some_and(|c| c != id) {
            continue;
        }
        differences.extend(workers::evm::reconcile::reconcile_chain(store, &client).await?);
    }
    Ok(differences)
}
