//! On-chain settlement batches: pending charges claimed per payer, each
//! batch's attempts, confirming and re-opened batches, and each payer's
//! proven outcome. The operator's account per chain and the signed
//! transactions that carry a batch are [`super::outbox`].
//!
//! A batch moves `open` (charges claimed as `batched`, no live transaction)
//! → `sending` (a signed transaction persisted; maybe broadcast, maybe
//! replaced) → `confirming` (still `sending` in the row, with the block its
//! successful receipt was mined in: provisional, the charges still
//! `batched`) → `settled` (that receipt is `finality_confirmations` deep and
//! proved each payer paid or failed), or back to `sending` when the chain
//! loses a confirming receipt (a reorg), back to `open` when its transaction
//! can no longer be mined (reverted, or its nonce consumed by another), or
//! `failed` when an operator must look. A `settled` batch the chain lost
//! (a reorg deeper than finality) returns to `open` by an operator's replay,
//! once the contract says it is not settled. Only a final receipt moves a
//! charge to `settled`; a charge is `failed` only when the chain proves its
//! payer did not pay, so replaying it can never pay twice.

use super::{chain_to_db, get_amount, get_i64, get_opt_i64, get_opt_string, get_string, Store};
use crate::{Amount, ChainId, StoreError};

/// The most payers one on-chain batch names (the contract's own bound).
pub const EVM_BATCH_PAYERS_MAX: usize = 1_000;

/// A payer with pending charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPayer {
    pub wallet: String,
    pub sum: Amount,
    pub charges: i64,
    pub oldest_ms: i64,
    /// Held back by an earlier check (its re-check is due).
    pub held_back: bool,
}

/// An on-chain batch: its number on chain and each payer's sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmBatch {
    pub id: String,
    pub chain_id: i64,
    pub batch_no: i64,
    /// `open` or `sending` while in flight (`sending` with `mined`: the
    /// batch is confirming).
    pub status: String,
    /// The payers still to settle (`pending`) and each one's sum.
    pub payers: Vec<(String, Amount)>,
    pub created_at_ms: i64,
    /// Where its successful receipt was last seen, while it is confirming.
    pub mined: Option<MinedIn>,
}

/// The block a confirming batch's receipt was mined in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinedIn {
    pub tx_hash: String,
    pub block_no: i64,
    pub block_hash: String,
}

/// A key's charges settled by an on-chain transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledTx {
    pub key_id: String,
    pub tx_hash: String,
    pub settled_at_ms: i64,
    /// The settlement batch's id.
    pub batch_id: String,
}

impl SettledTx {
    /// The cursor just past this row.
    pub fn cursor(&self) -> SettledCursor {
        SettledCursor {
            settled_at_ms: self.settled_at_ms,
            batch_id: self.batch_id.clone(),
            key_id: self.key_id.clone(),
        }
    }
}

/// Where a reading of settled transactions resumes: past the row of this
/// (settled at, batch id, key id), in that order. The default reads from
/// the start. All three, since one batch settles at one instant for many
/// keys (more than a page), and batches of several chains may share one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettledCursor {
    pub settled_at_ms: i64,
    pub batch_id: String,
    pub key_id: String,
}

/// A payer's line in a batch, for operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchPayer {
    pub payer: String,
    pub amount: Amount,
    pub charge_count: i64,
    pub outcome: String,
}

/// One attempt to settle a batch, for operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAttempt {
    pub attempt: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub outcome: Option<String>,
    pub tx_hash: Option<String>,
    pub error: Option<String>,
}

