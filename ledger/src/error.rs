//! [`StoreError`]: everything the store can answer besides success.
//!
//! Domain refusals (`InsufficientFunds`, `NonceRejected`, …) are distinct
//! variants so the HTTP layer can map each to a precise status; database and
//! migration failures carry their cause for the logs, never for clients.

use crate::Amount;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the group-commit writer's own SQLite connection
    /// ([`crate::store::charge_connection`]).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported store url (expected sqlite:// or postgres://): {0}")]
    UnsupportedUrl(String),
    #[error("store could not be prepared: {0}")]
    Setup(String),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("not found")]
    NotFound,
    #[error(
        "insufficient funds: required {required}, available {available}, committed {committed}"
    )]
    InsufficientFunds {
        required: Amount,
        available: Amount,
        committed: Amount,
        /// `evm` mode: the wallet's token balance and allowance on chain.
        on_chain: Option<(Amount, Amount)>,
    },
    #[error("the wallet already has {max} active keys on this chain")]
    TooManyKeys { max: u32 },
    #[error("the project already holds {max} unexpired keys")]
    TooManyApiKeys { max: u32 },
    #[error("the caller's session is no longer the wallet's active one")]
    SessionSuperseded,
    #[error("nonce unknown, already used or expired")]
    NonceRejected,
    #[error("amount would overflow")]
    AmountOverflow,
    #[error("charge would take the key past its budget limit")]
    OverBudget,
    #[error("a Studio account named {0:?} exists already")]
    AccountNameTaken(String),
    #[error("no Studio account is named {0:?}")]
    NoSuchAccount(String),
    #[error("{1} Studio accounts are named {0:?}; name one by a unique name")]
    AccountNameAmbiguous(String, usize),
    #[error("the account already has a project named {0:?}")]
    ProjectNameTaken(String),
}
