//! Charges: written exactly once per paid call, read back per key.
//!
//! [`Store::record_charge`] inserts the charge under its request id and grows
//! the key's `budget_used` by the same amount in one transaction, so a key's
//! `budget_used` always equals the sum of its charges (invariant 3) and a
//! replayed event writes nothing (invariant 2). [`Store::record_charges`]
//! does the same for a batch in one transaction (the gateway's group commit).

use std::collections::{BTreeMap, HashSet};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

use super::{
    get_amount, get_i64, get_opt_string, get_opt_u32, get_parsed, get_string, get_u32, Backend,
    Store,
};
use crate::model::{ChargeOutcome, ChargeRecord, ChargeWrite, NewCharge};
use crate::{Amount, KeyId, LeaseId, RequestId, StoreError};

/// What a charge read selects, with its batch's transaction.
const CHARGE_COLUMNS: &str = "c.request_id, c.key_id, c.model, c.price_version, c.input_tokens,
        c.output_tokens, c.amount_atomic, c.status, c.batch_id, b.tx_hash, c.created_at_ms,
        c.reported_input_tokens, c.reported_output_tokens, c.client_request_id,
        c.cached_input_tokens, c.cache_write_tokens, c.reported_cached_input_tokens,
        c.reported_cache_write_tokens
   FROM charges c LEFT JOIN settlement_batches b ON b.id = c.batch_id";

/// The most charges one listing returns, newest first.
pub const LIST_CHARGES_MAX: i64 = 1_000;

/// The most charges one [`Store::record_charges`] call takes: 16 bound values
/// each stays far below SQLite's limit of 32,766 per statement.
pub const RECORD_BATCH_MAX: usize = 1_024;

impl Store {
    /// Writes a charge once. A second write with the same request id changes
    /// nothing and answers [`ChargeWrite::Duplicate`]; a charge that would take
    /// the key past its limit is refused with [`StoreError::OverBudget`].
    pub async fn record_charge(&self, charge: &NewCharge) -> Result<ChargeWrite, StoreError> {
        let outcomes = self.record_charges(std::slice::from_ref(charge)).await?;
        match outcomes.first() {
            Some(ChargeOutcome::Recorded) => Ok(ChargeWrite::Recorded),
            Some(ChargeOutcome::Duplicate) => Ok(ChargeWrite::Duplicate),
            // (`Overdrawn` only from `record_answered_charges`.)
            Some(ChargeOutcome::OverBudget | ChargeOutcome::Overdrawn) => {
                Err(StoreError::OverBudget)
            }
            Some(ChargeOutcome::UnknownKey) | None => Err(StoreError::NotFound),
        }
    }

    /// Writes a batch of charges in one transaction (group commit), each at
    /// most once, and answers what happened to each, in order. Each charge
    /// grows its key's `budget_used` by its amount in the same transaction;
    /// one that would pass the key's limit is undone and answered
    /// [`ChargeOutcome::OverBudget`] without failing the others.
    pub async fn record_charges(
        &self,
        charges: &[NewCharge],
    ) -> Result<Vec<ChargeOutcome>, StoreError> {
        self.record_charges_past(charges, PastLimit::Refuse).await
    }

    /// As [`Store::record_charges`], for charges of calls already answered
    /// (they come through the queue): one the key's limit cannot take is
    /// recorded all the same — it is owed, and settles like any other — but
    /// flagged `overdrawn` and counted in the key's `overdrawn_atomic`
    /// ([`ChargeOutcome::Overdrawn`]), which `tollgate reconcile` reports.
    /// An answered call's charge is never dropped.
    pub async fn record_answered_charges(
        &self,
        charges: &[NewCharge],
    ) -> Result<Vec<ChargeOutcome>, StoreError> {
        self.record_charges_past(charges, PastLimit::Overdraw).await
    }

