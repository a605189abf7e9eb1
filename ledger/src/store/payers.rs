//! Payers held back by the `evm` settler, and what a payer's funds still
//! cover of new budget leases.
//!
//! A payer whose token balance or allowance cannot pay what it owes is
//! *held back*: its charges wait (they never fail for it), and it is
//! *fenced* — no key of its takes a new hold or a lease top-up — until its
//! charges settle ([`Store::finish_evm_batch`] lifts the fence of each payer
//! it proves paid). The settler re-checks a held-back payer at
//! `retry_at_ms`, later each time (a backoff), and reads past the others
//! meanwhile, so payers who cannot pay never stand in front of those who
//! can.
//!
//! [`payer_headroom`] is the lease take's side of the same rule: a take
//! grants only what the payer's spendable funds (`min(balance, allowance)`,
//! read from the chain just before) cover beyond what it owes unsettled and
//! what its keys' leases already cover. A payer who withdraws its funds can
//! therefore spend at most the leases it already holds.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::{chain_to_db, get_amount, get_i64, get_string, Store};
use crate::{Amount, ChainId, StoreError, WalletAddress};

/// The most held-back payers one listing returns (the gateway's fence set,
/// `reconcile`, metrics): a bound on one read, far above any real count.
pub const HELD_BACK_LIST_MAX: i64 = 10_000;

/// A payer the settler found unable to pay, as it last saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldBackPayer {
    pub chain_id: i64,
    pub wallet: String,
    /// What it owed the last time it was checked (its pending charges).
    pub owed: Amount,
    pub balance: Amount,
    pub allowance: Amount,
    /// When it was first held back (this time).
    pub since_ms: i64,
    pub checked_at_ms: i64,
    /// How many checks found it short in a row.
    pub checks: i64,
    /// When the settler looks at it again.
    pub retry_at_ms: i64,
}

impl HeldBackPayer {
    /// Which of its funds is short: `balance` or `allowance` (the smaller).
    pub fn short(&self) -> &'static str {
        if self.allowance < self.balance {
            "allowance"
        } else {
            "balance"
        }
    }

    /// How much more it needs to pay what it owes.
    pub fn shortfall(&self) -> Amount {
        self.owed.saturating_sub(self.balance.min(self.allowance))
    }
}

/// One check that found a payer short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortPayer<'a> {
    pub wallet: &'a str,
    pub owed: Amount,
    pub balance: Amount,
    pub allowance: Amount,
}

const HELD_BACK_COLUMNS: &str = "chain_id, wallet, owed_atomic, balance_atomic, allowance_atomic, \
     since_ms, checked_at_ms, checks, retry_at_ms";

impl Store {
    /// Holds `payer` back on `chain` (or keeps it held), to be checked again
    /// `backoff(checks)` later. True when it was not held back before (the
    /// state starts: log it once).
    pub async fn hold_back_payer(
        &self,
        chain: ChainId,
        payer: ShortPayer<'_>,
        backoff: impl Fn(i64) -> i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let chain_db = chain_to_db(chain)?;
        let mut tx = self.pool().begin().await?;
        let checks =
            sqlx::query("SELECT checks FROM held_back_payers WHERE chain_id = $1 AND wallet = $2")
                .bind(chain_db)
                .bind(payer.wallet)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| get_i64(&row, "checks"))
                .transpose()?;
        let next = checks.unwrap_or(0).saturating_add(1);
        let retry_at_ms = now_ms.saturating_add(backoff(next).max(0));
        sqlx::query(
            "INSERT INTO held_back_payers (chain_id, wallet, owed_atomic, balance_atomic,
                    allowance_atomic, since_ms, checked_at_ms, checks, retry_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6, 1, $7)
             ON CONFLICT (chain_id, wallet) DO UPDATE
                SET owed_atomic = excluded.owed_atomic, balance_atomic = excluded.balance_atomic,
                    allowance_atomic = excluded.allowance_atomic,
                    checked_at_ms = excluded.checked_at_ms,
                    checks = held_back_payers.checks + 1, retry_at_ms = excluded.retry_at_ms",
        )
        .bind(chain_db)
        .bind(payer.wallet)
        .bind(payer.owed.to_db())
        .bind(payer.balance.to_db())
        .bind(payer.allowance.to_db())
        .bind(now_ms)
        .bind(retry_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(checks.is_none())
    }

    /// Lifts the fence of `wallets` on `chain` (their charges settled).
    /// Answers how many were held back.
    pub async fn release_payers(
        &self,
        chain: ChainId,
        wallets: &[String],
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool().acquire().await?;
        release_payers(&mut conn, chain_to_db(chain)?, wallets).await
    }

    /// Held-back payers, on `chain` or every chain, newest first, at most
    /// [`HELD_BACK_LIST_MAX`] (past the bound, the gateways' fence copies
    /// keep the payers held back last: the store's own fence on lease
    /// takes covers every one).
    pub async fn held_back_payers(
        &self,
        chain: Option<ChainId>,
    ) -> Result<Vec<HeldBackPayer>, StoreError> {
        let chain_db = chain.map(chain_to_db).transpose()?;
        let rows = sqlx::query(&format!(
            "SELECT {HELD_BACK_COLUMNS} FROM held_back_payers
              WHERE ($1 IS NULL OR chain_id = $1)
              ORDER BY since_ms DESC, wallet LIMIT $2"
        ))
        .bind(chain_db)
        .bind(HELD_BACK_LIST_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(held_back_from_row).collect()
    }

    /// Per chain, how many payers are held back and what they owe together
    /// (metrics: one grouped read of a small table).
    pub async fn held_back_totals(&self) -> Result<Vec<(i64, i64, Amount)>, StoreError> {
        let rows = sqlx::query(
            "SELECT chain_id, CAST(COUNT(*) AS BIGINT) AS n,
                    CAST(COALESCE(SUM(owed_atomic), 0) AS BIGINT) AS owed
               FROM held_back_payers GROUP BY chain_id ORDER BY chain_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    get_i64(row, "chain_id")?,
                    get_i64(row, "n")?,
                    get_amount(row, "owed")?,
                ))
            })
            .collect()
    }

    /// `wallet` on `chain`, when it is held back.
    pub async fn held_back_payer(
        &self,
        wallet: &WalletAddress,
        chain: ChainId,
    ) -> Result<Option<HeldBackPayer>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {HELD_BACK_COLUMNS} FROM held_back_payers WHERE chain_id = $1 AND wallet = $2"
        ))
        .bind(chain_to_db(chain)?)
        .bind(wallet.to_lower_hex())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(held_back_from_row).transpose()
    }
}

