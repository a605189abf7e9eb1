//! `tollgate serve` and `tollgate migrate`.

use anyhow::Context;

use crate::settings::Settings;
use crate::startup::{open_store, Application};

/// Runs the HTTP server until SIGINT/SIGTERM, then drains.
pub async fn serve(
    mut settings: Settings,
    bind: Option<String>,
    config_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(bind) = bind {
        bind.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--bind must be ADDRESS:PORT, got {bind:?}"))?;
        settings.http.bind = bind;
    }
    let app = Application::build(settings.clone()).await?;
    let models: Vec<&str> = settings.models.keys().map(String::as_str).collect();
    tracing::info!(
        bind = %settings.http.bind,
        port = app.port(),
        store = %store_for_people(&settings.store.url),
        queue = %queue_for_people(&settings.queue.url),
        settlement = ?settings.settlement.mode,
        chains = ?settings.chain_ids().iter().map(|c| c.0).collect::<Vec<_>>(),
        models = %models.join(","),
        config = %config_file.map_or("built-in defaults".to_owned(), |p| p.display().to_string()),
        "tollgate serving"
    );
    app.run_until_stopped().await?;
    Ok(())
}

/// Applies the migrations and exits.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    open_store(settings).await?;
    println!(
        "migrations applied to {}",
        ledger::store::redact_url(&settings.store.url)
    );
    Ok(())
}

/// The store URL as an operator needs it: no password, and a SQLite file
/// as an absolute path (a relative one depends on the folder `serve` ran in).
fn store_for_people(url: &str) -> String {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.into());
        return format!("sqlite://{}", absolute.display());
    }
    ledger::store::redact_url(url)
}

fn queue_for_people(url: &crate::settings::QueueUrl) -> String {
    match url {
        crate::settings::QueueUrl::Memory => {
            "memory:// (charges committed by the gateway)".to_owned()
        }
        crate::settings::QueueUrl::Amqp(url) => ledger::store::redact_url(url),
    }
}
