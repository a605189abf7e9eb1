//! [`QueueSink`]: the charge sink of the queue mode. A finished paid call
//! becomes a [`CallCompleted`] event, published to the calls queue with its
//! request id as message id; the sink answers once the broker confirmed it
//! (a persistent message on a quorum queue), so a call that reports its
//! final amount never loses its charge — the ledger pools record it, once.
//!
//! A publish that fails or outlasts `queue.publish_timeout_ms` answers an
//! error: the call releases its hold and answers 503.

use ledger::model::{ChargeOutcome, NewCharge};

use crate::event::CallCompleted;
use crate::queue::Queue;
use crate::sink::{CallContext, ChargeSink, RecordFuture, SinkError};

/// Publishes charges as events. Cheap to clone.
#[derive(Clone)]
pub struct QueueSink {
    queue: Queue,
    name: String,
}

impl QueueSink {
    /// A sink publishing to `name` (declared already).
    pub fn new(queue: Queue, name: &str) -> QueueSink {
        QueueSink {
            queue,
            name: name.to_owned(),
        }
    }
}

impl ChargeSink for QueueSink {
    fn record(&self, charge: NewCharge, call: CallContext) -> RecordFuture {
        let (queue, name) = (self.queue.clone(), self.name.clone());
        Box::pin(async move {
            let event = CallCompleted::of_charge(&charge, &call);
            let published = queue
                .publish(&name, charge.request_id.as_str(), event.to_json().into())
                .await;
            let outcome = if published.is_ok() {
                "confirmed"
            } else {
                "failed"
            };
            metrics::counter!("tollgate_queue_publishes_total", "outcome" => outcome).increment(1);
            published.map_err(|error| SinkError::Failed(error.to_string()))?;
            // Confirmed: durable. The pool writes it (a duplicate is a no-op).
            Ok(ChargeOutcome::Recorded)
        })
    }
}
