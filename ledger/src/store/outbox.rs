//! The operator's side of sending on an EVM chain: per chain, its account —
//! the operator's next nonce and batch number, the single active settler, a
//! pause with its reason — and the outbox of signed transactions, each
//! persisted (with the operator's next nonce moved past it) before it is
//! broadcast, so a restart finds every transaction it may have sent. The
//! batches those transactions settle are [`super::batches`].

use super::{chain_to_db, get_i64, get_opt_i64, get_opt_string, get_string, Store};
use crate::{ChainId, StoreError};

/// One chain's settlement account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAccount {
    pub chain_id: i64,
    pub operator: String,
    /// The operator's next nonce as far as the store knows (the settler
    /// takes the larger of this and the chain's count).
    pub next_nonce: i64,
    pub next_batch_no: i64,
    /// Why settlement on this chain is paused; `None` while it runs.
    pub paused_reason: Option<String>,
}

/// A signed transaction as persisted (before broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTx {
    pub hash: String,
    pub nonce: i64,
    /// The signed bytes, hex with `0x`.
    pub raw: String,
    pub gas_limit: i64,
    pub max_fee_per_gas: i64,
    pub max_priority_fee_per_gas: i64,
    pub created_at_ms: i64,
    pub broadcast_at_ms: Option<i64>,
}

impl Store {
    /// The chain's account, created for `operator` (nonce 0, batch 1) when
    /// missing.
    pub async fn chain_account(
        &self,
        chain: ChainId,
        operator: &str,
        now_ms: i64,
    ) -> Result<ChainAccount, StoreError> {
        let chain_db = chain_to_db(chain)?;
        sqlx::query(
            "INSERT INTO chain_accounts (chain_id, operator, next_nonce, next_batch_no, updated_at_ms)
             VALUES ($1, $2, 0, 1, $3) ON CONFLICT (chain_id) DO NOTHING",
        )
        .bind(chain_db)
        .bind(operator)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        let row = sqlx::query(
            "SELECT chain_id, operator, next_nonce, next_batch_no, paused_reason
               FROM chain_accounts WHERE chain_id = $1",
        )
        .bind(chain_db)
        .fetch_one(self.pool())
        .await?;
        account_from_row(&row)
    }

    /// Raises the chain's next batch number to at least `at_least` (a store
    /// meeting a contract that already settled batches).
    pub async fn raise_next_batch_no(
        &self,
        chain: ChainId,
        at_least: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE chain_accounts
                SET next_batch_no = CASE WHEN next_batch_no > $2 THEN next_batch_no ELSE $2 END,
                    updated_at_ms = $3
              WHERE chain_id = $1",
        )
        .bind(chain_to_db(chain)?)
        .bind(at_least)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every chain account (for `settlements list`: paused chains say why).
    pub async fn chain_accounts(&self) -> Result<Vec<ChainAccount>, StoreError> {
        let rows = sqlx::query(
            "SELECT chain_id, operator, next_nonce, next_batch_no, paused_reason
               FROM chain_accounts ORDER BY chain_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(account_from_row).collect()
    }

    /// Makes `settler` the chain's active settler until `until_ms`, unless
    /// another holds it past `now_ms`. True when `settler` holds it.
    pub async fn claim_settler(
        &self,
        chain: ChainId,
        settler: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE chain_accounts SET settler_id = $2, settler_until_ms = $3
              WHERE chain_id = $1
                AND (settler_id IS NULL OR settler_id = $2 OR settler_until_ms < $4)",
        )
        .bind(chain_to_db(chain)?)
        .bind(settler)
        .bind(until_ms)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// Pauses settlement on `chain` with `reason`, or resumes it (`None`).
    /// True when that changed anything.
    pub async fn set_chain_paused(
        &self,
        chain: ChainId,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE chain_accounts SET paused_reason = $2, updated_at_ms = $3
              WHERE chain_id = $1 AND COALESCE(paused_reason, '') <> COALESCE($2, '')",
        )
        .bind(chain_to_db(chain)?)
        .bind(reason)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// Persists a signed transaction of `batch_id` before it is broadcast:
    /// the outbox row, the operator's next nonce past it, the batch
    /// `sending` with this hash, and an attempt — one transaction. The same
    /// bytes signed again (a batch the chain lost, at the nonce it had) are
    /// one outbox row, due to be sent again, with a new attempt.
    pub async fn record_signed_tx(
        &self,
        batch_id: &str,
        chain: ChainId,
        signed: &ChainTx,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let chain_db = chain_to_db(chain)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE chain_accounts
                SET next_nonce = CASE WHEN next_nonce > $2 THEN next_nonce ELSE $2 END,
                    updated_at_ms = $3
              WHERE chain_id = $1",
        )
        .bind(chain_db)
        .bind(signed.nonce + 1)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO chain_txs (tx_hash, chain_id, batch_id, nonce, raw_tx, gas_limit,
                                    max_fee_per_gas, max_priority_fee_per_gas, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tx_hash) DO UPDATE
                SET created_at_ms = excluded.created_at_ms, broadcast_at_ms = NULL",
        )
        .bind(signed.hash.as_str())
        .bind(chain_db)
        .bind(batch_id)
        .bind(signed.nonce)
        .bind(signed.raw.as_str())
        .bind(signed.gas_limit)
        .bind(signed.max_fee_per_gas)
        .bind(signed.max_priority_fee_per_gas)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE settlement_batches SET status = 'sending', tx_hash = $2, updated_at_ms = $3
              WHERE id = $1 AND status IN ('open', 'sending')",
        )
        .bind(batch_id)
        .bind(signed.hash.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO settlement_attempts (batch_id, attempt, started_at_ms, tx_hash)
             SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2, $3
               FROM settlement_attempts WHERE batch_id = $1",
        )
        .bind(batch_id)
        .bind(now_ms)
        .bind(signed.hash.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes that a transaction reached a node.
    pub async fn mark_broadcast(&self, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE chain_txs SET broadcast_at_ms = $2 WHERE tx_hash = $1 AND broadcast_at_ms IS NULL",
        )
        .bind(hash)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every transaction signed for a batch, newest first.
    pub async fn batch_txs(&self, batch_id: &str) -> Result<Vec<ChainTx>, StoreError> {
        let rows = sqlx::query(
            "SELECT tx_hash, nonce, raw_tx, gas_limit, max_fee_per_gas, max_priority_fee_per_gas,
                    created_at_ms, broadcast_at_ms
               FROM chain_txs WHERE batch_id = $1 ORDER BY created_at_ms DESC, nonce DESC",
        )
        .bind(batch_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ChainTx {
                    hash: get_string(row, "tx_hash")?,
                    nonce: get_i64(row, "nonce")?,
                    raw: get_string(row, "raw_tx")?,
                    gas_limit: get_i64(row, "gas_limit")?,
                    max_fee_per_gas: get_i64(row, "max_fee_per_gas")?,
                    max_priority_fee_per_gas: get_i64(row, "max_priority_fee_per_gas")?,
                    created_at_ms: get_i64(row, "created_at_ms")?,
                    broadcast_at_ms: get_opt_i64(row, "broadcast_at_ms")?,
                })
            })
            .collect()
    }
}

fn account_from_row(row: &sqlx::any::AnyRow) -> Result<ChainAccount, StoreError> {
    Ok(ChainAccount {
        chain_id: get_i64(row, "chain_id")?,
        operator: get_string(row, "operator")?,
        next_nonce: get_i64(row, "next_nonce")?,
        next_batch_no: get_i64(row, "next_batch_no")?,
        paused_reason: get_opt_string(row, "paused_reason")?,
    })
}
