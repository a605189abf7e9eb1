//! RabbitMQ through `lapin`: quorum queues, persistent messages, publisher
//! confirms awaited per message but many in flight on one channel (each
//! publish is its own future), manual acks, prefetch, and dead-lettering
//! after the delivery limit.
//!
//! Connecting retries with exponential backoff and jitter (`backon`), and
//! the connection recovers on its own (`lapin`'s auto-recovery replays the
//! topology); a publish waits at most `publish_timeout` for the broker and
//! then fails, so a paid call is refused cleanly rather than reported
//! without a durable event.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{DeadLetter, Delivery, QueueError, QueueOptions, Settle};

/// How long connecting may keep retrying before it gives up.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(10);

/// A connection to a RabbitMQ broker and its publishing channel (confirm
/// mode). Cheap to clone.
#[derive(Clone)]
pub struct RabbitQueue {
    connection: Arc<Connection>,
    publisher: Channel,
    options: QueueOptions,
    /// How the broker lists this connection (`rabbitmqctl list_connections`).
    name: String,
    /// Where consumers connect (each on a connection of its own).
    url: Arc<str>,
}

/// Connects to `url` as `name`, retrying with backoff for up to
/// [`CONNECT_RETRY_MAX`]; `recover`: lapin recovers the connection and its
/// channels on its own (the publisher's), else a lost connection ends it.
async fn connect(url: &str, name: &str, recover: bool) -> Result<Connection, QueueError> {
    let connect = || async {
        let mut properties = ConnectionProperties::default().with_connection_name(name.into());
        if recover {
            properties = properties.enable_auto_recover();
        }
        Connection::connect(url, properties).await
    };
    connect
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_total_delay(Some(CONNECT_RETRY_MAX)),
        )
        .notify(|error, after| {
            tracing::warn!(%error, ?after, "the broker is not answering; retrying");
        })
        .await
        .map_err(unavailable)
}

/// The broker answered 404: the queue does not exist.
fn not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

fn unavailable(error: lapin::Error) -> QueueError {
    QueueError::Unavailable(error.to_string())
}

impl RabbitQueue {
    /// Connects (retrying with backoff for up to ten seconds) and opens the
    /// publishing channel in confirm mode.
    pub async fn connect(url: &str, options: QueueOptions) -> Result<RabbitQueue, QueueError> {
        let name = format!("tollgate-{}", uuid::Uuid::now_v7().simple());
        let connection = connect(url, &name, true).await?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(RabbitQueue {
            connection: Arc::new(connection),
            publisher,
            options,
            name,
            url: Arc::from(url),
        })
    }

    /// The connection's name as the broker lists it.
    pub fn connection_name(&self) -> &str {
        &self.name
    }

