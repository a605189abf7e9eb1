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
        /// The server's domain (one of `auth.siwe_domains`), e.g. 127.0.0.1:8080.
        #[arg(long, default_value = "127.0.0.1:8080")]
        domain: String,
        /// Chain id; defaults to the lowest configured chain.
        #[arg(long)]
        chain: Option<u64>,
        /// The session key's budget, in USDC atomic units.
        #[arg(long, default_value = "0")]
        budget: String,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::init(&settings.log);
    match cli.command {
        Command::Serve { bind } => serve::serve(settings, bind).await,
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

/// The chain a command names, or the lowest configured one.
fn pick_chain(settings: &Settings, chain: Option<u64>) -> anyhow::Result<ChainId> {
    match chain {
        Some(id) if settings.chain_ids().contains(&ChainId(id)) => Ok(ChainId(id)),
        Some(id) => bail!("chain {id} is not configured (see [chains] in the configuration)"),
        None => settings.default_chain().context("no chain configured"),
    }
}
