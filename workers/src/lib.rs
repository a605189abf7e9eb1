//! `workers` — what happens to a call after it is priced: the charge sinks,
//! the queue (RabbitMQ, in-process), the ledger pool that records charges
//! from it, and settlement, against prepaid balances or on an EVM chain.
//!
//! # Layout
//!
//! * [`sink`] — [`sink::ChargeSink`]: where a finished call's charge goes. The
//!   gateway writes every charge through one, and hears back only once it is
//!   durable. Implementations: [`ledger_writer::LedgerWriter`] (embedded mode,
//!   group commit to the store) and [`publisher::QueueSink`] (RabbitMQ:
//!   a confirmed `CallCompleted` event).
//! * [`ledger_writer`] — [`ledger_writer::LedgerWriter`]: group commit of
//!   charges for the embedded (in-process) mode; answers after the commit.
//! * [`publisher`] — [`publisher::QueueSink`]: publishes charges as events
//!   and answers once the broker confirmed them.
//! * [`queue`] — [`queue::Queue`]: one queue API, RabbitMQ (`lapin`) or in
//!   process, passing one shared test suite.
//! * [`event`] — [`event::CallCompleted`]: a finished paid call as the
//!   gateway priced it; the queue's message.
//! * [`ledger_pool`] — [`ledger_pool::LedgerPool`]: consumes those events and
//!   records each charge once, acking after the commit.
//! * [`settlement`] — [`settlement::LedgerSettler`]: the `ledger` mode's
//!   settlement, batches of charges debited from prepaid balances.
//! * [`evm`] — the `evm` mode's settlement on chain: the contracts' bindings,
//!   the chain client, the settler, reconciliation against the chain, and the
//!   local devnet (Anvil).
//!
//! With `queue.url = amqp://…` the gateway publishes through
//! [`publisher::QueueSink`] and the pools record; the budget leases keep a
//! key within its limit however far the ledger lags the queue.
//!
//! Pricing is money arithmetic every crate shares: it lives in
//! `ledger::pricing`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod event;
pub mod evm;
pub mod ledger_pool;
pub mod ledger_writer;
pub mod publisher;
pub mod queue;
pub mod settlement;
pub mod sink;
