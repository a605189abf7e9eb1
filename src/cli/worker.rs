//! `tollgate worker`: the ledger pools (and the settler), in a process of their own
//! (`workers.in_process = false` in `serve`; several workers may run at
//! once — each message goes to one of them, and a duplicate records
//! nothing). Runs until SIGINT/SIGTERM: what a pool holds unacknowledged
//! goes back to the queue for the next worker.

use anyhow::Context;
use futures_util::StreamExt;

use crate::settings::Settings;
use crate::startup::{open_store, stop_signal};

pub async fn worker(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings).await?;
    let queue = crate::pools::connect(&settings)
        .await
        .context("connecting to the queue")?
        .context("tollgate worker records charges from RabbitMQ: set queue.url = \"amqp://…\"")?;
    let (_, mut tasks) = crate::pools::start_ledger_pools(&settings, store.clone(), &queue)
        .await
        .context("starting the ledger pools")?;
    let pools = tasks.len();
    let chain_clients = crate::pools::chain_clients(&settings)?;
    crate::pools::verify_chain_ids(&chain_clients).await?;
    tasks.extend(crate::pools::start_settler(
        &settings,
        store.clone(),
        &chain_clients,
    )?);
    tracing::info!(
        queue = %settings.queue.calls_queue,
        pools,
        settlement = ?settings.settlement.mode,
        store = %ledger::store::redact_url(&settings.store.url),
        "tollgate worker running"
    );
    let aborts: Vec<_> = tasks.iter().map(|(_, task)| task.abort_handle()).collect();
    let mut running: futures_util::stream::FuturesUnordered<_> = tasks
        .into_iter()
        .map(|(name, task)| async move { (name, task.await) })
        .collect();
    let outcome = tokio::select! {
        _ = stop_signal() => Ok(()),
        Some((name, ended)) = running.next() => Err(anyhow::anyhow!("{name} stopped: {ended:?}")),
    };
    // The pools stop before the store closes (a pool on a closed store would
    // fail every batch); what they held unacknowledged returns to the queue
    // when their connections close.
    for abort in &aborts {
        abort.abort();
    }
    drop(running);
    store.close().await;
    tracing::info!("tollgate worker stopped");
    outcome
}
