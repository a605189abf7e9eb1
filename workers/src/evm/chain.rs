//! [`ChainClient`]: what Tollgate asks of one EVM chain — funds (balance and
//! allowance to the settlement contract, for many wallets in one `eth_call`),
//! whether a batch settled, simulating, signing and broadcasting a batch's
//! transaction, its receipt and what that receipt proves per payer.
//!
//! Nonces and fees are set by the caller, never filled in by the provider:
//! the settler keeps the operator's next nonce in the store (alloy's cached
//! nonce manager keeps counting after a failed send, alloy issue 2385), and
//! every signed transaction is persisted before it is broadcast.
//!
//! Every RPC call is bounded by `rpc_timeout`; transport failures are
//! retried here with exponential backoff and jitter (`backon`), a few times,
//! then reported as [`ChainError::Unavailable`] (transient: the caller tries
//! again later). A node's answer that is an error is never retried blindly.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::eips::Encodable2718;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, FixedBytes, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use alloy::transports::{RpcError, TransportErrorKind};
use backon::{ExponentialBuilder, Retryable};

use super::contracts::TollgateSettlement;

alloy::sol! {
    /// What Tollgate reads of the token (USDC or any ERC-20).
    #[sol(rpc)]
    interface IERC20 {
        event Transfer(address indexed from, address indexed to, uint256 value);
        function balanceOf(address account) external view returns (uint256);
        function allowance(address holder, address spender) external view returns (uint256);
        function approve(address spender, uint256 value) external returns (bool);
    }
}

/// The most wallets one `fundsOf` call reads.
pub const FUNDS_CHUNK: usize = 250;

/// One chain's settlement set-up.
#[derive(Clone)]
pub struct ChainConfig {
    pub chain_id: u64,
    pub rpc_url: String,
    pub usdc: Address,
    pub settlement_contract: Address,
    pub treasury: Address,
    /// The operator's private key (hex). Never logged. `None`: this process
    /// only reads the chain (a gateway's funding check); it cannot settle.
    pub operator_key: Option<String>,
    /// Blocks a receipt needs, its own included, before it counts (1: the
    /// receipt's block is enough).
    pub confirmations: u64,
    /// Blocks a receipt needs, its own included, before its batch is final
    /// (`settled`); until then the batch is confirming and its receipt is
    /// read again every pass. At least `confirmations`.
    pub finality_confirmations: u64,
    pub rpc_timeout: Duration,
    /// The block `BatchSettled` logs are searched from (the contract's
    /// deployment block).
    pub from_block: u64,
}

impl fmt::Debug for ChainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainConfig")
            .field("chain_id", &self.chain_id)
            .field("rpc_url", &self.rpc_url)
            .field("usdc", &self.usdc)
            .field("settlement_contract", &self.settlement_contract)
            .field("treasury", &self.treasury)
            .field("operator_key", &"<secret>")
            .field("confirmations", &self.confirmations)
            .field("finality_confirmations", &self.finality_confirmations)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached or did not answer in time (after
    /// retries): try again later.
    #[error("chain {chain}: RPC unavailable: {reason}")]
    Unavailable { chain: u64, reason: String },
    /// The node answered with an error.
    #[error("chain {chain}: RPC error: {reason}")]
    Rpc { chain: u64, reason: String },
    /// The call or transaction would revert.
    #[error("chain {chain}: reverted: {reason}")]
    Reverted { chain: u64, reason: String },
    /// Something only an operator can fix (contract misconfigured, operator
    /// out of gas, token paused): settlement on the chain pauses.
    #[error("chain {chain}: {reason}")]
    Systemic { chain: u64, reason: String },
    /// Bad settings (key, addresses, URL).
    #[error("chain {chain}: {reason}")]
    Config { chain: u64, reason: String },
}

impl ChainError {
    /// Worth trying again without anyone's help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChainError::Unavailable { .. } | ChainError::Rpc { .. }
        )
    }
}

/// A wallet's token balance and its allowance to the settlement contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funds {
    pub balance: U256,
    pub allowance: U256,
}

