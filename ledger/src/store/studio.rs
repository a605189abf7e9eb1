//! Studio accounts, projects and API keys (`/api/v1/apikeys`).
//!
//! Keys are always read and changed *within an account and project*: every
//! statement that touches a key by id also names its account, so no caller
//! can reach another account's keys through this API.

use sqlx::any::AnyRow;

use super::balances::lock_balance;
use super::keys::{insert_funded_key, release_funds, COMMITTED_UNTIL_CAPPED};
use super::{
    chain_to_db, get_chain, get_i64, get_opt_i64, get_opt_parsed, get_opt_string, get_parsed,
    get_string, get_wallet, Store,
};
use crate::model::{
    AccountRecord, ApiKeyRecord, ApiKeyType, ApiKeyUpdate, KeyRecord, NewKey, ProjectRecord, Role,
};
use crate::{AccountId, ApiKeyId, KeyId, ProjectId, StoreError};

/// The most keys one listing returns, newest first.
pub const LIST_APIKEYS_MAX: i64 = 1_000;

const APIKEY_COLUMNS: &str = "id, account_id, project_id, name, key_type, role, enabled, \
     value_hash, value_sealed, masked_value, created_by, updated_by, created_at_ms, \
     updated_at_ms, expires_at_ms, disabled_by_role, expiry_set_by_role";

