//! [`CallFailure`]: why a paid call did not go through, in the paid path's
//! own terms. The paid path knows nothing of HTTP: `http::error` alone turns
//! these into statuses, bodies and `x-compose-key-*` headers.

use std::borrow::Cow;

use ledger::Amount;

/// A key's budget as a call sees it: what the budget headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetView {
    pub limit: Amount,
    /// Committed spend (this call's charge included once it finished).
    pub used: Amount,
    /// What this call was charged; `None` on a stream's opening headers,
    /// where the amount is not known yet (it comes in the last chunk).
    pub final_amount: Option<Amount>,
}

impl BudgetView {
    /// `limit − used`.
    pub fn remaining(&self) -> Amount {
        self.limit.saturating_sub(self.used)
    }
}

/// Why a paid call was refused or failed. Every variant says what was
/// charged: nothing, unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// A request field is malformed (`param` names it).
    #[error("{param} {message}")]
    InvalidParam {
        param: Cow<'static, str>,
        message: String,
    },
    /// A field this gateway does not forward; `priced`: it would change
    /// what the upstream bills.
    #[error("{field} is not forwarded")]
    UnsupportedParameter { field: String, priced: bool },
    #[error("the model {0:?} does not exist here")]
    ModelNotFound(String),
    /// The model's upstream does not speak the endpoint's API; `serves`
    /// lists the endpoints that reach it.
    #[error("the model {model:?} is not served by this endpoint")]
    WrongApi {
        model: String,
        serves: Vec<&'static str>,
    },
    /// A Studio key's project has no usable budget key (none set, or it
    /// was revoked or expired).
    #[error("the key's project has no usable budget")]
    NoProjectBudget,
    /// The token is not the one issued for its key.
    #[error("the bearer token is not a valid Compose key")]
    InvalidToken,
    #[error("the key has been revoked")]
    KeyRevoked,
    #[error("the key's session was replaced by a newer sign-in")]
    SessionSuperseded,
    #[error("the key has expired")]
    KeyExpired,
    /// Not even a minimal call fits: `remaining` is `limit − used` (the
    /// headers' figure), `available` what holds of calls in flight leave.
    #[error("the key's available budget ({available}) cannot cover a minimal call ({minimum})")]
    InsufficientBudget {
        remaining: Amount,
        available: Amount,
        minimum: Amount,
        budget: Option<BudgetView>,
    },
    /// Settlement holds the key's payer back: its funds on chain cannot
    /// pay what it owes. No key of its spends until its charges settle.
    #[error("the key's payer cannot pay what it owes on chain")]
    PayerHeldBack(Box<ledger::store::payers::HeldBackPayer>),
    #[error("the key already has {max} calls in flight")]
    TooManyInFlight { max: u32 },
    #[error("the key has too many holds open")]
    TooManyHolds,
    #[error("the gateway is at capacity")]
    AtCapacity,
    /// The key could not be loaded or its actor is gone; `cause` is for the log.
    #[error("the key is unavailable: {cause}")]
    KeyUnavailable { cause: String },
    /// The charge could not be written: nothing charged, result withheld.
    #[error("the ledger is unavailable: {cause}")]
    LedgerUnavailable { cause: String },
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// `cause` (the upstream's own words) is for the log, not the client.
    #[error("the upstream failed: {cause}")]
    UpstreamFailed { cause: String },
    #[error("internal: {0}")]
    Internal(String),
}

impl CallFailure {
    pub fn invalid_param(param: &'static str, message: impl std::fmt::Display) -> CallFailure {
        CallFailure::InvalidParam {
            param: Cow::Borrowed(param),
            message: message.to_string(),
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> CallFailure {
        CallFailure::Internal(cause.to_string())
    }
}
