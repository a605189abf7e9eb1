//! The paid path's machinery, between HTTP and the key actors:
//!
//! * [`Gateway`] — what a paid call needs: the key-actor registry, the
//!   charge sink, and each configured model's price and upstream.
//! * [`loader`] — [`loader::StoreKeyLoader`]: key actors start from the store.
//! * [`leases`] — [`leases::LeaseKeeper`]: this node's budget leases.
//! * [`protocol`] — the APIs of the paid path (chat completions, responses,
//!   messages, embeddings): requests, usage in their streams, answers.
//! * [`paid`] — [`paid::Payer`], [`paid::Ask`] and [`Gateway::call`]: the
//!   protocol-neutral paid call every endpoint runs.
//! * [`call`] — [`call::PaidCall`]: one call's budget from hold to charge.
//! * [`run`] — one call's run: the upstream within its bounds, the stream
//!   pump, the charge; events for whoever frames them.
//! * [`error`] — [`error::CallFailure`], the paid path's own errors (HTTP
//!   maps them in `http::error`).
//! * [`revocation`] — stopping keys so that no wallet spends past its funds.
//! * [`payers`] — payers' funds on chain and the payers settlement holds
//!   back (the `evm` mode).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::arbiters::ArbiterError;
use actors::registry::{Placement, Registry, RegistryLimits};
use ledger::pricing::Price;
use ledger::Store;
use tokio::task::JoinHandle;
use workers::ledger_writer::LedgerWriter;
use workers::publisher::QueueSink;
use workers::queue::Queue;
use workers::sink::ChargeSink;

use self::leases::LeaseKeeper;
use crate::settings::{GatewaySettings, ModelSettings, Settings, UpstreamSetting};
use crate::upstream::echo::Echo;
use crate::upstream::remote::{ClientConfig, RemoteUpstream};
use crate::upstream::Upstream;

pub mod call;
pub mod error;
pub mod leases;
pub mod loader;
pub mod paid;
pub mod payers;
pub mod protocol;
pub mod revocation;
pub mod run;

/// A model clients may name, as configured.
pub struct Model {
    pub name: String,
    pub price: Price,
    pub upstream: Upstream,
    pub max_output_tokens: u64,
    /// Request fields forwarded beyond the standard ones.
    pub forward_fields: Vec<String>,
    /// A non-streamed answer without usage is an upstream error.
    pub require_usage: bool,
}

impl Model {
    /// Whether this model's upstream serves `api`.
    pub fn serves(&self, api: protocol::Api) -> bool {
        self.upstream.serves(api)
    }

    /// The APIs it serves, in order.
    pub fn apis(&self) -> Vec<protocol::Api> {
        protocol::Api::ALL
            .into_iter()
            .filter(|api| self.serves(*api))
            .collect()
    }
}

/// A background task the gateway started, named for the logs; its owner
/// (`startup::Application`) watches it.
pub type NamedTask = (&'static str, JoinHandle<()>);

/// Shared by every paid call. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub registry: Registry,
    /// Where charges go: durable before a call reports its amount.
    pub sink: Arc<dyn ChargeSink>,
    pub models: Arc<HashMap<String, Arc<Model>>>,
    pub timeouts: Timeouts,
    /// This node's budget leases: what its key actors may spend.
    pub leases: LeaseKeeper,
}

/// How long each part of a call may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub upstream: Duration,
    pub stream_idle: Duration,
    pub stream_max: Duration,
    /// How long a hold outlives its call's longest duration.
    pub hold_slack_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Arbiters(#[from] ArbiterError),
    #[error("the upstream HTTP client: {0}")]
    Client(String),
}

