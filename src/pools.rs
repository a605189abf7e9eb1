//! The worker side (docs/queue.md): connecting to the queue the settings name,
//! running the ledger pools that record paid calls' charges from it, and the
//! settler — inside `serve` (`workers.in_process`) or alone in `tollgate
//! worker` processes, as many as run.

use std::collections::HashMap;

use ledger::Store;
use workers::ledger_pool::{LedgerPool, PriceBook};
use workers::queue::{Queue, QueueError};

use crate::gateway::NamedTask;
use workers::settlement::{LedgerSettler, Settler};

use crate::settings::{ChainKey, QueueUrl, Settings, SettlementMode};
use ledger::ChainId;
use workers::evm::settler::{EvmSettler, EvmSettlerConfig};
use workers::evm::ChainClient;

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

/// Each chain's client in the `evm` mode (none in `ledger`).
pub fn chain_clients(
    settings: &Settings,
) -> Result<HashMap<ChainId, ChainClient>, crate::settings::SettingsError> {
    let mut clients = HashMap::new();
    for config in settings.evm_chains()? {
        let id = ChainId(config.chain_id);
        let client =
            ChainClient::new(config).map_err(|e| crate::settings::SettingsError::Invalid {
                setting: format!("chains.{}", id.0),
                reason: e.to_string(),
            })?;
        clients.insert(id, client);
    }
    Ok(clients)
}

/// Refuses chains whose RPC endpoint answers with another chain id than
/// configured, naming `chains.ID.rpc_url`. An endpoint that does not answer
/// in time is let be (logged): `/readyz` and the settler check it again.
pub async fn verify_chain_ids(
    clients: &HashMap<ChainId, ChainClient>,
) -> Result<(), crate::settings::SettingsError> {
    for (id, client) in clients {
        let timeout = client.config().rpc_timeout;
        match tokio::time::timeout(timeout, client.answered_chain_id()).await {
            Ok(Ok(answered)) => {
                client.chain_id_is(answered).map_err(|_| {
                    crate::settings::SettingsError::Invalid {
                        setting: format!("chains.{}.rpc_url", id.0),
                        reason: format!("answers for chain {answered}, not {}", id.0),
                    }
                })?;
            }
            Ok(Err(error)) => {
                tracing::warn!(chain = id.0, %error, "the chain id could not be checked at start-up");
            }
            Err(_) => {
                tracing::warn!(
                    chain = id.0,
                    "the chain id could not be checked at start-up: no answer in time"
                );
            }
        }
    }
    Ok(())
}

/// The settlers of the configured mode: one `ledger` settler for every
/// chain, or one `evm` settler per chain (only one per chain is active
/// across all processes; the others stand by).
pub fn start_settler(
    settings: &Settings,
    store: Store,
    clients: &HashMap<ChainId, ChainClient>,
) -> Result<Vec<NamedTask>, crate::settings::SettingsError> {
    // A process that settles must hold each chain's operator key.
    if let Some((id, _)) = clients.iter().find(|(_, client)| !client.can_sign()) {
        return Err(crate::settings::SettingsError::Invalid {
            setting: format!("chains.{}.operator_key", id.0),
            reason: "must be set where charges are settled (`tollgate worker`, or `serve` with \
                     workers.in_process or no queue); only gateways that do not settle run without it"
                .to_owned(),
        });
    }
    let every = std::time::Duration::from_millis(settings.settlement.interval_ms);
    match settings.settlement.mode {
        SettlementMode::Ledger => {
            let settler = LedgerSettler::new(
                store,
                settings.chain_ids(),
                every,
                settings.settlement.batch_max_charges,
            );
            Ok(vec![spawn_settler("ledger settler", settler)])
        }
        SettlementMode::Evm => Ok(clients
            .iter()
            .filter_map(|(id, client)| {
                let chain = settings.chains.get(&ChainKey(*id))?;
                let settler = EvmSettler::new(
                    store.clone(),
                    client.clone(),
                    EvmSettlerConfig {
                        // Unique per process: two settlers sharing an id
                        // would both think they hold the chain's lease.
                        settler_id: format!(
                            "settler-{}-chain-{}",
                            uuid::Uuid::now_v7().simple(),
                            id.0
                        ),
                        every,
                        batch_max_payers: chain.batch_max_payers,
                        batch_max_age_ms: chain.batch_max_age_ms,
                        replace_after_ms: chain.replace_after_ms,
                        held_back_recheck_max_ms: settings.settlement.held_back_recheck_max_ms,
                    },
                );
                Some(spawn_settler("evm settler", settler))
            })
            .collect::<Vec<_>>()),
    }
}

fn spawn_settler(name: &'static str, settler: impl Settler) -> NamedTask {
    (name, tokio::spawn(Settler::run(settler)))
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
