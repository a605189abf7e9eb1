//! [`EvmSettler`]: settlement in the `evm` mode. One per
//! chain is active at a time (a lease in the store, `claim_settler`), so a
//! chain's batches and nonces have one writer; any number may run.
//!
//! Each pass drives the chain's batch in flight, or closes a new one:
//!
//! 1. **Close** by `batch_max_payers` or `batch_max_age_ms`: pending charges
//!    summed per payer; balances and allowances read in one call
//!    (`fundsOf`); payers who cannot pay now are held back (their charges
//!    wait, never fail); the rest are claimed into a batch with the next
//!    batch number.
//! 2. **Send**: simulate (`eth_call`), estimate gas, check the set-up
//!    (operator, treasury, gas money, token not paused), sign at the store's
//!    nonce (or the chain's, when an outside transaction took ours), persist
//!    the signed bytes, then broadcast.
//! 3. **Watch**: a successful receipt of any hash of the batch wins (over
//!    any that reverted); once it has `confirmations`, each payer must be
//!    proven — `settled` only when the receipt holds the token's
//!    `Transfer(payer, treasury, amount)`, `failed` only when it holds the
//!    contract's `PayerFailed` for it. Fewer than `finality_confirmations`
//!    deep, the batch is confirming (its charges still `batched`) and the
//!    receipt is read again every pass; final, the batch settles. A
//!    confirming receipt the chain lost (a reorg) sends the batch again. A
//!    reverted receipt is handled once, when its attempt is still open: the
//!    batch is re-opened and signed anew (the set-up checked first, so an
//!    operator no longer ours pauses the chain); the third reverted attempt
//!    fails the batch, for `tollgate settlements replay`. Not mined in
//!    `replace_after_ms`: replaced at the same nonce with both fees raised
//!    by at least 12.5 %. Its nonce taken by another transaction: the batch
//!    is signed again at a new nonce. Before anything is signed again, the
//!    contract is asked whether the batch settled (and the settling
//!    transaction found by its log), so a batch is never paid twice — and
//!    the contract refuses a reused batch number anyway.
//!
//! Transient RPC failures are retried (in [`ChainClient`]) and otherwise
//! wait for the next pass. A systemic one (contract misconfigured, operator
//! out of gas, token paused) pauses the chain: the reason is logged once
//! and shown by `tollgate settlements list`, nothing fails, and the next
//! pass that gets through resumes on its own.

use std::collections::HashSet;
use std::time::Duration;

use alloy::primitives::{Address, Bytes, FixedBytes, B256, U256};
use alloy::rpc::types::TransactionReceipt;
use ledger::store::chain::{ChainTx, EvmBatch, MinedIn, PendingPayer};
use ledger::store::payers::ShortPayer;
use ledger::time::now_ms;
use ledger::{Amount, ChainId, Store, StoreError};

use super::chain::{ledger_amount, Broadcast, ChainClient, ChainError, PayerOutcome};
use super::contracts::pack_entry;

alloy::sol! {
    /// USDC's (and most fiat tokens') pause flag.
    #[sol(rpc)]
    interface IPausable {
        function paused() external view returns (bool);
    }
}

/// A reverted settlement is sent again at most this many times before its
/// batch becomes `failed` (for an operator's replay).
const REVERTS_MAX: usize = 3;

/// What the receipts of a batch's transactions say.
enum Mined {
    /// A successful receipt (of any hash: it wins over every revert).
    Success(B256, Box<TransactionReceipt>),
    /// A reverted receipt not handled before.
    Reverted(B256, Box<TransactionReceipt>),
    /// Nothing mined (or only reverts already handled).
    Nothing,
}

/// How an `evm` settler behaves (from `[settlement]` and `[chains.ID]`).
#[derive(Debug, Clone)]
pub struct EvmSettlerConfig {
    /// This settler's id (for the chain's settler lease).
    pub settler_id: String,
    /// Time between passes.
    pub every: Duration,
    pub batch_max_payers: usize,
    pub batch_max_age_ms: i64,
    /// A transaction not mined in this long is replaced with higher fees.
    pub replace_after_ms: i64,
    /// The longest a held-back payer waits between two checks of its funds.
    pub held_back_recheck_max_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// What a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Another settler is active on the chain.
    NotActive,
    /// Nothing to settle now.
    Idle,
    /// A transaction is on its way (sent, replaced, or awaiting a receipt).
    Waiting,
    /// A batch's receipt is mined and proven, not yet final (the batch is
    /// confirming; its receipt is read again next pass).
    Confirming,
    /// A batch settled (final).
    Settled,
    /// The chain is paused (systemic failure).
    Paused,
}