impl Funds {
    /// What the contract can take from the wallet now.
    pub fn spendable(&self) -> U256 {
        self.balance.min(self.allowance)
    }
}

/// A chain amount as the ledger holds it: clamped to [`ledger::Amount::MAX`]
/// (a balance or allowance beyond it covers any budget alike).
pub fn ledger_amount(value: U256) -> ledger::Amount {
    u64::try_from(value)
        .ok()
        .and_then(ledger::Amount::from_atomic)
        .unwrap_or(ledger::Amount::MAX)
}

/// A transaction signed and ready to broadcast (and to persist first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    pub hash: B256,
    pub raw: Bytes,
    pub nonce: u64,
    pub gas_limit: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// What broadcasting a transaction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// The node took it.
    Accepted,
    /// The node had it already, or its nonce is already used (it may be
    /// mined): the receipt or the nonce tells which.
    AlreadyKnown,
}

/// A batch the contract logged as settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledBatch {
    pub batch_no: u64,
    /// What its payers paid together.
    pub total: U256,
    pub tx_hash: Option<B256>,
}

/// A payer's outcome in a mined settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayerOutcome {
    /// The token's `Transfer(payer, treasury, amount)` is in the receipt.
    Paid,
    /// The contract's `PayerFailed(batch, payer, amount)` is.
    Failed,
}

/// One chain's client. Cheap to clone.
#[derive(Clone)]
pub struct ChainClient {
    config: ChainConfig,
    provider: RootProvider,
    /// `None` when the process has no operator key (reads only).
    wallet: Option<EthereumWallet>,
    /// The operator's address; the zero address without a key.
    operator: Address,
    /// The RPC endpoint answered with the configured chain id once
    /// ([`ChainClient::verify_chain_id`]).
    chain_verified: Arc<AtomicBool>,
}

impl fmt::Debug for ChainClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainClient")
            .field("config", &self.config)
            .field("operator", &self.operator)
            .finish()
    }
}

impl ChainClient {
    pub fn new(config: ChainConfig) -> Result<ChainClient, ChainError> {
        let chain = config.chain_id;
        let url = config.rpc_url.parse().map_err(|_| ChainError::Config {
            chain,
            reason: format!("rpc_url is not a URL: {:?}", config.rpc_url),
        })?;
        let signer: Option<PrivateKeySigner> = match config.operator_key.as_deref() {
            None => None,
            Some(key) => Some(key.trim().parse().map_err(|_| ChainError::Config {
                chain,
                reason: "operator_key is not a 32-byte hex private key".to_owned(),
            })?),
        };
        let operator = signer
            .as_ref()
            .map_or(Address::ZERO, PrivateKeySigner::address);
        Ok(ChainClient {
            provider: RootProvider::new_http(url),
            wallet: signer.map(EthereumWallet::from),
            operator,
            config,
            chain_verified: Arc::default(),
        })
    }

    /// The chain id the RPC endpoint answers with now (`eth_chainId`).
    pub async fn answered_chain_id(&self) -> Result<u64, ChainError> {
        self.rpc("eth_chainId", || async {
            self.provider
                .get_chain_id()
                .await
                .map_err(|e| self.rpc_error(e))
        })
        .await
    }

    /// The RPC endpoint answers for the configured chain: checked live
    /// until it first does, then remembered. Another chain id is
    /// [`ChainError::Systemic`], naming `chains.ID.rpc_url`: funds read
    /// there are another chain's, and nothing sent there settles here.
    pub async fn verify_chain_id(&self) -> Result<(), ChainError> {
        if self.chain_verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let answered = self.answered_chain_id().await?;
        self.chain_id_is(answered)?;
        self.chain_verified.store(true, Ordering::Release);
        Ok(())
    }

    /// `answered` is the configured chain id, else why not.
    pub fn chain_id_is(&self, answered: u64) -> Result<(), ChainError> {
        let chain = self.chain_id();
        if answered == chain {
            return Ok(());
        }
        Err(ChainError::Systemic {
            chain,
            reason: format!(
                "the RPC endpoint (chains.{chain}.rpc_url) answers for chain {answered}, \
                 not {chain}"
            ),
        })
    }

    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    pub fn chain_id(&self) -> u64 {
        self.config.chain_id
    }

