//! `actors` — key actors and their registry: the per-key budget state machine
//! (reserve / commit / release / expire / revoke).
//!
//! Empty until the paid-path issue lands: the foundation has no hot path yet.
//! It depends only on `ledger` and does no I/O of its own.
