//! `workers` — background work: the queue abstraction (RabbitMQ, in-process),
//! pricing, the ledger writer, the settlement batcher and the chain client.
//!
//! # Layout
//!
//! * [`pricing`] — [`pricing::Price`]: versioned per-model prices and the exact
//!   integer cost formula shared by the gateway's quote and the ledger pool.
//! * [`ledger_writer`] — [`ledger_writer::LedgerWriter`]: group commit of
//!   charges for the embedded (in-process) mode; answers after the commit.
//!
//! The RabbitMQ queue and settlement arrive with their issues.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod ledger_writer;
pub mod pricing;
