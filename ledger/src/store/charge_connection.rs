//! [`ChargeConnection`]: a SQLite connection of its own for the embedded
//! mode's group commit, owned by one thread.
//!
//! Through the pool, every statement of a batch is a round trip to the
//! pooled connection's sqlx worker thread — a wake-up there and one back:
//! a batch of one charge cost about 17 context switches on that thread and
//! as many on the runtime's (BENCHMARKS (i)). This connection is driven by
//! the writer's own thread, so a batch is one `BEGIN IMMEDIATE` … `COMMIT`
//! run in place, with the very statements [`Store::record_charges`] uses.
//!
//! It writes only a batch's common case: every charge new and every key
//! able to take what it grows by. Anything else — a request id seen before,
//! an unknown key, a key or lease that cannot take a charge — rolls the
//! transaction back (nothing written) and answers `None`; the caller then
//! writes the batch through [`Store::record_charges`], which decides charge
//! by charge. So this file adds no rule of its own: it either does exactly
//! what the pool's fast path does, or nothing.

use std::path::Path;
use std::time::Duration;

use rusqlite::{named_params, Connection, OpenFlags, Transaction, TransactionBehavior};

use super::charges::{
    grow_by, Growth, CHARGE_LEASE, GROW_FROM_LEASE, GROW_UNLEASED, INSERT_ONE, RECORD_BATCH_MAX,
};
use super::{Store, SQLITE_BUSY_TIMEOUT_MS};
use crate::model::{ChargeOutcome, NewCharge};
use crate::{LeaseId, StoreError};

/// A connection to the store's SQLite file outside the pool. Blocking: use
/// it from a thread of its own, never from an async task.
#[derive(Debug)]
pub struct ChargeConnection {
    connection: Connection,
}

impl Store {
    /// A connection of its own to this store's SQLite file, for a thread
    /// that records charge batches ([`ChargeConnection::record_new_charges`]);
    /// `None` on PostgreSQL (a server connection has no worker thread to
    /// skip). Open it after [`Store::migrate`].
    pub fn charge_connection(&self) -> Result<Option<ChargeConnection>, StoreError> {
        self.sqlite_path
            .as_deref()
            .map(ChargeConnection::open)
            .transpose()
    }
}

impl ChargeConnection {
    fn open(path: &Path) -> Result<ChargeConnection, StoreError> {
        // Never create: the pool made the file, private, and migrated it.
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Waiting on the write lock (the settlement's batch, a lease take):
        // SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms between
        // tries, which every caller of a batch waits out; this one tries
        // every 250 µs, for as long as the pool's busy timeout.
        connection.busy_handler(Some(wait_for_the_write_lock))?;
        // The pool's settings (`Store::connect`); WAL is the file's own.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        let journal: String =
            connection.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Setup(format!(
                "{}: journal mode {journal}, expected wal",
                path.display()
            )));
        }
        Ok(ChargeConnection { connection })
    }

    /// Writes `charges` in one transaction when every one is new and every
    /// key (and lease) can take it: answers `Recorded` for each, after the
    /// commit. `None` when any cannot: nothing was written, and the batch
    /// belongs to [`Store::record_charges`].
    pub fn record_new_charges(
        &mut self,
        charges: &[NewCharge],
    ) -> Result<Option<Vec<ChargeOutcome>>, StoreError> {
        debug_assert!(charges.len() <= RECORD_BATCH_MAX);
        // IMMEDIATE: the write lock first, so the transaction never has to
        // upgrade from a read (which fails at once when another wrote).
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut growth = Growth::new();
        {
            let mut insert = transaction.prepare_cached(INSERT_ONE)?;
            for charge in charges {
                if insert_one(&mut insert, charge)? != 1 {
                    // Seen before, or no such key: the pool decides.
                    return Ok(None);
                }
                grow_by(&mut growth, charge)?;
            }
        }
        let now_ms = crate::time::now_ms();
        for (&(key, lease), &amount) in &growth {
            if !grow(&transaction, key, lease, amount, now_ms)? {
                // Dropping the transaction rolls it back.
                return Ok(None);
            }
        }
        transaction.commit()?;
        Ok(Some(vec![ChargeOutcome::Recorded; charges.len()]))
    }
}

/// SQLite's busy handler for [`ChargeConnection`]: another try after 250
/// µs, for [`SQLITE_BUSY_TIMEOUT_MS`] in all (`false` gives up: the batch
/// then goes through the pool, which waits its own busy timeout).
fn wait_for_the_write_lock(tries: i32) -> bool {
    const PAUSE_US: u64 = 250;
    let waited_us = u64::try_from(tries).unwrap_or(0).saturating_mul(PAUSE_US);
    if waited_us >= u64::from(SQLITE_BUSY_TIMEOUT_MS) * 1_000 {
        return false;
    }
    std::thread::sleep(Duration::from_micros(PAUSE_US));
    true
}

/// Runs [`INSERT_ONE`] for `charge` (the values `bind_charge` binds).
fn insert_one(
    insert: &mut rusqlite::CachedStatement<'_>,
    charge: &NewCharge,
) -> Result<usize, StoreError> {
    Ok(insert.execute(named_params! {
        "$1": charge.request_id.as_str(),
        "$2": charge.key_id.as_str(),
        "$3": charge.model.as_str(),
        "$4": charge.price_version.as_str(),
        "$5": i64::from(charge.input_tokens),
        "$6": i64::from(charge.output_tokens),
        "$7": charge.amount.to_db(),
        "$8": charge.created_at_ms,
        "$9": charge.reported.map(|(input, _)| i64::from(input)),
        "$10": charge.reported.map(|(_, output)| i64::from(output)),
        "$11": charge.lease.as_ref().map(LeaseId::as_str),
        "$12": charge.client_request_id.as_deref(),
        "$13": i64::from(charge.cached_input_tokens),
        "$14": i64::from(charge.cache_write_tokens),
        "$15": charge.reported_cache.map(|(cached, _)| i64::from(cached)),
        "$16": charge.reported_cache.map(|(_, write)| i64::from(write)),
    })?)
}

/// Grows `key` by `amount`, from `lease` (the key's row, then the lease's)
/// or from what no lease covers; `false` when it cannot take it (the
/// caller rolls everything back).
fn grow(
    transaction: &Transaction<'_>,
    key: &str,
    lease: Option<&str>,
    amount: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let Some(lease) = lease else {
        let grown = transaction
            .prepare_cached(GROW_UNLEASED)?
            .execute(named_params! { "$1": key, "$2": amount, "$3": now_ms })?;
        return Ok(grown == 1);
    };
    let grown = transaction
        .prepare_cached(GROW_FROM_LEASE)?
        .execute(named_params! { "$1": key, "$2": amount, "$3": now_ms })?;
    if grown != 1 {
        return Ok(false);
    }
    let charged = transaction
        .prepare_cached(CHARGE_LEASE)?
        .execute(named_params! { "$1": lease, "$2": key, "$3": amount })?;
    Ok(charged == 1)
}
