//! `actors` — key actors: the per-key budget state machine.
//!
//! # Layout
//!
//! * [`budget`] — [`budget::Budget`], the pure state machine (reserve, commit,
//!   release, expire, revoke) with its invariants asserted after every change.
//! * [`messages`] — `Reserve`, `Commit`, `Release`, `Revoke`, `Snapshot`.
//! * [`key_actor`] — [`key_actor::KeyActor`]: one key's budget behind an actix
//!   mailbox, sweeping expired holds.
//!
//! The registry that spreads actors over one arbiter per core, starts them
//! from the store and bounds in-flight calls per key arrives with the paid
//! path. This crate depends only on `ledger` and does no I/O of its own.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod budget;
pub mod key_actor;
pub mod messages;