impl Store {
    /// Creates an account, its first project and that project's first key,
    /// in one transaction (`tollgate studio bootstrap`).
    pub async fn bootstrap_studio(
        &self,
        account: &AccountRecord,
        project: &ProjectRecord,
        key: &ApiKeyRecord,
    ) -> Result<ApiKeyRecord, StoreError> {
        debug_assert_eq!(project.account_id, account.id);
        let mut tx = self.pool().begin().await?;
        let (wallet, chain) = match &account.funding {
            Some((wallet, chain)) => (Some(wallet.to_lower_hex()), Some(chain_to_db(*chain)?)),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO studio_accounts (id, name, wallet, chain_id, created_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account.id.as_str())
        .bind(account.name.as_str())
        .bind(wallet)
        .bind(chain)
        .bind(account.created_at_ms)
        .execute(&mut *tx)
        .await?;
        // Names are how operators tell accounts apart. Checked here, not by
        // a unique index: stores from before this check may hold duplicates.
        // Written first, read second: on SQLite a transaction that reads and
        // then writes fails at once (SQLITE_BUSY_SNAPSHOT, no busy wait) when
        // another connection wrote in between; one that writes first waits
        // for the lock.
        let taken =
            sqlx::query("SELECT id FROM studio_accounts WHERE name = $1 AND id <> $2 LIMIT 1")
                .bind(account.name.as_str())
                .bind(account.id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            tx.rollback().await?;
            return Err(StoreError::AccountNameTaken(account.name.clone()));
        }
        insert_project(&mut tx, project).await?;
        let record = insert_apikey(&mut tx, key).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// The one account named `name` (`studio bootstrap --existing`).
    pub async fn account_named(&self, name: &str) -> Result<AccountRecord, StoreError> {
        let rows = sqlx::query("SELECT id FROM studio_accounts WHERE name = $1 LIMIT 2")
            .bind(name)
            .fetch_all(self.pool())
            .await?;
        let id = match rows.as_slice() {
            [] => return Err(StoreError::NoSuchAccount(name.to_owned())),
            [row] => get_parsed(row, "id", AccountId::parse)?,
            _ => {
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM studio_accounts WHERE name = $1")
                        .bind(name)
                        .fetch_one(self.pool())
                        .await?;
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                return Err(StoreError::AccountNameAmbiguous(name.to_owned(), count));
            }
        };
        self.account(&id).await?.ok_or(StoreError::NotFound)
    }

    /// Adds a project, with its first key, to an existing account; refuses a
    /// project name the account already has.
    pub async fn add_studio_project(
        &self,
        project: &ProjectRecord,
        key: &ApiKeyRecord,
    ) -> Result<ApiKeyRecord, StoreError> {
        debug_assert_eq!(key.project_id, project.id);
        let mut tx = self.pool().begin().await?;
        // Written first, read second (see `bootstrap_studio`).
        insert_project(&mut tx, project).await?;
        let taken = sqlx::query(
            "SELECT id FROM studio_projects WHERE account_id = $1 AND name = $2 AND id <> $3 LIMIT 1",
        )
        .bind(project.account_id.as_str())
        .bind(project.name.as_str())
        .bind(project.id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            tx.rollback().await?;
            return Err(StoreError::ProjectNameTaken(project.name.clone()));
        }
        let record = insert_apikey(&mut tx, key).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// One account.
    pub async fn account(&self, id: &AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, wallet, chain_id, created_at_ms FROM studio_accounts WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            let funding = match get_opt_string(&row, "wallet")? {
                None => None,
                Some(_) => Some((get_wallet(&row, "wallet")?, get_chain(&row, "chain_id")?)),
            };
            Ok(AccountRecord {
                id: get_parsed(&row, "id", AccountId::parse)?,
                name: get_string(&row, "name")?,
                funding,
                created_at_ms: get_i64(&row, "created_at_ms")?,
            })
        })
        .transpose()
    }

    /// A project of `account`, if it exists there.
    pub async fn project(
        &self,
        account: &AccountId,
        id: &ProjectId,
    ) -> Result<Option<ProjectRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, account_id, name, budget_key_id, created_at_ms FROM studio_projects
              WHERE id = $1 AND account_id = $2",
        )
        .bind(id.as_str())
        .bind(account.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            Ok(ProjectRecord {
                id: get_parsed(&row, "id", ProjectId::parse)?,
                account_id: get_parsed(&row, "account_id", AccountId::parse)?,
                name: get_string(&row, "name")?,
                budget_key_id: get_opt_parsed(&row, "budget_key_id", KeyId::parse)?,
                created_at_ms: get_i64(&row, "created_at_ms")?,
            })
        })
        .transpose()
    }

    /// Gives a project a new USDC budget: the previous budget key (if any)
    /// is revoked — what it spent stays charged — and `budget` (a key row
    /// owned by the account's wallet, with no token) is created under the
    /// same funding check as any Compose key, all in one transaction.
    /// Answers the new key and the revoked one.
    pub async fn set_project_budget(
        &self,
        project: &ProjectRecord,
        budget: &NewKey,
        max_active_keys: u32,
        drained: &[KeyId],
    ) -> Result<(KeyRecord, Option<KeyId>), StoreError> {
        let mut tx = self.pool().begin().await?;
        // Locks the project row (PostgreSQL; SQLite has one writer) and reads
        // its budget key under the lock: concurrent changes queue up.
        let current = lock_project(&mut tx, &project.account_id, &project.id).await?;
        let previous = get_opt_parsed(&current, "budget_key_id", KeyId::parse)?;
        // The wallet's balance row before any key row: the store's lock
        // order (a lease take locks the balance, then the key).
        lock_balance(
            &mut tx,
            &budget.wallet,
            budget.chain_id,
            budget.created_at_ms,
        )
        .await?;
        if let Some(previous) = &previous {
            // Revoked first. Its remainder stays committed (invariant 7) unless
            // the gateway fenced it with no call in flight (`drained`).
            let now = budget.created_at_ms;
            sqlx::query(&format!(
                "UPDATE keys SET status = 'revoked', revoked_at_ms = $2,
                        committed_until_ms = {COMMITTED_UNTIL_CAPPED}
                  WHERE id = $1 AND status = 'active'"
            ))
            .bind(previous.as_str())
            .bind(now)
            .bind(self.stopped_committed_until_ms())
            .execute(&mut *tx)
            .await?;
            if drained.contains(previous) {
                release_funds(&mut tx, previous, now, self.releasing_node()).await?;
            }
        }
        let key = insert_funded_key(&mut tx, budget, max_active_keys, self.hold_max_ms()).await?;
        sqlx::query("UPDATE studio_projects SET budget_key_id = $2 WHERE id = $1")
            .bind(project.id.as_str())
            .bind(key.id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((key, previous))
    }

    /// Stores a new key (its value already hashed and, for `sk`, sealed) if
    /// its project holds fewer than `keys_max` unexpired keys. Serialized per
    /// project (the project row is locked first), so concurrent creations
    /// cannot pass the bound together.
    pub async fn create_apikey(
        &self,
        key: &ApiKeyRecord,
        keys_max: u32,
    ) -> Result<ApiKeyRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        lock_project(&mut tx, &key.account_id, &key.project_id).await?;
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM studio_apikeys
              WHERE account_id = $1 AND project_id = $2
                AND (expires_at_ms IS NULL OR expires_at_ms > $3)",
        )
        .bind(key.account_id.as_str())
        .bind(key.project_id.as_str())
        .bind(key.created_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        if get_i64(&row, "n")? >= i64::from(keys_max) {
            return Err(StoreError::TooManyApiKeys { max: keys_max });
        }
        let record = insert_apikey(&mut tx, key).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// The key whose value hashes to `value_hash`.
    pub async fn apikey_by_hash(
        &self,
        value_hash: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {APIKEY_COLUMNS} FROM studio_apikeys WHERE value_hash = $1"
        ))
        .bind(value_hash)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(apikey_from_row).transpose()
    }

    /// One key of `account`, whatever its project.
    pub async fn apikey(
        &self,
        account: &AccountId,
        id: &ApiKeyId,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {APIKEY_COLUMNS} FROM studio_apikeys WHERE id = $1 AND account_id = $2"
        ))
        .bind(id.as_str())
        .bind(account.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(apikey_from_row).transpose()
    }

    /// The keys of one project, newest first, at most [`LIST_APIKEYS_MAX`].
    pub async fn apikeys(
        &self,
        account: &AccountId,
        project: &ProjectId,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {APIKEY_COLUMNS} FROM studio_apikeys
              WHERE account_id = $1 AND project_id = $2
              ORDER BY created_at_ms DESC, id DESC LIMIT $3"
        ))
        .bind(account.as_str())
        .bind(project.as_str())
        .bind(LIST_APIKEYS_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(apikey_from_row).collect()
    }

    /// Applies `update` to a key of `account`; `None` when there is none.
    pub async fn update_apikey(
        &self,
        account: &AccountId,
        id: &ApiKeyId,
        update: &ApiKeyUpdate,
        updated_by: &str,
        now_ms: i64,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.update_apikey_with(account, id, updated_by, now_ms, |_| Ok(update.clone()))
            .await
    }

    /// Reads a key of `account` under its row's lock, lets `decide` turn it
    /// into the change to make (or refuse, changing nothing), and applies
    /// that change in the same transaction: a decision is never made on a
    /// row that another request changes meanwhile. `None` when there is no
    /// such key.
    pub async fn update_apikey_with<E: From<StoreError>>(
        &self,
        account: &AccountId,
        id: &ApiKeyId,
        updated_by: &str,
        now_ms: i64,
        decide: impl FnOnce(&ApiKeyRecord) -> Result<ApiKeyUpdate, E>,
    ) -> Result<Option<ApiKeyRecord>, E> {
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        // Locks the row (PostgreSQL; SQLite has one writer) and reads it.
        let current = sqlx::query(&format!(
            "UPDATE studio_apikeys SET updated_at_ms = updated_at_ms
              WHERE id = $1 AND account_id = $2
             RETURNING {APIKEY_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(account.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(current) = current.as_ref().map(apikey_from_row).transpose()? else {
            return Ok(None);
        };
        // Dropping `tx` on a refusal rolls it back.
        let update = decide(&current)?;
        let set = |field: bool| i64::from(field);
        let row = sqlx::query(&format!(
            "UPDATE studio_apikeys
                SET name = COALESCE($3, name),
                    role = COALESCE($4, role),
                    enabled = COALESCE($5, enabled),
                    expires_at_ms = CASE WHEN $6 = 1 THEN $7 ELSE expires_at_ms END,
                    disabled_by_role = CASE WHEN $8 = 1 THEN $9 ELSE disabled_by_role END,
                    expiry_set_by_role = CASE WHEN $10 = 1 THEN $11 ELSE expiry_set_by_role END,
                    updated_by = $12,
                    updated_at_ms = $13
              WHERE id = $1 AND account_id = $2
             RETURNING {APIKEY_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(account.as_str())
        .bind(update.name.as_deref())
        .bind(update.role.map(Role::as_str))
        .bind(update.enabled.map(i64::from))
        .bind(set(update.expires_at_ms.is_some()))
        .bind(update.expires_at_ms.flatten())
        .bind(set(update.disabled_by_role.is_some()))
        .bind(update.disabled_by_role.flatten().map(Role::as_str))
        .bind(set(update.expiry_set_by_role.is_some()))
        .bind(update.expiry_set_by_role.flatten().map(Role::as_str))
        .bind(updated_by)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let record = apikey_from_row(&row)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Some(record))
    }

    /// Deletes a key of `account`; answers how many rows went (0 or 1).
    pub async fn delete_apikey(
        &self,
        account: &AccountId,
        id: &ApiKeyId,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM studio_apikeys WHERE id = $1 AND account_id = $2")
            .bind(id.as_str())
            .bind(account.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

/// Locks a project's row for the transaction and answers it (with its
/// current `budget_key_id`); `NotFound` when the account has no such project.
async fn lock_project(
    conn: &mut sqlx::AnyConnection,
    account: &AccountId,
    project: &ProjectId,
) -> Result<AnyRow, StoreError> {
    sqlx::query(
        "UPDATE studio_projects SET budget_key_id = budget_key_id
          WHERE id = $1 AND account_id = $2
         RETURNING budget_key_id",
    )
    .bind(project.as_str())
    .bind(account.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound)
}

async fn insert_project(
    conn: &mut sqlx::AnyConnection,
    project: &ProjectRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO studio_projects (id, account_id, name, budget_key_id, created_at_ms)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(project.id.as_str())
    .bind(project.account_id.as_str())
    .bind(project.name.as_str())
    .bind(project.budget_key_id.as_ref().map(KeyId::as_str))
    .bind(project.created_at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_apikey(
    conn: &mut sqlx::AnyConnection,
    key: &ApiKeyRecord,
) -> Result<ApiKeyRecord, StoreError> {
    debug_assert!(key.key_type == ApiKeyType::Sk || key.role == Role::Executor);
    let row = sqlx::query(&format!(
        "INSERT INTO studio_apikeys ({APIKEY_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         RETURNING {APIKEY_COLUMNS}"
    ))
    .bind(key.id.as_str())
    .bind(key.account_id.as_str())
    .bind(key.project_id.as_str())
    .bind(key.name.as_str())
    .bind(key.key_type.as_str())
    .bind(key.role.as_str())
    .bind(i64::from(key.enabled))
    .bind(key.value_hash.as_str())
    .bind(key.value_sealed.as_deref())
    .bind(key.masked_value.as_str())
    .bind(key.created_by.as_str())
    .bind(key.updated_by.as_str())
    .bind(key.created_at_ms)
    .bind(key.updated_at_ms)
    .bind(key.expires_at_ms)
    .bind(key.disabled_by_role.map(Role::as_str))
    .bind(key.expiry_set_by_role.map(Role::as_str))
    .fetch_one(&mut *conn)
    .await?;
    apikey_from_row(&row)
}

fn apikey_from_row(row: &AnyRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: get_parsed(row, "id", ApiKeyId::parse)?,
        account_id: get_parsed(row, "account_id", AccountId::parse)?,
        project_id: get_parsed(row, "project_id", ProjectId::parse)?,
        name: get_string(row, "name")?,
        key_type: get_parsed(row, "key_type", ApiKeyType::parse)?,
        role: get_parsed(row, "role", Role::parse)?,
        enabled: get_i64(row, "enabled")? == 1,
        value_hash: get_string(row, "value_hash")?,
        value_sealed: get_opt_string(row, "value_sealed")?,
        masked_value: get_string(row, "masked_value")?,
        created_by: get_string(row, "created_by")?,
        updated_by: get_string(row, "updated_by")?,
        created_at_ms: get_i64(row, "created_at_ms")?,
        updated_at_ms: get_i64(row, "updated_at_ms")?,
        expires_at_ms: get_opt_i64(row, "expires_at_ms")?,
        disabled_by_role: get_opt_parsed(row, "disabled_by_role", Role::parse)?,
        expiry_set_by_role: get_opt_parsed(row, "expiry_set_by_role", Role::parse)?,
    })
}
