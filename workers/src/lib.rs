//! `workers` — what happens to a call after it is priced: the charge sinks
//! and, as their issues land, the queue (RabbitMQ, in-process), the ledger
//! pool that records charges from it, and settlement.
//!
//! # Layout
//!
//! * [`sink`] — [`sink::ChargeSink`]: where a finished call's charge goes. The
//!   gateway writes every charge through one, and hears back only once it is
//!   durable. Implementations: [`ledger_writer::LedgerWriter`] (embedded mode,
//!   group commit to the store); the RabbitMQ publisher is the next.
//! * [`ledger_writer`] — [`ledger_writer::LedgerWriter`]: group commit of
//!   charges for the embedded (in-process) mode; answers after the commit.
//! * [`queue`] — [`queue::Queue`]: one queue API, RabbitMQ (`lapin`) or in
//!   process, passing one shared test suite.
//! * [`event`] — [`event::CallCompleted`]: a finished paid call as the
//!   gateway priced it; the queue's message.
//! * [`ledger_pool`] — [`ledger_pool::LedgerPool`]: consumes those events and
//!   records each charge once, acking after the commit.
//!
//! The queue, the events and the pool are not wired into the paid path yet:
//! that needs the budget leases of the worker-pool issue (13), without which
//! an actor reloaded from a ledger that lags the queue could spend twice.
//!
//! Pricing is money arithmetic every crate shares: it lives in
//! `ledger::pricing`. Settlement arrives with its issue.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod event;
pub mod ledger_pool;
pub mod ledger_writer;
pub mod queue;
pub mod sink;