impl Store {
    /// Payers with charges `pending` on `chain` recorded at or before
    /// `recorded_before_ms`, oldest first: at most `limit` that are not held
    /// back, then at most `limit` held back whose re-check is due by then
    /// ([`super::payers`]). Held-back payers not due are read past, so they
    /// never stand in front of payers who can pay.
    pub async fn pending_payers(
        &self,
        chain: ChainId,
        recorded_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingPayer>, StoreError> {
        let limit = i64::try_from(limit.min(EVM_BATCH_PAYERS_MAX * 10)).unwrap_or(1);
        let mut payers = Vec::new();
        for held in [false, true] {
            let rows = sqlx::query(&format!(
                "SELECT c.wallet, CAST(SUM(c.amount_atomic) AS BIGINT) AS total,
                        CAST(COUNT(*) AS BIGINT) AS n, MIN(c.created_at_ms) AS oldest
                   FROM charges c
                  WHERE c.status = 'pending' AND c.chain_id = $1 AND c.created_at_ms <= $2
                    AND {} EXISTS (SELECT 1 FROM held_back_payers h
                                    WHERE h.chain_id = c.chain_id AND h.wallet = c.wallet)
                    AND NOT EXISTS (SELECT 1 FROM held_back_payers h
                                     WHERE h.chain_id = c.chain_id AND h.wallet = c.wallet
                                       AND h.retry_at_ms > $2)
                  GROUP BY c.wallet ORDER BY MIN(c.created_at_ms), c.wallet LIMIT $3",
                if held { "" } else { "NOT" }
            ))
            .bind(chain_to_db(chain)?)
            .bind(recorded_before_ms)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
            for row in &rows {
                payers.push(PendingPayer {
                    wallet: get_string(row, "wallet")?,
                    sum: get_amount(row, "total")?,
                    charges: get_i64(row, "n")?,
                    oldest_ms: get_i64(row, "oldest")?,
                    held_back: held,
                });
            }
        }
        Ok(payers)
    }

    /// Opens batch `batch_id` on `chain` for `wallets` (each with pending
    /// charges recorded at or before `recorded_before_ms`): takes the next
    /// batch number, claims those charges as `batched`, and records each
    /// payer's sum — one transaction. `None` when nothing was left to claim.
    pub async fn open_evm_batch(
        &self,
        batch_id: &str,
        chain: ChainId,
        wallets: &[String],
        recorded_before_ms: i64,
        now_ms: i64,
    ) -> Result<Option<EvmBatch>, StoreError> {
        if wallets.is_empty() || wallets.len() > EVM_BATCH_PAYERS_MAX {
            return Ok(None);
        }
        let chain_db = chain_to_db(chain)?;
        let mut tx = self.pool().begin().await?;
        // The account row first: it serializes batch numbers (and SQLite
        // takes its write lock before anything is read).
        let batch_no = take_batch_no(&mut tx, chain_db, now_ms).await?;
        sqlx::query(
            "INSERT INTO settlement_batches
                    (id, chain_id, status, chain_batch_no, created_at_ms, updated_at_ms)
             VALUES ($1, $2, 'open', $3, $4, $4)",
        )
        .bind(batch_id)
        .bind(chain_db)
        .bind(batch_no)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let claim = (chain_db, recorded_before_ms);
        let mut per_payer = claim_charges(&mut tx, batch_id, claim, wallets).await?;
        // Zero-amount charges need no transfer: they settle with the batch.
        per_payer.retain(|_, (sum, _)| !sum.is_zero());
        if per_payer.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        record_payers(&mut tx, batch_id, &per_payer).await?;
        tx.commit().await?;
        Ok(Some(EvmBatch {
            id: batch_id.to_owned(),
            chain_id: chain_db,
            batch_no,
            status: "open".to_owned(),
            payers: per_payer
                .into_iter()
                .map(|(payer, (sum, _))| (payer, sum))
                .collect(),
            created_at_ms: now_ms,
            mined: None,
        }))
    }

    /// The chain's batch in flight (`open` or `sending`, confirming
    /// included), oldest first, with the payers still to settle.
    pub async fn in_flight_batch(&self, chain: ChainId) -> Result<Option<EvmBatch>, StoreError> {
        let row = sqlx::query(
            "SELECT id, chain_id, chain_batch_no, status, created_at_ms, tx_hash, mined_block_no,
                    mined_block_hash FROM settlement_batches
              WHERE chain_id = $1 AND status IN ('open', 'sending') AND chain_batch_no IS NOT NULL
              ORDER BY chain_batch_no LIMIT 1",
        )
        .bind(chain_to_db(chain)?)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id = get_string(&row, "id")?;
        // A payer whose failure was proven stays out of a batch sent again
        // after the chain lost it (its charges are `failed`, replayable).
        let payers = self
            .batch_payers(&id)
            .await?
            .into_iter()
            .filter(|p| p.outcome == "pending")
            .map(|p| (p.payer, p.amount))
            .collect();
        let mined = match (
            get_opt_string(&row, "tx_hash")?,
            get_opt_i64(&row, "mined_block_no")?,
            get_opt_string(&row, "mined_block_hash")?,
        ) {
            (Some(tx_hash), Some(block_no), Some(block_hash)) => Some(MinedIn {
                tx_hash,
                block_no,
                block_hash,
            }),
            _ => None,
        };
        Ok(Some(EvmBatch {
            id,
            chain_id: get_i64(&row, "chain_id")?,
            batch_no: get_i64(&row, "chain_batch_no")?,
            status: get_string(&row, "status")?,
            payers,
            created_at_ms: get_i64(&row, "created_at_ms")?,
            mined,
        }))
    }

    /// A batch's payers and their outcomes.
    pub async fn batch_payers(&self, batch_id: &str) -> Result<Vec<BatchPayer>, StoreError> {
        let rows = sqlx::query(
            "SELECT payer, amount_atomic, charge_count, outcome FROM settlement_payers
              WHERE batch_id = $1 ORDER BY payer",
        )
        .bind(batch_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BatchPayer {
                    payer: get_string(row, "payer")?,
                    amount: get_amount(row, "amount_atomic")?,
                    charge_count: get_i64(row, "charge_count")?,
                    outcome: get_string(row, "outcome")?,
                })
            })
            .collect()
    }

    /// A batch's attempts, first first.
    pub async fn batch_attempts(&self, batch_id: &str) -> Result<Vec<BatchAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, started_at_ms, finished_at_ms, outcome, tx_hash, error
               FROM settlement_attempts WHERE batch_id = $1 ORDER BY attempt",
        )
        .bind(batch_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BatchAttempt {
                    attempt: get_i64(row, "attempt")?,
                    started_at_ms: get_i64(row, "started_at_ms")?,
                    finished_at_ms: get_opt_i64(row, "finished_at_ms")?,
                    outcome: get_opt_string(row, "outcome")?,
                    tx_hash: get_opt_string(row, "tx_hash")?,
                    error: get_opt_string(row, "error")?,
                })
            })
            .collect()
    }

    /// Records a mined, successful settlement of `batch_id` by `tx_hash`:
    /// the charges of `paid` payers `settled`, of `failed` payers `failed`,
    /// each payer's outcome, the attempt and the batch — one transaction.
    /// Only charges still `batched` in this batch move, so finishing twice
    /// changes nothing.
    pub async fn finish_evm_batch(
        &self,
        batch_id: &str,
        tx_hash: &str,
        paid: &[String],
        failed: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let finished = sqlx::query(
            "UPDATE settlement_batches SET status = 'settled', tx_hash = $2, last_error = NULL,
                    updated_at_ms = $3
              WHERE id = $1 AND status IN ('open', 'sending')",
        )
        .bind(batch_id)
        .bind(tx_hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if finished.rows_affected() == 0 {
            // Already finished (or failed by an operator): nothing moves.
            tx.rollback().await?;
            return Ok(());
        }
        // Paid: a payer held back resumes (its charges of this batch settled).
        // Failed: the chain proved it did not pay — fenced like a payer held
        // back, until its charges are replayed and settle.
        let chain_db = get_i64(&batch_chain(&mut tx, batch_id).await?, "chain_id")?;
        super::payers::release_payers(&mut tx, chain_db, paid).await?;
        super::payers::fence_failed_payers(&mut tx, chain_db, batch_id, failed, now_ms).await?;
        for (payers, outcome) in [(paid, "settled"), (failed, "failed")] {
            for payer in payers {
                sqlx::query(
                    "UPDATE settlement_payers SET outcome = $3 WHERE batch_id = $1 AND payer = $2",
                )
                .bind(batch_id)
                .bind(payer.as_str())
                .bind(outcome)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE charges SET status = $3
                      WHERE batch_id = $1 AND wallet = $2 AND status = 'batched'",
                )
                .bind(batch_id)
                .bind(payer.as_str())
                .bind(outcome)
                .execute(&mut *tx)
                .await?;
            }
        }
        // Zero-amount charges had no transfer to prove: they settle here.
        sqlx::query(
            "UPDATE charges SET status = 'settled'
              WHERE batch_id = $1 AND status = 'batched' AND amount_atomic = 0",
        )
        .bind(batch_id)
        .execute(&mut *tx)
        .await?;
        let left = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM charges WHERE batch_id = $1 AND status = 'batched'",
        )
        .bind(batch_id)
        .fetch_one(&mut *tx)
        .await?;
        if get_i64(&left, "n")? != 0 {
            // Every payer of the batch must have an outcome: the receipt
            // proves one for each, or the caller must not finish.
            return Err(StoreError::Corrupt(format!(
                "batch {batch_id}: charges left without an outcome"
            )));
        }
        finish_attempt(&mut tx, batch_id, tx_hash, "settled", None, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes that `batch_id`'s transaction `tx_hash` is mined (successful,
    /// every payer's outcome proven) in block `block_no` / `block_hash`, not
    /// yet final: the batch is confirming. True when that changed anything
    /// (newly mined, or mined again in another block after a reorg).
    pub async fn mark_confirming(
        &self,
        batch_id: &str,
        mined: &MinedIn,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE settlement_batches
                SET status = 'sending', tx_hash = $2, mined_block_no = $3, mined_block_hash = $4,
                    last_error = NULL, updated_at_ms = $5
              WHERE id = $1 AND status IN ('open', 'sending')
                AND (mined_block_hash IS NULL OR mined_block_hash <> $4 OR tx_hash IS NULL
                     OR tx_hash <> $2)",
        )
        .bind(batch_id)
        .bind(mined.tx_hash.as_str())
        .bind(mined.block_no)
        .bind(mined.block_hash.as_str())
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// A confirming batch whose receipt the chain lost (a reorg): back to
    /// plain `sending`, noting why; its signed transactions are sent again.
    /// True when it was confirming.
    pub async fn unmark_confirming(
        &self,
        batch_id: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE settlement_batches
                SET mined_block_no = NULL, mined_block_hash = NULL, last_error = $2,
                    updated_at_ms = $3
              WHERE id = $1 AND status = 'sending' AND mined_block_hash IS NOT NULL",
        )
        .bind(batch_id)
        .bind(error)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// A `settled` on-chain batch the chain no longer has (a reorg deeper
    /// than finality; the caller checked the contract's `isSettled` is
    /// false): back to `open` to be sent again under the same batch number.
    /// Its `settled` charges return to `batched` and their payers to
    /// `pending`; payers proven `failed` stay so (their charges are replayed
    /// on their own). A batch none of whose payers paid moved nothing: it
    /// becomes `failed` instead (nothing to send again). Returns how many
    /// charges return; 0 when the batch is not a settled on-chain batch.
    pub async fn reopen_lost_batch(
        &self,
        batch_id: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let paid = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM settlement_payers
              WHERE batch_id = $1 AND outcome = 'settled'",
        )
        .bind(batch_id)
        .fetch_one(&mut *tx)
        .await?;
        let status = if get_i64(&paid, "n")? > 0 {
            "open"
        } else {
            "failed"
        };
        let reopened = sqlx::query(
            "UPDATE settlement_batches
                SET status = $4, mined_block_no = NULL, mined_block_hash = NULL,
                    last_error = $2, updated_at_ms = $3
              WHERE id = $1 AND status = 'settled' AND chain_batch_no IS NOT NULL",
        )
        .bind(batch_id)
        .bind(error)
        .bind(now_ms)
        .bind(status)
        .execute(&mut *tx)
        .await?;
        if reopened.rows_affected() == 0 || status == "failed" {
            tx.commit().await?;
            return Ok(0);
        }
        sqlx::query(
            "UPDATE settlement_payers SET outcome = 'pending' WHERE batch_id = $1 AND outcome = 'settled'",
        )
        .bind(batch_id)
        .execute(&mut *tx)
        .await?;
        let charges = sqlx::query(
            "UPDATE charges SET status = 'batched' WHERE batch_id = $1 AND status = 'settled'",
        )
        .bind(batch_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(charges.rows_affected())
    }

    /// Puts an in-flight batch back to `open` (its transactions can no
    /// longer be mined: reverted, or their nonce taken), noting why.
    pub async fn reopen_batch(
        &self,
        batch_id: &str,
        tx_hash: Option<&str>,
        outcome: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE settlement_batches SET status = 'open', last_error = $2, updated_at_ms = $3,
                    mined_block_no = NULL, mined_block_hash = NULL
              WHERE id = $1 AND status IN ('open', 'sending')",
        )
        .bind(batch_id)
        .bind(error)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if let Some(hash) = tx_hash {
            finish_attempt(&mut tx, batch_id, hash, outcome, Some(error), now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Notes an in-flight batch's last error without changing its state.
    pub async fn note_batch_error(
        &self,
        batch_id: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE settlement_batches SET last_error = $2, updated_at_ms = $3 WHERE id = $1",
        )
        .bind(batch_id)
        .bind(error)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Gives up on an `open` batch (no transaction of it can still be
    /// mined, and the contract says it did not settle): its charges and
    /// payers become `failed`, for an operator's replay.
    pub async fn fail_batch(
        &self,
        batch_id: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let failed = sqlx::query(
            "UPDATE settlement_batches SET status = 'failed', last_error = $2, updated_at_ms = $3
              WHERE id = $1 AND status = 'open'",
        )
        .bind(batch_id)
        .bind(error)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if failed.rows_affected() == 1 {
            sqlx::query(
                "UPDATE settlement_payers SET outcome = 'failed' WHERE batch_id = $1 AND outcome = 'pending'",
            )
            .bind(batch_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE charges SET status = 'failed' WHERE batch_id = $1 AND status = 'batched'",
            )
            .bind(batch_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replay: the `failed` charges of `batch_id` (or of every batch)
    /// return to `pending`, to be settled in a new batch. A failed charge
    /// never moved money (its payer's failure is proven), so this can never
    /// settle a charge twice. Returns how many charges return.
    pub async fn replay_failed(&self, batch_id: Option<&str>) -> Result<u64, StoreError> {
        let replayed = sqlx::query(
            "UPDATE charges SET status = 'pending', batch_id = NULL
              WHERE status = 'failed' AND ($1 IS NULL OR batch_id = $1)",
        )
        .bind(batch_id)
        .execute(self.pool())
        .await?;
        Ok(replayed.rows_affected())
    }

    /// Keys whose charges on-chain batches settled at or after `since_ms`,
    /// at most `limit` rows (see [`Store::settled_txs_after`]).
    pub async fn settled_txs_since(
        &self,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<SettledTx>, StoreError> {
        let from = SettledCursor {
            settled_at_ms: since_ms,
            ..SettledCursor::default()
        };
        self.settled_txs_after(&from, limit).await
    }

    /// Keys whose charges on-chain batches settled, with the batch's
    /// transaction, in (settled at, batch id, key id) order strictly after
    /// `after`, at most `limit` rows: the last row's [`SettledTx::cursor`]
    /// reads the next page, however many keys one batch names (paged by
    /// the time alone, a batch of more keys than a page was read again
    /// forever). A later row for the same key is its newer settlement.
    pub async fn settled_txs_after(
        &self,
        after: &SettledCursor,
        limit: i64,
    ) -> Result<Vec<SettledTx>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.key_id, b.tx_hash, b.id AS batch_id, b.updated_at_ms
               FROM settlement_batches b JOIN charges c ON c.batch_id = b.id
              WHERE b.status = 'settled' AND b.chain_batch_no IS NOT NULL
                AND b.tx_hash IS NOT NULL AND c.status = 'settled'
                AND (b.updated_at_ms > $1
                     OR (b.updated_at_ms = $1 AND (b.id > $2 OR (b.id = $2 AND c.key_id > $3))))
              ORDER BY b.updated_at_ms, b.id, c.key_id LIMIT $4",
        )
        .bind(after.settled_at_ms)
        .bind(&after.batch_id)
        .bind(&after.key_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SettledTx {
                    key_id: get_string(row, "key_id")?,
                    tx_hash: get_string(row, "tx_hash")?,
                    settled_at_ms: get_i64(row, "updated_at_ms")?,
                    batch_id: get_string(row, "batch_id")?,
                })
            })
            .collect()
    }

    /// The chain's on-chain batches in `status`, by batch number (for
    /// `reconcile`: every one, paged by the caller with `after_no`).
    pub async fn evm_batches(
        &self,
        chain: ChainId,
        status: &str,
        after_no: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, chain_batch_no, tx_hash FROM settlement_batches
              WHERE chain_id = $1 AND status = $2 AND chain_batch_no > $3
              ORDER BY chain_batch_no LIMIT $4",
        )
        .bind(chain_to_db(chain)?)
        .bind(status)
        .bind(after_no)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    get_string(row, "id")?,
                    get_i64(row, "chain_batch_no")?,
                    get_opt_string(row, "tx_hash")?,
                ))
            })
            .collect()
    }

    /// Per payer, the sum of its charges that on-chain batches settled.
    pub async fn evm_settled_by_payer(
        &self,
        chain: ChainId,
    ) -> Result<Vec<(String, Amount)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.wallet, CAST(SUM(c.amount_atomic) AS BIGINT) AS total
               FROM charges c JOIN settlement_batches b ON b.id = c.batch_id
              WHERE c.chain_id = $1 AND c.status = 'settled' AND b.chain_batch_no IS NOT NULL
              GROUP BY c.wallet ORDER BY c.wallet",
        )
        .bind(chain_to_db(chain)?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((get_string(row, "wallet")?, get_amount(row, "total")?)))
            .collect()
    }
}

