//! `actors` — key actors: the per-key budget state machine.
//!
//! # Layout
//!
//! * [`budget`] — [`budget::Budget`], the pure state machine (reserve, commit,
//!   release, expire, revoke) with its invariants asserted after every change.
//!
//! The actix actor around it and the registry that spreads actors over one
//! arbiter per core arrive with the paid path. This crate depends only on
//! `ledger` and does no I/O of its own.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod budget;
