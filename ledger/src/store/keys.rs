//! Compose keys: create (with the funding check), read, list, revoke.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::balances::{count_active_keys, lock_balance, read_funding};
use super::{
    chain_to_db, get_amount, get_chain, get_i64, get_opt_i64, get_opt_parsed, get_parsed,
    get_string, get_wallet, Store,
};
use crate::model::{Funds, KeyRecord, KeyStatus, NewKey, Purpose};
use crate::{ChainId, KeyId, SessionId, StoreError, WalletAddress};

/// The most keys one listing returns, newest first.
pub const LIST_KEYS_MAX: i64 = 1_000;

const KEY_COLUMNS: &str = "id, token_sha256, wallet, chain_id, purpose, session_id, name, \
     budget_limit_atomic, budget_used_atomic, status, created_at_ms, expires_at_ms, revoked_at_ms";

impl Store {
    /// Creates a key after the funding check: its budget plus what the
    /// wallet's other active keys may still spend must fit the wallet's
    /// available funds, and the wallet may hold at most `max_active_keys`
    /// active keys on the chain. Serialized per wallet+chain.
    pub async fn create_key(
        &self,
        key: &NewKey,
        max_active_keys: u32,
    ) -> Result<KeyRecord, StoreError> {
        self.create_key_by(key, max_active_keys, None).await
    }

    /// As [`Store::create_key`], for a caller signed in with `session`: the
    /// same transaction checks that the session is still the wallet's active
    /// one (a sign-in that supersedes it serializes on the same wallet
    /// lock), so a key can never be created by a session already replaced.
    pub async fn create_key_by(
        &self,
        key: &NewKey,
        max_active_keys: u32,
        session: Option<&SessionId>,
    ) -> Result<KeyRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        lock_balance(&mut tx, &key.wallet, key.chain_id, key.created_at_ms).await?;
        if let Some(session) = session {
            let active = sqlx::query("SELECT active FROM sessions WHERE id = $1")
                .bind(session.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let active = match active {
                Some(row) => get_i64(&row, "active")? == 1,
                None => false,
            };
            if !active {
                return Err(StoreError::SessionSuperseded);
            }
        }
        let record = insert_funded_key(&mut tx, key, max_active_keys, self.hold_max_ms()).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// One key by id.
    pub async fn key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// A wallet's keys, newest first, at most [`LIST_KEYS_MAX`]; only those on
    /// `chain` when given.
    pub async fn keys_for_wallet(
        &self,
        wallet: &WalletAddress,
        chain: Option<ChainId>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = match chain {
            Some(chain) => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE wallet = $1 AND chain_id = $2
                      ORDER BY created_at_ms DESC, id DESC LIMIT $3"
                ))
                .bind(wallet.to_lower_hex())
                .bind(chain_to_db(chain)?)
                .bind(LIST_KEYS_MAX)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE wallet = $1
                      ORDER BY created_at_ms DESC, id DESC LIMIT $2"
                ))
                .bind(wallet.to_lower_hex())
                .bind(LIST_KEYS_MAX)
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key. Revoking a key that is no longer active changes nothing
    /// and returns it as it is. Its unspent budget stays committed against
    /// the wallet for the longest a hold can live, or until
    /// [`Store::release_key_funds`] says no call can charge it any more.
    pub async fn revoke_key(&self, id: &KeyId, now_ms: i64) -> Result<KeyRecord, StoreError> {
        self.revoke_key_draining(id, now_ms, false).await
    }

    /// As [`Store::revoke_key`]; `drained`: the gateway has fenced the key
    /// with no call in flight, so its budget is freed in the same
    /// transaction.
    pub async fn revoke_key_draining(
        &self,
        id: &KeyId,
        now_ms: i64,
        drained: bool,
    ) -> Result<KeyRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE keys SET status = 'revoked', revoked_at_ms = $2,
                    committed_until_ms = {COMMITTED_UNTIL_CAPPED}
              WHERE id = $1 AND status = 'active'
             RETURNING {KEY_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(now_ms)
        .bind(self.stopped_committed_until_ms())
        .fetch_optional(&mut *tx)
        .await?;
        if drained {
            release_funds(&mut tx, id, crate::time::now_ms(), self.releasing_node()).await?;
        }
        let row = match row {
            Some(row) => row,
            None => sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?,
        };
        let record = key_from_row(&row)?;
        tx.commit().await?;
        debug_assert_ne!(record.status, KeyStatus::Active);
        Ok(record)
    }

    /// Frees a stopped key's unspent budget for its wallet's funding check:
    /// the gateway has seen that no call can charge the key any more. Does
    /// nothing to an active key (its budget is committed while it lives).
    pub async fn release_key_funds(&self, id: &KeyId, now_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        release_funds(&mut conn, id, now_ms, self.releasing_node()).await
    }
}

/// `committed_until_ms` lowered to `$3` (never raised): a stopped key's
/// budget is committed at most until then.
pub(crate) const COMMITTED_UNTIL_CAPPED: &str =
    "CASE WHEN committed_until_ms > $3 THEN $3 ELSE committed_until_ms END";

