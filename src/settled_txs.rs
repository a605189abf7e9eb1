//! [`SettledTxs`]: each key's latest settlement transaction, for the
//! `x-compose-key-tx-hash` header of paid responses (DESIGN §4). In the
//! `evm` mode a task reads what settled since its last look every
//! settlement interval (the settler may run in another process), so the
//! paid path reads a map, never the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ledger::Store;

/// Rows one refresh reads per query (it pages until it has caught up).
const PAGE: i64 = 5_000;

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct SettledTxs {
    latest: Arc<RwLock<HashMap<String, Arc<str>>>>,
}

impl SettledTxs {
    /// The key's latest settlement transaction hash, once it has one.
    pub fn get(&self, key_id: &str) -> Option<Arc<str>> {
        self.latest.read().ok()?.get(key_id).cloned()
    }

    /// Reads what settled at or after `since_ms`; answers the new watermark.
    pub async fn refresh(&self, store: &Store, since_ms: i64) -> Result<i64, ledger::StoreError> {
        let mut since = since_ms;
        loop {
            let rows = store.settled_txs_since(since, PAGE).await?;
            let full = rows.len() as i64 >= PAGE;
            if let Ok(mut latest) = self.latest.write() {
                for row in &rows {
                    latest.insert(row.key_id.clone(), Arc::from(row.tx_hash.as_str()));
                }
            }
            let Some(last) = rows.last() else {
                return Ok(since);
            };
            // Ties at the watermark are read again next time (inserting them
            // twice changes nothing).
            if !full || last.settled_at_ms == since {
                return Ok(last.settled_at_ms);
            }
            since = last.settled_at_ms;
        }
    }

    /// Refreshes every `every` until the process stops.
    pub async fn run(self, store: Store, every: Duration) {
        let mut since = 0;
        loop {
            match self.refresh(&store, since).await {
                Ok(next) => since = next,
                Err(error) => tracing::warn!(%error, "reading settled transactions failed"),
            }
            tokio::time::sleep(every).await;
        }
    }
}