    /// See [`super::Queue::ready_count`]: a passive declare on a channel of
    /// its own (a missing queue closes the channel it is asked on).
    pub async fn ready_count(&self, name: &str) -> Result<u64, QueueError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await;
        let _ = channel.close(200, "queue depth read".into()).await;
        match declared {
            Ok(queue) => Ok(u64::from(queue.message_count())),
            Err(error) if not_found(&error) => Err(QueueError::Undeclared(name.to_owned())),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Declares the topology of `name` (see the module doc). Idempotent.
    pub async fn declare(&self, name: &str) -> Result<(), QueueError> {
        let channel = &self.publisher;
        let dlx = format!("{name}.dlx");
        let dead = super::Queue::dead_letters(name);
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        channel
            .queue_declare(dead.as_str().into(), durable, quorum())
            .await
            .map_err(unavailable)?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                name.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let mut arguments = quorum();
        arguments.insert("x-dead-letter-exchange".into(), long_string(&dlx));
        arguments.insert("x-dead-letter-routing-key".into(), long_string(name));
        // Quorum queues count deliveries; past the limit the broker
        // dead-letters the message itself. The limit counts *re*deliveries.
        let redeliveries =
            i32::try_from(self.options.delivery_limit.saturating_sub(1)).unwrap_or(i32::MAX);
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongInt(redeliveries));
        // At-least-once dead-lettering needs publishers refused, not messages
        // dropped, when the queue is full.
        arguments.insert("x-overflow".into(), long_string("reject-publish"));
        arguments.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        channel
            .queue_declare(name.into(), durable, arguments)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Publishes a persistent message and waits for the broker's confirm,
    /// at most `publish_timeout` in all. When the connection is lost it waits
    /// for the recovery and publishes again (a message the broker may have
    /// received before the loss is then there twice: consumers dedup by the
    /// message id, never by delivery).
    pub async fn publish(
        &self,
        name: &str,
        message_id: &str,
        body: Bytes,
    ) -> Result<(), QueueError> {
        let deadline = tokio::time::Instant::now() + self.options.publish_timeout;
        let late = || QueueError::Unavailable("no confirm in time".into());
        loop {
            let attempt = self.publish_once(name, message_id, &body);
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(late()),
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => return Err(QueueError::Nacked),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "publishing failed; waiting for the broker");
                    match tokio::time::timeout_at(deadline, self.publisher.wait_for_recovery(error))
                        .await
                    {
                        Err(_) => return Err(late()),
                        Ok(Err(error)) => return Err(unavailable(error)),
                        Ok(Ok(())) => continue,
                    }
                }
            }
        }
    }

    /// One publish: whether the broker acked it.
    async fn publish_once(&self, name: &str, message_id: &str, body: &[u8]) -> lapin::Result<bool> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(message_id));
        let confirm = self
            .publisher
            .basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        Ok(confirm.await?.is_ack())
    }

    /// A consumer on a connection of its own, with manual acks and the
    /// prefetch. When that connection is lost (a broker restart) the
    /// consumer subscribes again on a new one: a recovered lapin channel did
    /// not reliably resume its consumers, and deliveries of the lost
    /// connection must not be acknowledged on another (the broker requeues
    /// them by itself).
    pub async fn consume(&self, name: &str) -> Result<RabbitConsumer, QueueError> {
        let mut consumer = RabbitConsumer {
            url: self.url.clone(),
            queue: name.to_owned(),
            options: self.options,
            link: None,
        };
        consumer.link = Some(consumer.subscribe().await?);
        Ok(consumer)
    }

    pub async fn delete(&self, name: &str) -> Result<(), QueueError> {
        let channel = &self.publisher;
        for queue in [name.to_owned(), super::Queue::dead_letters(name)] {
            self.recovering(|| {
                channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            })
            .await?;
        }
        let dlx = format!("{name}.dlx");
        self.recovering(|| {
            channel.exchange_delete(dlx.as_str().into(), ExchangeDeleteOptions::default())
        })
        .await?;
        Ok(())
    }
}

impl RabbitQueue {
    /// Takes up to `max` messages of `name`'s dead-letter queue on a
    /// channel of its own, moves back to `name` those `requeue` picks (a
    /// confirmed publish, then the dead copy's ack: at least once, never
    /// lost), and leaves the others where they were (the channel closes
    /// with them unacknowledged).
    pub async fn sweep_dead(
        &self,
        name: &str,
        max: usize,
        requeue: &mut dyn FnMut(&DeadLetter) -> bool,
    ) -> Result<Vec<(DeadLetter, bool)>, QueueError> {
        let dead = super::Queue::dead_letters(name);
        let channel = self.recovering(|| self.connection.create_channel()).await?;
        let mut swept = Vec::new();
        let mut moved_ids = std::collections::HashSet::new();
        while swept.len() < max {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(unavailable)?;
            let Some(got) = got else { break };
            let delivery = got.delivery;
            let letter = DeadLetter {
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                body: Bytes::copy_from_slice(&delivery.data),
                reason: header_text(&delivery, "x-first-death-reason")
                    .unwrap_or_else(|| "unknown".to_owned()),
            };
            // A message moved back that failed again is back here: one
            // sweep moves it once.
            if moved_ids.contains(&letter.message_id) {
                break;
            }
            let moved = requeue(&letter);
            if moved {
                moved_ids.insert(letter.message_id.clone());
                self.publish(name, &letter.message_id, letter.body.clone())
                    .await?;
                ack(delivery).await?;
            }
            swept.push((letter, moved));
        }
        // Whatever was not moved goes back to the dead-letter queue.
        channel
            .close(200, "dead letters swept".into())
            .await
            .map_err(unavailable)?;
        Ok(swept)
    }

    /// Runs a channel operation, waiting out a connection recovery (at most
    /// `publish_timeout`) and trying again once the channel is back.
    async fn recovering<T, F, Fut>(&self, mut operation: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.publish_timeout;
        loop {
            let error = match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let cause = error.to_string();
            let recovered =
                tokio::time::timeout_at(deadline, self.publisher.wait_for_recovery(error)).await;
            match recovered {
                Err(_) => {
                    return Err(QueueError::Unavailable(format!(
                        "the broker did not come back in time ({cause})"
                    )))
                }
                Ok(Err(error)) => return Err(unavailable(error)),
                Ok(Ok(())) => {}
            }
        }
    }
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(text.into())
}

