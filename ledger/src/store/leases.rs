//! Budget leases: what a gateway node's key actor may spend,
//! taken from the key's budget in the store in chunks.
//!
//! A key's `leased_atomic` is the sum of what its unreclaimed leases still
//! cover (`granted − charged − returned`), and every statement here keeps
//! `budget_used + leased ≤ limit` (invariant 1 at rest). A node spends from
//! its lease in memory; each charge it writes (now, or later through the
//! queue) moves its amount from `leased` to `budget_used` and from the
//! lease's cover to `charged` ([`super::charges`]). So:
//!
//! * several nodes serve one key, each within what it took;
//! * a node that stops returns what it did not spend ([`Store::return_lease`]),
//!   and what it did spend stays covered until its charges land;
//! * a node that crashes stops renewing (its `lease_nodes` heartbeat); once
//!   it was silent for `leases.grace_ms`, any node takes its open leases'
//!   cover back ([`Store::reclaim_leases`]), as it does a returned lease's
//!   cover that no charge claimed within the grace of its return. Until then
//!   the key is stricter, never looser.
//!
//! Lock order, in every transaction that touches them: the wallet's balance
//! row first (funded takes, key creation), then the key's row,
//! then the lease's, so two writers never wait on each other crosswise.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::balances::lock_balance;
use super::payers::payer_headroom;
use super::{chain_to_db, get_amount, get_i64, get_parsed, get_string, Store};
use crate::{Amount, ChainId, KeyId, LeaseId, StoreError, WalletAddress};

/// The most leases one [`Store::reclaim_leases`] pass takes back (a bound
/// on one pass's work; the next pass takes the rest).
pub const RECLAIM_BATCH_MAX: i64 = 256;

/// What a [`Store::take_lease`] granted, and the key as it then stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Added to the lease: at most the chunk asked for, less (even zero)
    /// when the key has less left that no lease covers.
    pub granted: Amount,
    pub limit: Amount,
    /// The key's `budget_used` as the store has it (charges still on their
    /// way through the queue are not in it yet).
    pub used: Amount,
    /// What the lease had been charged (`charged_atomic`), read in the same
    /// transaction as `used`, of which it is a part: charges its node wrote
    /// that its actor may not have committed yet (a call writes its charge
    /// first and commits it second).
    pub lease_charged: Amount,
}

impl LeaseGrant {
    /// `used` less this lease's own charges: what the key spent that its
    /// actor could not have counted. With every charge the actor committed
    /// it is the key's spend, each charge once — and `used_elsewhere +
    /// granted ≤ limit` for everything the lease was ever granted (the
    /// lease's cover is part of `leased`).
    pub fn used_elsewhere(&self) -> Amount {
        self.used.saturating_sub(self.lease_charged)
    }
}

/// A key whose lease is still open on a node but which can no longer spend
/// (revoked, superseded): the node refuses it from its next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedLeasedKey {
    pub key_id: KeyId,
    pub lease_id: LeaseId,
    /// `revoked` or `superseded`.
    pub status: String,
}

/// A lease as stored (tests and operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub key_id: KeyId,
    pub node_id: String,
    pub granted: Amount,
    pub charged: Amount,
    pub returned: Amount,
    pub state: String,
    pub renewed_at_ms: i64,
    /// Store updates that granted to it.
    pub takes: u64,
}

impl LeaseRecord {
    /// What the lease still covers: granted, not charged, not returned.
    pub fn outstanding(&self) -> Amount {
        self.granted
            .saturating_sub(self.charged)
            .saturating_sub(self.returned)
    }
}

/// The condition on a lease `l` whose cover may be taken back at the cutoff
/// in parameter `cutoff` (see [`Store::reclaim_leases`]): open, its node
/// silent since then (or never heard from since the lease's last grant); or
/// returned before then.
fn stale(cutoff: &str, returned: Returned) -> String {
    let returned = match returned {
        Returned::Reclaim => "l.state = 'returned'",
        Returned::Keep => "1 = 0",
    };
    format!(
        "l.state <> 'reclaimed' AND l.renewed_at_ms < {cutoff}
           AND ({returned}
                OR (l.state = 'open'
                    AND NOT EXISTS (SELECT 1 FROM lease_nodes n
                                     WHERE n.node_id = l.node_id AND n.renewed_at_ms >= {cutoff})))"
    )
}

