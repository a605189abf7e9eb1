//! The command line, one file per command: [`serve`] (and `migrate`),
//! [`credit`], [`studio`] (`studio bootstrap`), [`siwe_sign`], [`worker`]
//! (the ledger pools alone), [`dlq`] (dead letters), [`settlements`],
//! [`reconcile`], [`devnet`] (a local chain for the `evm` mode).
//!
//! Errors here are `anyhow`: this is the binary's edge.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ledger::ChainId;

use crate::settings::Settings;

mod credit;
mod devnet;
mod dlq;
mod reconcile;
mod serve;
mod settlements;
mod siwe_sign;
mod studio;
mod worker;

pub use dlq::DlqCommand;
pub use settlements::SettlementsCommand;
pub use siwe_sign::DEV_PRIVATE_KEY;
pub use studio::StudioCommand;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Pay-per-call API gateway with budgeted keys settled in USDC"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (env vars TOLLGATE__SECTION__KEY still win).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies migrations first).
    Serve {
        /// Listen here instead of http.bind, e.g. 0.0.0.0:8080.
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
    },
    /// Run the ledger pools alone: record paid calls' charges from RabbitMQ
    /// (queue.url = amqp://…; with workers.in_process = false in serve).
    Worker,
    /// The calls queue's dead letters: list them, or retry them once fixed.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// What has settled: charges by status, batches, one batch.
    Settlements {
        #[command(subcommand)]
        command: SettlementsCommand,
    },
    /// Check the ledger's books against themselves (and, in the evm mode, against
    /// each chain); exits non-zero on any difference.
    Reconcile {
        /// Only this chain.
        #[arg(long)]
        chain: Option<u64>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start a local chain (Anvil, chain 43113) with mock USDC and the
    /// settlement contract, and write a config file that settles on it.
    Devnet {
        /// Anvil's port.
        #[arg(long, default_value_t = 8545)]
        port: u16,
        /// Where to write the config file.
        #[arg(long, default_value = "devnet.toml")]
        out: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Credit a wallet's prepaid balance (settlement mode "ledger").
    Credit {
        /// The wallet, 0x-prefixed.
        address: String,
        /// USDC atomic units (1000000 = 1 USDC).
        amount: String,
        /// Chain id; defaults to the lowest configured chain.
        #[arg(long)]
        chain: Option<u64>,
        /// A note kept with the credit in the audit trail.
        #[arg(long, default_value = "cli credit")]
        note: String,
    },
    /// Studio API keys (/api/v1/apikeys).
    Studio {
        #[command(subcommand)]
        command: StudioCommand,
    },
    /// Sign a SIWE message for local testing; prints the JSON body for POST /api/sessions.
    SiweSign {
        /// The nonce from GET /api/sessions/nonce.
        #[arg(long, value_parser = siwe_sign::parse_nonce)]
        nonce: String,
        /// Hex private key; defaults to Anvil's first, publicly known, dev account.
        #[arg(long, env = "TOLLGATE_DEV_PRIVATE_KEY", hide_env_values = true)]
        private_key: Option<String>,
        /// The server's domain (one of `auth.siwe_domains`), e.g. 127.0.0.1:8080;
        /// defaults to the first of `auth.siwe_domains`, else `http.bind`.
        #[arg(long, value_parser = siwe_sign::parse_domain)]
        domain: Option<String>,
        /// Chain id; defaults to the lowest configured chain.
        #[arg(long)]
        chain: Option<u64>,
        /// The session key's budget, in USDC atomic units.
        #[arg(long, default_value = "0", value_parser = siwe_sign::parse_budget)]
        budget: String,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::init(&settings.log);
    warn_about_settings(&settings);
    match cli.command {
        Command::Serve { bind } => serve::serve(settings, bind, cli.config.as_deref()).await,
        Command::Worker => worker::worker(settings).await,
        Command::Dlq { command } => dlq::dlq(&settings, command).await,
        Command::Settlements { command } => settlements::settlements(&settings, command).await,
        Command::Reconcile { chain, json } => reconcile::reconcile(&settings, chain, json).await,
        Command::Devnet { port, out } => devnet::devnet(port, &out).await,
        Command::Migrate => serve::migrate(&settings).await,
        Command::Credit {
            address,
            amount,
            chain,
            note,
        } => credit::credit(&settings, &address, &amount, chain, &note).await,
        Command::Studio { command } => studio::studio(&settings, command).await,
        Command::SiweSign {
            nonce,
            private_key,
            domain,
            chain,
            budget,
        } => siwe_sign::siwe_sign(&settings, nonce, private_key, domain, chain, budget),
    }
}

/// An error and its causes on one line, outermost first and the root cause
/// last, each said once: a cause whose text its parent already shows (many
/// errors here format their source into their own message) is skipped.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// `TOLLGATE_…` variables that are not settings (`TOLLGATE__SECTION__KEY`)
/// nor one of the few the binary reads itself: most likely a setting typed
/// with one underscore, which would be ignored in silence.
pub fn misnamed_env_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    const OWN: [&str; 4] = [
        "TOLLGATE_DEV_PRIVATE_KEY",
        "TOLLGATE_ANVIL",
        "TOLLGATE_TEST_POSTGRES_URL",
        "TOLLGATE_TEST_AMQP_URL",
    ];
    let mut misnamed: Vec<String> = vars
        .into_iter()
        .filter(|name| name.starts_with("TOLLGATE_") && !name.starts_with("TOLLGATE__"))
        .filter(|name| !OWN.contains(&name.as_str()) && !name.starts_with("TOLLGATE_TEST_"))
        .collect();
    misnamed.sort();
    misnamed
}

/// Warnings about the configuration an operator should see at start-up:
/// misnamed variables, and upstreams without an API key.
fn warn_about_settings(settings: &Settings) {
    for name in misnamed_env_vars(std::env::vars().map(|(name, _)| name)) {
        tracing::warn!(variable = %name,
            "ignored: settings are TOLLGATE__SECTION__KEY (two underscores), e.g. TOLLGATE__STORE__URL");
    }
    for (name, model) in &settings.models {
        if let crate::settings::UpstreamSetting::Remote(url) = &model.upstream {
            if model.api_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
                tracing::warn!(model = %name, upstream = %url,
                    "no API key for this upstream (TOLLGATE__MODELS__{}__API_KEY); it may refuse every call",
                    name.to_uppercase());
            }
        }
    }
}