/// Each payer's sum and count of charges a batch claimed, by payer.
type PerPayer = std::collections::BTreeMap<String, (Amount, i64)>;

/// Takes the chain's next batch number (locking its account row), inside
/// the caller's transaction.
async fn take_batch_no(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    chain_db: i64,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "UPDATE chain_accounts SET next_batch_no = next_batch_no + 1, updated_at_ms = $2
          WHERE chain_id = $1 RETURNING next_batch_no",
    )
    .bind(chain_db)
    .bind(now_ms)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok(get_i64(&row, "next_batch_no")? - 1)
}

/// Claims for `batch_id` the `pending` charges of `wallets` on the chain
/// recorded at or before the cutoff (`(chain, recorded_before_ms)`), inside
/// the caller's transaction; answers each payer's sum and count.
async fn claim_charges(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
    (chain_db, recorded_before_ms): (i64, i64),
    wallets: &[String],
) -> Result<PerPayer, StoreError> {
    let params: Vec<String> = (0..wallets.len()).map(|i| format!("${}", i + 4)).collect();
    let claim = format!(
        "UPDATE charges SET status = 'batched', batch_id = $1
          WHERE status = 'pending' AND chain_id = $2 AND created_at_ms <= $3
            AND wallet IN ({})
         RETURNING wallet, amount_atomic",
        params.join(", ")
    );
    let mut query = sqlx::query(&claim)
        .bind(batch_id)
        .bind(chain_db)
        .bind(recorded_before_ms);
    for wallet in wallets {
        query = query.bind(wallet.as_str());
    }
    let claimed = query.fetch_all(&mut **tx).await?;
    let mut per_payer = PerPayer::new();
    for row in &claimed {
        let (sum, count) = per_payer.entry(get_string(row, "wallet")?).or_default();
        *sum = sum
            .checked_add(get_amount(row, "amount_atomic")?)
            .ok_or(StoreError::AmountOverflow)?;
        *count += 1;
    }
    Ok(per_payer)
}

