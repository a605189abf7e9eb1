//! Settlement on an EVM chain: the contracts' bindings, the
//! chain client the settler and the funding check use, the `evm` settler,
//! and the local devnet (Anvil with mock USDC) that tests and `tollgate
//! devnet` run.

pub mod chain;
pub mod contracts;
pub mod devnet;
pub mod reconcile;
pub mod settler;

pub use alloy::primitives::{Address, U256};
pub use chain::{ledger_amount, ChainClient, ChainConfig, ChainError, Funds};