    async fn record_charges_past(
        &self,
        charges: &[NewCharge],
        past_limit: PastLimit,
    ) -> Result<Vec<ChargeOutcome>, StoreError> {
        assert!(
            charges.len() <= RECORD_BATCH_MAX,
            "a charge batch past its bound"
        );
        if charges.is_empty() {
            return Ok(Vec::new());
        }
        // Fast path: one multi-row insert and one update per key. Anything
        // unusual (a key past its limit) rolls back and takes the slow path,
        // which decides charge by charge.
        let mut tx = self.pool().begin().await?;
        if let Some(outcomes) = record_batch(&mut tx, charges, self.backend()).await? {
            tx.commit().await?;
            return Ok(outcomes);
        }
        tx.rollback().await?;
        // Charge by charge, answered in the batch's order: every insert
        // first (an insert may wait on a settler holding that charge's row,
        // so it must wait holding no key row), then the keys' growth in key
        // order (the lock order of every writer).
        let mut order: Vec<usize> = (0..charges.len()).collect();
        order.sort_by(|a, b| charges[*a].key_id.cmp(&charges[*b].key_id));
        let mut tx = self.pool().begin().await?;
        let mut outcomes = vec![ChargeOutcome::Duplicate; charges.len()];
        let mut inserted = Vec::with_capacity(charges.len());
        for index in order {
            match insert_one(&mut tx, &charges[index]).await? {
                None => inserted.push(index),
                Some(outcome) => outcomes[index] = outcome,
            }
        }
        for index in inserted {
            outcomes[index] = grow_one(&mut tx, &charges[index], past_limit).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The sum of a key's charges (invariant 3: it equals `budget_used`).
    pub async fn sum_of_charges(&self, key: &KeyId) -> Result<Amount, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_atomic), 0) AS BIGINT) AS total
               FROM charges WHERE key_id = $1",
        )
        .bind(key.as_str())
        .fetch_one(self.pool())
        .await?;
        get_amount(&row, "total")
    }

    /// The charge of one paid call, by its request id.
    pub async fn charge(&self, request: &RequestId) -> Result<Option<ChargeRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CHARGE_COLUMNS} WHERE c.request_id = $1"))
            .bind(request.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(charge_from_row).transpose()
    }

    /// A key's charges, newest first, at most [`LIST_CHARGES_MAX`], with the
    /// settlement transaction of each when there is one.
    pub async fn charges_for_key(&self, key: &KeyId) -> Result<Vec<ChargeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHARGE_COLUMNS} WHERE c.key_id = $1
                  ORDER BY c.created_at_ms DESC, c.request_id DESC LIMIT $2"
        ))
        .bind(key.as_str())
        .bind(LIST_CHARGES_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(charge_from_row).collect()
    }
}

/// The batch's fast path, inside the caller's transaction: one insert of all
/// charges (joined to their keys, so an unknown key inserts nothing), then
/// one guarded `budget_used` increment per key. `None` when a key would pass
/// its limit: the caller rolls back and decides charge by charge.
async fn record_batch(
    conn: &mut AnyConnection,
    charges: &[NewCharge],
    backend: Backend,
) -> Result<Option<Vec<ChargeOutcome>>, StoreError> {
    let inserted = insert_rows(conn, charges, backend).await?;
    grow_keys(conn, charges, &inserted).await
}

/// One multi-row insert of `charges`; answers the request ids it inserted.
///
/// Its parameters are anonymous (`?`) on SQLite: SQLite finds a named
/// parameter's (`$N`) index with a linear search over the statement's
/// names, so binding 16 per row by name cost the square of the batch — at
/// c=64, `sqlite3_bind_parameter_name` was ~5 % of the gateway's CPU
/// (BENCHMARKS (h)). PostgreSQL wants `$N` and binds by position.
async fn insert_rows(
    conn: &mut AnyConnection,
    charges: &[NewCharge],
    backend: Backend,
) -> Result<HashSet<String>, StoreError> {
    const COLUMNS: usize = 16;
    let rows: Vec<String> = (0..charges.len())
        .map(|i| {
            let params: Vec<String> = (1..=COLUMNS)
                .map(|c| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", i * COLUMNS + c),
                })
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    // `WHERE true` settles SQLite's parse of INSERT … SELECT … ON CONFLICT.
    let sql = format!(
        "INSERT INTO charges (request_id, key_id, wallet, chain_id, model, price_version,
                              input_tokens, output_tokens, amount_atomic, status, created_at_ms,
                              reported_input_tokens, reported_output_tokens, lease_id,
                              client_request_id, cached_input_tokens, cache_write_tokens,
                              reported_cached_input_tokens, reported_cache_write_tokens)
         SELECT v.column1, k.id, k.wallet, k.chain_id, v.column3, v.column4, v.column5,
                v.column6, v.column7, 'pending', v.column8, v.column9, v.column10, v.column11,
                v.column12, v.column13, v.column14, v.column15, v.column16
           FROM (VALUES {}) AS v JOIN keys k ON k.id = v.column2
          WHERE true
         ON CONFLICT (request_id) DO NOTHING
         RETURNING request_id",
        rows.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for charge in charges {
        query = bind_charge(query, charge);
    }
    query
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| get_string(row, "request_id"))
        .collect()
}

