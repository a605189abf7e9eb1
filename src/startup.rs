//! [`Application`]: builds the server from settings on a bound listener, so
//! tests can bind port 0 and run the real thing — and owns everything it
//! starts: the HTTP server, the key actors, the ledger writer and the drain
//! task. It watches them (a task that stops is logged by name and stops the
//! server) and, on shutdown, drains in order: stop accepting, let calls in
//! flight finish (bounded by `http.shutdown_timeout_ms`) — their charges are
//! written before their leases end — then close the store.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use ledger::{ChainId, Store};
use tokio::task::JoinHandle;
use workers::evm::ChainClient;
use workers::queue::Queue;

use crate::auth::signing_key;
use crate::auth::token::TokenSigner;
use crate::gateway::payers::PayerFunds;
use crate::gateway::{Gateway, NamedTask};
use crate::http;
use crate::settings::Settings;
use crate::state::{AppState, StudioKeys};
use crate::studio::jwt::JwtSigner;
use crate::studio::secrets::StudioSecrets;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("store ({url}): {source}")]
    Store {
        url: String,
        source: ledger::StoreError,
    },
    #[error("queue: {0}")]
    Queue(workers::queue::QueueError),
    #[error(transparent)]
    SigningKey(#[from] signing_key::SigningKeyError),
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    #[error(transparent)]
    StudioSecrets(#[from] crate::studio::secrets::SecretsError),
    #[error("server: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error("stopped: {0}")]
    Stopped(String),
}

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    /// `http.admin_bind`'s server (operations routes) and its port.
    admin: Option<(Server, u16)>,
    store: Store,
    gateway: Gateway,
    tasks: Vec<NamedTask>,
    shutdown_timeout: Duration,
}

/// Connects to the store named in `settings` and applies migrations.
pub async fn open_store(settings: &Settings) -> Result<Store, StartupError> {
    let url = &settings.store.url;
    let wrap = |source| StartupError::Store {
        url: ledger::store::redact_url(url),
        source,
    };
    let store = Store::connect(url, settings.store.max_connections)
        .await
        .map_err(wrap)?
        .with_hold_max_ms(settings.gateway.hold_max_ms());
    store.migrate().await.map_err(wrap)?;
    Ok(store)
}

/// This node's store (its budget leases carry a node id of its own) and,
/// with RabbitMQ, its queue.
async fn open_node(settings: &Settings) -> Result<(Store, Option<Queue>), StartupError> {
    // This process is one gateway node: its budget leases carry this id.
    let node_id = format!("node-{}", uuid::Uuid::now_v7().simple());
    tracing::info!(node_id, "gateway node");
    let store = open_store(settings).await?.with_node_id(&node_id);
    let queue = crate::pools::connect(settings)
        .await
        .map_err(StartupError::Queue)?;
    // Charges through the queue may reach the ledger after their call.
    let store = if queue.is_some() {
        store.with_charges_queued()
    } else {
        store
    };
    Ok((store, queue))
}

/// What [`Application::start_background`] started.
struct Background {
    gateway: Gateway,
    tasks: Vec<NamedTask>,
    store_gauges: crate::metrics::StoreGaugeCache,
    settled_txs: crate::settled_txs::SettledTxs,
}

/// `TCP_NODELAY` on every client connection. A response's last small write
/// (a stream's final event, a chunked body's terminating `0\r\n\r\n`) must
/// not wait for the ACK of the previous one: on a kept-alive connection the
/// client delays that ACK by ~40 ms, which Nagle's algorithm would add to
/// every streamed call after the first.
fn no_delay(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY could not be set");
        }
    }
}

