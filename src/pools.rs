//! The worker side (DESIGN §6): connecting to the queue the settings name,
//! running the ledger pools that record paid calls' charges from it, and the
//! settler — inside `serve` (`workers.in_process`) or alone in `tollgate
//! worker` processes, as many as run.

use std::collections::HashMap;

use ledger::Store;
use workers::ledger_pool::{LedgerPool, PriceBook};
use workers::queue::{Queue, QueueError};

use crate::gateway::NamedTask;
use workers::settlement::LedgerSettler;

use crate::settings::{QueueUrl, Settings, SettlementMode};

/// The RabbitMQ broker of `queue.url` with the calls queue declared;
/// `None` in the embedded mode (`memory://`), whose charges are committed
/// to the store directly.
pub async fn connect(settings: &Settings) -> Result<Option<Queue>, QueueError> {
    let QueueUrl::Amqp(url) = &settings.queue.url else {
        return Ok(None);
    };
    let queue = Queue::connect(url, settings.queue.options()).await?;
    queue.declare(&settings.queue.calls_queue).await?;
    Ok(Some(queue))
}

/// Every configured model's price by (model, price version): what the
/// pools re-price events with.
pub fn price_book(settings: &Settings) -> PriceBook {
    settings
        .models
        .iter()
        .map(|(name, model)| ((name.clone(), model.price_version.clone()), model.price()))
        .collect::<HashMap<_, _>>()
}

/// The `ledger` mode's settler, when that is the mode (one task).
pub fn start_settler(settings: &Settings, store: Store) -> Option<NamedTask> {
    if settings.settlement.mode != SettlementMode::Ledger {
        return None;
    }
    let settler = LedgerSettler::new(
        store,
        settings.chain_ids(),
        std::time::Duration::from_millis(settings.settlement.interval_ms),
        settings.settlement.batch_max_charges,
    );
    Some(("ledger settler", tokio::spawn(settler.run())))
}

/// Starts `workers.ledger_pools` pools on the calls queue; each ends only
/// when its queue connection is gone for good (an error for its owner).
pub async fn start_ledger_pools(
    settings: &Settings,
    store: Store,
    queue: &Queue,
) -> Result<(LedgerPool, Vec<NamedTask>), QueueError> {
    let pool = LedgerPool::new(store, price_book(settings));
    let mut tasks = Vec::new();
    for _ in 0..settings.workers.ledger_pools {
        let consumer = queue.consume(&settings.queue.calls_queue).await?;
        let pool = pool.clone();
        tasks.push((
            "ledger pool",
            tokio::spawn(async move { pool.run(consumer).await }),
        ));
    }
    Ok((pool, tasks))
}