/// Whether a returned lease's cover may be taken back after the grace.
#[derive(Debug, Clone, Copy)]
enum Returned {
    /// Yes: its charges were written before their calls answered; what it
    /// still covers is a charge that never came.
    Reclaim,
    /// No: its charges may still be on their way through the queue.
    Keep,
}

/// A take grants at most this share (1/N) of what no lease covers, unless
/// the call that asks needs more: a small key's budget is shared by the
/// nodes that serve it instead of sitting whole in the first one's lease.
pub const TAKE_SHARE_DIVISOR: i64 = 4;

/// Takes `chunk` ($2) from the key, when no lease covers at least
/// [`TAKE_SHARE_DIVISOR`] times it ($4): the common case of a key much larger
/// than a chunk, one guarded statement.
const TAKE_CHUNK: &str = "UPDATE keys SET leased_atomic = leased_atomic + $2
     WHERE id = $1 AND status = 'active' AND expires_at_ms > $3
       AND budget_limit_atomic - budget_used_atomic - leased_atomic >= $4
     RETURNING budget_limit_atomic, budget_used_atomic, leased_atomic";

/// Locks the key's row (a no-op write) and reads it: the slow path of a take
/// and the first step of a reclaim, so the lease's row is locked second.
const LOCK_KEY: &str = "UPDATE keys SET leased_atomic = leased_atomic
     WHERE id = $1
     RETURNING budget_limit_atomic, budget_used_atomic, leased_atomic, status, expires_at_ms";

impl Store {
    /// Adds up to `chunk` of `key`'s budget to lease `lease` of `node`
    /// (opening the lease on its first take): the whole chunk in one guarded
    /// update when the key has [`TAKE_SHARE_DIVISOR`] chunks unleased, else
    /// `max(need, ⌈unleased ÷ TAKE_SHARE_DIVISOR⌉)`, within the chunk and
    /// what is left (`need`: what the asking call is short of; zero for a
    /// background top-up). `None` when the key cannot spend (unknown,
    /// stopped, expired), or when `lease` is no longer open.
    pub async fn take_lease(
        &self,
        lease: &LeaseId,
        key: &KeyId,
        node: &str,
        chunk: Amount,
        need: Amount,
        now_ms: i64,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let grant = take_in(&mut tx, lease, key, node, (chunk, need), now_ms).await?;
        finish_take(tx, grant).await
    }

    /// [`Store::take_lease`] for a key whose payer's funds live on chain
    /// (the `evm` mode): `payer` is the key's wallet and chain, `spendable`
    /// its `min(balance, allowance)` read just before. The take grants only
    /// what that covers beyond what the payer owes unsettled and what its
    /// keys' leases already cover ([`super::payers`]), and nothing while the
    /// payer is held back; serialized per payer (its balance row's lock, the
    /// first lock of every writer on a wallet).
    pub async fn take_lease_funded(
        &self,
        lease: &LeaseId,
        key: &KeyId,
        node: &str,
        (chunk, need): (Amount, Amount),
        (payer, chain, spendable): (&WalletAddress, ChainId, Amount),
        now_ms: i64,
    ) -> Result<Option<LeaseGrant>, StoreError> {
        let mut tx = self.pool().begin().await?;
        lock_balance(&mut tx, payer, chain, now_ms).await?;
        let headroom = payer_headroom(
            &mut tx,
            &payer.to_lower_hex(),
            chain_to_db(chain)?,
            spendable,
        )
        .await?;
        let capped = (chunk.min(headroom), need.min(headroom));
        let grant = take_in(&mut tx, lease, key, node, capped, now_ms).await?;
        if let Some(grant) = &grant {
            assert!(grant.granted <= headroom, "a take past the payer's funds");
        }
        finish_take(tx, grant).await
    }