/// The batch's key updates: each key (and lease) grows by the charges the
/// inserts wrote, in key order. `None` when a key would pass its limit.
async fn grow_keys(
    conn: &mut AnyConnection,
    charges: &[NewCharge],
    inserted: &HashSet<String>,
) -> Result<Option<Vec<ChargeOutcome>>, StoreError> {
    // What each key grows by: the charges the inserts wrote.
    let mut outcomes = Vec::with_capacity(charges.len());
    let mut counted: HashSet<&str> = HashSet::new();
    let mut growth = Growth::new();
    for charge in charges {
        let id = charge.request_id.as_str();
        if inserted.contains(id) && counted.insert(id) {
            grow_by(&mut growth, charge)?;
            outcomes.push(ChargeOutcome::Recorded);
        } else if counted.contains(id) {
            outcomes.push(ChargeOutcome::Duplicate);
        } else {
            outcomes.push(existing_outcome(conn, &charge.request_id).await?);
        }
    }
    // Keys in a fixed order, so concurrent writers lock them alike.
    let now_ms = crate::time::now_ms();
    for ((key_id, lease), amount) in growth {
        let grown = match lease {
            Some(lease) => grow_from_lease(conn, key_id, lease, amount, now_ms).await?,
            None => grow_unleased(conn, key_id, amount, now_ms).await?,
        };
        if !grown {
            return Ok(None);
        }
    }
    Ok(Some(outcomes))
}

/// What a batch's charges grow each key by: by key, then by lease (`None`:
/// spent from no lease). Its order is the order keys are updated in, the
/// lock order of every writer.
pub(super) type Growth<'a> = BTreeMap<(&'a str, Option<&'a str>), i64>;

/// Adds `charge` to what its key (and lease) grows by.
pub(super) fn grow_by<'a>(
    growth: &mut Growth<'a>,
    charge: &'a NewCharge,
) -> Result<(), StoreError> {
    let lease = charge.lease.as_ref().map(LeaseId::as_str);
    let sum = growth.entry((charge.key_id.as_str(), lease)).or_insert(0);
    *sum = sum
        .checked_add(charge.amount.to_db())
        .ok_or(StoreError::AmountOverflow)?;
    Ok(())
}

/// Binds a charge's sixteen values in the order both inserts use: request
/// id, key id, model, price version, input and output tokens, amount, time,
/// reported input and output tokens, lease, the caller's request id, cached
/// and cache-written input tokens, and their reported counts.
fn bind_charge<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    charge: &'q NewCharge,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
        .bind(charge.request_id.as_str())
        .bind(charge.key_id.as_str())
        .bind(charge.model.as_str())
        .bind(charge.price_version.as_str())
        .bind(i64::from(charge.input_tokens))
        .bind(i64::from(charge.output_tokens))
        .bind(charge.amount.to_db())
        .bind(charge.created_at_ms)
        .bind(charge.reported.map(|(input, _)| i64::from(input)))
        .bind(charge.reported.map(|(_, output)| i64::from(output)))
        .bind(charge.lease.as_ref().map(LeaseId::as_str))
        .bind(charge.client_request_id.as_deref())
        .bind(i64::from(charge.cached_input_tokens))
        .bind(i64::from(charge.cache_write_tokens))
        .bind(charge.reported_cache.map(|(cached, _)| i64::from(cached)))
        .bind(charge.reported_cache.map(|(_, write)| i64::from(write)))
}

/// Why a charge was not inserted: it exists already, or its key does not.
async fn existing_outcome(
    conn: &mut AnyConnection,
    request_id: &RequestId,
) -> Result<ChargeOutcome, StoreError> {
    let exists = sqlx::query("SELECT request_id FROM charges WHERE request_id = $1")
        .bind(request_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match exists {
        Some(_) => ChargeOutcome::Duplicate,
        None => ChargeOutcome::UnknownKey,
    })
}

