//! Prepaid balances (settlement mode `ledger`), operator credits, and the
//! funding check that new keys must pass.
//!
//! A wallet's funds on a chain are `credited − debited − unsettled charges`;
//! its keys *commit* what they may still spend — live keys, and stopped keys
//! whose calls may still be running, until `committed_until_ms` (invariant 7). A new budget fits when
//! `committed + budget ≤ available`. Writers that change either side first
//! touch the wallet's balance row ([`lock_balance`]), which serializes them on
//! both databases: a PostgreSQL row lock, SQLite's single writer.

use sqlx::AnyConnection;

use super::{chain_to_db, get_amount, get_i64, Store};
use crate::model::{Balance, Funding};
use crate::{Amount, ChainId, StoreError, WalletAddress};

/// The largest single credit: one billion USDC. A typo of a few digits should
/// not mint a fortune.
pub const CREDIT_MAX: Amount = match Amount::from_atomic(1_000_000_000 * 1_000_000) {
    Some(a) => a,
    None => Amount::ZERO,
};

/// The longest credit note kept in the audit trail.
pub const CREDIT_NOTE_MAX_CHARS: usize = 256;

impl Store {
    /// Adds `amount` to a wallet's prepaid balance on `chain` and records the
    /// credit. Refuses zero, amounts above [`CREDIT_MAX`] and any total that
    /// would overflow.
    pub async fn credit(
        &self,
        wallet: &WalletAddress,
        chain: ChainId,
        amount: Amount,
        note: &str,
        now_ms: i64,
    ) -> Result<Balance, StoreError> {
        if amount.is_zero() || amount > CREDIT_MAX {
            return Err(StoreError::AmountOverflow);
        }
        let note: String = note.chars().take(CREDIT_NOTE_MAX_CHARS).collect();
        let chain_db = chain_to_db(chain)?;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "INSERT INTO balances (wallet, chain_id, credited_atomic, updated_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (wallet, chain_id) DO UPDATE
                SET credited_atomic = balances.credited_atomic + excluded.credited_atomic,
                    updated_at_ms = excluded.updated_at_ms
              WHERE balances.credited_atomic <= $5 - excluded.credited_atomic
             RETURNING credited_atomic, debited_atomic",
        )
        .bind(wallet.to_lower_hex())
        .bind(chain_db)
        .bind(amount.to_db())
        .bind(now_ms)
        .bind(Amount::MAX.to_db())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::AmountOverflow)?;
        sqlx::query(
            "INSERT INTO credits (id, wallet, chain_id, amount_atomic, note, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().simple().to_string())
        .bind(wallet.to_lower_hex())
        .bind(chain_db)
        .bind(amount.to_db())
        .bind(note)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let balance = Balance {
            credited: get_amount(&row, "credited_atomic")?,
            debited: get_amount(&row, "debited_atomic")?,
        };
        tx.commit().await?;
        debug_assert!(balance.debited <= balance.credited);
        Ok(balance)
    }

    /// A wallet's prepaid balance on `chain` (zero when never credited).
    pub async fn balance(
        &self,
        wallet: &WalletAddress,
        chain: ChainId,
    ) -> Result<Balance, StoreError> {
        let mut conn = self.pool().acquire().await?;
        read_balance(&mut conn, wallet, chain).await
    }

    /// A wallet's funding on `chain` as of `now_ms`: what is available and what
    /// its active keys have committed.
    pub async fn funding(
        &self,
        wallet: &WalletAddress,
        chain: ChainId,
        now_ms: i64,
    ) -> Result<Funding, StoreError> {
        let mut conn = self.pool().acquire().await?;
        read_funding(&mut conn, wallet, chain, now_ms).await
    }
}

async fn read_balance(
    conn: &mut AnyConnection,
    wallet: &WalletAddress,
    chain: ChainId,
) -> Result<Balance, StoreError> {
    let row = sqlx::query(
        "SELECT credited_atomic, debited_atomic FROM balances WHERE wallet = $1 AND chain_id = $2",
    )
    .bind(wallet.to_lower_hex())
    .bind(chain_to_db(chain)?)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Balance {
            credited: get_amount(&row, "credited_atomic")?,
            debited: get_amount(&row, "debited_atomic")?,
        }),
        None => Ok(Balance {
            credited: Amount::ZERO,
            debited: Amount::ZERO,
        }),
    }
}

/// Serializes writers on one wallet+chain: creates the balance row when
/// missing, else bumps its `lock_version`. Must be the first statement of its
/// transaction so SQLite takes the write lock before reading anything.
pub(crate) async fn lock_balance(
    conn: &mut AnyConnection,
    wallet: &WalletAddress,
    chain: ChainId,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO balances (wallet, chain_id, updated_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (wallet, chain_id) DO UPDATE SET lock_version = balances.lock_version + 1",
    )
    .bind(wallet.to_lower_hex())
    .bind(chain_to_db(chain)?)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Funding as seen inside the caller's transaction.
pub(crate) async fn read_funding(
    conn: &mut AnyConnection,
    wallet: &WalletAddress,
    chain: ChainId,
    now_ms: i64,
) -> Result<Funding, StoreError> {
    // One statement, so one snapshot: a settlement committing between two
    // reads would move an amount from "unsettled" to "debited" unseen.
    let wallet_hex = wallet.to_lower_hex();
    let row = sqlx::query(
        "SELECT
            CAST(COALESCE((SELECT credited_atomic FROM balances
                            WHERE wallet = $1 AND chain_id = $2), 0) AS BIGINT) AS credited,
            CAST(COALESCE((SELECT debited_atomic FROM balances
                            WHERE wallet = $1 AND chain_id = $2), 0) AS BIGINT) AS debited,
            CAST(COALESCE((SELECT SUM(amount_atomic) FROM charges
                            WHERE wallet = $1 AND chain_id = $2 AND status <> 'settled'), 0)
                 AS BIGINT) AS unsettled,
            CAST(COALESCE((SELECT SUM(budget_limit_atomic - budget_used_atomic) FROM keys
                            WHERE wallet = $1 AND chain_id = $2 AND committed_until_ms > $3), 0)
                 AS BIGINT) AS committed",
    )
    .bind(wallet_hex)
    .bind(chain_to_db(chain)?)
    .bind(now_ms)
    .fetch_one(&mut *conn)
    .await?;
    let unsettled = get_amount(&row, "unsettled")?;
    let available = get_amount(&row, "credited")?
        .saturating_sub(get_amount(&row, "debited")?)
        .saturating_sub(unsettled);
    Ok(Funding {
        available,
        committed: get_amount(&row, "committed")?,
        unsettled,
    })
}

/// Counts the wallet's active keys on `chain` inside the caller's transaction.
pub(crate) async fn count_active_keys(
    conn: &mut AnyConnection,
    wallet: &WalletAddress,
    chain: ChainId,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM keys
          WHERE wallet = $1 AND chain_id = $2 AND status = 'active' AND expires_at_ms > $3",
    )
    .bind(wallet.to_lower_hex())
    .bind(chain_to_db(chain)?)
    .bind(now_ms)
    .fetch_one(&mut *conn)
    .await?;
    get_i64(&row, "n")
}
