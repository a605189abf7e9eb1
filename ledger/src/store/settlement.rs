//! Settlement in the `ledger` mode: recorded charges become
//! debits of their payers' prepaid balances, one store transaction per batch.
//!
//! [`Store::settle_ledger_batch`] claims a batch of `pending` charges of one
//! chain in one statement (`… SET status = 'settled' WHERE status =
//! 'pending'`, so two settlers can never claim the same charge: on
//! PostgreSQL the second waits on the row and then finds it settled), sums
//! them per payer, and debits each payer's balance within what it was
//! credited, in the same transaction. A payer whose balance cannot take its
//! sum is held back: its charges return to `pending` and wait. So each charge
//! is debited at most once (invariant 4), and a wallet's `available` (credited
//! − debited − unsettled) is the same before and after.

use std::collections::BTreeMap;

use super::{chain_to_db, get_amount, get_i64, get_string, Store};
use crate::{Amount, ChainId, StoreError};

/// The most charges one ledger batch settles.
pub const LEDGER_BATCH_MAX: i64 = 10_000;

/// The most batches one listing returns, newest first.
pub const LIST_BATCHES_MAX: i64 = 100;

/// A settlement batch as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    pub id: String,
    pub chain_id: i64,
    /// `open`, `sending`, `confirming` (mined, not yet final), `settled`
    /// or `failed`.
    pub status: String,
    /// The number the contract knows an on-chain batch by (`None`: a
    /// ledger batch).
    pub chain_batch_no: Option<i64>,
    pub total: Amount,
    pub payer_count: i64,
    pub charge_count: i64,
    pub tx_hash: Option<String>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What one ledger batch settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerBatch {
    pub batch_id: String,
    pub charges: u64,
    pub payers: u64,
    pub total: Amount,
    /// Payers whose balance could not take their sum (their charges wait).
    pub held_back: Vec<String>,
}

/// A batch's status as operators see it: a `sending` batch whose receipt is
/// mined but not final is `confirming`.
const BATCH_STATUS: &str =
    "CASE WHEN b.status = 'sending' AND b.mined_block_hash IS NOT NULL THEN 'confirming' ELSE b.status END";

const BATCH_COLUMNS: &str = "b.id, b.chain_id, b.chain_batch_no, b.total_atomic, b.payer_count,
    CASE WHEN b.status = 'sending' AND b.mined_block_hash IS NOT NULL THEN 'confirming'
         ELSE b.status END AS status,
    b.tx_hash, b.last_error, b.created_at_ms, b.updated_at_ms,
    (SELECT CAST(COUNT(*) AS BIGINT) FROM charges c WHERE c.batch_id = b.id) AS charge_count
    FROM settlement_batches b";

impl Store {
    /// How many charges are in each status (`pending`, `batched`,
    /// `settled`, `failed`), for operators.
    pub async fn charge_status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.status_counts("charges").await
    }

    /// How many batches are in each status.
    pub async fn batch_status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.status_counts("settlement_batches").await
    }

    /// Rows of `table` (a name from this file, never from input) by status.
    async fn status_counts(&self, table: &'static str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT status, CAST(COUNT(*) AS BIGINT) AS n FROM {table}
              GROUP BY status ORDER BY status"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((get_string(row, "status")?, get_i64(row, "n")?)))
            .collect()
    }

    /// The newest batches (at most [`LIST_BATCHES_MAX`]), those in `status`
    /// when given (`batched`: in flight, `open`, `sending` or
    /// `confirming`).
    pub async fn settlement_batches(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS}
              WHERE ($1 IS NULL OR {BATCH_STATUS} = $1
                     OR ($1 = 'batched' AND b.status IN ('open', 'sending')))
              ORDER BY b.created_at_ms DESC, b.id DESC LIMIT $2"
        ))
        .bind(status)
        .bind(LIST_BATCHES_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(batch_from_row).collect()
    }

    /// One batch, by id.
    pub async fn settlement_batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BATCH_COLUMNS} WHERE b.id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    /// Settles up to `max_charges` (at most [`LEDGER_BATCH_MAX`]) pending
    /// charges of `chain` recorded at or before `recorded_before_ms`, oldest
    /// first and leaving out the payers in `skip` (held back earlier in the
    /// same pass), as batch `batch_id`: debits each payer's prepaid balance
    /// by the sum of its charges and marks them `settled`, in one
    /// transaction. `None` when nothing was pending.
    pub async fn settle_ledger_batch(
        &self,
        batch_id: &str,
        chain: ChainId,
        max_charges: i64,
        recorded_before_ms: i64,
        skip: &[String],
        now_ms: i64,
    ) -> Result<Option<LedgerBatch>, StoreError> {
        let chain_db = chain_to_db(chain)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO settlement_batches (id, chain_id, status, created_at_ms, updated_at_ms)
             VALUES ($1, $2, 'sending', $3, $3)",
        )
        .bind(batch_id)
        .bind(chain_db)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let cutoff = (chain_db, recorded_before_ms);
        let per_payer = claim_pending(&mut tx, batch_id, cutoff, max_charges, skip).await?;
        if per_payer.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        let batch = debit_payers(&mut tx, batch_id, chain_db, &per_payer, now_ms).await?;
        if batch.payers == 0 {
            // Everyone held back: nothing settles (no charge, no total), but
            // the caller learns whom to leave out of its next batch.
            tx.rollback().await?;
            return Ok(Some(batch));
        }
        sqlx::query(
            "UPDATE settlement_batches
                SET status = 'settled', total_atomic = $2, payer_count = $3, updated_at_ms = $4
              WHERE id = $1",
        )
        .bind(batch_id)
        .bind(batch.total.to_db())
        .bind(i64::try_from(batch.payers).unwrap_or(i64::MAX))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(batch))
    }
}

