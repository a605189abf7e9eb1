//! [`LedgerSettler`]: settlement in the `ledger` mode. Every
//! `settlement.interval_ms` it settles, chain by chain, every charge recorded
//! since the last pass — batches of at most `settlement.batch_max_charges`,
//! one store transaction each ([`ledger::Store::settle_ledger_batch`]): the
//! payers' prepaid balances are debited and the charges marked `settled`.
//!
//! Several settlers may run (every `serve` with in-process workers and every
//! `tollgate worker`): a batch claims its charges in one statement, so each
//! charge is debited once whichever settler takes it. The `evm` mode's
//! [`crate::evm::settler::EvmSettler`] is the other [`Settler`].

use std::time::Duration;

use ledger::time::now_ms;
use ledger::{ChainId, Store};

/// The pause between two batches of one pass.
const BETWEEN_BATCHES: Duration = Duration::from_millis(5);

/// Payers held back in one pass before it stops (a bound on the claim's
/// `NOT IN` list).
const SKIP_MAX: usize = 1_000;

/// What `serve` and `tollgate worker` run to settle recorded charges: the
/// `ledger` mode's [`LedgerSettler`] or the `evm` mode's `EvmSettler` (one
/// per chain). Either may run in several processes at once without settling
/// a charge twice.
pub trait Settler: Send + 'static {
    /// Settles until the process stops; a failed pass is logged and tried
    /// again at the next interval.
    fn run(self) -> impl std::future::Future<Output = ()> + Send;
}

impl Settler for LedgerSettler {
    fn run(self) -> impl std::future::Future<Output = ()> + Send {
        LedgerSettler::run(self)
    }
}

/// Settles recorded charges against prepaid balances. Cheap to clone.
#[derive(Clone)]
pub struct LedgerSettler {
    store: Store,
    chains: Vec<ChainId>,
    every: Duration,
    batch_max_charges: i64,
}

impl LedgerSettler {
    pub fn new(
        store: Store,
        chains: Vec<ChainId>,
        every: Duration,
        batch_max_charges: i64,
    ) -> LedgerSettler {
        LedgerSettler {
            store,
            chains,
            every,
            batch_max_charges,
        }
    }

    /// Settles until the process stops. A failed pass is logged and tried
    /// again at the next interval (nothing is half-settled: each batch is
    /// one transaction).
    pub async fn run(self) {
        loop {
            tokio::time::sleep(self.every).await;
            if let Err(error) = self.settle_all().await {
                tracing::warn!(%error, "settling charges failed; trying again next interval");
            }
        }
    }

    /// One pass: every chain's charges recorded until now, batch by batch.
    /// Returns how many charges settled.
    pub async fn settle_all(&self) -> Result<u64, ledger::StoreError> {
        let until = now_ms();
        let mut settled = 0;
        for chain in &self.chains {
            // Payers held back in this pass are left out of its later batches:
            // one payer that cannot pay must not stop everyone behind it.
            let mut skip: Vec<String> = Vec::new();
            loop {
                let batch_id = format!("ledger-{}", uuid::Uuid::now_v7().simple());
                let batch = self
                    .store
                    .settle_ledger_batch(
                        &batch_id,
                        *chain,
                        self.batch_max_charges,
                        until,
                        &skip,
                        now_ms(),
                    )
                    .await?;
                let Some(batch) = batch else { break };
                if batch.charges > 0 {
                    tracing::info!(
                        batch_id = %batch.batch_id, chain = %chain, charges = batch.charges,
                        payers = batch.payers, total = %batch.total,
                        held_back = batch.held_back.len(), "settled a ledger batch"
                    );
                }
                settled += batch.charges;
                let full = batch.charges >= u64::try_from(self.batch_max_charges).unwrap_or(0);
                let held = !batch.held_back.is_empty();
                skip.extend(batch.held_back);
                if (!full && !held) || skip.len() > SKIP_MAX {
                    break;
                }
                // Between batches, let the charge writers in (SQLite has one
                // writer: a long pass must not hold them back for its whole
                // length).
                tokio::time::sleep(BETWEEN_BATCHES).await;
            }
        }
        Ok(settled)
    }
}
