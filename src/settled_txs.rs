//! [`SettledTxs`]: each key's latest settlement transaction, for the
//! `x-compose-key-tx-hash` header of paid responses (docs/reference.md). In the
//! `evm` mode a task reads what settled since its last look every
//! settlement interval (the settler may run in another process), so the
//! paid path reads a map, never the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ledger::store::chain::SettledCursor;
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

    /// Reads what settled after `after`, page by page until it has caught
    /// up; answers where the next refresh resumes. The cursor is (settled
    /// at, batch id, key id): paged by the time alone, a batch naming more
    /// keys than a page was read again forever and nothing after it ever.
    pub async fn refresh(
        &self,
        store: &Store,
        after: SettledCursor,
    ) -> Result<SettledCursor, ledger::StoreError> {
        let mut after = after;
        loop {
            let rows = store.settled_txs_after(&after, PAGE).await?;
            if let Ok(mut latest) = self.latest.write() {
                for row in &rows {
                    latest.insert(row.key_id.clone(), Arc::from(row.tx_hash.as_str()));
                }
            }
            let Some(last) = rows.last() else {
                return Ok(after);
            };
            after = last.cursor();
            if (rows.len() as i64) < PAGE {
                return Ok(after);
            }
        }
    }

    /// Refreshes every `every` until the process stops.
    pub async fn run(self, store: Store, every: Duration) {
        let mut after = SettledCursor::default();
        loop {
            match self.refresh(&store, after.clone()).await {
                Ok(next) => after = next,
                Err(error) => tracing::warn!(%error, "reading settled transactions failed"),
            }
            tokio::time::sleep(every).await;
        }
    }
}
