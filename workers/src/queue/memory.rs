//! The in-process queue of the embedded default: the same contract as
//! RabbitMQ's within one process — a publish is "durable" once it is in the
//! queue's memory (the embedded mode's durability is the ledger's, which the
//! charge reaches through the same process).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{DeadLetter, Delivery, QueueError, QueueOptions, Settle};

#[derive(Clone)]
struct Message {
    id: String,
    body: Bytes,
    deliveries: u32,
}

#[derive(Default)]
struct Lane {
    ready: VecDeque<Message>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Lanes {
    queues: HashMap<String, Lane>,
}

/// Queues held in this process. Cheap to clone.
#[derive(Clone)]
pub struct MemoryQueue {
    lanes: Arc<Mutex<Lanes>>,
    options: QueueOptions,
}

impl MemoryQueue {
    pub fn new(options: QueueOptions) -> MemoryQueue {
        MemoryQueue {
            lanes: Arc::default(),
            options,
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`super::Queue::sweep_dead`].
    pub fn sweep_dead(
        &self,
        name: &str,
        max: usize,
        requeue: &mut dyn FnMut(&DeadLetter) -> bool,
    ) -> Result<Vec<(DeadLetter, bool)>, QueueError> {
        let dead = super::Queue::dead_letters(name);
        let taken: Vec<Message> = {
            let mut lanes = self.lanes();
            let lane = lanes
                .queues
                .get_mut(&dead)
                .ok_or_else(|| QueueError::Undeclared(dead.clone()))?;
            let n = lane.ready.len().min(max);
            lane.ready.drain(..n).collect()
        };
        let mut swept = Vec::with_capacity(taken.len());
        let mut kept = Vec::new();
        for message in taken {
            let letter = DeadLetter {
                message_id: message.id.clone(),
                body: message.body.clone(),
                reason: if message.deliveries >= self.options.delivery_limit {
                    "delivery_limit".to_owned()
                } else {
                    "rejected".to_owned()
                },
            };
            let moved = requeue(&letter);
            if moved {
                self.publish(name, &message.id, message.body.clone())?;
            } else {
                kept.push(message);
            }
            swept.push((letter, moved));
        }
        // What stays goes back in front, in its order.
        for message in kept.into_iter().rev() {
            self.push(&dead, message, true)?;
        }
        Ok(swept)
    }

    /// See [`super::Queue::ready_count`]: as on RabbitMQ, a delivered message
    /// not yet settled is with its consumer, not counted here.
    pub fn ready_count(&self, name: &str) -> Result<u64, QueueError> {
        let lanes = self.lanes();
        let lane = lanes
            .queues
            .get(name)
            .ok_or_else(|| QueueError::Undeclared(name.to_owned()))?;
        Ok(lane.ready.len() as u64)
    }

    pub fn declare(&self, name: &str) {
        let mut lanes = self.lanes();
        lanes.queues.entry(name.to_owned()).or_default();
        lanes
            .queues
            .entry(super::Queue::dead_letters(name))
            .or_default();
    }

    pub fn delete(&self, name: &str) {
        let mut lanes = self.lanes();
        lanes.queues.remove(name);
        lanes.queues.remove(&super::Queue::dead_letters(name));
    }

    pub fn publish(&self, name: &str, message_id: &str, body: Bytes) -> Result<(), QueueError> {
        let message = Message {
            id: message_id.to_owned(),
            body,
            deliveries: 0,
        };
        self.push(name, message, false)
    }

    /// Appends (or, for a redelivery, puts back at the head of) `name`.
    fn push(&self, name: &str, message: Message, front: bool) -> Result<(), QueueError> {
        let mut lanes = self.lanes();
        let lane = lanes
            .queues
            .get_mut(name)
            .ok_or_else(|| QueueError::Undeclared(name.to_owned()))?;
        if front {
            lane.ready.push_front(message);
        } else {
            lane.ready.push_back(message);
        }
        lane.notify.notify_one();
        Ok(())
    }

    pub fn consume(&self, name: &str) -> Result<MemoryConsumer, QueueError> {
        if !self.lanes().queues.contains_key(name) {
            return Err(QueueError::Undeclared(name.to_owned()));
        }
        Ok(MemoryConsumer {
            queue: self.clone(),
            name: name.to_owned(),
        })
    }

    /// A message back from a consumer: redelivered, or dead-lettered once it
    /// has had its deliveries.
    fn returned(&self, name: &str, message: Message) {
        let result = if message.deliveries >= self.options.delivery_limit {
            self.push(&super::Queue::dead_letters(name), message, false)
        } else {
            self.push(name, message, true)
        };
        if result.is_err() {
            tracing::warn!(queue = name, "a returned message's queue was deleted");
        }
    }
}

/// Takes messages from one in-process queue.
pub struct MemoryConsumer {
    queue: MemoryQueue,
    name: String,
}

impl MemoryConsumer {
    /// The next message; waits for one. `None` once the queue was deleted.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let notify = {
                let mut lanes = self.queue.lanes();
                let lane = lanes.queues.get_mut(&self.name)?;
                if let Some(mut message) = lane.ready.pop_front() {
                    message.deliveries += 1;
                    return Some(Delivery {
                        message_id: message.id.clone(),
                        body: message.body.clone(),
                        deliveries: message.deliveries,
                        settle: Settle::Memory(MemoryAcker {
                            queue: self.queue.clone(),
                            name: self.name.clone(),
                            message: Some(message),
                        }),
                    });
                }
                lane.notify.clone()
            };
            // A publish between the check and here leaves a permit: no wake-up is lost.
            notify.notified().await;
        }
    }
}

/// Settles one in-process delivery; dropped unsettled, it redelivers.
pub struct MemoryAcker {
    queue: MemoryQueue,
    name: String,
    message: Option<Message>,
}

impl MemoryAcker {
    pub fn ack(mut self) {
        self.message = None;
    }

    pub fn retry(mut self) {
        if let Some(message) = self.message.take() {
            self.queue.returned(&self.name, message);
        }
    }

    pub fn reject(mut self) {
        if let Some(message) = self.message.take() {
            let dead = super::Queue::dead_letters(&self.name);
            if self.queue.push(&dead, message, false).is_err() {
                tracing::warn!(queue = %self.name, "a rejected message's queue was deleted");
            }
        }
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.queue.returned(&self.name, message);
        }
    }
}
