//! `tollgate reconcile [--chain ID] [--json]`: checks that the ledger's books
//! agree with themselves — each wallet's `debited` against its settled
//! charges (invariant 4), each key's `budget_used` against its charges
//! (invariant 3) and its `leased` against its leases, and no key past its
//! limit (invariant 1). Prints every difference and exits non-zero on any.
//! In the `evm` mode it also checks the chain's side (each chain, or the one
//! named): every settled batch against the contract and its receipt, each
//! payer's USDC moved against its settled charges, and no settlement on
//! chain the ledger does not know (`workers::evm::reconcile`). It lists the
//! payers settlement holds back with what they owe, and counts one
//! difference for each held back longer than `settlement.held_back_alert_ms`
//! (money was served that the chain has not collected); and one for each key
//! with overdrawn charges (answered calls that landed past the key's limit).

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
    let held = store.held_back_payers(chain).await;
    store.close().await;
    let mut differences = differences?;
    let held = held?;
    differences.extend(held_too_long(&held, settings.settlement.held_back_alert_ms));
    if json {
        println!(
            "{}",
            serde_json::json!({ "differences": differences, "heldBack": held })
        );
    } else {
        print_report(settings, &differences, &held);
    }
    if !differences.is_empty() {
        bail!("{} difference(s) in the ledger", differences.len());
    }
    Ok(())
}

fn print_report(
    settings: &Settings,
    differences: &[ledger::store::settlement::Difference],
    held: &[ledger::store::payers::HeldBackPayer],
) {
    for payer in held {
        println!(
            "held back: {} on chain {} owes {} ({} {} short) since {} ms",
            payer.wallet,
            payer.chain_id,
            payer.owed,
            payer.short(),
            payer.shortfall(),
            payer.since_ms
        );
    }
    if differences.is_empty() {
        if settings.settlement.mode == crate::settings::SettlementMode::Evm {
            println!("the ledger agrees with itself and with the chain: no differences");
        } else {
            println!("the ledger agrees with itself: no differences");
        }
    }
    for d in differences {
        println!(
            "{}: {} — expected {}, found {}",
            d.check, d.subject, d.expected, d.found
        );
    }
}

/// A difference for each payer held back longer than `alert_ms`.
fn held_too_long(
    held: &[ledger::store::payers::HeldBackPayer],
    alert_ms: i64,
) -> Vec<ledger::store::settlement::Difference> {
    let now = ledger::time::now_ms();
    held.iter()
        .filter(|p| now.saturating_sub(p.since_ms) > alert_ms)
        .map(|p| ledger::store::settlement::Difference {
            check:
                "payer held back longer than settlement.held_back_alert_ms (served, not collected)",
            subject: format!("{} on chain {}", p.wallet, p.chain_id),
            expected: 0,
            found: p.owed.to_db(),
        })
        .collect()
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
