//! [`Queue`]: one queue API over two implementations — RabbitMQ (`lapin`)
//! in production and an in-process queue for the embedded default — which
//! pass one shared test suite (`workers/tests/queue.rs`).
//!
//! The contract both keep:
//! * [`Queue::publish`] answers only once the message is durable (RabbitMQ:
//!   a persistent message the broker confirmed); an error means it may not
//!   be, and the caller must not report the call as charged.
//! * A consumer gets each message at least once; [`Delivery::ack`] after the
//!   work is committed, [`Delivery::retry`] to have it redelivered, and a
//!   consumer that dies with messages unacknowledged gets them redelivered
//!   to another.
//! * A message delivered [`QueueOptions::delivery_limit`] times without an
//!   ack, or [`Delivery::reject`]ed, goes to the queue's dead-letter queue
//!   (`NAME.dead-letters`), where an operator finds it with its reason.
//!   Reading the dead letters ([`Queue::sweep_dead`]) takes nothing from
//!   there and counts no delivery: however often an operator lists them,
//!   they stay until retried.
//!
//! Topology (declared idempotently by [`Queue::declare`]): a durable quorum
//! queue `NAME` with `x-delivery-limit`, `x-overflow = reject-publish` and
//! at-least-once dead-lettering through the exchange `NAME.dlx` into the
//! stream `NAME.dead-letters` (a stream has no delivery limit and is read
//! from an offset, not consumed; a retried letter is marked there by a
//! tombstone). The quorum queue `NAME.dead` of earlier versions is adopted
//! by the first declare: its letters move into the stream.

use std::time::Duration;

use bytes::Bytes;

pub mod memory;
pub mod rabbit;

/// How a queue behaves; the same for both implementations.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Unacknowledged messages one consumer may hold.
    pub prefetch: u16,
    /// Deliveries a message gets before it is dead-lettered (at least 1).
    pub delivery_limit: u32,
    /// How long a publish waits for the broker (reconnecting included)
    /// before it fails.
    pub publish_timeout: Duration,
}

impl Default for QueueOptions {
    fn default() -> QueueOptions {
        QueueOptions {
            prefetch: 200,
            delivery_limit: 5,
            publish_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the queue URL is not memory:// or amqp://…")]
    UnsupportedUrl,
    /// The broker cannot be reached (or did not answer in time); nothing was
    /// made durable.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (a negative confirm).
    #[error("the broker did not accept the message")]
    Nacked,
    #[error("queue {0:?} was not declared")]
    Undeclared(String),
}

/// A queue service: the in-process one or a RabbitMQ broker. Cheap to clone.
#[derive(Clone)]
pub enum Queue {
    Memory(memory::MemoryQueue),
    Rabbit(rabbit::RabbitQueue),
}

impl Queue {
    /// `memory://` or `amqp://user:pass@host:port/vhost`.
    pub async fn connect(url: &str, options: QueueOptions) -> Result<Queue, QueueError> {
        if url == "memory://" {
            Ok(Queue::Memory(memory::MemoryQueue::new(options)))
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Ok(Queue::Rabbit(
                rabbit::RabbitQueue::connect(url, options).await?,
            ))
        } else {
            Err(QueueError::UnsupportedUrl)
        }
    }

    /// Declares `name`, its dead-letter exchange and queue. Idempotent.
    pub async fn declare(&self, name: &str) -> Result<(), QueueError> {
        match self {
            Queue::Memory(queue) => {
                queue.declare(name);
                Ok(())
            }
            Queue::Rabbit(queue) => queue.declare(name).await,
        }
    }

    /// Publishes `body` to `name` and answers once it is durable.
    pub async fn publish(
        &self,
        name: &str,
        message_id: &str,
        body: Bytes,
    ) -> Result<(), QueueError> {
        match self {
            Queue::Memory(queue) => queue.publish(name, message_id, body),
            Queue::Rabbit(queue) => queue.publish(name, message_id, body).await,
        }
    }

    /// A consumer of `name` (at most `prefetch` messages unacknowledged).
    pub async fn consume(&self, name: &str) -> Result<Consumer, QueueError> {
        match self {
            Queue::Memory(queue) => Ok(Consumer::Memory(queue.consume(name)?)),
            Queue::Rabbit(queue) => Ok(Consumer::Rabbit(Box::new(queue.consume(name).await?))),
        }
    }

    /// How many messages of `name` wait for delivery (not those delivered
    /// and not yet acknowledged). The lease keeper reads it: a lease's cover
    /// is taken back only once the charges queue was seen drained after its
    /// node stopped (docs/leases.md).
    pub async fn ready_count(&self, name: &str) -> Result<u64, QueueError> {
        match self {
            Queue::Memory(queue) => queue.ready_count(name),
            Queue::Rabbit(queue) => queue.ready_count(name).await,
        }
    }

    /// The name of `name`'s dead-letter queue (on RabbitMQ, a stream).
    pub fn dead_letters(name: &str) -> String {
        format!("{name}.dead-letters")
    }

    /// Deletes `name` and its dead-letter queue and exchange (tests, and an
    /// operator's clean-up).
    pub async fn delete(&self, name: &str) -> Result<(), QueueError> {
        match self {
            Queue::Memory(queue) => {
                queue.delete(name);
                Ok(())
            }
            Queue::Rabbit(queue) => queue.delete(name).await,
        }
    }
}

/// A message in a dead-letter queue, as an operator sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: Bytes,
    /// Why the broker dead-lettered it: `rejected` (a consumer refused it as
    /// poison) or `delivery_limit` (it failed that many times).
    pub reason: String,
}

/// The most dead letters one sweep looks at.
pub const SWEEP_MAX: usize = 10_000;

impl Queue {
    /// Looks at up to `max` dead letters of `name` and moves back to `name`
    /// those `requeue` picks; answers each with whether it moved. The
    /// others stay dead-lettered, in order; looking spends no delivery.
    pub async fn sweep_dead(
        &self,
        name: &str,
        max: usize,
        requeue: &mut dyn FnMut(&DeadLetter) -> bool,
    ) -> Result<Vec<(DeadLetter, bool)>, QueueError> {
        match self {
            Queue::Memory(queue) => queue.sweep_dead(name, max, requeue),
            Queue::Rabbit(queue) => queue.sweep_dead(name, max, requeue).await,
        }
    }
}

/// Takes messages from one queue.
pub enum Consumer {
    Memory(memory::MemoryConsumer),
    Rabbit(Box<rabbit::RabbitConsumer>),
}

impl Consumer {
    /// The next message; `None` once the queue service is gone.
    pub async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        match self {
            Consumer::Memory(consumer) => consumer.next().await.map(Ok),
            Consumer::Rabbit(consumer) => consumer.next().await,
        }
    }

