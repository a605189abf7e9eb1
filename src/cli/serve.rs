//! `tollgate serve` and `tollgate migrate`.

use anyhow::Context;

use crate::settings::Settings;
use crate::startup::{open_store, Application};

/// Runs the HTTP server until SIGINT/SIGTERM, then drains.
pub async fn serve(mut settings: Settings, bind: Option<String>) -> anyhow::Result<()> {
    if let Some(bind) = bind {
        bind.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--bind must be ADDRESS:PORT, got {bind:?}"))?;
        settings.http.bind = bind;
    }
    let app = Application::build(settings.clone()).await?;
    tracing::info!(bind = %settings.http.bind, port = app.port(), store = %ledger::store::redact_url(&settings.store.url), "tollgate serving");
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