impl Application {
    /// Binds `http.bind` and builds the server.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let addr = settings.http.bind.clone();
        let listener =
            TcpListener::bind(&addr).map_err(|source| StartupError::Bind { addr, source })?;
        Application::build_on(settings, listener).await
    }

    /// Everything that runs beside the HTTP server: the gateway (key
    /// actors, ledger writer, leases), the in-process ledger pools, the
    /// metrics upkeep and store gauges, the settled-transactions reader, and
    /// the settlers.
    async fn start_background(
        settings: &Settings,
        store: &Store,
        queue: &Option<Queue>,
        chain_clients: &HashMap<ChainId, ChainClient>,
    ) -> Result<Background, StartupError> {
        let (gateway, mut tasks) = Gateway::start(
            settings,
            store.clone(),
            queue.clone(),
            PayerFunds::new(
                chain_clients.clone(),
                settings.settlement.payer_unsettled_max(),
            ),
        )?;
        if settings.workers.in_process {
            if let Some(queue) = queue {
                let (_, pools) = crate::pools::start_ledger_pools(settings, store.clone(), queue)
                    .await
                    .map_err(StartupError::Queue)?;
                tasks.extend(pools);
            }
        }
        // Without a queue there is no `tollgate worker` to settle: `serve`
        // always does.
        let store_gauges = crate::metrics::StoreGaugeCache::default();
        if crate::metrics::handle().is_some() {
            tasks.push(("metrics upkeep", tokio::spawn(crate::metrics::upkeep())));
            let every = Duration::from_millis(settings.http.metrics_refresh_ms);
            let refresh = store_gauges.clone().run(store.clone(), every);
            tasks.push(("store gauges", tokio::spawn(refresh)));
        }
        let settled_txs = crate::settled_txs::SettledTxs::default();
        if !chain_clients.is_empty() {
            let every = Duration::from_millis(settings.settlement.interval_ms);
            tasks.push((
                "settled transactions",
                tokio::spawn(settled_txs.clone().run(store.clone(), every)),
            ));
        }
        if settings.workers.in_process || queue.is_none() {
            tasks.extend(crate::pools::start_settler(
                settings,
                store.clone(),
                chain_clients,
            )?);
        }
        Ok(Background {
            gateway,
            tasks,
            store_gauges,
            settled_txs,
        })
    }

    /// Builds the server on an already bound listener.
    pub async fn build_on(
        mut settings: Settings,
        listener: TcpListener,
    ) -> Result<Application, StartupError> {
        // SIWE domains from the address really bound (tests bind port 0).
        let bound = listener.local_addr().map_err(StartupError::Server)?;
        settings.validate_siwe_domains(bound)?;
        settings.auth.siwe_domains = settings.siwe_domains_for(bound);
        let (store, queue) = open_node(&settings).await?;
        let key = signing_key::load_or_create(
            settings.auth.signing_key.as_deref(),
            Path::new(&settings.auth.signing_key_file),
        )?;
        let port = listener.local_addr().map_err(StartupError::Server)?.port();
        let workers = match settings.http.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let chain_clients = crate::pools::chain_clients(&settings)?;
        crate::pools::verify_chain_ids(&chain_clients).await?;
        let Background {
            gateway,
            tasks,
            store_gauges,
            settled_txs,
        } = Application::start_background(&settings, &store, &queue, &chain_clients).await?;
        let shutdown_timeout = Duration::from_millis(settings.http.shutdown_timeout_ms);
        let studio = StudioKeys {
            secrets: Arc::new(StudioSecrets::load_or_create(
                settings.studio.secrets_key.as_deref(),
                Path::new(&settings.studio.secrets_key_file),
            )?),
            jwt: JwtSigner::new(key.clone()),
        };
        let state = web::Data::new(
            AppState::new(
                store.clone(),
                TokenSigner::new(key),
                settings,
                gateway.clone(),
                studio,
            )
            .with_chain_clients(chain_clients, settled_txs)
            .with_queue(queue.clone())
            .with_store_gauges(store_gauges),
        );
        let admin = admin_server(&state)?;
        let server = Application::main_server(state, listener, workers, shutdown_timeout)?;
        Ok(Application {
            port,
            server,
            admin,
            store,
            gateway,
            tasks,
            shutdown_timeout,
        })
    }

    /// The paid path's and the management routes' server on `listener`.
    fn main_server(
        state: web::Data<AppState>,
        listener: TcpListener,
        workers: usize,
        shutdown_timeout: Duration,
    ) -> Result<Server, StartupError> {
        let server = HttpServer::new(move || {
            App::new()
                .wrap(tracing_actix_web::TracingLogger::<crate::telemetry::RequestSpans>::new())
                .wrap_fn(|request, service| {
                    use actix_web::dev::Service;
                    // The route's pattern, never the path: ids in paths
                    // would make one series per key.
                    let route = request
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_owned());
                    let started = std::time::Instant::now();
                    let response = service.call(request);
                    async move {
                        let response = response.await?;
                        let status = response.status().as_u16().to_string();
                        metrics::histogram!("tollgate_http_request_duration_seconds", "route" => route.clone())
                            .record(started.elapsed().as_secs_f64());
                        metrics::counter!("tollgate_http_requests_total", "route" => route, "status" => status)
                            .increment(1);
                        Ok(response)
                    }
                })
                .app_data(state.clone())
                .configure(http::routes)
        })
        .on_connect(no_delay)
        // Signals are this type's to handle: it drains in its own order.
        .disable_signals()
        .shutdown_timeout(shutdown_timeout.as_secs().max(1))
        .workers(workers)
        .listen(listener)
        .map_err(StartupError::Server)?
        .run();
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `http.admin_bind`'s listener, when there is one.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(_, port)| *port)
    }

    /// Serves until the process is asked to stop (SIGINT/SIGTERM), then
    /// drains (see [`Application::run_until`]).
    pub async fn run_until_stopped(self) -> Result<(), StartupError> {
        self.run_until(stop_signal()).await
    }

    /// Serves until `shutdown` completes, the server stops, or a background
    /// task stops (logged by name: an error), then drains in order: the
    /// server stops accepting and finishes the requests in flight; calls
    /// still running outside a request (a stream's pump, a call whose client
    /// left) finish and write their charges; then the store closes. Each wait
    /// is bounded by `http.shutdown_timeout_ms`.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let Application {
            server,
            admin,
            store,
            gateway,
            tasks,
            shutdown_timeout,
            ..
        } = self;
        let handle = server.handle();
        let mut serving = tokio::spawn(server);
        let admin = admin.map(|(server, _)| (server.handle(), tokio::spawn(server)));
        let (names, handles): (Vec<&'static str>, Vec<JoinHandle<()>>) = tasks.into_iter().unzip();
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let mut watched: futures_util::stream::FuturesUnordered<_> = handles
            .into_iter()
            .zip(names)
            .map(|(task, name)| async move { (name, task.await) })
            .collect();
        let failure = first_stop(shutdown, &mut serving, &mut watched).await;
        // 1. Stop accepting; finish requests in flight (bounded by actix's
        //    shutdown timeout, set from the same setting).
        handle.stop(true).await;
        let _ = serving.await;
        if let Some((handle, serving)) = admin {
            handle.stop(true).await;
            let _ = serving.await;
        }
        // 2. Calls still running outside a request write their charges
        //    under their leases: wait until none is out.
        calls_drained(&gateway, shutdown_timeout).await;
        // 3. Every key actor stops and gives back what it did not spend of
        //    its budget lease.
        gateway
            .leases
            .return_all(&gateway.registry, shutdown_timeout)
            .await;
        // 4. The background tasks stop — the ledger pools first of all: a
        //    pool left running against a closed store would fail every
        //    batch (a batch cut here is not acked: the broker redelivers it,
        //    and a charge committed twice is written once). Nothing more can
        //    reach the store.
        for abort in &aborts {
            abort.abort();
        }
        drop(watched);
        store.close().await;
        tracing::info!("stopped");
        match failure {
            None => Ok(()),
            Some(why) => Err(StartupError::Stopped(why)),
        }
    }
}