    /// Stops consuming; what was delivered and not settled goes back to the
    /// queue. (Dropping a consumer does the same, without waiting.)
    pub async fn close(self) -> Result<(), QueueError> {
        match self {
            Consumer::Memory(_) => Ok(()),
            Consumer::Rabbit(consumer) => consumer.close().await,
        }
    }
}

/// One delivered message, to be settled exactly once. Dropped unsettled, it
/// is redelivered (as when its consumer dies).
pub struct Delivery {
    pub message_id: String,
    pub body: Bytes,
    /// 1 on the first delivery, then one more each time.
    pub deliveries: u32,
    settle: Settle,
}

enum Settle {
    Memory(memory::MemoryAcker),
    Rabbit(Box<lapin::message::Delivery>),
}

/// Acknowledges a whole batch taken in order from one consumer, once its
/// work is committed. On RabbitMQ that is one `multiple` ack of the latest
/// delivery, which settles every earlier one of the channel too — so every
/// earlier delivery of that consumer must be settled already or be in the
/// batch (the ledger pool settles its rejects first, then acks the batch).
pub async fn ack_batch(batch: Vec<Delivery>) -> Result<(), QueueError> {
    let mut latest: Option<Box<lapin::message::Delivery>> = None;
    for delivery in batch {
        match delivery.settle {
            Settle::Memory(acker) => acker.ack(),
            Settle::Rabbit(delivery) => {
                if latest
                    .as_ref()
                    .is_none_or(|l| l.delivery_tag < delivery.delivery_tag)
                {
                    latest = Some(delivery);
                }
            }
        }
    }
    match latest {
        Some(delivery) => rabbit::ack_multiple(*delivery).await,
        None => Ok(()),
    }
}

impl Delivery {
    /// Done: the work it carried is committed.
    pub async fn ack(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Memory(acker) => {
                acker.ack();
                Ok(())
            }
            Settle::Rabbit(delivery) => rabbit::ack(*delivery).await,
        }
    }

    /// Not done: deliver it again (it counts toward the delivery limit).
    pub async fn retry(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Memory(acker) => {
                acker.retry();
                Ok(())
            }
            Settle::Rabbit(delivery) => rabbit::nack(*delivery, true).await,
        }
    }

    /// Poison: straight to the dead-letter queue.
    pub async fn reject(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Memory(acker) => {
                acker.reject();
                Ok(())
            }
            Settle::Rabbit(delivery) => rabbit::nack(*delivery, false).await,
        }
    }
}
