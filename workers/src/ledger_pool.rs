//! [`LedgerPool`]: consumes [`CallCompleted`] events and records each as a
//! charge exactly once — the request id is the charge's key, so redelivered
//! and duplicated messages change nothing — acknowledging a message only
//! after the transaction that holds its charge committed.
//!
//! Messages are taken in batches (up to [`BATCH_MAX`], gathered for at most
//! [`LINGER`] after the first) and written in one transaction
//! (`Store::record_charges`). A message that is not a valid event, or whose
//! key cannot take it, is rejected to the dead-letter queue with its reason
//! in the log; a batch the store could not write goes back to the queue
//! (and to the dead-letter queue after the delivery limit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger::model::ChargeOutcome;
use ledger::pricing::Price;
use ledger::Store;

use crate::event::CallCompleted;
use crate::queue::{ack_batch, Consumer, Delivery};

/// The most messages one transaction carries (the store's own bound).
pub const BATCH_MAX: usize = 256;

/// How long a batch waits for more messages after its first.
pub const LINGER: Duration = Duration::from_millis(5);

/// Prices by (model, price version): what the pool re-prices events with.
pub type PriceBook = HashMap<(String, String), Price>;

/// Records charges from a queue. Cheap to clone; run several at once.
#[derive(Clone)]
pub struct LedgerPool {
    store: Store,
    prices: Arc<PriceBook>,
    /// Events whose re-priced amount differed from their quote.
    pub mismatches: Arc<AtomicU64>,
}

impl LedgerPool {
    pub fn new(store: Store, prices: PriceBook) -> LedgerPool {
        LedgerPool {
            store,
            prices: Arc::new(prices),
            mismatches: Arc::default(),
        }
    }

    /// Consumes until the consumer ends (the queue service is gone).
    pub async fn run(&self, mut consumer: Consumer) {
        while let Some(batch) = gather(&mut consumer).await {
            self.record(batch).await;
        }
    }

    /// Writes one batch and settles each of its messages.
    async fn record(&self, batch: Vec<Delivery>) {
        let mut charges = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        for delivery in batch {
            let event = CallCompleted::parse(&delivery.body);
            let charge = event.and_then(|event| {
                let price = self
                    .prices
                    .get(&(event.model.clone(), event.price_version.clone()));
                event.charge(price)
            });
            match charge {
                Ok((charge, mismatch)) => {
                    if let Some(mismatch) = mismatch {
                        self.mismatches.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            request_id = %charge.request_id,
                            quoted = %mismatch.quoted,
                            repriced = %mismatch.repriced,
                            "a quote differs from its re-pricing; the quote is charged"
                        );
                    }
                    charges.push(charge);
                    pending.push(delivery);
                }
                Err(error) => {
                    tracing::error!(message_id = %delivery.message_id, %error, "dead-lettering a message that is not a valid event");
                    settle(delivery.reject().await);
                }
            }
        }
        if charges.is_empty() {
            return;
        }
        match self.store.record_charges(&charges).await {
            Ok(outcomes) => {
                debug_assert_eq!(outcomes.len(), pending.len());
                // Rejects first, then one ack for the rest (`multiple` on
                // RabbitMQ): every earlier delivery is settled by then.
                let mut done = Vec::with_capacity(pending.len());
                for ((delivery, charge), outcome) in pending.into_iter().zip(&charges).zip(outcomes)
                {
                    match outcome {
                        ChargeOutcome::Recorded | ChargeOutcome::Duplicate => done.push(delivery),
                        ChargeOutcome::OverBudget | ChargeOutcome::UnknownKey => {
                            tracing::error!(request_id = %charge.request_id, key_id = %charge.key_id, ?outcome, "dead-lettering a charge its key cannot take");
                            settle(delivery.reject().await);
                        }
                    }
                }
                settle(ack_batch(done).await);
            }
            Err(error) => {
                tracing::warn!(%error, charges = charges.len(), "writing charges failed; they go back to the queue");
                for delivery in pending {
                    settle(delivery.retry().await);
                }
            }
        }
    }
}

/// A batch: the next message, then whatever else arrives within [`LINGER`],
/// up to [`BATCH_MAX`]. `None` when the consumer ended.
async fn gather(consumer: &mut Consumer) -> Option<Vec<Delivery>> {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        match consumer.next().await? {
            Ok(delivery) => {
                batch.push(delivery);
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "consuming failed; waiting for the broker");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let until = tokio::time::Instant::now() + LINGER;
    while batch.len() < BATCH_MAX {
        match tokio::time::timeout_at(until, consumer.next()).await {
            Ok(Some(Ok(delivery))) => batch.push(delivery),
            _ => break,
        }
    }
    Some(batch)
}

/// A settle that failed leaves the message with the broker, which
/// redelivers it: nothing is lost, at worst it is written twice (no-op).
fn settle(result: Result<(), crate::queue::QueueError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "settling a message failed; the broker will redeliver it");
    }
}
