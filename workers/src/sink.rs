//! [`ChargeSink`]: where a finished call's charge goes.
//!
//! The paid path hands each priced charge to a sink and waits: the sink
//! answers only once the charge is durable (committed to the store, or
//! confirmed by the broker), so a call that reports a final amount never
//! loses its charge (invariant 2). The embedded mode's sink is
//! [`crate::ledger_writer::LedgerWriter`] (committed to the store); with
//! RabbitMQ it is [`crate::publisher::QueueSink`] (confirmed by the broker,
//! recorded by the ledger pools).

use std::future::Future;
use std::pin::Pin;

use ledger::model::{ChargeOutcome, NewCharge};
use ledger::{Amount, ChainId, WalletAddress};

/// Why a charge could not be made durable: nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The store (or broker) refused or failed; nothing was written.
    #[error("the charge could not be recorded: {0}")]
    Failed(String),
    /// The sink is shutting down.
    #[error("the charge sink has stopped")]
    Stopped,
}

/// What [`ChargeSink::record`] returns.
pub type RecordFuture = Pin<Box<dyn Future<Output = Result<ChargeOutcome, SinkError>> + Send>>;

/// What the call behind a charge was, beyond the charge itself: the queue's
/// event carries it (the store derives the payer from the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// The call's hold: no charge passes it.
    pub hold: Amount,
    pub started_at_ms: i64,
    /// The key's wallet and chain, when known.
    pub payer: Option<(WalletAddress, ChainId)>,
}

/// Takes a charge and answers once it is durable.
pub trait ChargeSink: Send + Sync + 'static {
    /// Records `charge` once (a duplicate request id changes nothing) and
    /// answers what happened, after it is durable.
    fn record(&self, charge: NewCharge, call: CallContext) -> RecordFuture;
}
