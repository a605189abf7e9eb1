//! `tollgate dlq list` and `tollgate dlq retry [--all | ID]`: the calls
//! queue's dead letters — events the ledger pools refused as poison
//! (`rejected`) or failed to record `queue.delivery_limit` times
//! (`delivery_limit`) — shown with what the pool would say of each now,
//! and put back on the calls queue once the cause is fixed. A retried
//! event that was recorded meanwhile records nothing (its request id).

use anyhow::{bail, Context};
use ledger::Store;
use workers::event::CallCompleted;
use workers::queue::{DeadLetter, Queue, SWEEP_MAX};

use crate::settings::Settings;
use crate::startup::open_store;

/// What `dlq` does.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List the dead letters (one JSON object per line), oldest first.
    List,
    /// Put dead letters back on the calls queue: one by message id (the
    /// call's request id), or all of them.
    Retry {
        /// The message id to retry.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

pub async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    let queue = crate::pools::connect(settings)
        .await
        .context("connecting to the queue")?
        .context("dead letters live in RabbitMQ: set queue.url = \"amqp://…\"")?;
    let name = &settings.queue.calls_queue;
    match command {
        DlqCommand::List => {
            let store = open_store(settings).await?;
            let swept = queue.sweep_dead(name, SWEEP_MAX, &mut |_| false).await?;
            for (letter, _) in &swept {
                println!("{}", describe(&store, letter).await);
            }
            eprintln!(
                "{} dead letter(s) in {}",
                swept.len(),
                Queue::dead_letters(name)
            );
            store.close().await;
        }
        DlqCommand::Retry { id, all } => {
            let swept = queue
                .sweep_dead(name, SWEEP_MAX, &mut |letter| {
                    all || id.as_deref() == Some(letter.message_id.as_str())
                })
                .await?;
            let moved = swept.iter().filter(|(_, moved)| *moved).count();
            if let (Some(id), 0) = (&id, moved) {
                bail!("no dead letter has message id {id:?} (`tollgate dlq list` shows them)");
            }
            println!("{moved} dead letter(s) put back on {name}");
        }
    }
    Ok(())
}

/// One dead letter as JSON: its id, the broker's reason, and what the pool
/// would make of it now.
async fn describe(store: &Store, letter: &DeadLetter) -> serde_json::Value {
    let mut line = serde_json::json!({
        "messageId": letter.message_id,
        "reason": letter.reason,
        "bytes": letter.body.len(),
    });
    let charge = CallCompleted::parse(&letter.body).and_then(|event| event.charge(None));
    let diagnosis = match charge {
        Err(error) => error.to_string(),
        Ok((charge, _)) => {
            line["keyId"] = charge.key_id.as_str().into();
            line["amountAtomic"] = charge.amount.atomic().to_string().into();
            match store.key(&charge.key_id).await {
                Ok(None) => "the key does not exist in this store".to_owned(),
                Ok(Some(key))
                    if key.budget_limit.saturating_sub(key.budget_used) < charge.amount =>
                {
                    "the key's budget cannot take the charge".to_owned()
                }
                Ok(Some(_)) => "a valid event its key can take now: retry it".to_owned(),
                Err(error) => format!("the store could not be read: {error}"),
            }
        }
    };
    line["diagnosis"] = diagnosis.into();
    line
}