    /// Gives back `amount` of `lease` (what its node did not spend) and
    /// closes it: it takes no more grants, and what it still covers is the
    /// charges its node spent that have not landed yet. A return larger than
    /// the lease still covers (its node reported a charge the ledger already
    /// took from elsewhere) gives back what it covers. Answers what was
    /// returned; `None` when the lease was not open (nothing changes).
    pub async fn return_lease(
        &self,
        lease: &LeaseId,
        key: &KeyId,
        amount: Amount,
        now_ms: i64,
    ) -> Result<Option<Amount>, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The key's row first (the lock order), then the lease's, read under it.
        sqlx::query(LOCK_KEY)
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT granted_atomic, charged_atomic, returned_atomic FROM budget_leases
              WHERE id = $1 AND key_id = $2 AND state = 'open'",
        )
        .bind(lease.as_str())
        .bind(key.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let returned = amount.min(cover(&row)?);
        let unleased = unlease(&mut tx, key, returned).await?;
        let closed = sqlx::query(
            "UPDATE budget_leases
                SET returned_atomic = returned_atomic + $2, state = 'returned', renewed_at_ms = $3
              WHERE id = $1 AND state = 'open'",
        )
        .bind(lease.as_str())
        .bind(returned.to_db())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if !unleased || closed.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(below_cover(key, lease));
        }
        tx.commit().await?;
        Ok(Some(returned))
    }

    /// `node`'s heartbeat: its open leases live while it is fresh. One row
    /// per node; no lease row is touched (nor locked).
    pub async fn renew_leases(&self, node: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lease_nodes (node_id, renewed_at_ms) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET renewed_at_ms = excluded.renewed_at_ms",
        )
        .bind(node)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Takes back, at most [`RECLAIM_BATCH_MAX`] per call, what leases still
    /// cover when their node was silent since `stale_before_ms` (it crashed,
    /// or lost the store for `leases.grace_ms`), or — returned leases — when
    /// they were returned before it (a charge that never came); and forgets
    /// returned leases whose charges have all landed. Returns how many
    /// leases it reclaimed. For charges written before their calls answer
    /// (the embedded mode).
    pub async fn reclaim_leases(&self, stale_before_ms: i64) -> Result<u64, StoreError> {
        self.reclaim(stale_before_ms, Returned::Reclaim).await
    }

    /// As [`Store::reclaim_leases`], for charges that reach the ledger after
    /// their calls answered (the queue mode): a returned lease's cover is
    /// what its node spent, on its way — it is never taken back, and goes
    /// only as its charges land. Only silent nodes' open leases are taken.
    pub async fn reclaim_silent_leases(&self, stale_before_ms: i64) -> Result<u64, StoreError> {
        self.reclaim(stale_before_ms, Returned::Keep).await
    }

    /// Forgets returned leases whose charges have all landed (they cover
    /// nothing).
    pub async fn forget_spent_leases(&self) -> Result<u64, StoreError> {
        let forgotten = sqlx::query(
            "DELETE FROM budget_leases
              WHERE state = 'returned' AND charged_atomic + returned_atomic = granted_atomic",
        )
        .execute(self.pool())
        .await?;
        Ok(forgotten.rows_affected())
    }

    async fn reclaim(&self, stale_before_ms: i64, returned: Returned) -> Result<u64, StoreError> {
        self.forget_spent_leases().await?;
        let stale = sqlx::query(&format!(
            "SELECT l.id, l.key_id FROM budget_leases l
              WHERE {} ORDER BY l.renewed_at_ms LIMIT $2",
            stale("$1", returned)
        ))
        .bind(stale_before_ms)
        .bind(RECLAIM_BATCH_MAX)
        .fetch_all(self.pool())
        .await?;
        let mut reclaimed = 0;
        for row in &stale {
            let lease = get_parsed(row, "id", LeaseId::parse)?;
            let key = get_parsed(row, "key_id", KeyId::parse)?;
            if self
                .reclaim_lease(&lease, &key, stale_before_ms, returned)
                .await?
            {
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    /// One lease taken back, if it is still stale and unreclaimed.
    async fn reclaim_lease(
        &self,
        lease: &LeaseId,
        key: &KeyId,
        stale_before_ms: i64,
        returned: Returned,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(LOCK_KEY)
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        // Re-checked under the lock: a renewal or a charge that got there
        // first wins.
        let row = sqlx::query(&format!(
            "UPDATE budget_leases SET state = 'reclaimed'
              WHERE id = $1 AND id IN (SELECT l.id FROM budget_leases l WHERE {})
              RETURNING granted_atomic, charged_atomic, returned_atomic",
            stale("$2", returned)
        ))
        .bind(lease.as_str())
        .bind(stale_before_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let outstanding = cover(&row)?;
        if !unlease(&mut tx, key, outstanding).await? {
            tx.rollback().await?;
            return Err(below_cover(key, lease));
        }
        tx.commit().await?;
        tracing::info!(key_id = %key, lease_id = %lease, %outstanding, "reclaimed a lease its node stopped renewing");
        Ok(true)
    }

    /// Keys that `node` holds an open lease on and that can no longer spend:
    /// revoked or superseded through another node.
    pub async fn stopped_leased_keys(
        &self,
        node: &str,
    ) -> Result<Vec<StoppedLeasedKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.id, l.key_id, k.status
               FROM budget_leases l JOIN keys k ON k.id = l.key_id
              WHERE l.node_id = $1 AND l.state = 'open' AND k.status <> 'active'",
        )
        .bind(node)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoppedLeasedKey {
                    key_id: get_parsed(row, "key_id", KeyId::parse)?,
                    lease_id: get_parsed(row, "id", LeaseId::parse)?,
                    status: get_string(row, "status")?,
                })
            })
            .collect()
    }

    /// A key's leases, oldest first (tests and operators).
    pub async fn leases_for_key(&self, key: &KeyId) -> Result<Vec<LeaseRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, key_id, node_id, granted_atomic, charged_atomic, returned_atomic,
                    state, renewed_at_ms, takes
               FROM budget_leases WHERE key_id = $1 ORDER BY created_at_ms, id",
        )
        .bind(key.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// A key's `leased_atomic`: what its leases cover now.
    pub async fn key_leased(&self, key: &KeyId) -> Result<Amount, StoreError> {
        let row = sqlx::query("SELECT leased_atomic FROM keys WHERE id = $1")
            .bind(key.as_str())
            .fetch_optional(self.pool())
            .await?
            .ok_or(StoreError::NotFound)?;
        get_amount(&row, "leased_atomic")
    }
}

