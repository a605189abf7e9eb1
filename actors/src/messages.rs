//! The messages a [`crate::key_actor::KeyActor`] answers. Each is one whole
//! piece of budget work — never chatty: message passing costs far more than
//! the arithmetic behind it.

use actix::Message;
use ledger::{Amount, RequestId};

use crate::budget::{BudgetSnapshot, BudgetStatus, Committed, ReserveError, Reserved, SettleError};

/// Hold up to `wanted` (at least `minimum`) for a call about to run.
#[derive(Debug, Message)]
#[rtype(result = "Result<Reserved, ReserveError>")]
pub struct Reserve {
    pub request: RequestId,
    pub wanted: Amount,
    pub minimum: Amount,
    /// When an uncommitted hold is released on its own.
    pub deadline_ms: i64,
    /// A leased budget whose allowance cannot cover `wanted` while the key
    /// may have more answers [`ReserveError::AllowanceShort`] instead of
    /// lowering the hold (the caller takes a grant, then reserves with
    /// `grow: false`, which holds what there is).
    pub grow: bool,
    /// [`Reserved::top_up`] is set when the allowance left after this hold
    /// is below this (zero: never).
    pub low_water: Amount,
}

/// Add a chunk of the node's budget lease to the allowance.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Grant {
    pub amount: Amount,
    /// The key's spend that this actor's calls did not make, as the store
    /// answered the take: its `budget_used` less what this actor's lease
    /// had been charged (see `Budget::grant`).
    pub used_elsewhere: Amount,
}

/// Charge a finished call its final amount (capped at its hold).
#[derive(Debug, Message)]
#[rtype(result = "Result<Committed, SettleError>")]
pub struct Commit {
    pub request: RequestId,
    pub final_amount: Amount,
}

/// Keep a call's hold until `deadline_ms` at least (its charge is still
/// being written).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), SettleError>")]
pub struct Extend {
    pub request: RequestId,
    pub deadline_ms: i64,
}

/// Free a call's hold without charging (the upstream failed).
#[derive(Debug, Message)]
#[rtype(result = "Result<Amount, SettleError>")]
pub struct Release {
    pub request: RequestId,
}

/// End a call's hold whose charge may or may not have been recorded: it
/// leaves the allowance (see `Budget::forfeit`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Amount, SettleError>")]
pub struct Forfeit {
    pub request: RequestId,
}

/// Count a charge the ledger recorded that no hold committed (see
/// `Budget::absorb`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Absorb {
    pub amount: Amount,
}

/// Refuse every later reservation on this key; `status` says why
/// (`Revoked` or `Superseded`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Revoke {
    pub status: BudgetStatus,
}

/// Stop the actor (the registry evicted it: idle, nothing in flight).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The budget as it stands.
#[derive(Debug, Message)]
#[rtype(result = "BudgetSnapshot")]
pub struct Snapshot;

/// Make the actor panic, as a failed assertion would (tests only: production
/// has no way to send it).
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Panic;
