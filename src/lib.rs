//! Tollgate — an API gateway that sells pay-per-call access through budgeted
//! API keys and settles what the keys spend in USDC.
//!
//! This crate is the binary's library half: HTTP, CLI and wiring. The money
//! model and store live in `ledger`; key actors in `actors`; background work
//! in `workers`. See ARCHITECTURE.md for the map and the invariants.
//!
//! # Layout
//!
//! * [`cli`] — command-line interface (`serve`, `migrate`, `credit`, `siwe-sign`).
//! * [`settings`] — layered configuration.
//! * [`startup`] — [`startup::Application`]: the server on a bound listener.
//! * [`state`] — what handlers share.
//! * [`http`] — routes, one file per resource, and the one error mapping.
//! * [`gateway`] — the paid path: key actors, holds and charges, models.
//! * [`pools`] — the queue mode's worker side: the ledger pools.
//! * [`upstream`] — the `echo` model and OpenAI-compatible upstreams.
//! * [`auth`] — Compose tokens, SIWE, Ethereum signatures, signing key.
//! * [`studio`] — Studio API keys: secrets at rest, JWTs.
//! * [`telemetry`] — `tracing` set-up.
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