/// Settles one chain's charges on chain. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EvmSettler {
    store: Store,
    chain: ChainClient,
    config: EvmSettlerConfig,
}

impl EvmSettler {
    pub fn new(store: Store, chain: ChainClient, config: EvmSettlerConfig) -> EvmSettler {
        EvmSettler {
            store,
            chain,
            config,
        }
    }

    fn chain_id(&self) -> ChainId {
        ChainId(self.chain.chain_id())
    }

    /// Settles until the process stops; a failed pass is tried again at the
    /// next interval. A run of failing passes logs when it starts (and when
    /// its error changes) and when a pass gets through again, not every
    /// pass.
    pub async fn run(self) {
        let mut failing: Option<String> = None;
        loop {
            let pass = self.pass().await;
            match &pass {
                Ok(_) => {
                    if let Some(error) = failing.take() {
                        tracing::info!(chain = self.chain.chain_id(), last_error = %error,
                            "settlement passes get through again");
                    }
                }
                Err(error) => {
                    let error = error.to_string();
                    if failing.as_deref() != Some(error.as_str()) {
                        tracing::warn!(chain = self.chain.chain_id(), %error,
                            "settlement pass failed; trying again every interval");
                        failing = Some(error);
                    }
                }
            }
            if !matches!(pass, Ok(Pass::Settled)) {
                tokio::time::sleep(self.config.every).await;
            }
        }
    }