/// One charge's insert, joined to its key (an unknown key inserts nothing);
/// a request id that exists inserts nothing either. Its values, `$1`–`$16`,
/// are [`bind_charge`]'s.
pub(super) const INSERT_ONE: &str = "INSERT INTO charges (request_id, key_id, wallet, chain_id,
        model, price_version, input_tokens, output_tokens, amount_atomic, status, created_at_ms,
        reported_input_tokens, reported_output_tokens, lease_id, client_request_id,
        cached_input_tokens, cache_write_tokens, reported_cached_input_tokens,
        reported_cache_write_tokens)
     SELECT $1, id, wallet, chain_id, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12,
            $13, $14, $15, $16
       FROM keys WHERE id = $2
     ON CONFLICT (request_id) DO NOTHING";

/// Inserts one charge inside the batch's transaction (the request id is the
/// primary key): `None` when it is new, else why it was not inserted.
async fn insert_one(
    conn: &mut AnyConnection,
    charge: &NewCharge,
) -> Result<Option<ChargeOutcome>, StoreError> {
    let inserted = bind_charge(sqlx::query(INSERT_ONE), charge)
        .execute(&mut *conn)
        .await?;
    if inserted.rows_affected() == 0 {
        return Ok(Some(existing_outcome(conn, &charge.request_id).await?));
    }
    Ok(None)
}

/// What a charge the key's limit cannot take becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PastLimit {
    /// Refused: its call has not answered yet (the ledger writer).
    Refuse,
    /// Recorded, flagged `overdrawn`: its call was answered (the queue).
    Overdraw,
}

