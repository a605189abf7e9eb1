//! `reconcile`'s chain side (`evm` mode): the ledger against the contract's
//! events and the token's transfers. For every batch the ledger calls
//! settled, the contract must say so too, its receipt must have succeeded
//! and prove exactly the outcome the ledger recorded for each payer; per
//! payer, the USDC the receipts moved to the treasury must equal the charges
//! the ledger settled (invariant 4); and every `BatchSettled` the contract
//! logged must be a batch the ledger knows settled.
//!
//! [`reopen_if_lost`] recovers the first of those differences (a batch the
//! ledger calls settled, the chain does not: a reorg deeper than
//! `finality_confirmations`) for `tollgate settlements replay`.

use std::collections::{BTreeMap, HashSet};

use alloy::primitives::{Address, U256};
use ledger::store::chain::BatchPayer;
use ledger::store::settlement::Difference;
use ledger::time::now_ms;
use ledger::{ChainId, Store};

use super::chain::{ChainClient, PayerOutcome};
use super::settler::SettleError;

/// Batches read per page.
const PAGE: i64 = 500;

fn difference(check: &'static str, subject: String, expected: i64, found: i64) -> Difference {
    Difference {
        check,
        subject,
        expected,
        found,
    }
}

fn to_i64(value: U256) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Every difference between the ledger and chain `client`.
pub async fn reconcile_chain(
    store: &Store,
    client: &ChainClient,
) -> Result<Vec<Difference>, SettleError> {
    let chain = ChainId(client.chain_id());
    let mut tally = Tally::default();
    let mut after = 0;
    loop {
        let batches = store.evm_batches(chain, "settled", after, PAGE).await?;
        let Some(last) = batches.last() else { break };
        after = last.1;
        for (id, batch_no, tx_hash) in &batches {
            tally
                .settled_batch(store, client, id, *batch_no, tx_hash.as_deref())
                .await?;
        }
        if (batches.len() as i64) < PAGE {
            break;
        }
    }
    tally.moved_against_ledger(store, chain).await?;
    // Batches in flight are known too: one may be mined and not yet
    // recorded (the settler's next pass records it).
    for status in ["open", "sending"] {
        for (_, no, _) in store.evm_batches(chain, status, 0, PAGE).await? {
            tally.known.insert(u64::try_from(no).unwrap_or(0));
        }
    }
    tally.unknown_settlements(client).await?;
    Ok(tally.differences)
}

/// What a reconciliation found so far, and what it tallies on the way.
#[derive(Default)]
struct Tally {
    differences: Vec<Difference>,
    /// Per payer, the USDC the receipts of settled batches moved.
    moved: BTreeMap<Address, U256>,
    /// The batch numbers the ledger knows (settled or in flight).
    known: HashSet<u64>,
}

impl Tally {
    /// One batch the ledger calls settled: the contract must say so, its
    /// receipt must have succeeded and prove each payer's recorded outcome.
    async fn settled_batch(
        &mut self,
        store: &Store,
        client: &ChainClient,
        id: &str,
        batch_no: i64,
        tx_hash: Option<&str>,
    ) -> Result<(), SettleError> {
        let no = u64::try_from(batch_no).unwrap_or(0);
        self.known.insert(no);
        if !client.is_settled(no).await? {
            self.differences.push(difference(
                "batch settled in the ledger, not on chain",
                format!("batch {id} (#{no})"),
                1,
                0,
            ));
            return Ok(());
        }
        let receipt = match tx_hash.and_then(|h| h.parse().ok()) {
            Some(hash) => client.receipt(hash).await?,
            None => None,
        };
        let Some(receipt) = receipt.filter(|r| r.status()) else {
            self.differences.push(difference(
                "settled batch without a successful receipt",
                format!("batch {id} tx {}", tx_hash.unwrap_or("none")),
                1,
                0,
            ));
            return Ok(());
        };
        let payers = store.batch_payers(id).await?;
        let mut lines = Vec::with_capacity(payers.len());
        for payer in &payers {
            let address: Address = payer
                .payer
                .parse()
                .map_err(|_| ledger::StoreError::Corrupt(format!("wallet {:?}", payer.payer)))?;
            lines.push((address, U256::from(payer.amount.atomic())));
        }
        let outcomes = client.outcomes(&receipt, no, &lines);
        for ((payer, line), outcome) in payers.iter().zip(&lines).zip(outcomes) {
            self.payer_outcome(id, payer, line, outcome);
        }
        Ok(())
    }

