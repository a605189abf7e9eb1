//! `[queue]`: where completed paid calls are queued, and the broker's bounds.

use serde::Deserialize;

use super::{invalid, within, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub url: QueueUrl,
    /// The queue paid calls' `CallCompleted` events go to (with RabbitMQ;
    /// its dead letters are the stream `NAME.dead-letters`).
    pub calls_queue: String,
    /// Messages one consumer holds unacknowledged.
    pub prefetch: u16,
    /// Deliveries before a message is dead-lettered.
    pub delivery_limit: u32,
    /// How long a paid call's publish waits for the broker (reconnecting
    /// included) before the call fails with 503 and nothing charged.
    pub publish_timeout_ms: u64,
}

/// Where completed calls are queued: in process, or a RabbitMQ broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum QueueUrl {
    /// `memory://`: the embedded default.
    Memory,
    /// `amqp://user:pass@host:port/vhost`.
    Amqp(String),
}

impl TryFrom<String> for QueueUrl {
    type Error = String;

    fn try_from(url: String) -> Result<QueueUrl, String> {
        if url == "memory://" {
            Ok(QueueUrl::Memory)
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Ok(QueueUrl::Amqp(url))
        } else {
            Err("queue.url must be memory:// or amqp://…".to_owned())
        }
    }
}

impl QueueSettings {
    /// The queue's options, as `workers::queue` takes them.
    pub fn options(&self) -> workers::queue::QueueOptions {
        workers::queue::QueueOptions {
            prefetch: self.prefetch,
            delivery_limit: self.delivery_limit,
            publish_timeout: std::time::Duration::from_millis(self.publish_timeout_ms),
        }
    }

    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        within("queue.prefetch", self.prefetch, 1, 10_000)?;
        within("queue.delivery_limit", self.delivery_limit, 1, 100)?;
        within(
            "queue.publish_timeout_ms",
            self.publish_timeout_ms,
            10,
            600_000,
        )?;
        let name_ok = !self.calls_queue.is_empty()
            && self.calls_queue.len() <= 200
            && self
                .calls_queue
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(invalid(
                "queue.calls_queue",
                "must be 1 to 200 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        Ok(())
    }
}
