//! Stopping keys without breaking invariant 7: a wallet's keys never spend
//! past its funds, calls still running on a stopped key included.
//!
//! A stopped key's unspent budget stays committed against its wallet until no
//! call can charge it any more. [`stop_keys`] fences the keys on this node's
//! registry (no new call starts on them), learns which have no call in
//! flight, runs the store change that stops them — which frees those at once,
//! in its own transaction, so a sign-in or a budget replacement can reuse
//! the funds — then pushes the stop to the keys' actors. A key whose calls
//! were still running is freed when its last call ends (the registry reports
//! it drained; [`free_drained_keys`] records that), or at the latest when the
//! longest hold could have lived (`Store::hold_max_ms`).

use std::future::Future;

use actors::budget::BudgetStatus;
use actors::registry::Registry;
use ledger::time::now_ms;
use ledger::{KeyId, Store, StoreError};

/// Fences `keys`, runs `change` with the ones that have no call in flight
/// (`change` stops keys and answers which), pushes `status` to their actors,
/// and frees the budget of those that drained meanwhile.
///
/// It all runs in its own task: a client that goes away mid-request cannot
/// leave the store changed and the actors untold. If `change` fails (its
/// outcome may be unknown: a commit that errored), the fenced keys' actors
/// are reloaded from the store before anything else reaches them.
pub async fn stop_keys<T, F, Fut>(
    registry: &Registry,
    store: &Store,
    keys: Vec<KeyId>,
    status: BudgetStatus,
    change: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(Vec<KeyId>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(T, Vec<KeyId>), StoreError>> + Send + 'static,
{
    let (registry, store) = (registry.clone(), store.clone());
    let stopping = tokio::spawn(async move {
        // One order for every caller, so two stops on overlapping keys never
        // wait on each other's fences in a cycle.
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        let mut fences = Vec::with_capacity(keys.len());
        for key in &keys {
            fences.push(registry.fence(key).await);
        }
        let drained: Vec<KeyId> = keys
            .iter()
            .zip(&fences)
            .filter(|(_, fence)| fence.drained)
            .map(|(key, _)| key.clone())
            .collect();
        let (answer, stopped) = match change(drained.clone()).await {
            Ok(changed) => changed,
            Err(error) => {
                // The store may or may not have changed: the actors learn it
                // from the store before their next call (the fences stand
                // until then).
                for key in &keys {
                    registry.reload(key);
                }
                return Err(error);
            }
        };
        // Every fenced key is stopped now (by this change or an earlier
        // one); tell each actor, and free what drained meanwhile.
        let mut told: Vec<&KeyId> = keys.iter().chain(&stopped).collect();
        told.sort();
        told.dedup();
        for key in told {
            let drained_now = registry.revoke(key, status).await;
            if drained_now && !drained.contains(key) {
                if let Err(error) = store.release_key_funds(key, now_ms()).await {
                    // Not lost: the budget frees itself after `hold_max_ms`.
                    tracing::warn!(key_id = %key, %error, "freeing a stopped key's budget failed");
                }
            }
        }
        drop(fences);
        Ok(answer)
    });
    stopping
        .await
        .map_err(|e| StoreError::Setup(format!("stopping keys: {e}")))?
}

/// Starts the task that records, for each key the registry reports drained
/// (revoked while calls ran, and now none does), that its unspent budget is
/// free again. It ends when the registry is gone.
pub fn free_drained_keys(registry: &Registry, store: Store) -> Option<tokio::task::JoinHandle<()>> {
    let mut drained = registry.drained_keys()?;
    Some(tokio::spawn(async move {
        while let Some(key) = drained.recv().await {
            if let Err(error) = store.release_key_funds(&key, now_ms()).await {
                tracing::warn!(key_id = %key, %error, "freeing a drained key's budget failed");
            }
        }
    }))
}
