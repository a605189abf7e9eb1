//! `tollgate reconcile [--chain ID] [--json]`: checks that the ledger's books
//! agree with themselves — each wallet's `debited` against its settled
//! charges (invariant 4), each key's `budget_used` against its charges
//! (invariant 3) and its `leased` against its leases, and no key past its
//! limit (invariant 1). Prints every difference and exits non-zero on any.
//! (In the `evm` mode the settlement issue adds the chain's side: the
//! contract's events and the token's balances.)

use anyhow::bail;

use crate::settings::Settings;
use crate::startup::open_store;

pub async fn reconcile(settings: &Settings, chain: Option<u64>, json: bool) -> anyhow::Result<()> {
    let chain = match chain {
        Some(_) => Some(super::pick_chain(settings, chain)?),
        None => None,
    };
    let store = open_store(settings).await?;
    let differences = store.reconcile_ledger(chain).await;
    store.close().await;
    let differences = differences?;
    if json {
        println!("{}", serde_json::json!({ "differences": differences }));
    } else if differences.is_empty() {
        println!("the ledger agrees with itself: no differences");
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
