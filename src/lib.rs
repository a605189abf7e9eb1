//! Tollgate — an API gateway that sells pay-per-call access through budgeted
//! API keys and settles what the keys spend in USDC.
//!
//! This crate is the binary's library half: HTTP, CLI and wiring. The money
//! model and store live in `ledger`; key actors in `actors`; background work
//! (charge sinks, the queue, ledger pools, settlement) in `workers`. See
//! ARCHITECTURE.md for the map and the invariants.
//!
//! # Layout
//!
//! * [`cli`] — the command line, one file per command: `serve`, `migrate`,
//!   `worker`, `credit`, `siwe-sign`, `studio bootstrap`, `settlements
//!   list|show|replay`, `reconcile`, `dlq list|retry`, `devnet`.
//! * [`settings`] — layered configuration, one file per section with its
//!   validation.
//! * [`startup`] — [`startup::Application`]: the server on a bound listener,
//!   and its ordered shutdown.
//! * [`state`] — what handlers share.
//! * [`http`] — routes, one file per resource, and the one error mapping.
//! * [`gateway`] — the paid path: key actors, holds and charges, leases,
//!   payers' fences, revocation, models.
//! * [`pools`] — the worker side: the ledger pools, the chain clients and the
//!   settlers of either settlement mode.
//! * [`settled_txs`] — each key's latest settlement transaction, for
//!   `x-compose-key-tx-hash`.
//! * [`metrics`] — the Prometheus exporter and the store gauges read in the
//!   background.
//! * [`upstream`] — the `echo` model and OpenAI-compatible upstreams.
//! * [`auth`] — Compose tokens, SIWE, Ethereum signatures, signing key, rate
//!   limits.
//! * [`studio`] — Studio API keys: secrets at rest, JWTs, views.
//! * [`telemetry`] — `tracing` set-up and request spans.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod cli;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod pools;
pub mod settings;
pub mod settled_txs;
pub mod startup;
pub mod state;
pub mod studio;
pub mod telemetry;
pub mod upstream;