/// The chain a command names, or the lowest configured one.
fn pick_chain(settings: &Settings, chain: Option<u64>) -> anyhow::Result<ChainId> {
    match chain {
        Some(id) if settings.chain_ids().contains(&ChainId(id)) => Ok(ChainId(id)),
        Some(id) => bail!("chain {id} is not configured (see [chains] in the configuration)"),
        None => settings.default_chain().context("no chain configured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("store (sqlite://x): {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Inner;

    #[test]
    fn each_cause_is_said_once_with_the_root_last() {
        // The outer error formats its source into its message: said once.
        let error = anyhow::Error::new(Outer(Inner)).context("starting the server");
        assert_eq!(
            error_chain(&error),
            "starting the server: store (sqlite://x): connection refused"
        );
        let plain = anyhow::anyhow!("root").context("outer");
        assert_eq!(error_chain(&plain), "outer: root");
    }

    #[test]
    fn single_underscore_variables_are_named() {
        let vars = [
            "TOLLGATE__STORE__URL",
            "TOLLGATE_STORE__URL",
            "TOLLGATE_STORE_URL",
            "TOLLGATE_DEV_PRIVATE_KEY",
            "TOLLGATE_TEST_POSTGRES_URL",
            "PATH",
        ]
        .map(String::from);
        assert_eq!(
            misnamed_env_vars(vars),
            ["TOLLGATE_STORE_URL", "TOLLGATE_STORE__URL"]
        );
    }
}