    /// A payer's outcome as the ledger recorded it against what the
    /// receipt proves; a proven payment counts toward what moved.
    fn payer_outcome(
        &mut self,
        id: &str,
        payer: &BatchPayer,
        (address, amount): &(Address, U256),
        outcome: Option<PayerOutcome>,
    ) {
        let proven = match outcome {
            Some(PayerOutcome::Paid) => {
                *self.moved.entry(*address).or_default() += *amount;
                "settled"
            }
            Some(PayerOutcome::Failed) => "failed",
            None => "unproven",
        };
        if proven != payer.outcome {
            self.differences.push(difference(
                "payer outcome in the ledger ≠ what the receipt proves",
                format!(
                    "batch {id} payer {} (ledger {}, chain {proven})",
                    payer.payer, payer.outcome
                ),
                to_i64(*amount),
                if proven == "settled" {
                    to_i64(*amount)
                } else {
                    0
                },
            ));
        }
    }

    /// Invariant 4, per payer: USDC moved = charges settled.
    async fn moved_against_ledger(
        &mut self,
        store: &Store,
        chain: ChainId,
    ) -> Result<(), SettleError> {
        let ledger: BTreeMap<Address, U256> = store
            .evm_settled_by_payer(chain)
            .await?
            .into_iter()
            .filter_map(|(wallet, sum)| Some((wallet.parse().ok()?, U256::from(sum.atomic()))))
            .collect();
        for address in ledger
            .keys()
            .chain(self.moved.keys())
            .collect::<HashSet<_>>()
        {
            let expected = ledger.get(address).copied().unwrap_or_default();
            let found = self.moved.get(address).copied().unwrap_or_default();
            if expected != found {
                self.differences.push(difference(
                    "USDC moved from a payer ≠ Σ its settled charges (invariant 4)",
                    format!("{address:#x} on chain {}", chain.0),
                    to_i64(expected),
                    to_i64(found),
                ));
            }
        }
        Ok(())
    }

    /// Settlements the contract logged that the ledger does not know.
    async fn unknown_settlements(&mut self, client: &ChainClient) -> Result<(), SettleError> {
        for settled in client.settled_batches(None).await? {
            if !self.known.contains(&settled.batch_no) {
                self.differences.push(difference(
                    "batch settled on chain, not in the ledger",
                    format!("batch #{} tx {:?}", settled.batch_no, settled.tx_hash),
                    0,
                    to_i64(settled.total),
                ));
            }
        }
        Ok(())
    }
}

/// What [`reopen_if_lost`] did with a batch the ledger calls settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostBatch {
    /// The contract says the batch settled: nothing to do (re-opening it
    /// would ask its payers to pay twice).
    SettledOnChain,
    /// The chain does not have it: re-opened, this many charges `batched`
    /// again; the settler sends it again under the same batch number.
    Reopened(u64),
}

/// A batch `batch_id` (on-chain number `batch_no`) that the ledger calls
/// settled: asks the contract first, and only when it says the number is
/// not settled re-opens the batch. Should the old transaction be mined
/// after all, the contract refuses the number a second time, so no payer
/// pays twice either way.
pub async fn reopen_if_lost(
    store: &Store,
    client: &ChainClient,
    batch_id: &str,
    batch_no: i64,
) -> Result<LostBatch, SettleError> {
    let no = u64::try_from(batch_no)
        .map_err(|_| ledger::StoreError::Corrupt(format!("batch number {batch_no}")))?;
    if client.is_settled(no).await? {
        return Ok(LostBatch::SettledOnChain);
    }
    let error = format!(
        "batch #{no} was settled in the ledger, not on chain (a reorg): re-opened by replay, \
         sent again under the same number"
    );
    let charges = store.reopen_lost_batch(batch_id, &error, now_ms()).await?;
    tracing::warn!(chain = client.chain_id(), batch_id, batch_no = no, charges, %error);
    Ok(LostBatch::Reopened(charges))
}