/// Each payer's sum and count of charges a ledger batch claimed, by payer.
type PerPayer = BTreeMap<String, (Amount, u64)>;

/// The claim of a ledger batch, inside the caller's transaction: up to
/// `max_charges` charges of the chain still `pending` and recorded at or
/// before the cutoff (`(chain, recorded_before_ms)`), oldest first, none of
/// the payers in `skip`, become `settled` in `batch_id` — each exactly once.
/// Answers each payer's sum and count (empty: nothing was pending).
async fn claim_pending(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
    (chain_db, recorded_before_ms): (i64, i64),
    max_charges: i64,
    skip: &[String],
) -> Result<PerPayer, StoreError> {
    let skipped = if skip.is_empty() {
        String::new()
    } else {
        let params: Vec<String> = (0..skip.len()).map(|i| format!("${}", i + 5)).collect();
        format!("AND wallet NOT IN ({})", params.join(", "))
    };
    let claim = format!(
        "UPDATE charges SET status = 'settled', batch_id = $1
          WHERE status = 'pending' AND request_id IN (
                SELECT request_id FROM charges
                 WHERE status = 'pending' AND chain_id = $2 AND created_at_ms <= $3 {skipped}
                 ORDER BY created_at_ms, request_id LIMIT $4)
         RETURNING wallet, amount_atomic"
    );
    let mut query = sqlx::query(&claim)
        .bind(batch_id)
        .bind(chain_db)
        .bind(recorded_before_ms)
        .bind(max_charges.clamp(1, LEDGER_BATCH_MAX));
    for wallet in skip {
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

/// Debits each payer of a claimed ledger batch its sum, inside the caller's
/// transaction, in payer order (concurrent writers lock balances alike). A
/// payer whose balance cannot take it is held back: its charges return to
/// `pending` for the next pass. Answers what the batch settled.
async fn debit_payers(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch_id: &str,
    chain_db: i64,
    per_payer: &PerPayer,
    now_ms: i64,
) -> Result<LedgerBatch, StoreError> {
    let mut batch = LedgerBatch {
        batch_id: batch_id.to_owned(),
        charges: 0,
        payers: 0,
        total: Amount::ZERO,
        held_back: Vec::new(),
    };
    for (wallet, (sum, count)) in per_payer {
        let debited = sqlx::query(
            "UPDATE balances SET debited_atomic = debited_atomic + $3, updated_at_ms = $4
              WHERE wallet = $1 AND chain_id = $2 AND debited_atomic + $3 <= credited_atomic",
        )
        .bind(wallet)
        .bind(chain_db)
        .bind(sum.to_db())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        if debited.rows_affected() == 1 {
            batch.total = batch
                .total
                .checked_add(*sum)
                .ok_or(StoreError::AmountOverflow)?;
            batch.payers += 1;
            batch.charges += count;
            continue;
        }
        // Cannot pay now (the funding check should make this rare): its
        // charges wait for the next pass.
        batch.held_back.push(wallet.clone());
        sqlx::query(
            "UPDATE charges SET status = 'pending', batch_id = NULL
              WHERE batch_id = $1 AND wallet = $2",
        )
        .bind(batch_id)
        .bind(wallet)
        .execute(&mut **tx)
        .await?;
        tracing::warn!(%wallet, %sum, "a payer's balance cannot take its charges; they wait");
    }
    Ok(batch)
}

fn batch_from_row(row: &sqlx::any::AnyRow) -> Result<BatchRecord, StoreError> {
    Ok(BatchRecord {
        id: get_string(row, "id")?,
        chain_id: get_i64(row, "chain_id")?,
        status: get_string(row, "status")?,
        chain_batch_no: super::get_opt_i64(row, "chain_batch_no")?,
        total: get_amount(row, "total_atomic")?,
        payer_count: get_i64(row, "payer_count")?,
        charge_count: get_i64(row, "charge_count")?,
        tx_hash: super::get_opt_string(row, "tx_hash")?,
        last_error: super::get_opt_string(row, "last_error")?,
        created_at_ms: get_i64(row, "created_at_ms")?,
        updated_at_ms: get_i64(row, "updated_at_ms")?,
    })
}

/// One difference `reconcile` found between two figures that must agree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// What disagrees, e.g. `balance.debited ≠ Σ settled charges`.
    pub check: &'static str,
    /// The wallet (and chain) or key concerned.
    pub subject: String,
    pub expected: i64,
    pub found: i64,
}

/// The ledger's own consistency checks: each a query returning the rows
/// that break it as (subject, expected, found).
const CHECKS: [(&str, &str); 6] = [
    (
        "balance.debited ≠ Σ charges settled from it (invariant 4)",
        "SELECT b.wallet || ' on chain ' || CAST(b.chain_id AS TEXT) AS subject,
                CAST(COALESCE(s.total, 0) AS BIGINT) AS expected,
                CAST(b.debited_atomic AS BIGINT) AS found
           FROM balances b LEFT JOIN (
                SELECT c.wallet, c.chain_id, SUM(c.amount_atomic) AS total
                  FROM charges c JOIN settlement_batches sb ON sb.id = c.batch_id
                 WHERE c.status = 'settled' AND sb.chain_batch_no IS NULL
                 GROUP BY c.wallet, c.chain_id) s
             ON s.wallet = b.wallet AND s.chain_id = b.chain_id
          WHERE ($1 IS NULL OR b.chain_id = $1)
            AND b.debited_atomic <> CAST(COALESCE(s.total, 0) AS BIGINT)",
    ),
    (
        "key.budget_used ≠ Σ its charges within the limit (invariant 3)",
        "SELECT 'key ' || k.id AS subject,
                CAST(COALESCE(c.total, 0) AS BIGINT) AS expected,
                CAST(k.budget_used_atomic AS BIGINT) AS found
           FROM keys k LEFT JOIN (
                SELECT key_id, SUM(amount_atomic) AS total FROM charges
                 WHERE overdrawn = 0 GROUP BY key_id) c
             ON c.key_id = k.id
          WHERE ($1 IS NULL OR k.chain_id = $1)
            AND k.budget_used_atomic <> CAST(COALESCE(c.total, 0) AS BIGINT)",
    ),
    (
        "answered calls charged past the key's limit, not yet collected (overdrawn)",
        "SELECT 'key ' || k.id AS subject,
                CAST(0 AS BIGINT) AS expected,
                CAST(COALESCE(c.total, 0) AS BIGINT) AS found
           FROM keys k JOIN (
                SELECT key_id, SUM(amount_atomic) AS total FROM charges
                 WHERE overdrawn = 1 AND status <> 'settled' GROUP BY key_id) c
             ON c.key_id = k.id
          WHERE ($1 IS NULL OR k.chain_id = $1)",
    ),
    (
        "charges whose payer failed to pay (served, not collected: `settlements replay`)",
        "SELECT wallet || ' on chain ' || CAST(chain_id AS TEXT) AS subject,
                CAST(0 AS BIGINT) AS expected,
                CAST(SUM(amount_atomic) AS BIGINT) AS found
           FROM charges
          WHERE status = 'failed' AND ($1 IS NULL OR chain_id = $1)
          GROUP BY wallet, chain_id",
    ),
    (
        "key.leased ≠ Σ its leases' cover",
        "SELECT 'key ' || k.id AS subject,
                CAST(COALESCE(l.cover, 0) AS BIGINT) AS expected,
                CAST(k.leased_atomic AS BIGINT) AS found
           FROM keys k LEFT JOIN (
                SELECT key_id, SUM(granted_atomic - charged_atomic - returned_atomic) AS cover
                  FROM budget_leases WHERE state <> 'reclaimed' GROUP BY key_id) l
             ON l.key_id = k.id
          WHERE ($1 IS NULL OR k.chain_id = $1)
            AND k.leased_atomic <> CAST(COALESCE(l.cover, 0) AS BIGINT)",
    ),
    (
        "key.budget_used + leased > limit (invariant 1)",
        "SELECT 'key ' || k.id AS subject,
                CAST(k.budget_limit_atomic AS BIGINT) AS expected,
                CAST(k.budget_used_atomic + k.leased_atomic AS BIGINT) AS found
           FROM keys k
          WHERE ($1 IS NULL OR k.chain_id = $1)
            AND k.budget_used_atomic + k.leased_atomic > k.budget_limit_atomic",
    ),
];

impl Store {
    /// Every difference between figures the ledger keeps twice (balances
    /// against settled charges, keys against their charges and leases, and
    /// the limit), on `chain` or every chain. Empty when the books agree.
    pub async fn reconcile_ledger(
        &self,
        chain: Option<ChainId>,
    ) -> Result<Vec<Difference>, StoreError> {
        let chain_db = chain.map(chain_to_db).transpose()?;
        let mut differences = Vec::new();
        for (check, sql) in CHECKS {
            let rows = sqlx::query(sql)
                .bind(chain_db)
                .fetch_all(self.pool())
                .await?;
            for row in &rows {
                differences.push(Difference {
                    check,
                    subject: get_string(row, "subject")?,
                    expected: get_i64(row, "expected")?,
                    found: get_i64(row, "found")?,
                });
            }
        }
        Ok(differences)
    }
}