    /// One pass: drives the batch in flight or closes a new one.
    pub async fn pass(&self) -> Result<Pass, SettleError> {
        let now = now_ms();
        let operator = format!("{:#x}", self.chain.operator());
        let account = self
            .store
            .chain_account(self.chain_id(), &operator, now)
            .await?;
        let lease_ms = i64::try_from(self.config.every.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_mul(5)
            .saturating_add(10_000);
        if !self
            .store
            .claim_settler(
                self.chain_id(),
                &self.config.settler_id,
                now + lease_ms,
                now,
            )
            .await?
        {
            return Ok(Pass::NotActive);
        }
        // A ledger that never settled on this chain (checked only when it
        // is about to open its first batch, not on every idle pass).
        let fresh = account.next_batch_no == 1 && account.next_nonce == 0;
        match self.step(account.next_nonce, fresh).await {
            Ok(pass) => {
                if account.paused_reason.is_some()
                    && self
                        .store
                        .set_chain_paused(self.chain_id(), None, now_ms())
                        .await?
                {
                    tracing::info!(chain = self.chain.chain_id(), "settlement resumed");
                }
                Ok(pass)
            }
            Err(SettleError::Chain(error @ ChainError::Systemic { .. })) => {
                let reason = error.to_string();
                if self
                    .store
                    .set_chain_paused(self.chain_id(), Some(&reason), now_ms())
                    .await?
                {
                    tracing::error!(chain = self.chain.chain_id(), %reason,
                        "settlement paused until this is fixed; nothing fails meanwhile");
                }
                Ok(Pass::Paused)
            }
            Err(error) => Err(error),
        }
    }

    async fn step(&self, store_nonce: i64, fresh: bool) -> Result<Pass, SettleError> {
        // An RPC endpoint of another chain is systemic: the pass pauses.
        self.chain.verify_chain_id().await?;
        let batch = match self.store.in_flight_batch(self.chain_id()).await? {
            Some(batch) => batch,
            None => match self.close_batch(fresh).await? {
                Some(batch) => batch,
                None => return Ok(Pass::Idle),
            },
        };
        self.drive(&batch, store_nonce).await
    }

    /// Closes a batch when one is due: by size or by age, of payers who can
    /// pay now.
    async fn close_batch(&self, fresh: bool) -> Result<Option<EvmBatch>, SettleError> {
        let now = now_ms();
        let max = self.config.batch_max_payers.max(1);
        // Payers not held back, and held-back payers whose re-check is due:
        // the others are read past (`pending_payers`).
        let mut pending = self
            .store
            .pending_payers(self.chain_id(), now, max.saturating_mul(4))
            .await?;
        // Due by size or age of the payers not held back; held-back payers
        // due for their re-check are read either way (their backoff moves
        // on), but a batch closes early only for one that can pay again.
        let (fresh_count, fresh_oldest) = pending
            .iter()
            .filter(|p| !p.held_back)
            .fold((0, i64::MAX), |(n, oldest), p| {
                (n + 1, oldest.min(p.oldest_ms))
            });
        let due = fresh_count >= max
            || (fresh_count > 0
                && now.saturating_sub(fresh_oldest) >= self.config.batch_max_age_ms);
        if !due && !pending.iter().any(|p| p.held_back) {
            return Ok(None);
        }
        // Oldest first, held back or not: a payer that can pay again is
        // never pushed out by newer ones.
        pending.sort_by_key(|p| p.oldest_ms);
        let (wallets, resumed) = self.payers_who_can_pay(&pending, max).await?;
        if wallets.is_empty() || !(due || resumed) {
            return Ok(None);
        }
        if fresh {
            self.number_after_the_contracts_batches().await?;
        }
        let id = format!("evm-{}", uuid::Uuid::now_v7().simple());
        let batch = self
            .store
            .open_evm_batch(&id, self.chain_id(), &wallets, now, now_ms())
            .await?;
        if let Some(batch) = &batch {
            tracing::info!(chain = self.chain.chain_id(), batch_id = %batch.id,
                batch_no = batch.batch_no, payers = batch.payers.len(), "closed a settlement batch");
        }
        Ok(batch)
    }

    /// Reads the funds of `pending` in one call and answers the first `max`
    /// who can pay what they owe, and whether a held-back payer is among
    /// them. Each who cannot is held back (fenced, and checked again after a
    /// backoff): logged once when that starts, and once when a held-back
    /// payer can pay again.
    async fn payers_who_can_pay(
        &self,
        pending: &[PendingPayer],
        max: usize,
    ) -> Result<(Vec<String>, bool), SettleError> {
        let every = i64::try_from(self.config.every.as_millis()).unwrap_or(i64::MAX);
        let backoff =
            |checks: i64| held_back_backoff(every, self.config.held_back_recheck_max_ms, checks);
        let mut addresses = Vec::with_capacity(pending.len());
        for payer in pending {
            addresses.push(parse_address(&payer.wallet)?);
        }
        let funds = self.chain.funds(&addresses).await?;
        let mut wallets = Vec::new();
        for (payer, funds) in pending.iter().zip(&funds) {
            if funds.spendable() >= U256::from(payer.sum.atomic()) {
                if wallets.len() < max {
                    wallets.push(payer.wallet.clone());
                }
                continue;
            }
            let short = ShortPayer {
                wallet: &payer.wallet,
                owed: payer.sum,
                balance: ledger_amount(funds.balance),
                allowance: ledger_amount(funds.allowance),
            };
            if self
                .store
                .hold_back_payer(self.chain_id(), short, backoff, now_ms())
                .await?
            {
                metrics::counter!("tollgate_settlement_payers_held_back_total",
                    "chain" => self.chain.chain_id().to_string())
                .increment(1);
                tracing::warn!(chain = self.chain.chain_id(), wallet = %payer.wallet,
                    owed = %payer.sum, balance = %funds.balance, allowance = %funds.allowance,
                    "payer held back: it cannot pay what it owes; its keys are fenced until it does");
            }
        }
        let mut resumed = false;
        for payer in pending
            .iter()
            .filter(|p| p.held_back && wallets.contains(&p.wallet))
        {
            resumed = true;
            tracing::info!(chain = self.chain.chain_id(), wallet = %payer.wallet,
                "a held-back payer can pay again; its keys resume once this batch settles");
        }
        Ok((wallets, resumed))
    }

    /// A ledger that never settled on this chain starts past the batch
    /// numbers the contract already used (another ledger, or this one before
    /// a reset), or every batch it opens would collide.
    async fn number_after_the_contracts_batches(&self) -> Result<(), SettleError> {
        let last = self.chain.last_settled_batch_no().await?;
        if last > 0 {
            tracing::warn!(chain = self.chain.chain_id(), last,
                "the contract already settled batches this ledger does not know; numbering after them");
            let next = i64::try_from(last).unwrap_or(i64::MAX).saturating_add(1);
            self.store
                .raise_next_batch_no(self.chain_id(), next, now_ms())
                .await?;
        }
        Ok(())
    }

    /// Moves a batch in flight one step on.
    async fn drive(&self, batch: &EvmBatch, store_nonce: i64) -> Result<Pass, SettleError> {
        let batch_no = u64::try_from(batch.batch_no).unwrap_or(0);
        let txs = self.store.batch_txs(&batch.id).await?;
        // 1. Any of our transactions mined?
        if let Some(pass) = self.on_mined(batch, self.mined(batch, &txs).await?).await? {
            return Ok(pass);
        }
        // A confirming batch whose receipt is gone: the chain lost it.
        if let Some(mined) = &batch.mined {
            self.lost(batch, mined).await?;
        }
        // 2. Settled by a transaction whose outcome we lost?
        if self.chain.is_settled(batch_no).await? {
            let Some(hash) = self.chain.find_settlement(batch_no).await? else {
                return Err(systemic(
                    &self.chain,
                    format!(
                        "batch {} is settled on chain but its transaction was not found",
                        batch.id
                    ),
                ));
            };
            return match self.chain.receipt(hash).await? {
                Some(receipt) if receipt.status() => self.on_success(batch, hash, &receipt).await,
                _ => Ok(Pass::Waiting),
            };
        }
        // 3. Nothing mined, not settled.
        let Some(latest) = txs.first() else {
            return self.send_new(batch, store_nonce).await;
        };
        if batch.status == "open" {
            return self.send_new(batch, store_nonce).await;
        }
        let mined_nonce = self.chain.mined_nonce().await?;
        if mined_nonce > u64::try_from(latest.nonce).unwrap_or(0) {
            // The nonce is used. Ours, mined between our look and now? Look
            // again before deciding another transaction took it.
            if let Some(pass) = self.on_mined(batch, self.mined(batch, &txs).await?).await? {
                return Ok(pass);
            }
            let error = format!(
                "nonce {} was used by another transaction; signing again",
                latest.nonce
            );
            tracing::warn!(chain = self.chain.chain_id(), batch_id = %batch.id, %error);
            self.store
                .reopen_batch(&batch.id, Some(&latest.hash), "unknown", &error, now_ms())
                .await?;
            return self.send_new(batch, store_nonce).await;
        }
        let raw = parse_raw(&latest.raw)?;
        if latest.broadcast_at_ms.is_none() {
            // Signed, persisted, never sent (a crash in between): the same bytes.
            self.chain.broadcast(&raw).await?;
            self.store.mark_broadcast(&latest.hash, now_ms()).await?;
            return Ok(Pass::Waiting);
        }
        if now_ms().saturating_sub(latest.created_at_ms) > self.config.replace_after_ms {
            return self.replace(batch, latest).await;
        }
        // Still waiting: make sure the node has it (a restarted node may not,
        // nor one whose chain lost the block it was mined in).
        self.chain.broadcast(&raw).await?;
        Ok(Pass::Waiting)
    }

    /// What the receipts of `txs` say. A successful receipt of any hash
    /// wins (only one transaction of a batch can succeed: the contract
    /// refuses a batch number twice); else the first reverted receipt whose
    /// attempt is not finished yet (one already handled is never handled
    /// again).
    async fn mined(&self, batch: &EvmBatch, txs: &[ChainTx]) -> Result<Mined, SettleError> {
        // Handled: every attempt of the hash is finished (the same bytes
        // may be sent again after the chain lost them: a new attempt).
        let attempts = self.store.batch_attempts(&batch.id).await?;
        let in_flight: HashSet<&str> = attempts
            .iter()
            .filter(|a| a.finished_at_ms.is_none())
            .filter_map(|a| a.tx_hash.as_deref())
            .collect();
        let handled: HashSet<&str> = attempts
            .iter()
            .filter_map(|a| a.tx_hash.as_deref())
            .filter(|hash| !in_flight.contains(hash))
            .collect();
        // A confirming batch's receipt may be of a transaction found by its
        // log (not one of ours): it is looked at too.
        let mut hashes: Vec<&str> = txs.iter().map(|tx| tx.hash.as_str()).collect();
        if let Some(mined) = &batch.mined {
            if !hashes.contains(&mined.tx_hash.as_str()) {
                hashes.push(&mined.tx_hash);
            }
        }
        let mut reverted = None;
        for hex in hashes {
            let hash = parse_hash(hex)?;
            let Some(receipt) = self.chain.receipt(hash).await? else {
                continue;
            };
            if receipt.status() {
                return Ok(Mined::Success(hash, Box::new(receipt)));
            }
            if reverted.is_none() && !handled.contains(hex) {
                reverted = Some((hash, receipt));
            }
        }
        Ok(match reverted {
            Some((hash, receipt)) => Mined::Reverted(hash, Box::new(receipt)),
            None => Mined::Nothing,
        })
    }

    /// The pass after what [`EvmSettler::mined`] found, if it found anything.
    async fn on_mined(&self, batch: &EvmBatch, mined: Mined) -> Result<Option<Pass>, SettleError> {
        match mined {
            Mined::Success(hash, receipt) => self.on_success(batch, hash, &receipt).await.map(Some),
            Mined::Reverted(hash, receipt) => self.on_revert(batch, hash, &receipt).await.map(Some),
            Mined::Nothing => Ok(None),
        }
    }

    /// A confirming batch's receipt is gone (a reorg): the batch is
    /// `sending` again, and the rest of the pass sends it again (the same
    /// signed bytes, or a replacement) unless the contract says it settled.
    async fn lost(&self, batch: &EvmBatch, mined: &MinedIn) -> Result<(), SettleError> {
        let error = format!(
            "the chain lost transaction {} (block {} {}) before it was final; sending it again",
            mined.tx_hash, mined.block_no, mined.block_hash
        );
        if self
            .store
            .unmark_confirming(&batch.id, &error, now_ms())
            .await?
        {
            tracing::warn!(chain = self.chain.chain_id(), batch_id = %batch.id, %error);
        }
        Ok(())
    }

    /// A reverted receipt, not handled before: nothing moved, its nonce is
    /// spent. The batch is `open` again (checked and signed anew next
    /// pass); after [`REVERTS_MAX`] reverted attempts it is `failed`, for
    /// an operator's replay.
    async fn on_revert(
        &self,
        batch: &EvmBatch,
        hash: B256,
        receipt: &TransactionReceipt,
    ) -> Result<Pass, SettleError> {
        if self.chain.depth(receipt).await? < self.chain.config().confirmations {
            return Ok(Pass::Waiting);
        }
        let hash_hex = format!("{hash:#x}");
        let error = format!("transaction {hash_hex} reverted");
        self.store
            .reopen_batch(&batch.id, Some(&hash_hex), "reverted", &error, now_ms())
            .await?;
        let reverts = self
            .store
            .batch_attempts(&batch.id)
            .await?
            .iter()
            .filter(|a| a.outcome.as_deref() == Some("reverted"))
            .count();
        debug_assert!(reverts >= 1, "the attempt just finished as reverted");
        let batch_no = u64::try_from(batch.batch_no).unwrap_or(0);
        if reverts >= REVERTS_MAX && !self.chain.is_settled(batch_no).await? {
            self.store
                .fail_batch(
                    &batch.id,
                    &format!("{error}: {reverts} attempts reverted"),
                    now_ms(),
                )
                .await?;
            tracing::error!(chain = self.chain.chain_id(), batch_id = %batch.id, reverts,
                "batch failed; `tollgate settlements replay` sends its charges again");
        } else {
            tracing::warn!(chain = self.chain.chain_id(), batch_id = %batch.id, %error, reverts,
                "settlement reverted; the batch is checked and signed again");
        }
        Ok(Pass::Waiting)
    }

    /// A successful receipt of the batch: each payer's outcome must be
    /// proven; `confirming` until it is `finality_confirmations` deep, then
    /// `settled`.
    async fn on_success(
        &self,
        batch: &EvmBatch,
        hash: B256,
        receipt: &TransactionReceipt,
    ) -> Result<Pass, SettleError> {
        let depth = self.chain.depth(receipt).await?;
        let config = self.chain.config();
        if depth < config.confirmations {
            return Ok(Pass::Waiting);
        }
        let (paid, failed) = self.proven(batch, hash, receipt)?;
        let hash_hex = format!("{hash:#x}");
        if depth < config.finality_confirmations {
            let mined = MinedIn {
                tx_hash: hash_hex,
                block_no: i64::try_from(receipt.block_number.unwrap_or(0)).unwrap_or(i64::MAX),
                block_hash: format!("{:#x}", receipt.block_hash.unwrap_or_default()),
            };
            if self
                .store
                .mark_confirming(&batch.id, &mined, now_ms())
                .await?
            {
                tracing::info!(chain = self.chain.chain_id(), batch_id = %batch.id,
                    tx_hash = %mined.tx_hash, block = mined.block_no, depth,
                    final_at = config.finality_confirmations,
                    "batch mined; provisional until final (charges stay batched)");
            }
            return Ok(Pass::Confirming);
        }
        self.store
            .finish_evm_batch(&batch.id, &hash_hex, &paid, &failed, now_ms())
            .await?;
        self.count_settled(receipt, paid.len(), failed.len());
        tracing::info!(chain = self.chain.chain_id(), batch_id = %batch.id,
            batch_no = batch.batch_no, tx_hash = %hash_hex, depth, paid = paid.len(),
            failed = failed.len(), "batch settled on chain (final)");
        Ok(Pass::Settled)
    }

    /// Each payer of the batch as the receipt proves it: (paid, failed).
    /// A payer it proves neither for is systemic (another ledger on the
    /// contract?).
    fn proven(
        &self,
        batch: &EvmBatch,
        hash: B256,
        receipt: &TransactionReceipt,
    ) -> Result<(Vec<String>, Vec<String>), SettleError> {
        let batch_no = u64::try_from(batch.batch_no).unwrap_or(0);
        let payers = self.payer_amounts(batch)?;
        let outcomes = self.chain.outcomes(receipt, batch_no, &payers);
        let (mut paid, mut failed) = (Vec::new(), Vec::new());
        for ((wallet, _), outcome) in batch.payers.iter().zip(&outcomes) {
            match outcome {
                Some(PayerOutcome::Paid) => paid.push(wallet.clone()),
                Some(PayerOutcome::Failed) => failed.push(wallet.clone()),
                None => {
                    return Err(systemic(
                        &self.chain,
                        format!(
                            "receipt {hash:#x} of batch {} (#{batch_no}) proves neither payment nor \
                             failure for {wallet}: was #{batch_no} settled by another ledger on this \
                             contract?",
                            batch.id
                        ),
                    ))
                }
            }
        }
        assert_eq!(paid.len() + failed.len(), batch.payers.len());
        Ok((paid, failed))
    }

    fn count_settled(&self, receipt: &TransactionReceipt, paid: usize, failed: usize) {
        let chain = self.chain.chain_id().to_string();
        metrics::counter!("tollgate_settlement_batches_settled_total", "chain" => chain.clone())
            .increment(1);
        metrics::counter!("tollgate_settlement_gas_used_total", "chain" => chain.clone())
            .increment(receipt.gas_used);
        metrics::counter!("tollgate_settlement_payers_total", "chain" => chain.clone(), "outcome" => "settled")
            .increment(paid as u64);
        metrics::counter!("tollgate_settlement_payers_total", "chain" => chain, "outcome" => "failed")
            .increment(failed as u64);
    }

    fn payer_amounts(&self, batch: &EvmBatch) -> Result<Vec<(Address, U256)>, SettleError> {
        batch
            .payers
            .iter()
            .map(|(wallet, amount)| Ok((parse_address(wallet)?, U256::from(amount.atomic()))))
            .collect()
    }

    fn entries(&self, batch: &EvmBatch) -> Result<Vec<FixedBytes<32>>, SettleError> {
        batch
            .payers
            .iter()
            .map(|(wallet, amount)| {
                pack_entry(parse_address(wallet)?, u128::from(amount.atomic())).ok_or_else(|| {
                    SettleError::Chain(ChainError::Config {
                        chain: self.chain.chain_id(),
                        reason: format!("amount {amount} does not fit a batch entry"),
                    })
                })
            })
            .collect()
    }

    /// Signs the batch at a fresh nonce, persists it, broadcasts it.
    async fn send_new(&self, batch: &EvmBatch, store_nonce: i64) -> Result<Pass, SettleError> {
        let batch_no = u64::try_from(batch.batch_no).unwrap_or(0);
        let entries = self.entries(batch)?;
        self.check_token_running().await?;
        self.chain.check_roles().await?;
        let (would_pay, _) = match self.chain.simulate(batch_no, &entries).await {
            Ok(answer) => answer,
            Err(ChainError::Reverted { reason, .. }) => {
                return Err(systemic(
                    &self.chain,
                    format!("settle() would revert: {reason}"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if would_pay < entries.len() as u64 {
            tracing::info!(chain = self.chain.chain_id(), batch_id = %batch.id,
                failing = entries.len() as u64 - would_pay,
                "some payers would fail (blacklisted, or funds moved); they fail alone");
        }
        let gas_limit = self.chain.estimate_gas(batch_no, &entries).await?;
        let fees = self.chain.fees().await?;
        let gas_money = U256::from(gas_limit).saturating_mul(U256::from(fees.0));
        self.chain.check_gas_money(gas_money).await?;
        let nonce = self.next_nonce(store_nonce).await?;
        let signed = self
            .chain
            .sign_settle(batch_no, &entries, nonce, gas_limit, fees)
            .await?;
        self.persist_and_send(batch, signed).await
    }

    /// The nonce a new transaction takes: the store's, or the chain's when
    /// another transaction took ours (healing forward). A store ahead of
    /// everything the node knows (the chain was reset, or our unmined
    /// transactions were dropped) would leave a gap nothing fills: the
    /// chain's count wins then.
    async fn next_nonce(&self, store_nonce: i64) -> Result<u64, SettleError> {
        let store_nonce = u64::try_from(store_nonce).unwrap_or(0);
        let mined = self.chain.mined_nonce().await?;
        if store_nonce > mined && store_nonce > self.chain.pending_nonce().await? {
            tracing::warn!(chain = self.chain.chain_id(), store_nonce, chain_nonce = mined,
                "the store's nonce is ahead of the chain (reset, or dropped transactions); using the chain's");
            return Ok(mined);
        }
        Ok(mined.max(store_nonce))
    }

    /// Replaces the batch's newest transaction at the same nonce with both
    /// fee fields raised by at least 12.5 % (and at least the market's).
    async fn replace(&self, batch: &EvmBatch, latest: &ChainTx) -> Result<Pass, SettleError> {
        let batch_no = u64::try_from(batch.batch_no).unwrap_or(0);
        let entries = self.entries(batch)?;
        let (market_fee, market_tip) = self.chain.fees().await?;
        let old_fee = u128::try_from(latest.max_fee_per_gas).unwrap_or(0);
        let old_tip = u128::try_from(latest.max_priority_fee_per_gas).unwrap_or(0);
        let tip = bump(old_tip).max(market_tip);
        let fee = bump(old_fee).max(market_fee).max(tip);
        debug_assert!(fee >= old_fee + old_fee / 8 && tip >= old_tip + old_tip / 8);
        let nonce = u64::try_from(latest.nonce).unwrap_or(0);
        let gas_limit = u64::try_from(latest.gas_limit).unwrap_or(0);
        tracing::warn!(chain = self.chain.chain_id(), batch_id = %batch.id, nonce,
            old_tx = %latest.hash, max_fee = fee, tip, "not mined in time; replacing with higher fees");
        let signed = self
            .chain
            .sign_settle(batch_no, &entries, nonce, gas_limit, (fee, tip))
            .await?;
        self.persist_and_send(batch, signed).await
    }

    async fn persist_and_send(
        &self,
        batch: &EvmBatch,
        signed: super::chain::SignedTx,
    ) -> Result<Pass, SettleError> {
        let hash = format!("{:#x}", signed.hash);
        let record = ChainTx {
            hash: hash.clone(),
            nonce: to_db(u128::from(signed.nonce))?,
            raw: format!("{}", signed.raw),
            gas_limit: to_db(u128::from(signed.gas_limit))?,
            max_fee_per_gas: to_db(signed.max_fee_per_gas)?,
            max_priority_fee_per_gas: to_db(signed.max_priority_fee_per_gas)?,
            created_at_ms: now_ms(),
            broadcast_at_ms: None,
        };
        // The outbox first: after a crash, these bytes are what is sent.
        self.store
            .record_signed_tx(&batch.id, self.chain_id(), &record, now_ms())
            .await?;
        crash_point("after_sign");
        match self.chain.broadcast(&signed.raw).await {
            Ok(Broadcast::Accepted) | Ok(Broadcast::AlreadyKnown) => {
                self.store.mark_broadcast(&hash, now_ms()).await?;
                crash_point("after_broadcast");
                tracing::info!(chain = self.chain.chain_id(), batch_id = %batch.id,
                    tx_hash = %hash, nonce = signed.nonce, "settlement transaction sent");
                Ok(Pass::Waiting)
            }
            Err(error) => {
                self.store
                    .note_batch_error(&batch.id, &error.to_string(), now_ms())
                    .await?;
                Err(error.into())
            }
        }
    }

    /// A paused token fails every transfer: that is the chain's problem,
    /// not the payers'. (A token without `paused()` is taken as running.)
    async fn check_token_running(&self) -> Result<(), SettleError> {
        let token = IPausable::new(self.chain.config().usdc, self.chain.provider().clone());
        if let Ok(true) = token.paused().call().await {
            return Err(systemic(&self.chain, "the token is paused".to_owned()));
        }
        Ok(())
    }
}

impl crate::settlement::Settler for EvmSettler {
    fn run(self) -> impl std::future::Future<Output = ()> + Send {
        EvmSettler::run(self)
    }
}

/// How long a payer held back for the `checks`-th time in a row waits for
/// its next check: the settlement interval, doubled each time, at most
/// `max_ms`.
pub fn held_back_backoff(every_ms: i64, max_ms: i64, checks: i64) -> i64 {
    let doublings = u32::try_from(checks.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    every_ms
        .max(1)
        .saturating_mul(1_i64 << doublings)
        .min(max_ms.max(every_ms))
}

/// Raises a fee by 12.5 %, rounded up, and by at least 1 wei.
fn bump(fee: u128) -> u128 {
    fee.saturating_add(fee.div_ceil(8))
        .max(fee.saturating_add(1))
}

fn systemic(chain: &ChainClient, reason: String) -> SettleError {
    SettleError::Chain(ChainError::Systemic {
        chain: chain.chain_id(),
        reason,
    })
}

fn corrupt(what: &str, value: &str) -> SettleError {
    SettleError::Store(StoreError::Corrupt(format!("{what}: {value:?}")))
}

fn parse_address(wallet: &str) -> Result<Address, SettleError> {
    wallet.parse().map_err(|_| corrupt("wallet", wallet))
}

fn parse_hash(hash: &str) -> Result<B256, SettleError> {
    hash.parse().map_err(|_| corrupt("transaction hash", hash))
}

fn parse_raw(raw: &str) -> Result<Bytes, SettleError> {
    raw.parse().map_err(|_| corrupt("raw transaction", raw))
}

fn to_db(value: u128) -> Result<i64, SettleError> {
    i64::try_from(value).map_err(|_| SettleError::Store(StoreError::AmountOverflow))
}

/// Test hook: with `TOLLGATE_TEST_CRASH_AT=<point>` the process dies at that
/// point (`after_sign`: persisted, not broadcast; `after_broadcast`: sent,
/// receipt not seen), as a power cut would. Never set in production.
fn crash_point(point: &str) {
    if std::env::var("TOLLGATE_TEST_CRASH_AT").is_ok_and(|at| at == point) {
        tracing::error!(point, "TOLLGATE_TEST_CRASH_AT: exiting as a crash would");
        std::process::exit(86);
    }
}

/// A store amount as the chain's integer.
pub fn amount_u256(amount: Amount) -> U256 {
    U256::from(amount.atomic())
}