/// Grows the key's `budget_used` by a charge just inserted; when the key
/// cannot take it, undoes the insert or (answered calls) flags it overdrawn.
async fn grow_one(
    conn: &mut AnyConnection,
    charge: &NewCharge,
    past_limit: PastLimit,
) -> Result<ChargeOutcome, StoreError> {
    let key = charge.key_id.as_str();
    let amount = charge.amount.to_db();
    let now_ms = crate::time::now_ms();
    // From its lease when that still covers it, else from what no lease
    // covers (a lease reclaimed before its charge landed).
    if let Some(lease) = &charge.lease {
        if grow_from_lease(conn, key, lease.as_str(), amount, now_ms).await? {
            return Ok(ChargeOutcome::Recorded);
        }
    }
    if grow_unleased(conn, key, amount, now_ms).await? {
        return Ok(ChargeOutcome::Recorded);
    }
    if past_limit == PastLimit::Overdraw {
        return overdraw(conn, charge).await;
    }
    sqlx::query("DELETE FROM charges WHERE request_id = $1")
        .bind(charge.request_id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(ChargeOutcome::OverBudget)
}

/// A key's `budget_used` grows by a charge only within its limit (invariant
/// 1: `used + leased ≤ limit`), and only while its budget still counts
/// against its wallet: a stopped key whose budget was freed
/// (`committed_until_ms` passed) takes no charge — the funds may back
/// another key by then (invariant 7, the ledger's backstop: the gateway
/// frees a key only once no call can charge it).
///
/// This is the charge spent from no lease: it must fit what no lease covers.
pub(super) const GROW_UNLEASED: &str =
    "UPDATE keys SET budget_used_atomic = budget_used_atomic + $2
     WHERE id = $1 AND budget_used_atomic + leased_atomic <= budget_limit_atomic - $2
       AND (status = 'active' OR committed_until_ms > $3)";

/// A charge spent from a lease moves its amount from the key's `leased` to
/// its `used` (the sum stays, so the limit holds) …
pub(super) const GROW_FROM_LEASE: &str = "UPDATE keys
        SET budget_used_atomic = budget_used_atomic + $2, leased_atomic = leased_atomic - $2
      WHERE id = $1 AND leased_atomic >= $2
        AND (status = 'active' OR committed_until_ms > $3)";

/// … and from the lease's cover to its `charged`, while the lease still
/// covers it (not reclaimed, not over what it was granted).
pub(super) const CHARGE_LEASE: &str =
    "UPDATE budget_leases SET charged_atomic = charged_atomic + $3
      WHERE id = $1 AND key_id = $2 AND state <> 'reclaimed'
        AND charged_atomic + returned_atomic + $3 <= granted_atomic";

/// Grows `key`'s `budget_used` by `amount` spent from no lease; `false`
/// (nothing changed) when it does not fit.
async fn grow_unleased(
    conn: &mut AnyConnection,
    key: &str,
    amount: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let grown = sqlx::query(GROW_UNLEASED)
        .bind(key)
        .bind(amount)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    Ok(grown.rows_affected() == 1)
}

/// Charges `amount` to `lease` of `key`: the key's row first, then the
/// lease's (the store's lock order). `false` (nothing changed) when the
/// lease no longer covers it.
async fn grow_from_lease(
    conn: &mut AnyConnection,
    key: &str,
    lease: &str,
    amount: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let grown = sqlx::query(GROW_FROM_LEASE)
        .bind(key)
        .bind(amount)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    if grown.rows_affected() != 1 {
        return Ok(false);
    }
    let charged = sqlx::query(CHARGE_LEASE)
        .bind(lease)
        .bind(key)
        .bind(amount)
        .execute(&mut *conn)
        .await?;
    if charged.rows_affected() == 1 {
        return Ok(true);
    }
    // The lease does not cover it: undo the key's half.
    sqlx::query(
        "UPDATE keys
            SET budget_used_atomic = budget_used_atomic - $2, leased_atomic = leased_atomic + $2
          WHERE id = $1",
    )
    .bind(key)
    .bind(amount)
    .execute(&mut *conn)
    .await?;
    Ok(false)
}

/// Flags a charge just inserted as overdrawn and counts it on its key.
async fn overdraw(
    conn: &mut AnyConnection,
    charge: &NewCharge,
) -> Result<ChargeOutcome, StoreError> {
    sqlx::query("UPDATE charges SET overdrawn = 1 WHERE request_id = $1")
        .bind(charge.request_id.as_str())
        .execute(&mut *conn)
        .await?;
    let counted = sqlx::query(
        "UPDATE keys SET overdrawn_atomic = overdrawn_atomic + $2
          WHERE id = $1 AND overdrawn_atomic <= $3 - $2",
    )
    .bind(charge.key_id.as_str())
    .bind(charge.amount.to_db())
    .bind(Amount::MAX.to_db())
    .execute(&mut *conn)
    .await?;
    if counted.rows_affected() != 1 {
        return Err(StoreError::AmountOverflow);
    }
    Ok(ChargeOutcome::Overdrawn)
}

fn charge_from_row(row: &AnyRow) -> Result<ChargeRecord, StoreError> {
    Ok(ChargeRecord {
        request_id: get_parsed(row, "request_id", RequestId::parse)?,
        key_id: get_parsed(row, "key_id", KeyId::parse)?,
        model: get_string(row, "model")?,
        price_version: get_string(row, "price_version")?,
        input_tokens: get_u32(row, "input_tokens")?,
        cached_input_tokens: get_u32(row, "cached_input_tokens")?,
        cache_write_tokens: get_u32(row, "cache_write_tokens")?,
        output_tokens: get_u32(row, "output_tokens")?,
        amount: get_amount(row, "amount_atomic")?,
        reported: get_opt_pair(row, "reported_input_tokens", "reported_output_tokens")?,
        reported_cache: get_opt_pair(
            row,
            "reported_cached_input_tokens",
            "reported_cache_write_tokens",
        )?,
        status: get_string(row, "status")?,
        batch_id: get_opt_string(row, "batch_id")?,
        tx_hash: get_opt_string(row, "tx_hash")?,
        created_at_ms: get_i64(row, "created_at_ms")?,
        client_request_id: get_opt_string(row, "client_request_id")?,
    })
}

/// Two nullable counts stored as a pair: both or neither.
fn get_opt_pair(row: &AnyRow, first: &str, second: &str) -> Result<Option<(u32, u32)>, StoreError> {
    match (get_opt_u32(row, first)?, get_opt_u32(row, second)?) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(StoreError::Corrupt(format!(
            "{first}, {second}: one of the pair is missing"
        ))),
    }
}