/// See [`Store::release_key_funds`]; inside the caller's transaction.
/// `node` is the gateway node that saw the key drained: it knows only its
/// own calls, so a key that another node still holds a lease on (a lease
/// that covers anything) stays committed until its bound.
pub(crate) async fn release_funds(
    conn: &mut AnyConnection,
    id: &KeyId,
    now_ms: i64,
    node: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE keys SET committed_until_ms = $2
          WHERE id = $1 AND status <> 'active' AND committed_until_ms > $2
            AND NOT EXISTS (
                SELECT 1 FROM budget_leases l
                 WHERE l.key_id = keys.id AND l.node_id <> $3 AND l.state <> 'reclaimed'
                   AND l.granted_atomic > l.charged_atomic + l.returned_atomic)",
    )
    .bind(id.as_str())
    .bind(now_ms)
    .bind(node)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Checks funding and the active-key bound and inserts the key, inside the
/// caller's transaction, which must already hold the wallet+chain lock
/// ([`lock_balance`]) so that the checks and the insert are one step.
pub(crate) async fn insert_funded_key(
    conn: &mut AnyConnection,
    key: &NewKey,
    max_active_keys: u32,
    hold_max_ms: i64,
) -> Result<KeyRecord, StoreError> {
    let now_ms = key.created_at_ms;
    if count_active_keys(conn, &key.wallet, key.chain_id, now_ms).await?
        >= i64::from(max_active_keys)
    {
        return Err(StoreError::TooManyKeys {
            max: max_active_keys,
        });
    }
    let mut funding = read_funding(conn, &key.wallet, key.chain_id, now_ms).await?;
    if let Funds::OnChain { balance, allowance } = key.funds {
        // On chain, what the contract can take (the lesser of balance and
        // allowance) less what the wallet already owes (charges not yet
        // settled on chain; settled ones already left the balance).
        funding.available = balance.min(allowance).saturating_sub(funding.unsettled);
    }
    let required = funding
        .committed
        .checked_add(key.budget_limit)
        .ok_or(StoreError::AmountOverflow)?;
    if required > funding.available {
        return Err(StoreError::InsufficientFunds {
            required: key.budget_limit,
            available: funding.available,
            committed: funding.committed,
            on_chain: match key.funds {
                Funds::Prepaid => None,
                Funds::OnChain { balance, allowance } => Some((balance, allowance)),
            },
        });
    }
    let row = sqlx::query(&format!(
        "INSERT INTO keys (id, token_sha256, wallet, chain_id, purpose, session_id, name,
                           budget_limit_atomic, budget_used_atomic, status, created_at_ms,
                           expires_at_ms, committed_until_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 'active', $9, $10, $11)
         RETURNING {KEY_COLUMNS}"
    ))
    .bind(key.id.as_str())
    .bind(key.token_sha256.as_str())
    .bind(key.wallet.to_lower_hex())
    .bind(chain_to_db(key.chain_id)?)
    .bind(key.purpose.as_str())
    .bind(key.session_id.as_ref().map(|s| s.as_str().to_owned()))
    .bind(key.name.as_str())
    .bind(key.budget_limit.to_db())
    .bind(key.created_at_ms)
    .bind(key.expires_at_ms)
    .bind(key.expires_at_ms.saturating_add(hold_max_ms))
    .fetch_one(&mut *conn)
    .await?;
    let record = key_from_row(&row)?;
    // The funding invariant, asserted where it is established (the check
    // above refused the key otherwise).
    assert!(
        funding
            .committed
            .checked_add(record.budget_limit)
            .is_some_and(|sum| sum <= funding.available),
        "committed + limit ≤ available broken: {} + {} > {}",
        funding.committed,
        record.budget_limit,
        funding.available
    );
    Ok(record)
}

pub(crate) fn key_from_row(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let record = KeyRecord {
        id: get_parsed(row, "id", KeyId::parse)?,
        token_sha256: get_string(row, "token_sha256")?,
        wallet: get_wallet(row, "wallet")?,
        chain_id: get_chain(row, "chain_id")?,
        purpose: get_parsed(row, "purpose", Purpose::parse)?,
        session_id: get_opt_parsed(row, "session_id", SessionId::parse)?,
        name: get_string(row, "name")?,
        budget_limit: get_amount(row, "budget_limit_atomic")?,
        budget_used: get_amount(row, "budget_used_atomic")?,
        status: get_parsed(row, "status", KeyStatus::parse_stored)?,
        created_at_ms: get_i64(row, "created_at_ms")?,
        expires_at_ms: get_i64(row, "expires_at_ms")?,
        revoked_at_ms: get_opt_i64(row, "revoked_at_ms")?,
    };
    if record.budget_used > record.budget_limit {
        return Err(StoreError::Corrupt(format!(
            "key {} spent past its limit",
            record.id
        )));
    }
    Ok(record)
}