/// Commits a take that granted, and rolls back — now, not when the
/// connection is next used: a dropped transaction would hold the key's row
/// lock until then — one that did not.
async fn finish_take(
    tx: sqlx::Transaction<'_, sqlx::Any>,
    grant: Option<LeaseGrant>,
) -> Result<Option<LeaseGrant>, StoreError> {
    match grant {
        Some(_) => tx.commit().await?,
        None => tx.rollback().await?,
    }
    Ok(grant)
}

/// The take itself, inside the caller's transaction (see
/// [`Store::take_lease`]); the caller commits when it grants.
async fn take_in(
    conn: &mut AnyConnection,
    lease: &LeaseId,
    key: &KeyId,
    node: &str,
    (chunk, need): (Amount, Amount),
    now_ms: i64,
) -> Result<Option<LeaseGrant>, StoreError> {
    let shares = chunk.to_db().saturating_mul(TAKE_SHARE_DIVISOR);
    let fast = sqlx::query(TAKE_CHUNK)
        .bind(key.as_str())
        .bind(chunk.to_db())
        .bind(now_ms)
        .bind(shares)
        .fetch_optional(&mut *conn)
        .await?;
    let grant = match fast {
        Some(row) => {
            let grant = LeaseGrant {
                granted: chunk,
                limit: get_amount(&row, "budget_limit_atomic")?,
                used: get_amount(&row, "budget_used_atomic")?,
                lease_charged: Amount::ZERO,
            };
            assert_within_limit(
                key,
                grant.used,
                get_amount(&row, "leased_atomic")?,
                grant.limit,
            );
            grant
        }
        None => match take_a_share(&mut *conn, key, chunk, need, now_ms).await? {
            Some(grant) => grant,
            None => return Ok(None),
        },
    };
    // Its `charged_atomic` is read under the key's row lock, like `used`:
    // a charge locks the key's row before its lease's, so none lands
    // between the two reads.
    let opened = sqlx::query(
        "INSERT INTO budget_leases (id, key_id, node_id, granted_atomic, state, takes,
                                        renewed_at_ms, created_at_ms)
             VALUES ($1, $2, $3, $4, 'open', 1, $5, $5)
             ON CONFLICT (id) DO UPDATE
                SET granted_atomic = budget_leases.granted_atomic + excluded.granted_atomic,
                    takes = budget_leases.takes + 1,
                    renewed_at_ms = excluded.renewed_at_ms
              WHERE budget_leases.state = 'open' AND budget_leases.key_id = excluded.key_id
             RETURNING charged_atomic",
    )
    .bind(lease.as_str())
    .bind(key.as_str())
    .bind(node)
    .bind(grant.granted.to_db())
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(opened) = opened else {
        // Returned or reclaimed already: its actor must not grow it.
        return Ok(None);
    };
    let grant = LeaseGrant {
        lease_charged: get_amount(&opened, "charged_atomic")?,
        ..grant
    };
    assert!(
        grant.granted <= chunk,
        "granted ≤ chunk broken: granted {} > chunk {chunk}",
        grant.granted
    );
    debug_assert!(grant.lease_charged <= grant.used);
    Ok(Some(grant))
}

