//! [`LedgerPool`]: consumes [`CallCompleted`] events and records each as a
//! charge exactly once — the request id is the charge's key, so redelivered
//! and duplicated messages change nothing — acknowledging a message only
//! after the transaction that holds its charge committed.
//!
//! Messages are taken in batches (up to [`BATCH_MAX`], gathered for at most
//! [`LINGER`] after the first) and written in one transaction
//! (`Store::record_answered_charges`: each event's call was answered, so a
//! charge its key's limit can no longer take is recorded flagged
//! `overdrawn`, never dropped). A message that is not a valid event, or whose
//! key does not exist, is rejected to the dead-letter queue with its reason
//! in the log; a batch the store could not write is held and written again
//! with backoff until the store answers (requeuing it would spend its
//! messages' delivery limit on an outage and dead-letter reported charges).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger::model::{ChargeOutcome, NewCharge};
use ledger::pricing::Price;
use ledger::Store;

use crate::event::CallCompleted;
use crate::queue::{ack_batch, Consumer, Delivery};

/// The most messages one transaction carries (the store's own bound).
pub const BATCH_MAX: usize = 256;

/// The first and the longest wait before a batch the store failed to write
/// is tried again.
const STORE_RETRY_MIN: Duration = Duration::from_millis(200);
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

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
    /// From a call's completion to its charge's commit, per recorded charge.
    pub lag: Arc<LagHistogram>,
}

/// Upper bounds (ms) of the lag histogram's buckets; the last is open.
pub const LAG_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];

/// Counts of lags by bucket (lock-free; a metric, and the benchmark's).
#[derive(Debug, Default)]
pub struct LagHistogram {
    counts: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
}

impl LagHistogram {
    pub fn record(&self, lag_ms: i64) {
        let lag = u64::try_from(lag_ms).unwrap_or(0);
        let bucket = LAG_BUCKETS_MS
            .iter()
            .position(|bound| lag <= *bound)
            .unwrap_or(LAG_BUCKETS_MS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// How many lags were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The bucket bound (ms) at or under which a fraction `q` of the lags
    /// fall; `None` past the last bound, or when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let wanted = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen >= wanted {
                return LAG_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }
}

impl LedgerPool {
    pub fn new(store: Store, prices: PriceBook) -> LedgerPool {
        LedgerPool {
            store,
            prices: Arc::new(prices),
            mismatches: Arc::default(),
            lag: Arc::default(),
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
        let (charges, pending) = self.price(batch).await;
        if charges.is_empty() {
            return;
        }
        let outcomes = self.write(&charges).await;
        debug_assert_eq!(outcomes.len(), pending.len());
        self.observe(&charges, &outcomes);
        metrics::counter!("tollgate_queue_consumed_total").increment(outcomes.len() as u64);
        settle_written(pending, &charges, outcomes).await;
    }

    /// Each delivery's charge, re-priced, beside the deliveries that carry
    /// them; a message that is not a valid event is dead-lettered here.
    async fn price(&self, batch: Vec<Delivery>) -> (Vec<NewCharge>, Vec<Delivery>) {
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
                    metrics::counter!("tollgate_queue_dead_lettered_total", "reason" => "invalid_event")
                        .increment(1);
                    settle(delivery.reject().await);
                }
            }
        }
        (charges, pending)
    }

    /// Records the charges in one transaction, answering each one's outcome.
    /// A store that fails (down, failing over, a deadlock) is waited out
    /// with the batch held: requeuing at once would spend the messages'
    /// delivery limit in seconds and dead-letter reported charges.
    async fn write(&self, charges: &[NewCharge]) -> Vec<ChargeOutcome> {
        let mut backoff = STORE_RETRY_MIN;
        loop {
            match self.store.record_answered_charges(charges).await {
                Ok(outcomes) => return outcomes,
                Err(error) => {
                    tracing::warn!(%error, charges = charges.len(), retry_in = ?backoff, "writing charges failed; the batch is held and tried again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }

    /// The lag of each recorded charge, and a debug line per charge.
    fn observe(&self, charges: &[NewCharge], outcomes: &[ChargeOutcome]) {
        let committed_at = ledger::time::now_ms();
        for (charge, outcome) in charges.iter().zip(outcomes) {
            if *outcome == ChargeOutcome::Recorded {
                let lag_ms = committed_at.saturating_sub(charge.created_at_ms);
                self.lag.record(lag_ms);
                metrics::histogram!("tollgate_queue_consumer_lag_seconds")
                    .record(lag_ms as f64 / 1000.0);
            }
            // The call's ids, as its gateway logged them: a client's
            // `x-request-id` finds its charge here (DEBUG: one line a call).
            tracing::debug!(
                request_id = %charge.request_id,
                client_request_id = charge.client_request_id.as_deref().unwrap_or(""),
                key_id = %charge.key_id, amount = %charge.amount, ?outcome,
                "charge written"
            );
        }
    }
}

/// Settles a written batch's messages by their charges' outcomes: rejects
/// first, then one ack for the rest (`multiple` on RabbitMQ): every earlier
/// delivery is settled by then.
async fn settle_written(
    pending: Vec<Delivery>,
    charges: &[NewCharge],
    outcomes: Vec<ChargeOutcome>,
) {
    let mut done = Vec::with_capacity(pending.len());
    for ((delivery, charge), outcome) in pending.into_iter().zip(charges).zip(outcomes) {
        match outcome {
            ChargeOutcome::Recorded | ChargeOutcome::Duplicate => done.push(delivery),
            ChargeOutcome::Overdrawn => {
                tracing::error!(request_id = %charge.request_id, key_id = %charge.key_id,
                    amount = %charge.amount,
                    "an answered call's charge landed past its key's limit: recorded, flagged overdrawn (tollgate reconcile reports it)");
                metrics::counter!("tollgate_charges_overdrawn_total").increment(1);
                done.push(delivery);
            }
            ChargeOutcome::OverBudget | ChargeOutcome::UnknownKey => {
                tracing::error!(request_id = %charge.request_id, key_id = %charge.key_id, ?outcome, "dead-lettering a charge its key cannot take");
                metrics::counter!("tollgate_queue_dead_lettered_total", "reason" => "charge_refused")
                    .increment(1);
                settle(delivery.reject().await);
            }
        }
    }
    settle(ack_batch(done).await);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_quantiles_are_bucket_bounds() {
        let lag = LagHistogram::default();
        assert_eq!(lag.quantile_ms(0.5), None, "nothing recorded");
        for ms in [0, 1, 3, 4, 8, 40, 40, 40, 90, 7_000] {
            lag.record(ms);
        }
        assert_eq!(lag.count(), 10);
        assert_eq!(lag.quantile_ms(0.2), Some(1));
        assert_eq!(lag.quantile_ms(0.5), Some(10));
        assert_eq!(lag.quantile_ms(0.8), Some(50));
        assert_eq!(lag.quantile_ms(0.9), Some(100));
        assert_eq!(lag.quantile_ms(1.0), None, "past the last bound");
        lag.record(-5);
        assert_eq!(lag.count(), 11, "a clock step back counts as no lag");
    }
}
