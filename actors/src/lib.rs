//! `actors` — key actors: the per-key budget state machine.
//!
//! # Layout
//!
//! * [`budget`] — [`budget::Budget`], the pure state machine (reserve, commit,
//!   release, expire, revoke) with its invariants asserted after every change.
//! * [`messages`] — `Reserve`, `Commit`, `Release`, `Revoke`, `Snapshot`.
//! * [`key_actor`] — [`key_actor::KeyActor`]: one key's budget behind an actix
//!   mailbox, sweeping expired holds.
//! * [`arbiters`] — [`arbiters::ArbiterPool`]: one actix arbiter per core.
//! * [`registry`] — [`registry::Registry`]: one actor per key, started through a
//!   [`registry::KeyLoader`] on first use, spread over the arbiters, bounded in
//!   calls in flight, stopped when idle; revocations pushed at once.
//! * [`lease`] — [`lease::Lease`], a call's claim on its key's actor, and
//!   [`lease::Fence`], which holds new leases back while a revocation is
//!   decided.
//!
//! This crate depends only on `ledger` and does no I/O of its own: key state
//! comes in through the [`registry::KeyLoader`] the binary gives it.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod arbiters;
pub mod budget;
pub mod key_actor;
pub mod lease;
pub mod messages;
pub mod registry;