    /// The operator's address (the settlement contract's `operator`; the
    /// zero address in a client without a key).
    pub fn operator(&self) -> Address {
        self.operator
    }

    /// Whether this client holds the operator's key (can settle).
    pub fn can_sign(&self) -> bool {
        self.wallet.is_some()
    }

    pub fn provider(&self) -> &RootProvider {
        &self.provider
    }

    fn contract(&self) -> TollgateSettlement::TollgateSettlementInstance<RootProvider> {
        TollgateSettlement::new(self.config.settlement_contract, self.provider.clone())
    }

    /// Runs one RPC, bounded in time, retrying transport failures a few
    /// times with exponential backoff and jitter.
    async fn rpc<T, F, Fut>(&self, what: &str, call: F) -> Result<T, ChainError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        let timeout = self.config.rpc_timeout;
        let chain = self.chain_id();
        let mut call = call;
        let bounded = || {
            let fut = call();
            async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(result) => result,
                    Err(_) => Err(ChainError::Unavailable {
                        chain,
                        reason: format!("no answer within {} ms", timeout.as_millis()),
                    }),
                }
            }
        };
        bounded
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(4)
                    .with_jitter(),
            )
            .when(|e| matches!(e, ChainError::Unavailable { .. }))
            .notify(|e, after| {
                metrics::counter!("tollgate_chain_rpc_retries_total", "chain" => chain.to_string())
                    .increment(1);
                tracing::debug!(chain, call = what, error = %e, ?after, "RPC failed; retrying");
            })
            .await
    }

    /// Maps a transport-level error.
    fn rpc_error(&self, error: RpcError<TransportErrorKind>) -> ChainError {
        let chain = self.chain_id();
        match &error {
            RpcError::Transport(_) => ChainError::Unavailable {
                chain,
                reason: error.to_string(),
            },
            RpcError::ErrorResp(payload) => {
                if payload.as_revert_data().is_some() || payload.message.contains("revert") {
                    ChainError::Reverted {
                        chain,
                        reason: revert_reason(payload.as_revert_data(), &payload.message),
                    }
                } else {
                    ChainError::Rpc {
                        chain,
                        reason: payload.message.to_string(),
                    }
                }
            }
            _ => ChainError::Rpc {
                chain,
                reason: error.to_string(),
            },
        }
    }

    fn contract_error(&self, error: alloy::contract::Error) -> ChainError {
        match error {
            alloy::contract::Error::TransportError(e) => self.rpc_error(e),
            other => ChainError::Rpc {
                chain: self.chain_id(),
                reason: other.to_string(),
            },
        }
    }

    /// Each wallet's balance and allowance to the settlement contract, in
    /// `FUNDS_CHUNK`-sized `eth_call`s, in order.
    pub async fn funds(&self, wallets: &[Address]) -> Result<Vec<Funds>, ChainError> {
        self.verify_chain_id().await?;
        let mut funds = Vec::with_capacity(wallets.len());
        for chunk in wallets.chunks(FUNDS_CHUNK) {
            let answer = self
                .rpc("fundsOf", || async {
                    self.contract()
                        .fundsOf(self.config.usdc, chunk.to_vec())
                        .call()
                        .await
                        .map_err(|e| self.contract_error(e))
                })
                .await?;
            if answer.balances.len() != chunk.len() || answer.allowances.len() != chunk.len() {
                return Err(ChainError::Systemic {
                    chain: self.chain_id(),
                    reason: "fundsOf answered the wrong number of wallets".to_owned(),
                });
            }
            funds.extend(answer.balances.iter().zip(&answer.allowances).map(
                |(balance, allowance)| Funds {
                    balance: *balance,
                    allowance: *allowance,
                },
            ));
        }
        Ok(funds)
    }

    /// One wallet's balance and allowance (zero when the node answers none).
    pub async fn funds_of(&self, wallet: Address) -> Result<Funds, ChainError> {
        let funds = self.funds(&[wallet]).await?;
        Ok(funds.first().copied().unwrap_or(Funds {
            balance: U256::ZERO,
            allowance: U256::ZERO,
        }))
    }

    /// Whether the contract recorded batch `batch_no` as settled.
    pub async fn is_settled(&self, batch_no: u64) -> Result<bool, ChainError> {
        self.rpc("isSettled", || async {
            self.contract()
                .isSettled(U256::from(batch_no))
                .call()
                .await
                .map_err(|e| self.contract_error(e))
        })
        .await
    }

    /// Checks the contract is set up for us: our operator and the
    /// configured treasury. A mismatch is systemic.
    pub async fn check_roles(&self) -> Result<(), ChainError> {
        let chain = self.chain_id();
        let operator = self
            .rpc("operator", || async {
                self.contract()
                    .operator()
                    .call()
                    .await
                    .map_err(|e| self.contract_error(e))
            })
            .await?;
        if operator != self.operator {
            return Err(ChainError::Systemic {
                chain,
                reason: format!(
                    "the settlement contract's operator is {operator}, not ours ({})",
                    self.operator
                ),
            });
        }
        let treasury = self
            .rpc("treasury", || async {
                self.contract()
                    .treasury()
                    .call()
                    .await
                    .map_err(|e| self.contract_error(e))
            })
            .await?;
        if treasury != self.config.treasury {
            return Err(ChainError::Systemic {
                chain,
                reason: format!(
                    "the settlement contract's treasury is {treasury}, not the configured {}",
                    self.config.treasury
                ),
            });
        }
        Ok(())
    }

    /// Checks the operator can pay `gas_needed_wei` (systemic when not).
    pub async fn check_gas_money(&self, gas_needed_wei: U256) -> Result<(), ChainError> {
        let chain = self.chain_id();
        let gas_money = self
            .rpc("eth_getBalance", || async {
                self.provider
                    .get_balance(self.operator)
                    .await
                    .map_err(|e| self.rpc_error(e))
            })
            .await?;
        if gas_money < gas_needed_wei {
            return Err(ChainError::Systemic {
                chain,
                reason: format!(
                    "the operator {} is out of gas money: {gas_money} wei, a batch needs {gas_needed_wei}",
                    self.operator
                ),
            });
        }
        Ok(())
    }

    fn settle_request(&self, batch_no: u64, entries: &[FixedBytes<32>]) -> TransactionRequest {
        use alloy::sol_types::SolCall;
        let call = TollgateSettlement::settleCall {
            batchId: U256::from(batch_no),
            token: self.config.usdc,
            entries: entries.to_vec(),
        };
        TransactionRequest::default()
            .with_from(self.operator)
            .with_to(self.config.settlement_contract)
            .with_input(Bytes::from(call.abi_encode()))
    }

    /// Simulates `settle` as the operator: (payers that would pay, total).
    pub async fn simulate(
        &self,
        batch_no: u64,
        entries: &[FixedBytes<32>],
    ) -> Result<(u64, U256), ChainError> {
        let answer = self
            .rpc("eth_call settle", || async {
                self.contract()
                    .settle(U256::from(batch_no), self.config.usdc, entries.to_vec())
                    .from(self.operator)
                    .call()
                    .await
                    .map_err(|e| self.contract_error(e))
            })
            .await?;
        let payers = u64::try_from(answer.payersSettled).unwrap_or(u64::MAX);
        Ok((payers, answer.total))
    }

    /// Gas for `settle`, with a fifth on top (the contract refuses to start
    /// a transfer it cannot finish, so too little gas reverts, never fails
    /// a payer).
    pub async fn estimate_gas(
        &self,
        batch_no: u64,
        entries: &[FixedBytes<32>],
    ) -> Result<u64, ChainError> {
        let request = self.settle_request(batch_no, entries);
        let gas = self
            .rpc("eth_estimateGas", || async {
                self.provider
                    .estimate_gas(request.clone())
                    .await
                    .map_err(|e| self.rpc_error(e))
            })
            .await?;
        Ok(gas.saturating_add(gas / 5))
    }

    /// The network's EIP-1559 fees now: (max fee, priority fee).
    pub async fn fees(&self) -> Result<(u128, u128), ChainError> {
        let estimate = self
            .rpc("fees", || async {
                self.provider
                    .estimate_eip1559_fees()
                    .await
                    .map_err(|e| self.rpc_error(e))
            })
            .await?;
        Ok((estimate.max_fee_per_gas, estimate.max_priority_fee_per_gas))
    }

    /// Transactions of the operator's mined so far (its next nonce on chain).
    pub async fn mined_nonce(&self) -> Result<u64, ChainError> {
        self.rpc("eth_getTransactionCount", || async {
            self.provider
                .get_transaction_count(self.operator)
                .await
                .map_err(|e| self.rpc_error(e))
        })
        .await
    }

    /// The operator's next nonce counting transactions the node holds
    /// unmined.
    pub async fn pending_nonce(&self) -> Result<u64, ChainError> {
        self.rpc("eth_getTransactionCount pending", || async {
            self.provider
                .get_transaction_count(self.operator)
                .pending()
                .await
                .map_err(|e| self.rpc_error(e))
        })
        .await
    }

    pub async fn block_number(&self) -> Result<u64, ChainError> {
        self.rpc("eth_blockNumber", || async {
            self.provider
                .get_block_number()
                .await
                .map_err(|e| self.rpc_error(e))
        })
        .await
    }

    /// Signs `settle(batch_no, usdc, entries)` at `nonce` with the given gas
    /// and fees. Nothing is sent.
    pub async fn sign_settle(
        &self,
        batch_no: u64,
        entries: &[FixedBytes<32>],
        nonce: u64,
        gas_limit: u64,
        (max_fee_per_gas, max_priority_fee_per_gas): (u128, u128),
    ) -> Result<SignedTx, ChainError> {
        let request = self
            .settle_request(batch_no, entries)
            .with_nonce(nonce)
            .with_chain_id(self.chain_id())
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(max_fee_per_gas)
            .with_max_priority_fee_per_gas(max_priority_fee_per_gas);
        let wallet = self.wallet.as_ref().ok_or_else(|| ChainError::Config {
            chain: self.chain_id(),
            reason: "no operator key in this process: it cannot sign".to_owned(),
        })?;
        let envelope = request
            .build(wallet)
            .await
            .map_err(|e| ChainError::Config {
                chain: self.chain_id(),
                reason: format!("could not sign the settlement transaction: {e}"),
            })?;
        Ok(SignedTx {
            hash: *envelope.tx_hash(),
            raw: Bytes::from(envelope.encoded_2718()),
            nonce,
            gas_limit,
            max_fee_per_gas,
            max_priority_fee_per_gas,
        })
    }

    /// Broadcasts signed bytes (again, when they were sent before).
    pub async fn broadcast(&self, raw: &Bytes) -> Result<Broadcast, ChainError> {
        let result = self
            .rpc("eth_sendRawTransaction", || async {
                match self.provider.send_raw_transaction(raw).await {
                    Ok(_) => Ok(Broadcast::Accepted),
                    Err(RpcError::ErrorResp(payload)) if already_known(&payload.message) => {
                        Ok(Broadcast::AlreadyKnown)
                    }
                    Err(e) => Err(self.rpc_error(e)),
                }
            })
            .await?;
        Ok(result)
    }

    pub async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, ChainError> {
        self.rpc("eth_getTransactionReceipt", || async {
            self.provider
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| self.rpc_error(e))
        })
        .await
    }

    /// The contract's `BatchSettled` logs since `from_block`: every batch's,
    /// or only `batch_no`'s. One `eth_getLogs`, retried like every RPC.
    pub async fn settled_batches(
        &self,
        batch_no: Option<u64>,
    ) -> Result<Vec<SettledBatch>, ChainError> {
        let mut filter = Filter::new()
            .address(self.config.settlement_contract)
            .event_signature(TollgateSettlement::BatchSettled::SIGNATURE_HASH)
            .from_block(self.config.from_block);
        if let Some(no) = batch_no {
            filter = filter.topic1(B256::from(U256::from(no)));
        }
        let logs = self
            .rpc("eth_getLogs", || async {
                self.provider
                    .get_logs(&filter)
                    .await
                    .map_err(|e| self.rpc_error(e))
            })
            .await?;
        Ok(logs
            .iter()
            .filter_map(|log| {
                let event = TollgateSettlement::BatchSettled::decode_log(&log.inner).ok()?;
                Some(SettledBatch {
                    batch_no: u64::try_from(event.batchId).unwrap_or(u64::MAX),
                    total: event.total,
                    tx_hash: log.transaction_hash,
                })
            })
            .collect())
    }

    /// The transaction that settled `batch_no`, found by its
    /// `BatchSettled` log (for when none of our own hashes has a receipt:
    /// the outcome was lost).
    pub async fn find_settlement(&self, batch_no: u64) -> Result<Option<B256>, ChainError> {
        let settled = self.settled_batches(Some(batch_no)).await?;
        Ok(settled.iter().find_map(|batch| batch.tx_hash))
    }

    /// The highest batch number the contract logged as settled (0: none).
    pub async fn last_settled_batch_no(&self) -> Result<u64, ChainError> {
        let settled = self.settled_batches(None).await?;
        Ok(settled
            .iter()
            .map(|batch| batch.batch_no)
            .max()
            .unwrap_or(0))
    }

    /// How many blocks deep `receipt` is, its own included (0: not mined).
    /// Exact when `confirmations` or `finality_confirmations` asks for more
    /// than one block; else 1 for any mined receipt (no RPC needed).
    pub async fn depth(&self, receipt: &TransactionReceipt) -> Result<u64, ChainError> {
        let Some(mined_in) = receipt.block_number else {
            return Ok(0);
        };
        if self
            .config
            .confirmations
            .max(self.config.finality_confirmations)
            <= 1
        {
            return Ok(1);
        }
        let head = self.block_number().await?;
        Ok(head.saturating_add(1).saturating_sub(mined_in))
    }

    /// What a successful `settle` receipt proves for each `(payer, amount)`
    /// of batch `batch_no`: `Paid` by the token's `Transfer(payer, treasury,
    /// amount)`, `Failed` by the contract's `PayerFailed`, `None` when it
    /// proves neither (which the contract cannot produce: the caller stops).
    pub fn outcomes(
        &self,
        receipt: &TransactionReceipt,
        batch_no: u64,
        payers: &[(Address, U256)],
    ) -> Vec<Option<PayerOutcome>> {
        let mut paid = std::collections::HashSet::new();
        let mut failed = std::collections::HashSet::new();
        for log in receipt.inner.logs() {
            if log.address() == self.config.usdc {
                if let Ok(transfer) = IERC20::Transfer::decode_log(&log.inner) {
                    if transfer.to == self.config.treasury {
                        paid.insert((transfer.from, transfer.value));
                    }
                }
            } else if log.address() == self.config.settlement_contract {
                if let Ok(event) = TollgateSettlement::PayerFailed::decode_log(&log.inner) {
                    if event.batchId == U256::from(batch_no) {
                        failed.insert((event.payer, event.amount));
                    }
                }
            }
        }
        payers
            .iter()
            .map(|key| {
                if paid.contains(key) {
                    Some(PayerOutcome::Paid)
                } else if failed.contains(key) {
                    Some(PayerOutcome::Failed)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// "Already known", "nonce too low" and their kin: the transaction, or one
/// at its nonce, reached the node before.
fn already_known(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "already known",
        "already imported",
        "nonce too low",
        "known transaction",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// A revert's reason: the contract's custom error by name when it is one
/// of ours, else the node's message.
fn revert_reason(data: Option<Bytes>, message: &str) -> String {
    use alloy::sol_types::SolInterface;
    if let Some(data) = data {
        if let Ok(error) = TollgateSettlement::TollgateSettlementErrors::abi_decode(&data) {
            return format!("{error:?}");
        }
    }
    message.to_owned()
}
