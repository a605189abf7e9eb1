//! `ledger` — Tollgate's system of record.
//!
//! Everything that another crate may need to agree on about money lives here:
//! the exact amount type, typed ids, the key/session/charge models, and the SQL
//! store that PostgreSQL (production) and SQLite (embedded default) both serve.
//!
//! # Layout
//!
//! * [`money`] — [`Amount`], integer USDC atomic units with checked arithmetic.
//! * [`pricing`] — [`pricing::Price`]: versioned per-model prices, the exact
//!   integer cost formula and billing within a hold, shared by the gateway's
//!   quote and the ledger pool's re-pricing.
//! * [`ids`] — typed ids ([`KeyId`], [`SessionId`], [`RequestId`]), [`ChainId`]
//!   and [`WalletAddress`] (EIP-55 aware).
//! * [`time`] — milliseconds since the Unix epoch, the one clock of the ledger.
//! * [`model`] — the records the store reads and writes.
//! * [`error`] — [`StoreError`].
//! * [`store`] — [`Store`]: one API over both databases; SQL lives only there.
//! * `testing` — (feature `test-support`) a fresh, migrated store per test.
//!
//! # Architecture invariants
//!
//! * `ledger` does no HTTP, no queue and no chain I/O; it imports no other
//!   Tollgate crate.
//! * Amounts never pass through floating point.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod ids;
pub mod model;
pub mod money;
pub mod pricing;
pub mod store;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod time;

pub use error::StoreError;
pub use ids::{
    AccountId, ApiKeyId, ChainId, KeyId, LeaseId, ProjectId, RequestId, SessionId, WalletAddress,
};
pub use money::Amount;
pub use store::Store;
