//! RabbitMQ through `lapin`: quorum queues, persistent messages, publisher
//! confirms awaited per message but many in flight on one channel (each
//! publish is its own future), manual acks, prefetch, and dead-lettering
//! after the delivery limit into a stream that listing reads without
//! consuming.
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
    /// Queues whose earlier dead-letter queue this process has looked for
    /// (`declare` runs on every readiness check: it looks once).
    adopted: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
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
            adopted: Arc::default(),
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
    /// A quorum dead-letter queue `NAME.dead` of an earlier version is
    /// adopted: unbound, its letters moved into the stream, then deleted.
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
        let mut stream = FieldTable::default();
        stream.insert("x-queue-type".into(), long_string("stream"));
        channel
            .queue_declare(dead.as_str().into(), durable, stream)
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
        if !self.adopted(name) {
            self.adopt_legacy_dead(name).await?;
        }
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
        let properties = BasicProperties::default().with_message_id(ShortString::from(message_id));
        self.publish_with(name, properties, &body).await
    }

    /// [`RabbitQueue::publish`] with the message's properties given (made
    /// persistent here).
    async fn publish_with(
        &self,
        name: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<(), QueueError> {
        let properties = properties.with_delivery_mode(2);
        let deadline = tokio::time::Instant::now() + self.options.publish_timeout;
        let late = || QueueError::Unavailable("no confirm in time".into());
        loop {
            let attempt = publish_once(&self.publisher, name, properties.clone(), body);
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

/// The header that marks what the operator's tools wrote into a
/// dead-letter stream: [`RETRIED`] (a tombstone: the letter with this
/// message id was put back) or [`END_OF_READ`] (where one reading stops).
const DEAD_LOG_HEADER: &str = "tollgate-dead-log";
const RETRIED: &str = "retried";
const END_OF_READ: &str = "end-of-read";

/// One publish on `channel` (in confirm mode): whether the broker acked it.
async fn publish_once(
    channel: &Channel,
    name: &str,
    properties: BasicProperties,
    body: &[u8],
) -> lapin::Result<bool> {
    let confirm = channel
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

/// A stream message of ours: `kind` in [`DEAD_LOG_HEADER`], `message_id`.
fn dead_log_entry(kind: &str, message_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(DEAD_LOG_HEADER.into(), long_string(kind));
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_headers(headers)
}

/// The dead letters a stream's log leaves, oldest first: a letter counts
/// once by message id (at-least-once dead-lettering may write it twice)
/// until a tombstone after it removes it; one dead-lettered again after
/// its tombstone counts again.
#[derive(Default)]
struct DeadLog {
    letters: Vec<Option<DeadLetter>>,
    index: std::collections::HashMap<String, usize>,
}

impl DeadLog {
    fn letter(&mut self, letter: DeadLetter) {
        if !self.index.contains_key(&letter.message_id) {
            self.index
                .insert(letter.message_id.clone(), self.letters.len());
            self.letters.push(Some(letter));
        }
    }

    fn retried(&mut self, message_id: &str) {
        if let Some(slot) = self.index.remove(message_id) {
            self.letters[slot] = None;
        }
    }

    fn live(self) -> impl Iterator<Item = DeadLetter> {
        self.letters.into_iter().flatten()
    }
}

fn message_id(delivery: &lapin::message::Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

impl RabbitQueue {
    /// Reads up to `max` dead letters of `name` (oldest first) and moves
    /// back to `name` those `requeue` picks: a confirmed publish to `name`,
    /// then a confirmed tombstone in the dead-letter stream. Reading a
    /// stream takes nothing from it and counts no delivery, so listing is
    /// harmless however often it runs; a letter moved back is never read
    /// again (a crash between the two publishes leaves it listed, and a
    /// second retry publishes it twice — the ledger records a request id
    /// once). Letters dead-lettered while this runs wait for the next one.
    pub async fn sweep_dead(
        &self,
        name: &str,
        max: usize,
        requeue: &mut dyn FnMut(&DeadLetter) -> bool,
    ) -> Result<Vec<(DeadLetter, bool)>, QueueError> {
        let dead = super::Queue::dead_letters(name);
        let letters = self.read_dead(&dead).await?;
        let mut swept = Vec::new();
        for letter in letters.live().take(max) {
            let moved = requeue(&letter);
            if moved {
                self.publish(name, &letter.message_id, letter.body.clone())
                    .await?;
                let tombstone = dead_log_entry(RETRIED, &letter.message_id);
                self.publish_with(&dead, tombstone, &[]).await?;
            }
            swept.push((letter, moved));
        }
        Ok(swept)
    }

    /// Reads the dead-letter stream `dead` from its first offset up to an
    /// end mark this reading writes first (so it knows where the stream
    /// ended when it began), on a channel of its own.
    async fn read_dead(&self, dead: &str) -> Result<DeadLog, QueueError> {
        let end = uuid::Uuid::now_v7().simple().to_string();
        self.publish_with(dead, dead_log_entry(END_OF_READ, &end), &[])
            .await?;
        let channel = self.recovering(|| self.connection.create_channel()).await?;
        let read = read_stream_until(&channel, dead, &end, self.options.publish_timeout).await;
        let _ = channel.close(200, "dead letters read".into()).await;
        read
    }
    /// Adopts the quorum dead-letter queue `NAME.dead` that versions before
    /// the stream declared (a queue's type cannot change on redeclare):
    /// unbinds it from `NAME.dlx`, moves each of its letters, headers and
    /// all, into the stream (confirmed, then acked: a crash in between
    /// writes a letter twice, which the stream's reading counts once), and
    /// deletes it once empty (a reader on it keeps it for the next
    /// declare). Nothing when there is none.
    async fn adopt_legacy_dead(&self, name: &str) -> Result<(), QueueError> {
        let done = || {
            self.adopted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_owned());
            Ok(())
        };
        let legacy = format!("{name}.dead");
        let channel = self.recovering(|| self.connection.create_channel()).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(legacy.as_str().into(), passive, FieldTable::default())
            .await
        {
            // The broker closed that channel: nothing to adopt.
            Err(error) if not_found(&error) => return done(),
            Err(error) => return Err(unavailable(error)),
            Ok(_) => {}
        }
        let dlx = format!("{name}.dlx");
        channel
            .queue_unbind(
                legacy.as_str().into(),
                dlx.as_str().into(),
                name.into(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let dead = super::Queue::dead_letters(name);
        let mut moved = 0_usize;
        while let Some(got) = channel
            .basic_get(legacy.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(unavailable)?
        {
            let delivery = got.delivery;
            self.publish_with(&dead, delivery.properties.clone(), &delivery.data)
                .await?;
            ack(delivery).await?;
            moved += 1;
        }
        // Quorum queues refuse `if_empty` on delete: look, then delete.
        let left = channel
            .queue_declare(legacy.as_str().into(), passive, FieldTable::default())
            .await
            .map_err(unavailable)?;
        if left.message_count() > 0 || left.consumer_count() > 0 {
            tracing::warn!(queue = %legacy, "the old dead-letter queue is still in use; kept");
            return Ok(());
        }
        channel
            .queue_delete(legacy.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(unavailable)?;
        let _ = channel
            .close(200, "legacy dead letters adopted".into())
            .await;
        tracing::info!(queue = %legacy, into = %dead, moved, "adopted the old dead-letter queue");
        done()
    }

    /// Whether this process has adopted (or found none of) `name`'s
    /// earlier dead-letter queue.
    fn adopted(&self, name: &str) -> bool {
        self.adopted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
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

/// Reads the stream `dead` on `channel` from its first offset until the
/// end mark `end`, folding what it reads into a [`DeadLog`]. Acks are a
/// stream's flow control only: nothing leaves the stream. Each message must
/// arrive within `wait`.
async fn read_stream_until(
    channel: &Channel,
    dead: &str,
    end: &str,
    wait: Duration,
) -> Result<DeadLog, QueueError> {
    // A stream consumer needs a prefetch.
    channel
        .basic_qos(500, BasicQosOptions::default())
        .await
        .map_err(unavailable)?;
    let mut from_first = FieldTable::default();
    from_first.insert("x-stream-offset".into(), long_string("first"));
    let tag = format!("tollgate-dead-reader-{end}");
    let mut consumer = channel
        .basic_consume(
            dead.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            from_first,
        )
        .await
        .map_err(|error| {
            if not_found(&error) {
                QueueError::Undeclared(dead.to_owned())
            } else {
                unavailable(error)
            }
        })?;
    let mut log = DeadLog::default();
    loop {
        let delivery = match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) | Ok(None) => {
                return Err(QueueError::Unavailable(format!(
                    "the dead-letter stream {dead} stopped before its end"
                )))
            }
            Ok(Some(delivery)) => delivery.map_err(unavailable)?,
        };
        let id = message_id(&delivery);
        match header_text(&delivery, DEAD_LOG_HEADER).as_deref() {
            Some(END_OF_READ) if id == end => return Ok(log),
            Some(END_OF_READ) => {}
            Some(RETRIED) => log.retried(&id),
            _ => log.letter(DeadLetter {
                message_id: id,
                body: Bytes::copy_from_slice(&delivery.data),
                reason: header_text(&delivery, "x-first-death-reason")
                    .unwrap_or_else(|| "unknown".to_owned()),
            }),
        }
        ack(delivery).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, body: &'static [u8]) -> DeadLetter {
        DeadLetter {
            message_id: id.to_owned(),
            body: Bytes::from_static(body),
            reason: "rejected".to_owned(),
        }
    }

    fn ids(log: DeadLog) -> Vec<String> {
        log.live().map(|letter| letter.message_id).collect()
    }

    /// A letter written twice counts once; a tombstone removes what came
    /// before it; a letter dead-lettered again after its tombstone counts
    /// again, at its new place; a tombstone of nothing changes nothing.
    #[test]
    fn the_log_leaves_each_letter_once_until_its_tombstone() {
        let mut log = DeadLog::default();
        log.letter(letter("a", b"1"));
        log.letter(letter("b", b"2"));
        log.letter(letter("a", b"1"));
        log.retried("a");
        log.retried("missing");
        log.letter(letter("c", b"3"));
        assert_eq!(ids(std::mem::take(&mut log)), ["b", "c"]);

        log.letter(letter("a", b"1"));
        log.retried("a");
        log.letter(letter("a", b"again"));
        let live: Vec<DeadLetter> = log.live().collect();
        assert_eq!(live.len(), 1);
        assert_eq!(&live[0].body[..], b"again");
    }
}
