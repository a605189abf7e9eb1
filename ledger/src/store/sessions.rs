//! SIWE nonces and sessions.
//!
//! A nonce is issued once and consumed by the sign-in that carries it; a
//! sign-in makes its session the wallet+chain's only active one, supersedes
//! the previous session and every key bound to it, and issues the session key
//! — all in one transaction, so a refused sign-in (say, for funds) leaves the
//! nonce unused and the old session in place.

use sqlx::any::AnyRow;

use super::balances::lock_balance;
use super::keys::{insert_funded_key, release_funds, COMMITTED_UNTIL_CAPPED};
use super::{chain_to_db, get_chain, get_i64, get_parsed, get_string, get_wallet, Store};
use crate::model::{NewSession, SessionRecord, SignIn};
use crate::{KeyId, SessionId, StoreError};

/// Issued nonces kept at most before the oldest unused ones are dropped early:
/// a flood of `GET /api/sessions/nonce` cannot grow the table without bound.
pub const NONCES_OUTSTANDING_MAX: i64 = 100_000;

/// Expired nonces each issue removes at most (by the age index, oldest
/// first): more than the one it adds, so expired rows never pile up, and
/// the cost of an issue stays bounded however large the table is.
const NONCES_PRUNED_PER_ISSUE: i64 = 4;

/// The outstanding bound is enforced every this many issues in a process:
/// it scans the age index, so it is amortized rather than paid per issue.
const NONCE_CAP_EVERY: u64 = 1_024;

static NONCES_ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Store {
    /// Records a freshly issued nonce and forgets a few nonces issued before
    /// `expired_before_ms` (used or not), oldest first; a nonce is checked
    /// against its age when used, so one not yet pruned is still refused.
    pub async fn issue_nonce(
        &self,
        nonce: &str,
        now_ms: i64,
        expired_before_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM siwe_nonces WHERE nonce IN (
                 SELECT nonce FROM siwe_nonces WHERE issued_at_ms < $1
                  ORDER BY issued_at_ms LIMIT $2)",
        )
        .bind(expired_before_ms)
        .bind(NONCES_PRUNED_PER_ISSUE)
        .execute(self.pool())
        .await?;
        let issued = NONCES_ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if issued % NONCE_CAP_EVERY == NONCE_CAP_EVERY - 1 {
            // Past the bound, the oldest go first (at most two rounds' worth).
            sqlx::query(
                "DELETE FROM siwe_nonces WHERE nonce IN (
                     SELECT nonce FROM siwe_nonces ORDER BY issued_at_ms DESC
                      LIMIT $2 OFFSET $1)",
            )
            .bind(NONCES_OUTSTANDING_MAX)
            .bind(2 * NONCE_CAP_EVERY as i64)
            .execute(self.pool())
            .await?;
        }
        sqlx::query("INSERT INTO siwe_nonces (nonce, issued_at_ms) VALUES ($1, $2)")
            .bind(nonce)
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Signs a wallet in: consumes the nonce, supersedes the wallet+chain's
    /// active session and its keys, records the new session and issues its
    /// key (with the same funding check as any key).
    pub async fn create_session(
        &self,
        session: &NewSession,
        max_active_keys: u32,
    ) -> Result<SignIn, StoreError> {
        let key = &session.key;
        let now_ms = key.created_at_ms;
        let chain_db = chain_to_db(key.chain_id)?;
        let wallet = key.wallet.to_lower_hex();
        let mut tx = self.pool().begin().await?;

        let consumed = sqlx::query(
            "UPDATE siwe_nonces SET used_at_ms = $2
              WHERE nonce = $1 AND used_at_ms IS NULL AND issued_at_ms >= $3",
        )
        .bind(session.nonce.as_str())
        .bind(now_ms)
        .bind(session.nonce_issued_after_ms)
        .execute(&mut *tx)
        .await?;
        if consumed.rows_affected() != 1 {
            return Err(StoreError::NonceRejected);
        }
        // Serialize sign-ins of one wallet+chain: without this, two concurrent
        // sign-ins on PostgreSQL each supersede the old session, neither sees
        // the other's new one, and the second insert breaks `sessions_one_active`.
        lock_balance(&mut tx, &key.wallet, key.chain_id, now_ms).await?;

        let superseded_keys =
            supersede_session(&mut tx, (&wallet, chain_db), now_ms, self.hold_max_ms()).await?;
        // Fenced with nothing in flight: no call can charge them any more.
        for key in &session.drained_keys {
            release_funds(&mut tx, key, now_ms, self.releasing_node()).await?;
        }

        let row = sqlx::query(
            "INSERT INTO sessions (id, wallet, chain_id, active, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, 1, $4, $5)
             RETURNING id, wallet, chain_id, active, created_at_ms, expires_at_ms",
        )
        .bind(session.id.as_str())
        .bind(wallet.as_str())
        .bind(chain_db)
        .bind(now_ms)
        .bind(key.expires_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        let record = session_from_row(&row)?;
        let key_record =
            insert_funded_key(&mut tx, key, max_active_keys, self.hold_max_ms()).await?;
        tx.commit().await?;
        Ok(SignIn {
            session: record,
            key: key_record,
            superseded_keys,
        })
    }

    /// The live keys bound to the wallet+chain's active session: the keys a
    /// new sign-in will supersede (the gateway fences them first).
    pub async fn active_session_keys(
        &self,
        wallet: &crate::WalletAddress,
        chain: crate::ChainId,
    ) -> Result<Vec<KeyId>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.id FROM keys k JOIN sessions s ON k.session_id = s.id
              WHERE s.wallet = $1 AND s.chain_id = $2 AND s.active = 1 AND k.status = 'active'
              LIMIT 1000",
        )
        .bind(wallet.to_lower_hex())
        .bind(chain_to_db(chain)?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| get_parsed(row, "id", KeyId::parse))
            .collect()
    }

    /// Nonces on record (used or not): for operators and tests.
    pub async fn nonce_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM siwe_nonces")
            .fetch_one(self.pool())
            .await?;
        get_i64(&row, "n")
    }

    /// One session by id.
    pub async fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, wallet, chain_id, active, created_at_ms, expires_at_ms
               FROM sessions WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }
}