/// Takes messages from one RabbitMQ queue. Closing it — or dropping it, which
/// closes its connection in the background — makes the broker redeliver what
/// it had not acknowledged.
pub struct RabbitConsumer {
    url: Arc<str>,
    queue: String,
    options: QueueOptions,
    /// `None` while the connection is lost: the next call subscribes again.
    link: Option<ConsumerLink>,
}

/// One subscription: its connection, channel and lapin consumer.
struct ConsumerLink {
    connection: Connection,
    consumer: lapin::Consumer,
}

impl ConsumerLink {
    /// Closes the connection in the background (its unacknowledged
    /// deliveries go back to the queue).
    fn close_soon(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = self.connection.close(200, "consumer closed".into()).await;
            });
        }
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.close_soon();
        }
    }
}

impl RabbitConsumer {
    /// A new connection, channel and subscription to the queue.
    async fn subscribe(&self) -> Result<ConsumerLink, QueueError> {
        let name = format!("tollgate-consumer-{}", uuid::Uuid::now_v7().simple());
        let connection = connect(&self.url, &name, false).await?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel
            .basic_qos(self.options.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                name.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| {
                if not_found(&error) {
                    QueueError::Undeclared(self.queue.clone())
                } else {
                    unavailable(error)
                }
            })?;
        Ok(ConsumerLink {
            connection,
            consumer,
        })
    }

    /// Closes the consumer's connection and waits for the broker: its
    /// unacknowledged messages go back to the queue.
    pub async fn close(mut self) -> Result<(), QueueError> {
        match self.link.take() {
            Some(link) => link
                .connection
                .close(200, "consumer closed".into())
                .await
                .map_err(unavailable),
            None => Ok(()),
        }
    }

    /// The next delivery; an error when the connection was lost (the call
    /// after it subscribes again); `None` when the queue is gone (deleted).
    ///
    /// A subscription the broker ended is subscribed again, not taken for
    /// the end: a broker that stops (`rabbitmqctl stop_app`, a restart)
    /// closes its connections gracefully, and lapin then ends the consumer's
    /// stream as if cancelled. Taken for the end, a pool stopped consuming
    /// for good after a restart (a `tests/broker_restart.rs` run found its
    /// queue still holding 10 messages).
    pub async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        if self.link.is_none() {
            match self.subscribe().await {
                Ok(link) => {
                    tracing::info!(queue = %self.queue, "subscribed again after a lost connection");
                    self.link = Some(link);
                }
                Err(QueueError::Undeclared(_)) => return None,
                Err(error) => return Some(Err(error)),
            }
        }
        let link = self.link.as_mut()?;
        let delivery = match link.consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                if let Some(link) = self.link.take() {
                    link.close_soon();
                }
                return Some(Err(unavailable(error)));
            }
            None => {
                if let Some(link) = self.link.take() {
                    link.close_soon();
                }
                return Some(Err(QueueError::Unavailable(
                    "the broker ended the subscription".to_owned(),
                )));
            }
        };
        // Quorum queues count earlier deliveries in `x-delivery-count`.
        let earlier = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get("x-delivery-count").cloned())
            .and_then(|count| match count {
                AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
                AMQPValue::LongInt(n) => u32::try_from(n).ok(),
                AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
                AMQPValue::LongUInt(n) => Some(n),
                _ => None,
            })
            .unwrap_or(u32::from(delivery.redelivered));
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        Some(Ok(Delivery {
            message_id,
            body: Bytes::copy_from_slice(&delivery.data),
            deliveries: earlier.saturating_add(1),
            settle: Settle::Rabbit(Box::new(delivery)),
        }))
    }
}

/// A text header of a delivery (RabbitMQ's `x-first-death-reason`, say).
fn header_text(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

pub(super) async fn ack(delivery: lapin::message::Delivery) -> Result<(), QueueError> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Acks `delivery` and every earlier unsettled delivery of its channel.
pub(super) async fn ack_multiple(delivery: lapin::message::Delivery) -> Result<(), QueueError> {
    delivery
        .ack(BasicAckOptions { multiple: true })
        .await
        .map(|_| ())
        .map_err(unavailable)
}

pub(super) async fn nack(
    delivery: lapin::message::Delivery,
    requeue: bool,
) -> Result<(), QueueError> {
    delivery
        .nack(BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        })
        .await
        .map(|_| ())
        .map_err(unavailable)
}
