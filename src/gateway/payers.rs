//! The paid path's view of payers in the `evm` mode: what a payer can still
//! pay on chain, and which payers the settler holds back.
//!
//! * [`PayerFunds`] reads a payer's spendable funds (`min(balance,
//!   allowance)`) from its chain for each lease take
//!   ([`ledger::Store::take_lease_funded`]): a payer who withdraws what it
//!   promised gets no new cover, so it can spend at most the leases it
//!   already holds (docs/settlement.md, "Payers who cannot pay").
//! * [`PayerFences`] is the set of held-back payers, refreshed from the
//!   store by the lease keeper every `leases.revocation_poll_ms`: a paid
//!   call on a key whose payer is in it is refused before any hold
//!   (`payer_held_back`), on every node, until the payer's charges settle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ledger::store::payers::HeldBackPayer;
use ledger::{Amount, ChainId, Store, StoreError, WalletAddress};
use workers::evm::ChainClient;

/// Each `evm` chain's client, for reading payers' funds.
#[derive(Clone, Default)]
pub struct PayerFunds {
    clients: Arc<HashMap<ChainId, ChainClient>>,
    /// `settlement.payer_unsettled_max_atomic`: what a payer may owe and
    /// hold in leases at once, whatever its funds (`None`: its funds alone).
    unsettled_max: Option<Amount>,
}

/// A payer's funds could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the funds of a payer on chain {chain} could not be read: {cause}")]
pub struct FundsError {
    pub chain: ChainId,
    pub cause: String,
}

impl PayerFunds {
    /// `unsettled_max`: the most a payer may owe unsettled plus hold in
    /// leases at once (zero: no bound beyond its funds).
    pub fn new(clients: HashMap<ChainId, ChainClient>, unsettled_max: Amount) -> PayerFunds {
        PayerFunds {
            clients: Arc::new(clients),
            unsettled_max: (!unsettled_max.is_zero()).then_some(unsettled_max),
        }
    }

    /// True when payers' funds live on some chain (the `evm` mode).
    pub fn on_chain(&self) -> bool {
        !self.clients.is_empty()
    }

    /// `wallet`'s spendable funds on `chain` (clamped to [`Amount::MAX`],
    /// and to `settlement.payer_unsettled_max_atomic` when set); `None` when
    /// `chain` has no client (its funds are prepaid).
    pub async fn spendable(
        &self,
        wallet: &WalletAddress,
        chain: ChainId,
    ) -> Result<Option<Amount>, FundsError> {
        let Some(client) = self.clients.get(&chain) else {
            return Ok(None);
        };
        let address = workers::evm::Address::from(*wallet.as_bytes());
        let funds = client.funds_of(address).await.map_err(|error| FundsError {
            chain,
            cause: error.to_string(),
        })?;
        let spendable = workers::evm::ledger_amount(funds.spendable());
        Ok(Some(match self.unsettled_max {
            Some(max) => spendable.min(max),
            None => spendable,
        }))
    }
}

/// The payers held back by settlement, as this node last read them.
#[derive(Clone, Default)]
pub struct PayerFences {
    held: Arc<RwLock<HashMap<(String, i64), HeldBackPayer>>>,
    /// How many are held: a paid call skips the lock when none is.
    count: Arc<AtomicUsize>,
}

impl PayerFences {
    /// The held-back record of `wallet` on `chain`, when it is fenced.
    pub fn fenced(&self, wallet: &WalletAddress, chain: ChainId) -> Option<HeldBackPayer> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let chain = i64::try_from(chain.0).ok()?;
        let held = self.held.read().unwrap_or_else(|p| p.into_inner());
        held.get(&(wallet.to_lower_hex(), chain)).cloned()
    }

    /// Reads the held-back payers from the store and replaces the set.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let payers = store.held_back_payers(None).await?;
        let fresh: HashMap<(String, i64), HeldBackPayer> = payers
            .into_iter()
            .map(|p| ((p.wallet.clone(), p.chain_id), p))
            .collect();
        let count = fresh.len();
        *self.held.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.count.store(count, Ordering::Release);
        Ok(())
    }
}