/// Records each payer's line of `batch_id` and the batch's total, inside
/// the caller's transaction.
async fn record_payers(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
    per_payer: &PerPayer,
) -> Result<(), StoreError> {
    let mut total = Amount::ZERO;
    for (payer, (sum, count)) in per_payer {
        total = total.checked_add(*sum).ok_or(StoreError::AmountOverflow)?;
        sqlx::query(
            "INSERT INTO settlement_payers (batch_id, payer, amount_atomic, charge_count, outcome)
             VALUES ($1, $2, $3, $4, 'pending')",
        )
        .bind(batch_id)
        .bind(payer.as_str())
        .bind(sum.to_db())
        .bind(*count)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("UPDATE settlement_batches SET total_atomic = $2, payer_count = $3 WHERE id = $1")
        .bind(batch_id)
        .bind(total.to_db())
        .bind(i64::try_from(per_payer.len()).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The batch's chain, inside the caller's transaction.
async fn batch_chain(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
) -> Result<sqlx::any::AnyRow, StoreError> {
    Ok(
        sqlx::query("SELECT chain_id FROM settlement_batches WHERE id = $1")
            .bind(batch_id)
            .fetch_one(&mut **tx)
            .await?,
    )
}

async fn finish_attempt(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
    tx_hash: &str,
    outcome: &str,
    error: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE settlement_attempts SET finished_at_ms = $3, outcome = $4, error = $5
          WHERE batch_id = $1 AND tx_hash = $2 AND finished_at_ms IS NULL",
    )
    .bind(batch_id)
    .bind(tx_hash)
    .bind(now_ms)
    .bind(outcome)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