/// Supersedes the wallet+chain's active session and its active keys
/// (their budget committed at most `hold_max_ms` past the moment they
/// stop), inside the caller's transaction; answers the keys it superseded.
async fn supersede_session(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    (wallet, chain_db): (&str, i64),
    now_ms: i64,
    hold_max_ms: i64,
) -> Result<Vec<KeyId>, StoreError> {
    let superseded = sqlx::query(
        "UPDATE sessions SET active = 0, superseded_at_ms = $3
          WHERE wallet = $1 AND chain_id = $2 AND active = 1
         RETURNING id",
    )
    .bind(wallet)
    .bind(chain_db)
    .bind(now_ms)
    .fetch_all(&mut **tx)
    .await?;
    debug_assert!(superseded.len() <= 1, "more than one active session");
    let mut superseded_keys = Vec::new();
    for row in &superseded {
        let keys = sqlx::query(&format!(
            "UPDATE keys SET status = 'superseded', revoked_at_ms = $2,
                    committed_until_ms = {COMMITTED_UNTIL_CAPPED}
              WHERE session_id = $1 AND status = 'active'
             RETURNING id"
        ))
        .bind(get_string(row, "id")?)
        .bind(now_ms)
        .bind(crate::time::now_ms().saturating_add(hold_max_ms))
        .fetch_all(&mut **tx)
        .await?;
        for key in &keys {
            superseded_keys.push(get_parsed(key, "id", KeyId::parse)?);
        }
    }
    Ok(superseded_keys)
}

fn session_from_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: get_parsed(row, "id", SessionId::parse)?,
        wallet: get_wallet(row, "wallet")?,
        chain_id: get_chain(row, "chain_id")?,
        active: get_i64(row, "active")? == 1,
        created_at_ms: get_i64(row, "created_at_ms")?,
        expires_at_ms: get_i64(row, "expires_at_ms")?,
    })
}
