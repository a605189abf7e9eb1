//! [`Application`]: builds the server from settings on a bound listener, so
//! tests can bind port 0 and run the real thing.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use ledger::Store;

use crate::auth::signing_key;
use crate::auth::token::TokenSigner;
use crate::gateway::Gateway;
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
}

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    store: Store,
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

    /// Builds the server on an already bound listener.
    pub async fn build_on(
        mut settings: Settings,
        listener: TcpListener,
    ) -> Result<Application, StartupError> {
        // SIWE domains from the address really bound (tests bind port 0).
        let bound = listener.local_addr().map_err(StartupError::Server)?;
        settings.validate_siwe_domains(bound)?;
        settings.auth.siwe_domains = settings.siwe_domains_for(bound);
        let store = open_store(&settings).await?;
        let key = signing_key::load_or_create(
            settings.auth.signing_key.as_deref(),
            Path::new(&settings.auth.signing_key_file),
        )?;
        let port = listener.local_addr().map_err(StartupError::Server)?.port();
        let workers = match settings.http.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let gateway = Gateway::start(&settings, store.clone())?;
        let studio = StudioKeys {
            secrets: Arc::new(StudioSecrets::load_or_create(
                settings.studio.secrets_key.as_deref(),
                Path::new(&settings.studio.secrets_key_file),
            )?),
            jwt: JwtSigner::new(key.clone()),
        };
        let state = web::Data::new(AppState::new(
            store.clone(),
            TokenSigner::new(key),
            settings,
            gateway,
            studio,
        ));
        let server = HttpServer::new(move || {
            App::new()
                .wrap(tracing_actix_web::TracingLogger::default())
                .app_data(state.clone())
                .configure(http::routes)
        })
        .on_connect(no_delay)
        .workers(workers)
        .listen(listener)
        .map_err(StartupError::Server)?
        .run();
        Ok(Application {
            port,
            server,
            store,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the process is asked to stop (SIGINT/SIGTERM), then
    /// drains in-flight requests and closes the store.
    pub async fn run_until_stopped(self) -> Result<(), StartupError> {
        let result = self.server.await.map_err(StartupError::Server);
        self.store.close().await;
        result
    }
}
