//! [`StoreKeyLoader`]: a key actor's starting state, read from the store.
//!
//! `spent` is the key's `budget_used`. The actor spends only from a budget
//! lease of its own (a fresh id per load; [`super::leases`]): what an
//! earlier actor spent stays covered by its lease until its charges land, so
//! a restarted actor never regains spent budget, whether or not the ledger
//! has caught up.

use actors::budget::BudgetStatus;
use actors::registry::{KeyLoader, KeyState, LoadError, LoadFuture};
use ledger::model::KeyStatus;
use ledger::{KeyId, LeaseId, Store};

pub struct StoreKeyLoader {
    store: Store,
}

impl StoreKeyLoader {
    pub fn new(store: Store) -> StoreKeyLoader {
        StoreKeyLoader { store }
    }
}

impl KeyLoader for StoreKeyLoader {
    fn load<'a>(&'a self, key: &'a KeyId) -> LoadFuture<'a> {
        Box::pin(async move {
            let Some(record) = self
                .store
                .key(key)
                .await
                .map_err(|e| LoadError(e.to_string()))?
            else {
                return Ok(None);
            };
            let status = match record.status {
                KeyStatus::Revoked => BudgetStatus::Revoked,
                KeyStatus::Superseded => BudgetStatus::Superseded,
                // Expiry is the budget's own check, against `expires_at_ms`.
                KeyStatus::Active | KeyStatus::Expired => BudgetStatus::Active,
            };
            Ok(Some(KeyState {
                limit: record.budget_limit,
                spent: record.budget_used,
                status,
                expires_at_ms: record.expires_at_ms,
                token_sha256: record.token_sha256,
                // A fresh lease per actor: it spends only what it takes.
                lease: Some(LeaseId::generate()),
                payer: Some((record.wallet, record.chain_id)),
            }))
        })
    }
}