impl Gateway {
    /// Starts the key actors, the ledger writer and the drain task (on the
    /// current runtime); the tasks are returned, named, for the caller to own.
    ///
    /// With `queue` (RabbitMQ), a paid call's charge is a confirmed
    /// `CallCompleted` event; without, it is committed to `store` by the
    /// ledger writer.
    pub fn start(
        settings: &Settings,
        store: Store,
        queue: Option<Queue>,
        funds: payers::PayerFunds,
    ) -> Result<(Gateway, Vec<NamedTask>), GatewayError> {
        let registry = start_registry(&settings.gateway, store.clone())?;
        let timeouts = Timeouts::of(&settings.gateway);
        let models = configured_models(settings, timeouts)?;
        let mut leases = LeaseKeeper::new(store.clone(), store.node_id(), settings.leases)
            .with_payer_funds(funds);
        if let Some(queue) = &queue {
            leases = leases.with_charges_queue(queue.clone(), &settings.queue.calls_queue);
        }
        let mut tasks = leases.start(&registry);
        if let Some(drain) = revocation::free_drained_keys(&registry, store.clone()) {
            tasks.push(("drained-key release", drain));
        }
        let sink: Arc<dyn ChargeSink> = match queue {
            Some(queue) => Arc::new(QueueSink::new(queue, &settings.queue.calls_queue)),
            None => {
                let (writer, writing) = LedgerWriter::spawn(store);
                tasks.push(("ledger writer", writing));
                Arc::new(writer)
            }
        };
        let gateway = Gateway {
            registry,
            sink,
            models: Arc::new(models),
            timeouts,
            leases,
        };
        Ok((gateway, tasks))
    }
}

/// The key-actor registry: actors load from `store`, within the gateway's
/// bounds on loaded keys and calls in flight.
fn start_registry(g: &GatewaySettings, store: Store) -> Result<Registry, GatewayError> {
    let threads = match g.actor_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let registry = Registry::start_with(
        Arc::new(loader::StoreKeyLoader::new(store)),
        RegistryLimits {
            in_flight_per_key_max: g.in_flight_per_key_max,
            loaded_keys_max: g.loaded_keys_max,
            idle_ms: g.key_idle_ms,
            idle_sweep_ms: (g.key_idle_ms / 4).clamp(1_000, 60_000) as u64,
        },
        threads,
        // Under `serve`, actix-web's workers (one per core) are arbiters:
        // a key's actor lives on the worker that first served it.
        Placement::Caller,
    )?;
    Ok(registry)
}

impl Timeouts {
    fn of(g: &GatewaySettings) -> Timeouts {
        Timeouts {
            upstream: Duration::from_millis(g.upstream_timeout_ms),
            stream_idle: Duration::from_millis(g.stream_idle_timeout_ms),
            stream_max: Duration::from_millis(g.stream_max_ms),
            hold_slack_ms: g.hold_slack_ms,
        }
    }
}

/// Each configured model, by name, with its upstream. The upstream HTTP
/// client is built once here, so a bad set-up stops start-up.
fn configured_models(
    settings: &Settings,
    timeouts: Timeouts,
) -> Result<HashMap<String, Arc<Model>>, GatewayError> {
    // Pooled clients, one per thread: connections are reused across calls.
    let client = ClientConfig {
        connect_timeout: Duration::from_millis(settings.gateway.upstream_connect_timeout_ms),
    };
    client
        .client()
        .map_err(|e| GatewayError::Client(e.to_string()))?;
    Ok(settings
        .models
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                Arc::new(Model::configured(name, m, client, timeouts)),
            )
        })
        .collect())
}

impl Model {
    /// Model `name` as its `[models.NAME]` table configures it.
    fn configured(
        name: &str,
        m: &ModelSettings,
        client: ClientConfig,
        timeouts: Timeouts,
    ) -> Model {
        let upstream = match &m.upstream {
            UpstreamSetting::Echo => Upstream::Echo(Echo {
                model: name.to_owned(),
                word_delay_ms: m.echo_word_delay_ms,
            }),
            UpstreamSetting::Remote(base_url) => Upstream::Remote(RemoteUpstream {
                client,
                base_url: base_url.clone(),
                upstream_model: if m.upstream_model.is_empty() {
                    name.to_owned()
                } else {
                    m.upstream_model.clone()
                },
                api_key: m.api_key.clone().filter(|k| !k.is_empty()),
                timeout: timeouts.upstream,
                max_tokens_fields: m.max_tokens_fields.clone(),
                protocol: m.protocol,
                allow_store: m.forward_fields.iter().any(|f| f == "store"),
            }),
        };
        Model {
            name: name.to_owned(),
            price: m.price(),
            upstream,
            max_output_tokens: m.max_output_tokens,
            forward_fields: m.forward_fields.clone(),
            require_usage: m.require_usage,
        }
    }
}