/// The slow path of a take: the key has less than
/// [`TAKE_SHARE_DIVISOR`] chunks unleased. Locks its row and grants a share
/// of what is left — at least `need` when there is that much, possibly
/// nothing. `None` when the key cannot spend.
async fn take_a_share(
    conn: &mut AnyConnection,
    key: &KeyId,
    chunk: Amount,
    need: Amount,
    now_ms: i64,
) -> Result<Option<LeaseGrant>, StoreError> {
    let Some(row) = sqlx::query(LOCK_KEY)
        .bind(key.as_str())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    if get_string(&row, "status")? != "active" || get_i64(&row, "expires_at_ms")? <= now_ms {
        return Ok(None);
    }
    let limit = get_amount(&row, "budget_limit_atomic")?;
    let used = get_amount(&row, "budget_used_atomic")?;
    let leased = get_amount(&row, "leased_atomic")?;
    let left = limit.saturating_sub(used).saturating_sub(leased);
    let share =
        Amount::from_atomic(left.atomic().div_ceil(TAKE_SHARE_DIVISOR as u64)).unwrap_or(left);
    let granted = share.max(need).min(chunk).min(left);
    // `left` is `limit − used − leased`: within it, `used + leased ≤ limit`
    // holds after the update below.
    assert!(
        granted <= left && granted <= chunk,
        "used + leased ≤ limit broken: key {key} granted {granted} of {left} left (chunk {chunk})"
    );
    debug_assert!(
        left.is_zero() || chunk.is_zero() || !granted.is_zero(),
        "a take with budget left grants some"
    );
    if !granted.is_zero() {
        let grown = sqlx::query(
            "UPDATE keys SET leased_atomic = leased_atomic + $2
              WHERE id = $1 AND budget_limit_atomic - budget_used_atomic - leased_atomic >= $2",
        )
        .bind(key.as_str())
        .bind(granted.to_db())
        .execute(&mut *conn)
        .await?;
        if grown.rows_affected() != 1 {
            return Err(StoreError::Corrupt(format!(
                "key {key}: its budget changed under the row lock"
            )));
        }
    }
    Ok(Some(LeaseGrant {
        granted,
        limit,
        used,
        lease_charged: Amount::ZERO,
    }))
}

/// `used + leased ≤ limit` (invariant 1 at rest), as a statement that just
/// changed the key's row answered it: its guard kept it, so a failure is a
/// bug in that guard, never bad input.
fn assert_within_limit(key: &KeyId, used: Amount, leased: Amount, limit: Amount) {
    assert!(
        used.checked_add(leased).is_some_and(|sum| sum <= limit),
        "used + leased ≤ limit broken: key {key} used {used} + leased {leased} > limit {limit}"
    );
}

/// What a lease row still covers: granted, not charged, not returned.
fn cover(row: &AnyRow) -> Result<Amount, StoreError> {
    Ok(get_amount(row, "granted_atomic")?
        .saturating_sub(get_amount(row, "charged_atomic")?)
        .saturating_sub(get_amount(row, "returned_atomic")?))
}

/// Takes `amount` off the key's `leased_atomic` (a lease gave it back);
/// `false` when the key's figure is below it (nothing changes).
async fn unlease(
    conn: &mut AnyConnection,
    key: &KeyId,
    amount: Amount,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE keys SET leased_atomic = leased_atomic - $2
          WHERE id = $1 AND leased_atomic >= $2",
    )
    .bind(key.as_str())
    .bind(amount.to_db())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The books of a key and one of its leases disagree.
fn below_cover(key: &KeyId, lease: &LeaseId) -> StoreError {
    StoreError::Corrupt(format!(
        "key {key}: leased_atomic is below its lease {lease}'s cover"
    ))
}

fn lease_from_row(row: &AnyRow) -> Result<LeaseRecord, StoreError> {
    Ok(LeaseRecord {
        id: get_parsed(row, "id", LeaseId::parse)?,
        key_id: get_parsed(row, "key_id", KeyId::parse)?,
        node_id: get_string(row, "node_id")?,
        granted: get_amount(row, "granted_atomic")?,
        charged: get_amount(row, "charged_atomic")?,
        returned: get_amount(row, "returned_atomic")?,
        state: get_string(row, "state")?,
        renewed_at_ms: get_i64(row, "renewed_at_ms")?,
        takes: u64::try_from(get_i64(row, "takes")?)
            .map_err(|_| StoreError::Corrupt("budget_leases.takes is negative".to_owned()))?,
    })
}