/// Waits for the first reason to stop: `shutdown`, the HTTP server
/// ending, or a background task ending. `None` is a requested stop; else
/// why the server stops on its own (an error, logged for a task).
async fn first_stop(
    shutdown: impl Future<Output = ()>,
    serving: &mut JoinHandle<std::io::Result<()>>,
    watched: &mut (impl futures_util::Stream<Item = (&'static str, Result<(), tokio::task::JoinError>)>
              + Unpin),
) -> Option<String> {
    let mut failure = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        ended = serving => {
            failure = Some(match ended {
                Ok(Ok(())) => "the HTTP server stopped".to_owned(),
                Ok(Err(e)) => format!("the HTTP server failed: {e}"),
                Err(e) => format!("the HTTP server task failed: {e}"),
            });
        }
        Some((name, ended)) = futures_util::StreamExt::next(watched) => {
            let why = match ended {
                Ok(()) => "ended".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            tracing::error!(task = name, why, "a background task stopped; shutting down");
            failure = Some(format!("background task {name:?} {why}"));
        }
    }
    failure
}

/// Waits, within `shutdown_timeout`, until no call is in flight: calls
/// still running outside a request write their charges under their leases.
async fn calls_drained(gateway: &Gateway, shutdown_timeout: Duration) {
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    while gateway.registry.calls_in_flight() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                calls = gateway.registry.calls_in_flight(),
                "calls still in flight at the shutdown deadline"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server of `http.admin_bind` (none when it is empty): `/metrics`,
/// `/healthz` and `/readyz` on a listener of its own, one worker, so a
/// scraper need not reach the paid path's listener (where `/metrics` then
/// answers 404).
fn admin_server(state: &web::Data<AppState>) -> Result<Option<(Server, u16)>, StartupError> {
    let addr = state.settings.http.admin_bind.clone();
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(&addr).map_err(|source| StartupError::Bind {
        addr: addr.clone(),
        source,
    })?;
    let port = listener.local_addr().map_err(StartupError::Server)?.port();
    tracing::info!(admin_bind = %addr, port, "operations routes on their own listener");
    let state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(http::health::AdminListener)
            .route("/metrics", web::get().to(http::health::metrics))
            .route("/healthz", web::get().to(http::health::healthz))
            .route("/readyz", web::get().to(http::health::readyz))
    })
    .disable_signals()
    .workers(1)
    .listen(listener)
    .map_err(StartupError::Server)?
    .run();
    Ok(Some((server, port)))
}

/// SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