/// Deletes the held-back rows of `wallets` inside the caller's transaction.
pub(crate) async fn release_payers(
    conn: &mut AnyConnection,
    chain_db: i64,
    wallets: &[String],
) -> Result<u64, StoreError> {
    let mut released = 0;
    for wallet in wallets {
        released += sqlx::query("DELETE FROM held_back_payers WHERE chain_id = $1 AND wallet = $2")
            .bind(chain_db)
            .bind(wallet.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(released)
}

/// Fences payers the chain proved did not pay their line of `batch_id`
/// (`PayerFailed`: blacklisted, or funds moved between the check and the
/// transaction), inside the caller's transaction: each is held back with
/// what it failed to pay, its balance and allowance unknown (0), until an
/// operator's replay settles its charges.
pub(crate) async fn fence_failed_payers(
    conn: &mut AnyConnection,
    chain_db: i64,
    batch_id: &str,
    wallets: &[String],
    now_ms: i64,
) -> Result<(), StoreError> {
    for wallet in wallets {
        sqlx::query(
            "INSERT INTO held_back_payers (chain_id, wallet, owed_atomic, balance_atomic,
                    allowance_atomic, since_ms, checked_at_ms, checks, retry_at_ms)
             SELECT $1, payer, amount_atomic, 0, 0, $3, $3, 1, $3
               FROM settlement_payers WHERE batch_id = $2 AND payer = $4
             ON CONFLICT (chain_id, wallet) DO UPDATE
                SET owed_atomic = held_back_payers.owed_atomic + excluded.owed_atomic,
                    balance_atomic = 0, allowance_atomic = 0,
                    checked_at_ms = excluded.checked_at_ms, checks = held_back_payers.checks + 1",
        )
        .bind(chain_db)
        .bind(batch_id)
        .bind(now_ms)
        .bind(wallet.as_str())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// What `spendable` (the payer's `min(balance, allowance)` on chain) still
/// covers of new lease cover for `wallet` on `chain`, inside the caller's
/// transaction: `spendable − unsettled charges − what its keys' leases
/// cover`, and zero while the payer is held back. One statement, one
/// snapshot.
pub(crate) async fn payer_headroom(
    conn: &mut AnyConnection,
    wallet: &str,
    chain_db: i64,
    spendable: Amount,
) -> Result<Amount, StoreError> {
    let row = sqlx::query(
        "SELECT
            CAST(COALESCE((SELECT SUM(amount_atomic) FROM charges
                            WHERE wallet = $1 AND chain_id = $2 AND status <> 'settled'), 0)
                 AS BIGINT) AS unsettled,
            CAST(COALESCE((SELECT SUM(leased_atomic) FROM keys
                            WHERE wallet = $1 AND chain_id = $2), 0) AS BIGINT) AS leased,
            CAST((SELECT COUNT(*) FROM held_back_payers
                   WHERE wallet = $1 AND chain_id = $2) AS BIGINT) AS held",
    )
    .bind(wallet)
    .bind(chain_db)
    .fetch_one(&mut *conn)
    .await?;
    if get_i64(&row, "held")? > 0 {
        return Ok(Amount::ZERO);
    }
    Ok(spendable
        .saturating_sub(get_amount(&row, "unsettled")?)
        .saturating_sub(get_amount(&row, "leased")?))
}

fn held_back_from_row(row: &AnyRow) -> Result<HeldBackPayer, StoreError> {
    Ok(HeldBackPayer {
        chain_id: get_i64(row, "chain_id")?,
        wallet: get_string(row, "wallet")?,
        owed: get_amount(row, "owed_atomic")?,
        balance: get_amount(row, "balance_atomic")?,
        allowance: get_amount(row, "allowance_atomic")?,
        since_ms: get_i64(row, "since_ms")?,
        checked_at_ms: get_i64(row, "checked_at_ms")?,
        checks: get_i64(row, "checks")?,
        retry_at_ms: get_i64(row, "retry_at_ms")?,
    })
}
